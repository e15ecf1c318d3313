#include "mta/delivery/route.h"

namespace mta::delivery {

Route FindRoute(const std::vector<Route>& routes, absl::string_view domain,
                smtp::TlsPolicy default_tls) {
  const Route* wildcard = nullptr;
  for (const Route& r : routes) {
    if (r.domain == domain) return r;
    if (r.domain == "*") wildcard = &r;
  }
  if (wildcard != nullptr) return *wildcard;
  Route mx;
  mx.domain = std::string(domain);
  mx.tls = default_tls;
  return mx;
}

}  // namespace mta::delivery
