// The HTTP control listener (health now; /metrics and the admin API with their issue).
#ifndef METRICS_HTTP_SERVER_H_
#define METRICS_HTTP_SERVER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "mta/base/net.h"

namespace mta::metrics {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

/**
 * Called on the HTTP server's own thread (never a shard's) for every request; it must only
 * read thread-safe state. `method` is e.g. "GET", `path` excludes the query string.
 */
using HttpHandler = std::function<HttpResponse(const std::string& method, const std::string& path)>;

/**
 * An HTTP/1.1 server on libmicrohttpd (Debian's libmicrohttpd; no hand-written HTTP
 * parser) running its own polling thread, so requests never touch the shards' loops.
 */
class HttpServer {
 public:
  /** Binds `address` and starts serving; the error names the address on failure. */
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HostPort& address,
                                                           HttpHandler handler);
  ~HttpServer();  // stops the thread and closes the socket

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  struct Impl;  // libmicrohttpd state; opaque

 private:
  HttpServer() = default;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mta::metrics

#endif  // METRICS_HTTP_SERVER_H_
