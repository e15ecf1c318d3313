// libFuzzer target: arbitrary client bytes, in arbitrary pieces, into the SMTP server session
// (plus the address and parameter parsers). Built by tests/fuzz/run_fuzzers.sh.
#include <memory>
#include <string>

#include "mta/smtp/address.h"
#include "mta/smtp/command.h"
#include "mta/smtp/session.h"
namespace {
class D : public mta::smtp::SessionDelegate {
 public:
  std::string NewQueueId() override { return "0123456789abcdef0123"; }
  absl::Time Now() override { return absl::UnixEpoch(); }
  bool KnownStream(absl::string_view) override { return true; }
  void Submit(std::unique_ptr<mta::queue::SpoolRecord> r) override {
    pending = true;
    last = std::move(r);
  }
  void VerifyCredentials(std::string user, std::string password) override {
    verifying = true;
    accept = password == "pw";
    auth_user = std::move(user);
  }
  bool pending = false;
  bool verifying = false;
  bool accept = false;
  std::string auth_user;
  std::unique_ptr<mta::queue::SpoolRecord> last;
};
}  // namespace
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mta::smtp::SessionConfig cfg;
  cfg.max_message_bytes = 4096;
  cfg.max_recipients = 4;
  cfg.max_errors = 50;
  cfg.local_domains = {"local.test"};
  cfg.auth_enabled = true;
  cfg.auth_trusted = (size % 3) != 0;  // sometimes 538 (no TLS here)
  D d;
  mta::smtp::Session s(cfg, {"192.0.2.1", (size % 2) == 0}, &d);
  s.Greet();
  // Feed in pieces whose sizes come from the data itself.
  size_t pos = 0;
  while (pos < size && !s.closing()) {
    size_t n = 1 + (data[pos] % 64);
    if (pos + n > size) n = size - pos;
    s.OnInput(absl::string_view(reinterpret_cast<const char*>(data) + pos, n));
    pos += n;
    if (d.pending) {
      d.pending = false;
      s.OnCommitDone(absl::OkStatus(), d.last->envelope.id);
    }
    if (d.verifying) {
      d.verifying = false;
      if (d.accept) {
        s.OnCredentialsVerified(mta::auth::AuthUser{
            .name = d.auth_user, .sender_domains = {"local.test"}, .stream = "s"});
      } else {
        s.OnCredentialsVerified(absl::PermissionDeniedError("no"));
      }
    }
    s.output().clear();
  }
  mta::smtp::PathOptions o{.allow_null = true, .allow_utf8 = true, .allow_postmaster = true};
  auto p = mta::smtp::ParsePath(absl::string_view(reinterpret_cast<const char*>(data), size), o);
  (void)p;
  auto e =
      mta::smtp::ParseEsmtpParams(absl::string_view(reinterpret_cast<const char*>(data), size));
  (void)e;
  return 0;
}
