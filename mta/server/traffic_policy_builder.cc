#include "mta/server/traffic_policy_builder.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "mta/base/net.h"
#include "queue/retry_schedule.h"
#include "re2/re2.h"

namespace mta::server {
namespace {

using delivery::BackoffRule;
using delivery::ShapingLimits;
using delivery::ShapingRule;
using delivery::TrafficPolicy;

absl::Status Invalid(absl::string_view what, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(what, ": ", why));
}

absl::StatusOr<absl::Duration> OneDuration(const std::string& text, absl::string_view what) {
  auto d = queue::RetryPolicy::ParseIntervals(text);
  if (!d.ok() || d->size() != 1) {
    return Invalid(what,
                   absl::StrCat("must be one duration such as 30s, 5m or 4h, got \"", text, "\""));
  }
  return d->front();
}

// "N/s", "N/m" or "N/h" in messages per second; "" = 0 (unlimited).
absl::StatusOr<double> RatePerSecond(const std::string& text, absl::string_view what) {
  if (text.empty()) return 0.0;
  size_t slash = text.find('/');
  uint64_t n = 0;
  bool ok = slash != std::string::npos && slash > 0 && slash + 2 == text.size() &&
            std::all_of(text.begin(), text.begin() + slash, absl::ascii_isdigit) &&
            absl::SimpleAtoi(absl::string_view(text.data(), slash), &n) && n >= 1;
  if (ok) {
    switch (text.back()) {
      case 's':
        return static_cast<double>(n);
      case 'm':
        return static_cast<double>(n) / 60;
      case 'h':
        return static_cast<double>(n) / 3600;
      default:
        break;
    }
  }
  return Invalid(
      what, absl::StrCat("must be N/s, N/m or N/h with an integer N >= 1, got \"", text, "\""));
}

absl::StatusOr<BackoffRule> BuildBackoff(const BackoffConfig& b, const std::string& what) {
  BackoffRule rule;
  rule.code = b.code;
  rule.enhanced = b.enhanced;
  if (!b.text.empty()) {
    RE2::Options options;
    options.set_log_errors(false);
    auto re = std::make_shared<const RE2>(b.text, options);
    if (!re->ok()) return Invalid(what + ".text", re->error());
    rule.text = std::move(re);
  }
  if (b.action == "suspend") {
    rule.action = BackoffRule::Action::kSuspend;
  } else if (b.action == "slow") {
    rule.action = BackoffRule::Action::kSlow;
  } else {
    return Invalid(what + ".action", "must be suspend or slow");
  }
  auto duration = OneDuration(b.duration, what + ".duration");
  if (!duration.ok()) return duration.status();
  rule.duration = *duration;
  if (!(b.rate_factor > 0 && b.rate_factor < 1)) {
    return Invalid(what + ".rate_factor", "must be greater than 0 and less than 1");
  }
  rule.rate_factor = b.rate_factor;
  return rule;
}

absl::StatusOr<ShapingLimits> BuildLimits(const ShapingLimitsConfig& l, const std::string& what) {
  ShapingLimits limits;
  limits.max_connections = l.max_connections;
  limits.max_messages_per_connection = l.max_messages_per_connection;
  auto rate = RatePerSecond(l.max_message_rate, what + ".max_message_rate");
  if (!rate.ok()) return rate.status();
  limits.rate_per_second = *rate;
  limits.burst = l.rate_burst > 0 ? static_cast<double>(l.rate_burst) : std::max(1.0, *rate);
  limits.max_recipients_per_transaction = l.max_recipients_per_transaction;
  limits.reserved_connections = l.reserved_connections;
  limits.connect_timeout = absl::Seconds(l.connect_timeout_s);
  limits.idle_timeout = absl::Seconds(l.idle_timeout_s);
  for (size_t i = 0; i < l.backoff.size(); ++i) {
    auto rule = BuildBackoff(l.backoff[i], absl::StrCat(what, ".backoff[", i, "]"));
    if (!rule.ok()) return rule.status();
    limits.backoff.push_back(*std::move(rule));
  }
  auto restore = OneDuration(l.backoff_restore_interval, what + ".backoff_restore_interval");
  if (!restore.ok()) return restore.status();
  limits.restore_interval = *restore;
  return limits;
}

absl::StatusOr<delivery::Stream> BuildStream(const StreamConfig& s, const Config& config,
                                             const absl::flat_hash_map<std::string, int>& pools) {
  std::string what = absl::StrCat("streams[", s.name, "]");
  delivery::Stream stream;
  stream.name = s.name;
  stream.priority = s.priority;
  if (!s.pool.empty()) {
    auto it = pools.find(s.pool);
    if (it == pools.end())
      return Invalid(what + ".pool", absl::StrCat("unknown pool '", s.pool, "'"));
    stream.pool = it->second;
  }
  // A stream without its own retry settings inherits delivery's.
  const std::string& intervals_text =
      s.retry_intervals.empty() ? config.retry_intervals : s.retry_intervals;
  auto intervals = queue::RetryPolicy::ParseIntervals(intervals_text);
  if (!intervals.ok()) return Invalid(what + ".retry_intervals", intervals.status().message());
  stream.retry.intervals = *std::move(intervals);
  stream.retry.jitter = config.retry_jitter_percent / 100.0;
  auto lifetime = OneDuration(s.queue_lifetime.empty() ? config.queue_lifetime : s.queue_lifetime,
                              what + ".queue_lifetime");
  if (!lifetime.ok()) return lifetime.status();
  stream.retry.lifetime = *lifetime;
  return stream;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const TrafficPolicy>> BuildTrafficPolicy(const Config& config) {
  TrafficPolicy policy;

  absl::flat_hash_map<std::string, uint32_t> source_index;
  const std::string& default_ehlo = config.helo_name.empty() ? config.hostname : config.helo_name;
  for (const SourceConfig& s : config.sources) {
    auto address = IpAddress::Parse(s.address);
    if (!address.ok()) {
      return Invalid(absl::StrCat("egress.sources[", s.name, "].address"),
                     address.status().message());
    }
    source_index[s.name] = static_cast<uint32_t>(policy.sources.size());
    policy.sources.push_back(delivery::EgressSource{
        .name = s.name, .address = *address, .ehlo = s.ehlo.empty() ? default_ehlo : s.ehlo});
  }

  absl::flat_hash_map<std::string, int> pool_index;
  for (const PoolConfig& p : config.pools) {
    delivery::Pool pool{.name = p.name};
    for (const PoolMemberConfig& m : p.sources) {
      auto it = source_index.find(m.source);
      if (it == source_index.end()) {
        return Invalid(absl::StrCat("egress.pools[", p.name, "]"),
                       absl::StrCat("unknown source '", m.source, "'"));
      }
      pool.members.push_back({.source = it->second, .weight = m.weight});
    }
    pool_index[p.name] = static_cast<int>(policy.pools.size());
    policy.pools.push_back(std::move(pool));
  }

  for (const StreamConfig& s : config.streams) {
    auto stream = BuildStream(s, config, pool_index);
    if (!stream.ok()) return stream.status();
    policy.streams.push_back(*std::move(stream));
  }
  if (policy.streams.empty()) {  // the policy always has a stream
    auto stream = BuildStream(StreamConfig{.name = "default"}, config, pool_index);
    if (!stream.ok()) return stream.status();
    policy.streams.push_back(*std::move(stream));
  }

  auto default_limits = BuildLimits(config.shaping_default, "shaping.default");
  if (!default_limits.ok()) return default_limits.status();
  policy.default_rule = ShapingRule{.name = "default",
                                    .match = ShapingRule::Match::kDefault,
                                    .limits = *std::move(default_limits)};
  for (const ShapingRuleConfig& r : config.shaping_rules) {
    std::string what = absl::StrCat("shaping.rules[", r.name, "]");
    ShapingRule rule{.name = r.name};
    int matches = 0;
    if (!r.domain.empty()) {
      rule.match = ShapingRule::Match::kDomain;
      rule.pattern = r.domain;
      ++matches;
    }
    if (!r.domain_suffix.empty()) {
      rule.match = ShapingRule::Match::kDomainSuffix;
      rule.pattern = r.domain_suffix;
      ++matches;
    }
    if (!r.mx_suffix.empty()) {
      rule.match = ShapingRule::Match::kMxSuffix;
      rule.pattern = r.mx_suffix;
      ++matches;
    }
    if (matches != 1) {
      return Invalid(what, "exactly one of domain, domain_suffix or mx_suffix must be set");
    }
    absl::AsciiStrToLower(&rule.pattern);
    auto limits = BuildLimits(r.limits, what);
    if (!limits.ok()) return limits.status();
    rule.limits = *std::move(limits);
    policy.rules.push_back(std::move(rule));
  }

  for (const std::string& d : config.suspended_destinations) {
    // Domains compare lower-case; rule names as written.
    policy.suspended_destinations.insert(absl::AsciiStrToLower(d));
    policy.suspended_destinations.insert(d);
  }
  policy.suspended_sources.insert(config.suspended_sources.begin(), config.suspended_sources.end());
  policy.suspended_streams.insert(config.suspended_streams.begin(), config.suspended_streams.end());
  std::vector<delivery::BounceRuleSpec> bounce_rules;
  for (const BounceRuleConfig& r : config.bounce_rules) {
    auto c = delivery::ParseBounceClass(r.bounce_class);
    if (!c.ok()) return c.status();
    bounce_rules.push_back({.result = *c, .code = r.code, .enhanced = r.enhanced, .text = r.text});
  }
  auto classifier = delivery::BounceClassifier::Create(std::move(bounce_rules));
  if (!classifier.ok()) return classifier.status();
  policy.bounce_classifier = *std::move(classifier);
  policy.Index();
  return std::make_shared<const TrafficPolicy>(std::move(policy));
}

}  // namespace mta::server
