// Micro-benchmarks for the SMTP intake hot path: command parsing, address parsing, the
// DATA state machine, and a whole pipelined session (without sockets or the spool).
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "benchmarks/smtp/bench_message.h"
#include "mta/smtp/address.h"
#include "mta/smtp/command.h"
#include "mta/smtp/data_framer.h"
#include "mta/smtp/session.h"

namespace mta::smtp {
namespace {

std::string DotStuffed(const std::string& m) {
  std::string out;
  size_t pos = 0;
  while (pos < m.size()) {
    size_t eol = m.find("\r\n", pos);
    if (m[pos] == '.') out += '.';
    out.append(m, pos, eol + 2 - pos);
    pos = eol + 2;
  }
  return out + ".\r\n";
}

void BM_ParseCommand(benchmark::State& state) {
  const std::string line =
      "MAIL FROM:<someone.long.name@subdomain.example.com> SIZE=12345 BODY=8BITMIME";
  for (auto _ : state) {
    Command cmd = ParseCommand(line);
    auto path = ParsePath(cmd.args.substr(5), {.allow_null = true});
    auto params = ParseEsmtpParams(cmd.args.substr(5 + path->consumed));
    benchmark::DoNotOptimize(params);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ParseCommand);

void BM_DataFramer(benchmark::State& state) {
  std::string wire = DotStuffed(MakeBenchMessage(state.range(0)));
  std::string out;
  out.reserve(wire.size());
  for (auto _ : state) {
    out.clear();
    DataFramer f(DataFramer::Mode::kData, 1 << 30, &out);
    benchmark::DoNotOptimize(f.Feed(wire));
  }
  state.SetBytesProcessed(state.iterations() * wire.size());
}
BENCHMARK(BM_DataFramer)->Arg(1024)->Arg(10 * 1024)->Arg(100 * 1024);

class NullDelegate : public SessionDelegate {
 public:
  std::string NewQueueId() override { return "0123456789abcdef0123"; }
  absl::Time Now() override { return absl::UnixEpoch(); }
  void Submit(std::unique_ptr<queue::SpoolRecord> record) override { last_ = std::move(record); }
  bool KnownStream(absl::string_view) override { return true; }
  void VerifyCredentials(std::string, std::string) override {}
  std::unique_ptr<queue::SpoolRecord> last_;
};

// One pipelined transaction per iteration, as smtp-source sends it.
void BM_SessionTransaction(benchmark::State& state) {
  SessionConfig config;
  config.hostname = "mx.example.com";
  NullDelegate delegate;
  Session session(config, {.ip = "127.0.0.1", .relay_allowed = true}, &delegate);
  session.Greet();
  session.OnInput("EHLO client.example.com\r\n");
  std::string envelope = "MAIL FROM:<sender@example.com>\r\n";
  for (int i = 0; i < state.range(1); ++i) {
    absl::StrAppend(&envelope, "RCPT TO:<rcpt", i, "@example.net>\r\n");
  }
  envelope += "DATA\r\n";
  std::string body = DotStuffed(MakeBenchMessage(state.range(0)));
  for (auto _ : state) {
    session.output().clear();
    session.OnInput(envelope);
    session.OnInput(body);
    session.OnCommitDone(absl::OkStatus(), "0123456789abcdef0123");
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * (envelope.size() + body.size()));
}
BENCHMARK(BM_SessionTransaction)->Args({1024, 1})->Args({10 * 1024, 1})->Args({1024, 5});

}  // namespace
}  // namespace mta::smtp
