// The per-shard delivery scheduler: destinations, ready and scheduled jobs, outcomes.
#ifndef MTA_DELIVERY_DELIVERY_MANAGER_H_
#define MTA_DELIVERY_DELIVERY_MANAGER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/random/random.h"
#include "absl/time/time.h"
#include "dns/resolver.h"
#include "mta/delivery/delivery_types.h"
#include "mta/delivery/dsn.h"
#include "mta/delivery/route.h"
#include "mta/event/event_loop.h"
#include "queue/content_loader.h"
#include "queue/queue_id.h"
#include "queue/retry_schedule.h"
#include "queue/spool.h"

namespace mta::delivery {

struct DeliveryOptions {
  std::string hostname;  // reporting MTA in DSNs
  queue::RetryPolicy retry;
  uint32_t max_connections_per_destination = 10;  // Default: 10
  uint32_t max_recipients_per_transaction = 100;  // Default: 100
  // A recipient with NOTIFY=DELAY gets one "delayed" DSN once it has waited this long.
  absl::Duration delay_warning_after = absl::Hours(4);
  // How often destinations are checked for stalls. Default: 30 s.
  absl::Duration watchdog_interval = absl::Seconds(30);
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

class DeliveryManager;

/**
 * The second tier: a *site*, the set of MX hosts (or the next hop) that one or more
 * domains resolve to. Domains that share an MX set share its ready queue, connections
 * and limits. A site lives on the shard chosen by the hash of its key, so its limits are
 * exact without locks. (The first tier, each domain's scheduled jobs, lives on the shard
 * that owns the domain.)
 */
struct Destination {
  std::string key;              // hosts, port and TLS policy, e.g. "mx1.a,mx2.a:25/opportunistic"
  std::vector<SiteHost> hosts;  // by MX preference
  smtp::TlsPolicy tls = smtp::TlsPolicy::kOpportunistic;
  std::deque<Job> ready;
  uint32_t connections = 0;  // open or opening
  // Idle connections waiting for work: calling one hands it the next ready job.
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
  using OpenConnectionFn = std::function<void(Destination& destination)>;

  /** @param resolver MX look-ups; may be null when every domain has a route. */
  DeliveryManager(uint32_t shard, uint32_t num_shards, event::EventLoop* loop, queue::Spool* spool,
                  queue::ContentLoader* loader, queue::QueueIdGenerator* ids,
                  dns::Resolver* resolver, DeliveryOptions options, PostFn post,
                  OpenConnectionFn open_connection);
  ~DeliveryManager();

  /** The shard that owns a domain's scheduled jobs, or a site (by its key). */
  static uint32_t OwnerOf(absl::string_view domain_or_site, uint32_t num_shards);
  /** The home shard of a message. */
  static uint32_t HomeOf(absl::string_view id, uint32_t num_shards);

  /** REQUIRES: this is the message's home shard. Dispatches its pending recipients. */
  void AddMessage(std::shared_ptr<const DeliveryMessage> message);
  /** REQUIRES: this shard owns job.domain. Routes `job` to its site at `due`. */
  void AddJob(Job job, absl::Time due);
  /** REQUIRES: this shard owns the site `key`. Queues a routed job there. */
  void AddToSite(const std::string& key, std::vector<SiteHost> hosts, smtp::TlsPolicy tls, Job job);

  // Called by outbound connections of a destination.
  /** The next ready job, or nullopt; expired jobs are bounced on the way. */
  std::optional<Job> TakeJob(Destination& destination);
  /** `results[i]` is for `job.recipients[i]`; `content` is the body that was sent. */
  void CompleteJob(Destination& destination, Job job, std::vector<AttemptResult> results,
                   std::shared_ptr<const std::string> content);
  /**
   * The site could not be reached at all (every host down or refusing): `reason` applies
   * to every job in `failed` and every ready job.
   */
  void DestinationFailed(Destination& destination, std::vector<Job> failed,
                         const AttemptResult& reason);
  /** A connection ended; frees its slot and opens more if work is waiting. */
  void ConnectionClosed(Destination& destination);

  // Introspection (tests, logs, metrics).
  size_t messages_at_home() const { return remaining_.size(); }
  const absl::flat_hash_map<std::string, std::unique_ptr<Destination>>& destinations() const {
    return destinations_;
  }
  uint64_t delivered() const { return delivered_; }
  uint64_t bounced() const { return bounced_; }
  uint64_t deferred() const { return deferred_; }
  uint64_t scheduled() const { return scheduled_; }

 private:
  void Route(Job job);
  void SettleAll(Job job, const AttemptResult& result);
  void Pump(Destination& destination);
  void Settle(Job job, std::vector<AttemptResult> results,
              std::shared_ptr<const std::string> content);
  /** Spools DSNs about `recipients`, then runs `then` on this loop. */
  void SendDsns(std::shared_ptr<const DeliveryMessage> message,
                std::vector<DsnRecipient> recipients, std::shared_ptr<const std::string> content,
                absl::AnyInvocable<void()> then);
  void RecipientsFinal(const std::string& id, uint32_t count);
  void Watchdog();

  const uint32_t shard_;
  const uint32_t num_shards_;
  event::EventLoop* const loop_;
  queue::Spool* const spool_;
  queue::ContentLoader* const loader_;
  queue::QueueIdGenerator* const ids_;
  dns::Resolver* const resolver_;
  const DeliveryOptions options_;
  PostFn post_;
  OpenConnectionFn open_connection_;
  absl::BitGen rng_;
  absl::flat_hash_map<std::string, std::unique_ptr<Destination>> destinations_;  // by key
  uint64_t scheduled_ = 0;  // jobs waiting for their due time on this shard
  absl::flat_hash_map<std::string, uint32_t> remaining_;  // home: non-final recipients
  uint64_t delivered_ = 0, bounced_ = 0, deferred_ = 0;
  event::EventLoop::TimerId watchdog_timer_ = 0;
};

}  // namespace mta::delivery

#endif  // MTA_DELIVERY_DELIVERY_MANAGER_H_
