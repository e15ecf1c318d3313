#include "tools/mtactl/admin_client.h"

#include <netdb.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mta::tools {

std::string PercentEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&out, "%", absl::StrFormat("%02X", c));
    }
  }
  return out;
}

absl::StatusOr<AdminResponse> AdminRequest(
    const std::string& base_url, const std::string& method, const std::string& path,
    const std::vector<std::pair<std::string, std::string>>& query, const std::string& token,
    int timeout_s) {
  absl::string_view rest = base_url;
  if (!absl::ConsumePrefix(&rest, "http://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("the admin URL must start with http:// (got '", base_url, "')"));
  }
  while (absl::ConsumeSuffix(&rest, "/")) {
  }
  std::string host(rest), port = "80";
  if (size_t colon = rest.rfind(':'); colon != absl::string_view::npos && rest.back() != ']') {
    host = std::string(rest.substr(0, colon));
    port = std::string(rest.substr(colon + 1));
  }
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* addrs = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &addrs); rc != 0) {
    return absl::UnavailableError(absl::StrCat(base_url, ": ", gai_strerror(rc)));
  }
  int fd = -1;
  std::string error = "no address";
  for (addrinfo* a = addrs; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    timeval tv{.tv_sec = timeout_s, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      error = strerror(errno);
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(addrs);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot reach ", base_url, ": ", error));

  std::string target = path;
  for (size_t i = 0; i < query.size(); ++i) {
    absl::StrAppend(&target, i == 0 ? "?" : "&", PercentEncode(query[i].first), "=",
                    PercentEncode(query[i].second));
  }
  std::string request = absl::StrCat(method, " ", target, " HTTP/1.1\r\nHost: ", rest,
                                     "\r\nUser-Agent: mtactl\r\nConnection: close\r\n");
  if (!token.empty()) absl::StrAppend(&request, "Authorization: Bearer ", token, "\r\n");
  absl::StrAppend(&request, "Content-Length: 0\r\n\r\n");
  for (size_t sent = 0; sent < request.size();) {
    ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      close(fd);
      return absl::UnavailableError(absl::StrCat("sending to ", base_url, ": ", strerror(errno)));
    }
    sent += static_cast<size_t>(n);
  }
  std::string data;
  char buf[16384];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      close(fd);
      return absl::UnavailableError(absl::StrCat("reading from ", base_url, ": ",
                                                 errno == EAGAIN ? "timed out" : strerror(errno)));
    }
    data.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  // "HTTP/1.1 200 OK\r\n...\r\n\r\nbody" (the server sends Content-Length and closes).
  size_t head_end = data.find("\r\n\r\n");
  AdminResponse response;
  if (!absl::StartsWith(data, "HTTP/1.") || data.size() < 12 || head_end == std::string::npos ||
      !absl::SimpleAtoi(absl::string_view(data).substr(9, 3), &response.status)) {
    return absl::DataLossError(absl::StrCat(base_url, " did not answer in HTTP"));
  }
  response.body = data.substr(head_end + 4);
  return response;
}

}  // namespace mta::tools
