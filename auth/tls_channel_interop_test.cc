// A TlsChannel client against a real Python ssl server (OpenSSL) on a loopback socket.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/sha.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <random>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "auth/tls_channel.h"
#include "auth/tls_channel_test_util.h"
#include "auth/tls_context.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

extern char** environ;

namespace mta::auth {
namespace {

// ---------------------------------------------------------------------------------------
// A real, independent TLS implementation: Python's ssl module (OpenSSL 3) on loopback.

// Reads one line from the client, answers with what it negotiated and a digest of the
// payload, then closes with close_notify and waits for ours (unwrap).
constexpr char kPythonServer[] = R"py(
import hashlib, socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
seen = []
ctx.sni_callback = lambda sslobj, name, c: seen.append(name)
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.bind(("127.0.0.1", 0))
srv.listen(1)
srv.settimeout(30)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
conn.settimeout(30)
tls = ctx.wrap_socket(conn, server_side=True)
data = b""
while not data.endswith(b"\r\n.\r\n"):
    chunk = tls.recv(65536)
    if not chunk:
        sys.exit("client closed before the end of the payload")
    data += chunk
body = data[:-5]
reply = "250 %s %s sni=%s len=%d sha256=%s\r\n" % (
    tls.version(), tls.cipher()[0], seen[0] if seen else "-", len(body),
    hashlib.sha256(body).hexdigest())
tls.sendall(reply.encode())
tls.unwrap()
conn.close()
)py";

// Kills and reaps the child if the test ends early.
class Subprocess {
 public:
  explicit Subprocess(pid_t pid) : pid_(pid) {}
  ~Subprocess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  // Waits up to `timeout_ms` for the exit status; -1 on timeout or abnormal exit.
  int Wait(int timeout_ms) {
    for (int waited = 0; waited <= timeout_ms; waited += 10) {
      int status = 0;
      const pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      usleep(10 * 1000);
    }
    return -1;
  }

 private:
  pid_t pid_;
};

TEST_F(TlsChannelTest, RealPythonTlsServerOverLoopback) {
  constexpr char kPython[] = "/usr/bin/python3";
  ASSERT_EQ(access(kPython, X_OK), 0) << kPython << " is required (Debian package python3)";

  int out_pipe[2];
  ASSERT_EQ(pipe(out_pipe), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, out_pipe[0]);
  posix_spawn_file_actions_addclose(&actions, out_pipe[1]);
  std::vector<std::string> args = {kPython, "-c", kPythonServer, pki_->server_cert,
                                   pki_->server_key};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int spawn_error = posix_spawn(&pid, kPython, &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  ASSERT_EQ(spawn_error, 0) << strerror(spawn_error);
  Subprocess child(pid);

  // The server prints its port once it listens.
  std::string port_line;
  while (port_line.find('\n') == std::string::npos) {
    pollfd pfd = {.fd = out_pipe[0], .events = POLLIN, .revents = 0};
    ASSERT_EQ(poll(&pfd, 1, 20000), 1) << "the Python server did not start";
    char c[64];
    const ssize_t n = read(out_pipe[0], c, sizeof(c));
    ASSERT_GT(n, 0) << "the Python server exited before listening";
    port_line.append(c, n);
  }
  close(out_pipe[0]);
  const int port = std::atoi(port_line.c_str());
  ASSERT_GT(port, 0) << port_line;

  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  struct FdCloser {
    int fd;
    ~FdCloser() { close(fd); }
  } closer{fd};
  timeval tv = {.tv_sec = 20, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << strerror(errno);

  auto client_ctx = ClientContext(CertificateVerification::kVerify);
  ASSERT_TRUE(client_ctx);
  auto created = TlsChannel::CreateClient(*client_ctx, kServerName);
  ASSERT_TRUE(created.ok()) << created.status();
  TlsChannel& tls = **created;

  // The test does blocking socket I/O itself; the channel only transforms bytes.
  auto send_pending = [&]() -> bool {
    while (tls.PendingCiphertext() > 0) {
      std::string out;
      tls.TakeCiphertext(&out);
      size_t off = 0;
      while (off < out.size()) {
        const ssize_t n = send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL);
        if (n <= 0) return false;
        off += static_cast<size_t>(n);
      }
    }
    return true;
  };
  auto receive_some = [&]() -> absl::Status {
    char buf[16384];
    const size_t room = std::min(sizeof(buf), tls.ciphertext_in_capacity());
    if (room == 0) return absl::ResourceExhaustedError("inbound bound reached");
    const ssize_t n = recv(fd, buf, room, 0);
    if (n < 0) return absl::UnavailableError(absl::StrCat("recv: ", strerror(errno)));
    if (n == 0) return tls.FeedEndOfStream();
    return tls.FeedCiphertext(absl::string_view(buf, static_cast<size_t>(n)));
  };

  ASSERT_OK(tls.Handshake());
  ASSERT_TRUE(send_pending());
  while (tls.state() == TlsChannel::State::kHandshaking) {
    ASSERT_OK(receive_some());
    ASSERT_TRUE(send_pending());
  }
  ASSERT_TRUE(tls.established()) << tls.status();
  EXPECT_TRUE(tls.info().peer_certificate_verified);
  EXPECT_TRUE(tls.info().peer_name_matched);

  // 300 kB payload, larger than the default plaintext bound, then the terminator.
  std::mt19937 rng(42);
  std::string payload(300000, '\0');
  for (char& c : payload) c = static_cast<char>('a' + rng() % 26);
  const std::string message = payload + "\r\n.\r\n";
  size_t written = 0;
  while (written < message.size()) {
    const size_t n = std::min(message.size() - written, tls.plaintext_out_capacity());
    ASSERT_GT(n, 0u);
    ASSERT_OK(tls.WritePlaintext(absl::string_view(message).substr(written, n)));
    written += n;
    ASSERT_TRUE(send_pending());
  }

  std::string reply;
  while (!tls.read_closed()) {
    char buf[4096];
    absl::StatusOr<size_t> n = tls.ReadPlaintext(buf, sizeof(buf));
    ASSERT_TRUE(n.ok()) << n.status();
    if (*n > 0) {
      reply.append(buf, *n);
      continue;
    }
    if (tls.read_closed()) break;
    ASSERT_OK(receive_some());
    ASSERT_TRUE(send_pending());
  }
  EXPECT_TRUE(tls.close_notify_received()) << "Python's unwrap() sends close_notify";

  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(payload.data()), payload.size(), digest);
  const std::string hex =
      absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(digest), sizeof(digest)));
  EXPECT_EQ(reply,
            absl::StrCat("250 ", tls.info().protocol_version, " ", tls.info().cipher,
                         " sni=", kServerName, " len=", payload.size(), " sha256=", hex, "\r\n"));
  EXPECT_EQ(tls.info().protocol_version, "TLSv1.3");

  // unwrap() waits for our close_notify; the server exits 0 only if it arrives.
  ASSERT_OK(tls.Shutdown());
  ASSERT_TRUE(send_pending());
  shutdown(fd, SHUT_WR);
  EXPECT_EQ(child.Wait(20000), 0) << "the Python server failed (see its stderr above)";
}

}  // namespace
}  // namespace mta::auth
