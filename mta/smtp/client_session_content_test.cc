// ClientSession message content (dot-stuffing, streaming) and ESMTP parameters and refusals.

#include <memory>
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

}  // namespace
}  // namespace mta::smtp
