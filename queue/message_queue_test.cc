#include "queue/message_queue.h"

#include "gtest/gtest.h"

namespace mta::queue {
namespace {

Envelope Env(const std::string& id) {
  Envelope e;
  e.id = id;
  return e;
}

TEST(MessageQueueTest, BodiesBeyondBudgetStayOnDisk) {
  BodyBudget budget(2);
  MessageQueue a(&budget), b(&budget);
  a.Add(Env("1"), "body1");
  b.Add(Env("2"), "body2");
  a.Add(Env("3"), "body3");  // over budget: dropped from RAM
  b.Add(Env("4"), std::nullopt);
  EXPECT_EQ(budget.in_use(), 2u);
  EXPECT_EQ(a.size(), 2u);
  EXPECT_EQ(a.bodies_in_memory(), 1u);
  EXPECT_TRUE(a.messages()[0].content.has_value());
  EXPECT_FALSE(a.messages()[1].content.has_value());
  EXPECT_FALSE(b.messages()[1].content.has_value());
}

TEST(MessageQueueTest, DestroyingAQueueReturnsItsBudget) {
  BodyBudget budget(1);
  {
    MessageQueue q(&budget);
    q.Add(Env("1"), "x");
    EXPECT_EQ(budget.in_use(), 1u);
  }
  EXPECT_EQ(budget.in_use(), 0u);
  MessageQueue q(&budget);
  q.Add(Env("2"), "y");
  EXPECT_TRUE(q.messages()[0].content.has_value());
}

}  // namespace
}  // namespace mta::queue
