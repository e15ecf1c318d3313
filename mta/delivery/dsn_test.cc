#include "mta/delivery/dsn.h"

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace mta::delivery {
namespace {

using queue::Envelope;
using queue::Recipient;

Envelope Original() {
  Envelope e;
  e.id = "0000000000aa00000001";
  e.sender = "sender@example.com";
  e.envid = "env-42";
  e.received_ms = 1796400000000;
  e.stream = "transactional";
  Recipient a;
  a.address = "gone@example.net";
  a.orcpt = "rfc822;gone@example.net";
  Recipient b;
  b.address = "ok@example.net";
  b.notify = queue::kNotifySuccess;
  e.recipients = {a, b};
  return e;
}

const char kContent[] =
    "Received: from x\r\nSubject: hello\r\nMessage-ID: <m1@example.com>\r\n\r\nBody line\r\n";

DsnOptions Options() {
  return {.reporting_mta = "mx.example.org",
          .dsn_id = "0000000000bb00000002",
          .now = absl::FromUnixSeconds(1796403600)};
}

TEST(DsnTest, FailureReportHasRfc3464Structure) {
  Envelope orig = Original();
  auto dsn = BuildDsn(Options(), orig, kContent,
                      {{.index = 0,
                        .action = DsnAction::kFailed,
                        .status = "5.1.1",
                        .remote_mta = "mx1.example.net",
                        .diagnostic = "550 5.1.1 <gone@example.net>: no such user\r\n",
                        .last_attempt = absl::FromUnixSeconds(1796403500)}});
  const Envelope& env = dsn->envelope;
  EXPECT_EQ(env.id, "0000000000bb00000002");
  EXPECT_EQ(env.sender, "");  // DSNs come from the null sender
  ASSERT_EQ(env.recipients.size(), 1u);
  EXPECT_EQ(env.recipients[0].address, "sender@example.com");
  EXPECT_EQ(env.stream, "transactional");
  const std::string& c = dsn->content;
  EXPECT_EQ(env.content_bytes, c.size());
  EXPECT_TRUE(absl::StartsWith(c, "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"));
  EXPECT_TRUE(absl::StrContains(c, "\r\nTo: <sender@example.com>\r\n"));
  EXPECT_TRUE(absl::StrContains(c, "Subject: Undelivered Mail Returned to Sender\r\n"));
  EXPECT_TRUE(absl::StrContains(c, "Auto-Submitted: auto-replied\r\n"));
  EXPECT_TRUE(absl::StrContains(
      c, "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\""));
  EXPECT_TRUE(absl::StrContains(c,
                                "\r\nContent-Type: message/delivery-status\r\n\r\n"
                                "Reporting-MTA: dns; mx.example.org\r\n"
                                "Original-Envelope-Id: env-42\r\n"));
  EXPECT_TRUE(absl::StrContains(c,
                                "\r\nFinal-Recipient: rfc822; gone@example.net\r\n"
                                "Original-Recipient: rfc822;gone@example.net\r\n"
                                "Action: failed\r\nStatus: 5.1.1\r\n"
                                "Remote-MTA: dns; mx1.example.net\r\n"
                                "Diagnostic-Code: smtp; 550 5.1.1 <gone@example.net>: no such "
                                "user \r\n"));
  EXPECT_TRUE(absl::StrContains(c, "Content-Type: message/rfc822\r\n\r\n" + std::string(kContent)));
  EXPECT_FALSE(absl::StrContains(c, "ok@example.net"));  // only the reported recipient
  // Three parts and a closing boundary; no line longer than 998 octets; CRLF only.
  std::string boundary = "0000000000bb00000002/mx.example.org";
  EXPECT_EQ(std::vector<std::string>(absl::StrSplit(c, "--" + boundary + "\r\n")).size(), 4u);
  EXPECT_TRUE(absl::EndsWith(c, "--" + boundary + "--\r\n"));
  for (absl::string_view line : absl::StrSplit(c, "\r\n")) {
    EXPECT_LE(line.size(), 998u);
    EXPECT_FALSE(absl::StrContains(line, "\n")) << line;
  }
}

TEST(DsnTest, RetHdrsAttachesHeadersOnly) {
  Envelope orig = Original();
  orig.ret = queue::DsnRet::kHeaders;
  auto dsn = BuildDsn(Options(), orig, kContent,
                      {{.index = 0, .action = DsnAction::kFailed, .status = "5.0.0"}});
  EXPECT_TRUE(absl::StrContains(dsn->content,
                                "Content-Type: text/rfc822-headers\r\n\r\n"
                                "Received: from x\r\nSubject: hello\r\n"
                                "Message-ID: <m1@example.com>\r\n\r\n--"));
  EXPECT_FALSE(absl::StrContains(dsn->content, "Body line"));
}

TEST(DsnTest, DelayAndSuccessReports) {
  Envelope orig = Original();
  auto delayed = BuildDsn(Options(), orig, kContent,
                          {{.index = 0, .action = DsnAction::kDelayed, .status = "4.4.1"}});
  EXPECT_TRUE(absl::StrContains(delayed->content, "Subject: Delayed Mail"));
  EXPECT_TRUE(absl::StrContains(delayed->content, "Action: delayed\r\nStatus: 4.4.1\r\n"));
  auto ok = BuildDsn(Options(), orig, kContent,
                     {{.index = 1, .action = DsnAction::kDelivered, .status = "2.0.0"}});
  EXPECT_TRUE(absl::StrContains(ok->content, "Subject: Successful Mail Delivery Report"));
  EXPECT_TRUE(absl::StrContains(ok->content,
                                "Final-Recipient: rfc822; ok@example.net\r\n"
                                "Action: delivered\r\n"));
}

TEST(DsnTest, Smtputf8UsesGlobalTypes) {
  Envelope orig = Original();
  orig.smtputf8 = true;
  auto dsn = BuildDsn(Options(), orig, kContent,
                      {{.index = 0, .action = DsnAction::kFailed, .status = "5.1.1"}});
  EXPECT_TRUE(absl::StrContains(dsn->content, "report-type=global-delivery-status"));
  EXPECT_TRUE(absl::StrContains(dsn->content, "Content-Type: message/global-delivery-status"));
  EXPECT_TRUE(absl::StrContains(dsn->content, "Final-Recipient: utf-8; gone@example.net"));
  EXPECT_TRUE(dsn->envelope.smtputf8);
}

TEST(DsnTest, BoundaryNeverOccursInTheOriginal) {
  Envelope orig = Original();
  std::string evil = std::string(kContent) + "--0000000000bb00000002/mx.example.org--\r\n";
  auto dsn = BuildDsn(Options(), orig, evil,
                      {{.index = 0, .action = DsnAction::kFailed, .status = "5.0.0"}});
  EXPECT_TRUE(
      absl::StrContains(dsn->content, "boundary=\"0000000000bb00000002/mx.example.org=_\""));
}

TEST(DsnTest, NotifyRules) {
  Envelope orig = Original();
  Recipient r;
  EXPECT_TRUE(WantsDsn(orig, r, DsnAction::kFailed));  // default: failures only
  EXPECT_FALSE(WantsDsn(orig, r, DsnAction::kDelayed));
  EXPECT_FALSE(WantsDsn(orig, r, DsnAction::kDelivered));
  r.notify = queue::kNotifySuccess | queue::kNotifyDelay;
  EXPECT_FALSE(WantsDsn(orig, r, DsnAction::kFailed));
  EXPECT_TRUE(WantsDsn(orig, r, DsnAction::kDelayed));
  EXPECT_TRUE(WantsDsn(orig, r, DsnAction::kDelivered));
  r.notify = queue::kNotifyNever;
  EXPECT_FALSE(WantsDsn(orig, r, DsnAction::kFailed));
  r.notify = 0;
  orig.sender = "";
  EXPECT_FALSE(WantsDsn(orig, r, DsnAction::kFailed));  // never bounce a bounce
}

}  // namespace
}  // namespace mta::delivery
