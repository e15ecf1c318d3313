// Process-wide inbound connection accounting (total and per client address).
#ifndef MTA_SERVER_CONNECTION_LIMITER_H_
#define MTA_SERVER_CONNECTION_LIMITER_H_

#include <cstdint>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

namespace mta::server {

/**
 * Thread-safe. Shards share one limiter because the kernel spreads a client's connections
 * across shards (SO_REUSEPORT). The lock covers one hash-map update per connect and close,
 * never I/O, so it cannot stall a loop for long; this is a deliberate, documented exception
 * to "no locks in shard code".
 */
class ConnectionLimiter {
 public:
  enum class Verdict { kOk, kTooManyTotal, kTooManyFromIp };

  ConnectionLimiter(uint32_t max_total, uint32_t max_per_ip)
      : max_total_(max_total), max_per_ip_(max_per_ip) {}

  /** Counts the connection if allowed; every kOk must be paired with Release(). */
  Verdict Acquire(const std::string& ip);
  void Release(const std::string& ip);
  uint32_t total() const;

 private:
  const uint32_t max_total_;
  const uint32_t max_per_ip_;
  mutable absl::Mutex mu_;
  uint32_t total_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, uint32_t> per_ip_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mta::server

#endif  // MTA_SERVER_CONNECTION_LIMITER_H_
