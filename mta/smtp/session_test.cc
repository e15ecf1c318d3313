// The server session's dialogue: greeting and commands, transactions and commits, relay
// control, sequencing and syntax errors, shutdown and timeouts, STARTTLS.
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
#include "mta/smtp/session_test_util.h"
#include "queue/envelope.h"
#include "queue/spool.h"

namespace mta::smtp {
namespace {

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

TEST_F(SessionTest, VrfyNeedsAnArgument) {
  Start();
  EXPECT_EQ(Send("VRFY\r\n"), Replies({"501 5.5.4 Syntax: VRFY address"}));
  EXPECT_EQ(Send("VRFY someone\r\n"),
            Replies({"252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"}));
}

// ---------------------------------------------------------------------------------------
// STARTTLS (RFC 3207).

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
