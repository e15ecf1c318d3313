// Where a destination's mail goes: its MX hosts, or a configured next hop.
#ifndef MTA_DELIVERY_ROUTE_H_
#define MTA_DELIVERY_ROUTE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "mta/smtp/client_session.h"

namespace mta::delivery {

/**
 * A routing override: mail for `domain` ("*" = every domain) goes to host:port, or, with
 * an empty host, to the domain's MX hosts under this route's TLS policy.
 */
struct Route {
  std::string domain;  // lower-case, or "*"
  std::string host;    // "" = look up the domain's MX; else an IP literal or a host name
  uint16_t port = 25;
  smtp::TlsPolicy tls = smtp::TlsPolicy::kOpportunistic;
};

/**
 * The most specific route for `domain`: an exact match, else "*", else MX on port 25
 * with `default_tls`.
 */
Route FindRoute(const std::vector<Route>& routes, absl::string_view domain,
                smtp::TlsPolicy default_tls);

}  // namespace mta::delivery

#endif  // MTA_DELIVERY_ROUTE_H_
