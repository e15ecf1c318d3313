#include "mta/server/config.h"

#include "gtest/gtest.h"

namespace mta::server {
namespace {

TEST(ConfigTest, PrintedDefaultsEqualBuiltInDefaults) {
  auto parsed = ParseConfig(DefaultConfigYaml(), "defaults");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, Config());
}

TEST(ConfigTest, EmptyFileMeansDefaults) {
  auto parsed = ParseConfig("", "empty.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, Config());
}

TEST(ConfigTest, OverridesAreApplied) {
  auto parsed = ParseConfig(R"(
server:
  shards: 3
  local_domains: [bounces.example.com]
limits:
  max_recipients: 5
listeners:
  - name: a
    address: 127.0.0.1:2600
  - name: b
    address: "[::1]:2601"
    relay_networks: []
)",
                            "t.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->shards, 3u);
  EXPECT_EQ(parsed->max_recipients, 5u);
  ASSERT_EQ(parsed->listeners.size(), 2u);
  EXPECT_EQ(parsed->listeners[1].address, "[::1]:2601");
  EXPECT_TRUE(parsed->listeners[1].relay_networks.empty());
  EXPECT_EQ(parsed->listeners[0].relay_networks, ListenerConfig().relay_networks);
}

void ExpectError(const char* yaml, const char* fragment) {
  auto parsed = ParseConfig(yaml, "bad.yaml");
  ASSERT_FALSE(parsed.ok()) << yaml;
  EXPECT_NE(parsed.status().message().find(fragment), absl::string_view::npos)
      << parsed.status().message();
}

TEST(ConfigTest, ErrorsNameFileLineAndReason) {
  ExpectError("limits:\n  max_recipients: 0\n",
              "bad.yaml:2:19: limits.max_recipients: must be in [1, 100000], got 0");
  ExpectError("limits:\n  max_recipients: -3\n", "limits.max_recipients: must be an integer");
  ExpectError("limits:\n  max_recipents: 3\n", "bad.yaml:2:3: limits.max_recipents: unknown key");
  ExpectError("bogus: 1\n", "bogus: unknown key");
  ExpectError("listeners:\n  - address: nothost:25\n", "listeners[0].address");
  ExpectError("listeners:\n  - relay_networks: [10.0.0.0/40]\n", "relay_networks");
  ExpectError("listeners: []\n", "non-empty list");
  ExpectError("listeners:\n  - name: a\n  - name: a\n    address: 127.0.0.1:1\n", "duplicate name");
  ExpectError("server:\n  log_level: loud\n", "log_level");
  ExpectError("server: [1, 2\n", "bad.yaml:");
  ExpectError("listeners:\n  - add_missing_headers: maybe\n", "true or false");
}

}  // namespace
}  // namespace mta::server

namespace mta::server {
namespace {

TEST(ConfigDeliveryTest, RoutesAndRetryAreParsedAndValidated) {
  auto parsed = ParseConfig(R"(
delivery:
  retry_intervals: "10s,1m"
  tls: require
  dns_servers: ["127.0.0.1:5353"]
  routes:
    - {domain: "*", host: 127.0.0.1, port: 2526, tls: none}
    - {domain: example.com, host: relay.example.net}
)",
                            "d.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->retry_intervals, "10s,1m");
  ASSERT_EQ(parsed->routes.size(), 2u);
  EXPECT_EQ(parsed->routes[0], (RouteConfig{"*", "127.0.0.1", 2526, "none"}));
  EXPECT_EQ(parsed->routes[1].port, 25u);
  EXPECT_EQ(parsed->routes[1].tls, "opportunistic");
}

TEST(ConfigDeliveryTest, BadDeliverySettingsAreRejected) {
  EXPECT_FALSE(ParseConfig("delivery:\n  retry_intervals: \"5x\"\n", "b").ok());
  EXPECT_FALSE(ParseConfig("delivery:\n  tls: sometimes\n", "b").ok());
  EXPECT_FALSE(ParseConfig("delivery:\n  dns_servers: [resolver]\n", "b").ok());
  EXPECT_TRUE(ParseConfig("delivery:\n  routes: [{domain: a.com, tls: require}]\n", "b").ok());
  EXPECT_FALSE(ParseConfig("delivery:\n  routes: [{host: h}]\n", "b").ok());
  EXPECT_FALSE(
      ParseConfig("delivery:\n  routes: [{domain: a.com, host: h, bogus: 1}]\n", "b").ok());
  EXPECT_FALSE(ParseConfig("delivery:\n  routes: [{domain: a.com, host: h, tls: x}]\n", "b").ok());
}

}  // namespace
}  // namespace mta::server

namespace mta::server {
namespace {

TEST(ConfigShapingTest, FullExampleParses) {
  auto parsed = ParseConfig(R"(
egress:
  sources:
    - {name: ip2, address: 127.0.0.2, ehlo: mta2.example.com}
    - {name: ip3, address: "::1"}
  pools:
    - name: bulk
      sources: [{source: ip2, weight: 3}, {source: ip3}]
streams:
  - name: default
  - {name: bulk.news-1, pool: bulk, priority: -5, retry_intervals: "5m,1h", queue_lifetime: 2d}
  - {name: transactional, priority: 10}
shaping:
  default:
    max_connections: 5
    max_messages_per_connection: 100
    max_message_rate: 600/m
    rate_burst: 20
    max_recipients_per_transaction: 50
    reserved_connections: 1
    connect_timeout_s: 10
    idle_timeout_s: 2
    backoff:
      - {code: 421, enhanced: "4.7.", text: "(?i)too many", action: suspend, duration: 10m}
      - {code: 451, action: slow, rate_factor: 0.25}
    backoff_restore_interval: 30s
  rules:
    - {name: gmail, mx_suffix: .GOOGLE.com, max_connections: 20}
    - {name: yahoo, domain: Yahoo.com, max_message_rate: 10/s, backoff: []}
    - {name: corp, domain_suffix: .corp.example}
suspended:
  destinations: [Example.ORG, gmail]
  sources: [ip3]
  streams: [bulk.news-1]
listeners:
  - name: in
    stream: transactional
    stream_networks: [{network: 10.0.0.0/8, stream: bulk.news-1}]
    stream_header: X-Stream
)",
                            "full.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const Config& c = *parsed;
  EXPECT_EQ(c.sources, (std::vector<SourceConfig>{{"ip2", "127.0.0.2", "mta2.example.com"},
                                                  {"ip3", "::1", ""}}));
  EXPECT_EQ(c.pools, (std::vector<PoolConfig>{{"bulk", {{"ip2", 3}, {"ip3", 1}}}}));
  EXPECT_EQ(c.streams, (std::vector<StreamConfig>{{"default", "", 0, "", ""},
                                                  {"bulk.news-1", "bulk", -5, "5m,1h", "2d"},
                                                  {"transactional", "", 10, "", ""}}));
  ShapingLimitsConfig d;
  d.max_connections = 5;
  d.max_messages_per_connection = 100;
  d.max_message_rate = "600/m";
  d.rate_burst = 20;
  d.max_recipients_per_transaction = 50;
  d.reserved_connections = 1;
  d.connect_timeout_s = 10;
  d.idle_timeout_s = 2;
  d.backoff = {{421, "4.7.", "(?i)too many", "suspend", "10m", 0.5},
               {451, "", "", "slow", "5m", 0.25}};
  d.backoff_restore_interval = "30s";
  EXPECT_EQ(c.shaping_default, d);
  ASSERT_EQ(c.shaping_rules.size(), 3u);
  ShapingLimitsConfig gmail = d;
  gmail.max_connections = 20;
  EXPECT_EQ(c.shaping_rules[0], (ShapingRuleConfig{"gmail", "", "", ".google.com", gmail}));
  ShapingLimitsConfig yahoo = d;
  yahoo.max_message_rate = "10/s";
  yahoo.backoff.clear();
  EXPECT_EQ(c.shaping_rules[1], (ShapingRuleConfig{"yahoo", "yahoo.com", "", "", yahoo}));
  EXPECT_EQ(c.shaping_rules[2], (ShapingRuleConfig{"corp", "", ".corp.example", "", d}));
  EXPECT_EQ(c.suspended_destinations, (std::vector<std::string>{"Example.ORG", "gmail"}));
  EXPECT_EQ(c.suspended_sources, std::vector<std::string>{"ip3"});
  EXPECT_EQ(c.suspended_streams, std::vector<std::string>{"bulk.news-1"});
  ASSERT_EQ(c.listeners.size(), 1u);
  EXPECT_EQ(c.listeners[0].stream, "transactional");
  EXPECT_EQ(c.listeners[0].stream_networks,
            (std::vector<StreamNetworkConfig>{{"10.0.0.0/8", "bulk.news-1"}}));
  EXPECT_EQ(c.listeners[0].stream_header, "X-Stream");
}

TEST(ConfigShapingTest, ErrorsNameThePlaceAndTheReason) {
  ExpectError("streams:\n  - {name: default, pool: bulk}\n",
              "bad.yaml:2:27: streams[0].pool: unknown pool 'bulk'");
  ExpectError(
      "egress:\n  sources:\n    - {name: a, address: 127.0.0.2}\n"
      "    - {name: a, address: 127.0.0.3}\n",
      "bad.yaml:4:14: egress.sources[1].name: duplicate source name 'a'");
  ExpectError("shaping:\n  default:\n    backoff: [{text: \"(unclosed\"}]\n",
              "bad.yaml:3:22: shaping.default.backoff[0].text: bad regular expression: missing )");
  ExpectError("shaping:\n  default:\n    max_message_rate: 5/x\n",
              "bad.yaml:3:23: shaping.default.max_message_rate: must be \"\" or N/s, N/m or N/h "
              "with an integer N >= 1, got \"5/x\"");
  ExpectError("shaping:\n  rules:\n    - {name: r, domain: a.com, mx_suffix: .b.com}\n",
              "bad.yaml:3:7: shaping.rules[0]: exactly one of domain, domain_suffix or mx_suffix "
              "must be set");
  ExpectError("shaping:\n  rules:\n    - {name: r}\n", "shaping.rules[0]: exactly one of");
  ExpectError("listeners:\n  - stream: bulk\n",
              "bad.yaml:2:13: listeners[0].stream: unknown stream 'bulk'");
  ExpectError("shaping:\n  rules:\n    - {name: r, domain_suffix: example.com}\n",
              "bad.yaml:3:32: shaping.rules[0].domain_suffix: must start with '.'");
  ExpectError("shaping:\n  rules:\n    - {name: r, mx_suffix: google.com}\n",
              "shaping.rules[0].mx_suffix: must start with '.'");
}

TEST(ConfigShapingTest, MoreValidation) {
  // egress
  ExpectError("egress:\n  sources: [{name: a, address: host.example}]\n",
              "egress.sources[0].address: must be an IPv4 or IPv6 address");
  ExpectError("egress:\n  sources: [{address: 127.0.0.2}]\n", "egress.sources[0].name");
  ExpectError("egress:\n  pools: [{name: p, sources: [{source: nope}]}]\n",
              "egress.pools[0].sources[0].source: unknown source 'nope'");
  ExpectError(
      "egress:\n  sources: [{name: a, address: 127.0.0.2}]\n"
      "  pools: [{name: p, sources: [{source: a, weight: 0}]}]\n",
      "egress.pools[0].sources[0].weight: must be in [1, 1000], got 0");
  ExpectError("egress:\n  pools: [{name: p, sources: []}]\n",
              "egress.pools[0].sources: must list at least one source");
  ExpectError("egress:\n  pools: [{name: p}]\n", "egress.pools[0].sources: must list");
  ExpectError(
      "egress:\n  sources: [{name: a, address: 127.0.0.2}]\n"
      "  pools: [{name: p, sources: [{source: a}]}, {name: p, sources: [{source: a}]}]\n",
      "egress.pools[1].name: duplicate pool name 'p'");
  ExpectError("egress:\n  sourcez: []\n", "egress.sourcez: unknown key");
  // streams
  ExpectError("streams: []\n", "streams: must be a non-empty list");
  ExpectError("streams: [{name: default}, {name: default}]\n", "duplicate stream name");
  ExpectError("streams: [{name: \"a b\"}]\n", "streams[0].name: must be non-empty letters");
  ExpectError("streams: [{name: default, retry_intervals: 5x}]\n", "streams[0].retry_intervals");
  ExpectError("streams: [{name: default, queue_lifetime: \"1d,2d\"}]\n",
              "streams[0].queue_lifetime: must be one duration");
  ExpectError("streams: [{name: default, priority: 5000}]\n", "streams[0].priority");
  ExpectError("streams: [{name: x}]\n", "listeners[0].stream: unknown stream 'default'");
  // shaping
  ExpectError("shaping:\n  default:\n    max_connections: 0\n",
              "shaping.default.max_connections: must be in [1, 10000], got 0");
  ExpectError("shaping:\n  default:\n    max_message_rate: 0/s\n", "max_message_rate");
  ExpectError("shaping:\n  default:\n    max_connections: 2\n    reserved_connections: 2\n",
              "shaping.default.reserved_connections: must be less than max_connections (2), "
              "got 2");
  // A rule that lowers max_connections below the inherited reserve must lower it too.
  ExpectError(
      "shaping:\n  default: {reserved_connections: 1}\n  rules: [{name: r, domain: a.test, "
      "max_connections: 1}]\n",
      "reserved_connections: must be less than max_connections (1), got 1");
  ExpectError("shaping:\n  default:\n    max_message_rate: 10\n", "max_message_rate");
  ExpectError("shaping:\n  default:\n    backoff_restore_interval: soon\n",
              "shaping.default.backoff_restore_interval: must be one duration");
  ExpectError("shaping:\n  default:\n    backoff: [{action: pause}]\n",
              "shaping.default.backoff[0].action: must be suspend or slow");
  ExpectError("shaping:\n  default:\n    backoff: [{rate_factor: 1}]\n",
              "shaping.default.backoff[0].rate_factor: must be greater than 0 and less than 1");
  ExpectError("shaping:\n  default:\n    backoff: [{code: 600}]\n", "backoff[0].code");
  ExpectError("shaping:\n  default:\n    backoff: [{duration: 5}]\n", "backoff[0].duration");
  ExpectError("shaping:\n  default:\n    backoff: [{colour: red}]\n",
              "shaping.default.backoff[0].colour: unknown key");
  ExpectError("shaping:\n  rules: [{name: default, domain: a.com}]\n",
              "shaping.rules[0].name: \"default\" is reserved");
  ExpectError("shaping:\n  rules: [{name: a, domain: a.com}, {name: a, domain: b.com}]\n",
              "shaping.rules[1].name: duplicate rule name 'a'");
  ExpectError("shaping:\n  rules: [{domain: a.com}]\n", "shaping.rules[0].name: must not be empty");
  ExpectError("shaping:\n  rules: [{name: r, domain: a.com, max_connectionz: 3}]\n",
              "shaping.rules[0].max_connectionz: unknown key");
  ExpectError("shaping:\n  rules: [{name: r, domain: a.com, max_message_rate: 5/d}]\n",
              "shaping.rules[0].max_message_rate");
  // suspended and listeners
  ExpectError("suspended:\n  sources: [ip9]\n", "suspended.sources: unknown source 'ip9'");
  ExpectError("suspended:\n  streams: [bulk]\n", "suspended.streams: unknown stream 'bulk'");
  ExpectError("listeners:\n  - stream_networks: [{network: 10.0.0.0/33, stream: default}]\n",
              "listeners[0].stream_networks[0].network");
  ExpectError("listeners:\n  - stream_networks: [{network: 10.0.0.0/8, stream: bulk}]\n",
              "listeners[0].stream_networks[0].stream: unknown stream 'bulk'");
  ExpectError("listeners:\n  - stream_header: \"X Stream\"\n", "listeners[0].stream_header");
}

TEST(ConfigShapingTest, MovedDeliveryKeysAreUnknown) {
  ExpectError("delivery:\n  connect_timeout_s: 5\n", "delivery.connect_timeout_s: unknown key");
  ExpectError("delivery:\n  max_connections_per_destination: 5\n", "unknown key");
  auto parsed =
      ParseConfig("shaping:\n  default: {connect_timeout_s: 5, idle_timeout_s: 1}\n", "s");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->shaping_default.connect_timeout_s, 5u);
  EXPECT_EQ(parsed->shaping_default.idle_timeout_s, 1u);
}

}  // namespace
}  // namespace mta::server
