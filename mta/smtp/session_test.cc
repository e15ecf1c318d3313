#include "mta/smtp/session.h"

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
#include "queue/envelope.h"
#include "queue/spool.h"

namespace mta::smtp {
namespace {

using queue::SpoolRecord;

constexpr int64_t kNowSeconds = 1700000000;  // Tue, 14 Nov 2023 22:13:20 UTC
constexpr char kDate[] = "Tue, 14 Nov 2023 22:13:20 +0000";
constexpr char kHost[] = "mx.example.net";

constexpr char kOk[] = "250 2.0.0 Ok";
constexpr char kMailOk[] = "250 2.1.0 Ok";
constexpr char kRcptOk[] = "250 2.1.5 Ok";
constexpr char kDataGo[] = "354 End data with <CR><LF>.<CR><LF>";
constexpr char kBareLineRejected[] =
    "550 5.6.0 Message rejected: bare <CR> or <LF> in message text (RFC 5321 2.3.8)";
constexpr char kTooBig[] = "552 5.3.4 Message size exceeds fixed limit";
constexpr char kShutdown[] = "421 4.3.2 mx.example.net Service shutting down";

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
std::vector<std::string> Lines(absl::string_view out) {
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

// ---------------------------------------------------------------------------------------
// Greeting, EHLO/HELO, simple commands.

TEST_F(SessionTest, GreetingAndEhloKeywords) {
  Start();
  EXPECT_EQ(Send("EHLO client.example\r\n"),
            Replies({"250-mx.example.net Hello client.example [192.0.2.1]", "250-PIPELINING",
                     "250-SIZE 10000", "250-8BITMIME", "250-SMTPUTF8", "250-ENHANCEDSTATUSCODES",
                     "250-CHUNKING", "250-DSN", "250 HELP"}));
  EXPECT_EQ(session_->phase(), Session::Phase::kCommand);
  EXPECT_FALSE(session_->closing());
}

TEST_F(SessionTest, EhloIsCaseInsensitiveAndSanitizesName) {
  Start();
  Replies r = Send("ehlo we(ird)\\name\r\n");
  ASSERT_EQ(r.size(), 9u);
  EXPECT_EQ(r[0], "250-mx.example.net Hello we?ird??name [192.0.2.1]");
}

TEST_F(SessionTest, Helo) {
  Start();
  EXPECT_EQ(Send("HELO client.example\r\n"), Replies({"250 mx.example.net"}));
  // No ESMTP parameters after HELO.
  EXPECT_EQ(Send("MAIL FROM:<a@remote.example> BODY=8BITMIME\r\n"),
            Replies({"555 5.5.4 Error: parameters require EHLO"}));
  EXPECT_EQ(Send("MAIL FROM:<a@remote.example>\r\n"), Replies({kMailOk}));
  EXPECT_EQ(Send("RCPT TO:<u@local.example> NOTIFY=NEVER\r\n"),
            Replies({"555 5.5.4 Error: parameters require EHLO"}));
  EXPECT_EQ(Send("RCPT TO:<u@local.example>\r\n"), Replies({kRcptOk}));
  const SpoolRecord* rec = SendMessage("Subject: x\r\n\r\nhi\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_TRUE(absl::StartsWith(rec->content, ReceivedHeader("Q0001", "SMTP", "u@local.example")))
      << rec->content;
  EXPECT_EQ(rec->envelope.helo, "client.example");
}

TEST_F(SessionTest, EhloSyntaxErrors) {
  Start();
  EXPECT_EQ(Send("EHLO\r\n"), Replies({"501 5.5.4 Syntax: EHLO hostname"}));
  EXPECT_EQ(Send("HELO\r\n"), Replies({"501 5.5.4 Syntax: HELO hostname"}));
  EXPECT_EQ(Send("EHLO " + std::string(256, 'h') + "\r\n"),
            Replies({"501 5.5.4 Error: hostname too long"}));
  // A failed EHLO does not count as a greeting.
  EXPECT_EQ(Send("MAIL FROM:<a@remote.example>\r\n"),
            Replies({"503 5.5.1 Error: send HELO/EHLO first"}));
}

TEST_F(SessionTest, SimpleCommands) {
  Start();
  EXPECT_EQ(Send("NOOP\r\n"), Replies({kOk}));
  EXPECT_EQ(Send("noop ignored args\r\n"), Replies({kOk}));
  EXPECT_EQ(Send("RSET\r\n"), Replies({kOk}));
  EXPECT_EQ(Send("VRFY postmaster\r\n"),
            Replies({"252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"}));
  EXPECT_EQ(Send("EXPN list\r\n"), Replies({"502 5.5.1 Error: EXPN not implemented"}));
  EXPECT_EQ(
      Send("HELP\r\n"),
      Replies({"214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP"}));
  EXPECT_EQ(Send("STARTTLS\r\n"), Replies({"502 5.5.1 Error: command not implemented"}));
  EXPECT_EQ(Send("AUTH PLAIN\r\n"), Replies({"502 5.5.1 Error: command not implemented"}));
  EXPECT_FALSE(session_->closing());
}

TEST_F(SessionTest, Quit) {
  Start();
  EXPECT_EQ(Send("QUIT\r\nNOOP\r\n"), Replies({"221 2.0.0 Bye"}));
  EXPECT_TRUE(session_->closing());
  EXPECT_EQ(session_->phase(), Session::Phase::kClosed);
  EXPECT_FALSE(session_->WantsInput());
  // Input after close is ignored.
  EXPECT_EQ(Send("NOOP\r\n"), Replies());
}

TEST_F(SessionTest, RejectAndClose) {
  session_ = std::make_unique<Session>(config_, ClientInfo{"192.0.2.1", false}, &delegate_);
  session_->RejectAndClose("421 4.7.0 mx.example.net Too many connections");
  EXPECT_EQ(Take(), Replies({"421 4.7.0 mx.example.net Too many connections"}));
  EXPECT_TRUE(session_->closing());
  EXPECT_EQ(Send("EHLO x\r\n"), Replies());
}

// ---------------------------------------------------------------------------------------
// A full transaction.

TEST_F(SessionTest, PipelinedTransactionProducesBatchedReplies) {
  Start();
  Ehlo();
  EXPECT_EQ(Send("MAIL FROM:<sender@remote.example>\r\n"
                 "RCPT TO:<alice@local.example>\r\n"
                 "RCPT TO:<bob@Local.Example>\r\n"
                 "DATA\r\n"),
            Replies({kMailOk, kRcptOk, kRcptOk, kDataGo}));
  EXPECT_EQ(session_->phase(), Session::Phase::kContent);
  EXPECT_EQ(Send("Subject: test\r\n\r\nHello\r\n..dotted\r\n.\r\n"), Replies());
  ASSERT_EQ(delegate_.submitted.size(), 1u);
  EXPECT_EQ(session_->phase(), Session::Phase::kWaitingCommit);
  EXPECT_FALSE(session_->closing());

  const SpoolRecord& rec = *delegate_.submitted[0];
  const queue::Envelope& env = rec.envelope;
  EXPECT_EQ(env.id, "Q0001");
  EXPECT_EQ(env.sender, "sender@remote.example");
  ASSERT_EQ(env.recipients.size(), 2u);
  EXPECT_EQ(env.recipients[0].address, "alice@local.example");
  EXPECT_EQ(env.recipients[1].address, "bob@local.example");
  EXPECT_EQ(env.recipients[0].notify, 0);
  EXPECT_EQ(env.recipients[0].orcpt, "");
  EXPECT_EQ(env.recipients[0].state, queue::RecipientState::kPending);
  EXPECT_EQ(env.stream, "inbound");
  EXPECT_EQ(env.listener, "mx");
  EXPECT_EQ(env.client_ip, "192.0.2.1");
  EXPECT_EQ(env.helo, "client.example");
  EXPECT_EQ(env.received_ms, kNowSeconds * 1000);
  EXPECT_EQ(env.next_attempt_ms, kNowSeconds * 1000);
  EXPECT_EQ(env.ret, queue::DsnRet::kUnspecified);
  EXPECT_EQ(env.body_type, queue::BodyType::kUnspecified);
  EXPECT_FALSE(env.smtputf8);
  EXPECT_EQ(env.envid, "");
  const std::string expected =
      ReceivedHeader("Q0001") + AddedHeaders("Q0001") + "Subject: test\r\n\r\nHello\r\n.dotted\r\n";
  EXPECT_EQ(rec.content, expected);
  EXPECT_EQ(env.content_bytes, rec.content.size());

  session_->OnCommitDone(absl::OkStatus(), "Q0001");
  EXPECT_EQ(Take(), Replies({"250 2.0.0 Ok: queued as Q0001"}));
  EXPECT_EQ(session_->messages_accepted(), 1u);
  EXPECT_EQ(session_->phase(), Session::Phase::kCommand);
  // The transaction was reset.
  EXPECT_EQ(Send("RCPT TO:<alice@local.example>\r\n"),
            Replies({"503 5.5.1 Error: need MAIL command"}));
}

TEST_F(SessionTest, WholeDialogueInOneWriteWaitsForCommit) {
  Start();
  EXPECT_EQ(Send("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<u@local.example>\r\nDATA\r\n"
                 "Subject: one\r\n\r\nbody\r\n.\r\n"
                 "MAIL FROM:<s@remote.example>\r\nRCPT TO:<v@local.example>\r\nDATA\r\n"
                 "Subject: two\r\n\r\nbody\r\n.\r\nQUIT\r\n")
                .size(),
            9u + 3u);  // EHLO lines + MAIL + RCPT + 354; the rest waits for the spool
  ASSERT_EQ(delegate_.submitted.size(), 1u);
  EXPECT_EQ(delegate_.submitted[0]->envelope.sender, "");
  EXPECT_EQ(session_->phase(), Session::Phase::kWaitingCommit);
  session_->OnCommitDone(absl::OkStatus(), "Q0001");
  EXPECT_EQ(Take(), Replies({"250 2.0.0 Ok: queued as Q0001", kMailOk, kRcptOk, kDataGo}));
  ASSERT_EQ(delegate_.submitted.size(), 2u);
  EXPECT_EQ(delegate_.submitted[1]->envelope.id, "Q0002");
  EXPECT_EQ(delegate_.submitted[1]->envelope.sender, "s@remote.example");
  EXPECT_TRUE(absl::EndsWith(delegate_.submitted[1]->content, "Subject: two\r\n\r\nbody\r\n"));
  session_->OnCommitDone(absl::OkStatus(), "Q0002");
  EXPECT_EQ(Take(), Replies({"250 2.0.0 Ok: queued as Q0002", "221 2.0.0 Bye"}));
  EXPECT_TRUE(session_->closing());
  EXPECT_EQ(session_->messages_accepted(), 2u);
}

TEST_F(SessionTest, ByteAtATimeInputMatchesOneShot) {
  const std::string dialogue =
      "EHLO c\r\nMAIL FROM:<s@remote.example> SIZE=100\r\nRCPT TO:<u@local.example>\r\n"
      "DATA\r\nSubject: one\r\n\r\n..body\r\n.\r\nNOOP\r\n"
      "MAIL FROM:<s@remote.example>\r\nRCPT TO:<v@local.example>\r\n"
      "BDAT 7\r\nchunk\r\nBDAT 0 LAST\r\nBOGUS\r\nQUIT\r\n";
  auto run = [&](size_t step) {
    FakeDelegate delegate;
    Session s(config_, ClientInfo{"192.0.2.1", false}, &delegate);
    s.Greet();
    size_t committed = 0;
    for (size_t pos = 0; pos < dialogue.size(); pos += step) {
      s.OnInput(absl::string_view(dialogue).substr(pos, step));
      while (s.phase() == Session::Phase::kWaitingCommit) {
        s.OnCommitDone(absl::OkStatus(), delegate.submitted[committed++]->envelope.id);
      }
    }
    std::vector<std::string> contents;
    for (const auto& r : delegate.submitted) contents.push_back(r->content);
    return std::make_pair(s.output(), contents);
  };
  auto whole = run(dialogue.size());
  ASSERT_EQ(whole.second.size(), 2u);
  EXPECT_TRUE(absl::EndsWith(whole.second[0], "Subject: one\r\n\r\n.body\r\n"));
  EXPECT_TRUE(absl::EndsWith(whole.second[1], "chunk\r\n"));
  EXPECT_TRUE(absl::EndsWith(whole.first,
                             "250 2.0.0 7 octets received\r\n250 2.0.0 Ok: queued as Q0002\r\n"
                             "500 5.5.2 Error: command not recognized\r\n221 2.0.0 Bye\r\n"))
      << whole.first;
  for (size_t step : {1, 2, 3, 7, 64}) {
    EXPECT_EQ(run(step), whole) << "step " << step;
  }
}

TEST_F(SessionTest, CommitRefusedGivesItsOwnReply) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send("DATA\r\n"), Replies({kDataGo}));
  EXPECT_EQ(Send("From: s@remote.example\r\n\r\nbody\r\n.\r\n"), Replies());
  ASSERT_EQ(delegate_.submitted.size(), 1u);
  session_->OnCommitDone(CommitRefused("451 4.7.0 Message could not be signed, try again later"),
                         "Q0001");
  EXPECT_EQ(Take(), Replies({"451 4.7.0 Message could not be signed, try again later"}));
  EXPECT_EQ(session_->messages_accepted(), 0u);
  EXPECT_FALSE(session_->closing());
}

TEST_F(SessionTest, CommitFailureGives451AndAllowsRetry) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send("DATA\r\n"), Replies({kDataGo}));
  EXPECT_EQ(Send("Subject: x\r\n\r\nbody\r\n.\r\n"), Replies());
  ASSERT_EQ(delegate_.submitted.size(), 1u);
  session_->OnCommitDone(absl::UnavailableError("disk full"), "Q0001");
  EXPECT_EQ(Take(), Replies({"451 4.3.0 Error: queue file write error, try again later"}));
  EXPECT_EQ(session_->messages_accepted(), 0u);
  EXPECT_FALSE(session_->closing());
  // A second OnCommitDone for the same message is ignored.
  session_->OnCommitDone(absl::OkStatus(), "Q0001");
  EXPECT_EQ(Take(), Replies());
  // The client may try again in a fresh transaction.
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<u@local.example>\r\n"),
            Replies({kMailOk, kRcptOk}));
  const SpoolRecord* rec = SendMessage("Subject: x\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.id, "Q0002");
  EXPECT_EQ(session_->messages_accepted(), 1u);
}

TEST_F(SessionTest, StrayCommitDoneIsIgnored) {
  Start();
  session_->OnCommitDone(absl::OkStatus(), "Q9999");
  EXPECT_EQ(Take(), Replies());
  EXPECT_EQ(session_->messages_accepted(), 0u);
}

TEST_F(SessionTest, WantsInputFalseWhenTooMuchBufferedWhileWaiting) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send("DATA\r\nx\r\n.\r\n"), Replies({kDataGo}));
  ASSERT_EQ(session_->phase(), Session::Phase::kWaitingCommit);
  EXPECT_TRUE(session_->WantsInput());
  std::string noops;
  while (noops.size() < 70 * 1024) noops += "NOOP\r\n";
  EXPECT_EQ(Send(noops), Replies());
  EXPECT_FALSE(session_->WantsInput());
  session_->OnCommitDone(absl::OkStatus(), "Q0001");
  Replies r = Take();
  EXPECT_EQ(r.size(), 1 + noops.size() / 6);
  EXPECT_TRUE(session_->WantsInput());
}

// ---------------------------------------------------------------------------------------
// Headers.

TEST_F(SessionTest, ReceivedHeaderForSingleRecipientAndIpv6) {
  Start(false, "2001:db8::25");
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const SpoolRecord* rec = SendMessage("Subject: x\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->content, ReceivedHeader("Q0001", "ESMTP", "u@local.example", "client.example",
                                         "[IPv6:2001:db8::25]") +
                              AddedHeaders("Q0001") + "Subject: x\r\n\r\nbody\r\n");
  EXPECT_EQ(rec->envelope.client_ip, "2001:db8::25");
}

TEST_F(SessionTest, MessageIdAndDateNotAddedWhenPresent) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const std::string body =
      "Subject: x\r\nmessage-id: <abc@client>\r\nDATE: Mon, 1 Jan 2024 00:00:00 "
      "+0000\r\n\r\nbody\r\n";
  const SpoolRecord* rec = SendMessage(body);
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->content, ReceivedHeader("Q0001", "ESMTP", "u@local.example") + body);
}

TEST_F(SessionTest, OnlyMissingHeaderIsAdded) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const std::string body = "Message-ID: <abc@client>\r\nSubject: x\r\n\r\nbody\r\n";
  const SpoolRecord* rec = SendMessage(body);
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->content,
            ReceivedHeader("Q0001", "ESMTP", "u@local.example") + "Date: " + kDate + "\r\n" + body);

  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const std::string body2 = "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject: y\r\n\r\nbody\r\n";
  const SpoolRecord* rec2 = SendMessage(body2);
  ASSERT_NE(rec2, nullptr);
  EXPECT_EQ(rec2->content, ReceivedHeader("Q0002", "ESMTP", "u@local.example") +
                               "Message-ID: <Q0002@mx.example.net>\r\n" + body2);
}

TEST_F(SessionTest, HeadersInBodyOrContinuationsDoNotCount) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const std::string body =
      "Subject: x\r\n X-Folded: Message-ID: <no>\r\n\r\nMessage-ID: <in-body>\r\nDate: never\r\n";
  const SpoolRecord* rec = SendMessage(body);
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->content,
            ReceivedHeader("Q0001", "ESMTP", "u@local.example") + AddedHeaders("Q0001") + body);
}

TEST_F(SessionTest, NoHeadersAddedWhenDisabled) {
  config_.add_missing_headers = false;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const SpoolRecord* rec = SendMessage("Subject: x\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->content,
            ReceivedHeader("Q0001", "ESMTP", "u@local.example") + "Subject: x\r\n\r\nbody\r\n");
}

TEST_F(SessionTest, EmptyMessage) {
  config_.add_missing_headers = false;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const SpoolRecord* rec = SendMessage("");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->content, ReceivedHeader("Q0001", "ESMTP", "u@local.example"));
}

// ---------------------------------------------------------------------------------------
// BDAT.

TEST_F(SessionTest, BdatChunks) {
  config_.add_missing_headers = false;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>", "<v@local.example>"});
  EXPECT_EQ(Send("BDAT 12\r\nSubject: x\r\n"), Replies({"250 2.0.0 12 octets received"}));
  EXPECT_EQ(session_->phase(), Session::Phase::kCommand);
  // RCPT, MAIL and DATA are refused in the middle of a BDAT transfer.
  EXPECT_EQ(Send("RCPT TO:<w@local.example>\r\n"),
            Replies({"503 5.5.1 Error: RCPT during BDAT transfer"}));
  EXPECT_EQ(Send("DATA\r\n"), Replies({"503 5.5.1 Error: DATA during BDAT transfer"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\r\n"),
            Replies({"503 5.5.1 Error: nested MAIL command"}));
  // A chunk split over several reads; dots and "QUIT" inside a chunk are just data.
  EXPECT_EQ(Send("BDAT 16 LAST\r\n\r\n.\r\nQU"), Replies());
  EXPECT_EQ(session_->phase(), Session::Phase::kContent);
  EXPECT_TRUE(delegate_.submitted.empty());
  EXPECT_EQ(Send("IT\r\n..x\r\n"), Replies());
  ASSERT_EQ(delegate_.submitted.size(), 1u);
  const SpoolRecord& rec = *delegate_.submitted[0];
  EXPECT_EQ(rec.content, ReceivedHeader("Q0001") + "Subject: x\r\n\r\n.\r\nQUIT\r\n..x\r\n");
  EXPECT_EQ(rec.envelope.recipients.size(), 2u);
  EXPECT_FALSE(session_->closing());
  session_->OnCommitDone(absl::OkStatus(), "Q0001");
  EXPECT_EQ(Take(), Replies({"250 2.0.0 Ok: queued as Q0001"}));
}

TEST_F(SessionTest, BdatZeroLastAfterChunk) {
  config_.add_missing_headers = false;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send("BDAT 7\r\nhello\r\nBDAT 0 LAST\r\nNOOP\r\n"),
            Replies({"250 2.0.0 7 octets received"}));
  ASSERT_EQ(delegate_.submitted.size(), 1u);
  EXPECT_EQ(delegate_.submitted[0]->content,
            ReceivedHeader("Q0001", "ESMTP", "u@local.example") + "hello\r\n");
  session_->OnCommitDone(absl::OkStatus(), "Q0001");
  EXPECT_EQ(Take(), Replies({"250 2.0.0 Ok: queued as Q0001", kOk}));
}

TEST_F(SessionTest, BdatBareLfRejected) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send("BDAT 6\r\nhello\nBDAT 0 LAST\r\n"),
            Replies({"250 2.0.0 6 octets received", kBareLineRejected}));
  EXPECT_TRUE(delegate_.submitted.empty());
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\r\n"), Replies({kMailOk}));
}

TEST_F(SessionTest, BdatOnlyChunkIsLastZero) {
  config_.add_missing_headers = false;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send("BDAT 0 LAST\r\n"), Replies());
  ASSERT_EQ(delegate_.submitted.size(), 1u);
  EXPECT_EQ(delegate_.submitted[0]->content, ReceivedHeader("Q0001", "ESMTP", "u@local.example"));
}

TEST_F(SessionTest, BdatWithoutMailDiscardsChunk) {
  Start();
  Ehlo();
  // The chunk bytes look like a command but must be swallowed as data.
  EXPECT_EQ(Send("BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n"),
            Replies({"503 5.5.1 Error: need MAIL command", kOk}));
  EXPECT_FALSE(session_->closing());
  EXPECT_TRUE(delegate_.submitted.empty());
  // BDAT 0 LAST without MAIL.
  EXPECT_EQ(Send("BDAT 0 LAST\r\n"), Replies({"503 5.5.1 Error: need MAIL command"}));
  // The session is usable afterwards.
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<u@local.example>\r\n"),
            Replies({kMailOk, kRcptOk}));
}

TEST_F(SessionTest, BdatWithoutValidRecipients) {
  Start();
  Ehlo();
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<u@remote.example>\r\n"
                 "BDAT 4\r\nabcdBDAT 3 LAST\r\nxyzNOOP\r\n"),
            Replies({kMailOk, "554 5.7.1 <u@remote.example>: Relay access denied",
                     "554 5.5.1 Error: no valid recipients", "554 5.5.1 Error: no valid recipients",
                     kOk}));
  EXPECT_TRUE(delegate_.submitted.empty());
  // The failed transaction was reset by the LAST chunk.
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\r\n"), Replies({kMailOk}));
}

// SESSION BUG (session.cc, Session::ConsumeContent, the `txn_.bdat_failed` branch): a
// non-LAST BDAT without MAIL gets "503 need MAIL command" but leaves txn_.bdat set, so the
// MAIL that the client sends next is accepted while its RCPT and DATA are then refused with
// "RCPT/DATA during BDAT transfer" until RSET. Disabled until session.cc is fixed.
TEST_F(SessionTest, MailAfterFailedBdatWithoutMailStartsFreshTransaction) {
  Start();
  Ehlo();
  EXPECT_EQ(Send("BDAT 3\r\nabc"), Replies({"503 5.5.1 Error: need MAIL command"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<u@local.example>\r\nDATA\r\n"),
            Replies({kMailOk, kRcptOk, kDataGo}));
}

TEST_F(SessionTest, RsetAfterFailedBdatAllowsNewTransaction) {
  Start();
  Ehlo();
  EXPECT_EQ(Send("BDAT 3\r\nabc"), Replies({"503 5.5.1 Error: need MAIL command"}));
  // Further pipelined chunks of the failed transfer are discarded too.
  EXPECT_EQ(
      Send("BDAT 4\r\nQUITBDAT 2 LAST\r\nxyRSET\r\n"),
      Replies({"503 5.5.1 Error: need MAIL command", "503 5.5.1 Error: need MAIL command", kOk}));
  EXPECT_FALSE(session_->closing());
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<u@local.example>\r\nDATA\r\n"),
            Replies({kMailOk, kRcptOk, kDataGo}));
}

TEST_F(SessionTest, BdatBadArgumentsCloses) {
  Start();
  Ehlo();
  EXPECT_EQ(Send("BDAT xyz\r\nNOOP\r\n"),
            Replies({"501 5.5.4 Syntax: BDAT chunk-size [LAST]; closing connection"}));
  EXPECT_TRUE(session_->closing());
}

TEST_F(SessionTest, BdatSizeLimit) {
  config_.max_message_bytes = 100;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  std::string chunk(101, 'a');
  Replies r = Send("BDAT 101 LAST\r\n" + chunk + "NOOP\r\n");
  EXPECT_EQ(r, Replies({kTooBig, kOk}));
  EXPECT_TRUE(delegate_.submitted.empty());

  // Exactly the limit is fine.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  std::string exact = std::string(98, 'a') + "\r\n";
  EXPECT_EQ(Send("BDAT 100 LAST\r\n" + exact), Replies());
  ASSERT_EQ(delegate_.submitted.size(), 1u);
  EXPECT_TRUE(absl::EndsWith(delegate_.submitted[0]->content, exact));
}

// ---------------------------------------------------------------------------------------
// Limits.

TEST_F(SessionTest, DeclaredSizeLimit) {
  config_.max_message_bytes = 100;
  Start();
  Ehlo();
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> SIZE=101\r\n"), Replies({kTooBig}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> SIZE=99999999999999999999\r\n"),
            Replies({"501 5.5.4 Error: bad SIZE value"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> SIZE=12x\r\n"),
            Replies({"501 5.5.4 Error: bad SIZE value"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> SIZE\r\n"),
            Replies({"501 5.5.4 Error: bad SIZE value"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> SIZE=100\r\n"), Replies({kMailOk}));
}

TEST_F(SessionTest, ActualSizeLimit) {
  config_.max_message_bytes = 100;
  config_.add_missing_headers = false;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send("DATA\r\n"), Replies({kDataGo}));
  // 101 octets of content: read to the end, then refused as a whole.
  EXPECT_EQ(Send(std::string(99, 'a') + "\r\n"), Replies());
  EXPECT_EQ(session_->phase(), Session::Phase::kContent);
  EXPECT_EQ(Send("b\r\n.\r\nNOOP\r\n"), Replies({kTooBig, kOk}));
  EXPECT_TRUE(delegate_.submitted.empty());
  EXPECT_EQ(Send("RCPT TO:<u@local.example>\r\n"), Replies({"503 5.5.1 Error: need MAIL command"}));

  // Exactly 100 octets is accepted; the Received header does not count.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const SpoolRecord* rec = SendMessage(std::string(98, 'a') + "\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_GT(rec->content.size(), 100u);
}

TEST_F(SessionTest, RecipientLimit) {
  config_.max_recipients = 2;
  Start();
  Ehlo();
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<a@local.example>\r\n"
                 "RCPT TO:<a@local.example>\r\nRCPT TO:<b@local.example>\r\n"
                 "RCPT TO:<c@local.example>\r\nRCPT TO:<b@local.example>\r\n"),
            Replies({kMailOk, kRcptOk, kRcptOk, kRcptOk, "452 4.5.3 Error: too many recipients",
                     kRcptOk}));
  const SpoolRecord* rec = SendMessage("Subject: x\r\n\r\n");
  ASSERT_NE(rec, nullptr);
  ASSERT_EQ(rec->envelope.recipients.size(), 2u);
  EXPECT_EQ(rec->envelope.recipients[0].address, "a@local.example");
  EXPECT_EQ(rec->envelope.recipients[1].address, "b@local.example");
}

TEST_F(SessionTest, TooManyRecipientsIsNotCountedAsError) {
  config_.max_recipients = 1;
  config_.max_errors = 2;
  Start();
  BeginTransaction("<s@remote.example>", {"<a@local.example>"});
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Send(absl::StrCat("RCPT TO:<x", i, "@local.example>\r\n")),
              Replies({"452 4.5.3 Error: too many recipients"}));
  }
  EXPECT_FALSE(session_->closing());
}

// ---------------------------------------------------------------------------------------
// Relay control.

TEST_F(SessionTest, RelayDeniedForNonRelayClients) {
  Start(/*relay_allowed=*/false);
  BeginTransaction("<s@remote.example>", {});
  const std::pair<std::string, std::string> denied[] = {
      {"<u@remote.example>", "u@remote.example"},
      {"<u%other.example@local.example>", "u%other.example@local.example"},
      {"<\"u@other.example\"@local.example>", "\"u@other.example\"@local.example"},
      {"<other.example!u@local.example>", "other.example!u@local.example"},
      {"<@local.example:u@remote.example>", "u@remote.example"},
      {"<@local.example,@other-local.example:u@remote.example>", "u@remote.example"},
      {"<u@[192.0.2.1]>", "u@[192.0.2.1]"},
      {"<u@[IPv6:::1]>", "u@[IPv6:::1]"},
      {"<u@sub.local.example>", "u@sub.local.example"},
      {"<u@local.example.evil>", "u@local.example.evil"},
  };
  for (const auto& [path, shown] : denied) {
    EXPECT_EQ(Send("RCPT TO:" + path + "\r\n"),
              Replies({absl::StrCat("554 5.7.1 <", shown, ">: Relay access denied")}))
        << path;
  }
  EXPECT_EQ(Send("DATA\r\n"), Replies({"554 5.5.1 Error: no valid recipients"}));
  EXPECT_TRUE(delegate_.submitted.empty());
}

TEST_F(SessionTest, LocalDomainsAcceptedFromAnyone) {
  Start(/*relay_allowed=*/false);
  BeginTransaction("<s@remote.example>",
                   {"<a@local.example>", "<B@LOCAL.EXAMPLE>", "<c@other-local.example>",
                    "<Postmaster>", "<@remote.example:d@local.example>"});
  const SpoolRecord* rec = SendMessage("Subject: x\r\n\r\n");
  ASSERT_NE(rec, nullptr);
  std::vector<std::string> addrs;
  for (const auto& r : rec->envelope.recipients) addrs.push_back(r.address);
  EXPECT_EQ(addrs,
            std::vector<std::string>({"a@local.example", "B@local.example", "c@other-local.example",
                                      "postmaster@mx.example.net", "d@local.example"}));
}

TEST_F(SessionTest, PostmasterAnyCase) {
  config_.local_domains.clear();
  Start(/*relay_allowed=*/false);
  BeginTransaction("<>", {"<POSTMASTER>"});
  EXPECT_EQ(Send("RCPT TO:<postmaster>\r\n"), Replies({kRcptOk}));  // duplicate, stored once
  EXPECT_EQ(Send("RCPT TO:<postmaster@remote.example>\r\n"),
            Replies({"554 5.7.1 <postmaster@remote.example>: Relay access denied"}));
  const SpoolRecord* rec = SendMessage("Subject: x\r\n\r\n");
  ASSERT_NE(rec, nullptr);
  ASSERT_EQ(rec->envelope.recipients.size(), 1u);
  EXPECT_EQ(rec->envelope.recipients[0].address, "postmaster@mx.example.net");
}

TEST_F(SessionTest, RelayClientsMayRelay) {
  Start(/*relay_allowed=*/true);
  BeginTransaction("<s@local.example>", {"<u@remote.example>", "<u%x@local.example>",
                                         "<u@[192.0.2.9]>", "<@a.example:v@remote.example>"});
  const SpoolRecord* rec = SendMessage("Subject: x\r\n\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.recipients.size(), 4u);
  EXPECT_EQ(rec->envelope.recipients[3].address, "v@remote.example");
}

// ---------------------------------------------------------------------------------------
// Sequencing and syntax errors.

TEST_F(SessionTest, SequencingErrors) {
  Start();
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\r\n"),
            Replies({"503 5.5.1 Error: send HELO/EHLO first"}));
  Ehlo();
  EXPECT_EQ(Send("RCPT TO:<u@local.example>\r\n"), Replies({"503 5.5.1 Error: need MAIL command"}));
  EXPECT_EQ(Send("DATA\r\n"), Replies({"503 5.5.1 Error: need MAIL command"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\r\n"), Replies({kMailOk}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\r\n"),
            Replies({"503 5.5.1 Error: nested MAIL command"}));
  EXPECT_EQ(Send("DATA\r\n"), Replies({"554 5.5.1 Error: no valid recipients"}));
  EXPECT_EQ(Send("DATA x\r\n"), Replies({"501 5.5.4 Syntax: DATA"}));
  EXPECT_EQ(Send("RSET\r\n"), Replies({kOk}));
  EXPECT_EQ(Send("RCPT TO:<u@local.example>\r\n"), Replies({"503 5.5.1 Error: need MAIL command"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\r\n"), Replies({kMailOk}));
  // EHLO also resets the transaction.
  Ehlo();
  EXPECT_EQ(Send("RCPT TO:<u@local.example>\r\n"), Replies({"503 5.5.1 Error: need MAIL command"}));
  EXPECT_TRUE(delegate_.submitted.empty());
}

TEST_F(SessionTest, MailAndRcptSyntaxErrors) {
  Start();
  Ehlo();
  EXPECT_EQ(Send("MAIL s@remote.example\r\n"), Replies({"501 5.5.4 Syntax: MAIL FROM:<address>"}));
  EXPECT_EQ(Send("MAIL FROM:<s@@remote.example>\r\n"),
            Replies({"501 5.1.7 Bad sender address syntax: bad domain"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>junk\r\n"),
            Replies({"501 5.5.4 Syntax: MAIL FROM:<address>"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> FOO=1\r\n"),
            Replies({"555 5.5.4 Error: unsupported parameter FOO"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> BODY=BINARYMIME\r\n"),
            Replies({"501 5.5.4 Error: unsupported BODY type"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> SIZE=1 SIZE=2\r\n"),
            Replies({"501 5.5.4 Error: duplicate SIZE parameter"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> =x\r\n"), Replies({"501 5.5.4 bad parameter '=x'"}));
  // "FROM:" is case-insensitive and a space before the path is tolerated.
  EXPECT_EQ(Send("mail from: <s@remote.example> body=8bitmime\r\n"), Replies({kMailOk}));
  EXPECT_EQ(Send("RCPT <u@local.example>\r\n"), Replies({"501 5.5.4 Syntax: RCPT TO:<address>"}));
  EXPECT_EQ(Send("RCPT TO:<>\r\n"),
            Replies({"501 5.1.3 Bad recipient address syntax: null address not allowed here"}));
  EXPECT_EQ(Send("RCPT TO:<u@local.example>x\r\n"),
            Replies({"501 5.5.4 Syntax: RCPT TO:<address>"}));
  EXPECT_EQ(Send("RCPT TO:<u@local.example> FOO\r\n"),
            Replies({"555 5.5.4 Error: unsupported parameter FOO"}));
  EXPECT_EQ(Send("rcpt to:<u@local.example>\r\n"), Replies({kRcptOk}));
  const SpoolRecord* rec = SendMessage("x\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.body_type, queue::BodyType::k8BitMime);
}

TEST_F(SessionTest, UnknownCommandsCloseAfterMaxErrors) {
  config_.max_errors = 3;
  Start();
  EXPECT_EQ(Send("FOO\r\n"), Replies({"500 5.5.2 Error: command not recognized"}));
  EXPECT_EQ(Send("NOOP\r\n"), Replies({kOk}));
  EXPECT_EQ(
      Send("BAR\r\nBAZ\r\nNOOP\r\n"),
      Replies({"500 5.5.2 Error: command not recognized", "500 5.5.2 Error: command not recognized",
               "421 4.7.0 mx.example.net Error: too many errors"}));
  EXPECT_TRUE(session_->closing());
  EXPECT_EQ(Send("NOOP\r\n"), Replies());
}

TEST_F(SessionTest, CommandLineLengthLimit) {
  Start();
  // 512 octets including CRLF is the maximum.
  std::string ok = "NOOP " + std::string(505, 'x') + "\r\n";
  ASSERT_EQ(ok.size(), 512u);
  EXPECT_EQ(Send(ok), Replies({kOk}));
  std::string too_long = "NOOP " + std::string(506, 'x') + "\r\n";
  EXPECT_EQ(Send(too_long + "NOOP\r\n"), Replies({"500 5.5.2 Error: command line too long", kOk}));
  // A long line arriving in pieces is discarded as a whole, including a command-looking tail.
  EXPECT_EQ(Send(std::string(600, 'y')), Replies());
  EXPECT_EQ(Send(std::string(600, 'y')), Replies());
  EXPECT_EQ(Send("QUIT\r\nNOOP\r\n"), Replies({"500 5.5.2 Error: command line too long", kOk}));
  EXPECT_FALSE(session_->closing());
  // The limit is 512 even when the CR and LF arrive separately.
  EXPECT_EQ(Send("NOOP " + std::string(506, 'x') + "\r"), Replies());
  EXPECT_EQ(Send("\n"), Replies({"500 5.5.2 Error: command line too long"}));
}

// SESSION BUG (session.cc, Session::ProcessCommandLine with Session::kMaxCommandLine): the
// EHLO reply advertises DSN and SIZE, and RFC 3461 section 4 raises the RCPT command-line
// limit by 500 octets for NOTIFY/ORCPT (and MAIL by 112 for RET/ENVID; RFC 1870 adds 26 for
// SIZE), but every command line is capped at a flat 512 octets, so a legal RCPT with a long
// ORCPT is refused with "500 5.5.2 Error: command line too long". Disabled until fixed.
TEST_F(SessionTest, DsnParametersExtendCommandLineLimit) {
  const std::string local(60, 'r');
  const std::string domain = std::string(60, 'd') + ".local.example";
  config_.local_domains.insert(domain);
  Start();
  BeginTransaction("<s@remote.example>", {});
  const std::string addr = local + "@" + domain;
  std::string orcpt = "rfc822;";
  for (int i = 0; i < 6; ++i) orcpt += local + "+2B";  // long but legal xtext
  orcpt += "@" + domain;
  const std::string line =
      "RCPT TO:<" + addr + "> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=" + orcpt + "\r\n";
  ASSERT_GT(line.size(), 512u);
  ASSERT_LT(line.size(), 512u + 500u);
  EXPECT_EQ(Send(line), Replies({kRcptOk}));
}

TEST_F(SessionTest, BareLfCrAndNulInCommands) {
  Start();
  EXPECT_EQ(Send("NOOP\n"),
            Replies({"500 5.5.2 Error: bare <LF> received; lines must end with <CR><LF>"}));
  EXPECT_EQ(Send("\n"),
            Replies({"500 5.5.2 Error: bare <LF> received; lines must end with <CR><LF>"}));
  EXPECT_EQ(Send("NO\rOP\r\n"), Replies({"500 5.5.2 Error: bare <CR> received"}));
  EXPECT_EQ(Send(std::string("NOOP\0x\r\n", 8)),
            Replies({"500 5.5.2 Error: NUL character in command"}));
  Ehlo();
  // A bare-LF MAIL must not start a transaction.
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\nRCPT TO:<u@local.example>\r\n"),
            Replies({"500 5.5.2 Error: bare <LF> received; lines must end with <CR><LF>",
                     "503 5.5.1 Error: need MAIL command"}));
}

// ---------------------------------------------------------------------------------------
// Message text checks and SMTP smuggling.

TEST_F(SessionTest, SmugglingInDataIsRejectedAsOneMessage) {
  const char* kSmuggle[] = {"\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\n", "\r\n.\r"};
  for (const char* seq : kSmuggle) {
    SCOPED_TRACE(absl::CHexEscape(seq));
    delegate_.submitted.clear();
    Start(/*relay_allowed=*/true);
    BeginTransaction("<s@remote.example>", {"<u@local.example>"});
    EXPECT_EQ(Send("DATA\r\n"), Replies({kDataGo}));
    // Everything up to the real CRLF.CRLF is one (rejected) message; the smuggled
    // commands must never run.
    EXPECT_EQ(Send(absl::StrCat("Subject: legit\r\n\r\nbody", seq,
                                "MAIL FROM:<evil@remote.example>\r\n"
                                "RCPT TO:<victim@remote.example>\r\n"
                                "DATA\r\n"
                                "Subject: smuggled\r\n\r\nevil\r\n")),
              Replies());
    EXPECT_EQ(session_->phase(), Session::Phase::kContent);
    EXPECT_TRUE(delegate_.submitted.empty());
    EXPECT_EQ(Send(".\r\nNOOP\r\n"), Replies({kBareLineRejected, kOk}));
    EXPECT_TRUE(delegate_.submitted.empty());
    // No transaction is left over from the smuggled MAIL.
    EXPECT_EQ(Send("RCPT TO:<u@local.example>\r\n"),
              Replies({"503 5.5.1 Error: need MAIL command"}));
  }
}

TEST_F(SessionTest, SmugglingInOneWriteNeverProducesTwoMessages) {
  Start(/*relay_allowed=*/true);
  Ehlo();
  Replies r = Send(
      "MAIL FROM:<s@remote.example>\r\nRCPT TO:<u@local.example>\r\nDATA\r\n"
      "Subject: legit\r\n\r\nbody\n.\r\n"
      "MAIL FROM:<evil@remote.example>\r\nRCPT TO:<victim@remote.example>\r\nDATA\r\n"
      "Subject: smuggled\r\n\r\nevil\r\n.\r\nQUIT\r\n");
  EXPECT_EQ(r, Replies({kMailOk, kRcptOk, kDataGo, kBareLineRejected, "221 2.0.0 Bye"}));
  EXPECT_TRUE(delegate_.submitted.empty());
  EXPECT_TRUE(session_->closing());
}

TEST_F(SessionTest, NulAndLongLinesInDataRejected) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send("DATA\r\n"), Replies({kDataGo}));
  EXPECT_EQ(Send(std::string("a\0b\r\n.\r\n", 8)),
            Replies({"550 5.6.0 Message rejected: NUL character in message text"}));
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send("DATA\r\n"), Replies({kDataGo}));
  EXPECT_EQ(Send(std::string(999, 'x') + "\r\n.\r\n"),
            Replies({"550 5.6.0 Message rejected: text line longer than 1000 octets"}));
  EXPECT_TRUE(delegate_.submitted.empty());
  // 998 octets is fine.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  ASSERT_NE(SendMessage(std::string(998, 'x') + "\r\n"), nullptr);
}

// ---------------------------------------------------------------------------------------
// DSN and SMTPUTF8.

TEST_F(SessionTest, DsnParametersStoredInEnvelope) {
  Start();
  Ehlo();
  EXPECT_EQ(
      Send("MAIL FROM:<s@remote.example> RET=HDRS ENVID=abc+2Bdef+3D BODY=7BIT\r\n"
           "RCPT TO:<a@local.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A+40local.example\r\n"
           "RCPT TO:<b@local.example> NOTIFY=never\r\n"
           "RCPT TO:<c@local.example> NOTIFY=DELAY\r\n"),
      Replies({kMailOk, kRcptOk, kRcptOk, kRcptOk}));
  const SpoolRecord* rec = SendMessage("x\r\n");
  ASSERT_NE(rec, nullptr);
  const queue::Envelope& env = rec->envelope;
  EXPECT_EQ(env.ret, queue::DsnRet::kHeaders);
  EXPECT_EQ(env.envid, "abc+def=");
  EXPECT_EQ(env.body_type, queue::BodyType::k7Bit);
  ASSERT_EQ(env.recipients.size(), 3u);
  EXPECT_EQ(env.recipients[0].notify, queue::kNotifySuccess | queue::kNotifyFailure);
  EXPECT_EQ(env.recipients[0].orcpt, "rfc822;A@local.example");
  EXPECT_EQ(env.recipients[1].notify, queue::kNotifyNever);
  EXPECT_EQ(env.recipients[1].orcpt, "");
  EXPECT_EQ(env.recipients[2].notify, queue::kNotifyDelay);

  Ehlo();
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> RET=full\r\n"), Replies({kMailOk}));
  EXPECT_EQ(Send("RCPT TO:<a@local.example>\r\n"), Replies({kRcptOk}));
  rec = SendMessage("x\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.ret, queue::DsnRet::kFull);
}

TEST_F(SessionTest, BadDsnParameters) {
  Start();
  Ehlo();
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> RET=ALL\r\n"),
            Replies({"501 5.5.4 Error: bad RET value"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> RET\r\n"),
            Replies({"501 5.5.4 Error: bad RET value"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> ENVID=a+2\r\n"),
            Replies({"501 5.5.4 Error: bad ENVID value"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> ENVID\r\n"),
            Replies({"501 5.5.4 Error: bad ENVID value"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> ENVID=" + std::string(101, 'e') + "\r\n"),
            Replies({"501 5.5.4 Error: bad ENVID value"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\r\n"), Replies({kMailOk}));
  EXPECT_EQ(Send("RCPT TO:<a@local.example> NOTIFY=NEVER,SUCCESS\r\n"),
            Replies({"501 5.5.4 Error: NOTIFY=NEVER cannot be combined"}));
  EXPECT_EQ(Send("RCPT TO:<a@local.example> NOTIFY=SOMETIMES\r\n"),
            Replies({"501 5.5.4 Error: bad NOTIFY value"}));
  EXPECT_EQ(Send("RCPT TO:<a@local.example> NOTIFY\r\n"),
            Replies({"501 5.5.4 Error: bad NOTIFY value"}));
  EXPECT_EQ(Send("RCPT TO:<a@local.example> ORCPT=rfc822\r\n"),
            Replies({"501 5.5.4 Error: bad ORCPT value"}));
  EXPECT_EQ(Send("RCPT TO:<a@local.example> ORCPT=;a@b\r\n"),
            Replies({"501 5.5.4 Error: bad ORCPT value"}));
  EXPECT_EQ(Send("RCPT TO:<a@local.example> ORCPT=rfc822;\r\n"),
            Replies({"501 5.5.4 Error: bad ORCPT value"}));
  EXPECT_EQ(Send("RCPT TO:<a@local.example> ORCPT=rfc822;a+4\r\n"),
            Replies({"501 5.5.4 Error: bad ORCPT value"}));
  EXPECT_EQ(Send("RCPT TO:<a@local.example> NOTIFY=DELAY NOTIFY=DELAY\r\n"),
            Replies({"501 5.5.4 Error: duplicate NOTIFY parameter"}));
  EXPECT_EQ(Send("DATA\r\n"), Replies({"554 5.5.1 Error: no valid recipients"}));
}

TEST_F(SessionTest, NonAsciiAddressesNeedSmtputf8) {
  config_.add_missing_headers = false;
  Start();
  Ehlo();
  const std::string sender = "<j\xc3\xb6rg@remote.example>";
  const std::string rcpt = "<m\xc3\xbcller@local.example>";
  EXPECT_EQ(Send("MAIL FROM:" + sender + "\r\n"),
            Replies({"553 5.6.7 Error: non-ASCII address requires SMTPUTF8"}));
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example>\r\n"), Replies({kMailOk}));
  EXPECT_EQ(Send("RCPT TO:" + rcpt + "\r\n"),
            Replies({"553 5.6.7 Error: non-ASCII address requires SMTPUTF8"}));
  EXPECT_EQ(Send("RSET\r\n"), Replies({kOk}));
  EXPECT_EQ(Send("MAIL FROM:" + sender + " SMTPUTF8\r\n"), Replies({kMailOk}));
  EXPECT_EQ(Send("RCPT TO:" + rcpt + "\r\n"), Replies({kRcptOk}));
  // Invalid UTF-8 is a syntax error even with SMTPUTF8.
  EXPECT_EQ(Send("RCPT TO:<a\xc0\xaf@local.example>\r\n"),
            Replies({"501 5.1.3 Bad recipient address syntax: invalid UTF-8 in address"}));
  const SpoolRecord* rec = SendMessage("x\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_TRUE(rec->envelope.smtputf8);
  EXPECT_EQ(rec->envelope.sender, "j\xc3\xb6rg@remote.example");
  ASSERT_EQ(rec->envelope.recipients.size(), 1u);
  EXPECT_EQ(rec->envelope.recipients[0].address, "m\xc3\xbcller@local.example");
  // The non-ASCII address is not copied raw into the Received header.
  EXPECT_EQ(rec->content, ReceivedHeader("Q0001", "UTF8SMTP", "m??ller@local.example") + "x\r\n");
  // SMTPUTF8 takes no value.
  EXPECT_EQ(Send("MAIL FROM:<s@remote.example> SMTPUTF8=yes\r\n"),
            Replies({"501 5.5.4 Error: SMTPUTF8 takes no value"}));
}

// ---------------------------------------------------------------------------------------
// Shutdown and timeouts.

TEST_F(SessionTest, ShutdownWhenIdleCloses) {
  Start();
  Ehlo();
  session_->OnShutdown();
  EXPECT_EQ(Take(), Replies({kShutdown}));
  EXPECT_TRUE(session_->closing());
  EXPECT_EQ(Send("NOOP\r\n"), Replies());
}

TEST_F(SessionTest, ShutdownDuringDataFinishesMessageFirst) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send("DATA\r\nSubject: x\r\n"), Replies({kDataGo}));
  session_->OnShutdown();
  EXPECT_EQ(Take(), Replies());
  EXPECT_FALSE(session_->closing());
  EXPECT_EQ(Send("\r\nbody\r\n.\r\nMAIL FROM:<s@remote.example>\r\n"), Replies());
  ASSERT_EQ(delegate_.submitted.size(), 1u);
  EXPECT_FALSE(session_->closing());
  session_->OnCommitDone(absl::OkStatus(), "Q0001");
  EXPECT_EQ(Take(), Replies({"250 2.0.0 Ok: queued as Q0001", kShutdown}));
  EXPECT_TRUE(session_->closing());
  EXPECT_EQ(session_->messages_accepted(), 1u);
}

TEST_F(SessionTest, ShutdownWhileWaitingForCommit) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send("DATA\r\nx\r\n.\r\n"), Replies({kDataGo}));
  ASSERT_EQ(session_->phase(), Session::Phase::kWaitingCommit);
  session_->OnShutdown();
  EXPECT_EQ(Take(), Replies());
  session_->OnCommitDone(absl::InternalError("boom"), "Q0001");
  EXPECT_EQ(Take(),
            Replies({"451 4.3.0 Error: queue file write error, try again later", kShutdown}));
  EXPECT_TRUE(session_->closing());
}

TEST_F(SessionTest, ShutdownDuringDataWithRejectedMessage) {
  config_.max_message_bytes = 10;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send("DATA\r\n"), Replies({kDataGo}));
  session_->OnShutdown();
  EXPECT_EQ(Send("0123456789abc\r\n.\r\n"), Replies({kTooBig, kShutdown}));
  EXPECT_TRUE(session_->closing());
}

// SESSION BUG (session.cc, Session::ProcessCommandLine / Session::OnShutdown): a message
// sent with BDAT is not "finished first" on shutdown. Between chunks the phase is kCommand,
// so OnShutdown() closes at once, and a shutdown that arrives during a non-LAST chunk closes
// with 421 as soon as that chunk ends, even when the LAST chunk is already buffered. The
// header promises "closes now if idle, else after the current message is answered", as
// DATA does. Disabled until session.cc is fixed.
TEST_F(SessionTest, ShutdownDuringBdatFinishesMessageFirst) {
  config_.add_missing_headers = false;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send("BDAT 5\r\nhel"), Replies());
  ASSERT_EQ(session_->phase(), Session::Phase::kContent);
  session_->OnShutdown();
  EXPECT_EQ(Send("loBDAT 3 LAST\r\nabc"), Replies({"250 2.0.0 5 octets received"}));
  ASSERT_EQ(delegate_.submitted.size(), 1u);
  EXPECT_EQ(delegate_.submitted[0]->content,
            ReceivedHeader("Q0001", "ESMTP", "u@local.example") + "helloabc");
  session_->OnCommitDone(absl::OkStatus(), "Q0001");
  EXPECT_EQ(Take(), Replies({"250 2.0.0 Ok: queued as Q0001", kShutdown}));
  EXPECT_TRUE(session_->closing());
}

TEST_F(SessionTest, ShutdownBetweenBdatChunksWaitsForLastChunk) {
  config_.add_missing_headers = false;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send("BDAT 5\r\nhello"), Replies({"250 2.0.0 5 octets received"}));
  session_->OnShutdown();
  EXPECT_EQ(Take(), Replies());
  EXPECT_FALSE(session_->closing());
  EXPECT_EQ(Send("BDAT 0 LAST\r\n"), Replies());
  ASSERT_EQ(delegate_.submitted.size(), 1u);
  session_->OnCommitDone(absl::OkStatus(), "Q0001");
  EXPECT_EQ(Take(), Replies({"250 2.0.0 Ok: queued as Q0001", kShutdown}));
}

TEST_F(SessionTest, Timeout) {
  Start();
  Ehlo();
  session_->OnTimeout();
  EXPECT_EQ(Take(), Replies({"421 4.4.2 mx.example.net Error: timeout exceeded"}));
  EXPECT_TRUE(session_->closing());
}

TEST_F(SessionTest, TimeoutDuringData) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send("DATA\r\npartial"), Replies({kDataGo}));
  session_->OnTimeout();
  EXPECT_EQ(Take(), Replies({"421 4.4.2 mx.example.net Error: timeout exceeded"}));
  EXPECT_TRUE(session_->closing());
  EXPECT_EQ(Send("\r\n.\r\n"), Replies());
  EXPECT_TRUE(delegate_.submitted.empty());
}

}  // namespace
}  // namespace mta::smtp

namespace mta::smtp {
namespace {

TEST_F(SessionTest, TooManyReceivedHeadersIsALoop) {
  config_.max_hops = 3;
  Start(/*relay_allowed=*/true);
  BeginTransaction("<a@example.com>", {"<b@example.org>"});
  // Two Received: fields plus ours make three hops: still accepted.
  std::string two =
      "Received: from a\r\nReceived: from b\r\n\tfolded\r\nSubject: x\r\n\r\nbody\r\n";
  ASSERT_NE(SendMessage(two), nullptr);
  // A Received: in the body does not count; a third one in the header does.
  EXPECT_EQ(Send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"),
            Replies({kMailOk, kRcptOk, kDataGo}));
  std::string three =
      "Received: from a\r\nReceived: from b\r\nreceived: from c\r\nSubject: x\r\n\r\n"
      "Received: in the body\r\n.\r\n";
  EXPECT_EQ(Send(three), Replies({"554 5.4.6 Message rejected: too many hops (mail loop?)"}));
  EXPECT_EQ(delegate_.submitted.size(), 1u);
  EXPECT_EQ(Send("NOOP\r\n"), Replies({"250 2.0.0 Ok"}));  // the session goes on
}

}  // namespace
}  // namespace mta::smtp

namespace mta::smtp {
namespace {

TEST_F(SessionTest, VrfyNeedsAnArgument) {
  Start();
  EXPECT_EQ(Send("VRFY\r\n"), Replies({"501 5.5.4 Syntax: VRFY address"}));
  EXPECT_EQ(Send("VRFY someone\r\n"),
            Replies({"252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"}));
}

}  // namespace
}  // namespace mta::smtp

// ---------------------------------------------------------------------------------------
// Stream selection: the client's network, then the stream header, then the listener's.

namespace mta::smtp {
namespace {

class SessionStreamTest : public SessionTest {
 protected:
  SessionStreamTest() {
    config_.stream_header = "X-Stream";
    delegate_.known_streams = {"inbound", "bulk", "transactional"};
  }

  // Sends `body` with DATA and expects `reply` and no submission; the session goes on.
  void ExpectRejected(absl::string_view body, absl::string_view reply) {
    size_t before = delegate_.submitted.size();
    EXPECT_EQ(Send("DATA\r\n"), Replies({kDataGo}));
    EXPECT_EQ(Send(absl::StrCat(body, ".\r\n")), Replies({std::string(reply)}));
    EXPECT_EQ(delegate_.submitted.size(), before);
    EXPECT_EQ(session_->phase(), Session::Phase::kCommand);
    // The transaction was reset.
    EXPECT_EQ(Send("RCPT TO:<u@local.example>\r\n"),
              Replies({"503 5.5.1 Error: need MAIL command"}));
  }
};

TEST_F(SessionStreamTest, NetworkStreamWinsOverHeaderWhichIsStillRemoved) {
  Start(false, "192.0.2.1", "transactional");
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const SpoolRecord* rec = SendMessage("X-Stream: bulk\r\nSubject: x\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "transactional");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0001", "ESMTP", "u@local.example") +
                              AddedHeaders("Q0001") + "Subject: x\r\n\r\nbody\r\n");

  // The header is not consulted at all: unknown or conflicting values do not matter.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  rec = SendMessage("X-Stream: nosuch\r\nSubject: y\r\nX-Stream: bulk\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "transactional");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0002", "ESMTP", "u@local.example") +
                              AddedHeaders("Q0002") + "Subject: y\r\n\r\nbody\r\n");
}

TEST_F(SessionStreamTest, HeaderChoosesKnownStreamAndIsRemoved) {
  config_.add_missing_headers = false;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  // Folded value, any case for the name; X-Stream-Id is another field, and a body line
  // that looks like the header stays. Everything else is kept byte for byte (dot-unstuffed).
  const SpoolRecord* rec = SendMessage(
      "Subject: x\r\n folded subject\r\nx-STREAM:\r\n\t bulk \r\nX-Stream-Id: 7\r\n"
      "To: <u@local.example>\r\n\r\nX-Stream: bulk\r\n..dot\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "bulk");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0001", "ESMTP", "u@local.example") +
                              "Subject: x\r\n folded subject\r\nX-Stream-Id: 7\r\n"
                              "To: <u@local.example>\r\n\r\nX-Stream: bulk\r\n.dot\r\n");
  EXPECT_EQ(rec->envelope.content_bytes, rec->content.size());

  // First field, blanks before the colon (obsolete syntax) and a repeated equal value.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  rec = SendMessage("X-Stream : inbound\r\nSubject: y\r\nX-Stream:inbound\r\n\r\nb\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "inbound");
  EXPECT_EQ(rec->content,
            ReceivedHeader("Q0002", "ESMTP", "u@local.example") + "Subject: y\r\n\r\nb\r\n");

  // The header as the last line of a message without a body.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  rec = SendMessage("Subject: z\r\nX-Stream: transactional\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "transactional");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0003", "ESMTP", "u@local.example") + "Subject: z\r\n");
}

TEST_F(SessionStreamTest, HeaderIsRemovedWhenAddingMissingHeaders) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const SpoolRecord* rec = SendMessage("X-Stream: bulk\r\nSubject: x\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "bulk");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0001", "ESMTP", "u@local.example") +
                              AddedHeaders("Q0001") + "Subject: x\r\n\r\nbody\r\n");
}

TEST_F(SessionStreamTest, UnknownStreamIsRejected) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  ExpectRejected("Subject: x\r\nX-Stream: nosuch\r\n\r\nbody\r\n",
                 "550 5.7.1 Unknown stream \"nosuch\" in X-Stream header");

  // Unfolding keeps the blank: "bu lk" is not "bulk".
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  ExpectRejected("X-Stream: bu\r\n lk\r\n\r\nbody\r\n",
                 "550 5.7.1 Unknown stream \"bu lk\" in X-Stream header");

  // Stream names are case-sensitive.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  ExpectRejected("X-Stream: Bulk\r\n\r\nbody\r\n",
                 "550 5.7.1 Unknown stream \"Bulk\" in X-Stream header");

  // The name is quoted safely: control characters dropped, quotes escaped, 8-bit bytes
  // replaced and at most 64 characters kept.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  ExpectRejected(
      absl::StrCat("X-Stream: a\x01\"b\xc3\xa9\t", std::string(100, 'c'), "\r\n\r\nbody\r\n"),
      absl::StrCat("550 5.7.1 Unknown stream \"a\\\"b??", std::string(59, 'c'),
                   "\" in X-Stream header"));

  // The session goes on and accepts a good message.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const SpoolRecord* rec = SendMessage("X-Stream: bulk\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "bulk");
}

TEST_F(SessionStreamTest, ConflictingHeadersAreRejected) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  ExpectRejected("X-Stream: bulk\r\nSubject: x\r\nX-Stream: inbound\r\n\r\nbody\r\n",
                 "550 5.7.1 Conflicting streams \"bulk\" and \"inbound\" in X-Stream headers");
  EXPECT_TRUE(delegate_.submitted.empty());
}

TEST_F(SessionStreamTest, EmptyValueFallsBackToListenerStream) {
  config_.add_missing_headers = false;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const SpoolRecord* rec = SendMessage("X-Stream:\r\nSubject: x\r\nX-Stream: \t\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "inbound");
  EXPECT_EQ(rec->content,
            ReceivedHeader("Q0001", "ESMTP", "u@local.example") + "Subject: x\r\n\r\nbody\r\n");

  // An empty occurrence names nothing: another one still decides.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  rec = SendMessage("X-Stream:\r\nX-Stream: bulk\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "bulk");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0002", "ESMTP", "u@local.example") + "\r\nbody\r\n");

  // No header at all.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  rec = SendMessage("Subject: x\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "inbound");
}

TEST_F(SessionStreamTest, AnyStreamAcceptedWhenNoneAreKnown) {
  delegate_.known_streams.clear();
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const SpoolRecord* rec = SendMessage("X-Stream: anything\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "anything");
}

TEST_F(SessionStreamTest, NoStreamHeaderConfiguredLeavesHeaderInPlace) {
  config_.stream_header.clear();
  config_.add_missing_headers = false;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const std::string body = "X-Stream: bulk\r\nSubject: x\r\nX-Stream: nosuch\r\n\r\nbody\r\n";
  const SpoolRecord* rec = SendMessage(body);
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "inbound");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0001", "ESMTP", "u@local.example") + body);

  // The network still decides.
  Start(false, "192.0.2.1", "transactional");
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  rec = SendMessage(body);
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "transactional");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0002", "ESMTP", "u@local.example") + body);
}

TEST_F(SessionStreamTest, Bdat) {
  config_.add_missing_headers = false;
  Start();
  auto bdat = [](absl::string_view chunk, bool last = false) {
    return absl::StrCat("BDAT ", chunk.size(), last ? " LAST" : "", "\r\n", chunk);
  };
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  // The header and its continuation line are split over chunks.
  EXPECT_EQ(Send(bdat("Subject: x\r\nX-Stre")), Replies({"250 2.0.0 18 octets received"}));
  EXPECT_EQ(Send(bdat("am:\r\n bulk")), Replies({"250 2.0.0 28 octets received"}));
  EXPECT_EQ(Send(bdat("\r\nTo: a\r\n\r\nX-Stream: x\r\n", true)), Replies());
  ASSERT_EQ(delegate_.submitted.size(), 1u);
  const SpoolRecord& rec = *delegate_.submitted[0];
  EXPECT_EQ(rec.envelope.stream, "bulk");
  EXPECT_EQ(rec.content, ReceivedHeader("Q0001", "ESMTP", "u@local.example") +
                             "Subject: x\r\nTo: a\r\n\r\nX-Stream: x\r\n");
  EXPECT_EQ(rec.envelope.content_bytes, rec.content.size());
  session_->OnCommitDone(absl::OkStatus(), "Q0001");
  EXPECT_EQ(Take(), Replies({"250 2.0.0 Ok: queued as Q0001"}));

  // Unknown stream over BDAT: rejected, nothing submitted, transaction reset.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send(bdat("X-Stream: nosuch\r\n")), Replies({"250 2.0.0 18 octets received"}));
  EXPECT_EQ(Send(bdat("\r\nb\r\n", true)),
            Replies({"550 5.7.1 Unknown stream \"nosuch\" in X-Stream header"}));
  EXPECT_EQ(delegate_.submitted.size(), 1u);
  EXPECT_EQ(Send("RCPT TO:<u@local.example>\r\n"), Replies({"503 5.5.1 Error: need MAIL command"}));

  // Conflicting values over BDAT.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send(bdat("X-Stream: bulk\r\nX-Stream: inbound\r\n\r\nb\r\n", true)),
            Replies({"550 5.7.1 Conflicting streams \"bulk\" and \"inbound\" in X-Stream "
                     "headers"}));
  EXPECT_EQ(delegate_.submitted.size(), 1u);

  // A message ending in the header without CRLF.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send(bdat("Subject: y\r\nX-Stream: bulk", true)), Replies());
  ASSERT_EQ(delegate_.submitted.size(), 2u);
  EXPECT_EQ(delegate_.submitted[1]->envelope.stream, "bulk");
  EXPECT_EQ(delegate_.submitted[1]->content,
            ReceivedHeader("Q0004", "ESMTP", "u@local.example") + "Subject: y\r\n");
}

}  // namespace
}  // namespace mta::smtp

// ---------------------------------------------------------------------------------------
// STARTTLS (RFC 3207).

namespace mta::smtp {
namespace {

class SessionStartTlsTest : public SessionTest {
 protected:
  SessionStartTlsTest() { config_.starttls = true; }

  bool Advertised(const Replies& ehlo) {
    return std::find(ehlo.begin(), ehlo.end(), "250-STARTTLS") != ehlo.end();
  }
};

TEST_F(SessionStartTlsTest, OfferedOnlyWhenConfiguredAndNotYetActive) {
  Start();
  EXPECT_TRUE(Advertised(Send("EHLO client.example\r\n")));
  EXPECT_EQ(Send("STARTTLS\r\n"), Replies({"220 2.0.0 Ready to start TLS"}));
  EXPECT_EQ(session_->phase(), Session::Phase::kStartTls);
  EXPECT_FALSE(session_->WantsInput());
  session_->OnTlsEstablished();
  EXPECT_TRUE(session_->tls());
  EXPECT_FALSE(Advertised(Send("EHLO client.example\r\n")));
  EXPECT_EQ(Send("STARTTLS\r\n"), Replies({"503 5.5.1 Error: TLS already active"}));
}

TEST_F(SessionStartTlsTest, NotOfferedWithoutACertificate) {
  config_.starttls = false;
  Start();
  EXPECT_FALSE(Advertised(Send("EHLO client.example\r\n")));
  EXPECT_EQ(Send("STARTTLS\r\n"), Replies({"502 5.5.1 Error: command not implemented"}));
}

TEST_F(SessionStartTlsTest, PipelinedPlainTextAfterStartTlsIsDiscarded) {
  Start();
  Ehlo();
  // The classic injection: commands ride in the same packet as STARTTLS.
  EXPECT_EQ(Send("STARTTLS\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<x@local.example>\r\n"),
            Replies({"220 2.0.0 Ready to start TLS"}));
  EXPECT_EQ(Send("DATA\r\n"), Replies({}));  // still plain text: dropped too
  EXPECT_EQ(session_->discarded_after_starttls(), 30u + 27u + 6u);
  session_->OnTlsEstablished();
  // Nothing from before TLS survives: no EHLO, no transaction.
  EXPECT_EQ(Send("MAIL FROM:<a@example.com>\r\n"),
            Replies({"503 5.5.1 Error: send HELO/EHLO first"}));
  Ehlo();
  EXPECT_EQ(Send("RCPT TO:<x@local.example>\r\n"), Replies({"503 5.5.1 Error: need MAIL command"}));
}

TEST_F(SessionStartTlsTest, RefusedWithArgumentsOrInsideATransaction) {
  Start();
  Ehlo();
  EXPECT_EQ(Send("STARTTLS now\r\n"), Replies({"501 5.5.4 Syntax: STARTTLS"}));
  EXPECT_EQ(Send("MAIL FROM:<a@example.com>\r\n"), Replies({"250 2.1.0 Ok"}));
  EXPECT_EQ(Send("STARTTLS\r\n"), Replies({"503 5.5.1 Error: MAIL transaction in progress"}));
}

TEST_F(SessionStartTlsTest, FailedHandshakeClosesTheSession) {
  Start();
  Ehlo();
  Send("STARTTLS\r\n");
  session_->OnTlsFailed();
  EXPECT_TRUE(session_->closing());
}

TEST_F(SessionStartTlsTest, ReceivedSaysEsmtpsUnderTls) {
  Start();
  Ehlo();
  Send("STARTTLS\r\n");
  session_->OnTlsEstablished();
  Ehlo();
  Send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@local.example>\r\nDATA\r\n");
  Send("Subject: t\r\n\r\nbody\r\n.\r\n");
  ASSERT_EQ(delegate_.submitted.size(), 1u);
  EXPECT_TRUE(absl::StrContains(delegate_.submitted[0]->content, "with ESMTPS id "));
}

}  // namespace
}  // namespace mta::smtp
