// CaresResolver failures: refused and referral answers, invalid names, silent and closed servers.

#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "dns/cares_resolver.h"
#include "dns/cares_resolver_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mta/base/net.h"
#include "mta/event/event_loop.h"

namespace mta::dns {
namespace {

using ::testing::HasSubstr;

TEST_F(CaresResolverNsdTest, RefusedIsUnavailable) {
  // nsd refuses names outside its zones.
  MxOr r = Mx("example.org");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
}

TEST_F(CaresResolverNsdTest, ReferralIsUnavailableNotImplicitMx) {
  // nsd is authoritative only: for a delegated name it answers with a referral (no
  // records, NS in authority, no SOA), which must not read as "no MX records".
  MxOr r = Mx("host.sub.example.test");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("referral"));
  AddressesOr a = Addresses("host.sub.example.test");
  EXPECT_EQ(a.status().code(), absl::StatusCode::kUnavailable) << a.status();
}

TEST_F(CaresResolverTest, InvalidNamesAreRejected) {
  ASSERT_TRUE(CreateResolver(CaresResolverOptions{.servers = {"127.0.0.1:9"}}).ok());
  const std::string label64(64, 'a');
  const std::string label63(63, 'b');
  const std::string name253 = label63 + "." + label63 + "." + label63 + "." + label63.substr(2);
  const std::string long_name = name253 + "c";
  ASSERT_EQ(name253.size(), 253u);
  // The longest valid name reaches the (closed) server.
  EXPECT_EQ(Mx(name253).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Mx(name253 + ".").status().code(), absl::StatusCode::kUnavailable);
  for (const std::string& name :
       {std::string(""), std::string("."), std::string("a..b"), std::string(".a"),
        std::string("bad name.test"), std::string("exa\\mple.test"), std::string("[192.0.2.1]"),
        std::string("caf\xc3\xa9.test"), label64 + ".test", long_name}) {
    MxOr r = Mx(name);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << name << " " << r.status();
    AddressesOr a = Addresses(name);
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument) << name << " " << a.status();
  }
}

TEST_F(CaresResolverTest, SilentServerTimesOut) {
  int silent = BindLoopback(SOCK_DGRAM, 0, false);  // bound, never read
  ASSERT_GE(silent, 0);
  absl::Cleanup close_silent = [silent] { close(silent); };
  CaresResolverOptions o;
  o.servers = {absl::StrCat("127.0.0.1:", LocalPort(silent))};
  o.query_timeout_ms = 250;
  o.tries = 2;  // 250 ms, then 500 ms
  ASSERT_TRUE(CreateResolver(o).ok());
  absl::Time start = absl::Now();
  auto mx = StartMx("example.test");
  auto addresses = StartAddresses("example.test");
  MxOr r = Await(mx);
  absl::Duration elapsed = absl::Now() - start;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("imeout"));
  EXPECT_GE(elapsed, absl::Milliseconds(250));
  EXPECT_LT(elapsed, absl::Seconds(20));
  AddressesOr a = Await(addresses);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kUnavailable) << a.status();
}

TEST_F(CaresResolverTest, ClosedPortIsUnavailable) {
  int probe = BindLoopback(SOCK_DGRAM, 0, false);
  ASSERT_GE(probe, 0);
  uint16_t port = LocalPort(probe);
  close(probe);  // nothing listens there now: ICMP port unreachable
  ASSERT_TRUE(CreateResolver(CaresResolverOptions{.servers = {absl::StrCat("127.0.0.1:", port)},
                                                  .query_timeout_ms = 2000,
                                                  .tries = 2})
                  .ok());
  MxOr r = Mx("example.test");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
}

}  // namespace
}  // namespace mta::dns
