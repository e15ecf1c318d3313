// ClientSession setup: options and preconditions, greeting, EHLO/HELO and capabilities, STARTTLS.

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
// Options and preconditions.

TEST(ClientSessionCreateTest, RejectsBadOptions) {
  ClientSessionOptions o;
  EXPECT_EQ(ClientSession::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.helo_name = "bad name";
  EXPECT_EQ(ClientSession::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.helo_name = "bad\r\nname";
  EXPECT_EQ(ClientSession::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.helo_name = "client.example";
  o.max_reply_line_bytes = 100;
  EXPECT_EQ(ClientSession::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.max_reply_line_bytes = 4096;
  o.max_reply_bytes = 1000;
  EXPECT_EQ(ClientSession::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.max_reply_bytes = 8192;
  EXPECT_TRUE(ClientSession::Create(o).ok());
  o.helo_name = "[192.0.2.1]";
  EXPECT_TRUE(ClientSession::Create(o).ok());
}

TEST(ClientSessionTimeoutTest, Rfc5321Values) {
  EXPECT_EQ(ClientSession::DefaultTimeout(Phase::kGreeting), absl::Minutes(5));
  EXPECT_EQ(ClientSession::DefaultTimeout(Phase::kCommand), absl::Minutes(5));
  EXPECT_EQ(ClientSession::DefaultTimeout(Phase::kDataInit), absl::Minutes(2));
  EXPECT_EQ(ClientSession::DefaultTimeout(Phase::kDataBlock), absl::Minutes(3));
  EXPECT_EQ(ClientSession::DefaultTimeout(Phase::kFinalDot), absl::Minutes(10));
  EXPECT_EQ(ClientSession::DefaultTimeout(Phase::kReady), absl::InfiniteDuration());
  EXPECT_EQ(ClientSession::DefaultTimeout(Phase::kStartTls), absl::InfiniteDuration());
  EXPECT_EQ(ClientSession::DefaultTimeout(Phase::kClosed), absl::InfiniteDuration());
}

TEST_P(ClientSessionTest, StartTransactionPreconditions) {
  Create();
  EXPECT_EQ(cs_->StartTransaction(Message({"a@example.com"})).code(),
            absl::StatusCode::kFailedPrecondition);  // no greeting yet
  Feed(kGreeting);
  Feed(EhloReply(kAllCaps));
  EXPECT_EQ(cs_->StartTransaction(Message({})).code(), absl::StatusCode::kInvalidArgument);
  OutboundMessage m = Message({"a@example.com"});
  m.content = nullptr;
  EXPECT_EQ(cs_->StartTransaction(m).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Drain(), "");
  EXPECT_TRUE(cs_->StartTransaction(Message({"a@example.com"})).ok());
  EXPECT_EQ(cs_->StartTransaction(Message({"a@example.com"})).code(),
            absl::StatusCode::kFailedPrecondition);  // one at a time
  EXPECT_EQ(cs_->Quit().code(), absl::StatusCode::kFailedPrecondition);
  Drain();
  Feed("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 Go\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kFinalDot);
  Feed("250 2.0.0 Ok\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kReady);
  // The result must be taken before the next transaction starts.
  EXPECT_EQ(cs_->StartTransaction(Message({"a@example.com"})).code(),
            absl::StatusCode::kFailedPrecondition);
  Result();
  EXPECT_TRUE(cs_->StartTransaction(Message({"a@example.com"})).ok());
}

// ---------------------------------------------------------------------------------------
// Greeting, EHLO, capabilities.

TEST_P(ClientSessionTest, GreetingAndCapabilities) {
  Connect({"PIPELINING", "size 35882577", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING",
           "DSN", "AUTH LOGIN PLAIN", "STARTTLS"});
  EXPECT_EQ(cs_->greeting().code, 220);
  EXPECT_EQ(cs_->greeting().ToString(), "220 mx.example.net ESMTP ready");
  EXPECT_EQ(cs_->ehlo_reply().lines.size(), 10u);
  const ServerCapabilities& c = cs_->capabilities();
  EXPECT_TRUE(c.esmtp);
  EXPECT_TRUE(c.pipelining);
  EXPECT_TRUE(c.size);
  EXPECT_EQ(c.size_max, 35882577u);
  EXPECT_TRUE(c.eight_bit_mime);
  EXPECT_TRUE(c.smtputf8);
  EXPECT_TRUE(c.enhanced_status_codes);
  EXPECT_TRUE(c.chunking);
  EXPECT_TRUE(c.dsn);
  EXPECT_TRUE(c.starttls);  // offered, but TlsPolicy::kNone: not used
  EXPECT_EQ(c.server_name, "mx.example.net");
  EXPECT_EQ(c.ToString(),
            "PIPELINING SIZE=35882577 8BITMIME SMTPUTF8 CHUNKING DSN STARTTLS "
            "ENHANCEDSTATUSCODES");
  EXPECT_FALSE(cs_->tls_active());
  EXPECT_FALSE(cs_->error().has_value());
}

TEST_P(ClientSessionTest, MultiLineGreetingAndBareLfLineEnds) {
  Create();
  EXPECT_EQ(Feed("220-mx.example.net ESMTP\r\n220-no UCE\n220 really\r\n"), kEhloCmd);
  EXPECT_EQ(cs_->greeting().lines,
            (std::vector<std::string>{"mx.example.net ESMTP", "no UCE", "really"}));
  // "250" with no text at all is a valid final line (RFC 5321 section 4.2).
  EXPECT_EQ(Feed("250-mx.example.net\n250-PIPELINING\r\n250\r\n"), "");
  EXPECT_EQ(cs_->phase(), Phase::kReady);
  EXPECT_TRUE(cs_->capabilities().pipelining);
  EXPECT_FALSE(cs_->capabilities().size);
}

TEST_P(ClientSessionTest, SizeWithoutLimit) {
  Connect({"SIZE", "8BITMIME"});
  EXPECT_TRUE(cs_->capabilities().size);
  EXPECT_EQ(cs_->capabilities().size_max, 0u);
  std::string big(100000, 'x');
  big += "\r\n";
  EXPECT_EQ(Start(Message({"a@example.com"}, &big)), Mail(big.size()));
}

TEST_P(ClientSessionTest, HeloFallbackAfterEhlo502) {
  Create();
  EXPECT_EQ(Feed(kGreeting), kEhloCmd);
  EXPECT_EQ(Feed("502 5.5.2 Command not recognized\r\n"), "HELO client.example\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kCommand);
  EXPECT_EQ(Feed("250 mx.example.net\r\n"), "");
  EXPECT_EQ(cs_->phase(), Phase::kReady);
  EXPECT_FALSE(cs_->capabilities().esmtp);
  EXPECT_EQ(cs_->capabilities().ToString(), "(HELO: no extensions)");
  EXPECT_EQ(cs_->ehlo_reply().ToString(), "250 mx.example.net");
  // No extensions: lockstep and no parameters at all.
  OutboundMessage m = Message({"a@example.com"});
  m.recipients[0].notify = queue::kNotifyFailure;
  m.ret = queue::DsnRet::kFull;
  EXPECT_EQ(Start(m), "MAIL FROM:<sender@example.org>\r\n");
  EXPECT_EQ(Feed("250 ok\r\n"), "RCPT TO:<a@example.com>\r\n");
  EXPECT_EQ(Feed("250 ok\r\n"), "DATA\r\n");
  EXPECT_EQ(Feed("354 go\r\n"), DotStuffed(kBody));
  EXPECT_EQ(Feed("250 queued\r\n"), "");
  EXPECT_EQ(Replies(Result()), std::vector<std::string>{"250 queued"});
}

TEST_P(ClientSessionTest, HeloRefusedToo) {
  Create();
  Feed(kGreeting);
  EXPECT_EQ(Feed("500 what\r\n"), "HELO client.example\r\n");
  EXPECT_EQ(Feed("550 go away\r\n"), "QUIT\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kQuit);
  ASSERT_TRUE(cs_->error().has_value());
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kHelo);
  EXPECT_EQ(cs_->error()->reply.ToString(), "550 go away");
  Feed("221 bye\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kHelo);
}

TEST_P(ClientSessionTest, EhloTemporaryFailure) {
  Create();
  Feed(kGreeting);
  EXPECT_EQ(Feed("451 4.3.0 try later\r\n"), "QUIT\r\n");
  ASSERT_TRUE(cs_->error().has_value());
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kHelo);
}

TEST_P(ClientSessionTest, GreetingRefused) {
  Create();
  EXPECT_EQ(Feed("554 5.7.1 No SMTP service here\r\n"), "QUIT\r\n");
  ASSERT_TRUE(cs_->error().has_value());
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kGreeting);
  EXPECT_EQ(cs_->error()->reply.ToString(), "554 5.7.1 No SMTP service here");
  EXPECT_FALSE(cs_->error()->reply.local);
  EXPECT_EQ(cs_->phase(), Phase::kQuit);
  EXPECT_EQ(cs_->StartTransaction(Message({"a@example.com"})).code(),
            absl::StatusCode::kFailedPrecondition);
  Feed("221 2.0.0 Bye\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
}

TEST_P(ClientSessionTest, Greeting421ClosesWithoutQuit) {
  Create();
  EXPECT_EQ(Feed("421 4.7.0 mx.example.net Too many connections\r\n"), "");
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
  ASSERT_TRUE(cs_->error().has_value());
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kGreeting);
  EXPECT_EQ(cs_->error()->reply.code, 421);
  EXPECT_EQ(cs_->greeting().code, 421);
}

TEST_P(ClientSessionTest, GreetingTemporaryRefusal) {
  Create();
  EXPECT_EQ(Feed("450 busy\r\n"), "QUIT\r\n");
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kGreeting);
  EXPECT_TRUE(cs_->error()->reply.transient());
  // The server hangs up instead of answering QUIT: nothing more to report.
  cs_->OnConnectionLost("EOF");
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kGreeting);
}

// ---------------------------------------------------------------------------------------
// STARTTLS (RFC 3207).

TEST_P(ClientSessionTest, StartTlsHandOff) {
  options_.tls = TlsPolicy::kOpportunistic;
  Create();
  EXPECT_EQ(Feed(kGreeting), kEhloCmd);
  EXPECT_EQ(Feed(EhloReply({"PIPELINING", "SIZE 100", "STARTTLS", "ENHANCEDSTATUSCODES"})),
            "STARTTLS\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kCommand);
  EXPECT_EQ(Feed("220 2.0.0 Ready to start TLS\r\n"), "");
  EXPECT_EQ(cs_->phase(), Phase::kStartTls);
  EXPECT_EQ(cs_->StartTransaction(Message({"a@example.com"})).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(cs_->OnTlsEstablished().ok());
  EXPECT_TRUE(cs_->tls_active());
  // Everything learnt before TLS is forgotten; EHLO again.
  EXPECT_FALSE(cs_->capabilities().pipelining);
  EXPECT_FALSE(cs_->capabilities().starttls);
  EXPECT_EQ(Drain(), kEhloCmd);
  EXPECT_EQ(cs_->phase(), Phase::kCommand);
  // The new list has no PIPELINING and a larger SIZE; STARTTLS is not sent twice.
  EXPECT_EQ(Feed(EhloReply({"SIZE 1000000", "8BITMIME", "STARTTLS"})), "");
  EXPECT_EQ(cs_->phase(), Phase::kReady);
  EXPECT_EQ(cs_->capabilities().size_max, 1000000u);
  EXPECT_FALSE(cs_->capabilities().pipelining);
  EXPECT_EQ(Start(Message({"a@example.com"})), Mail(body_.size()));  // lockstep now
  EXPECT_EQ(cs_->OnTlsEstablished().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_P(ClientSessionTest, StartTlsRefusedOpportunistic) {
  options_.tls = TlsPolicy::kOpportunistic;
  Create();
  Feed(kGreeting);
  EXPECT_EQ(Feed(EhloReply({"PIPELINING", "STARTTLS"})), "STARTTLS\r\n");
  EXPECT_EQ(Feed("454 4.7.0 TLS not available due to temporary reason\r\n"), "");
  EXPECT_EQ(cs_->phase(), Phase::kReady);  // plain text, same capabilities, no new EHLO
  EXPECT_FALSE(cs_->tls_active());
  EXPECT_TRUE(cs_->capabilities().pipelining);
  EXPECT_EQ(cs_->starttls_reply().code, 454);
  EXPECT_FALSE(cs_->error().has_value());
}

TEST_P(ClientSessionTest, StartTlsRefusedRequired) {
  options_.tls = TlsPolicy::kRequire;
  Create();
  Feed(kGreeting);
  EXPECT_EQ(Feed(EhloReply({"STARTTLS"})), "STARTTLS\r\n");
  EXPECT_EQ(Feed("454 4.7.0 TLS not available\r\n"), "QUIT\r\n");
  ASSERT_TRUE(cs_->error().has_value());
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kTlsUnavailable);
  EXPECT_EQ(cs_->error()->reply.code, 454);
  Feed("221 Bye\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
}

TEST_P(ClientSessionTest, StartTlsNotOfferedRequired) {
  options_.tls = TlsPolicy::kRequire;
  Create();
  Feed(kGreeting);
  EXPECT_EQ(Feed(EhloReply({"PIPELINING"})), "QUIT\r\n");
  ASSERT_TRUE(cs_->error().has_value());
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kTlsUnavailable);
  EXPECT_EQ(cs_->error()->reply.enhanced, "4.7.4");
  EXPECT_TRUE(cs_->error()->reply.local);
}

TEST_P(ClientSessionTest, StartTlsNotOfferedOpportunistic) {
  options_.tls = TlsPolicy::kOpportunistic;
  Create();
  Feed(kGreeting);
  EXPECT_EQ(Feed(EhloReply({"PIPELINING"})), "");
  EXPECT_EQ(cs_->phase(), Phase::kReady);
}

TEST_P(ClientSessionTest, StartTlsHandshakeFailure) {
  options_.tls = TlsPolicy::kOpportunistic;
  Create();
  Feed(kGreeting);
  Feed(EhloReply({"STARTTLS"}));
  EXPECT_EQ(cs_->OnTlsFailed("too early").code(), absl::StatusCode::kFailedPrecondition);
  Feed("220 go ahead\r\n");
  ASSERT_TRUE(cs_->OnTlsFailed("certificate verify failed\n").ok());
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
  ASSERT_TRUE(cs_->error().has_value());
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kTlsFailed);
  EXPECT_EQ(cs_->error()->reply.ToString(),
            "451 4.7.5 TLS handshake failed: certificate verify failed?");
  EXPECT_EQ(Drain(), "");
}

TEST_P(ClientSessionTest, StartTlsResponseInjectionRejected) {
  options_.tls = TlsPolicy::kOpportunistic;
  Create();
  Feed(kGreeting);
  Feed(EhloReply({"STARTTLS"}));
  // A man in the middle appends a plain-text reply to be read "inside" TLS later.
  EXPECT_EQ(Feed("220 go ahead\r\n250-evil\r\n250 PIPELINING\r\n"), "");
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
  ASSERT_TRUE(cs_->error().has_value());
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kProtocol);
  EXPECT_EQ(cs_->OnTlsEstablished().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_P(ClientSessionTest, StartTls421) {
  options_.tls = TlsPolicy::kOpportunistic;
  Create();
  Feed(kGreeting);
  Feed(EhloReply({"STARTTLS"}));
  EXPECT_EQ(Feed("421 4.3.2 shutting down\r\n"), "");
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kServerClosing);
}

}  // namespace
}  // namespace mta::smtp
