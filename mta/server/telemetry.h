// Metrics and events of the running server: the metric families, one writer per shard,
// and the JSON lines of the event log.
#ifndef MTA_SERVER_TELEMETRY_H_
#define MTA_SERVER_TELEMETRY_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "metrics/event_log.h"
#include "metrics/registry.h"
#include "metrics/webhook.h"

namespace mta::server {

/** The metric families (see README "Metrics" for what each counts). */
struct MetricFamilies {
  const metrics::Family* received;        // {listener, stream}
  const metrics::Family* message_size;    // histogram {stream}
  const metrics::Family* delivered;       // {stream, pool, source, destination}
  const metrics::Family* deferred;        // {stream, pool, source, destination, class}
  const metrics::Family* bounced;         // {stream, pool, source, destination, class}
  const metrics::Family* expired;         // {stream, destination}
  const metrics::Family* replies;         // {side, class}
  const metrics::Family* inbound_now;     // gauge {listener}
  const metrics::Family* inbound_total;   // {listener}
  const metrics::Family* outbound_now;    // gauge {source}
  const metrics::Family* outbound_total;  // {source}
  const metrics::Family* tls;             // {side, version}
  const metrics::Family* dns_lookups;     // {type}
  const metrics::Family* dns_failures;    // {type, reason}
  const metrics::Family* spool_messages;  // gauge
  const metrics::Family* spool_bytes;     // gauge
  const metrics::Family* queue;           // gauge {destination, state}
  const metrics::Family* queue_oldest;    // gauge {destination, shard}
  const metrics::Family* backoff;         // {rule, source, action}
  const metrics::Family* loop_lag;        // histogram {shard}
  const metrics::Family* latency;         // histogram {stream}
  const metrics::Family* attempt;         // histogram {stream}
  const metrics::Family* events_written;  // event log lines
  const metrics::Family* events_dropped;
  const metrics::Family* admin_actions;  // {action}
  const metrics::Family* webhook_shipped;
  const metrics::Family* webhook_failed;
  const metrics::Family* webhook_backlog;
};

/** Process-wide; thread-safe. */
class Telemetry {
 public:
  /** `events` may be null (no event log); it must outlive this object. */
  Telemetry(uint32_t top_destinations, metrics::EventLog* events);

  metrics::Registry& registry() { return registry_; }
  const MetricFamilies& families() const { return f_; }
  metrics::EventLog* events() const { return events_; }
  /** The destination label for a domain: itself among the first N, else "other". */
  absl::string_view Destination(absl::string_view domain) { return destinations_.Fold(domain); }

  /** An administrative action (admin API): counted and written to the event log. */
  void AdminAction(absl::string_view action, absl::string_view target, absl::string_view detail,
                   absl::string_view client);
  /** Its counters are exported too; set once before the first scrape. */
  void set_webhook(const metrics::WebhookShipper* webhook) { webhook_ = webhook; }
  /** The exposition, with the gauges read at scrape time (`spool_bytes`). */
  std::string Render(uint64_t spool_bytes);

 private:
  metrics::Registry registry_;
  MetricFamilies f_;
  metrics::LabelLimiter destinations_;
  metrics::EventLog* const events_;
  const metrics::WebhookShipper* webhook_ = nullptr;
  metrics::Cells* scrape_cells_;  // written under scrape_mu_ (scrapes may overlap)
  metrics::Cells* admin_cells_;   // written under admin_mu_
  std::mutex scrape_mu_, admin_mu_;
};

/** RFC 3339 UTC with milliseconds, e.g. "2026-12-04T22:34:23.123Z". */
std::string EventTime(absl::Time t);
/** The same into `buf` (at least kEventTimeSize bytes); returns kEventTimeSize. */
inline constexpr size_t kEventTimeSize = 24;
size_t FormatEventTime(absl::Time t, char* buf);

}  // namespace mta::server

#endif  // MTA_SERVER_TELEMETRY_H_
