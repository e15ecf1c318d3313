// CaresResolver answer cache: positive and negative entries, TTL expiry and clamping, LRU bound.

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

using ::testing::UnorderedElementsAre;

TEST_F(CaresResolverNsdTest, CachedAnswersOutliveTheServer) {
  MxOr mx = Mx("multi.example.test");
  ASSERT_TRUE(mx.ok()) << mx.status();
  AddressesOr both = Addresses("both.example.test");
  ASSERT_TRUE(both.ok()) << both.status();
  MxOr implicit = Mx("aonly.example.test");
  ASSERT_TRUE(implicit.ok()) << implicit.status();

  nsd_->Stop();
  // Proof that the server is really gone: an uncached name now fails.
  EXPECT_EQ(Mx("nullmx.example.test").status().code(), absl::StatusCode::kUnavailable);

  MxOr mx2 = Mx("multi.example.test");
  ASSERT_TRUE(mx2.ok()) << mx2.status();
  EXPECT_THAT(Hosts(*mx2), UnorderedElementsAre("mx0.example.test", "mx1a.example.test",
                                                "mx1b.example.test", "mx2.example.test"));
  EXPECT_LE(mx2->ttl, mx->ttl);
  EXPECT_GT(mx2->ttl, absl::Seconds(3000));
  AddressesOr both2 = Addresses("both.example.test");
  ASSERT_TRUE(both2.ok()) << both2.status();
  EXPECT_EQ(*both2, *both);
  MxOr implicit2 = Mx("aonly.example.test");
  ASSERT_TRUE(implicit2.ok()) << implicit2.status();
  EXPECT_EQ(implicit2->kind, MxResult::Kind::kImplicit);
  EXPECT_LE(implicit2->ttl, implicit->ttl);
}

TEST_F(CaresResolverNsdTest, NegativeAnswersAreCached) {
  EXPECT_EQ(Mx("nope.example.test").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Addresses("nope.example.test").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Addresses("noaddr.example.test").status().code(), absl::StatusCode::kNotFound);

  nsd_->Stop();
  EXPECT_EQ(Mx("nullmx.example.test").status().code(), absl::StatusCode::kUnavailable);

  MxOr r = Mx("nope.example.test");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();
  AddressesOr a = Addresses("nope.example.test");
  EXPECT_EQ(a.status().code(), absl::StatusCode::kNotFound) << a.status();
  a = Addresses("noaddr.example.test");
  EXPECT_EQ(a.status().code(), absl::StatusCode::kNotFound) << a.status();
}

TEST_F(CaresResolverNsdTest, PositiveAnswersExpireWithTheirTtl) {
  MxOr long_lived = Mx("multi.example.test");
  ASSERT_TRUE(long_lived.ok()) << long_lived.status();
  MxOr r = Mx("short.example.test");
  absl::Time answered = absl::Now();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ttl, absl::Seconds(1));  // fresh from the server, ttl_min is 0

  nsd_->Stop();
  // Waiting out a TTL has nothing to poll for.
  absl::SleepFor(answered + absl::Milliseconds(1100) - absl::Now());
  MxOr expired = Mx("short.example.test");
  EXPECT_EQ(expired.status().code(), absl::StatusCode::kUnavailable) << expired.status();
  // The 3600 s answer fetched before is still served.
  EXPECT_TRUE(Mx("multi.example.test").ok());
}

TEST_F(CaresResolverNsdTest, NegativeAnswersExpireWithTheSoaMinimum) {
  MxOr implicit = Mx("only-a.short.test");
  ASSERT_TRUE(implicit.ok()) << implicit.status();
  EXPECT_EQ(implicit->kind, MxResult::Kind::kImplicit);
  EXPECT_EQ(implicit->ttl, absl::Seconds(1));
  MxOr nx = Mx("nope.short.test");
  absl::Time answered = absl::Now();
  EXPECT_EQ(nx.status().code(), absl::StatusCode::kNotFound);

  nsd_->Stop();
  absl::SleepFor(answered + absl::Milliseconds(1100) - absl::Now());
  EXPECT_EQ(Mx("nope.short.test").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Mx("only-a.short.test").status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(CaresResolverNsdTest, TtlsAreClamped) {
  CaresResolverOptions o = NsdOptions();
  o.ttl_min = absl::Seconds(10);
  o.ttl_max = absl::Seconds(100);
  o.negative_ttl_max = absl::Seconds(20);
  RunOnLoop([this] { resolver_.reset(); });
  ASSERT_TRUE(CreateResolver(o).ok());
  MxOr r = Mx("short.example.test");  // TTL 1
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ttl, absl::Seconds(10));
  r = Mx("multi.example.test");  // TTL 3600
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ttl, absl::Seconds(100));
  r = Mx("aonly.example.test");  // negative TTL 300
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ttl, absl::Seconds(20));
  r = Mx("only-a.short.test");  // negative TTL 1
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ttl, absl::Seconds(10));
}

TEST_F(CaresResolverNsdTest, CacheIsBoundedLeastRecentlyUsedFirst) {
  CaresResolverOptions o = NsdOptions();
  o.cache_entries_max = 2;
  RunOnLoop([this] { resolver_.reset(); });
  ASSERT_TRUE(CreateResolver(o).ok());
  ASSERT_TRUE(Mx("multi.example.test").ok());
  ASSERT_TRUE(Mx("nullmx.example.test").ok());
  ASSERT_TRUE(Mx("multi.example.test").ok());  // now the most recently used
  ASSERT_TRUE(Mx("aonly.example.test").ok());  // evicts nullmx

  nsd_->Stop();
  EXPECT_TRUE(Mx("multi.example.test").ok());
  EXPECT_TRUE(Mx("aonly.example.test").ok());
  EXPECT_EQ(Mx("nullmx.example.test").status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(CaresResolverNsdTest, ZeroCacheEntriesDisablesTheCache) {
  CaresResolverOptions o = NsdOptions();
  o.cache_entries_max = 0;
  RunOnLoop([this] { resolver_.reset(); });
  ASSERT_TRUE(CreateResolver(o).ok());
  ASSERT_TRUE(Mx("multi.example.test").ok());
  nsd_->Stop();
  EXPECT_EQ(Mx("multi.example.test").status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace mta::dns
