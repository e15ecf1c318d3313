// The in-memory queue of accepted messages a shard owns.
#ifndef QUEUE_MESSAGE_QUEUE_H_
#define QUEUE_MESSAGE_QUEUE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>

#include "queue/envelope.h"

namespace mta::queue {

/** Shared by all shards: how many message bodies may stay in RAM. Thread-safe. */
class BodyBudget {
 public:
  explicit BodyBudget(uint64_t max_bodies) : max_(max_bodies) {}
  /** Reserves room for one body; false when the budget is spent. */
  bool TryAcquire();
  void Release();
  uint64_t in_use() const { return in_use_.load(std::memory_order_relaxed); }

 private:
  const uint64_t max_;
  std::atomic<uint64_t> in_use_{0};
};

/** A queued message; `content` is empty when it must be read back from the spool. */
struct QueuedMessage {
  Envelope envelope;
  std::optional<std::string> content;
};

/**
 * Shard-local. Messages in arrival order, each keeping its body in RAM only while the
 * shared BodyBudget allows; the delivery engine reads the others back from the spool.
 */
class MessageQueue {
 public:
  explicit MessageQueue(BodyBudget* budget) : budget_(budget) {}
  ~MessageQueue();
  MessageQueue(const MessageQueue&) = delete;
  MessageQueue& operator=(const MessageQueue&) = delete;

  /** @param content nullopt for recovered messages (body stays on disk). */
  void Add(Envelope envelope, std::optional<std::string> content);
  size_t size() const { return messages_.size(); }
  size_t bodies_in_memory() const { return bodies_; }
  const std::deque<QueuedMessage>& messages() const { return messages_; }

 private:
  BodyBudget* budget_;
  std::deque<QueuedMessage> messages_;
  size_t bodies_ = 0;
};

}  // namespace mta::queue

#endif  // QUEUE_MESSAGE_QUEUE_H_
