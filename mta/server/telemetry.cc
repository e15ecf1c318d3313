#include "mta/server/telemetry.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "metrics/json.h"

namespace mta::server {
namespace {

using metrics::Family;
using metrics::MetricType;

}  // namespace

size_t FormatEventTime(absl::Time t, char* buf) {
  // Formatting a civil time is slow next to the rest of an event: each thread keeps the
  // text of the current second and appends the milliseconds.
  thread_local int64_t cached_second = INT64_MIN;
  thread_local char cached[20];  // "2026-12-04T22:34:23"
  int64_t ms = absl::ToUnixMillis(t);
  int64_t second = ms >= 0 ? ms / 1000 : (ms - 999) / 1000;
  if (second != cached_second) {
    cached_second = second;
    std::string text =
        absl::FormatTime("%Y-%m-%dT%H:%M:%S", absl::FromUnixSeconds(second), absl::UTCTimeZone());
    std::memcpy(cached, text.data(), std::min(text.size(), sizeof(cached)));
  }
  int milli = static_cast<int>(ms - second * 1000);
  std::memcpy(buf, cached, 19);
  buf[19] = '.';
  buf[20] = static_cast<char>('0' + milli / 100);
  buf[21] = static_cast<char>('0' + milli / 10 % 10);
  buf[22] = static_cast<char>('0' + milli % 10);
  buf[23] = 'Z';
  return kEventTimeSize;
}

std::string EventTime(absl::Time t) {
  char buf[kEventTimeSize];
  return std::string(buf, FormatEventTime(t, buf));
}

Telemetry::Telemetry(uint32_t top_destinations, metrics::EventLog* events)
    : destinations_(top_destinations), events_(events) {
  auto add = [this](Family f) { return &registry_.Add(std::move(f)); };
  // Latencies from milliseconds to days: queued mail may wait for retries.
  std::vector<double> latency = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,  1,     2.5,
                                 5,     10,   30,    60,   300, 900,  3600, 14400, 86400};
  f_.received = add({"mta_messages_received_total",
                     "Messages accepted and spooled (after 250).",
                     MetricType::kCounter,
                     {"listener", "stream"}});
  f_.message_size = add({"mta_message_size_bytes",
                         "Size of accepted messages.",
                         MetricType::kHistogram,
                         {"stream"},
                         metrics::ExponentialBuckets(1024, 4, 10)});
  f_.delivered = add({"mta_recipients_delivered_total",
                      "Recipients delivered (2xx).",
                      MetricType::kCounter,
                      {"stream", "pool", "source", "destination"}});
  f_.deferred = add({"mta_recipients_deferred_total",
                     "Delivery attempts deferred for a recipient (retried later).",
                     MetricType::kCounter,
                     {"stream", "pool", "source", "destination", "class"}});
  f_.bounced = add({"mta_recipients_bounced_total",
                    "Recipients bounced: permanent failures (5xx, cancelled).",
                    MetricType::kCounter,
                    {"stream", "pool", "source", "destination", "class"}});
  f_.expired = add({"mta_recipients_expired_total",
                    "Recipients that were still deferred when their queue lifetime ended.",
                    MetricType::kCounter,
                    {"stream", "destination"}});
  f_.replies = add({"mta_smtp_replies_total",
                    "SMTP replies: side=inbound are ours to clients, side=outbound the final "
                    "replies of remote servers per recipient.",
                    MetricType::kCounter,
                    {"side", "class"}});
  f_.inbound_now = add({"mta_inbound_connections",
                        "Open inbound SMTP connections.",
                        MetricType::kGauge,
                        {"listener"}});
  f_.inbound_total = add({"mta_inbound_connections_total",
                          "Inbound SMTP connections accepted.",
                          MetricType::kCounter,
                          {"listener"}});
  f_.outbound_now = add({"mta_outbound_connections",
                         "Open outbound SMTP connections.",
                         MetricType::kGauge,
                         {"source"}});
  f_.outbound_total = add({"mta_outbound_connections_total",
                           "Outbound SMTP connections established (TCP).",
                           MetricType::kCounter,
                           {"source"}});
  f_.tls = add({"mta_tls_sessions_total",
                "TLS sessions established.",
                MetricType::kCounter,
                {"side", "version"}});
  f_.dns_lookups = add({"mta_dns_lookups_total",
                        "DNS look-ups for delivery (answered or not).",
                        MetricType::kCounter,
                        {"type"}});
  f_.dns_failures = add({"mta_dns_failures_total",
                         "DNS look-ups that failed.",
                         MetricType::kCounter,
                         {"type", "reason"}});
  f_.spool_messages = add(
      {"mta_spool_messages", "Messages in the spool (not yet finished).", MetricType::kGauge, {}});
  f_.spool_bytes = add(
      {"mta_spool_bytes", "Estimated live bytes in the spool database.", MetricType::kGauge, {}});
  f_.queue = add({"mta_queue_recipients",
                  "Recipients waiting: ready (to send now), scheduled (for a retry), "
                  "suspended (by an administrator or the configuration).",
                  MetricType::kGauge,
                  {"destination", "state"}});
  f_.queue_oldest = add({"mta_queue_oldest_age_seconds",
                         "Age of the oldest waiting message per destination, per shard (use max).",
                         MetricType::kGauge,
                         {"destination", "shard"}});
  f_.backoff = add({"mta_backoff_events_total",
                    "Shaping events per rule and source: backoff steps (suspend, slow, "
                    "restore) and throttle (mail waited for the message rate).",
                    MetricType::kCounter,
                    {"rule", "source", "action"}});
  f_.loop_lag = add({"mta_shard_loop_lag_seconds",
                     "How late a shard's periodic timer ran (event loop lag).",
                     MetricType::kHistogram,
                     {"shard"},
                     metrics::ExponentialBuckets(0.0001, 4, 8)});
  f_.latency = add({"mta_delivery_latency_seconds",
                    "Injection to delivery time of delivered recipients.",
                    MetricType::kHistogram,
                    {"stream"},
                    latency});
  f_.attempt = add({"mta_delivery_attempt_duration_seconds",
                    "Duration of delivery transactions (per recipient attempt).",
                    MetricType::kHistogram,
                    {"stream"},
                    metrics::ExponentialBuckets(0.001, 4, 9)});
  f_.events_written =
      add({"mta_events_total", "Event log lines appended.", MetricType::kCounter, {}});
  f_.events_dropped = add({"mta_events_dropped_total",
                           "Event log lines dropped (the writer could not keep up).",
                           MetricType::kCounter,
                           {}});
  f_.admin_actions =
      add({"mta_admin_actions_total", "Admin API actions.", MetricType::kCounter, {"action"}});
  f_.webhook_shipped = add({"mta_webhook_events_shipped_total",
                            "Events acknowledged by the webhook endpoint.",
                            MetricType::kCounter,
                            {}});
  f_.webhook_failed = add({"mta_webhook_failed_posts_total",
                           "Webhook POSTs that failed (retried).",
                           MetricType::kCounter,
                           {}});
  f_.webhook_backlog = add({"mta_webhook_backlog_bytes",
                            "Event log bytes not yet acknowledged by the webhook endpoint.",
                            MetricType::kGauge,
                            {}});
  scrape_cells_ = registry_.NewCells();
  admin_cells_ = registry_.NewCells();
  // Series that exist from the start, so that rate() sees their first increment.
  for (const char* action : {"suspend", "resume", "retry", "bounce", "reload"}) {
    admin_cells_->Get(*f_.admin_actions, {action});
  }
}

void Telemetry::AdminAction(absl::string_view action, absl::string_view target,
                            absl::string_view detail, absl::string_view client) {
  {
    std::lock_guard<std::mutex> lock(admin_mu_);
    admin_cells_->Get(*f_.admin_actions, {action}).Add(1);
  }
  if (events_ == nullptr) return;
  events_->Append(metrics::JsonObject()
                      .Str("time", EventTime(absl::Now()))
                      .Str("type", "admin")
                      .Str("action", action)
                      .StrIfSet("target", target)
                      .StrIfSet("detail", detail)
                      .StrIfSet("client", client)
                      .Finish());
}

std::string Telemetry::Render(uint64_t spool_bytes) {
  {
    std::lock_guard<std::mutex> lock(scrape_mu_);
    scrape_cells_->Get(*f_.spool_bytes).Set(static_cast<double>(spool_bytes));
    if (events_ != nullptr) {
      scrape_cells_->Get(*f_.events_written).Set(static_cast<double>(events_->appended()));
      scrape_cells_->Get(*f_.events_dropped).Set(static_cast<double>(events_->dropped()));
    }
    if (webhook_ != nullptr) {
      scrape_cells_->Get(*f_.webhook_shipped).Set(static_cast<double>(webhook_->shipped_events()));
      scrape_cells_->Get(*f_.webhook_failed).Set(static_cast<double>(webhook_->failed_posts()));
      scrape_cells_->Get(*f_.webhook_backlog).Set(static_cast<double>(webhook_->backlog_bytes()));
    }
  }
  return registry_.Render();
}

}  // namespace mta::server
