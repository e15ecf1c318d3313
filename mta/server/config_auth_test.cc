// The SMTP AUTH keys: top-level `auth` and each listener's `auth: {enabled, trusted}`.
#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "mta/server/config.h"

namespace mta::server {
namespace {

void ExpectError(const char* yaml, absl::string_view fragment) {
  auto parsed = ParseConfig(yaml, "t.yaml");
  ASSERT_FALSE(parsed.ok()) << yaml;
  EXPECT_TRUE(absl::StrContains(parsed.status().message(), fragment))
      << parsed.status().message() << "\nexpected: " << fragment;
}

TEST(ConfigAuthTest, DefaultsAreOff) {
  Config c;
  EXPECT_EQ(c.auth_password_file, "");
  EXPECT_EQ(c.auth_max_failures, 5u);
  EXPECT_EQ(c.auth_failure_window, "5m");
  EXPECT_FALSE(c.listeners[0].auth_enabled);
  EXPECT_FALSE(c.listeners[0].auth_trusted);
  EXPECT_TRUE(absl::StrContains(DefaultConfigYaml(), "auth: {enabled: false, trusted: false}"));
}

TEST(ConfigAuthTest, Parses) {
  auto parsed = ParseConfig(R"(
auth:
  password_file: /etc/mtad/users.pw
  max_failures: 3
  failure_window: 10m
listeners:
  - name: submission
    address: 127.0.0.1:587
    relay_networks: []
    auth: {enabled: true, trusted: true}
  - name: mx
    address: 127.0.0.1:25
)",
                            "t.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->auth_password_file, "/etc/mtad/users.pw");
  EXPECT_EQ(parsed->auth_max_failures, 3u);
  EXPECT_EQ(parsed->auth_failure_window, "10m");
  EXPECT_TRUE(parsed->listeners[0].auth_enabled);
  EXPECT_TRUE(parsed->listeners[0].auth_trusted);
  EXPECT_FALSE(parsed->listeners[1].auth_enabled);
  EXPECT_FALSE(parsed->listeners[1].auth_trusted);
}

TEST(ConfigAuthTest, Errors) {
  ExpectError("listeners:\n  - auth: {enabled: true}\n",
              "t.yaml:2:5: listeners[0].auth.enabled: needs auth.password_file");
  ExpectError("listeners:\n  - auth: {enabled: yes please}\n",
              "listeners[0].auth.enabled: must be true or false");
  ExpectError("listeners:\n  - auth: {enable: true}\n", "listeners[0].auth.enable: unknown key");
  ExpectError("listeners:\n  - auth: true\n", "t.yaml:2:11: listeners[0].auth: must be a map");
  ExpectError("auth:\n  max_failures: 0\n", "auth.max_failures: must be in [1, 1000], got 0");
  ExpectError("auth:\n  failure_window: 5 minutes\n", "auth.failure_window: must be one duration");
  ExpectError("auth:\n  failure_window: 1m,2m\n", "auth.failure_window");
  ExpectError("auth:\n  passwd_file: x\n", "auth.passwd_file: unknown key");
}

}  // namespace
}  // namespace mta::server
