#include "queue/retry_schedule.h"

#include "gtest/gtest.h"

namespace mta::queue {
namespace {

TEST(RetryScheduleTest, GrowsThenRepeatsTheLastInterval) {
  RetryPolicy p;
  p.intervals = {absl::Seconds(10), absl::Minutes(1), absl::Hours(1)};
  p.jitter = 0;
  absl::BitGen rng;
  EXPECT_EQ(NextRetryDelay(p, 1, rng), absl::Seconds(10));
  EXPECT_EQ(NextRetryDelay(p, 2, rng), absl::Minutes(1));
  EXPECT_EQ(NextRetryDelay(p, 3, rng), absl::Hours(1));
  EXPECT_EQ(NextRetryDelay(p, 50, rng), absl::Hours(1));
}

TEST(RetryScheduleTest, JitterStaysWithinBoundsAndVaries) {
  RetryPolicy p;
  p.intervals = {absl::Seconds(100)};
  p.jitter = 0.2;
  absl::BitGen rng;
  absl::Duration lo = absl::InfiniteDuration(), hi = absl::ZeroDuration();
  for (int i = 0; i < 1000; ++i) {
    absl::Duration d = NextRetryDelay(p, 1, rng);
    lo = std::min(lo, d);
    hi = std::max(hi, d);
  }
  EXPECT_GE(lo, absl::Seconds(80));
  EXPECT_LE(hi, absl::Seconds(120));
  EXPECT_GT(hi - lo, absl::Seconds(20));  // actually spread out
}

TEST(RetryScheduleTest, Expiry) {
  RetryPolicy p;
  absl::Time t0 = absl::FromUnixSeconds(1000000);
  EXPECT_FALSE(Expired(p, t0, t0 + absl::Hours(119)));
  EXPECT_TRUE(Expired(p, t0, t0 + absl::Hours(120)));
}

TEST(RetryScheduleTest, ParsesIntervals) {
  auto v = RetryPolicy::ParseIntervals("30s, 5m,2h,1d");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, (std::vector<absl::Duration>{absl::Seconds(30), absl::Minutes(5), absl::Hours(2),
                                             absl::Hours(24)}));
  EXPECT_FALSE(RetryPolicy::ParseIntervals("").ok());
  EXPECT_FALSE(RetryPolicy::ParseIntervals("5x").ok());
  EXPECT_FALSE(RetryPolicy::ParseIntervals("0m").ok());
  EXPECT_FALSE(RetryPolicy::ParseIntervals("m").ok());
}

}  // namespace
}  // namespace mta::queue
