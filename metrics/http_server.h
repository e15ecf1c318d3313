// The HTTP control listener (health now; /metrics and the admin API with their issue).
#ifndef METRICS_HTTP_SERVER_H_
#define METRICS_HTTP_SERVER_H_

#include <functional>
#include <map>
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

struct HttpRequest {
  std::string method;                        // e.g. "GET"
  std::string path;                          // without the query string
  std::map<std::string, std::string> query;  // decoded query arguments
  std::string authorization;                 // the Authorization header, "" = none
  std::string client_ip;
};

/**
 * Called on one of the HTTP server's threads (a pool of 4, never a shard's) for every request,
 * possibly concurrently: it must be thread-safe and touch shard state only through
 * thread-safe calls. Request bodies are discarded.
 */
using HttpHandler = std::function<HttpResponse(const HttpRequest& request)>;

/**
 * An HTTP/1.1 server on libmicrohttpd (Debian's libmicrohttpd; no hand-written HTTP
 * parser) running its own threads, so requests never touch the shards' loops.
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
