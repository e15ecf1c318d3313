// What the delivery engine reports to metrics and the event log, as it happens.
#ifndef MTA_DELIVERY_DELIVERY_OBSERVER_H_
#define MTA_DELIVERY_DELIVERY_OBSERVER_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "mta/delivery/bounce_class.h"
#include "mta/delivery/delivery_types.h"
#include "queue/envelope.h"

namespace mta::delivery {

enum class Outcome { kDelivered, kDeferred, kBounced, kExpired };

/** The settled result of one attempt for one recipient. */
struct OutcomeReport {
  const queue::Envelope& envelope;
  uint32_t recipient;         // index into envelope.recipients
  const std::string& domain;  // the recipient's domain
  Outcome outcome;
  BounceClass bounce_class;  // kNone for deliveries
  const AttemptResult& result;
  uint32_t attempt;         // 1 for the first attempt
  const std::string& pool;  // the stream's pool ("" = none)
  absl::Time now;
};

/**
 * Called on the shard's loop thread; implementations must not block (count, format and
 * hand over to other threads).
 */
class DeliveryObserver {
 public:
  virtual ~DeliveryObserver() = default;
  virtual void OnOutcome(const OutcomeReport& report) = 0;
  /**
   * A shaping event at `rule` for `source`: a backoff step ("suspend", "slow", "restore")
   * or "throttle" (a connection asked for mail and waited for the message rate).
   */
  virtual void OnBackoff(absl::string_view rule, absl::string_view source,
                         absl::string_view action) = 0;
  /** An outbound connection from `source` ("" = none) was opened (+1) or closed (-1). */
  virtual void OnOutboundConnection(absl::string_view source, int delta) = 0;
  /** An outbound connection negotiated TLS (`version`, e.g. "TLSv1.3"). */
  virtual void OnOutboundTls(absl::string_view version) = 0;
};

}  // namespace mta::delivery

#endif  // MTA_DELIVERY_DELIVERY_OBSERVER_H_
