#include "queue/message_queue.h"

namespace mta::queue {

bool BodyBudget::TryAcquire() {
  uint64_t cur = in_use_.load(std::memory_order_relaxed);
  while (cur < max_) {
    if (in_use_.compare_exchange_weak(cur, cur + 1, std::memory_order_relaxed)) return true;
  }
  return false;
}

void BodyBudget::Release() { in_use_.fetch_sub(1, std::memory_order_relaxed); }

MessageQueue::~MessageQueue() {
  for (size_t i = 0; i < bodies_; ++i) budget_->Release();
}

void MessageQueue::Add(Envelope envelope, std::optional<std::string> content) {
  if (content.has_value() && !budget_->TryAcquire()) content.reset();
  if (content.has_value()) ++bodies_;
  messages_.push_back({std::move(envelope), std::move(content)});
}

}  // namespace mta::queue
