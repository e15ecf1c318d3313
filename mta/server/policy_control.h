// The traffic policy the shards run: the configuration's, plus suspensions made through the
// admin API (which survive SIGHUP reloads and, kept in a state file, restarts).
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

  /**
   * `state_file` keeps the admin suspensions across restarts ("" = in memory only); it is
   * read here (a missing file is an empty state, a corrupt one an error from status()).
   */
  PolicyControl(std::vector<Shard*> shards, std::string state_file);
  /** Whether the state file could be read. */
  const absl::Status& status() const { return status_; }

  /**
   * Start-up, before the shards run: `base` plus the admin suspensions, for the shards to
   * start with (nothing is pushed).
   */
  std::shared_ptr<const delivery::TrafficPolicy> Adopt(
      std::shared_ptr<const delivery::TrafficPolicy> base);
  /** SIGHUP: the configuration's new policy, pushed to the shards with the suspensions. */
  void SetBase(std::shared_ptr<const delivery::TrafficPolicy> base);
  /**
   * Suspends (or resumes) a destination (domain or rule name), source or stream on every
   * shard. NotFound for a source or stream the policy does not have; FailedPrecondition
   * when resuming what the configuration file itself suspends; the file's error when the
   * state file cannot be written (the change then holds until a restart). Blocking (the
   * state file is fsynced): never call it on a shard.
   */
  absl::Status Set(Kind kind, const std::string& name, bool suspend);

  struct Suspensions {
    std::vector<std::string> destinations, sources, streams;
  };
  /** Everything suspended now (configuration and admin). */
  Suspensions Current() const;

 private:
  absl::btree_set<std::string>& Overlay(Kind kind);
  void MergeLocked();  // current_ = base_ + the admin suspensions
  void PushLocked();   // MergeLocked, then every shard adopts current_
  absl::Status SaveLocked() const;

  const std::vector<Shard*> shards_;
  const std::string state_file_;
  absl::Status status_;
  mutable std::mutex mu_;
  std::shared_ptr<const delivery::TrafficPolicy> base_;
  std::shared_ptr<const delivery::TrafficPolicy> current_;
  absl::btree_set<std::string> destinations_, sources_, streams_;  // admin suspensions
};

}  // namespace mta::server

#endif  // MTA_SERVER_POLICY_CONTROL_H_
