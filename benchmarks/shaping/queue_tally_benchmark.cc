// What the queue tally adds per relayed message: one Add when its job joins a site's ready
// queue and one Remove when a connection takes it, against the ~75 µs of CPU mtad spends
// per relayed message.
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "mta/delivery/queue_tally.h"

namespace mta::delivery {
namespace {

// `domains` destinations, jobs of 100 messages per second of arrival over a minute.
std::vector<Job> MakeJobs(int domains, int count) {
  std::vector<Job> jobs;
  for (int i = 0; i < count; ++i) {
    auto message = std::make_shared<DeliveryMessage>();
    message->envelope.stream = i % 10 == 0 ? "transactional" : "marketing";
    message->envelope.received_ms = 1'800'000'000'000 + (i / 100) % 60 * 1000;
    Job job;
    job.message = std::move(message);
    job.domain = absl::StrCat("domain-", i % domains, ".example.com");
    job.recipients = {0};
    jobs.push_back(std::move(job));
  }
  return jobs;
}

// A steady queue of 100,000 jobs: each iteration one job leaves and one joins.
void BM_TallyAddRemove(benchmark::State& state) {
  const int kQueued = 100'000;
  std::vector<Job> jobs = MakeJobs(static_cast<int>(state.range(0)), kQueued);
  QueueTally tally;
  for (const Job& job : jobs) tally.Add(job, QueueTally::State::kReady);
  size_t i = 0;
  for (auto _ : state) {
    const Job& job = jobs[i];
    tally.Remove(job, QueueTally::State::kReady);
    tally.Add(job, QueueTally::State::kReady);
    i = i + 1 == jobs.size() ? 0 : i + 1;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_TallyAddRemove)->Arg(1)->Arg(1000);

// The gauges' read: one row per domain and stream.
void BM_TallyRows(benchmark::State& state) {
  std::vector<Job> jobs = MakeJobs(static_cast<int>(state.range(0)), 100'000);
  QueueTally tally;
  for (const Job& job : jobs) tally.Add(job, QueueTally::State::kReady);
  for (auto _ : state) benchmark::DoNotOptimize(tally.Rows());
}
BENCHMARK(BM_TallyRows)->Arg(1)->Arg(1000);

}  // namespace
}  // namespace mta::delivery

BENCHMARK_MAIN();
