#include "mta/server/connection_limiter.h"

#include "gtest/gtest.h"

namespace mta::server {
namespace {

using Verdict = ConnectionLimiter::Verdict;

TEST(ConnectionLimiterTest, EnforcesPerIpAndTotal) {
  ConnectionLimiter limiter(3, 2);
  EXPECT_EQ(limiter.Acquire("10.0.0.1"), Verdict::kOk);
  EXPECT_EQ(limiter.Acquire("10.0.0.1"), Verdict::kOk);
  EXPECT_EQ(limiter.Acquire("10.0.0.1"), Verdict::kTooManyFromIp);
  EXPECT_EQ(limiter.Acquire("10.0.0.2"), Verdict::kOk);
  EXPECT_EQ(limiter.Acquire("10.0.0.3"), Verdict::kTooManyTotal);
  EXPECT_EQ(limiter.total(), 3u);
  limiter.Release("10.0.0.1");
  EXPECT_EQ(limiter.Acquire("10.0.0.3"), Verdict::kOk);
  EXPECT_EQ(limiter.Acquire("10.0.0.1"), Verdict::kTooManyTotal);
}

TEST(ConnectionLimiterTest, ReleaseOfUnknownIpIsHarmless) {
  ConnectionLimiter limiter(1, 1);
  limiter.Release("10.9.9.9");
  EXPECT_EQ(limiter.total(), 0u);
  EXPECT_EQ(limiter.Acquire("10.0.0.1"), Verdict::kOk);
}

}  // namespace
}  // namespace mta::server
