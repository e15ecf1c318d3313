// One shard's side of the telemetry: its metric cells, the delivery observer and the
// event lines of what happens on the shard. Runs on the shard's loop.
#ifndef MTA_SERVER_SHARD_TELEMETRY_H_
#define MTA_SERVER_SHARD_TELEMETRY_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "dns/resolver.h"
#include "mta/delivery/delivery_manager.h"
#include "mta/delivery/delivery_observer.h"
#include "mta/server/telemetry.h"
#include "queue/envelope.h"

namespace mta::server {

/**
 * One shard's metrics and events. Shard-local: every method runs on the shard's thread
 * (it owns one set of cells; the scrape sums them).
 */
class ShardTelemetry final : public delivery::DeliveryObserver {
 public:
  ShardTelemetry(Telemetry* telemetry, uint32_t shard);

  /** A message was spooled (after its 250). `tls`: the client's TLS version, "" = none. */
  void MessageReceived(const queue::Envelope& envelope, absl::string_view tls, absl::Time now);
  void InboundConnection(absl::string_view listener, int delta);
  void InboundTls(absl::string_view version);
  /** An SMTP reply we sent (its code). */
  void InboundReply(int code);
  void LoopLag(absl::Duration lag);
  void DnsLookup(absl::string_view type, const absl::Status& status);
  /** The queue gauges from this shard's summary, replacing the previous ones. */
  void QueueGauges(const std::vector<delivery::DeliveryManager::QueueRow>& rows,
                   uint64_t messages_at_home, absl::Time now);

  // delivery::DeliveryObserver
  void OnOutcome(const delivery::OutcomeReport& r) override;
  void OnBackoff(absl::string_view rule, absl::string_view source,
                 absl::string_view action) override;
  void OnOutboundConnection(absl::string_view source, int delta) override;
  void OnOutboundTls(absl::string_view version) override;

 private:
  Telemetry* const t_;
  const MetricFamilies& f_;
  metrics::Cells* const cells_;
  const std::string shard_;
  // Queue gauge series set by the last QueueGauges (reset to 0 when they empty).
  absl::flat_hash_set<std::string> queue_series_;
};

/**
 * Counts the look-ups and failures of another resolver (same contract; shard-local). The
 * counts go to `telemetry`, which must outlive it.
 */
class CountingResolver final : public dns::Resolver {
 public:
  CountingResolver(std::unique_ptr<dns::Resolver> inner, ShardTelemetry* telemetry)
      : inner_(std::move(inner)), telemetry_(telemetry) {}
  void ResolveMx(const std::string& domain, MxCallback done) override;
  void ResolveAddresses(const std::string& host, AddressCallback done) override;

 private:
  std::unique_ptr<dns::Resolver> inner_;
  ShardTelemetry* const telemetry_;
};

}  // namespace mta::server

#endif  // MTA_SERVER_SHARD_TELEMETRY_H_
