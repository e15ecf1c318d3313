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
