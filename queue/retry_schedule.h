// When to try a deferred recipient again, and when to give up.
#ifndef QUEUE_RETRY_SCHEDULE_H_
#define QUEUE_RETRY_SCHEDULE_H_

#include <cstdint>
#include <vector>

#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace mta::queue {

/**
 * Quick first retries, then growing intervals, as the large MTAs do. The n-th retry waits
 * intervals[n-1] (the last interval repeats), spread by +/- jitter so that recipients
 * deferred together do not come back together.
 */
struct RetryPolicy {
  // Default: 1m, 5m, 10m, 30m, 1h, 2h, 4h, then every 4h.
  std::vector<absl::Duration> intervals = {absl::Minutes(1),  absl::Minutes(5), absl::Minutes(10),
                                           absl::Minutes(30), absl::Hours(1),   absl::Hours(2),
                                           absl::Hours(4)};
  double jitter = 0.1;  // fraction of the interval, in [0, 0.5]
  // After this long in the queue a deferred recipient expires into a bounce. Default: 5 days.
  absl::Duration lifetime = absl::Hours(24 * 5);

  /** Parses "1m,5m,10m,1h" style lists (units s, m, h, d). */
  static absl::StatusOr<std::vector<absl::Duration>> ParseIntervals(absl::string_view text);
};

/**
 * Delay before the next attempt after `attempts` failed attempts (attempts >= 1).
 * Shard-local use of `rng`.
 */
absl::Duration NextRetryDelay(const RetryPolicy& policy, uint32_t attempts, absl::BitGen& rng);

/** True once a message received at `received` has outlived the policy's lifetime. */
inline bool Expired(const RetryPolicy& policy, absl::Time received, absl::Time now) {
  return now - received >= policy.lifetime;
}

}  // namespace mta::queue

#endif  // QUEUE_RETRY_SCHEDULE_H_
