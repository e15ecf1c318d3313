// The server session tests' fixture: a FakeDelegate that records submissions and answers
// commits, and SessionTest, which drives a Session and collects its replies.
#ifndef MTA_SMTP_SESSION_TEST_UTIL_H_
#define MTA_SMTP_SESSION_TEST_UTIL_H_

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "mta/smtp/session.h"
#include "queue/envelope.h"
#include "queue/spool.h"

namespace mta::smtp {

using queue::SpoolRecord;

inline constexpr int64_t kNowSeconds = 1700000000;  // Tue, 14 Nov 2023 22:13:20 UTC
inline constexpr char kDate[] = "Tue, 14 Nov 2023 22:13:20 +0000";
inline constexpr char kHost[] = "mx.example.net";

inline constexpr char kOk[] = "250 2.0.0 Ok";
inline constexpr char kMailOk[] = "250 2.1.0 Ok";
inline constexpr char kRcptOk[] = "250 2.1.5 Ok";
inline constexpr char kDataGo[] = "354 End data with <CR><LF>.<CR><LF>";
inline constexpr char kBareLineRejected[] =
    "550 5.6.0 Message rejected: bare <CR> or <LF> in message text (RFC 5321 2.3.8)";
inline constexpr char kTooBig[] = "552 5.3.4 Message size exceeds fixed limit";
inline constexpr char kShutdown[] = "421 4.3.2 mx.example.net Service shutting down";

class FakeDelegate : public SessionDelegate {
 public:
  std::string NewQueueId() override { return absl::StrFormat("Q%04d", ++ids_issued); }
  absl::Time Now() override { return now; }
  void Submit(std::unique_ptr<SpoolRecord> record) override {
    submitted.push_back(std::move(record));
  }
  bool KnownStream(absl::string_view stream) override {
    return known_streams.empty() || known_streams.contains(stream);
  }
  // AUTH is tested in session_auth_test.cc; requests are only recorded here.
  void VerifyCredentials(std::string user, std::string password) override {
    verifications.emplace_back(std::move(user), std::move(password));
  }

  absl::Time now = absl::FromUnixSeconds(kNowSeconds);
  int ids_issued = 0;
  std::vector<std::unique_ptr<SpoolRecord>> submitted;
  absl::flat_hash_set<std::string> known_streams;                  // empty = any
  std::vector<std::pair<std::string, std::string>> verifications;  // user, password
};

// Splits replies into lines, checking that every reply line ends with CRLF.
inline std::vector<std::string> Lines(absl::string_view out) {
  std::vector<std::string> lines;
  if (out.empty()) return lines;
  EXPECT_TRUE(absl::EndsWith(out, "\r\n")) << absl::CHexEscape(out);
  out.remove_suffix(std::min<size_t>(2, out.size()));
  for (absl::string_view l : absl::StrSplit(out, "\r\n")) {
    EXPECT_EQ(l.find_first_of("\r\n"), absl::string_view::npos) << absl::CHexEscape(l);
    lines.emplace_back(l);
  }
  return lines;
}

using Replies = std::vector<std::string>;

class SessionTest : public ::testing::Test {
 protected:
  SessionTest() {
    config_.hostname = kHost;
    config_.listener_name = "mx";
    config_.stream = "inbound";
    config_.max_message_bytes = 10000;
    config_.max_recipients = 5;
    config_.max_errors = 100;  // tests that count errors lower this
    config_.local_domains = {"local.example", "other-local.example"};
  }

  // Creates the session (after the test adjusted config_) and consumes the greeting.
  void Start(bool relay_allowed = false, std::string ip = "192.0.2.1",
             std::string network_stream = "") {
    session_ = std::make_unique<Session>(
        config_, ClientInfo{ip, relay_allowed, std::move(network_stream)}, &delegate_);
    session_->Greet();
    EXPECT_EQ(Take(), Replies({"220 mx.example.net ESMTP mtad"}));
  }

  Replies Take() {
    Replies r = Lines(session_->output());
    session_->output().clear();
    return r;
  }

  Replies Send(absl::string_view bytes) {
    session_->OnInput(bytes);
    return Take();
  }

  void Ehlo() {
    Replies r = Send("EHLO client.example\r\n");
    ASSERT_FALSE(r.empty());
    EXPECT_EQ(r.back(), "250 HELP");
  }

  // EHLO + MAIL + RCPT... in one pipelined write; expects all of them to succeed.
  void BeginTransaction(absl::string_view mail_args, const std::vector<std::string>& rcpts) {
    Ehlo();
    std::string in = absl::StrCat("MAIL FROM:", mail_args, "\r\n");
    Replies expected = {kMailOk};
    for (const std::string& r : rcpts) {
      absl::StrAppend(&in, "RCPT TO:", r, "\r\n");
      expected.push_back(kRcptOk);
    }
    EXPECT_EQ(Send(in), expected);
  }

  // Finishes a DATA transaction with `body`, commits it successfully and returns the record.
  const SpoolRecord* SendMessage(absl::string_view body) {
    EXPECT_EQ(Send("DATA\r\n"), Replies({kDataGo}));
    size_t before = delegate_.submitted.size();
    EXPECT_EQ(Send(absl::StrCat(body, ".\r\n")), Replies());
    if (delegate_.submitted.size() != before + 1) {
      ADD_FAILURE() << "message was not submitted";
      return nullptr;
    }
    EXPECT_EQ(session_->phase(), Session::Phase::kWaitingCommit);
    const SpoolRecord* rec = delegate_.submitted.back().get();
    session_->OnCommitDone(absl::OkStatus(), rec->envelope.id);
    EXPECT_EQ(Take(), Replies({absl::StrCat("250 2.0.0 Ok: queued as ", rec->envelope.id)}));
    return rec;
  }

  std::string ReceivedHeader(absl::string_view id, absl::string_view proto = "ESMTP",
                             absl::string_view for_rcpt = "",
                             absl::string_view helo = "client.example",
                             absl::string_view ip_literal = "[192.0.2.1]") {
    std::string h = absl::StrCat("Received: from ", helo, " (", ip_literal, ")\r\n\tby ", kHost,
                                 " (mtad) with ", proto, " id ", id);
    if (!for_rcpt.empty()) absl::StrAppend(&h, "\r\n\tfor <", for_rcpt, ">");
    absl::StrAppend(&h, "; ", kDate, "\r\n");
    return h;
  }

  std::string AddedHeaders(absl::string_view id) {
    return absl::StrCat("Message-ID: <", id, "@", kHost, ">\r\nDate: ", kDate, "\r\n");
  }

  SessionConfig config_;
  FakeDelegate delegate_;
  std::unique_ptr<Session> session_;
};

}  // namespace mta::smtp

#endif  // MTA_SMTP_SESSION_TEST_UTIL_H_
