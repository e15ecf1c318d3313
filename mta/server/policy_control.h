// The traffic policy the shards run: the configuration's, plus suspensions made through the
// admin API (which survive SIGHUP reloads).
#ifndef MTA_SERVER_POLICY_CONTROL_H_
#define MTA_SERVER_POLICY_CONTROL_H_

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/btree_set.h"
#include "absl/status/status.h"
#include "mta/delivery/traffic_policy.h"

namespace mta::server {

class Shard;

/** Thread-safe (the main thread reloads, the HTTP thread suspends and resumes). */
class PolicyControl {
 public:
  enum class Kind { kDestination, kSource, kStream };

  explicit PolicyControl(std::vector<Shard*> shards) : shards_(std::move(shards)) {}

  /** The configuration's policy (start-up and SIGHUP); pushed with the admin suspensions. */
  void SetBase(std::shared_ptr<const delivery::TrafficPolicy> base);
  /**
   * Suspends (or resumes) a destination (domain or rule name), source or stream on every
   * shard. NotFound for a source or stream the policy does not have; FailedPrecondition
   * when resuming what the configuration file itself suspends.
   */
  absl::Status Set(Kind kind, const std::string& name, bool suspend);

  struct Suspensions {
    std::vector<std::string> destinations, sources, streams;
  };
  /** Everything suspended now (configuration and admin). */
  Suspensions Current() const;

 private:
  absl::btree_set<std::string>& Overlay(Kind kind);
  void PushLocked();

  const std::vector<Shard*> shards_;
  mutable std::mutex mu_;
  std::shared_ptr<const delivery::TrafficPolicy> base_;
  std::shared_ptr<const delivery::TrafficPolicy> current_;
  absl::btree_set<std::string> destinations_, sources_, streams_;  // admin suspensions
};

}  // namespace mta::server

#endif  // MTA_SERVER_POLICY_CONTROL_H_
