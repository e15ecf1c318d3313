// Value types shared by the delivery scheduler and the outbound connections.
#ifndef MTA_DELIVERY_DELIVERY_TYPES_H_
#define MTA_DELIVERY_DELIVERY_TYPES_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "queue/envelope.h"

namespace mta::delivery {

/**
 * A message as the delivery engine sees it. Shared read-only between shards (its
 * recipients may live on several), so it is immutable once created; per-recipient state
 * lives with the jobs of the shard that owns each recipient's destination.
 */
struct DeliveryMessage {
  queue::Envelope envelope;
  // The content when it is held in RAM (within the body budget); null means it must be
  // read back from the spool for each attempt.
  std::shared_ptr<const std::string> content;
};

/** Recipients of one message at one destination: they travel in one SMTP transaction. */
struct Lane;

struct Job {
  std::shared_ptr<const DeliveryMessage> message;
  std::string domain;                // the recipients' domain (lower-case)
  std::vector<uint32_t> recipients;  // indices into message->envelope.recipients
  uint32_t attempts = 0;             // attempts so far for these recipients
  std::string last_error;            // last deferral reason, for expiry reports
  bool delay_notified = false;       // a "delayed" DSN was sent in this process lifetime
  // While a connection carries a job of a stream below the top priority: the lane whose
  // `lower_busy` counts it, else null. (The open connection keeps its site, and so the
  // site's budget and lanes, alive until the job is reported.)
  Lane* lower_slot = nullptr;
};

/** The result of one attempt for one recipient. */
struct AttemptResult {
  enum class Kind { kDelivered, kDeferred, kBounced };
  Kind kind = Kind::kDeferred;
  std::string status;       // enhanced status code, e.g. "4.4.1"
  std::string diagnostic;   // what the remote said (or why we could not ask it)
  std::string remote_mta;   // host name of the server that answered, if any
  bool remote_dsn = false;  // the server offered DSN (it reports success itself)
  std::string tls;          // "TLSv1.3 <cipher> verified|unverified", "" = plain text
  uint32_t code = 0;        // the remote reply code; 0 = none (a local failure)
  std::string remote_ip;    // address of remote_mta
  std::string source;       // egress source of the connection ("" = none)
  absl::Duration duration;  // the transaction, from taking the job to its last reply
  bool cancelled = false;   // bounced by an administrator: class "other", never classified
};

}  // namespace mta::delivery

#endif  // MTA_DELIVERY_DELIVERY_TYPES_H_
