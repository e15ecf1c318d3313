// The per-shard delivery scheduler: destinations, ready and scheduled jobs, outcomes.
#ifndef MTA_DELIVERY_DELIVERY_MANAGER_H_
#define MTA_DELIVERY_DELIVERY_MANAGER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/random/random.h"
#include "absl/time/time.h"
#include "dns/resolver.h"
#include "mta/delivery/delivery_observer.h"
#include "mta/delivery/delivery_types.h"
#include "mta/delivery/dsn.h"
#include "mta/delivery/queue_tally.h"
#include "mta/delivery/route.h"
#include "mta/delivery/token_bucket.h"
#include "mta/delivery/traffic_policy.h"
#include "mta/event/event_loop.h"
#include "queue/content_loader.h"
#include "queue/queue_id.h"
#include "queue/retry_schedule.h"
#include "queue/spool.h"

namespace mta::delivery {

struct DeliveryOptions {
  std::string hostname;  // reporting MTA in DSNs
  // A recipient with NOTIFY=DELAY gets one "delayed" DSN once it has waited this long.
  absl::Duration delay_warning_after = absl::Hours(4);
  // How often destinations are checked for stalls. Default: 30 s.
  absl::Duration watchdog_interval = absl::Seconds(30);
  // How long a source whose bind failed is skipped. Default: 1 min.
  absl::Duration source_down_time = absl::Minutes(1);
  // Routing: overrides by domain, else MX on smtp_port with default_tls.
  std::vector<Route> routes;
  smtp::TlsPolicy default_tls = smtp::TlsPolicy::kOpportunistic;
  uint16_t smtp_port = 25;
};

/** One host of a destination, in the order connections try them. */
struct SiteHost {
  std::string host;  // host name or IP literal
  uint16_t port = 25;
};

struct Destination;

/**
 * Shaping state of one source at one budget: its connections, message-rate bucket and
 * backoff. `throttle` (0..1] scales the rule's connection cap and rate while backing off.
 */
struct Lane {
  uint32_t connections = 0;  // open or opening
  uint32_t lower_busy = 0;   // connections carrying a job of a stream below the top priority
  TokenBucket bucket;
  double throttle = 1.0;
  absl::Time suspended_until = absl::InfinitePast();
  absl::Time throttled_at = absl::InfinitePast();  // last backoff step, down or up
  int64_t wrr_current = 0;                         // smooth weighted round robin
};

/**
 * What a shaping rule limits: the sites of one rule whose hosts are the same MX set (the
 * budget key is the site key), or every site of an MX-suffix rule (key "rule:<name>").
 * Lives on the shard that owns its key, with all its sites, so limits are exact.
 */
struct Budget {
  std::string key;
  const ShapingRule* rule = nullptr;             // in the manager's current policy
  absl::node_hash_map<std::string, Lane> lanes;  // by source name ("" = none); stable refs
  std::vector<Destination*> sites;
  size_t next_site = 0;  // round robin over sites when slots free up
  event::EventLoop::TimerId wake_timer = 0;
  absl::Time wake_at = absl::InfiniteFuture();
};

/**
 * The second tier: a *site*, the set of MX hosts (or the next hop) that one or more
 * domains resolve to, under one shaping rule. Domains that share an MX set share its ready
 * queues and connections. Ready jobs wait in one queue per stream, served by stream
 * priority, then in arrival order.
 */
struct Destination {
  std::string key;              // e.g. "mx1.a:25,mx2.a:25/opportunistic#default"
  std::vector<SiteHost> hosts;  // by MX preference
  smtp::TlsPolicy tls = smtp::TlsPolicy::kOpportunistic;
  Budget* budget = nullptr;
  struct StreamQueue {
    std::string stream;
    int32_t priority = 0;
    std::deque<Job> jobs;
  };
  // By priority, highest first. A list: a new stream's queue goes in without moving the
  // others (a vector copied them on growth, deque not being nothrow-movable: a new stream at
  // a site with 100,000 waiting jobs stalled the loop for ~60 ms).
  std::list<StreamQueue> queues;
  size_t ready = 0;          // jobs in all queues
  uint32_t connections = 0;  // open or opening, over all sources
  uint32_t in_flight = 0;    // jobs taken by connections and not yet reported
  // Idle connections waiting for work: calling one makes it ask for the next job.
  struct IdleWaker {
    std::weak_ptr<bool> token;  // expired: the connection is no longer idle
    std::function<void()> wake;
  };
  std::deque<IdleWaker> idle;
  absl::Time last_progress = absl::InfinitePast();
};

/**
 * Shard-local: every method runs on the owning shard's loop thread.
 *
 * A message has a home shard (hash of its queue id) that counts its non-final recipients
 * and removes it from the spool when none are left; its recipients are grouped by domain
 * and handed to each domain's owning shard as jobs. Outcomes are recorded durably before
 * anything depends on them (home counts, DSNs, retries).
 */
class DeliveryManager {
 public:
  using PostFn = std::function<void(uint32_t shard, absl::AnyInvocable<void(DeliveryManager&)> fn)>;
  /** Opens one connection for `destination` from `source` (null: the kernel's choice). */
  using OpenConnectionFn =
      std::function<void(Destination& destination, const EgressSource* source)>;

  /** @param resolver MX look-ups; may be null when every domain has a route. */
  DeliveryManager(uint32_t shard, uint32_t num_shards, event::EventLoop* loop, queue::Spool* spool,
                  queue::ContentLoader* loader, queue::QueueIdGenerator* ids,
                  dns::Resolver* resolver, DeliveryOptions options,
                  std::shared_ptr<const TrafficPolicy> policy, PostFn post,
                  OpenConnectionFn open_connection);
  ~DeliveryManager();

  /** The shard that owns a domain's scheduled jobs, or a budget (by its key). */
  static uint32_t OwnerOf(absl::string_view domain_or_site, uint32_t num_shards);
  /** The home shard of a message. */
  static uint32_t HomeOf(absl::string_view id, uint32_t num_shards);

  /** REQUIRES: this is the message's home shard. Dispatches its pending recipients. */
  void AddMessage(std::shared_ptr<const DeliveryMessage> message);
  /** REQUIRES: this shard owns job.domain. Routes `job` to its site at `due`. */
  void AddJob(Job job, absl::Time due);
  /** REQUIRES: this shard owns `budget_key`. Queues a routed job at the site `key`. */
  void AddToSite(const std::string& key, const std::string& budget_key,
                 const std::string& rule_name, std::vector<SiteHost> hosts, smtp::TlsPolicy tls,
                 Job job);
  /**
   * Swaps the traffic policy (configuration reload): limits, pools, priorities and
   * suspensions apply from now on; queued jobs stay queued.
   */
  void SetPolicy(std::shared_ptr<const TrafficPolicy> policy);
  const TrafficPolicy& policy() const { return *policy_; }

  // Called by outbound connections of a destination.
  /**
   * The next ready job that `source` may carry now (stream priority first, within the
   * rate and the rule's recipient cap), or nullopt; expired jobs are bounced on the way.
   */
  std::optional<Job> TakeJob(Destination& destination, const std::string& source);
  /** `results[i]` is for `job.recipients[i]`; `content` is the body that was sent. */
  void CompleteJob(Destination& destination, Job job, std::vector<AttemptResult> results,
                   std::shared_ptr<const std::string> content);
  /** Puts a job back at the front of its queue without counting an attempt (backoff). */
  void ReturnJob(Destination& destination, Job job);
  /**
   * The site could not be reached at all (every host down or refusing): `reason` applies
   * to every job in `failed` and every ready job.
   */
  void DestinationFailed(Destination& destination, std::vector<Job> failed,
                         const AttemptResult& reason);
  /**
   * A reply from the site to a connection from `source`: applies the rule's backoff
   * patterns. Returns true if the reply suspended the source at this destination.
   */
  bool ObserveReply(Destination& destination, const std::string& source, uint32_t code,
                    absl::string_view enhanced, absl::string_view text);
  /** `source` cannot reach any address of the site: skipped there for a while. */
  void SourceCannotReach(Destination& destination, const std::string& source,
                         absl::string_view why);
  /** A connection found no job it may carry and went idle: more may be needed. */
  void ConnectionIdle(Destination& destination);
  /** Binding to `source` failed: it is skipped on this shard for a while. */
  void SourceDown(const std::string& source, absl::string_view why);
  /** A connection from `source` ended; frees its slot and opens more if work is waiting. */
  void ConnectionClosed(Destination& destination, const std::string& source);

  /** Gets every outcome, backoff step and connection change; null = none. */
  void set_observer(DeliveryObserver* observer) { observer_ = observer; }
  DeliveryObserver* observer() const { return observer_; }

  // Administration (the admin API). Jobs taken by connections are in flight: they are
  // not listed and finish their attempt.
  /** Which jobs an administrative action applies to; empty fields match anything. */
  struct JobFilter {
    std::string id;      // queue id
    std::string domain;  // recipient domain (lower-case)
    std::string stream;
    bool Matches(const Job& job) const;
  };
  using QueueRow = delivery::QueueRow;
  /** Recipients waiting on this shard per domain and stream (O(rows), not O(jobs)). */
  std::vector<QueueRow> QueueSummary() const { return tally_.Rows(); }
  /** Calls `fn` for each waiting job matching `filter`: "ready", "scheduled" (with its due time) or
   * "suspended". */
  void ForEachJob(
      const JobFilter& filter,
      const std::function<void(const Job&, absl::string_view state, absl::Time due)>& fn) const;
  /** Scheduled jobs matching `filter` are routed now. Returns their recipients. */
  size_t RetryNow(const JobFilter& filter);
  /** Waiting jobs matching `filter` bounce (DSN as usual) with `reason`. Returns recipients. */
  size_t Cancel(const JobFilter& filter, const std::string& reason);

  // Introspection (tests, logs, metrics).
  size_t messages_at_home() const { return remaining_.size(); }
  const absl::flat_hash_map<std::string, std::unique_ptr<Destination>>& destinations() const {
    return destinations_;
  }
  const absl::flat_hash_map<std::string, std::unique_ptr<Budget>>& budgets() const {
    return budgets_;
  }
  uint64_t delivered() const { return delivered_; }
  uint64_t bounced() const { return bounced_; }
  uint64_t deferred() const { return deferred_; }
  uint64_t scheduled() const { return scheduled_jobs_.size(); }
  size_t parked() const { return parked_.size(); }
  uint64_t backoff_events() const { return backoff_events_; }
  /** The effective connection cap of `lane` under `rule` (backoff scales it down). */
  static uint32_t ConnectionCap(const ShapingRule& rule, const Lane& lane);
  /**
   * How many of `lane`'s connections may carry streams below the top priority at once: the
   * cap less the rule's reserved_connections, at least 1.
   */
  static uint32_t LowerPriorityCap(const ShapingRule& rule, const Lane& lane);

 private:
  void Route(Job job);
  /** Jobs of suspended domains, rules or streams wait here until a policy resumes them. */
  bool Suspended(const Job& job, const std::string& rule_name) const;
  void SettleAll(Job job, const AttemptResult& result);
  const BounceClassifier& Classifier() const;
  /** Settles jobs[from..] with `result`, a slice per loop turn. */
  void SettleSliced(std::shared_ptr<std::vector<Job>> jobs, size_t from, AttemptResult result);
  /** Routes jobs[from..] again (to their owner shards), a slice per loop turn. */
  void Reroute(std::shared_ptr<std::vector<Job>> jobs, size_t from, absl::Time now);
  /** The site's queue for the job's stream, created in priority order if missing. */
  std::deque<Job>& QueueOf(Destination& site, const Job& job);
  void Pump(Budget& budget);
  void PumpSite(Destination& site);
  void OpenConnections(Budget& budget, Destination& site);
  /** A source of `pool` that may open a connection now, by weight; null if none. */
  const EgressSource* PickSource(Budget& budget, int32_t pool, bool* none_available);
  /** `lane` for `source`, restored one step if its backoff has aged. */
  Lane& LaneOf(Budget& budget, const std::string& source);
  void ConfigureBucket(const Budget& budget, Lane& lane);
  /** Frees the reserved_connections accounting slot `job` holds, if any. */
  static void ReleaseSlot(Job& job);
  bool LaneOpen(const Lane& lane, const std::string& source, absl::Time now) const;
  bool StreamUsesSource(const Stream& stream, const std::string& source) const;
  /** Runs Pump(budget) at `when` (the earliest of the requested times). */
  void WakeBudgetAt(Budget& budget, absl::Time when);
  void Settle(Job job, std::vector<AttemptResult> results,
              std::shared_ptr<const std::string> content);
  /** Spools DSNs about `recipients`, then runs `then` on this loop. */
  void SendDsns(std::shared_ptr<const DeliveryMessage> message,
                std::vector<DsnRecipient> recipients, std::shared_ptr<const std::string> content,
                absl::AnyInvocable<void()> then);
  void RecipientsFinal(const std::string& id, uint32_t count);
  void Watchdog();
  /** Settles the ready and parked jobs that have outlived their stream's queue lifetime. */
  void ExpireWaiting(absl::Time now);

  const uint32_t shard_;
  const uint32_t num_shards_;
  event::EventLoop* const loop_;
  queue::Spool* const spool_;
  queue::ContentLoader* const loader_;
  queue::QueueIdGenerator* const ids_;
  dns::Resolver* const resolver_;
  const DeliveryOptions options_;
  std::shared_ptr<const TrafficPolicy> policy_;
  PostFn post_;
  OpenConnectionFn open_connection_;
  absl::BitGen rng_;
  absl::flat_hash_map<std::string, std::unique_ptr<Destination>> destinations_;  // by key
  absl::flat_hash_map<std::string, std::unique_ptr<Budget>> budgets_;            // by key
  absl::flat_hash_map<std::string, absl::Time> source_down_until_;
  std::vector<Job> parked_;  // suspended by the policy (domain, rule or stream)
  // Every job in a ready queue, scheduled_jobs_ or parked_ is counted here.
  QueueTally tally_;
  // Jobs waiting for their due time on this shard (retries, by serial number).
  struct ScheduledJob {
    Job job;
    absl::Time due;
    event::EventLoop::TimerId timer = 0;
  };
  absl::flat_hash_map<uint64_t, ScheduledJob> scheduled_jobs_;
  uint64_t next_scheduled_ = 1;
  DeliveryObserver* observer_ = nullptr;
  absl::flat_hash_map<std::string, uint32_t> remaining_;  // home: non-final recipients
  uint64_t delivered_ = 0, bounced_ = 0, deferred_ = 0, backoff_events_ = 0;
  event::EventLoop::TimerId watchdog_timer_ = 0;
};

}  // namespace mta::delivery

#endif  // MTA_DELIVERY_DELIVERY_MANAGER_H_
