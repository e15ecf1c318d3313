// Unit tests for the SMTP client state machine: each test plays the server byte by byte
// and checks what the client sends and what it reports. Every test runs three times, with
// the server's bytes delivered whole, one byte at a time, and in 7-byte pieces; the
// results must be identical.
#include "mta/smtp/client_session.h"

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "queue/envelope.h"

namespace mta::smtp {
namespace {

using Phase = ClientSession::Phase;

constexpr char kGreeting[] = "220 mx.example.net ESMTP ready\r\n";
constexpr char kEhloCmd[] = "EHLO client.example\r\n";
constexpr char kBody[] = "Subject: hi\r\n\r\nHello\r\n";

const std::vector<std::string> kAllCaps = {
    "PIPELINING",          "SIZE 10000000", "8BITMIME", "SMTPUTF8",
    "ENHANCEDSTATUSCODES", "CHUNKING",      "DSN",      "HELP"};

std::string EhloReply(const std::vector<std::string>& caps) {
  std::string out = "250";
  out += caps.empty() ? " " : "-";
  out += "mx.example.net Hello client.example\r\n";
  for (size_t i = 0; i < caps.size(); ++i) {
    absl::StrAppend(&out, i + 1 == caps.size() ? "250 " : "250-", caps[i], "\r\n");
  }
  return out;
}

std::vector<std::string> Without(std::vector<std::string> caps, absl::string_view drop) {
  std::vector<std::string> out;
  for (std::string& c : caps) {
    if (c.rfind(std::string(drop), 0) != 0) out.push_back(std::move(c));
  }
  return out;
}

// The DATA transformation, written the obvious way as a reference.
std::string DotStuffed(absl::string_view content) {
  std::string out;
  bool line_start = true;
  for (char c : content) {
    if (line_start && c == '.') out += '.';
    out += c;
    line_start = c == '\n';
  }
  if (!content.empty() &&
      content.substr(content.size() - std::min<size_t>(2, content.size())) != "\r\n") {
    out += "\r\n";
  }
  return out + ".\r\n";
}

std::vector<std::string> Replies(const TransactionResult& r) {
  std::vector<std::string> out;
  for (const ServerReply& reply : r.recipients) out.push_back(reply.ToString());
  return out;
}

class ClientSessionTest : public ::testing::TestWithParam<size_t> {
 protected:
  ClientSessionTest() {
    options_.helo_name = "client.example";
    options_.tls = TlsPolicy::kNone;
  }

  void Create() {
    auto s = ClientSession::Create(options_);
    ASSERT_TRUE(s.ok()) << s.status();
    cs_ = *std::move(s);
    EXPECT_EQ(cs_->phase(), Phase::kGreeting);
  }

  // Everything the client wants to send, drained in one go.
  std::string Drain() {
    std::string out;
    while (!cs_->output().empty()) {
      absl::string_view o = cs_->output();
      out.append(o.data(), o.size());
      cs_->ConsumeOutput(o.size());
    }
    return out;
  }

  // Plays the server: delivers `bytes` in pieces of GetParam() bytes (0 = all at once) and
  // returns what the client sent in answer.
  std::string Feed(absl::string_view bytes) {
    size_t piece = GetParam() == 0 ? bytes.size() : GetParam();
    while (!bytes.empty()) {
      size_t n = std::min(piece, bytes.size());
      cs_->OnInput(bytes.substr(0, n));
      bytes.remove_prefix(n);
    }
    return Drain();
  }

  // Greeting and EHLO with `caps`; leaves the session ready.
  void Connect(const std::vector<std::string>& caps = kAllCaps) {
    Create();
    ASSERT_EQ(Feed(kGreeting), kEhloCmd);
    EXPECT_EQ(cs_->phase(), Phase::kCommand);
    ASSERT_EQ(Feed(EhloReply(caps)), "");
    ASSERT_EQ(cs_->phase(), Phase::kReady);
  }

  OutboundMessage Message(const std::vector<std::string>& rcpts,
                          const std::string* content = nullptr) {
    OutboundMessage m;
    m.sender = "sender@example.org";
    for (const std::string& r : rcpts) m.recipients.push_back({r, 0, ""});
    m.content = content != nullptr ? content : &body_;
    return m;
  }

  // Starts `m` and returns the client's first write.
  std::string Start(OutboundMessage m) {
    absl::Status s = cs_->StartTransaction(std::move(m));
    EXPECT_TRUE(s.ok()) << s;
    return Drain();
  }

  TransactionResult Result() {
    std::optional<TransactionResult> r = cs_->TakeResult();
    if (!r.has_value()) {
      ADD_FAILURE() << "no transaction result";
      return TransactionResult();
    }
    EXPECT_FALSE(cs_->has_result());
    return *std::move(r);
  }

  std::string Mail(size_t size, absl::string_view extra = "") {
    return absl::StrCat("MAIL FROM:<sender@example.org> SIZE=", size, extra, "\r\n");
  }

  ClientSessionOptions options_;
  std::unique_ptr<ClientSession> cs_;
  std::string body_ = kBody;
};

INSTANTIATE_TEST_SUITE_P(Delivery, ClientSessionTest, ::testing::Values(0, 1, 7),
                         [](const ::testing::TestParamInfo<size_t>& info) {
                           return info.param == 0 ? std::string("Whole")
                                                  : absl::StrCat("Pieces", info.param);
                         });

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

// ---------------------------------------------------------------------------------------
// Content: dot-stuffing, final CRLF, streaming.

TEST_P(ClientSessionTest, DotStuffing) {
  Connect();
  std::string content =
      ".starts with a dot\r\n"
      "middle . dot\r\n"
      ".\r\n"
      "..two dots\r\n"
      "\r\n"
      ". space\r\n"
      "last\r\n";
  Start(Message({"a@example.com"}, &content));
  EXPECT_EQ(Feed("250 Ok\r\n250 Ok\r\n354 go\r\n"),
            "..starts with a dot\r\n"
            "middle . dot\r\n"
            "..\r\n"
            "...two dots\r\n"
            "\r\n"
            ".. space\r\n"
            "last\r\n"
            ".\r\n");
}

TEST_P(ClientSessionTest, ContentWithoutFinalCrlf) {
  Connect();
  std::string content = "Subject: x\r\n\r\n.no newline at the end";
  // SIZE counts the CRLF that will be added.
  EXPECT_EQ(Start(Message({"a@example.com"}, &content)),
            absl::StrCat(Mail(content.size() + 2), "RCPT TO:<a@example.com>\r\nDATA\r\n"));
  EXPECT_EQ(Feed("250 Ok\r\n250 Ok\r\n354 go\r\n"),
            "Subject: x\r\n\r\n..no newline at the end\r\n.\r\n");
  std::string just_dot = ".";
  Feed("250 Ok\r\n");
  Result();
  Start(Message({"a@example.com"}, &just_dot));
  EXPECT_EQ(Feed("250 Ok\r\n250 Ok\r\n354 go\r\n"), "..\r\n.\r\n");
}

TEST_P(ClientSessionTest, EmptyContentViaData) {
  Connect();
  std::string empty;
  Start(Message({"a@example.com"}, &empty));
  EXPECT_EQ(Feed("250 Ok\r\n250 Ok\r\n354 go\r\n"), ".\r\n");
  EXPECT_EQ(Feed("250 Ok\r\n"), "");
  EXPECT_EQ(Result().CountDelivered(), 1u);
}

TEST_P(ClientSessionTest, LargeContentIsStreamedWithBoundedBuffer) {
  Connect();
  // Lines of varying length, many starting with '.', so that dots fall on the internal
  // chunk boundaries too.
  std::string content = "Subject: big\r\n\r\n";
  auto add_lines = [&content](size_t up_to) {
    for (int i = 0; content.size() < up_to; ++i) {
      content += (i % 7 == 0 ? "." : "") + std::string(i % 97, 'x') + "\r\n";
      if (i % 5 == 0) content += ".\r\n";
    }
  };
  add_lines(65536 - 300);
  // A line starting with a dot exactly at the start of the second 64 KiB chunk.
  content += std::string(65536 - content.size() - 2, 'y') + "\r\n";
  ASSERT_EQ(content.size(), 65536u);
  content += ".at the boundary\r\n";
  add_lines(3 * 1024 * 1024);
  Start(Message({"a@example.com"}, &content));
  EXPECT_EQ(Feed("250 Ok\r\n250 Ok\r\n"), "");
  cs_->OnInput("354 go\r\n");
  std::string sent;
  size_t max_buffered = 0;
  while (!cs_->output().empty()) {
    EXPECT_EQ(cs_->phase(), Phase::kDataBlock);
    absl::string_view o = cs_->output();
    max_buffered = std::max(max_buffered, o.size());
    size_t n = std::min<size_t>(o.size(), 4093);  // the transport takes odd-sized writes
    sent.append(o.data(), n);
    cs_->ConsumeOutput(n);
  }
  EXPECT_EQ(cs_->phase(), Phase::kFinalDot);
  EXPECT_LE(max_buffered, 256u * 1024);
  EXPECT_TRUE(sent == DotStuffed(content)) << "stuffed content differs";
  EXPECT_EQ(Feed("250 Ok\r\n"), "");
  EXPECT_TRUE(Result().content_sent);
}

TEST_P(ClientSessionTest, PhaseIsDataBlockUntilTheLastByteIsTaken) {
  Connect();
  Start(Message({"a@example.com"}));
  Feed("250 Ok\r\n250 Ok\r\n");
  cs_->OnInput("354 go\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kDataBlock);
  cs_->ConsumeOutput(cs_->output().size() - 1);
  EXPECT_EQ(cs_->phase(), Phase::kDataBlock);
  cs_->ConsumeOutput(1);
  EXPECT_EQ(cs_->phase(), Phase::kFinalDot);
}

TEST_P(ClientSessionTest, ReplyBeforeEndOfContentStopsSending) {
  Connect();
  Start(Message({"a@example.com", "b@example.com"}));
  Feed("250 Ok\r\n250 Ok\r\n550 no\r\n");
  cs_->OnInput("354 go\r\n");
  ASSERT_FALSE(cs_->output().empty());
  cs_->ConsumeOutput(5);  // part of the message is on its way
  // The server refuses before the message ended: what is left must not be sent, since the
  // server would read it as commands.
  Feed("552 5.3.4 Message too big\r\n");
  EXPECT_EQ(cs_->output(), "");
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
  ASSERT_TRUE(cs_->error().has_value());
  EXPECT_EQ(cs_->error()->kind, ClientErrorKind::kProtocol);
  TransactionResult r = Result();
  EXPECT_EQ(Replies(r), (std::vector<std::string>{"552 5.3.4 Message too big", "550 no"}));
  EXPECT_FALSE(r.content_sent);
}

TEST_P(ClientSessionTest, EarlySuccessReplyIsNotTrusted) {
  Connect();
  Start(Message({"a@example.com"}));
  Feed("250 Ok\r\n250 Ok\r\n");
  cs_->OnInput("354 go\r\n");
  cs_->ConsumeOutput(3);
  Feed("250 Ok\r\n");
  EXPECT_EQ(cs_->phase(), Phase::kClosed);
  TransactionResult r = Result();
  ASSERT_EQ(r.recipients.size(), 1u);
  EXPECT_TRUE(r.recipients[0].transient());
  EXPECT_TRUE(r.recipients[0].local);
}

// ---------------------------------------------------------------------------------------
// ESMTP parameters and refusals before sending.

TEST_P(ClientSessionTest, DsnParametersWhenOffered) {
  Connect();
  OutboundMessage m = Message({"a@example.com", "b@example.com", "c@example.com"});
  m.ret = queue::DsnRet::kHeaders;
  m.envid = "id+1=x y";
  m.recipients[0].notify = queue::kNotifySuccess | queue::kNotifyFailure;
  m.recipients[0].orcpt = "rfc822;a+b=c@example.com";
  m.recipients[1].notify = queue::kNotifyNever;
  m.recipients[2].notify = queue::kNotifyDelay | queue::kNotifyFailure | queue::kNotifySuccess;
  m.recipients[2].orcpt = "no-type";  // unusable: left out
  EXPECT_EQ(Start(m), absl::StrCat(Mail(body_.size(), " RET=HDRS ENVID=id+2B1+3Dx+20y"),
                                   "RCPT TO:<a@example.com> NOTIFY=SUCCESS,FAILURE "
                                   "ORCPT=rfc822;a+2Bb+3Dc@example.com\r\n"
                                   "RCPT TO:<b@example.com> NOTIFY=NEVER\r\n"
                                   "RCPT TO:<c@example.com> NOTIFY=SUCCESS,FAILURE,DELAY\r\n"
                                   "DATA\r\n"));
}

TEST_P(ClientSessionTest, NoDsnParametersWithoutDsn) {
  Connect(Without(kAllCaps, "DSN"));
  OutboundMessage m = Message({"a@example.com"});
  m.ret = queue::DsnRet::kFull;
  m.envid = "x";
  m.recipients[0].notify = queue::kNotifyFailure;
  m.recipients[0].orcpt = "rfc822;a@example.com";
  EXPECT_EQ(Start(m), absl::StrCat(Mail(body_.size()), "RCPT TO:<a@example.com>\r\nDATA\r\n"));
}

TEST_P(ClientSessionTest, NoSizeParameterWithoutSize) {
  Connect({"PIPELINING"});
  EXPECT_EQ(Start(Message({"a@example.com"})),
            "MAIL FROM:<sender@example.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n");
}

TEST_P(ClientSessionTest, NullSender) {
  Connect();
  OutboundMessage m = Message({"a@example.com"});
  m.sender = "";
  EXPECT_EQ(Start(m), absl::StrCat("MAIL FROM:<> SIZE=", body_.size(),
                                   "\r\nRCPT TO:<a@example.com>\r\nDATA\r\n"));
}

TEST_P(ClientSessionTest, SizeRefusedBeforeSending) {
  Connect({"PIPELINING", "SIZE 10", "8BITMIME"});
  EXPECT_EQ(Start(Message({"a@example.com", "b@example.com"})), "");  // nothing sent
  EXPECT_EQ(cs_->phase(), Phase::kReady);                             // no RSET needed
  TransactionResult r = Result();
  ASSERT_EQ(r.recipients.size(), 2u);
  for (const ServerReply& reply : r.recipients) {
    EXPECT_EQ(reply.code, 552);
    EXPECT_EQ(reply.enhanced, "5.3.4");
    EXPECT_TRUE(reply.local);
  }
  EXPECT_EQ(r.recipients[0].ToString(),
            absl::StrCat("552 5.3.4 message size ", body_.size(),
                         " exceeds the fixed maximum message size 10 of the server"));
  EXPECT_TRUE(r.mail_reply.empty());
  // The connection stays usable for a smaller message.
  std::string small = "x\r\n";
  EXPECT_EQ(Start(Message({"a@example.com"}, &small)),
            "MAIL FROM:<sender@example.org> SIZE=3\r\nRCPT TO:<a@example.com>\r\nDATA\r\n");
}

TEST_P(ClientSessionTest, EightBitContentNeeds8BitMime) {
  Connect(Without(kAllCaps, "8BITMIME"));
  std::string content = "Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve\r\n";
  EXPECT_EQ(Start(Message({"a@example.com"}, &content)), "");
  TransactionResult r = Result();
  ASSERT_EQ(r.recipients.size(), 1u);
  EXPECT_EQ(r.recipients[0].code, 554);
  EXPECT_EQ(r.recipients[0].enhanced, "5.6.3");
  EXPECT_TRUE(r.recipients[0].local);
  // Declared BODY=8BITMIME but 7-bit clean content goes through unchanged, without BODY.
  OutboundMessage m = Message({"a@example.com"});
  m.body_type = queue::BodyType::k8BitMime;
  EXPECT_EQ(Start(m), absl::StrCat(Mail(body_.size()), "RCPT TO:<a@example.com>\r\nDATA\r\n"));
}

TEST_P(ClientSessionTest, EightBitContentAnnouncedWith8BitMime) {
  Connect();
  std::string content = "Subject: x\r\n\r\nna\xc3\xafve\r\n";
  EXPECT_EQ(
      Start(Message({"a@example.com"}, &content)),
      absl::StrCat(Mail(content.size(), " BODY=8BITMIME"), "RCPT TO:<a@example.com>\r\nDATA\r\n"));
  Feed("250 Ok\r\n250 Ok\r\n354 go\r\n");
  Feed("250 Ok\r\n");  // the final reply can only follow the content
  Result();
  OutboundMessage m = Message({"a@example.com"});
  m.body_type = queue::BodyType::k8BitMime;
  EXPECT_EQ(Start(m), absl::StrCat(Mail(body_.size(), " BODY=8BITMIME"),
                                   "RCPT TO:<a@example.com>\r\nDATA\r\n"));
}

TEST_P(ClientSessionTest, NonAsciiAddressNeedsSmtpUtf8) {
  Connect(Without(kAllCaps, "SMTPUTF8"));
  OutboundMessage m = Message({"a@example.com", "jos\xc3\xa9@example.com"});
  EXPECT_EQ(Start(m), "");
  TransactionResult r = Result();
  ASSERT_EQ(r.recipients.size(), 2u);
  for (const ServerReply& reply : r.recipients) {
    EXPECT_EQ(reply.code, 553);
    EXPECT_EQ(reply.enhanced, "5.6.7");
    EXPECT_TRUE(reply.local);
  }
  // A UTF-8 sender too.
  m = Message({"a@example.com"});
  m.sender = "s\xc3\xa9nder@example.org";
  EXPECT_EQ(Start(m), "");
  EXPECT_EQ(Result().recipients[0].enhanced, "5.6.7");
}

TEST_P(ClientSessionTest, SmtpUtf8FlagWithAsciiMessageGoesToOldServer) {
  Connect(Without(kAllCaps, "SMTPUTF8"));
  OutboundMessage m = Message({"a@example.com"});
  m.smtputf8 = true;  // asked for, but nothing in the envelope or headers needs it
  EXPECT_EQ(Start(m), absl::StrCat(Mail(body_.size()), "RCPT TO:<a@example.com>\r\nDATA\r\n"));
  Feed("250 Ok\r\n250 Ok\r\n354 go\r\n");
  Feed("250 Ok\r\n");  // the final reply can only follow the content
  Result();
  // A UTF-8 header, though, needs it.
  std::string content = "Subject: \xc3\xa9t\xc3\xa9\r\n\r\nbody\r\n";
  m = Message({"a@example.com"}, &content);
  m.smtputf8 = true;
  EXPECT_EQ(Start(m), "");
  EXPECT_EQ(Result().recipients[0].enhanced, "5.6.7");
}

TEST_P(ClientSessionTest, SmtpUtf8SentWhenOfferedAndNeeded) {
  Connect();
  OutboundMessage m = Message({"jos\xc3\xa9@example.com"});
  EXPECT_EQ(Start(m), absl::StrCat(Mail(body_.size(), " SMTPUTF8"),
                                   "RCPT TO:<jos\xc3\xa9@example.com>\r\nDATA\r\n"));
  Feed("250 Ok\r\n250 Ok\r\n354 go\r\n");
  Feed("250 Ok\r\n");  // the final reply can only follow the content
  Result();
  m = Message({"a@example.com"});
  m.smtputf8 = true;
  EXPECT_EQ(Start(m),
            absl::StrCat(Mail(body_.size(), " SMTPUTF8"), "RCPT TO:<a@example.com>\r\nDATA\r\n"));
}

TEST_P(ClientSessionTest, BareLineBreaksRefused) {
  Connect();
  for (std::string content : {std::string("Subject: x\n\nbody\n"), std::string("a\r\n.\n.\r\n"),
                              std::string("a\rb\r\n"), std::string("ends with CR\r")}) {
    EXPECT_EQ(Start(Message({"a@example.com"}, &content)), "") << absl::CHexEscape(content);
    TransactionResult r = Result();
    ASSERT_EQ(r.recipients.size(), 1u);
    EXPECT_EQ(r.recipients[0].code, 554);
    EXPECT_EQ(r.recipients[0].enhanced, "5.6.0");
  }
}

TEST_P(ClientSessionTest, InvalidAddressesNeverReachTheWire) {
  Connect();
  OutboundMessage m = Message({"a@example.com", "x@example.com>\r\nRSET", "no-domain",
                               "\"quoted local\"@example.com", "postmaster"});
  EXPECT_EQ(Start(m), absl::StrCat(Mail(body_.size()),
                                   "RCPT TO:<a@example.com>\r\n"
                                   "RCPT TO:<\"quoted local\"@example.com>\r\n"
                                   "RCPT TO:<postmaster>\r\n"
                                   "DATA\r\n"));
  EXPECT_EQ(Feed("250 Ok\r\n250 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n"), DotStuffed(kBody));
  Feed("250 2.0.0 Ok\r\n");
  TransactionResult r = Result();
  ASSERT_EQ(r.recipients.size(), 5u);
  EXPECT_EQ(r.recipients[0].code, 250);
  EXPECT_EQ(r.recipients[1].code, 553);
  EXPECT_EQ(r.recipients[1].enhanced, "5.1.3");
  EXPECT_TRUE(r.recipients[1].local);
  EXPECT_EQ(r.recipients[1].lines[0].find_first_of("\r\n"), std::string::npos);
  EXPECT_EQ(r.recipients[2].code, 553);
  EXPECT_EQ(r.recipients[3].code, 250);
  EXPECT_EQ(r.recipients[4].code, 250);
  // A bad sender refuses the whole message.
  m = Message({"a@example.com"});
  m.sender = "bad sender@example.org";
  EXPECT_EQ(Start(m), "");
  EXPECT_EQ(Result().recipients[0].enhanced, "5.1.7");
}

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
