#include "mta/base/work_queue.h"

#include <atomic>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace mta {
namespace {

TEST(WorkQueueTest, RunsTasksInOrderOnItsOwnThread) {
  std::vector<int> order;
  std::thread::id worker;
  absl::Notification done;
  {
    WorkQueue queue("test-queue");
    for (int i = 0; i < 100; ++i) {
      queue.Post([&order, &worker, i] {
        worker = std::this_thread::get_id();
        order.push_back(i);
      });
    }
    queue.Post([&done] { done.Notify(); });
    done.WaitForNotification();
  }
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
  EXPECT_NE(worker, std::this_thread::get_id());
}

TEST(WorkQueueTest, DestructionRunsWhatWasPosted) {
  std::atomic<int> ran{0};
  {
    WorkQueue queue("test-queue");
    absl::Notification release;
    queue.Post([&release] { release.WaitForNotification(); });
    for (int i = 0; i < 10; ++i) queue.Post([&ran] { ++ran; });
    release.Notify();
  }
  EXPECT_EQ(ran.load(), 10);
}

TEST(WorkQueueTest, HasRoomFollowsMaxPending) {
  WorkQueue queue("test-queue", 2);
  absl::Notification release, started;
  queue.Post([&] {
    started.Notify();
    release.WaitForNotification();
  });
  started.WaitForNotification();  // the first task is running, not waiting
  EXPECT_TRUE(queue.HasRoom());
  queue.Post([] {});
  EXPECT_TRUE(queue.HasRoom());
  queue.Post([] {});
  EXPECT_FALSE(queue.HasRoom());
  release.Notify();
}

}  // namespace
}  // namespace mta
