// libFuzzer target: arbitrary server bytes into the SMTP client session, with transactions
// started whenever it is ready and TLS hand-offs decided by the input.
// Built by tests/fuzz/run_fuzzers.sh.
#include <memory>
#include <string>

#include "mta/smtp/client_session.h"
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mta::smtp::ClientSessionOptions o;
  o.helo_name = "mx.test";
  o.use_chunking = size % 2;
  auto s = mta::smtp::ClientSession::Create(o);
  if (!s.ok()) return 0;
  auto& c = **s;
  static const std::string content = "Subject: x\r\n\r\n.dot\r\nbody\r\n";
  size_t pos = 0;
  int txns = 0;
  while (pos < size && c.phase() != mta::smtp::ClientSession::Phase::kClosed) {
    if (c.phase() == mta::smtp::ClientSession::Phase::kReady && !c.has_result() && txns < 3) {
      mta::smtp::OutboundMessage m;
      m.sender = "a@b.test";
      m.recipients = {{.address = "x@y.test"}, {.address = "z@y.test", .notify = 2}};
      m.content = &content;
      (void)c.StartTransaction(std::move(m));
      ++txns;
    }
    if (c.phase() == mta::smtp::ClientSession::Phase::kStartTls) {
      if (data[pos] & 1)
        (void)c.OnTlsEstablished();
      else
        (void)c.OnTlsFailed("x");
    }
    (void)c.TakeResult();
    c.ConsumeOutput(c.output().size());
    size_t n = 1 + (data[pos] % 48);
    if (pos + n > size) n = size - pos;
    c.OnInput(absl::string_view(reinterpret_cast<const char*>(data) + pos, n));
    pos += n;
  }
  c.OnConnectionLost("eof");
  (void)c.TakeResult();
  return 0;
}
