// mtactl: administration commands for mtad.
//
//   mtactl passwd add FILE USER [--domains a.com,b.com|*] [--stream NAME] [--pbkdf2]
//   mtactl passwd set FILE USER [--domains ...] [--stream NAME] [--pbkdf2]
//   mtactl passwd check FILE USER
//   mtactl queue | messages | show | suspend | resume | suspended | retry | bounce | reload
//     (the admin API; see admin_commands.h)
//
// The password is read from standard input: prompted for without echo (twice for add/set)
// when it is a terminal, else the first line. The file is replaced atomically (a temporary
// file in the same directory, fsynced, then renamed over it), so mtad never reads half of
// it; send mtad SIGHUP to apply the change.
#include <fcntl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "auth/password_file.h"
#include "tools/mtactl/admin_commands.h"

namespace mta::tools {
namespace {

constexpr char kUsage[] =
    "usage: mtactl passwd add FILE USER [--domains a.com,b.com|*] [--stream NAME] [--pbkdf2]\n"
    "       mtactl passwd set FILE USER [--domains a.com,b.com|*] [--stream NAME] [--pbkdf2]\n"
    "       mtactl passwd check FILE USER\n"
    "The password is read from standard input (prompted for without echo on a terminal).\n"
    "add: a new user (--domains defaults to *, any sender domain).\n"
    "set: a new password for an existing user; --domains and --stream replace the user's\n"
    "     settings when given (--stream \"\" removes the stream).\n"
    "check: exit 0 if the password is valid for USER, 1 if not.\n"
    "After add or set, send mtad SIGHUP to apply the change.\n";

void PrintUsage(std::ostream& out) { out << kUsage << kAdminUsage; }

constexpr size_t kMaxPassword = 512;

int Usage() {
  PrintUsage(std::cerr);
  return 2;
}

int Fail(absl::string_view message, int code = 2) {
  std::cerr << "mtactl: " << message << "\n";
  return code;
}

// Reads one line from the terminal without echoing it.
absl::StatusOr<std::string> ReadHidden(const char* prompt) {
  std::cerr << prompt << std::flush;
  termios old_attrs;
  if (tcgetattr(STDIN_FILENO, &old_attrs) != 0) {
    return absl::InternalError(absl::StrCat("tcgetattr: ", std::strerror(errno)));
  }
  termios quiet = old_attrs;
  quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
  quiet.c_lflag |= ECHONL;
  tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
  std::string line;
  bool got = static_cast<bool>(std::getline(std::cin, line));
  tcsetattr(STDIN_FILENO, TCSAFLUSH, &old_attrs);
  if (!got) return absl::InvalidArgumentError("no password given");
  return line;
}

absl::Status CheckPassword(const std::string& password) {
  if (password.empty()) return absl::InvalidArgumentError("empty password");
  if (password.size() > kMaxPassword) {
    return absl::InvalidArgumentError(
        absl::StrCat("password longer than ", kMaxPassword, " bytes"));
  }
  if (password.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("password contains a NUL byte (AUTH PLAIN cannot carry it)");
  }
  return absl::OkStatus();
}

// The password from standard input: prompted for (twice when `confirm`) on a terminal, else
// the first line without its line terminator.
absl::StatusOr<std::string> ReadPassword(const std::string& user, bool confirm) {
  std::string password;
  if (isatty(STDIN_FILENO)) {
    std::string prompt = absl::StrCat("Password for ", user, ": ");
    auto first = ReadHidden(prompt.c_str());
    if (!first.ok()) return first.status();
    if (confirm) {
      auto again = ReadHidden("Retype password: ");
      if (!again.ok()) return again.status();
      if (*again != *first) return absl::InvalidArgumentError("the passwords differ");
    }
    password = *std::move(first);
  } else {
    if (!std::getline(std::cin, password)) {
      return absl::InvalidArgumentError("no password on standard input");
    }
    if (!password.empty() && password.back() == '\r') password.pop_back();
  }
  absl::Status s = CheckPassword(password);
  if (!s.ok()) return s;
  return password;
}

absl::StatusOr<std::string> ReadFile(const std::string& path, bool* exists) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) {
      *exists = false;
      return std::string();
    }
    return absl::NotFoundError(absl::StrCat(path, ": ", std::strerror(errno)));
  }
  *exists = true;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Replaces `path` with `text` atomically: a temporary file beside it, fsynced, renamed over
// it, then the directory fsynced so the rename itself survives a crash.
absl::Status WriteFileAtomically(const std::string& path, const std::string& text) {
  std::string dir = ".";
  size_t slash = path.rfind('/');
  if (slash != std::string::npos) dir = slash == 0 ? "/" : path.substr(0, slash);
  std::string tmp = absl::StrCat(path, ".tmp.XXXXXX");
  int fd = mkstemp(tmp.data());
  if (fd < 0) return absl::InternalError(absl::StrCat(tmp, ": ", std::strerror(errno)));
  auto fail = [&](absl::string_view what) {
    absl::Status s = absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
    close(fd);
    unlink(tmp.c_str());
    return s;
  };
  // Keep the mode of the file being replaced; a new file is readable by its owner only.
  struct stat st;
  mode_t mode = stat(path.c_str(), &st) == 0 ? (st.st_mode & 07777) : 0600;
  if (fchmod(fd, mode) != 0) return fail("fchmod");
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail(absl::StrCat("write ", tmp));
    off += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) return fail(absl::StrCat("fsync ", tmp));
  if (close(fd) != 0) {
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("close ", tmp, ": ", std::strerror(errno)));
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status s =
        absl::InternalError(absl::StrCat("rename ", tmp, " to ", path, ": ", std::strerror(errno)));
    unlink(tmp.c_str());
    return s;
  }
  int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return absl::OkStatus();
}

struct Options {
  bool has_domains = false;
  std::string domains;
  bool has_stream = false;
  std::string stream;
  bool pbkdf2 = false;
};

int AddOrSet(bool set, const std::string& path, const std::string& user, const Options& opts) {
  if (user.find(':') != std::string::npos) return Fail("user: must not contain ':'");
  bool exists = false;
  auto text = ReadFile(path, &exists);
  if (!text.ok()) return Fail(text.status().message());
  if (set && !exists) return Fail(absl::StrCat(path, ": no such file (use passwd add)"));

  // The user's current line, for `set` without --domains or --stream.
  auth::PasswordEntry entry;
  entry.user.name = user;
  entry.user.any_sender_domain = true;
  if (set) {
    auto file = auth::PasswordFile::Parse(*text, path);
    if (!file.ok()) return Fail(file.status().message());
    const auth::PasswordEntry* current = (*file)->Find(user);
    if (current == nullptr) {
      return Fail(absl::StrCat(path, ": no user '", user, "' (use passwd add)"));
    }
    entry = *current;
  }
  // Validate the user name and options through the parser before asking for a password.
  std::string domains = opts.has_domains ? opts.domains
                        : entry.user.any_sender_domain
                            ? "*"
                            : absl::StrJoin(entry.user.sender_domains, ",");
  std::string stream = opts.has_stream ? opts.stream : entry.user.stream;
  // A syntactically valid placeholder hash, replaced below.
  constexpr char kPlaceholder[] =
      "scrypt$ln=15,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA";
  std::string line = absl::StrCat(user, ":", kPlaceholder, ":", domains);
  if (!stream.empty()) absl::StrAppend(&line, ":", stream);
  auto parsed = auth::ParsePasswordLine(line);
  if (!parsed.ok()) return Fail(parsed.status().message());

  auto password = ReadPassword(user, /*confirm=*/true);
  if (!password.ok()) return Fail(password.status().message());
  auto hash = opts.pbkdf2 ? auth::HashPasswordPbkdf2(*password) : auth::HashPassword(*password);
  if (!hash.ok()) return Fail(hash.status().message(), 1);
  parsed->hash = *std::move(hash);

  auto updated = auth::UpsertPasswordLine(*text, *parsed, /*must_exist=*/set);
  if (!updated.ok()) {
    return Fail(absl::StrCat(
        path, ": ", updated.status().message(),
        updated.status().code() == absl::StatusCode::kAlreadyExists ? " (use passwd set)" : ""));
  }
  absl::Status written = WriteFileAtomically(path, *updated);
  if (!written.ok()) return Fail(written.message(), 1);
  std::cerr << "mtactl: " << (set ? "updated" : "added") << " user '" << user << "' in " << path
            << "; send mtad SIGHUP to apply\n";
  return 0;
}

int Check(const std::string& path, const std::string& user) {
  auto file = auth::PasswordFile::Load(path);
  if (!file.ok()) return Fail(file.status().message());
  auto password = ReadPassword(user, /*confirm=*/false);
  if (!password.ok()) return Fail(password.status().message());
  auto verified = (*file)->Verify(user, *password);
  if (verified.ok()) {
    std::cout << "valid\n";
    return 0;
  }
  if (verified.status().code() != absl::StatusCode::kPermissionDenied) {
    return Fail(verified.status().message());
  }
  std::cout << "invalid\n";
  return 1;
}

int Passwd(const std::vector<std::string>& args) {
  if (args.size() < 3) return Usage();
  const std::string& action = args[0];
  const std::string& path = args[1];
  const std::string& user = args[2];
  Options opts;
  for (size_t i = 3; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= args.size()) return false;
      *out = args[++i];
      return true;
    };
    if (a == "--domains" && action != "check") {
      if (!value(&opts.domains)) return Usage();
      opts.has_domains = true;
    } else if (a == "--stream" && action != "check") {
      if (!value(&opts.stream)) return Usage();
      opts.has_stream = true;
    } else if (a == "--pbkdf2" && action != "check") {
      opts.pbkdf2 = true;
    } else {
      std::cerr << "mtactl: unknown argument '" << a << "'\n";
      return Usage();
    }
  }
  if (action == "add") return AddOrSet(/*set=*/false, path, user, opts);
  if (action == "set") return AddOrSet(/*set=*/true, path, user, opts);
  if (action == "check") return Check(path, user);
  return Usage();
}

int Run(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    PrintUsage(std::cout);
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "passwd") return Passwd(std::vector<std::string>(args.begin() + 1, args.end()));
  if (IsAdminCommand(args[0])) return RunAdminCommand(args);
  std::cerr << "mtactl: unknown command '" << args[0] << "'\n";
  return Usage();
}

}  // namespace
}  // namespace mta::tools

int main(int argc, char** argv) { return mta::tools::Run(argc, argv); }
