// A token bucket for message rates: `rate` tokens per second, holding at most `burst`.
#ifndef MTA_DELIVERY_TOKEN_BUCKET_H_
#define MTA_DELIVERY_TOKEN_BUCKET_H_

#include <algorithm>

#include "absl/time/time.h"

namespace mta::delivery {

class TokenBucket {
 public:
  /** rate <= 0 means unlimited. The bucket starts full. */
  void Configure(double rate, double burst, absl::Time now) {
    bool fresh = last_ == absl::InfinitePast();
    Refill(now);
    rate_ = rate;
    burst_ = std::max(1.0, burst);
    tokens_ = fresh ? burst_ : std::min(tokens_, burst_);
  }

  bool unlimited() const { return rate_ <= 0; }

  /** Takes one token if one is available at `now`. */
  bool TryTake(absl::Time now) {
    if (unlimited()) return true;
    Refill(now);
    if (tokens_ < 1) return false;
    tokens_ -= 1;
    return true;
  }

  /** When the next token is available (now if one is). */
  absl::Time NextAvailable(absl::Time now) {
    if (unlimited()) return now;
    Refill(now);
    if (tokens_ >= 1) return now;
    // Never "now" while TryTake() would fail, however the rounding falls.
    return now + std::max(absl::Microseconds(1), absl::Seconds((1 - tokens_) / rate_));
  }

 private:
  void Refill(absl::Time now) {
    if (last_ == absl::InfinitePast()) {
      tokens_ = burst_;
    } else if (now > last_ && rate_ > 0) {
      tokens_ = std::min(burst_, tokens_ + absl::ToDoubleSeconds(now - last_) * rate_);
    }
    last_ = std::max(last_, now);
  }

  double rate_ = 0;
  double burst_ = 1;
  double tokens_ = 1;
  absl::Time last_ = absl::InfinitePast();
};

}  // namespace mta::delivery

#endif  // MTA_DELIVERY_TOKEN_BUCKET_H_
