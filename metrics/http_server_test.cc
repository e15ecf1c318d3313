#include "metrics/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"

namespace mta::metrics {
namespace {

uint16_t FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// A real HTTP/1.0 exchange over a loopback socket.
std::string Fetch(uint16_t port, const std::string& request) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return "";
  write(fd, request.data(), request.size());
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
  close(fd);
  return out;
}

TEST(HttpServerTest, ServesHandlerResponses) {
  uint16_t port = FreePort();
  auto server = HttpServer::Start({"127.0.0.1", port}, [](const HttpRequest& r) {
    if (r.path != "/healthz") return HttpResponse{.status = 404, .body = "not found\n"};
    auto q = r.query.find("x");
    return HttpResponse{.status = 200,
                        .content_type = "application/json",
                        .body = "{\"method\":\"" + r.method + "\",\"x\":\"" +
                                (q == r.query.end() ? "" : q->second) + "\",\"auth\":\"" +
                                r.authorization + "\",\"ip\":\"" + r.client_ip + "\"}"};
  });
  ASSERT_TRUE(server.ok()) << server.status();
  std::string ok = Fetch(port, "GET /healthz?x=a%20b HTTP/1.0\r\nAuthorization: Bearer t\r\n\r\n");
  EXPECT_EQ(ok.rfind("HTTP/1.1 200", 0), 0u) << ok;
  EXPECT_NE(ok.find("Content-Type: application/json"), std::string::npos);
  EXPECT_NE(
      ok.find("{\"method\":\"GET\",\"x\":\"a b\",\"auth\":\"Bearer t\",\"ip\":\"127.0.0.1\"}"),
      std::string::npos)
      << ok;
  std::string missing = Fetch(port, "GET /nope HTTP/1.0\r\n\r\n");
  EXPECT_EQ(missing.rfind("HTTP/1.1 404", 0), 0u) << missing;
  std::string garbage = Fetch(port, "\x01\x02 garbage\r\n\r\n");
  EXPECT_EQ(garbage.rfind("HTTP/1.1 400", 0), 0u) << garbage;
}

TEST(HttpServerTest, BusyPortIsAClearError) {
  uint16_t port = FreePort();
  auto first = HttpServer::Start({"127.0.0.1", port}, [](auto) { return HttpResponse(); });
  ASSERT_TRUE(first.ok());
  auto second = HttpServer::Start({"127.0.0.1", port}, [](auto) { return HttpResponse(); });
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("cannot listen on 127.0.0.1"), std::string::npos);
}

}  // namespace
}  // namespace mta::metrics
