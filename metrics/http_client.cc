// A blocking HTTP/1.1 client for one exchange per connection: see http_client.h for why it
// is hand-written.
#include "metrics/http_client.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "auth/ssl_errors.h"
#include "mta/base/status_macros.h"

namespace mta::metrics {
namespace {

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

}  // namespace

std::string SslErrorText() {
  std::string errors = auth::ConsumeSslErrors();
  return errors.empty() ? "unknown TLS error" : errors;
}

// RFC 9110 token characters, for header names.
bool IsToken(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(c) && !absl::StrContains("!#$%&'*+-.^_`|~", c)) return false;
  }
  return true;
}

HttpConnection::~HttpConnection() {
  if (ssl_ != nullptr) SSL_free(ssl_);
  if (fd_ >= 0) ::close(fd_);
}

absl::Status HttpConnection::Connect(const std::string& host, uint16_t port) {
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

absl::Status HttpConnection::StartTls(SSL_CTX* ctx, const std::string& host) {
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
    return absl::UnavailableError(absl::StrCat("TLS handshake with ", host, ": ", SslErrorText()));
  }
}

absl::Status HttpConnection::WriteAll(absl::string_view data) {
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

absl::StatusOr<size_t> HttpConnection::Read(char* buf, size_t len) {
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

absl::Status HttpConnection::Wait(int fd, short events, const char* what) {
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
    if (fds[1].revents != 0) return absl::CancelledError("stopping");
    // Errors and hang-ups count as ready: the next call reports them.
    if (fds[0].revents != 0) return absl::OkStatus();
  }
}

absl::StatusOr<HttpUrl> ParseHttpUrl(absl::string_view text) {
  HttpUrl url;
  absl::string_view rest = text;
  if (absl::StartsWithIgnoreCase(rest, "https://")) {
    url.https = true;
    rest.remove_prefix(8);
  } else if (absl::StartsWithIgnoreCase(rest, "http://")) {
    rest.remove_prefix(7);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("url '", text, "': must start with http:// or https://"));
  }
  const size_t authority_end = rest.find_first_of("/?#");
  absl::string_view authority = rest.substr(0, authority_end);
  absl::string_view path =
      authority_end == absl::string_view::npos ? "" : rest.substr(authority_end);
  path = path.substr(0, path.find('#'));  // a fragment is never sent
  if (authority.find('@') != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "url '", text, "': user:password@ is not supported; use an Authorization header"));
  }
  absl::string_view port_text;
  if (absl::ConsumePrefix(&authority, "[")) {
    const size_t close = authority.find(']');
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("url '", text, "': missing ']'"));
    }
    url.host = std::string(authority.substr(0, close));
    absl::string_view after = authority.substr(close + 1);
    if (!after.empty() && !absl::ConsumePrefix(&after, ":")) {
      return absl::InvalidArgumentError(absl::StrCat("url '", text, "': bad authority"));
    }
    port_text = after;
    in6_addr addr;
    if (inet_pton(AF_INET6, url.host.c_str(), &addr) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("url '", text, "': bad IPv6 address in []"));
    }
  } else {
    const size_t colon = authority.rfind(':');
    url.host = std::string(authority.substr(0, colon));
    if (colon != absl::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (url.host.empty() || std::any_of(url.host.begin(), url.host.end(), [](unsigned char c) {
        return c <= ' ' || c >= 0x7f || c == '/' || c == '\\' || c == '[' || c == ']';
      })) {
    return absl::InvalidArgumentError(absl::StrCat("url '", text, "': bad host"));
  }
  url.port = url.https ? 443 : 80;
  if (!port_text.empty()) {
    int port = 0;
    if (!absl::SimpleAtoi(port_text, &port) || port < 1 || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("url '", text, "': bad port"));
    }
    url.port = static_cast<uint16_t>(port);
  }
  if (std::any_of(path.begin(), path.end(),
                  [](unsigned char c) { return c <= ' ' || c >= 0x7f; })) {
    return absl::InvalidArgumentError(
        absl::StrCat("url '", text, "': the path must be percent-encoded"));
  }
  url.path = path.empty() ? "/" : std::string(path);
  if (url.path[0] == '?') url.path = absl::StrCat("/", url.path);
  const std::string host =
      url.host.find(':') != std::string::npos ? absl::StrCat("[", url.host, "]") : url.host;
  url.host_header = url.port == (url.https ? 443 : 80) ? host : absl::StrCat(host, ":", url.port);
  return url;
}

HttpResponseHead ParseHttpResponseHead(absl::string_view data) {
  HttpResponseHead out;
  size_t skipped = 0;  // interim answers before `data`
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
      skipped += head_end + 4;
      continue;
    }
    out.status = code;
    out.status_line = std::string(line.substr(0, 200));
    if (head_end == absl::string_view::npos) return out;
    out.body_offset = skipped + head_end + 4;
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

}  // namespace mta::metrics
