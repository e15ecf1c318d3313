#include "queue/queue_id.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"

namespace mta::queue {

QueueIdGenerator::QueueIdGenerator(uint32_t shard, uint32_t counter_seed)
    : shard_(shard & 0xff), counter_(counter_seed & 0xffffff) {}

std::string QueueIdGenerator::Next(int64_t now_ms) {
  counter_ = (counter_ + 1) & 0xffffff;
  return absl::StrFormat("%012x%02x%06x", static_cast<uint64_t>(now_ms) & 0xffffffffffffULL, shard_,
                         counter_);
}

int64_t QueueIdGenerator::TimestampMs(const std::string& id) {
  uint64_t ms;
  if (id.size() != kLength) return -1;
  // Only what Next() produces: lower-case hex digits throughout. SimpleHexAtoi alone would
  // also take a sign, a "0x" prefix and surrounding whitespace.
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return -1;
  }
  if (!absl::SimpleHexAtoi(id.substr(0, 12), &ms)) return -1;
  return static_cast<int64_t>(ms);
}

}  // namespace mta::queue
