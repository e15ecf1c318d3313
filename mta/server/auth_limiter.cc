#include "mta/server/auth_limiter.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace mta::server {

AuthFailureLimiter::AuthFailureLimiter(uint32_t max_failures, absl::Duration window,
                                       size_t max_keys)
    : max_failures_(std::max<uint32_t>(max_failures, 1)),
      window_(window),
      max_keys_(std::max<size_t>(max_keys, 1)) {}

bool AuthFailureLimiter::Expired(const Entry& e, absl::Time now) const {
  return now - e.first >= window_ && e.blocked_until <= now;
}

bool AuthFailureLimiter::Blocked(absl::string_view key, absl::Time now) const {
  auto it = entries_.find(key);
  return it != entries_.end() && it->second.blocked_until > now;
}

void AuthFailureLimiter::RecordFailure(absl::string_view key, absl::Time now) {
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    if (entries_.size() >= max_keys_) MakeRoom(now);
    it = entries_.emplace(std::string(key), Entry{.first = now}).first;
  }
  Entry& e = it->second;
  if (now - e.first >= window_) {  // a new window starts with this failure
    e.failures = 0;
    e.first = now;
  }
  if (++e.failures >= max_failures_) e.blocked_until = now + window_;
}

void AuthFailureLimiter::MakeRoom(absl::Time now) {
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (Expired(it->second, now)) {
      entries_.erase(it++);
    } else {
      ++it;
    }
  }
  if (entries_.size() < max_keys_) return;
  // Still full: drop the oldest eighth at once, so that a flood of new keys costs one scan
  // per max_keys / 8 insertions rather than one per insertion.
  std::vector<std::pair<absl::Time, const std::string*>> by_age;
  by_age.reserve(entries_.size());
  for (const auto& [key, e] : entries_) by_age.emplace_back(e.first, &key);
  size_t drop = std::max<size_t>(1, entries_.size() / 8);
  std::nth_element(by_age.begin(), by_age.begin() + (drop - 1), by_age.end());
  std::vector<std::string> victims;
  victims.reserve(drop);
  for (size_t i = 0; i < drop; ++i) victims.push_back(*by_age[i].second);
  for (const std::string& key : victims) entries_.erase(key);
}

}  // namespace mta::server
