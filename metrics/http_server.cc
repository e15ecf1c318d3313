#include "metrics/http_server.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "absl/strings/str_cat.h"

namespace mta::metrics {

struct HttpServer::Impl {
  HttpHandler handler;
  MHD_Daemon* daemon = nullptr;
};

namespace {

MHD_Result Answer(void* cls, MHD_Connection* connection, const char* url, const char* method,
                  const char* version, const char* upload_data, size_t* upload_data_size,
                  void** con_cls) {
  auto* impl = static_cast<HttpServer::Impl*>(cls);
  // Request bodies are not used: let microhttpd discard them and answer at the end.
  if (*con_cls == nullptr) {
    *con_cls = impl;
    return MHD_YES;
  }
  if (*upload_data_size != 0) {
    *upload_data_size = 0;
    return MHD_YES;
  }
  HttpRequest request{.method = method, .path = url};
  MHD_get_connection_values(
      connection, MHD_GET_ARGUMENT_KIND,
      [](void* cls, MHD_ValueKind, const char* key, const char* value) -> MHD_Result {
        static_cast<HttpRequest*>(cls)->query[key] = value != nullptr ? value : "";
        return MHD_YES;
      },
      &request);
  if (const char* auth =
          MHD_lookup_connection_value(connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION)) {
    request.authorization = auth;
  }
  const MHD_ConnectionInfo* info =
      MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (info != nullptr && info->client_addr != nullptr) {
    char host[INET6_ADDRSTRLEN] = {0};
    const sockaddr* sa = info->client_addr;
    if (sa->sa_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, host, sizeof(host));
    } else if (sa->sa_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, host,
                sizeof(host));
    }
    request.client_ip = host;
  }
  HttpResponse r;
  try {
    r = impl->handler(request);
  } catch (const std::exception& e) {
    // Never let an exception unwind into libmicrohttpd's C code.
    r = {.status = 500, .body = std::string("internal error: ") + e.what() + "\n"};
  }
  MHD_Response* response =
      MHD_create_response_from_buffer(r.body.size(), r.body.data(), MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;
  MHD_add_response_header(response, "Content-Type", r.content_type.c_str());
  MHD_add_response_header(response, "Cache-Control", "no-store");
  MHD_Result ret = MHD_queue_response(connection, r.status, response);
  MHD_destroy_response(response);
  return ret;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HostPort& address,
                                                              HttpHandler handler) {
  sockaddr_storage addr;
  auto len = address.ToSockaddr(&addr);
  if (!len.ok()) return len.status();
  std::unique_ptr<HttpServer> server(new HttpServer());
  server->impl_ = std::make_unique<Impl>();
  server->impl_->handler = std::move(handler);
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
  if (addr.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
  server->impl_->daemon = MHD_start_daemon(
      flags, address.port, nullptr, nullptr, &Answer, server->impl_.get(), MHD_OPTION_SOCK_ADDR,
      reinterpret_cast<sockaddr*>(&addr), MHD_OPTION_THREAD_POOL_SIZE, 4u,
      MHD_OPTION_CONNECTION_LIMIT, 64u, MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_END);
  if (server->impl_->daemon == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("http: cannot listen on ", address.host, ":",
                                                      address.port, " (address in use?)"));
  }
  return server;
}

HttpServer::~HttpServer() {
  if (impl_ != nullptr && impl_->daemon != nullptr) MHD_stop_daemon(impl_->daemon);
}

}  // namespace mta::metrics
