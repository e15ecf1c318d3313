// What the telemetry adds per relayed message on a shard: the reception and delivery
// counters and histograms, and (events on) formatting both JSON lines and handing them to
// the event log's writer thread, which writes them to a real file meanwhile. Also the cost
// of one /metrics scrape with many series.
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "metrics/event_log.h"
#include "mta/server/shard_telemetry.h"
#include "mta/server/telemetry.h"

namespace mta::server {
namespace {

std::string TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string dir = absl::StrCat(base != nullptr ? base : "/tmp", "/telemetry-bench-", getpid());
  return dir;
}

queue::Envelope Message(int i) {
  queue::Envelope env;
  env.id = absl::StrCat("01a24335ab92", 10000000 + i);
  env.sender = "newsletter@shop.example";
  env.stream = "default";
  env.listener = "default";
  env.client_ip = "127.0.0.1";
  env.helo = "client.example";
  env.received_ms = 1796423663000;
  env.content_bytes = 1024;
  env.recipients.push_back({.address = absl::StrCat("user", i, "@d", i % 1000, ".example")});
  return env;
}

// One message's telemetry: reception, then its delivery (arg 0: event log off, 1: on).
void BM_MessageTelemetry(benchmark::State& state) {
  std::unique_ptr<metrics::EventLog> log;
  if (state.range(0) == 1) {
    auto opened = metrics::EventLog::Open({.directory = TempDir()});
    if (!opened.ok()) abort();
    log = *std::move(opened);
  }
  Telemetry telemetry(100, log.get());
  ShardTelemetry shard(&telemetry, 0);
  delivery::AttemptResult result{.kind = delivery::AttemptResult::Kind::kDelivered,
                                 .status = "2.0.0",
                                 .diagnostic = "250 2.0.0 Ok: queued as 4XyZ1234",
                                 .remote_mta = "mx.d1.example",
                                 .code = 250,
                                 .remote_ip = "127.0.0.11",
                                 .source = "",
                                 .duration = absl::Microseconds(300)};
  std::string pool;
  std::vector<queue::Envelope> envs;
  for (int i = 0; i < 1000; ++i) envs.push_back(Message(i));
  int i = 0;
  absl::Time now = absl::FromUnixMillis(1796423664000);
  for (auto _ : state) {
    const queue::Envelope& env = envs[i++ % envs.size()];
    shard.MessageReceived(env, "", now);
    std::string domain = env.recipients[0].address.substr(env.recipients[0].address.find('@') + 1);
    shard.OnOutcome({.envelope = env,
                     .recipient = 0,
                     .domain = domain,
                     .outcome = delivery::Outcome::kDelivered,
                     .bounce_class = delivery::BounceClass::kNone,
                     .result = result,
                     .attempt = 1,
                     .pool = pool,
                     .now = now});
  }
  if (log != nullptr) {
    log->Flush();
    state.counters["dropped"] = static_cast<double>(log->dropped());
  }
  state.SetItemsProcessed(state.iterations());
}
// Process CPU time: the event log writer thread's work counts too.
BENCHMARK(BM_MessageTelemetry)->Arg(0)->Arg(1)->MeasureProcessCPUTime();

// One scrape: 100 destinations x (delivered, deferred by 3 classes) over 2 shards.
void BM_Render(benchmark::State& state) {
  Telemetry telemetry(100, nullptr);
  ShardTelemetry a(&telemetry, 0), b(&telemetry, 1);
  delivery::AttemptResult ok{.kind = delivery::AttemptResult::Kind::kDelivered, .code = 250};
  std::string pool;
  absl::Time now = absl::FromUnixMillis(1796423664000);
  for (int i = 0; i < 1000; ++i) {
    queue::Envelope env = Message(i);
    std::string domain = absl::StrCat("d", i % 100, ".example");
    for (auto o : {delivery::Outcome::kDelivered, delivery::Outcome::kDeferred}) {
      for (auto c : {delivery::BounceClass::kMailboxFull, delivery::BounceClass::kPolicy,
                     delivery::BounceClass::kRateLimited}) {
        (i % 2 == 0 ? a : b)
            .OnOutcome({.envelope = env,
                        .recipient = 0,
                        .domain = domain,
                        .outcome = o,
                        .bounce_class = c,
                        .result = ok,
                        .attempt = 1,
                        .pool = pool,
                        .now = now});
      }
    }
  }
  size_t bytes = 0;
  for (auto _ : state) bytes = telemetry.Render(0).size();
  state.counters["bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_Render);

}  // namespace
}  // namespace mta::server

BENCHMARK_MAIN();
