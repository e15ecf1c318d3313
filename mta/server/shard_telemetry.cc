#include "mta/server/shard_telemetry.h"

#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "metrics/json.h"

namespace mta::server {
namespace {

const char* ReplyClass(int code) {
  static constexpr const char* kClasses[] = {"2xx", "3xx", "4xx", "5xx"};
  return code < 200 || code > 599 ? "other" : kClasses[code / 100 - 2];
}

const char* OutcomeType(delivery::Outcome o) {
  switch (o) {
    case delivery::Outcome::kDelivered:
      return "delivery";
    case delivery::Outcome::kDeferred:
      return "deferral";
    case delivery::Outcome::kBounced:
      return "bounce";
    case delivery::Outcome::kExpired:
      return "expiry";
  }
  return "other";
}

// The version is the first word of an outbound TLS summary ("TLSv1.3 <cipher> verified").
absl::string_view FirstWord(absl::string_view s) { return s.substr(0, s.find(' ')); }

}  // namespace

ShardTelemetry::ShardTelemetry(Telemetry* telemetry, uint32_t shard)
    : t_(telemetry),
      f_(telemetry->families()),
      cells_(telemetry->registry().NewCells()),
      shard_(absl::StrCat(shard)) {
  // Series that exist from the start, so that rate() sees their first increment.
  for (const char* side : {"inbound", "outbound"}) {
    for (const char* cls : {"2xx", "3xx", "4xx", "5xx"}) cells_->Get(*f_.replies, {side, cls});
  }
}

void ShardTelemetry::MessageReceived(const queue::Envelope& env, absl::string_view tls,
                                     absl::Time now) {
  cells_->Get(*f_.received, {env.listener, env.stream}).Add(1);
  cells_->Get(*f_.message_size, {env.stream})
      .Observe(static_cast<double>(env.content_bytes), f_.message_size->buckets);
  metrics::EventLog* events = t_->events();
  if (events == nullptr) return;
  std::string rcpts = "[";
  for (size_t i = 0; i < env.recipients.size(); ++i) {
    if (i > 0) rcpts.push_back(',');
    metrics::AppendJsonString(&rcpts, env.recipients[i].address);
  }
  rcpts.push_back(']');
  char time[kEventTimeSize];
  events->Append(metrics::JsonObject()
                     .Str("time", absl::string_view(time, FormatEventTime(now, time)))
                     .Str("type", "reception")
                     .Str("id", env.id)
                     .Str("sender", env.sender)
                     .Raw("recipients", rcpts)
                     .Str("listener", env.listener)
                     .Str("stream", env.stream)
                     .Str("client_ip", env.client_ip)
                     .StrIfSet("helo", env.helo)
                     .StrIfSet("auth_user", env.auth_user)
                     .StrIfSet("tls", tls)
                     .Int("size", static_cast<int64_t>(env.content_bytes))
                     .Finish());
}

void ShardTelemetry::InboundConnection(absl::string_view listener, int delta) {
  cells_->Get(*f_.inbound_now, {listener}).Add(delta);
  if (delta > 0) cells_->Get(*f_.inbound_total, {listener}).Add(1);
}

void ShardTelemetry::InboundTls(absl::string_view version) {
  cells_->Get(*f_.tls, {"inbound", version}).Add(1);
}

void ShardTelemetry::InboundReply(int code) {
  cells_->Get(*f_.replies, {"inbound", ReplyClass(code)}).Add(1);
}

void ShardTelemetry::LoopLag(absl::Duration lag) {
  cells_->Get(*f_.loop_lag, {shard_}).Observe(absl::ToDoubleSeconds(lag), f_.loop_lag->buckets);
}

void ShardTelemetry::DnsLookup(absl::string_view type, const absl::Status& status) {
  cells_->Get(*f_.dns_lookups, {type}).Add(1);
  if (status.ok()) return;
  const char* reason = status.code() == absl::StatusCode::kNotFound          ? "nxdomain"
                       : status.code() == absl::StatusCode::kInvalidArgument ? "invalid"
                                                                             : "unavailable";
  cells_->Get(*f_.dns_failures, {type, reason}).Add(1);
}

void ShardTelemetry::QueueGauges(const std::vector<delivery::DeliveryManager::QueueRow>& rows,
                                 uint64_t messages_at_home, absl::Time now) {
  cells_->Get(*f_.spool_messages).Set(static_cast<double>(messages_at_home));
  struct Sum {
    uint64_t ready = 0, scheduled = 0, suspended = 0;
    int64_t oldest_ms = INT64_MAX;
  };
  std::map<std::string, Sum> sums;
  for (const auto& row : rows) {
    Sum& s = sums[std::string(t_->Destination(row.domain))];
    s.ready += row.ready;
    s.scheduled += row.scheduled;
    s.suspended += row.suspended;
    s.oldest_ms = std::min(s.oldest_ms, row.oldest_received_ms);
  }
  absl::flat_hash_set<std::string> seen;
  for (const auto& [dest, s] : sums) {
    cells_->Get(*f_.queue, {dest, "ready"}).Set(static_cast<double>(s.ready));
    cells_->Get(*f_.queue, {dest, "scheduled"}).Set(static_cast<double>(s.scheduled));
    cells_->Get(*f_.queue, {dest, "suspended"}).Set(static_cast<double>(s.suspended));
    cells_->Get(*f_.queue_oldest, {dest, shard_})
        .Set(std::max(0.0, absl::ToDoubleSeconds(now - absl::FromUnixMillis(s.oldest_ms))));
    seen.insert(dest);
  }
  for (const std::string& dest : queue_series_) {
    if (seen.contains(dest)) continue;
    for (const char* state : {"ready", "scheduled", "suspended"}) {
      cells_->Get(*f_.queue, {dest, state}).Set(0);
    }
    cells_->Get(*f_.queue_oldest, {dest, shard_}).Set(0);
  }
  queue_series_ = std::move(seen);
}

void ShardTelemetry::OnOutcome(const delivery::OutcomeReport& r) {
  const queue::Envelope& env = r.envelope;
  const delivery::AttemptResult& res = r.result;
  absl::string_view dest = t_->Destination(r.domain);
  const char* cls = delivery::BounceClassName(r.bounce_class);
  switch (r.outcome) {
    case delivery::Outcome::kDelivered:
      cells_->Get(*f_.delivered, {env.stream, r.pool, res.source, dest}).Add(1);
      cells_->Get(*f_.latency, {env.stream})
          .Observe(absl::ToDoubleSeconds(r.now - absl::FromUnixMillis(env.received_ms)),
                   f_.latency->buckets);
      break;
    case delivery::Outcome::kDeferred:
      cells_->Get(*f_.deferred, {env.stream, r.pool, res.source, dest, cls}).Add(1);
      break;
    case delivery::Outcome::kBounced:
      cells_->Get(*f_.bounced, {env.stream, r.pool, res.source, dest, cls}).Add(1);
      break;
    case delivery::Outcome::kExpired:
      cells_->Get(*f_.expired, {env.stream, dest}).Add(1);
      break;
  }
  if (res.code != 0) cells_->Get(*f_.replies, {"outbound", ReplyClass(res.code)}).Add(1);
  if (res.duration > absl::ZeroDuration()) {
    cells_->Get(*f_.attempt, {env.stream})
        .Observe(absl::ToDoubleSeconds(res.duration), f_.attempt->buckets);
  }
  metrics::EventLog* events = t_->events();
  if (events == nullptr) return;
  // The reply text without its code and enhanced status (they have their own fields).
  absl::string_view text = res.diagnostic;
  const int code = static_cast<int>(res.code);
  if (code >= 100 && code <= 999 && text.size() > 4 && text[0] == '0' + code / 100 &&
      text[1] == '0' + code / 10 % 10 && text[2] == '0' + code % 10) {
    text.remove_prefix(4);
    if (!res.status.empty() && absl::StartsWith(text, res.status)) {
      text.remove_prefix(std::min(text.size(), res.status.size() + 1));
    }
  }
  char time[kEventTimeSize];
  metrics::JsonObject e;
  e.Str("time", absl::string_view(time, FormatEventTime(r.now, time)))
      .Str("type", OutcomeType(r.outcome))
      .Str("id", env.id)
      .Str("sender", env.sender)
      .Str("recipient", env.recipients[r.recipient].address)
      .Str("destination", r.domain)
      .Str("stream", env.stream)
      .StrIfSet("pool", r.pool)
      .StrIfSet("source", res.source)
      .StrIfSet("mx_host", res.remote_mta)
      .StrIfSet("mx_ip", res.remote_ip);
  if (res.code != 0) e.Int("code", res.code);
  e.StrIfSet("enhanced", res.status).StrIfSet("text", text).StrIfSet("class", cls);
  e.Int("attempt", r.attempt)
      .StrIfSet("tls", res.tls)
      .Int("size", static_cast<int64_t>(env.content_bytes))
      .Num("latency_s", absl::ToDoubleSeconds(r.now - absl::FromUnixMillis(env.received_ms)));
  if (res.duration > absl::ZeroDuration()) {
    e.Num("attempt_s", absl::ToDoubleSeconds(res.duration));
  }
  events->Append(e.Finish());
}

void ShardTelemetry::OnBackoff(absl::string_view rule, absl::string_view source,
                               absl::string_view action) {
  cells_->Get(*f_.backoff, {rule, source, action}).Add(1);
  metrics::EventLog* events = t_->events();
  if (events == nullptr || action == "throttle") return;  // routine: counted only
  char time[kEventTimeSize];
  events->Append(metrics::JsonObject()
                     .Str("time", absl::string_view(time, FormatEventTime(absl::Now(), time)))
                     .Str("type", "backoff")
                     .Str("rule", rule)
                     .StrIfSet("source", source)
                     .Str("action", action)
                     .Finish());
}

void ShardTelemetry::OnOutboundConnection(absl::string_view source, int delta) {
  cells_->Get(*f_.outbound_now, {source}).Add(delta);
  if (delta > 0) cells_->Get(*f_.outbound_total, {source}).Add(1);
}

void ShardTelemetry::OnOutboundTls(absl::string_view version) {
  cells_->Get(*f_.tls, {"outbound", FirstWord(version)}).Add(1);
}

void CountingResolver::ResolveMx(const std::string& domain, MxCallback done) {
  inner_->ResolveMx(
      domain, [t = telemetry_, done = std::move(done)](absl::StatusOr<dns::MxResult> r) mutable {
        t->DnsLookup("mx", r.status());
        done(std::move(r));
      });
}

void CountingResolver::ResolveAddresses(const std::string& host, AddressCallback done) {
  inner_->ResolveAddresses(host, [t = telemetry_, done = std::move(done)](
                                     absl::StatusOr<std::vector<IpAddress>> r) mutable {
    t->DnsLookup("address", r.status());
    done(std::move(r));
  });
}

}  // namespace mta::server
