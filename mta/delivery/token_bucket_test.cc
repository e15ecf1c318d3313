#include "mta/delivery/token_bucket.h"

#include "gtest/gtest.h"

namespace mta::delivery {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1000000);

TEST(TokenBucketTest, UnlimitedAlwaysGives) {
  TokenBucket b;
  for (int i = 0; i < 1000; ++i) EXPECT_TRUE(b.TryTake(kT0));
  EXPECT_EQ(b.NextAvailable(kT0), kT0);
}

TEST(TokenBucketTest, StartsFullThenRefillsAtRate) {
  TokenBucket b;
  b.Configure(10, 3, kT0);
  EXPECT_TRUE(b.TryTake(kT0));
  EXPECT_TRUE(b.TryTake(kT0));
  EXPECT_TRUE(b.TryTake(kT0));
  EXPECT_FALSE(b.TryTake(kT0));
  EXPECT_EQ(b.NextAvailable(kT0), kT0 + absl::Milliseconds(100));
  EXPECT_FALSE(b.TryTake(kT0 + absl::Milliseconds(99)));
  EXPECT_TRUE(b.TryTake(kT0 + absl::Milliseconds(100)));
  EXPECT_FALSE(b.TryTake(kT0 + absl::Milliseconds(100)));
}

TEST(TokenBucketTest, NeverHoldsMoreThanBurst) {
  TokenBucket b;
  b.Configure(1, 2, kT0);
  absl::Time later = kT0 + absl::Hours(1);
  EXPECT_TRUE(b.TryTake(later));
  EXPECT_TRUE(b.TryTake(later));
  EXPECT_FALSE(b.TryTake(later));
}

TEST(TokenBucketTest, OverAWindowTheCountMatchesRatePlusBurst) {
  TokenBucket b;
  b.Configure(5, 1, kT0);
  int taken = 0;
  for (int ms = 0; ms < 10000; ++ms) {
    if (b.TryTake(kT0 + absl::Milliseconds(ms))) ++taken;
  }
  EXPECT_GE(taken, 50);
  EXPECT_LE(taken, 51);
}

TEST(TokenBucketTest, ReconfigureKeepsNoMoreThanTheNewBurst) {
  TokenBucket b;
  b.Configure(100, 100, kT0);
  b.Configure(1, 1, kT0);
  EXPECT_TRUE(b.TryTake(kT0));
  EXPECT_FALSE(b.TryTake(kT0));
}

TEST(TokenBucketTest, TimeGoingBackwardsGivesNothing) {
  TokenBucket b;
  b.Configure(1, 1, kT0);
  EXPECT_TRUE(b.TryTake(kT0));
  EXPECT_FALSE(b.TryTake(kT0 - absl::Seconds(10)));
  EXPECT_FALSE(b.TryTake(kT0 + absl::Milliseconds(500)));
}

}  // namespace
}  // namespace mta::delivery
