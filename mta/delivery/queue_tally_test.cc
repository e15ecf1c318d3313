#include "mta/delivery/queue_tally.h"

#include <algorithm>
#include <memory>

#include "gtest/gtest.h"

namespace mta::delivery {
namespace {

using State = QueueTally::State;

Job MakeJob(const std::string& domain, const std::string& stream, int64_t received_ms,
            size_t recipients) {
  auto message = std::make_shared<DeliveryMessage>();
  message->envelope.stream = stream;
  message->envelope.received_ms = received_ms;
  Job job;
  job.message = message;
  job.domain = domain;
  for (size_t i = 0; i < recipients; ++i) job.recipients.push_back(i);
  return job;
}

std::vector<QueueRow> Sorted(std::vector<QueueRow> rows) {
  std::sort(rows.begin(), rows.end(), [](const QueueRow& a, const QueueRow& b) {
    return std::tie(a.domain, a.stream) < std::tie(b.domain, b.stream);
  });
  return rows;
}

TEST(QueueTallyTest, CountsRecipientsPerDomainStreamAndState) {
  QueueTally t;
  Job a1 = MakeJob("a.test", "tx", 5'000'700, 2);
  Job a2 = MakeJob("a.test", "tx", 3'000'100, 1);
  Job a3 = MakeJob("a.test", "bulk", 9'000'000, 4);
  Job b1 = MakeJob("b.test", "tx", 7'000'000, 3);
  t.Add(a1, State::kReady);
  t.Add(a2, State::kScheduled);
  t.Add(a3, State::kSuspended);
  t.Add(b1, State::kReady);
  std::vector<QueueRow> rows = Sorted(t.Rows());
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].domain, "a.test");
  EXPECT_EQ(rows[0].stream, "bulk");
  EXPECT_EQ(rows[0].suspended, 4u);
  EXPECT_EQ(rows[1].stream, "tx");
  EXPECT_EQ(rows[1].ready, 2u);
  EXPECT_EQ(rows[1].scheduled, 1u);
  EXPECT_EQ(rows[1].oldest_received_ms, 3'000'000);  // a2's second
  EXPECT_EQ(rows[2].domain, "b.test");
  EXPECT_EQ(rows[2].ready, 3u);

  // The oldest moves on when the oldest job leaves; empty rows disappear.
  t.Remove(a2, State::kScheduled);
  t.Remove(a3, State::kSuspended);
  rows = Sorted(t.Rows());
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].stream, "tx");
  EXPECT_EQ(rows[0].scheduled, 0u);
  EXPECT_EQ(rows[0].oldest_received_ms, 5'000'000);
  t.Remove(a1, State::kReady);
  t.Remove(b1, State::kReady);
  EXPECT_TRUE(t.Rows().empty());
}

TEST(QueueTallyTest, JobsOfOneSecondCountUntilTheLastLeaves) {
  QueueTally t;
  Job first = MakeJob("a.test", "tx", 1'000'000, 1);
  Job second = MakeJob("a.test", "tx", 1'000'999, 1);
  Job later = MakeJob("a.test", "tx", 2'000'000, 1);
  t.Add(first, State::kReady);
  t.Add(second, State::kReady);
  t.Add(later, State::kReady);
  t.Remove(first, State::kReady);
  ASSERT_EQ(t.Rows().size(), 1u);
  EXPECT_EQ(t.Rows()[0].oldest_received_ms, 1'000'000);
  EXPECT_EQ(t.Rows()[0].ready, 2u);
  t.Remove(second, State::kReady);
  EXPECT_EQ(t.Rows()[0].oldest_received_ms, 2'000'000);
  // Removing what is not there changes nothing.
  t.Remove(MakeJob("x.test", "tx", 0, 1), State::kReady);
  EXPECT_EQ(t.Rows().size(), 1u);
}

}  // namespace
}  // namespace mta::delivery
