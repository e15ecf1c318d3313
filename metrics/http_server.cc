#include "metrics/http_server.h"

#include <microhttpd.h>
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
  HttpResponse r = impl->handler(method, url);
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
      reinterpret_cast<sockaddr*>(&addr), MHD_OPTION_CONNECTION_LIMIT, 64u,
      MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_END);
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
