#include "mta/server/auth_limiter.h"

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace mta::server {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1700000000);

TEST(AuthFailureLimiterTest, BlocksAfterMaxFailuresUntilTheWindowPasses) {
  AuthFailureLimiter limiter(3, absl::Minutes(5));
  EXPECT_FALSE(limiter.Blocked("192.0.2.1", kT0));
  limiter.RecordFailure("192.0.2.1", kT0);
  limiter.RecordFailure("192.0.2.1", kT0 + absl::Seconds(10));
  EXPECT_FALSE(limiter.Blocked("192.0.2.1", kT0 + absl::Seconds(10)));
  limiter.RecordFailure("192.0.2.1", kT0 + absl::Seconds(20));
  EXPECT_TRUE(limiter.Blocked("192.0.2.1", kT0 + absl::Seconds(20)));
  EXPECT_FALSE(limiter.Blocked("192.0.2.2", kT0 + absl::Seconds(20)));  // other keys unaffected
  // Blocked for a whole window after the failure that reached the limit.
  EXPECT_TRUE(limiter.Blocked("192.0.2.1",
                              kT0 + absl::Seconds(20) + absl::Minutes(5) - absl::Milliseconds(1)));
  EXPECT_FALSE(limiter.Blocked("192.0.2.1", kT0 + absl::Seconds(20) + absl::Minutes(5)));
}

TEST(AuthFailureLimiterTest, FailuresSpreadOverMoreThanAWindowDoNotBlock) {
  AuthFailureLimiter limiter(3, absl::Minutes(5));
  limiter.RecordFailure("alice", kT0);
  limiter.RecordFailure("alice", kT0 + absl::Minutes(2));
  limiter.RecordFailure("alice", kT0 + absl::Minutes(6));  // starts a new window: count 1
  EXPECT_FALSE(limiter.Blocked("alice", kT0 + absl::Minutes(6)));
  limiter.RecordFailure("alice", kT0 + absl::Minutes(7));
  limiter.RecordFailure("alice", kT0 + absl::Minutes(8));
  EXPECT_TRUE(limiter.Blocked("alice", kT0 + absl::Minutes(8)));
}

TEST(AuthFailureLimiterTest, MemoryIsBounded) {
  AuthFailureLimiter limiter(2, absl::Minutes(5), /*max_keys=*/100);
  // A blocked key recorded first...
  limiter.RecordFailure("victim", kT0);
  limiter.RecordFailure("victim", kT0);
  // ...then a flood of distinct keys.
  for (int i = 0; i < 10000; ++i) {
    limiter.RecordFailure(absl::StrCat("10.0.", i / 256, ".", i % 256),
                          kT0 + absl::Milliseconds(i + 1));
    ASSERT_LE(limiter.size(), 100u);
  }
  // Expired keys go first: after the window, old entries make room without dropping
  // recent blocks.
  AuthFailureLimiter expiring(2, absl::Minutes(1), /*max_keys=*/10);
  for (int i = 0; i < 9; ++i) expiring.RecordFailure(absl::StrCat("old", i), kT0);
  expiring.RecordFailure("recent", kT0 + absl::Minutes(2));
  expiring.RecordFailure("recent", kT0 + absl::Minutes(2));
  for (int i = 0; i < 5; ++i)
    expiring.RecordFailure(absl::StrCat("new", i), kT0 + absl::Minutes(2));
  EXPECT_LE(expiring.size(), 10u);
  EXPECT_TRUE(expiring.Blocked("recent", kT0 + absl::Minutes(2)));
}

TEST(AuthFailureLimiterTest, MaxFailuresOfOneBlocksAtOnce) {
  AuthFailureLimiter limiter(1, absl::Seconds(30));
  limiter.RecordFailure("k", kT0);
  EXPECT_TRUE(limiter.Blocked("k", kT0));
  EXPECT_FALSE(limiter.Blocked("k", kT0 + absl::Seconds(30)));
}

}  // namespace
}  // namespace mta::server
