// ClientSession transactions: pipelined and lockstep MAIL/RCPT/DATA, RSET, QUIT, and BDAT.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
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
// Transactions.

TEST_P(ClientSessionTest, PipelinedTransaction) {
  Connect();
  std::string out = Start(Message({"a@example.com", "b@example.com"}));
  EXPECT_EQ(out, absl::StrCat(Mail(body_.size()),
                              "RCPT TO:<a@example.com>\r\n"
                              "RCPT TO:<b@example.com>\r\n"
                              "DATA\r\n"));
  EXPECT_EQ(cs_->phase(), Phase::kCommand);
  EXPECT_EQ(Feed("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"), "");
  EXPECT_EQ(cs_->phase(), Phase::kCommand);
  EXPECT_EQ(Feed("250 2.1.5 Ok\r\n"), "");
  EXPECT_EQ(cs_->phase(), Phase::kDataInit);
  EXPECT_EQ(Feed("354 End data with <CR><LF>.<CR><LF>\r\n"), DotStuffed(kBody));
  EXPECT_EQ(cs_->phase(), Phase::kFinalDot);
  EXPECT_FALSE(cs_->has_result());
  EXPECT_EQ(Feed("250 2.0.0 Ok: queued as 1234\r\n"), "");  // no RSET after success
  EXPECT_EQ(cs_->phase(), Phase::kReady);
  TransactionResult r = Result();
  EXPECT_EQ(Replies(r), (std::vector<std::string>{"250 2.0.0 Ok: queued as 1234",
                                                  "250 2.0.0 Ok: queued as 1234"}));
  EXPECT_EQ(r.recipients[0].enhanced, "2.0.0");
  EXPECT_EQ(r.recipients[0].lines, std::vector<std::string>{"Ok: queued as 1234"});
  EXPECT_FALSE(r.recipients[0].local);
  EXPECT_EQ(r.mail_reply.ToString(), "250 2.1.0 Ok");
  EXPECT_EQ(r.data_reply.code, 354);
  EXPECT_EQ(r.final_reply.code, 250);
  EXPECT_TRUE(r.content_sent);
  EXPECT_TRUE(r.pipelined);
  EXPECT_FALSE(r.bdat);
  EXPECT_EQ(r.CountDelivered(), 2u);
  EXPECT_EQ(cs_->transactions_completed(), 1u);
  EXPECT_EQ(cs_->last_reply().ToString(), "250 2.0.0 Ok: queued as 1234");
}

TEST_P(ClientSessionTest, LockstepTransaction) {
  options_.use_pipelining = false;
  Connect();
  EXPECT_EQ(Start(Message({"a@example.com", "b@example.com"})), Mail(body_.size()));
  EXPECT_EQ(cs_->phase(), Phase::kCommand);
  EXPECT_EQ(Feed("250 2.1.0 Ok\r\n"), "RCPT TO:<a@example.com>\r\n");
  EXPECT_EQ(Feed("250 2.1.5 Ok\r\n"), "RCPT TO:<b@example.com>\r\n");
  EXPECT_EQ(Feed("250 2.1.5 Ok\r\n"), "DATA\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kDataInit);
  EXPECT_EQ(Feed("354 go ahead\r\n"), DotStuffed(kBody));
  EXPECT_EQ(Feed("250 2.0.0 queued\r\n"), "");
  TransactionResult r = Result();
  EXPECT_FALSE(r.pipelined);
  EXPECT_EQ(r.CountDelivered(), 2u);
}

TEST_P(ClientSessionTest, LockstepWhenServerLacksPipelining) {
  Connect(Without(kAllCaps, "PIPELINING"));
  EXPECT_EQ(Start(Message({"a@example.com"})), Mail(body_.size()));
  EXPECT_EQ(Feed("250 2.1.0 Ok\r\n"), "RCPT TO:<a@example.com>\r\n");
}

TEST_P(ClientSessionTest, MixedRecipientOutcomes) {
  Connect();
  Start(Message({"a@example.com", "unknown@example.com", "full@example.com", "c@example.com"}));
  EXPECT_EQ(Feed("250 2.1.0 Ok\r\n"
                 "250 2.1.5 Ok\r\n"
                 "550-5.1.1 The email account that you tried to reach does not exist.\r\n"
                 "550 5.1.1 Please try double-checking the recipient's address.\r\n"
                 "452 4.2.2 Mailbox full\r\n"
                 "250 2.1.5 Ok\r\n"
                 "354 Go ahead\r\n"),
            DotStuffed(kBody));
  EXPECT_EQ(Feed("250 2.0.0 Ok\r\n"), "");
  TransactionResult r = Result();
  EXPECT_EQ(Replies(r), (std::vector<std::string>{
                            "250 2.0.0 Ok",
                            "550 5.1.1 The email account that you tried to reach does not "
                            "exist. Please try double-checking the recipient's address.",
                            "452 4.2.2 Mailbox full", "250 2.0.0 Ok"}));
  EXPECT_EQ(r.recipients[1].enhanced, "5.1.1");
  EXPECT_EQ(r.recipients[1].lines.size(), 2u);
  EXPECT_TRUE(r.recipients[1].permanent());
  EXPECT_TRUE(r.recipients[2].transient());
  EXPECT_EQ(r.CountDelivered(), 2u);
  EXPECT_EQ(cs_->phase(), Phase::kReady);
}

TEST_P(ClientSessionTest, MailRejectedPipelined) {
  Connect();
  Start(Message({"a@example.com", "b@example.com"}));
  // Every recipient gets the MAIL reply; the 503s that follow change nothing. DATA was
  // refused, so no content is sent; RSET clears the server's state.
  EXPECT_EQ(Feed("550 5.7.1 Sender blocked\r\n"
                 "503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n"
                 "503 5.5.1 need MAIL\r\n"),
            "RSET\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kCommand);
  TransactionResult r = Result();
  EXPECT_EQ(Replies(r),
            (std::vector<std::string>{"550 5.7.1 Sender blocked", "550 5.7.1 Sender blocked"}));
  EXPECT_EQ(r.data_reply.code, 503);
  EXPECT_FALSE(r.content_sent);
  EXPECT_EQ(Feed("250 2.0.0 Ok\r\n"), "");
  EXPECT_EQ(cs_->phase(), Phase::kReady);
}

TEST_P(ClientSessionTest, MailRejectedLockstep) {
  options_.use_pipelining = false;
  Connect();
  Start(Message({"a@example.com", "b@example.com"}));
  EXPECT_EQ(Feed("451 4.3.0 Try later\r\n"), "RSET\r\n");  // no RCPT is sent
  EXPECT_EQ(Replies(Result()),
            (std::vector<std::string>{"451 4.3.0 Try later", "451 4.3.0 Try later"}));
  Feed("250 Ok\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kReady);
}

TEST_P(ClientSessionTest, MailRejectedButServerAcceptsDataAnyway) {
  Connect();
  Start(Message({"a@example.com"}));
  // A broken server answers 354 although MAIL failed: end the data with a lone dot.
  EXPECT_EQ(Feed("550 5.7.1 no\r\n250 2.1.5 ok?\r\n354 go\r\n"), ".\r\n");
  EXPECT_EQ(Feed("554 5.5.1 no transaction\r\n"), "RSET\r\n");
  TransactionResult r = Result();
  EXPECT_EQ(Replies(r), std::vector<std::string>{"550 5.7.1 no"});
  EXPECT_FALSE(r.content_sent);
}

TEST_P(ClientSessionTest, AllRecipientsRejectedPipelinedDataRefused) {
  Connect();
  Start(Message({"a@example.com", "b@example.com"}));
  EXPECT_EQ(Feed("250 2.1.0 Ok\r\n550 5.1.1 no such user\r\n450 4.7.1 greylisted\r\n"
                 "554 5.5.1 Error: no valid recipients\r\n"),
            "RSET\r\n");
  TransactionResult r = Result();
  EXPECT_EQ(Replies(r),
            (std::vector<std::string>{"550 5.1.1 no such user", "450 4.7.1 greylisted"}));
  EXPECT_EQ(r.data_reply.code, 554);
  EXPECT_FALSE(r.content_sent);
  EXPECT_EQ(r.final_reply.code, 0);
  Feed("250 2.0.0 Ok\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kReady);
}

TEST_P(ClientSessionTest, AllRecipientsRejectedPipelinedData354SendsLoneDot) {
  Connect();
  Start(Message({"a@example.com", "b@example.com"}));
  // RFC 2920 section 3.1: DATA was accepted although no RCPT was, so the client must end
  // the data phase with a single dot and must not send the message.
  EXPECT_EQ(Feed("250 2.1.0 Ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n354 go\r\n"), ".\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kFinalDot);
  EXPECT_FALSE(cs_->has_result());
  // Even a server that then claims success delivered nothing: the RCPT replies stand.
  EXPECT_EQ(Feed("250 2.0.0 Ok: queued as nothing\r\n"), "RSET\r\n");
  TransactionResult r = Result();
  EXPECT_EQ(Replies(r), (std::vector<std::string>{"550 5.1.1 no", "550 5.1.1 no"}));
  EXPECT_FALSE(r.content_sent);
  EXPECT_EQ(r.CountDelivered(), 0u);
  Feed("250 2.0.0 Ok\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kReady);
}

TEST_P(ClientSessionTest, AllRecipientsRejectedLockstepSendsNoData) {
  options_.use_pipelining = false;
  Connect();
  Start(Message({"a@example.com", "b@example.com"}));
  EXPECT_EQ(Feed("250 Ok\r\n"), "RCPT TO:<a@example.com>\r\n");
  EXPECT_EQ(Feed("550 no\r\n"), "RCPT TO:<b@example.com>\r\n");
  EXPECT_EQ(Feed("551 no\r\n"), "RSET\r\n");
  EXPECT_EQ(Replies(Result()), (std::vector<std::string>{"550 no", "551 no"}));
}

TEST_P(ClientSessionTest, DataAcceptedThenFinalTemporaryFailure) {
  Connect();
  Start(Message({"a@example.com", "bad@example.com", "b@example.com"}));
  EXPECT_EQ(Feed("250 Ok\r\n250 Ok\r\n550 5.1.1 unknown\r\n250 Ok\r\n354 go\r\n"),
            DotStuffed(kBody));
  EXPECT_EQ(Feed("451 4.3.0 Error: queue file write error\r\n"), "RSET\r\n");
  TransactionResult r = Result();
  EXPECT_EQ(Replies(r), (std::vector<std::string>{"451 4.3.0 Error: queue file write error",
                                                  "550 5.1.1 unknown",
                                                  "451 4.3.0 Error: queue file write error"}));
  EXPECT_TRUE(r.content_sent);
  EXPECT_EQ(r.final_reply.code, 451);
  EXPECT_EQ(Feed("250 Ok\r\n"), "");
  EXPECT_EQ(cs_->phase(), Phase::kReady);
}

TEST_P(ClientSessionTest, DataAcceptedThenFinalPermanentFailure) {
  Connect();
  Start(Message({"a@example.com"}));
  EXPECT_EQ(Feed("250 Ok\r\n250 Ok\r\n354 go\r\n"), DotStuffed(kBody));
  EXPECT_EQ(Feed("550-5.7.1 Message rejected\r\n550 5.7.1 as spam\r\n"), "RSET\r\n");
  EXPECT_EQ(Replies(Result()), std::vector<std::string>{"550 5.7.1 Message rejected as spam"});
}

TEST_P(ClientSessionTest, DataCommandRefused) {
  options_.use_pipelining = false;
  Connect();
  Start(Message({"a@example.com", "b@example.com"}));
  Feed("250 Ok\r\n");
  Feed("250 Ok\r\n");
  EXPECT_EQ(Feed("550 5.1.1 no\r\n"), "DATA\r\n");
  EXPECT_EQ(Feed("451 4.7.1 not now\r\n"), "RSET\r\n");
  EXPECT_EQ(Replies(Result()), (std::vector<std::string>{"451 4.7.1 not now", "550 5.1.1 no"}));
}

TEST_P(ClientSessionTest, ResetAndReuseAfterFailure) {
  Connect();
  Start(Message({"a@example.com"}));
  EXPECT_EQ(Feed("452 4.3.1 Insufficient system storage\r\n503 no\r\n503 no\r\n"), "RSET\r\n");
  EXPECT_EQ(cs_->StartTransaction(Message({"a@example.com"})).code(),
            absl::StatusCode::kFailedPrecondition);  // result not taken, RSET pending
  EXPECT_EQ(Replies(Result()), std::vector<std::string>{"452 4.3.1 Insufficient system storage"});
  EXPECT_EQ(cs_->StartTransaction(Message({"a@example.com"})).code(),
            absl::StatusCode::kFailedPrecondition);  // RSET pending
  EXPECT_EQ(Feed("250 2.0.0 Ok\r\n"), "");
  ASSERT_EQ(cs_->phase(), Phase::kReady);
  // Second transaction on the same connection.
  EXPECT_EQ(Start(Message({"a@example.com"})),
            absl::StrCat(Mail(body_.size()), "RCPT TO:<a@example.com>\r\nDATA\r\n"));
  EXPECT_EQ(Feed("250 Ok\r\n250 Ok\r\n354 go\r\n"), DotStuffed(kBody));
  EXPECT_EQ(Feed("250 2.0.0 Ok\r\n"), "");
  EXPECT_EQ(Replies(Result()), std::vector<std::string>{"250 2.0.0 Ok"});
  // Third one right after a success: no RSET in between.
  EXPECT_EQ(Start(Message({"b@example.com"})),
            absl::StrCat(Mail(body_.size()), "RCPT TO:<b@example.com>\r\nDATA\r\n"));
  EXPECT_EQ(cs_->transactions_completed(), 2u);
}

TEST_P(ClientSessionTest, RsetRefusedEndsSession) {
  Connect();
  Start(Message({"a@example.com"}));
  EXPECT_EQ(Feed("550 no\r\n503 x\r\n503 x\r\n"), "RSET\r\n");
  Result();
  EXPECT_EQ(Feed("500 what\r\n"), "QUIT\r\n");
  ASSERT_TRUE(cs_->error().has_value());
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kProtocol);
}

TEST_P(ClientSessionTest, QuitPolitely) {
  Connect();
  EXPECT_TRUE(cs_->Quit().ok());
  EXPECT_EQ(Drain(), "QUIT\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kQuit);
  EXPECT_TRUE(cs_->Quit().ok());  // idempotent
  EXPECT_EQ(Drain(), "");
  EXPECT_EQ(cs_->StartTransaction(Message({"a@example.com"})).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Feed("221 2.0.0 Bye\r\n"), "");
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
  EXPECT_FALSE(cs_->error().has_value());
  EXPECT_EQ(Feed("250 late\r\n"), "");  // ignored once closed
}

TEST_P(ClientSessionTest, QuitRequestedEarlyIsSentWhenPossible) {
  Create();
  EXPECT_TRUE(cs_->Quit().ok());
  EXPECT_EQ(Drain(), "");
  EXPECT_EQ(Feed(kGreeting), "QUIT\r\n");  // no EHLO needed to say goodbye
  // And after a failed transaction, QUIT follows the RSET exchange.
  Connect();
  Start(Message({"a@example.com"}));
  EXPECT_EQ(Feed("550 no\r\n503 x\r\n503 x\r\n"), "RSET\r\n");
  Result();
  EXPECT_TRUE(cs_->Quit().ok());
  EXPECT_EQ(Drain(), "");
  EXPECT_EQ(Feed("250 Ok\r\n"), "QUIT\r\n");
}

TEST_P(ClientSessionTest, QuitTimeoutAndEofAreNotErrors) {
  Connect();
  ASSERT_TRUE(cs_->Quit().ok());
  Drain();
  cs_->OnTimeout();
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
  EXPECT_FALSE(cs_->error().has_value());
}

// ---------------------------------------------------------------------------------------
// BDAT (RFC 3030).

TEST_P(ClientSessionTest, BdatLockstep) {
  options_.use_chunking = true;
  options_.use_pipelining = false;
  Connect();
  std::string content = "Subject: x\r\n\r\n.leading dot stays as is\r\n";
  EXPECT_EQ(Start(Message({"a@example.com"}, &content)), Mail(content.size()));
  EXPECT_EQ(Feed("250 Ok\r\n"), "RCPT TO:<a@example.com>\r\n");
  EXPECT_EQ(Feed("250 Ok\r\n"), absl::StrCat("BDAT ", content.size(), " LAST\r\n", content));
  EXPECT_EQ(cs_->phase(), Phase::kFinalDot);
  EXPECT_EQ(Feed("250 2.0.0 Ok: queued\r\n"), "");
  TransactionResult r = Result();
  EXPECT_EQ(Replies(r), std::vector<std::string>{"250 2.0.0 Ok: queued"});
  EXPECT_TRUE(r.bdat);
  EXPECT_TRUE(r.content_sent);
  EXPECT_TRUE(r.data_reply.empty());
  EXPECT_EQ(r.final_reply.code, 250);
}

TEST_P(ClientSessionTest, BdatPipelinedSmallMessageInOneWrite) {
  options_.use_chunking = true;
  Connect();
  std::string content = "Subject: x\r\n\r\nno final newline";
  std::string sent = content + "\r\n";
  EXPECT_EQ(Start(Message({"a@example.com", "b@example.com"}, &content)),
            absl::StrCat(Mail(sent.size()),
                         "RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                         "BDAT ",
                         sent.size(), " LAST\r\n", sent));
  EXPECT_EQ(Feed("250 Ok\r\n250 Ok\r\n550 5.1.1 no\r\n250 2.0.0 Ok\r\n"), "");
  EXPECT_EQ(Replies(Result()), (std::vector<std::string>{"250 2.0.0 Ok", "550 5.1.1 no"}));
  EXPECT_EQ(cs_->phase(), Phase::kReady);
}

TEST_P(ClientSessionTest, BdatPipelinedAllRecipientsRejected) {
  options_.use_chunking = true;
  Connect();
  Start(Message({"a@example.com"}));
  // The content went with the commands; the server reads and discards it.
  EXPECT_EQ(Feed("250 Ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n"), "RSET\r\n");
  TransactionResult r = Result();
  EXPECT_EQ(Replies(r), std::vector<std::string>{"550 5.1.1 no"});
  EXPECT_EQ(r.final_reply.code, 554);
}

TEST_P(ClientSessionTest, BdatPipelinedLargeMessageWaitsForRecipients) {
  options_.use_chunking = true;
  options_.bdat_pipelining_max_bytes = 10;
  Connect();
  EXPECT_EQ(
      Start(Message({"a@example.com", "b@example.com"})),
      absl::StrCat(Mail(body_.size()), "RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"));
  EXPECT_EQ(Feed("250 Ok\r\n550 no\r\n"), "");
  EXPECT_EQ(Feed("250 Ok\r\n"), absl::StrCat("BDAT ", body_.size(), " LAST\r\n", body_));
  EXPECT_EQ(Feed("250 2.0.0 Ok\r\n"), "");
  EXPECT_EQ(Replies(Result()), (std::vector<std::string>{"550 no", "250 2.0.0 Ok"}));
  // All refused: the content is never sent.
  EXPECT_EQ(Start(Message({"a@example.com"})),
            absl::StrCat(Mail(body_.size()), "RCPT TO:<a@example.com>\r\n"));
  EXPECT_EQ(Feed("250 Ok\r\n450 4.2.1 later\r\n"), "RSET\r\n");
  EXPECT_EQ(Replies(Result()), std::vector<std::string>{"450 4.2.1 later"});
}

TEST_P(ClientSessionTest, BdatFinalFailure) {
  options_.use_chunking = true;
  Connect();
  Start(Message({"a@example.com"}));
  EXPECT_EQ(Feed("250 Ok\r\n250 Ok\r\n552 5.3.4 too big\r\n"), "RSET\r\n");
  EXPECT_EQ(Replies(Result()), std::vector<std::string>{"552 5.3.4 too big"});
}

TEST_P(ClientSessionTest, BdatEmptyContent) {
  options_.use_chunking = true;
  Connect();
  std::string empty;
  EXPECT_EQ(Start(Message({"a@example.com"}, &empty)),
            absl::StrCat(Mail(0), "RCPT TO:<a@example.com>\r\nBDAT 0 LAST\r\n"));
}

}  // namespace
}  // namespace mta::smtp
