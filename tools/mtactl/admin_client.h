// mtactl's client for mtad's admin API: one plain-HTTP request per call, over
// metrics/http_client (see there why it is hand-written).
#ifndef TOOLS_MTACTL_ADMIN_CLIENT_H_
#define TOOLS_MTACTL_ADMIN_CLIENT_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace mta::tools {

struct AdminResponse {
  int status = 0;
  std::string body;
};

/**
 * Sends `method` `path`?`query` to `base_url` ("http://host:port"), with a bearer `token`
 * when not empty; query values are percent-encoded. Fails on connection errors, timeouts
 * (`timeout_s` in all) and malformed answers.
 */
absl::StatusOr<AdminResponse> AdminRequest(
    const std::string& base_url, const std::string& method, const std::string& path,
    const std::vector<std::pair<std::string, std::string>>& query, const std::string& token,
    int timeout_s = 30);

/** "a b/c" -> "a%20b%2Fc" (RFC 3986 unreserved characters stay). */
std::string PercentEncode(const std::string& s);

}  // namespace mta::tools

#endif  // TOOLS_MTACTL_ADMIN_CLIENT_H_
