#include "mta/base/work_queue.h"

#include <pthread.h>

#include <utility>

namespace mta {

WorkQueue::WorkQueue(std::string name, size_t max_pending)
    : name_(std::move(name)), max_pending_(max_pending), thread_([this] { Run(); }) {}

WorkQueue::~WorkQueue() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

bool WorkQueue::HasRoom() const {
  absl::MutexLock lock(&mu_);
  return tasks_.size() < max_pending_;
}

void WorkQueue::Post(absl::AnyInvocable<void()> task) {
  absl::MutexLock lock(&mu_);
  tasks_.push_back(std::move(task));
}

void WorkQueue::Run() {
  pthread_setname_np(pthread_self(), name_.substr(0, 15).c_str());
  for (;;) {
    absl::AnyInvocable<void()> task;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this] { return stopping_ || !tasks_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (tasks_.empty()) return;  // stopping and drained
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

}  // namespace mta
