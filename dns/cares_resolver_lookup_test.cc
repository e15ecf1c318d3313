// CaresResolver MX and address lookups against nsd: MX order, null MX, CNAMEs, TCP fallback.

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

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

TEST_F(CaresResolverNsdTest, MxHostsComeByPreferenceWithTiesInRandomOrder) {
  bool seen_a_first = false;
  bool seen_b_first = false;
  // Each order has probability 1/2 per call; 200 calls miss one with probability 2^-199.
  for (int i = 0; i < 200 && !(seen_a_first && seen_b_first); ++i) {
    MxOr r = Mx("multi.example.test");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->kind, MxResult::Kind::kMx);
    ASSERT_EQ(r->hosts.size(), 4u);
    EXPECT_EQ(r->hosts[0], (MxHost{"mx0.example.test", 5}));
    EXPECT_EQ(r->hosts[1].preference, 10);
    EXPECT_EQ(r->hosts[2].preference, 10);
    EXPECT_EQ(r->hosts[3], (MxHost{"mx2.example.test", 20}));
    EXPECT_THAT((std::vector<std::string>{r->hosts[1].host, r->hosts[2].host}),
                UnorderedElementsAre("mx1a.example.test", "mx1b.example.test"));
    seen_a_first = seen_a_first || r->hosts[1].host == "mx1a.example.test";
    seen_b_first = seen_b_first || r->hosts[1].host == "mx1b.example.test";
    EXPECT_GT(r->ttl, absl::ZeroDuration());
    EXPECT_LE(r->ttl, absl::Seconds(3600));
  }
  EXPECT_TRUE(seen_a_first);
  EXPECT_TRUE(seen_b_first);
}

TEST_F(CaresResolverNsdTest, NamesAreCaseInsensitiveAndMayEndInADot) {
  MxOr r = Mx("MULTI.Example.TEST.");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->hosts.size(), 4u);
  AddressesOr a = Addresses("Both.EXAMPLE.test.");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->size(), 3u);
}

TEST_F(CaresResolverNsdTest, DomainWithoutMxIsImplicitMx) {
  MxOr r = Mx("aonly.example.test");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->kind, MxResult::Kind::kImplicit);
  EXPECT_THAT(r->hosts, ElementsAre(MxHost{"aonly.example.test", 0}));
  // Negative TTL of the empty answer: min(SOA TTL 3600, SOA MINIMUM 300).
  EXPECT_EQ(r->ttl, absl::Seconds(300));
}

TEST_F(CaresResolverNsdTest, NullMx) {
  MxOr r = Mx("nullmx.example.test");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->kind, MxResult::Kind::kNullMx);
  EXPECT_TRUE(r->hosts.empty());
}

TEST_F(CaresResolverNsdTest, NxDomainIsNotFound) {
  MxOr r = Mx("nope.example.test");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();
  AddressesOr a = Addresses("nope.example.test");
  EXPECT_EQ(a.status().code(), absl::StatusCode::kNotFound) << a.status();
  EXPECT_THAT(a.status().message(), HasSubstr("does not exist"));
}

TEST_F(CaresResolverNsdTest, HostWithoutAddressesIsNotFound) {
  AddressesOr a = Addresses("noaddr.example.test");
  EXPECT_EQ(a.status().code(), absl::StatusCode::kNotFound) << a.status();
  EXPECT_THAT(a.status().message(), HasSubstr("no A or AAAA"));
}

TEST_F(CaresResolverNsdTest, ResolvesAAndAaaa) {
  AddressesOr a = Addresses("both.example.test");
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->size(), 3u);
  // IPv4 first, then IPv6.
  EXPECT_THAT((std::vector<IpAddress>{(*a)[0], (*a)[1]}),
              UnorderedElementsAre(Ip("192.0.2.10"), Ip("192.0.2.11")));
  EXPECT_EQ((*a)[2], Ip("2001:db8::10"));

  a = Addresses("v6only.example.test");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_THAT(*a, ElementsAre(Ip("2001:db8::20")));

  a = Addresses("mx0.example.test");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_THAT(*a, ElementsAre(Ip("192.0.2.100")));
}

TEST_F(CaresResolverNsdTest, FollowsCnames) {
  AddressesOr a = Addresses("alias.example.test");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_THAT(*a, UnorderedElementsAre(Ip("192.0.2.10"), Ip("192.0.2.11"), Ip("2001:db8::10")));
}

TEST_F(CaresResolverNsdTest, LargeAnswerFallsBackToTcp) {
  MxOr r = Mx("big.example.test");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->hosts.size(), static_cast<size_t>(kBigMxCount));
  std::vector<std::string> names = Hosts(*r);
  std::set<std::string> hosts(names.begin(), names.end());
  for (int i = 0; i < kBigMxCount; ++i) EXPECT_EQ(hosts.count(BigMxHost(i)), 1u) << i;
  // And UDP still works afterwards.
  EXPECT_TRUE(Mx("multi.example.test").ok());
}

}  // namespace
}  // namespace mta::dns
