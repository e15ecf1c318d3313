#include "mta/delivery/queue_tally.h"

#include <algorithm>

namespace mta::delivery {

void QueueTally::Change(const Job& job, State state, bool add) {
  const queue::Envelope& env = job.message->envelope;
  const int64_t second = env.received_ms >= 0 ? env.received_ms / 1000 : 0;
  const uint64_t n = job.recipients.size();
  if (add) {
    Row& row = rows_[job.domain][env.stream];
    row.recipients[static_cast<int>(state)] += n;
    ++row.jobs_by_second[second];
    return;
  }
  auto domain = rows_.find(job.domain);
  if (domain == rows_.end()) return;
  auto stream = domain->second.find(env.stream);
  if (stream == domain->second.end()) return;
  Row& row = stream->second;
  uint64_t& count = row.recipients[static_cast<int>(state)];
  count -= std::min(count, n);
  auto jobs = row.jobs_by_second.find(second);
  if (jobs != row.jobs_by_second.end() && --jobs->second == 0) row.jobs_by_second.erase(jobs);
  if (row.jobs_by_second.empty()) {
    domain->second.erase(stream);
    if (domain->second.empty()) rows_.erase(domain);
  }
}

std::vector<QueueRow> QueueTally::Rows() const {
  std::vector<QueueRow> out;
  for (const auto& [domain, streams] : rows_) {
    for (const auto& [stream, row] : streams) {
      out.push_back({.domain = domain,
                     .stream = stream,
                     .ready = row.recipients[0],
                     .scheduled = row.recipients[1],
                     .suspended = row.recipients[2],
                     .oldest_received_ms = row.jobs_by_second.begin()->first * 1000});
    }
  }
  return out;
}

}  // namespace mta::delivery
