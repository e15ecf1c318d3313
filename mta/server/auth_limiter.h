// Failed SMTP AUTH attempts per key (a client address or a user name), shard-local.
#ifndef MTA_SERVER_AUTH_LIMITER_H_
#define MTA_SERVER_AUTH_LIMITER_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace mta::server {

/**
 * `max_failures` failures of one key within `window` (counted from the key's first failure)
 * block that key for `window` from the last of them. Memory is bounded: at most `max_keys`
 * keys are tracked; when full, keys whose window has passed are dropped first, then the
 * oldest ones (an attack from very many addresses can thus age a key out early, but never
 * grow the table).
 *
 * Shard-local: not thread-safe. Each shard keeps its own counts, so a client whose
 * connections land on several shards gets up to `max_failures` on each.
 */
class AuthFailureLimiter {
 public:
  static constexpr size_t kDefaultMaxKeys = 10000;

  AuthFailureLimiter(uint32_t max_failures, absl::Duration window,
                     size_t max_keys = kDefaultMaxKeys);

  /** Whether attempts for `key` are refused at `now`. */
  bool Blocked(absl::string_view key, absl::Time now) const;
  /** Counts a failed attempt for `key`. */
  void RecordFailure(absl::string_view key, absl::Time now);
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    uint32_t failures = 0;
    absl::Time first;                                 // first failure of the current window
    absl::Time blocked_until = absl::InfinitePast();  // set when failures reach the limit
  };
  bool Expired(const Entry& e, absl::Time now) const;
  void MakeRoom(absl::Time now);

  const uint32_t max_failures_;
  const absl::Duration window_;
  const size_t max_keys_;
  absl::flat_hash_map<std::string, Entry> entries_;
};

}  // namespace mta::server

#endif  // MTA_SERVER_AUTH_LIMITER_H_
