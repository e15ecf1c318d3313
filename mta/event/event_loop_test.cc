#include "mta/event/event_loop.h"

#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "gtest/gtest.h"

namespace mta::event {
namespace {

std::unique_ptr<EventLoop> MakeLoop() {
  auto loop = EventLoop::Create(
      EventLoop::Options{.sq_entries = 64, .recv_buffers = 8, .recv_buffer_bytes = 64});
  if (!loop.ok()) return nullptr;
  return *std::move(loop);
}

TEST(EventLoopTest, TimersFireInDeadlineOrderAndCancelWorks) {
  auto loop = MakeLoop();
  if (!loop) GTEST_SKIP() << "io_uring with provided buffers unavailable";
  std::vector<int> order;
  absl::Time now = absl::Now();
  loop->AddTimer(now + absl::Milliseconds(30), [&] {
    order.push_back(3);
    loop->Stop();
  });
  loop->AddTimer(now + absl::Milliseconds(10), [&] { order.push_back(1); });
  auto cancelled = loop->AddTimer(now + absl::Milliseconds(20), [&] { order.push_back(2); });
  loop->CancelTimer(cancelled);
  loop->Run();
  EXPECT_EQ(order, (std::vector<int>{1, 3}));
}

TEST(EventLoopTest, PostFromOtherThreadWakesLoop) {
  auto loop = MakeLoop();
  if (!loop) GTEST_SKIP();
  int ran = 0;
  std::thread t([&] {
    for (int i = 0; i < 1000; ++i) loop->Post([&] { ++ran; });
    loop->Post([&] { loop->Stop(); });
  });
  loop->Run();
  t.join();
  EXPECT_EQ(ran, 1000);
}

class RecvCompletion : public Completion {
 public:
  explicit RecvCompletion(EventLoop* loop) : loop_(loop) {}
  void OnComplete(int res, uint32_t flags) override {
    ASSERT_GT(res, 0);
    ASSERT_TRUE(flags & IORING_CQE_F_BUFFER);
    data_ = std::string(loop_->ReceivedData(flags, res));
    loop_->RecycleBuffer(flags);
    loop_->Stop();
  }
  std::string data_;

 private:
  EventLoop* loop_;
};

TEST(EventLoopTest, ReceiveUsesProvidedBuffers) {
  auto loop = MakeLoop();
  if (!loop) GTEST_SKIP();
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  RecvCompletion recv(loop.get());
  loop->PrepareReceive(&recv, fds[0]);
  ASSERT_EQ(write(fds[1], "hello", 5), 5);
  loop->Run();
  EXPECT_EQ(recv.data_, "hello");
  close(fds[0]);
  close(fds[1]);
}

}  // namespace
}  // namespace mta::event
