// Turns the parsed configuration into the delivery engine's traffic policy.
#ifndef MTA_SERVER_TRAFFIC_POLICY_BUILDER_H_
#define MTA_SERVER_TRAFFIC_POLICY_BUILDER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "mta/delivery/traffic_policy.h"
#include "mta/server/config.h"

namespace mta::server {

/**
 * Builds the egress sources, pools, streams, shaping rules and suspensions of `config`.
 * Streams without their own retry_intervals / queue_lifetime take delivery's; rates become
 * messages per second; rules keep their configuration order. A source without `ehlo` uses
 * delivery.helo_name, else server.hostname (fill in the hostname first). Errors only for a
 * configuration ParseConfig would have rejected (e.g. one built in code).
 */
absl::StatusOr<std::shared_ptr<const delivery::TrafficPolicy>> BuildTrafficPolicy(
    const Config& config);

}  // namespace mta::server

#endif  // MTA_SERVER_TRAFFIC_POLICY_BUILDER_H_
