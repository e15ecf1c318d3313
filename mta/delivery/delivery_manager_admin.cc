// DeliveryManager: the administrative views and actions behind the admin API.
#include <utility>

#include "mta/delivery/delivery_manager.h"

namespace mta::delivery {

bool DeliveryManager::JobFilter::Matches(const Job& job) const {
  return (id.empty() || job.message->envelope.id == id) &&
         (domain.empty() || job.domain == domain) &&
         (stream.empty() || job.message->envelope.stream == stream);
}

void DeliveryManager::ForEachJob(
    const JobFilter& filter,
    const std::function<void(const Job&, absl::string_view state, absl::Time due)>& fn) const {
  absl::Time now = loop_->Now();
  for (const auto& [key, site] : destinations_) {
    for (const auto& q : site->queues) {
      for (const Job& job : q.jobs) {
        if (filter.Matches(job)) fn(job, "ready", now);
      }
    }
  }
  for (const auto& [serial, entry] : scheduled_jobs_) {
    if (filter.Matches(entry.job)) fn(entry.job, "scheduled", entry.due);
  }
  for (const Job& job : parked_) {
    if (filter.Matches(job)) fn(job, "suspended", absl::InfiniteFuture());
  }
}

size_t DeliveryManager::RetryNow(const JobFilter& filter) {
  auto due = std::make_shared<std::vector<Job>>();
  for (auto it = scheduled_jobs_.begin(); it != scheduled_jobs_.end();) {
    if (!filter.Matches(it->second.job)) {
      ++it;
      continue;
    }
    loop_->CancelTimer(it->second.timer);
    tally_.Remove(it->second.job, QueueTally::State::kScheduled);
    due->push_back(std::move(it->second.job));
    scheduled_jobs_.erase(it++);
  }
  size_t recipients = 0;
  for (const Job& job : *due) recipients += job.recipients.size();
  Reroute(std::move(due), 0, loop_->Now());  // in slices: a whole backlog may be due
  return recipients;
}

size_t DeliveryManager::Cancel(const JobFilter& filter, const std::string& reason) {
  std::vector<Job> cancelled;
  for (auto& [key, site] : destinations_) {
    for (auto& q : site->queues) {
      for (auto it = q.jobs.begin(); it != q.jobs.end();) {
        if (!filter.Matches(*it)) {
          ++it;
          continue;
        }
        tally_.Remove(*it, QueueTally::State::kReady);
        cancelled.push_back(std::move(*it));
        it = q.jobs.erase(it);
        --site->ready;
      }
    }
  }
  for (auto it = scheduled_jobs_.begin(); it != scheduled_jobs_.end();) {
    if (!filter.Matches(it->second.job)) {
      ++it;
      continue;
    }
    loop_->CancelTimer(it->second.timer);
    tally_.Remove(it->second.job, QueueTally::State::kScheduled);
    cancelled.push_back(std::move(it->second.job));
    scheduled_jobs_.erase(it++);
  }
  std::vector<Job> still_parked;
  for (Job& job : parked_) {
    const bool matches = filter.Matches(job);
    if (matches) tally_.Remove(job, QueueTally::State::kSuspended);
    (matches ? cancelled : still_parked).push_back(std::move(job));
  }
  parked_ = std::move(still_parked);
  size_t recipients = 0;
  for (const Job& job : cancelled) recipients += job.recipients.size();
  SettleSliced(std::make_shared<std::vector<Job>>(std::move(cancelled)), 0,
               {.kind = AttemptResult::Kind::kBounced,
                .status = "5.0.0",
                .diagnostic = absl::StrCat("cancelled by the administrator: ", reason),
                .cancelled = true});
  return recipients;
}

void DeliveryManager::SettleSliced(std::shared_ptr<std::vector<Job>> jobs, size_t from,
                                   AttemptResult result) {
  // A slice per loop turn: cancelling a large backlog must not stall the loop.
  constexpr size_t kSlice = 1024;
  size_t end = std::min(jobs->size(), from + kSlice);
  for (size_t i = from; i < end; ++i) SettleAll(std::move((*jobs)[i]), result);
  if (end < jobs->size()) {
    loop_->Post([this, jobs = std::move(jobs), end, result = std::move(result)]() mutable {
      SettleSliced(std::move(jobs), end, std::move(result));
    });
  }
}

}  // namespace mta::delivery
