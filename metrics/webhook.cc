// The webhook shipper and the minimal HTTP/1.1 client it needs.
//
// Why a hand-written client: Debian 12 has no HTTP client library that fits this process.
// libcurl4 links OpenSSL 3, which exports the same symbols (SSL_new, X509_*, ...) as the
// BoringSSL that mtad already links via //third_party:boringssl, so one library's calls would
// silently bind to the other's functions; libcurl3-gnutls and libcurl3-nss avoid the clash
// only by adding a second TLS stack with its own trust store configuration. Debian's
// cpp-httplib is likewise a shared library built against OpenSSL 3, and Boost.Beast would
// bring Boost.Asio for one request. What the shipper needs is small: one POST per batch on
// its own thread with `Connection: close`, a Content-Length body, and only the status line
// of the answer. So it is done here with non-blocking sockets driven by poll() (for the
// timeout and a prompt shutdown) and BoringSSL for https, verified against the system's CAs
// (or WebhookOptions::ca_file) with the host name checked and sent as SNI.
#include "metrics/webhook.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <optional>
#include <random>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "mta/base/log.h"
#include "mta/base/status_macros.h"

namespace mta::metrics {
namespace {

constexpr char kCursorFileName[] = "webhook.cursor";
constexpr char kCursorTmpName[] = "webhook.cursor.tmp";
// Only the status line matters; a longer answer is cut off there.
constexpr size_t kMaxResponseBytes = 64 << 10;
constexpr size_t kReadChunkBytes = 256 << 10;

std::string SslErrorText() {
  std::string out;
  for (int i = 0; i < 16; ++i) {
    const uint32_t packed = ERR_get_error();
    if (packed == 0) break;
    char buf[256];
    ERR_error_string_n(packed, buf, sizeof(buf));
    if (!out.empty()) out.append("; ");
    out.append(buf);
  }
  ERR_clear_error();
  return out.empty() ? "unknown TLS error" : out;
}

std::string SockaddrText(const sockaddr* addr) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (addr->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(addr)->sin_addr, host, sizeof(host));
  } else if (addr->sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(addr)->sin6_addr, host,
              sizeof(host));
  }
  return host;
}

bool IsIpLiteral(const std::string& host) {
  in6_addr addr;
  return inet_pton(AF_INET, host.c_str(), &addr) == 1 ||
         inet_pton(AF_INET6, host.c_str(), &addr) == 1;
}

// RFC 9110 token characters, for header names.
bool IsToken(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(c) && !absl::StrContains("!#$%&'*+-.^_`|~", c)) return false;
  }
  return true;
}

/**
 * One HTTP exchange's socket. Every wait polls the socket together with the shipper's stop
 * eventfd and stops at the deadline shared by all steps of the exchange.
 */
class Connection {
 public:
  Connection(int stop_fd, absl::Time deadline) : stop_fd_(stop_fd), deadline_(deadline) {}
  ~Connection() {
    if (ssl_ != nullptr) SSL_free(ssl_);
    if (fd_ >= 0) ::close(fd_);
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  absl::Status Connect(const std::string& host, uint16_t port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* res = nullptr;
    const std::string port_text = absl::StrCat(port);
    const int rc = ::getaddrinfo(host.c_str(), port_text.c_str(), &hints, &res);
    if (rc != 0) {
      return absl::UnavailableError(absl::StrCat("resolving ", host, ": ", gai_strerror(rc)));
    }
    absl::Status last = absl::UnavailableError(absl::StrCat("no address for ", host));
    for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
      const std::string where = absl::StrCat(SockaddrText(ai->ai_addr), " port ", port);
      int fd = ::socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        last = absl::ErrnoToStatus(errno, "socket");
        continue;
      }
      int error = 0;
      if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        error = errno;
        if (error == EINPROGRESS) {
          absl::Status s = Wait(fd, POLLOUT, "connecting");
          if (!s.ok()) {
            ::close(fd);
            ::freeaddrinfo(res);
            return absl::Status(s.code(), absl::StrCat(s.message(), " to ", where));
          }
          socklen_t len = sizeof(error);
          if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0) error = errno;
        }
      }
      if (error != 0) {
        ::close(fd);
        last = absl::UnavailableError(absl::StrCat("connecting to ", where, ": ", strerror(error)));
        continue;
      }
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      fd_ = fd;
      ::freeaddrinfo(res);
      return absl::OkStatus();
    }
    ::freeaddrinfo(res);
    return last;
  }

  absl::Status StartTls(SSL_CTX* ctx, const std::string& host) {
    ERR_clear_error();
    ssl_ = SSL_new(ctx);
    if (ssl_ == nullptr || SSL_set_fd(ssl_, fd_) != 1) {
      return absl::InternalError(absl::StrCat("SSL_new: ", SslErrorText()));
    }
    // SNI carries host names only, never IP literals (RFC 6066 section 3); an IP literal is
    // matched against the certificate's IP addresses instead.
    const bool ip = IsIpLiteral(host);
    if (!ip && SSL_set_tlsext_host_name(ssl_, host.c_str()) != 1) {
      return absl::InternalError(absl::StrCat("setting SNI: ", SslErrorText()));
    }
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl_);
    if ((ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str())
            : X509_VERIFY_PARAM_set1_host(param, host.data(), host.size())) != 1) {
      return absl::InternalError(absl::StrCat("setting the name to verify: ", SslErrorText()));
    }
    for (;;) {
      ERR_clear_error();
      const int r = SSL_connect(ssl_);
      if (r == 1) return absl::OkStatus();
      const int err = SSL_get_error(ssl_, r);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        MTA_RETURN_IF_ERROR(
            Wait(fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, "in the TLS handshake"));
        continue;
      }
      const long verify = SSL_get_verify_result(ssl_);
      if (verify != X509_V_OK) {
        ERR_clear_error();
        return absl::UnavailableError(
            absl::StrCat("TLS handshake with ", host,
                         ": certificate not accepted: ", X509_verify_cert_error_string(verify)));
      }
      if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        return absl::UnavailableError(absl::StrCat("TLS handshake with ", host, ": ",
                                                   r == 0 ? "connection closed" : strerror(errno)));
      }
      return absl::UnavailableError(
          absl::StrCat("TLS handshake with ", host, ": ", SslErrorText()));
    }
  }

  absl::Status WriteAll(absl::string_view data) {
    while (!data.empty()) {
      if (ssl_ != nullptr) {
        // Without SSL_MODE_ENABLE_PARTIAL_WRITE, SSL_write writes all or nothing and a retry
        // passes the same buffer, as BoringSSL requires.
        ERR_clear_error();
        const int r =
            SSL_write(ssl_, data.data(), static_cast<int>(std::min<size_t>(data.size(), INT_MAX)));
        if (r > 0) {
          data.remove_prefix(static_cast<size_t>(r));
          continue;
        }
        const int err = SSL_get_error(ssl_, r);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
          MTA_RETURN_IF_ERROR(
              Wait(fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, "sending the request"));
          continue;
        }
        return absl::UnavailableError(absl::StrCat(
            "sending the request: ",
            err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 ? strerror(errno) : SslErrorText()));
      }
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n > 0) {
        data.remove_prefix(static_cast<size_t>(n));
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        MTA_RETURN_IF_ERROR(Wait(fd_, POLLOUT, "sending the request"));
      } else if (n < 0 && errno != EINTR) {
        return absl::UnavailableError(absl::StrCat("sending the request: ", strerror(errno)));
      }
    }
    return absl::OkStatus();
  }

  /** Reads some bytes; 0 at the end of the stream. */
  absl::StatusOr<size_t> Read(char* buf, size_t len) {
    for (;;) {
      if (ssl_ != nullptr) {
        ERR_clear_error();
        const int r = SSL_read(ssl_, buf, static_cast<int>(std::min<size_t>(len, INT_MAX)));
        if (r > 0) return static_cast<size_t>(r);
        const int err = SSL_get_error(ssl_, r);
        if (err == SSL_ERROR_ZERO_RETURN) return 0;
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
          MTA_RETURN_IF_ERROR(
              Wait(fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, "waiting for the answer"));
          continue;
        }
        // Many servers close without close_notify after `Connection: close`. Truncation
        // does not matter here: only the status line is used.
        if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && r == 0) return 0;
        return absl::UnavailableError(absl::StrCat(
            "reading the response: ",
            err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 ? strerror(errno) : SslErrorText()));
      }
      const ssize_t n = ::recv(fd_, buf, len, 0);
      if (n >= 0) return static_cast<size_t>(n);
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        MTA_RETURN_IF_ERROR(Wait(fd_, POLLIN, "waiting for the answer"));
      } else if (errno != EINTR) {
        return absl::UnavailableError(absl::StrCat("reading the response: ", strerror(errno)));
      }
    }
  }

 private:
  /** `what` names the step for the timeout's message, e.g. "reading the response". */
  absl::Status Wait(int fd, short events, const char* what) {
    for (;;) {
      const absl::Duration left = deadline_ - absl::Now();
      if (left <= absl::ZeroDuration()) {
        return absl::DeadlineExceededError(absl::StrCat("timed out ", what));
      }
      pollfd fds[2] = {{fd, events, 0}, {stop_fd_, POLLIN, 0}};
      const int ms = static_cast<int>(std::clamp<int64_t>(
          absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))), 1, INT_MAX));
      const int r = ::poll(fds, 2, ms);
      if (r < 0) {
        if (errno == EINTR) continue;
        return absl::ErrnoToStatus(errno, "poll");
      }
      if (fds[1].revents != 0) return absl::CancelledError("the shipper is stopping");
      // Errors and hang-ups count as ready: the next call reports them.
      if (fds[0].revents != 0) return absl::OkStatus();
    }
  }

  const int stop_fd_;
  const absl::Time deadline_;
  int fd_ = -1;
  SSL* ssl_ = nullptr;
};

/** What is known of an answer so far. */
struct Response {
  int status = 0;  // final (non-1xx) status once its line arrived
  std::string status_line;
  bool complete = false;  // headers and Content-Length bytes of body are in
  bool malformed = false;
};

Response ParseResponse(absl::string_view data) {
  Response out;
  for (;;) {
    const size_t eol = data.find("\r\n");
    if (eol == absl::string_view::npos) return out;
    const absl::string_view line = data.substr(0, eol);
    // "HTTP/1.1 200 OK"
    int code = 0;
    if (!absl::StartsWith(line, "HTTP/") || line.size() < 12 || line[8] != ' ' ||
        !absl::SimpleAtoi(line.substr(9, 3), &code) || code < 100 || code > 999) {
      out.malformed = true;
      out.status_line = std::string(line.substr(0, 80));
      return out;
    }
    const size_t head_end = data.find("\r\n\r\n");
    if (code < 200) {  // interim (100 Continue and the like): the real answer follows
      if (head_end == absl::string_view::npos) return out;
      data.remove_prefix(head_end + 4);
      continue;
    }
    out.status = code;
    out.status_line = std::string(line.substr(0, 200));
    if (head_end == absl::string_view::npos) return out;
    const absl::string_view headers = data.substr(eol + 2, head_end - eol - 2);
    for (absl::string_view header : absl::StrSplit(headers, "\r\n")) {
      const size_t colon = header.find(':');
      if (colon == absl::string_view::npos) continue;
      if (!absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(header.substr(0, colon)),
                                  "content-length")) {
        continue;
      }
      uint64_t length = 0;
      if (absl::SimpleAtoi(absl::StripAsciiWhitespace(header.substr(colon + 1)), &length)) {
        out.complete = data.size() - (head_end + 4) >= length;
      }
    }
    return out;
  }
}

bool ParseCursor(absl::string_view text, std::string* file, uint64_t* offset) {
  if (!absl::ConsumeSuffix(&text, "\n")) return false;
  const size_t space = text.find(' ');
  if (space == absl::string_view::npos) return false;
  const absl::string_view name = text.substr(0, space);
  if (!IsEventLogFileName(name) || !absl::SimpleAtoi(text.substr(space + 1), offset)) {
    return false;
  }
  *file = std::string(name);
  return true;
}

}  // namespace

absl::StatusOr<WebhookShipper::Url> WebhookShipper::ParseUrl(absl::string_view text) {
  Url url;
  absl::string_view rest = text;
  if (absl::StartsWithIgnoreCase(rest, "https://")) {
    url.https = true;
    rest.remove_prefix(8);
  } else if (absl::StartsWithIgnoreCase(rest, "http://")) {
    rest.remove_prefix(7);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("webhook url '", text, "': must start with http:// or https://"));
  }
  const size_t authority_end = rest.find_first_of("/?#");
  absl::string_view authority = rest.substr(0, authority_end);
  absl::string_view path =
      authority_end == absl::string_view::npos ? "" : rest.substr(authority_end);
  path = path.substr(0, path.find('#'));  // a fragment is never sent
  if (authority.find('@') != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "webhook url '", text, "': user:password@ is not supported; use an Authorization header"));
  }
  absl::string_view port_text;
  if (absl::ConsumePrefix(&authority, "[")) {
    const size_t close = authority.find(']');
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("webhook url '", text, "': missing ']'"));
    }
    url.host = std::string(authority.substr(0, close));
    absl::string_view after = authority.substr(close + 1);
    if (!after.empty() && !absl::ConsumePrefix(&after, ":")) {
      return absl::InvalidArgumentError(absl::StrCat("webhook url '", text, "': bad authority"));
    }
    port_text = after;
    in6_addr addr;
    if (inet_pton(AF_INET6, url.host.c_str(), &addr) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("webhook url '", text, "': bad IPv6 address in []"));
    }
  } else {
    const size_t colon = authority.rfind(':');
    url.host = std::string(authority.substr(0, colon));
    if (colon != absl::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (url.host.empty() || std::any_of(url.host.begin(), url.host.end(), [](unsigned char c) {
        return c <= ' ' || c >= 0x7f || c == '/' || c == '\\' || c == '[' || c == ']';
      })) {
    return absl::InvalidArgumentError(absl::StrCat("webhook url '", text, "': bad host"));
  }
  url.port = url.https ? 443 : 80;
  if (!port_text.empty()) {
    int port = 0;
    if (!absl::SimpleAtoi(port_text, &port) || port < 1 || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("webhook url '", text, "': bad port"));
    }
    url.port = static_cast<uint16_t>(port);
  }
  if (std::any_of(path.begin(), path.end(),
                  [](unsigned char c) { return c <= ' ' || c >= 0x7f; })) {
    return absl::InvalidArgumentError(
        absl::StrCat("webhook url '", text, "': the path must be percent-encoded"));
  }
  url.path = path.empty() ? "/" : std::string(path);
  if (url.path[0] == '?') url.path.insert(0, "/");
  const std::string host =
      url.host.find(':') != std::string::npos ? absl::StrCat("[", url.host, "]") : url.host;
  url.host_header = url.port == (url.https ? 443 : 80) ? host : absl::StrCat(host, ":", url.port);
  return url;
}

WebhookShipper::WebhookShipper(WebhookOptions options, EventLog* log)
    : options_(std::move(options)), log_(log), directory_(log->directory()) {}

absl::StatusOr<std::unique_ptr<WebhookShipper>> WebhookShipper::Start(WebhookOptions options,
                                                                      EventLog* log) {
  if (log == nullptr) return absl::InvalidArgumentError("webhook: no event log");
  MTA_ASSIGN_OR_RETURN(Url url, ParseUrl(options.url));
  if (options.max_batch_events == 0 || options.max_batch_bytes == 0 ||
      options.batch_interval <= absl::ZeroDuration() || options.timeout <= absl::ZeroDuration() ||
      options.min_backoff <= absl::ZeroDuration() || options.max_backoff < options.min_backoff) {
    return absl::InvalidArgumentError(
        "webhook: batch limits, intervals and timeouts must be positive and "
        "min_backoff <= max_backoff");
  }
  std::string head = absl::StrCat("POST ", url.path, " HTTP/1.1\r\nHost: ", url.host_header,
                                  "\r\nUser-Agent: mtad-webhook\r\n"
                                  "Content-Type: application/json\r\nConnection: close\r\n");
  for (const auto& [name, value] : options.headers) {
    if (!IsToken(name) || absl::EqualsIgnoreCase(name, "content-length") ||
        absl::EqualsIgnoreCase(name, "host") || absl::EqualsIgnoreCase(name, "connection") ||
        absl::EqualsIgnoreCase(name, "transfer-encoding")) {
      return absl::InvalidArgumentError(
          absl::StrCat("webhook: header name '", name, "' is invalid or set by the shipper"));
    }
    if (value.find_first_of(std::string("\r\n\0", 3)) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("webhook: the value of header '", name, "' contains CR, LF or NUL"));
    }
    absl::StrAppend(&head, name, ": ", value, "\r\n");
  }
  absl::StrAppend(&head, "Content-Length: ");

  std::unique_ptr<WebhookShipper> shipper(new WebhookShipper(std::move(options), log));
  shipper->url_ = std::move(url);
  shipper->request_head_ = std::move(head);
  const WebhookOptions& opts = shipper->options_;
  if (shipper->url_.https) {
    ERR_clear_error();
    SSL_CTX* ctx = SSL_CTX_new(TLS_method());
    if (ctx == nullptr) return absl::InternalError(absl::StrCat("SSL_CTX_new: ", SslErrorText()));
    shipper->ssl_ctx_ = ctx;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    const bool loaded = opts.ca_file.empty() ? SSL_CTX_set_default_verify_paths(ctx) == 1
                                             : SSL_CTX_load_verify_locations(
                                                   ctx, opts.ca_file.c_str(), nullptr) == 1;
    if (!loaded) {
      return absl::InvalidArgumentError(
          absl::StrCat("webhook: loading CA certificates from ",
                       opts.ca_file.empty() ? "the system's default paths" : opts.ca_file, ": ",
                       SslErrorText()));
    }
  }
  shipper->stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (shipper->stop_fd_ < 0) return absl::ErrnoToStatus(errno, "webhook: eventfd");

  const std::string cursor_path = absl::StrCat(shipper->directory_, "/", kCursorFileName);
  int fd = ::open(cursor_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char buf[256];
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    ::close(fd);
    Position pos;
    if (n > 0 &&
        ParseCursor(absl::string_view(buf, static_cast<size_t>(n)), &pos.file, &pos.offset)) {
      shipper->cursor_ = std::move(pos);
    } else {
      MTA_LOG_ERROR("webhook: %s is unreadable; shipping the whole log again (at least once)",
                    cursor_path);
    }
  } else if (errno != ENOENT) {
    return absl::ErrnoToStatus(errno, absl::StrCat("webhook: open ", cursor_path));
  }
  log->SetWebhookCursor(shipper->cursor_.file, shipper->cursor_.offset);
  shipper->RefreshBacklog();
  shipper->thread_ = std::thread([raw = shipper.get()] { raw->Run(); });
  return shipper;
}

WebhookShipper::~WebhookShipper() {
  if (stop_fd_ >= 0) {
    const uint64_t one = 1;
    ssize_t ignored = ::write(stop_fd_, &one, sizeof(one));
    (void)ignored;  // an eventfd write of 1 cannot fail short of overflow
  }
  if (thread_.joinable()) thread_.join();
  if (stop_fd_ >= 0) ::close(stop_fd_);
  if (ssl_ctx_ != nullptr) SSL_CTX_free(ssl_ctx_);
}

bool WebhookShipper::Sleep(absl::Duration duration) {
  const absl::Time until = absl::Now() + duration;
  for (;;) {
    const absl::Duration left = until - absl::Now();
    pollfd fd = {stop_fd_, POLLIN, 0};
    const int ms =
        left <= absl::ZeroDuration()
            ? 0
            : static_cast<int>(std::min<int64_t>(
                  absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))), INT_MAX));
    const int r = ::poll(&fd, 1, ms);
    if (r > 0) return false;
    if (r == 0 || errno != EINTR) return true;
  }
}

void WebhookShipper::Run() {
  pthread_setname_np(pthread_self(), "webhook");
  // A peer that resets the connection must not raise SIGPIPE in a process that does not
  // ignore it (BoringSSL writes with write(2), without MSG_NOSIGNAL). Blocked here, the
  // signal stays pending on this thread and is discarded when the thread ends.
  sigset_t pipe_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, nullptr);

  std::mt19937_64 rng(std::random_device{}());
  absl::Duration backoff = absl::ZeroDuration();
  // Logged once per change between working and failing, not per retry.
  bool failing = false;
  absl::Time failing_since;
  uint64_t failures = 0;
  bool read_failing = false;
  // A failed batch is retried as it is: the same events, read (and warned about) once.
  std::optional<Batch> batch;
  for (;;) {
    if (!batch.has_value()) {
      absl::StatusOr<Batch> read = ReadBatch();
      if (!read.ok()) {
        if (!read_failing) {
          MTA_LOG_ERROR("webhook: reading the event log failed: %s", read.status().ToString());
          read_failing = true;
        }
        if (!Sleep(options_.batch_interval)) return;
        continue;
      }
      read_failing = false;
      if (read->events == 0) {
        if (read->end.file != cursor_.file || read->end.offset != cursor_.offset) {
          // Only skipped lines, or the step to the next file: record it, so that the
          // EventLog may delete the file passed.
          Advance(read->end);
          continue;
        }
        if (!Sleep(options_.batch_interval)) return;
        continue;
      }
      batch = std::move(read).value();
    }
    absl::Status s = Post(batch->body);
    if (s.ok()) {
      Advance(batch->end);
      shipped_events_.fetch_add(batch->events, std::memory_order_relaxed);
      const bool full = batch->full;
      batch.reset();
      if (failing) {
        MTA_LOG_INFO(
            "webhook: %s accepts events again after %d failed POSTs over %s", options_.url,
            failures,
            absl::FormatDuration(absl::Trunc(absl::Now() - failing_since, absl::Milliseconds(1))));
        failing = false;
      }
      backoff = absl::ZeroDuration();
      if (!full && !Sleep(options_.batch_interval)) return;
      continue;
    }
    if (s.code() == absl::StatusCode::kCancelled) return;  // stopping
    failed_posts_.fetch_add(1, std::memory_order_relaxed);
    RefreshBacklog();
    if (!failing) {
      failing = true;
      failing_since = absl::Now();
      failures = 0;
      MTA_LOG_ERROR(
          "webhook: POST to %s failed: %s; retrying with backoff, events wait in %s (backlog "
          "%d bytes)",
          options_.url, s.ToString(), directory_, backlog_bytes());
    } else {
      MTA_LOG_DEBUG("webhook: POST to %s failed again: %s", options_.url, s.ToString());
    }
    ++failures;
    backoff = backoff == absl::ZeroDuration() ? options_.min_backoff
                                              : std::min(backoff * 2, options_.max_backoff);
    // Uniform in [backoff/2, backoff], so that many senders restarted together spread out.
    std::uniform_real_distribution<double> jitter(0.5, 1.0);
    if (!Sleep(backoff * jitter(rng))) return;
  }
}

void WebhookShipper::Advance(const Position& end) {
  // The endpoint has the events before `end`. If the cursor cannot be written they are sent
  // again after a restart: at least once.
  absl::Status s = WriteCursor(end);
  if (!s.ok()) MTA_LOG_ERROR("webhook: %s", s.ToString());
  cursor_ = end;
  log_->SetWebhookCursor(cursor_.file, cursor_.offset);
  RefreshBacklog();
}

void WebhookShipper::RefreshBacklog() {
  absl::StatusOr<std::vector<std::string>> files = ListEventLogFiles(directory_);
  if (!files.ok()) return;
  uint64_t backlog = 0;
  for (const std::string& name : *files) {
    if (name < cursor_.file) continue;
    struct stat st;
    const std::string path = absl::StrCat(directory_, "/", name);
    if (::stat(path.c_str(), &st) != 0) continue;
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    backlog += name != cursor_.file ? size : size - std::min(size, cursor_.offset);
  }
  backlog_bytes_.store(backlog, std::memory_order_relaxed);
}

absl::StatusOr<WebhookShipper::Batch> WebhookShipper::ReadBatch() {
  // List first, then read: a file with a newer one in this listing is complete, so reading
  // it to its end sees all of it.
  MTA_ASSIGN_OR_RETURN(std::vector<std::string> files, ListEventLogFiles(directory_));
  Position pos = cursor_;
  size_t i = std::lower_bound(files.begin(), files.end(), pos.file) - files.begin();
  if (i == files.size() && !files.empty()) {
    // Every file is older than the cursor's: the files it named were removed by hand (the
    // EventLog's files only get newer names). The log restarted; ship all of it.
    MTA_LOG_ERROR("webhook: cursor %s is ahead of every file in %s; shipping from %s", pos.file,
                  directory_, files.front());
    i = 0;
    pos = Position{files.front(), 0};
  } else if (i < files.size() && files[i] != pos.file) {
    // No cursor yet (start at the oldest file), or its file was deleted by the EventLog's
    // backlog cap, which logged the events lost; continue with the next newer file.
    if (!pos.file.empty()) {
      MTA_LOG_WARNING("webhook: %s/%s was deleted before it was shipped; continuing with %s",
                      directory_, pos.file, files[i]);
    }
    pos = Position{files[i], 0};
  }

  Batch batch;
  batch.body = "[";
  uint64_t skipped = 0;
  bool stop = false;  // the batch is full
  for (; i < files.size(); ++i) {
    const bool complete = i + 1 < files.size();
    const std::string path = absl::StrCat(directory_, "/", files[i]);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno != ENOENT) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
      if (complete) pos = Position{files[i + 1], 0};  // deleted meanwhile
      continue;
    }
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      const int error = errno;
      ::close(fd);
      return absl::ErrnoToStatus(error, absl::StrCat("fstat ", path));
    }
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (pos.offset > size) {
      // The file lost its unsynced tail in a machine crash after it was shipped.
      MTA_LOG_WARNING("webhook: cursor offset %d is beyond the end of %s (%d bytes)", pos.offset,
                      path, size);
      pos.offset = size;
    }
    // Read complete lines from pos.offset on while the batch has room; `carry` holds the
    // start of a line whose end is not read yet.
    std::string carry;
    uint64_t read_at = pos.offset;
    std::string chunk;
    while (!stop && read_at < size) {
      chunk.resize(std::min<uint64_t>(kReadChunkBytes, size - read_at));
      const ssize_t n = ::pread(fd, chunk.data(), chunk.size(), static_cast<off_t>(read_at));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const int error = errno;
        ::close(fd);
        return absl::ErrnoToStatus(error, absl::StrCat("read ", path));
      }
      if (n == 0) break;  // truncated meanwhile
      read_at += static_cast<uint64_t>(n);
      absl::string_view data(chunk.data(), static_cast<size_t>(n));
      for (;;) {
        const size_t nl = data.find('\n');
        if (nl == absl::string_view::npos) {
          carry.append(data.data(), data.size());
          break;
        }
        absl::string_view line = data.substr(0, nl);
        if (!carry.empty()) {
          carry.append(line.data(), line.size());
          line = carry;
        }
        const absl::string_view trimmed = absl::StripAsciiWhitespace(line);
        // What a crash or a foreign writer can leave behind (NULs from a lost tail, a cut
        // line) would make every batch it is in fail forever; it is skipped instead.
        const bool event = trimmed.size() >= 2 && trimmed.front() == '{' && trimmed.back() == '}' &&
                           trimmed.find('\0') == absl::string_view::npos;
        if (event) {
          if (batch.events > 0 &&
              (batch.events >= options_.max_batch_events ||
               batch.body.size() + trimmed.size() + 2 > options_.max_batch_bytes)) {
            stop = true;
            break;
          }
          if (batch.events > 0) batch.body.push_back(',');
          batch.body.append(trimmed.data(), trimmed.size());
          ++batch.events;
        } else if (!trimmed.empty()) {
          ++skipped;
        }
        pos.offset += line.size() + 1;
        carry.clear();
        data.remove_prefix(nl + 1);
      }
    }
    ::close(fd);
    if (stop) {
      batch.full = true;
      break;
    }
    if (!complete) break;  // the live file: the rest is not written yet
    if (pos.offset < size) {
      MTA_LOG_WARNING("webhook: skipping a partial last line of %d bytes in %s", size - pos.offset,
                      path);
    }
    pos = Position{files[i + 1], 0};
  }
  if (skipped > 0) {
    MTA_LOG_WARNING("webhook: skipped %d lines in %s that are not JSON objects", skipped,
                    directory_);
  }
  batch.body.push_back(']');
  batch.end = std::move(pos);
  return batch;
}

absl::Status WebhookShipper::WriteCursor(const Position& position) {
  const std::string tmp = absl::StrCat(directory_, "/", kCursorTmpName);
  const std::string path = absl::StrCat(directory_, "/", kCursorFileName);
  const std::string text = absl::StrCat(position.file, " ", position.offset, "\n");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("writing the cursor: open ", tmp));
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                  ::fsync(fd) == 0;
  const int error = errno;
  ::close(fd);
  if (!ok) return absl::ErrnoToStatus(error, absl::StrCat("writing the cursor ", tmp));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("writing the cursor: rename to ", path));
  }
  const int dir_fd = ::open(directory_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  return absl::OkStatus();
}

absl::Status WebhookShipper::Post(const std::string& body) {
  Connection conn(stop_fd_, absl::Now() + options_.timeout);
  MTA_RETURN_IF_ERROR(conn.Connect(url_.host, url_.port));
  if (url_.https) MTA_RETURN_IF_ERROR(conn.StartTls(ssl_ctx_, url_.host));
  MTA_RETURN_IF_ERROR(conn.WriteAll(absl::StrCat(request_head_, body.size(), "\r\n\r\n", body)));
  std::string data;
  char buf[16 << 10];
  Response response;
  for (;;) {
    absl::StatusOr<size_t> n = conn.Read(buf, sizeof(buf));
    if (!n.ok()) {
      // Once the status line is in, the verdict is known; a stall or reset after it does not
      // change it (a keep-alive server may ignore `Connection: close`).
      if (response.status != 0 && n.status().code() != absl::StatusCode::kCancelled) break;
      return n.status();
    }
    if (*n == 0) break;
    data.append(buf, std::min(*n, kMaxResponseBytes - data.size()));
    response = ParseResponse(data);
    if (response.malformed || response.complete || data.size() >= kMaxResponseBytes) break;
  }
  if (response.status == 0) {
    if (data.empty()) return absl::UnavailableError("the connection closed without an answer");
    return absl::UnavailableError(
        absl::StrCat("not an HTTP answer: '", absl::CHexEscape(response.status_line), "'"));
  }
  if (response.status >= 200 && response.status < 300) return absl::OkStatus();
  // Every failure is retried (see the class comment); the code only says what kind it is.
  const bool transient = response.status >= 500 || response.status == 408 || response.status == 429;
  return absl::Status(
      transient ? absl::StatusCode::kUnavailable : absl::StatusCode::kFailedPrecondition,
      absl::StrCat("answered '", absl::CHexEscape(response.status_line), "'"));
}

}  // namespace mta::metrics
