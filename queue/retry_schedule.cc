#include "queue/retry_schedule.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace mta::queue {

absl::StatusOr<std::vector<absl::Duration>> RetryPolicy::ParseIntervals(absl::string_view text) {
  std::vector<absl::Duration> out;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    item = absl::StripAsciiWhitespace(item);
    if (item.size() < 2)
      return absl::InvalidArgumentError(absl::StrCat("bad interval '", item, "'"));
    int64_t n;
    if (!absl::SimpleAtoi(item.substr(0, item.size() - 1), &n) || n <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("bad interval '", item, "'"));
    }
    switch (item.back()) {
      case 's':
        out.push_back(absl::Seconds(n));
        break;
      case 'm':
        out.push_back(absl::Minutes(n));
        break;
      case 'h':
        out.push_back(absl::Hours(n));
        break;
      case 'd':
        out.push_back(absl::Hours(24 * n));
        break;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("bad interval '", item, "': unit must be s, m, h or d"));
    }
  }
  if (out.empty()) return absl::InvalidArgumentError("no retry intervals");
  return out;
}

absl::Duration NextRetryDelay(const RetryPolicy& policy, uint32_t attempts, absl::BitGen& rng) {
  if (policy.intervals.empty()) return absl::Minutes(5);
  size_t i = std::min<size_t>(attempts == 0 ? 0 : attempts - 1, policy.intervals.size() - 1);
  absl::Duration base = policy.intervals[i];
  double jitter = std::clamp(policy.jitter, 0.0, 0.5);
  if (jitter == 0) return base;
  return base * absl::Uniform(rng, 1.0 - jitter, 1.0 + jitter);
}

}  // namespace mta::queue
