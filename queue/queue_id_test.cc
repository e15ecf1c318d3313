#include "queue/queue_id.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "gtest/gtest.h"

namespace mta::queue {
namespace {

bool IsLowerHex(const std::string& s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

TEST(QueueIdTest, ExactFormat) {
  QueueIdGenerator gen(3, 0x10);
  EXPECT_EQ(gen.Next(0x018f3a2b4c5d), "018f3a2b4c5d03000011");
  EXPECT_EQ(gen.Next(0x018f3a2b4c5d), "018f3a2b4c5d03000012");
  EXPECT_EQ(gen.Next(0), "00000000000003000013");
  QueueIdGenerator shard255(0xff, 0);
  EXPECT_EQ(shard255.Next(1), "000000000001ff000001");
}

TEST(QueueIdTest, FixedLengthLowerHex) {
  QueueIdGenerator gen(7, 12345);
  for (int64_t ms : {int64_t{0}, int64_t{1}, int64_t{1700000000000}, int64_t{0xffffffffffff},
                     int64_t{-1}, int64_t{1} << 50}) {
    std::string id = gen.Next(ms);
    EXPECT_EQ(id.size(), QueueIdGenerator::kLength) << id;
    EXPECT_TRUE(IsLowerHex(id)) << id;
  }
}

TEST(QueueIdTest, ShardAndSeedAreMasked) {
  QueueIdGenerator gen(0x1234, 0xabcdef12);
  std::string id = gen.Next(5);
  EXPECT_EQ(id.substr(12, 2), "34");
  EXPECT_EQ(id.substr(14), "cdef13");
}

TEST(QueueIdTest, CounterWraps) {
  QueueIdGenerator gen(1, 0xfffffe);
  EXPECT_EQ(gen.Next(9).substr(14), "ffffff");
  EXPECT_EQ(gen.Next(9).substr(14), "000000");
  EXPECT_EQ(gen.Next(9).substr(14), "000001");
}

TEST(QueueIdTest, IdsSortByTime) {
  // Later milliseconds always sort later, whatever the shard or counter.
  QueueIdGenerator a(200, 0xfffff0);
  QueueIdGenerator b(1, 0);
  std::vector<std::string> ids;
  int64_t base = 1700000000000;
  for (int i = 0; i < 2000; ++i) {
    ids.push_back((i % 2 ? a : b).Next(base + i * 7));
  }
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
  // Across the 2^32 and 2^40 ms boundaries too (fixed width, no sign issues).
  QueueIdGenerator g(0, 0);
  std::vector<int64_t> times = {0,
                                1,
                                255,
                                256,
                                (int64_t{1} << 32) - 1,
                                int64_t{1} << 32,
                                (int64_t{1} << 40) - 1,
                                int64_t{1} << 40,
                                0xffffffffffff};
  std::vector<std::string> boundary;
  for (int64_t t : times) boundary.push_back(g.Next(t));
  EXPECT_TRUE(std::is_sorted(boundary.begin(), boundary.end()));
}

TEST(QueueIdTest, SameMillisecondIdsAreUniqueAndOrdered) {
  QueueIdGenerator gen(4, 0);
  std::vector<std::string> ids;
  absl::flat_hash_set<std::string> seen;
  for (int i = 0; i < 100000; ++i) {
    ids.push_back(gen.Next(1700000000000));
    EXPECT_TRUE(seen.insert(ids.back()).second) << ids.back();
  }
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
  // Different shards in the same millisecond never collide.
  QueueIdGenerator other(5, 0);
  EXPECT_NE(other.Next(1700000000000), QueueIdGenerator(4, 0).Next(1700000000000));
}

TEST(QueueIdTest, TimestampRoundTrip) {
  QueueIdGenerator gen(9, 77);
  for (int64_t ms : {int64_t{0}, int64_t{1}, int64_t{1700000000123}, int64_t{0xffffffffffff}}) {
    EXPECT_EQ(QueueIdGenerator::TimestampMs(gen.Next(ms)), ms);
  }
  EXPECT_EQ(QueueIdGenerator::TimestampMs("018f3a2b4c5d03000a1f"), 0x018f3a2b4c5d);
}

TEST(QueueIdTest, TimestampRejectsForeignIds) {
  EXPECT_EQ(QueueIdGenerator::TimestampMs(""), -1);
  EXPECT_EQ(QueueIdGenerator::TimestampMs("018f3a2b4c5d03000a1"), -1);    // 19
  EXPECT_EQ(QueueIdGenerator::TimestampMs("018f3a2b4c5d03000a1f0"), -1);  // 21
  EXPECT_EQ(QueueIdGenerator::TimestampMs("018f3a2b4c5g03000a1f"), -1);   // 'g'
  EXPECT_EQ(QueueIdGenerator::TimestampMs("zzzzzzzzzzzzzzzzzzzz"), -1);
  // Things strtoull-style parsers accept but that we never generate.
  EXPECT_EQ(QueueIdGenerator::TimestampMs("0x0000000001030000001"), -1);
  EXPECT_EQ(QueueIdGenerator::TimestampMs("0x000000000103000001"), -1);
  EXPECT_EQ(QueueIdGenerator::TimestampMs("+00000000001030000001"), -1);
  EXPECT_EQ(QueueIdGenerator::TimestampMs("+0000000000103000001"), -1);
  EXPECT_EQ(QueueIdGenerator::TimestampMs(" 0000000000103000001"), -1);
  EXPECT_EQ(QueueIdGenerator::TimestampMs("00000000001 03000001"), -1);
  EXPECT_EQ(QueueIdGenerator::TimestampMs("-0000000000103000001"), -1);
  // The shard and counter part must be ours too.
  EXPECT_EQ(QueueIdGenerator::TimestampMs("018f3a2b4c5d0300zzzz"), -1);
  EXPECT_EQ(QueueIdGenerator::TimestampMs("018f3a2b4c5d-3000a1f"), -1);
  // Upper-case hex is never generated.
  EXPECT_EQ(QueueIdGenerator::TimestampMs("018F3A2B4C5D03000A1F"), -1);
  EXPECT_EQ(QueueIdGenerator::TimestampMs(std::string("018f3a2b4c5d\0"
                                                      "3000a1f",
                                                      20)),
            -1);
}

}  // namespace
}  // namespace mta::queue
