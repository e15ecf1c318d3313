// Micro-benchmarks for the outbound SMTP client state machine: one whole pipelined
// transaction per iteration (DATA with dot-stuffing, or BDAT), with scripted server
// replies and no sockets.
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "benchmarks/smtp/bench_message.h"
#include "mta/smtp/client_session.h"

namespace mta::smtp {
namespace {

std::unique_ptr<ClientSession> ReadySession(bool chunking) {
  ClientSessionOptions options;
  options.helo_name = "client.example.com";
  options.tls = TlsPolicy::kNone;
  options.use_chunking = chunking;
  options.bdat_pipelining_max_bytes = 1 << 30;
  auto session = ClientSession::Create(options);
  if (!session.ok()) return nullptr;
  std::unique_ptr<ClientSession> s = *std::move(session);
  s->OnInput("220 mx.example.net ESMTP\r\n");
  s->ConsumeOutput(s->output().size());
  s->OnInput(
      "250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 100000000\r\n250-8BITMIME\r\n"
      "250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 DSN\r\n");
  return s;
}

size_t DrainAll(ClientSession& s) {
  size_t n = 0;
  while (!s.output().empty()) {
    n += s.output().size();
    s.ConsumeOutput(s.output().size());
  }
  return n;
}

// Args: message bytes, recipients.
void BM_ClientDataTransaction(benchmark::State& state) {
  std::unique_ptr<ClientSession> s = ReadySession(/*chunking=*/false);
  if (s == nullptr) return state.SkipWithError("Create failed");
  const std::string content = MakeBenchMessage(state.range(0));
  std::string replies = "250 2.1.0 Ok\r\n";
  OutboundMessage m;
  m.sender = "sender@example.com";
  m.content = &content;
  for (int i = 0; i < state.range(1); ++i) {
    m.recipients.push_back({absl::StrCat("rcpt", i, "@example.net"), 0, ""});
    replies += "250 2.1.5 Ok\r\n";
  }
  replies += "354 End data with <CR><LF>.<CR><LF>\r\n";
  size_t bytes = 0;
  for (auto _ : state) {
    if (!s->StartTransaction(m).ok()) return state.SkipWithError("StartTransaction failed");
    bytes += DrainAll(*s);
    s->OnInput(replies);
    bytes += DrainAll(*s);
    s->OnInput("250 2.0.0 Ok: queued as 0123456789\r\n");
    auto result = s->TakeResult();
    benchmark::DoNotOptimize(result);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(bytes);
}
BENCHMARK(BM_ClientDataTransaction)->Args({1024, 1})->Args({100 * 1024, 1})->Args({1024, 10});

void BM_ClientBdatTransaction(benchmark::State& state) {
  std::unique_ptr<ClientSession> s = ReadySession(/*chunking=*/true);
  if (s == nullptr) return state.SkipWithError("Create failed");
  const std::string content = MakeBenchMessage(state.range(0));
  OutboundMessage m;
  m.sender = "sender@example.com";
  m.content = &content;
  m.recipients.push_back({"rcpt@example.net", 0, ""});
  size_t bytes = 0;
  for (auto _ : state) {
    if (!s->StartTransaction(m).ok()) return state.SkipWithError("StartTransaction failed");
    bytes += DrainAll(*s);
    s->OnInput("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued\r\n");
    auto result = s->TakeResult();
    benchmark::DoNotOptimize(result);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(bytes);
}
BENCHMARK(BM_ClientBdatTransaction)->Arg(1024)->Arg(100 * 1024);

}  // namespace
}  // namespace mta::smtp
