#include "mta/server/connection_limiter.h"

namespace mta::server {

ConnectionLimiter::Verdict ConnectionLimiter::Acquire(const std::string& ip) {
  absl::MutexLock lock(&mu_);
  if (total_ >= max_total_) return Verdict::kTooManyTotal;
  uint32_t& n = per_ip_[ip];
  if (n >= max_per_ip_) {
    if (n == 0) per_ip_.erase(ip);
    return Verdict::kTooManyFromIp;
  }
  ++n;
  ++total_;
  return Verdict::kOk;
}

void ConnectionLimiter::Release(const std::string& ip) {
  absl::MutexLock lock(&mu_);
  auto it = per_ip_.find(ip);
  if (it == per_ip_.end()) return;
  --total_;
  if (--it->second == 0) per_ip_.erase(it);
}

uint32_t ConnectionLimiter::total() const {
  absl::MutexLock lock(&mu_);
  return total_;
}

}  // namespace mta::server
