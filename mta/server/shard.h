// A shard: one thread, one io_uring loop, its own listeners, connections and queue.
#ifndef MTA_SERVER_SHARD_H_
#define MTA_SERVER_SHARD_H_

#include <atomic>
#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "auth/auth_user.h"
#include "auth/tls_context.h"
#include "dns/cares_resolver.h"
#include "mta/base/net.h"
#include "mta/delivery/delivery_manager.h"
#include "mta/delivery/outbound_connection.h"
#include "mta/event/event_loop.h"
#include "mta/server/auth_limiter.h"
#include "mta/server/config.h"
#include "mta/server/connection_limiter.h"
#include "mta/smtp/session.h"
#include "queue/content_loader.h"
#include "queue/message_queue.h"
#include "queue/queue_id.h"
#include "queue/spool.h"

namespace mta::auth {
class CredentialVerifier;
}  // namespace mta::auth

namespace mta::server {

class DkimSigningService;
class Shard;
class ShardTelemetry;
class Telemetry;

/** One configured listener, resolved once at start-up and shared read-only by shards. */
struct ListenerSpec {
  smtp::SessionConfig session;
  HostPort address;
  std::vector<Cidr> relay_networks;
  std::vector<std::pair<Cidr, std::string>> stream_networks;  // first match names the stream
  uint32_t greeting_delay_ms = 0;
  bool implicit_tls = false;  // TLS from the first byte (RFC 8314)
};

/** What every shard shares. Outlives the shards. */
struct ServerContext {
  const Config* config = nullptr;
  std::vector<ListenerSpec> listeners;
  queue::Spool* spool = nullptr;
  ConnectionLimiter* limiter = nullptr;
  queue::BodyBudget* body_budget = nullptr;
  // Delivery (off: accepted mail is kept in the spool and the in-memory queue only).
  bool delivery_enabled = false;
  queue::ContentLoader* loader = nullptr;
  delivery::DeliveryOptions delivery;
  std::shared_ptr<const delivery::TrafficPolicy> policy;  // at start-up; reloads go to shards
  // Per listener (same order); null without TLS. At start-up; reloads go to shards.
  std::vector<std::shared_ptr<const auth::ServerTlsContext>> server_tls;
  delivery::OutboundContext outbound;  // template; loop, manager and resolver set per shard
  dns::CaresResolverOptions dns;
  // SMTP AUTH: password checks run on this verifier's thread (null when no listener
  // enables AUTH); failed attempts are limited per shard, per client IP and per user.
  auth::CredentialVerifier* verifier = nullptr;
  uint32_t auth_max_failures = 5;
  absl::Duration auth_failure_window = absl::Minutes(5);
  // DKIM: messages whose From: domain has keys are signed on this service's thread before
  // they are spooled (null when dkim.signing is empty at start-up).
  DkimSigningService* dkim = nullptr;
  Telemetry* telemetry = nullptr;  // metrics and events; null = none
  std::vector<Shard*> shards;      // filled before any shard runs
  // Ready once every shard's loop exists; shards wait for it before accepting or posting.
  std::shared_future<void> all_started;
};

class Connection;
class AcceptCompletion;

/**
 * Shard-local state lives on the shard's thread; the public methods marked thread-safe
 * post into that thread.
 */
class Shard {
 public:
  Shard(uint32_t index, ServerContext* context);
  ~Shard();

  /** Binds the listeners (SO_REUSEPORT). Call before Start(). */
  absl::Status Init();
  /** Adds a recovered message to this shard's queue. Only before Start(). */
  void AddRecovered(queue::Envelope envelope);
  /**
   * Starts the thread and creates its io_uring loop; returns once the loop exists. The
   * shard starts accepting and delivering when ServerContext::all_started is ready.
   */
  absl::Status Start();
  /** Thread-safe: new connections use these certificates (reload; per listener). */
  void ApplyServerTls(std::vector<std::shared_ptr<const auth::ServerTlsContext>> contexts);
  /** Thread-safe: the delivery engine adopts `policy` (configuration reload). */
  void ApplyPolicy(std::shared_ptr<const delivery::TrafficPolicy> policy);
  /** Thread-safe: stop accepting, let sessions in DATA finish, then exit the loop. */
  void BeginShutdown();
  void Join();

  uint32_t index() const { return index_; }
  /**
   * Thread-safe: runs `fn` on the shard's thread with its delivery manager (null when
   * delivery is off) and returns its result once it ran (admin API; never call it from a
   * shard thread).
   */
  template <typename T>
  T Run(std::function<T(delivery::DeliveryManager*)> fn) {
    std::promise<T> done;
    loop_->Post([&] { done.set_value(fn(delivery_.get())); });
    return done.get_future().get();
  }

  /** Thread-safe snapshot, updated on the shard thread. */
  uint64_t queued_messages() const { return queued_.load(std::memory_order_relaxed); }

 private:
  friend class Connection;
  friend class AcceptCompletion;

  void OnAccept(size_t listener, int fd);
  void OnConnectionClosed(Connection* conn);
  void Submit(Connection* conn, std::unique_ptr<queue::SpoolRecord> record);
  // Spools a (signed or unsigned) record; the verdict comes back through OnCommitted.
  void Commit(uint64_t conn_id, std::unique_ptr<queue::SpoolRecord> record);
  void OnCommitted(uint64_t conn_id, absl::Status status,
                   std::unique_ptr<queue::SpoolRecord> record);
  void Enqueue(queue::Envelope envelope, std::optional<std::string> content);
  bool KnownStream(absl::string_view stream) const;
  // SMTP AUTH: checks the failure limits, then hands the KDF to the verifier thread; the
  // verdict comes back into this loop (OnCredentialsVerified), never synchronously.
  void VerifyCredentials(Connection* conn, const std::string& listener, std::string user,
                         std::string password);
  void OnCredentialsVerified(uint64_t conn_id, const std::string& listener, const std::string& ip,
                             const std::string& user, absl::StatusOr<auth::AuthUser> result);
  absl::Status StartDelivery();
  void MaybeFinishShutdown();
  // Every second: queued_, the loop lag and (every other second) the queue gauges.
  void Tick(absl::Time deadline, uint64_t tick);
  void ShutdownOnLoop();

  const uint32_t index_;
  ServerContext* const context_;
  std::unique_ptr<event::EventLoop> loop_;
  std::vector<int> listen_fds_;
  std::vector<std::unique_ptr<AcceptCompletion>> accepts_;
  absl::flat_hash_map<uint64_t, Connection*> connections_;
  absl::flat_hash_set<uint64_t> uncounted_;  // rejected by the limiter: nothing to release
  uint64_t next_conn_id_ = 1;
  uint64_t pending_commits_ = 0;
  bool shutting_down_ = false;
  queue::QueueIdGenerator ids_;
  queue::MessageQueue queue_;
  std::vector<queue::Envelope> recovered_;     // handed to delivery once the loop runs
  std::unique_ptr<ShardTelemetry> telemetry_;  // null without ServerContext::telemetry
  std::unique_ptr<dns::Resolver> resolver_;
  delivery::OutboundContext outbound_;
  std::unique_ptr<delivery::DeliveryManager> delivery_;
  std::shared_ptr<const delivery::TrafficPolicy> policy_;                  // the latest reload's
  std::vector<std::shared_ptr<const auth::ServerTlsContext>> server_tls_;  // per listener
  AuthFailureLimiter auth_ip_failures_;    // failed AUTH attempts per client address
  AuthFailureLimiter auth_user_failures_;  // ... and per user name (known or not)
  std::atomic<uint64_t> queued_{0};
  std::thread thread_;
};

}  // namespace mta::server

#endif  // MTA_SERVER_SHARD_H_
