// ClientSession reply handling: enhanced codes, 421, timeouts, lost connections, malformed replies.

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "mta/smtp/client_session.h"
#include "mta/smtp/client_session_test_util.h"
#include "queue/envelope.h"

namespace mta::smtp {
namespace {

INSTANTIATE_TEST_SUITE_P(Delivery, ClientSessionTest, ::testing::Values(0, 1, 7), DeliveryName);

// ---------------------------------------------------------------------------------------
// Enhanced status codes.

TEST_P(ClientSessionTest, EnhancedCodesOnlyWhenOffered) {
  Connect(Without(kAllCaps, "ENHANCEDSTATUSCODES"));
  Start(Message({"a@example.com"}));
  Feed("250 2.1.0 Ok\r\n550 5.1.1 no\r\n554 no valid recipients\r\n250 Ok\r\n");
  TransactionResult r = Result();
  EXPECT_EQ(r.recipients[0].enhanced, "");
  EXPECT_EQ(r.recipients[0].lines, std::vector<std::string>{"5.1.1 no"});
  EXPECT_EQ(r.recipients[0].ToString(), "550 5.1.1 no");
}

TEST_P(ClientSessionTest, EnhancedCodeMustMatchReplyClass) {
  Connect();
  Start(Message({"a@example.com", "b@example.com", "c@example.com"}));
  Feed(
      "250 2.1.0 Ok\r\n"
      "550 2.1.5 odd\r\n"      // class mismatch: not an enhanced code
      "550 5.1.10 ok\r\n"      // 1-3 digit detail
      "450 4.1234.1 long\r\n"  // subject too long
      "354 go\r\n");
  Feed("250 2.0.0 Ok\r\n");
  TransactionResult r = Result();
  EXPECT_EQ(r.recipients[0].enhanced, "");
  EXPECT_EQ(r.recipients[0].lines[0], "2.1.5 odd");
  EXPECT_EQ(r.recipients[1].enhanced, "5.1.10");
  EXPECT_EQ(r.recipients[1].lines[0], "ok");
  EXPECT_EQ(r.recipients[2].enhanced, "");
}

TEST_P(ClientSessionTest, ControlCharactersInReplyTextAreSanitized) {
  Connect();
  Start(Message({"a@example.com"}));
  static constexpr char kReplies[] = "250 Ok\r\n550 5.1.1 bad\x1b[31m\tuser\0x\r\n554 x\r\n";
  Feed(absl::string_view(kReplies, sizeof(kReplies) - 1));
  EXPECT_EQ(Result().recipients[0].ToString(), "550 5.1.1 bad?[31m user?x");
}

// ---------------------------------------------------------------------------------------
// 421, timeouts, lost connections.

TEST_P(ClientSessionTest, ServerClosingMidTransaction) {
  Connect();
  Start(Message({"a@example.com", "b@example.com", "c@example.com"}));
  EXPECT_EQ(Feed("250 Ok\r\n250 Ok\r\n550 5.1.1 no\r\n421 4.3.2 Service shutting down\r\n"), "");
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
  ASSERT_TRUE(cs_->error().has_value());
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kServerClosing);
  EXPECT_EQ(cs_->error()->reply.ToString(), "421 4.3.2 Service shutting down");
  // The refused recipient keeps its 5xx; the others are temporary failures.
  EXPECT_EQ(Replies(Result()),
            (std::vector<std::string>{"421 4.3.2 Service shutting down", "550 5.1.1 no",
                                      "421 4.3.2 Service shutting down"}));
}

TEST_P(ClientSessionTest, ServerClosingAfterContent) {
  Connect();
  Start(Message({"a@example.com"}));
  Feed("250 Ok\r\n250 Ok\r\n354 go\r\n");
  EXPECT_EQ(Feed("421 4.4.2 timeout\r\n"), "");
  EXPECT_EQ(Replies(Result()), std::vector<std::string>{"421 4.4.2 timeout"});
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kServerClosing);
}

TEST_P(ClientSessionTest, UnsolicitedReplies) {
  Connect();
  EXPECT_EQ(Feed("421 4.3.2 idle too long\r\n"), "");
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kServerClosing);
  EXPECT_FALSE(cs_->has_result());
  Connect();
  EXPECT_EQ(Feed("250 surprise\r\n"), "");
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kProtocol);
}

TEST_P(ClientSessionTest, TimeoutInEachPhase) {
  Create();
  cs_->OnTimeout();
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kTimeout);
  EXPECT_EQ(cs_->error()->reply.ToString(),
            "451 4.4.2 conversation timed out waiting for the greeting");
  Connect();
  Start(Message({"a@example.com", "b@example.com"}));
  Feed("250 Ok\r\n250 Ok\r\n550 no\r\n354 go\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kFinalDot);
  cs_->OnTimeout();
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
  TransactionResult r = Result();
  EXPECT_EQ(Replies(r), (std::vector<std::string>{
                            "451 4.4.2 conversation timed out waiting for the reply to the end "
                            "of data",
                            "550 no"}));
  EXPECT_TRUE(r.recipients[0].local);
  EXPECT_TRUE(r.content_sent);
  cs_->OnTimeout();  // no effect once closed
  EXPECT_FALSE(cs_->has_result());
}

TEST_P(ClientSessionTest, ConnectionLostMidTransaction) {
  Connect();
  Start(Message({"a@example.com"}));
  Feed("250 Ok\r\n");
  cs_->OnConnectionLost("connection reset by peer");
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kConnectionLost);
  EXPECT_EQ(Replies(Result()),
            std::vector<std::string>{"451 4.4.2 lost connection: connection reset by peer"});
  EXPECT_EQ(Drain(), "");
}

TEST_P(ClientSessionTest, PhasesForTimeoutsThroughATransaction) {
  options_.use_pipelining = false;
  Create();
  EXPECT_EQ(cs_->phase(), Phase::kGreeting);
  Feed(kGreeting);
  EXPECT_EQ(cs_->phase(), Phase::kCommand);
  Feed(EhloReply(kAllCaps));
  EXPECT_EQ(cs_->phase(), Phase::kReady);
  Start(Message({"a@example.com"}));
  EXPECT_EQ(cs_->phase(), Phase::kCommand);  // MAIL
  Feed("250 Ok\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kCommand);  // RCPT
  Feed("250 Ok\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kDataInit);
  cs_->OnInput("354 go\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kDataBlock);
  Drain();
  EXPECT_EQ(cs_->phase(), Phase::kFinalDot);
  Feed("250 Ok\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kReady);
  ASSERT_TRUE(cs_->Quit().ok());
  EXPECT_EQ(cs_->phase(), Phase::kQuit);
}

// ---------------------------------------------------------------------------------------
// Malformed replies become clean protocol errors.

TEST_P(ClientSessionTest, MalformedRepliesAreProtocolErrors) {
  const std::vector<std::string> bad = {
      "garbage\r\n",
      "\r\n",
      "25\r\n",
      "2500 Ok\r\n",
      "250_Ok\r\n",
      "650 Ok\r\n",  // first digit outside 2-5
      "160 Ok\r\n",  // 1yz is not used in SMTP
      "260 Ok\r\n",  // second digit outside 0-5
      "2a0 Ok\r\n",
      "250-first\r\n251 second\r\n",    // code changes inside a reply
      "354 go ahead\r\n",               // intermediate reply to MAIL
      std::string(3000, '2') + "\r\n",  // line too long
  };
  for (const std::string& reply : bad) {
    SCOPED_TRACE(absl::CHexEscape(reply.substr(0, 40)));
    Connect();
    Start(Message({"a@example.com", "b@example.com"}));
    EXPECT_EQ(Feed(reply), "");
    EXPECT_EQ(cs_->phase(), Phase::kClosed);
    ASSERT_TRUE(cs_->error().has_value());
    EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kProtocol);
    TransactionResult r = Result();
    ASSERT_EQ(r.recipients.size(), 2u);
    for (const ServerReply& rr : r.recipients) {
      EXPECT_EQ(rr.code, 451);
      EXPECT_EQ(rr.enhanced, "4.5.0");
      EXPECT_TRUE(rr.local);
    }
    EXPECT_EQ(Feed("250 Ok\r\n"), "");  // nothing more happens
  }
}

TEST_P(ClientSessionTest, OverlongLineFailsBeforeItsEnd) {
  Connect();
  // No LF ever arrives: the session must not buffer without bound.
  Feed(std::string(options_.max_reply_line_bytes, 'x'));
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kProtocol);
  EXPECT_EQ(cs_->error()->reply.ToString(), "451 4.5.0 SMTP protocol error: reply line too long");
}

TEST_P(ClientSessionTest, LongestAcceptedLine) {
  Create();
  // Exactly max_reply_line_bytes including CRLF is fine.
  std::string line = "220 " + std::string(options_.max_reply_line_bytes - 6, 'x') + "\r\n";
  ASSERT_EQ(line.size(), options_.max_reply_line_bytes);
  EXPECT_EQ(Feed(line), kEhloCmd);
}

TEST_P(ClientSessionTest, ReplyTooLong) {
  Connect();
  std::string reply;
  for (int i = 0; i < 2000; ++i) reply += "250-" + std::string(60, 'y') + "\r\n";
  reply += "250 end\r\n";
  Start(Message({"a@example.com"}));
  Feed(reply);
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
  EXPECT_EQ(cs_->error()->reply.ToString(),
            "451 4.5.0 SMTP protocol error: multi-line reply too long");
  EXPECT_EQ(Result().recipients[0].code, 451);
}

TEST_P(ClientSessionTest, UnexpectedReplyCodes) {
  // 2xx to DATA and 3xx to the end of data make no sense.
  Connect();
  Start(Message({"a@example.com"}));
  Feed("250 Ok\r\n250 Ok\r\n250 Ok\r\n");
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kProtocol);
  EXPECT_EQ(Result().recipients[0].code, 451);
  Connect();
  Start(Message({"a@example.com"}));
  Feed("250 Ok\r\n250 Ok\r\n354 go\r\n354 again\r\n");
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kProtocol);
  Create();
  Feed("354 hello\r\n");
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kProtocol);
}

// Random server bytes, cut at random places, with the transport taking random amounts of
// output: whatever happens, the session ends with one verdict per recipient.
TEST(ClientSessionRandomTest, ArbitraryServerBytesKeepInvariants) {
  const std::vector<std::string> vocabulary = {"250 2.1.0 Ok\r\n",
                                               "250-more\r\n",
                                               "354 go\r\n",
                                               "550 5.1.1 no\r\n",
                                               "451 4.3.0 later\r\n",
                                               "421 4.3.2 bye\r\n",
                                               "220 tls\r\n",
                                               "503 x\r\n",
                                               "\r\n",
                                               "25",
                                               "0 ok\n",
                                               std::string("\x00\xff", 2),
                                               ".\r\n",
                                               "999 what\r\n"};
  std::mt19937 rng(20240601);
  const std::string content = "Subject: x\r\n\r\n.body\r\n";
  for (int round = 0; round < 2000; ++round) {
    ClientSessionOptions options;
    options.helo_name = "client.example";
    options.tls = TlsPolicy::kNone;
    options.use_pipelining = rng() % 2 == 0;
    options.use_chunking = rng() % 2 == 0;
    auto created = ClientSession::Create(options);
    ASSERT_TRUE(created.ok());
    ClientSession& cs = **created;
    cs.OnInput(kGreeting);
    cs.OnInput(EhloReply(kAllCaps));
    while (!cs.output().empty()) cs.ConsumeOutput(cs.output().size());
    ASSERT_EQ(cs.phase(), Phase::kReady);
    OutboundMessage m;
    m.sender = "s@example.org";
    m.recipients = {{"a@example.com", 0, ""}, {"b@example.com", 0, ""}, {"c@example.com", 0, ""}};
    m.content = &content;
    ASSERT_TRUE(cs.StartTransaction(m).ok());
    for (int step = 0; step < 20 && cs.phase() != Phase::kClosed; ++step) {
      std::string bytes;
      for (int k = rng() % 4; k >= 0; --k) bytes += vocabulary[rng() % vocabulary.size()];
      while (!bytes.empty()) {
        size_t n = 1 + rng() % bytes.size();
        cs.OnInput(absl::string_view(bytes).substr(0, n));
        bytes.erase(0, n);
        if (!cs.output().empty()) cs.ConsumeOutput(rng() % (cs.output().size() + 1));
      }
    }
    cs.OnConnectionLost("end of test");
    EXPECT_EQ(cs.phase(), Phase::kClosed);
    EXPECT_EQ(cs.output(), "");
    std::optional<TransactionResult> r = cs.TakeResult();
    ASSERT_TRUE(r.has_value()) << "round " << round;
    ASSERT_EQ(r->recipients.size(), 3u);
    for (const ServerReply& reply : r->recipients) {
      EXPECT_TRUE(reply.positive() || reply.transient() || reply.permanent())
          << "round " << round << ": " << reply.ToString();
    }
  }
}

}  // namespace
}  // namespace mta::smtp
