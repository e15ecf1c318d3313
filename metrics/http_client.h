// The minimal blocking HTTP/1.1 client of the webhook shipper and mtactl.
//
// Why hand-written: Debian 12 has no HTTP client library that fits this process. libcurl4
// links OpenSSL 3, which exports the same symbols (SSL_new, X509_*, ...) as the BoringSSL
// that mtad already links via //third_party:boringssl, so one library's calls would
// silently bind to the other's functions; libcurl3-gnutls and libcurl3-nss avoid the clash
// only by adding a second TLS stack with its own trust store configuration. Debian's
// cpp-httplib is likewise a shared library built against OpenSSL 3, and Boost.Beast would
// bring Boost.Asio for one request. What is needed is small: one request per connection
// with `Connection: close` on a thread that may block, and the status line (and body) of
// the answer. So it is done here with non-blocking sockets driven by poll() (for the
// timeout and a prompt shutdown) and BoringSSL for https, with the host name verified and
// sent as SNI.
#ifndef METRICS_HTTP_CLIENT_H_
#define METRICS_HTTP_CLIENT_H_

#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace mta::metrics {

/** auth::ConsumeSslErrors(), or "unknown TLS error" when the queue was empty. */
std::string SslErrorText();

struct HttpUrl {
  bool https = false;
  std::string host;  // without brackets
  uint16_t port = 0;
  std::string path;         // with the query; "/" if empty
  std::string host_header;  // host[:port] as the Host header wants it
};
/** Parses http(s)://host[:port][/path]. */
absl::StatusOr<HttpUrl> ParseHttpUrl(absl::string_view url);

/** RFC 9110 token characters, for header names. */
bool IsToken(absl::string_view s);

/**
 * One HTTP exchange's socket. Every wait polls the socket together with `stop_fd` (an
 * eventfd that makes a wait return Cancelled; -1 = none) and stops at `deadline`, shared
 * by all steps of the exchange. Not thread-safe.
 */
class HttpConnection {
 public:
  HttpConnection(int stop_fd, absl::Time deadline) : stop_fd_(stop_fd), deadline_(deadline) {}
  ~HttpConnection();
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  /** Resolves `host` (getaddrinfo: not bounded by the deadline) and connects. */
  absl::Status Connect(const std::string& host, uint16_t port);
  /** TLS on the connected socket; `host` is verified (name or IP literal) and sent as SNI. */
  absl::Status StartTls(SSL_CTX* ctx, const std::string& host);
  absl::Status WriteAll(absl::string_view data);
  /** Reads some bytes; 0 at the end of the stream. */
  absl::StatusOr<size_t> Read(char* buf, size_t len);

 private:
  /** `what` names the step for the timeout's message, e.g. "reading the response". */
  absl::Status Wait(int fd, short events, const char* what);

  const int stop_fd_;
  const absl::Time deadline_;
  int fd_ = -1;
  SSL* ssl_ = nullptr;
};

/** What is known of an answer so far. */
struct HttpResponseHead {
  int status = 0;  // final (non-1xx) status once its line arrived
  std::string status_line;
  bool complete = false;  // headers and Content-Length bytes of body are in
  bool malformed = false;
  size_t body_offset = 0;  // where the body starts, once the headers are in
};

/** Parses the answer received so far (interim 1xx answers are skipped). */
HttpResponseHead ParseHttpResponseHead(absl::string_view data);

}  // namespace mta::metrics

#endif  // METRICS_HTTP_CLIENT_H_
