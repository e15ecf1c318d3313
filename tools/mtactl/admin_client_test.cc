#include "tools/mtactl/admin_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "metrics/http_server.h"

namespace mta::tools {
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

TEST(AdminClientTest, SendsMethodPathEncodedQueryAndToken) {
  uint16_t port = FreePort();
  auto server = metrics::HttpServer::Start({"127.0.0.1", port}, [](const metrics::HttpRequest& r) {
    std::string body = absl::StrCat(r.method, " ", r.path, " [", r.authorization, "]");
    for (const auto& [k, v] : r.query) absl::StrAppend(&body, " ", k, "=", v);
    return metrics::HttpResponse{.status = r.path == "/missing" ? 404 : 200, .body = body};
  });
  ASSERT_TRUE(server.ok()) << server.status();
  std::string url = absl::StrCat("http://127.0.0.1:", port);
  auto r = AdminRequest(url, "POST", "/api/v1/bounce",
                        {{"id", "01abc"}, {"reason", "spam trap & co/100%"}}, "s3cret");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "POST /api/v1/bounce [Bearer s3cret] id=01abc reason=spam trap & co/100%");
  auto missing = AdminRequest(url + "/", "GET", "/missing", {}, "");
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(missing->body, "GET /missing []");
}

TEST(AdminClientTest, ClearErrors) {
  auto refused = AdminRequest(absl::StrCat("http://127.0.0.1:", FreePort()), "GET", "/", {}, "");
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("cannot reach"), std::string::npos);
  auto https = AdminRequest("https://127.0.0.1:1", "GET", "/", {}, "");
  ASSERT_FALSE(https.ok());
  EXPECT_NE(https.status().message().find("http://"), std::string::npos);
}

TEST(AdminClientTest, PercentEncodesAllButUnreserved) {
  EXPECT_EQ(PercentEncode("aZ09-._~ /?&=%\xC3\xA9"), "aZ09-._~%20%2F%3F%26%3D%25%C3%A9");
}

}  // namespace
}  // namespace mta::tools
