#include "mta/server/traffic_policy_builder.h"

#include "gtest/gtest.h"

namespace mta::server {
namespace {

using delivery::BackoffRule;
using delivery::ShapingRule;
using delivery::TrafficPolicy;

std::shared_ptr<const TrafficPolicy> Build(const Config& config) {
  auto policy = BuildTrafficPolicy(config);
  EXPECT_TRUE(policy.ok()) << policy.status();
  return policy.ok() ? *policy : std::make_shared<const TrafficPolicy>();
}

std::shared_ptr<const TrafficPolicy> Build(const char* yaml) {
  auto config = ParseConfig(yaml, "t.yaml");
  EXPECT_TRUE(config.ok()) << config.status();
  return Build(config.ok() ? *config : Config());
}

TEST(TrafficPolicyBuilderTest, DefaultsGiveOneDefaultStreamAndTheDefaultRule) {
  auto p = Build(Config());
  ASSERT_EQ(p->streams.size(), 1u);
  EXPECT_EQ(p->streams[0].name, "default");
  EXPECT_EQ(p->streams[0].pool, -1);
  EXPECT_TRUE(p->rules.empty());
  EXPECT_EQ(p->default_rule.name, "default");
  EXPECT_EQ(p->default_rule.match, ShapingRule::Match::kDefault);
  const delivery::ShapingLimits& l = p->default_rule.limits;
  EXPECT_EQ(l.max_connections, 10u);
  EXPECT_EQ(l.rate_per_second, 0);
  EXPECT_EQ(l.burst, 1);
  EXPECT_EQ(l.max_recipients_per_transaction, 100u);
  EXPECT_EQ(l.connect_timeout, absl::Seconds(30));
  EXPECT_EQ(l.idle_timeout, absl::Seconds(5));
  EXPECT_EQ(l.restore_interval, absl::Minutes(1));
  EXPECT_TRUE(l.backoff.empty());
}

TEST(TrafficPolicyBuilderTest, RatesBecomeMessagesPerSecondWithBurst) {
  struct Case {
    const char* rate;
    uint32_t burst;
    double want_rate;
    double want_burst;
  };
  for (const Case& c :
       {Case{"100/s", 0, 100, 100}, Case{"3000/m", 0, 50, 50}, Case{"36000/h", 0, 10, 10},
        Case{"30/m", 0, 0.5, 1}, Case{"1/h", 0, 1.0 / 3600, 1}, Case{"10/s", 25, 10, 25},
        Case{"", 0, 0, 1}, Case{"", 7, 0, 7}}) {
    Config config;
    config.shaping_default.max_message_rate = c.rate;
    config.shaping_default.rate_burst = c.burst;
    auto p = Build(config);
    EXPECT_DOUBLE_EQ(p->default_rule.limits.rate_per_second, c.want_rate) << c.rate;
    EXPECT_DOUBLE_EQ(p->default_rule.limits.burst, c.want_burst) << c.rate << " " << c.burst;
  }
}

TEST(TrafficPolicyBuilderTest, BadValuesInACodeBuiltConfigAreErrors) {
  Config config;
  config.shaping_default.max_message_rate = "5/x";
  EXPECT_FALSE(BuildTrafficPolicy(config).ok());
  config = Config();
  config.streams[0].pool = "missing";
  EXPECT_FALSE(BuildTrafficPolicy(config).ok());
  config = Config();
  config.shaping_rules.push_back({.name = "r", .domain = "a.com", .mx_suffix = ".b.com"});
  EXPECT_FALSE(BuildTrafficPolicy(config).ok());
}

TEST(TrafficPolicyBuilderTest, StreamsInheritDeliveryRetryUnlessSet) {
  auto p = Build(R"(
delivery:
  retry_intervals: "10s,2m"
  retry_jitter_percent: 20
  queue_lifetime: 2d
egress:
  sources:
    - {name: ip2, address: 127.0.0.2, ehlo: mta2.example.com}
    - {name: ip3, address: "::1"}
  pools:
    - {name: bulk, sources: [{source: ip3, weight: 1}, {source: ip2, weight: 3}]}
streams:
  - {name: default}
  - {name: bulk, pool: bulk, priority: -5, retry_intervals: "1h", queue_lifetime: 12h}
)");
  ASSERT_EQ(p->streams.size(), 2u);
  const delivery::Stream& def = p->StreamFor("default");
  EXPECT_EQ(def.pool, -1);
  EXPECT_EQ(def.retry.intervals,
            (std::vector<absl::Duration>{absl::Seconds(10), absl::Minutes(2)}));
  EXPECT_DOUBLE_EQ(def.retry.jitter, 0.2);
  EXPECT_EQ(def.retry.lifetime, absl::Hours(48));

  const delivery::Stream& bulk = p->StreamFor("bulk");
  EXPECT_EQ(bulk.name, "bulk");
  EXPECT_EQ(bulk.priority, -5);
  EXPECT_EQ(bulk.retry.intervals, std::vector<absl::Duration>{absl::Hours(1)});
  EXPECT_DOUBLE_EQ(bulk.retry.jitter, 0.2);
  EXPECT_EQ(bulk.retry.lifetime, absl::Hours(12));
  ASSERT_EQ(bulk.pool, 0);
  const delivery::Pool& pool = p->pools[0];
  EXPECT_EQ(pool.name, "bulk");
  ASSERT_EQ(pool.members.size(), 2u);
  EXPECT_EQ(p->sources[pool.members[0].source].name, "ip3");
  EXPECT_EQ(pool.members[0].weight, 1u);
  EXPECT_EQ(p->sources[pool.members[1].source].name, "ip2");
  EXPECT_EQ(pool.members[1].weight, 3u);

  ASSERT_NE(p->SourceNamed("ip2"), nullptr);
  EXPECT_EQ(p->SourceNamed("ip2")->ehlo, "mta2.example.com");
  EXPECT_EQ(p->SourceNamed("ip3")->address.family, AF_INET6);
}

TEST(TrafficPolicyBuilderTest, SourcesWithoutEhloUseHeloNameElseHostname) {
  Config config;
  config.hostname = "host.example";
  config.sources = {{.name = "a", .address = "127.0.0.2"}};
  EXPECT_EQ(Build(config)->sources[0].ehlo, "host.example");
  config.helo_name = "helo.example";
  EXPECT_EQ(Build(config)->sources[0].ehlo, "helo.example");
}

TEST(TrafficPolicyBuilderTest, RulesInheritDefaultLimitsAndKeepOrder) {
  auto p = Build(R"(
shaping:
  default:
    max_connections: 4
    max_message_rate: 60/m
    connect_timeout_s: 7
    backoff:
      - {code: 421, text: "(?i)too many", action: suspend, duration: 10m}
      - {enhanced: "4.7.", action: slow, rate_factor: 0.25}
    backoff_restore_interval: 2m
  rules:
    - {name: gmail, mx_suffix: .Google.com, max_connections: 20, reserved_connections: 2}
    - name: yahoo
      domain: yahoo.com
      max_message_rate: 10/s
      rate_burst: 30
      backoff: []
    - {name: corp, domain_suffix: .corp.example}
suspended:
  destinations: [Yahoo.com, gmail]
)");
  EXPECT_EQ(p->default_rule.limits.max_connections, 4u);
  EXPECT_DOUBLE_EQ(p->default_rule.limits.rate_per_second, 1);
  ASSERT_EQ(p->default_rule.limits.backoff.size(), 2u);
  const BackoffRule& suspend = p->default_rule.limits.backoff[0];
  EXPECT_EQ(suspend.action, BackoffRule::Action::kSuspend);
  EXPECT_EQ(suspend.duration, absl::Minutes(10));
  EXPECT_TRUE(suspend.Matches(421, "4.7.0", "Too many connections"));
  EXPECT_FALSE(suspend.Matches(421, "4.7.0", "Try again"));
  const BackoffRule& slow = p->default_rule.limits.backoff[1];
  EXPECT_EQ(slow.action, BackoffRule::Action::kSlow);
  EXPECT_EQ(slow.text, nullptr);
  EXPECT_DOUBLE_EQ(slow.rate_factor, 0.25);
  EXPECT_EQ(p->default_rule.limits.restore_interval, absl::Minutes(2));

  ASSERT_EQ(p->rules.size(), 3u);
  const ShapingRule& gmail = p->rules[0];
  EXPECT_EQ(gmail.name, "gmail");
  EXPECT_EQ(gmail.match, ShapingRule::Match::kMxSuffix);
  EXPECT_EQ(gmail.pattern, ".google.com");
  EXPECT_EQ(gmail.limits.max_connections, 20u);                  // its own
  EXPECT_EQ(gmail.limits.reserved_connections, 2u);              // its own
  EXPECT_DOUBLE_EQ(gmail.limits.rate_per_second, 1);             // inherited
  EXPECT_EQ(gmail.limits.connect_timeout, absl::Seconds(7));     // inherited
  EXPECT_EQ(gmail.limits.backoff.size(), 2u);                    // inherited list
  EXPECT_EQ(gmail.limits.restore_interval, absl::Minutes(2));    // inherited
  EXPECT_EQ(gmail.limits.max_recipients_per_transaction, 100u);  // built-in default

  const ShapingRule& yahoo = p->rules[1];
  EXPECT_EQ(yahoo.match, ShapingRule::Match::kDomain);
  EXPECT_EQ(yahoo.pattern, "yahoo.com");
  EXPECT_EQ(yahoo.limits.max_connections, 4u);
  EXPECT_EQ(yahoo.limits.reserved_connections, 0u);
  EXPECT_DOUBLE_EQ(yahoo.limits.rate_per_second, 10);
  EXPECT_DOUBLE_EQ(yahoo.limits.burst, 30);
  EXPECT_TRUE(yahoo.limits.backoff.empty());  // an explicit empty list overrides

  EXPECT_EQ(p->rules[2].match, ShapingRule::Match::kDomainSuffix);
  EXPECT_EQ(p->rules[2].pattern, ".corp.example");

  EXPECT_EQ(p->RuleFor("a.corp.example", {"mx.google.com"}).name, "corp");
  EXPECT_EQ(p->RuleFor("customer.org", {"aspmx.l.google.com."}).name, "gmail");
  EXPECT_EQ(p->RuleNamed("yahoo"), &p->rules[1]);
  EXPECT_TRUE(p->suspended_destinations.contains("yahoo.com"));
  EXPECT_TRUE(p->suspended_destinations.contains("gmail"));
}

TEST(TrafficPolicyBuilderTest, SuspendedSourcesAndStreams) {
  auto p = Build(R"(
egress:
  sources: [{name: ip2, address: 127.0.0.2}]
streams: [{name: default}, {name: bulk}]
suspended:
  sources: [ip2]
  streams: [bulk]
)");
  EXPECT_TRUE(p->suspended_sources.contains("ip2"));
  EXPECT_TRUE(p->suspended_streams.contains("bulk"));
  EXPECT_FALSE(p->suspended_streams.contains("default"));
}

}  // namespace
}  // namespace mta::server
