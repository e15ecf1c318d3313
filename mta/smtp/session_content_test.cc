// The server session and message content: added headers, BDAT, size and recipient limits,
// message text checks (SMTP smuggling), DSN parameters and SMTPUTF8.
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
#include "mta/smtp/session_test_util.h"
#include "queue/envelope.h"
#include "queue/spool.h"

namespace mta::smtp {
namespace {

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

}  // namespace
}  // namespace mta::smtp
