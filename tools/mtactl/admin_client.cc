#include "tools/mtactl/admin_client.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "metrics/http_client.h"

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
  absl::StatusOr<metrics::HttpUrl> url = metrics::ParseHttpUrl(base_url);
  if (!url.ok() || url->https) {
    return absl::InvalidArgumentError(
        absl::StrCat("the admin URL must be http://host[:port] (got '", base_url, "')"));
  }
  std::string target = path;
  for (size_t i = 0; i < query.size(); ++i) {
    absl::StrAppend(&target, i == 0 ? "?" : "&", PercentEncode(query[i].first), "=",
                    PercentEncode(query[i].second));
  }
  std::string request = absl::StrCat(method, " ", target, " HTTP/1.1\r\nHost: ", url->host_header,
                                     "\r\nUser-Agent: mtactl\r\nConnection: close\r\n");
  if (!token.empty()) absl::StrAppend(&request, "Authorization: Bearer ", token, "\r\n");
  absl::StrAppend(&request, "Content-Length: 0\r\n\r\n");
  metrics::HttpConnection conn(/*stop_fd=*/-1, absl::Now() + absl::Seconds(timeout_s));
  if (absl::Status s = conn.Connect(url->host, url->port); !s.ok()) {
    return absl::UnavailableError(absl::StrCat("cannot reach ", base_url, ": ", s.message()));
  }
  if (absl::Status s = conn.WriteAll(request); !s.ok()) return s;
  std::string data;
  char buf[16384];
  for (;;) {
    absl::StatusOr<size_t> n = conn.Read(buf, sizeof(buf));
    if (!n.ok()) return n.status();
    if (*n == 0) break;
    data.append(buf, *n);
  }
  metrics::HttpResponseHead head = metrics::ParseHttpResponseHead(data);
  if (head.status == 0 || head.body_offset == 0) {
    return absl::DataLossError(absl::StrCat(base_url, " did not answer in HTTP"));
  }
  return AdminResponse{.status = head.status, .body = data.substr(head.body_offset)};
}

}  // namespace mta::tools
