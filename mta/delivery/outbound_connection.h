// One outbound SMTP connection of a destination: MX choice, connect, SMTP client, TLS.
#ifndef MTA_DELIVERY_OUTBOUND_CONNECTION_H_
#define MTA_DELIVERY_OUTBOUND_CONNECTION_H_

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "dns/resolver.h"
#include "mta/delivery/delivery_manager.h"
#include "mta/event/event_loop.h"
#include "queue/content_loader.h"

namespace mta::auth {
class ClientTlsContext;
}  // namespace mta::auth

namespace mta::delivery {

/** What a shard's outbound connections share. Outlives them. */
struct OutboundContext {
  event::EventLoop* loop = nullptr;
  DeliveryManager* manager = nullptr;
  dns::Resolver* resolver = nullptr;
  queue::ContentLoader* loader = nullptr;
  const auth::ClientTlsContext* tls = nullptr;  // null: STARTTLS is never attempted
  std::string helo_name;                        // EHLO name when the source names none
  absl::Duration tls_handshake_timeout = absl::Seconds(30);
};

/**
 * Opens one connection for `destination` (a site) and runs it until it has no more work:
 * tries the site's hosts (MX preference order, or the next hop) and each of their
 * addresses in order on connection failures and 4xx/5xx greetings, upgrades with STARTTLS
 * as the site's policy says, then takes jobs from the site and reports their outcomes.
 * With a `source` (copied) it binds to that local address and greets with its EHLO name;
 * connect and idle timeouts and messages per connection follow the site's shaping rule.
 * The connection owns itself and calls DeliveryManager::ConnectionClosed() exactly once.
 * Shard-local.
 */
void StartOutboundConnection(OutboundContext* context, Destination* destination,
                             const EgressSource* source);

}  // namespace mta::delivery

#endif  // MTA_DELIVERY_OUTBOUND_CONNECTION_H_
