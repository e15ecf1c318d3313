// Time-ordered queue ids.
#ifndef QUEUE_QUEUE_ID_H_
#define QUEUE_QUEUE_ID_H_

#include <cstdint>
#include <string>

namespace mta::queue {

/**
 * Makes ids that sort by arrival: 12 hex digits of Unix milliseconds, 2 of shard, 6 of a
 * per-shard counter (20 characters, e.g. "018f3a2b4c5d03000a1f"). Inserts into the spool
 * are therefore append-mostly. Shard-local: not thread-safe, one generator per shard.
 */
class QueueIdGenerator {
 public:
  /** @param counter_seed randomizes the counter so a restart within 1 ms cannot collide. */
  QueueIdGenerator(uint32_t shard, uint32_t counter_seed);
  std::string Next(int64_t now_ms);

  static constexpr size_t kLength = 20;
  /** Milliseconds encoded in an id, or -1 if it is not one of ours. */
  static int64_t TimestampMs(const std::string& id);

 private:
  uint32_t shard_;
  uint32_t counter_;
};

}  // namespace mta::queue

#endif  // QUEUE_QUEUE_ID_H_
