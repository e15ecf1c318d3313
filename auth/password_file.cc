// Password hashes on BoringSSL: scrypt (RFC 7914, EVP_PBE_scrypt) for new entries and
// PBKDF2-HMAC-SHA256 (PKCS5_PBKDF2_HMAC) for files made by other tools; comparisons in
// constant time (CRYPTO_memcmp).
#include "auth/password_file.h"

#include <openssl/digest.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/rand.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "auth/ssl_errors.h"

#ifndef OPENSSL_IS_BORINGSSL
#error "auth/ must be built against BoringSSL (//third_party:boringssl), not OpenSSL"
#endif

namespace mta::auth {
namespace {

constexpr char kScrypt[] = "scrypt";
constexpr char kPbkdf2[] = "pbkdf2-sha256";
constexpr size_t kSaltBytes = 16;
constexpr size_t kKeyBytes = 32;
constexpr size_t kMinSaltBytes = 8;
constexpr size_t kMaxSaltBytes = 64;
constexpr size_t kMinKeyBytes = 16;
constexpr size_t kMaxKeyBytes = 64;
constexpr uint32_t kMaxPbkdf2Iterations = 100000000;
// scrypt needs 128 * r * N bytes: a file must not be able to make a verification take more.
constexpr uint64_t kMaxScryptBytes = uint64_t{256} << 20;
constexpr size_t kMaxUserBytes = 255;
constexpr size_t kMaxDomainBytes = 253;

std::atomic<uint64_t> kdf_evaluations{0};

struct ParsedHash {
  bool scrypt = true;
  ScryptParams scrypt_params;
  uint32_t iterations = 0;
  std::string salt;
  std::string key;
};

// Standard base64 without padding, the PHC string format's choice: no '=' to confuse with
// the parameter syntax, and nothing that needs quoting in a ':'-separated line.
std::string EncodeBase64(absl::string_view bytes) {
  std::string out = absl::Base64Escape(bytes);
  while (!out.empty() && out.back() == '=') out.pop_back();
  return out;
}

bool DecodeBase64(absl::string_view text, std::string* out) {
  // absl's decoder skips whitespace and takes padding; the format allows neither.
  for (char c : text) {
    if (!absl::ascii_isalnum(c) && c != '+' && c != '/') return false;
  }
  if (text.size() % 4 == 1) return false;
  return absl::Base64Unescape(text, out);
}

bool ParseDecimal(absl::string_view text, uint64_t max, uint64_t* out) {
  if (text.empty() || text.size() > 10) return false;
  for (char c : text) {
    if (!absl::ascii_isdigit(c)) return false;
  }
  return absl::SimpleAtoi(text, out) && *out <= max;
}

absl::Status HashError(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("password hash: ", why));
}

absl::Status ParseScryptParams(absl::string_view text, ScryptParams* params) {
  bool have_ln = false, have_r = false, have_p = false;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    size_t eq = item.find('=');
    absl::string_view name = item.substr(0, eq);
    uint64_t value = 0;
    if (eq == absl::string_view::npos || !ParseDecimal(item.substr(eq + 1), 1u << 30, &value)) {
      return HashError("scrypt parameters must look like ln=15,r=8,p=1");
    }
    if (name == "ln" && !have_ln) {
      have_ln = true;
      if (value < 10 || value > 24) return HashError("scrypt ln must be in [10, 24]");
      params->log2_n = static_cast<uint32_t>(value);
    } else if (name == "r" && !have_r) {
      have_r = true;
      if (value < 1 || value > 32) return HashError("scrypt r must be in [1, 32]");
      params->r = static_cast<uint32_t>(value);
    } else if (name == "p" && !have_p) {
      have_p = true;
      if (value < 1 || value > 16) return HashError("scrypt p must be in [1, 16]");
      params->p = static_cast<uint32_t>(value);
    } else {
      return HashError("scrypt parameters must be ln, r and p, each once");
    }
  }
  if (!have_ln || !have_r || !have_p) return HashError("scrypt parameters need ln, r and p");
  if ((uint64_t{128} * params->r) << params->log2_n > kMaxScryptBytes) {
    return HashError("scrypt parameters need more than 256 MiB (128 * r * 2^ln)");
  }
  return absl::OkStatus();
}

absl::StatusOr<ParsedHash> ParseHash(absl::string_view hash) {
  std::vector<absl::string_view> parts = absl::StrSplit(hash, '$');
  if (parts.size() != 4) return HashError("must be scheme$params$salt$hash");
  ParsedHash h;
  if (parts[0] == kScrypt) {
    h.scrypt = true;
    absl::Status s = ParseScryptParams(parts[1], &h.scrypt_params);
    if (!s.ok()) return s;
  } else if (parts[0] == kPbkdf2) {
    h.scrypt = false;
    uint64_t iterations = 0;
    if (!absl::StartsWith(parts[1], "i=") ||
        !ParseDecimal(parts[1].substr(2), kMaxPbkdf2Iterations, &iterations)) {
      return HashError(
          absl::StrCat("pbkdf2-sha256 parameters must be i=N with N <= ", kMaxPbkdf2Iterations));
    }
    if (iterations < kMinPbkdf2Iterations) {
      return HashError(absl::StrCat("pbkdf2-sha256 needs at least ", kMinPbkdf2Iterations,
                                    " iterations, got ", iterations));
    }
    h.iterations = static_cast<uint32_t>(iterations);
  } else {
    return HashError(absl::StrCat("unknown scheme \"", absl::CHexEscape(parts[0]),
                                  "\" (use scrypt or pbkdf2-sha256)"));
  }
  if (!DecodeBase64(parts[2], &h.salt) || h.salt.size() < kMinSaltBytes ||
      h.salt.size() > kMaxSaltBytes) {
    return HashError(absl::StrCat("salt must be ", kMinSaltBytes, " to ", kMaxSaltBytes,
                                  " bytes in unpadded base64"));
  }
  if (!DecodeBase64(parts[3], &h.key) || h.key.size() < kMinKeyBytes ||
      h.key.size() > kMaxKeyBytes) {
    return HashError(absl::StrCat("hash must be ", kMinKeyBytes, " to ", kMaxKeyBytes,
                                  " bytes in unpadded base64"));
  }
  return h;
}

std::string FormatHash(const ParsedHash& h) {
  std::string params = h.scrypt ? absl::StrCat("ln=", h.scrypt_params.log2_n,
                                               ",r=", h.scrypt_params.r, ",p=", h.scrypt_params.p)
                                : absl::StrCat("i=", h.iterations);
  return absl::StrCat(h.scrypt ? kScrypt : kPbkdf2, "$", params, "$", EncodeBase64(h.salt), "$",
                      EncodeBase64(h.key));
}

// Runs the hash's KDF over `password` into `out` (h.key.size() bytes).
absl::Status Derive(const ParsedHash& h, absl::string_view password, uint8_t* out, size_t out_len) {
  kdf_evaluations.fetch_add(1, std::memory_order_relaxed);
  const auto* salt = reinterpret_cast<const uint8_t*>(h.salt.data());
  int ok;
  if (h.scrypt) {
    const uint64_t n = uint64_t{1} << h.scrypt_params.log2_n;
    const uint64_t r = h.scrypt_params.r;
    const uint64_t p = h.scrypt_params.p;
    // BoringSSL's working set is 128 * r * (N + p + 1) bytes; its default cap (32 MiB) is
    // just below what the default parameters need.
    const size_t max_mem = static_cast<size_t>(128 * r * (n + p + 1));
    ok = EVP_PBE_scrypt(password.data(), password.size(), salt, h.salt.size(), n, r, p, max_mem,
                        out, out_len);
  } else {
    ok = PKCS5_PBKDF2_HMAC(password.data(), password.size(), salt, h.salt.size(), h.iterations,
                           EVP_sha256(), out_len, out);
  }
  if (ok != 1) {
    return absl::InternalError(absl::StrCat("password KDF failed: ", ConsumeSslErrors()));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> VerifyParsed(const ParsedHash& h, absl::string_view password) {
  std::string derived(h.key.size(), '\0');
  auto* out = reinterpret_cast<uint8_t*>(derived.data());
  absl::Status s = Derive(h, password, out, derived.size());
  bool match = s.ok() && CRYPTO_memcmp(out, h.key.data(), h.key.size()) == 0;
  OPENSSL_cleanse(derived.data(), derived.size());
  if (!s.ok()) return s;
  return match;
}

absl::StatusOr<std::string> NewHash(ParsedHash h, absl::string_view password) {
  h.salt.resize(kSaltBytes);
  RAND_bytes(reinterpret_cast<uint8_t*>(h.salt.data()), h.salt.size());
  h.key.resize(kKeyBytes);
  absl::Status s = Derive(h, password, reinterpret_cast<uint8_t*>(h.key.data()), h.key.size());
  if (!s.ok()) return s;
  return FormatHash(h);
}

// What an unknown user's password is checked against: the default cost, so that a miss takes
// as long as a hit on an entry made with the defaults.
const ParsedHash& DummyHash() {
  static const ParsedHash* dummy = [] {
    auto* h = new ParsedHash;
    h->salt.assign(kSaltBytes, '\x5a');
    h->key.assign(kKeyBytes, '\0');
    return h;
  }();
  return *dummy;
}

absl::Status LineError(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

absl::Status CheckUserName(absl::string_view user) {
  if (user.empty()) return LineError("user", "must not be empty");
  if (user.size() > kMaxUserBytes) return LineError("user", "longer than 255 bytes");
  if (user[0] == '#') return LineError("user", "must not start with '#'");
  for (unsigned char c : user) {
    if (c <= ' ' || c == 127) {
      return LineError("user", "must not contain spaces or control characters");
    }
  }
  return absl::OkStatus();
}

bool IsDomain(absl::string_view d) {
  if (d.empty() || d.size() > kMaxDomainBytes || d.front() == '.' || d.back() == '.') {
    return false;
  }
  for (unsigned char c : d) {
    if (!(absl::ascii_isalnum(c) || c == '-' || c == '.' || c >= 0x80)) return false;
  }
  return d.find("..") == absl::string_view::npos;
}

bool IsStreamName(absl::string_view name) {
  for (char c : name) {
    if (!(absl::ascii_isalnum(c) || c == '_' || c == '.' || c == '-')) return false;
  }
  return !name.empty();
}

// The part of a line that matters: no surrounding blanks (nor the CR of a CRLF file).
absl::string_view Content(absl::string_view line) { return absl::StripAsciiWhitespace(line); }
bool IsSkipped(absl::string_view content) { return content.empty() || content[0] == '#'; }

}  // namespace

uint64_t KdfEvaluations() { return kdf_evaluations.load(std::memory_order_relaxed); }

absl::StatusOr<std::string> HashPassword(absl::string_view password, const ScryptParams& params) {
  ParsedHash h;
  h.scrypt = true;
  h.scrypt_params = params;
  // Validate through the parser so every hash we write is one we accept.
  absl::Status s = ParseScryptParams(
      absl::StrCat("ln=", params.log2_n, ",r=", params.r, ",p=", params.p), &h.scrypt_params);
  if (!s.ok()) return s;
  return NewHash(std::move(h), password);
}

absl::StatusOr<std::string> HashPasswordPbkdf2(absl::string_view password, uint32_t iterations) {
  if (iterations < kMinPbkdf2Iterations || iterations > kMaxPbkdf2Iterations) {
    return HashError(absl::StrCat("pbkdf2-sha256 iterations must be in [", kMinPbkdf2Iterations,
                                  ", ", kMaxPbkdf2Iterations, "]"));
  }
  ParsedHash h;
  h.scrypt = false;
  h.iterations = iterations;
  return NewHash(std::move(h), password);
}

absl::Status CheckPasswordHash(absl::string_view hash) { return ParseHash(hash).status(); }

absl::StatusOr<bool> VerifyPasswordHash(absl::string_view hash, absl::string_view password) {
  absl::StatusOr<ParsedHash> h = ParseHash(hash);
  if (!h.ok()) return h.status();
  return VerifyParsed(*h, password);
}

absl::StatusOr<PasswordEntry> ParsePasswordLine(absl::string_view line) {
  std::vector<absl::string_view> fields = absl::StrSplit(Content(line), ':');
  if (fields.size() < 3 || fields.size() > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected user:hash:sender_domains[:stream], got ", fields.size(),
                     fields.size() == 1 ? " field" : " fields"));
  }
  PasswordEntry e;
  absl::Status s = CheckUserName(fields[0]);
  if (!s.ok()) return s;
  e.user.name = std::string(fields[0]);
  s = CheckPasswordHash(fields[1]);
  if (!s.ok()) return s;
  e.hash = std::string(fields[1]);
  if (fields[2] == "*") {
    e.user.any_sender_domain = true;
  } else {
    for (absl::string_view d : absl::StrSplit(fields[2], ',')) {
      if (!IsDomain(d)) {
        return LineError("sender domains",
                         absl::StrCat("must be '*' or a comma list of domains, got \"",
                                      absl::CHexEscape(fields[2]), "\""));
      }
      std::string lower = absl::AsciiStrToLower(d);
      if (!e.user.MaySendFrom(lower)) e.user.sender_domains.push_back(std::move(lower));
    }
  }
  if (fields.size() == 4 && !fields[3].empty()) {
    if (!IsStreamName(fields[3])) {
      return LineError("stream", "must be letters, digits, '_', '.' or '-'");
    }
    e.user.stream = std::string(fields[3]);
  }
  return e;
}

std::string FormatPasswordLine(const PasswordEntry& e) {
  std::string line =
      absl::StrCat(e.user.name, ":", e.hash, ":",
                   e.user.any_sender_domain ? "*" : absl::StrJoin(e.user.sender_domains, ","));
  if (!e.user.stream.empty()) absl::StrAppend(&line, ":", e.user.stream);
  return line;
}

absl::StatusOr<std::string> UpsertPasswordLine(absl::string_view text, const PasswordEntry& entry,
                                               bool must_exist) {
  std::string out;
  out.reserve(text.size() + 256);
  bool found = false;
  size_t line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    ++line_no;
    size_t nl = text.find('\n', pos);
    size_t end = nl == absl::string_view::npos ? text.size() : nl;
    absl::string_view line = text.substr(pos, end - pos);
    absl::string_view terminator = text.substr(end, nl == absl::string_view::npos ? 0 : 1);
    pos = end + terminator.size();
    if (IsSkipped(Content(line))) {
      absl::StrAppend(&out, line, terminator);
      continue;
    }
    absl::StatusOr<PasswordEntry> parsed = ParsePasswordLine(line);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_no, ": ", parsed.status().message()));
    }
    if (parsed->user.name != entry.user.name) {
      absl::StrAppend(&out, line, terminator);
      continue;
    }
    if (found) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_no, ": duplicate user '", entry.user.name, "'"));
    }
    found = true;
    absl::StrAppend(&out, FormatPasswordLine(entry), terminator);
  }
  if (must_exist && !found) {
    return absl::NotFoundError(absl::StrCat("no user '", entry.user.name, "'"));
  }
  if (!must_exist && found) {
    return absl::AlreadyExistsError(absl::StrCat("user '", entry.user.name, "' already exists"));
  }
  if (!found) {
    if (!out.empty() && out.back() != '\n') out.push_back('\n');
    absl::StrAppend(&out, FormatPasswordLine(entry), "\n");
  }
  return out;
}

absl::StatusOr<std::unique_ptr<const PasswordFile>> PasswordFile::Parse(
    absl::string_view text, absl::string_view source_name) {
  std::unique_ptr<PasswordFile> file(new PasswordFile);
  absl::flat_hash_map<std::string, size_t> first_line;
  size_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (IsSkipped(Content(line))) continue;
    absl::StatusOr<PasswordEntry> e = ParsePasswordLine(line);
    if (!e.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source_name, ":", line_no, ": ", e.status().message()));
    }
    auto [it, inserted] = first_line.emplace(e->user.name, line_no);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(source_name, ":", line_no,
                                                     ": duplicate user '", e->user.name,
                                                     "' (first on line ", it->second, ")"));
    }
    file->by_name_.emplace(e->user.name, file->entries_.size());
    file->entries_.push_back(*std::move(e));
  }
  return std::unique_ptr<const PasswordFile>(std::move(file));
}

absl::StatusOr<std::unique_ptr<const PasswordFile>> PasswordFile::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat(path, ": cannot open password file: ", std::strerror(errno)));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) {
    return absl::UnavailableError(absl::StrCat(path, ": read error: ", std::strerror(errno)));
  }
  return Parse(ss.str(), path);
}

const PasswordEntry* PasswordFile::Find(absl::string_view user) const {
  auto it = by_name_.find(user);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

absl::StatusOr<AuthUser> PasswordFile::Verify(absl::string_view user,
                                              absl::string_view password) const {
  const PasswordEntry* e = Find(user);
  if (e == nullptr) {
    absl::StatusOr<bool> dummy = VerifyParsed(DummyHash(), password);
    if (!dummy.ok()) return dummy.status();
    return absl::PermissionDeniedError("invalid credentials");
  }
  absl::StatusOr<bool> match = VerifyPasswordHash(e->hash, password);
  if (!match.ok()) return match.status();
  if (!*match) return absl::PermissionDeniedError("invalid credentials");
  return e->user;
}

}  // namespace mta::auth
