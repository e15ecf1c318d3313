#include "mta/delivery/bounce_class.h"

#include "gtest/gtest.h"

namespace mta::delivery {
namespace {

BounceClass Classify(uint32_t code, const char* enhanced, const char* text,
                     std::vector<BounceRuleSpec> rules = {}) {
  auto c = BounceClassifier::Create(std::move(rules));
  EXPECT_TRUE(c.ok()) << c.status();
  return (*c)->Classify(code, enhanced, text);
}

TEST(BounceClassTest, RealReceiverReplies) {
  EXPECT_EQ(Classify(550, "5.1.1", "The email account that you tried to reach does not exist."),
            BounceClass::kInvalidRecipient);
  EXPECT_EQ(Classify(452, "4.2.2", "The email account that you tried to reach is over quota."),
            BounceClass::kMailboxFull);
  EXPECT_EQ(Classify(552, "5.3.4", "Message size exceeds fixed maximum message size"),
            BounceClass::kMessageTooLarge);
  EXPECT_EQ(Classify(550, "5.7.26", "This mail is unauthenticated (DMARC policy)"),
            BounceClass::kPolicy);
  EXPECT_EQ(Classify(550, "5.7.1", "part of their network is on our block list (S3150)"),
            BounceClass::kPolicy);
  EXPECT_EQ(Classify(421, "4.7.0",
                     "Our system has detected an unusual rate of unsolicited mail originating "
                     "from your IP address; it has been temporarily rate limited"),
            BounceClass::kRateLimited);
  EXPECT_EQ(Classify(450, "4.2.1",
                     "The user you are trying to contact is receiving mail at a "
                     "rate that prevents additional messages from being delivered"),
            BounceClass::kRateLimited);
  EXPECT_EQ(Classify(421, "4.7.0", "[TSS04] Messages temporarily deferred due to user complaints"),
            BounceClass::kRateLimited);
  EXPECT_EQ(Classify(550, "", "Requested action not taken: mailbox unavailable"),
            BounceClass::kInvalidRecipient);
  EXPECT_EQ(Classify(550, "5.7.1", "Relaying denied"), BounceClass::kPolicy);
  EXPECT_EQ(Classify(554, "", "Transaction failed"), BounceClass::kOther);
}

TEST(BounceClassTest, OurOwnFailuresByStatus) {
  EXPECT_EQ(Classify(0, "4.4.3", "cannot resolve mail host mx.a: timeout"),
            BounceClass::kDnsFailure);
  EXPECT_EQ(Classify(0, "5.1.10", "null MX"), BounceClass::kDnsFailure);
  EXPECT_EQ(Classify(0, "4.4.1", "connect to 1.2.3.4:25: Connection refused"),
            BounceClass::kConnectionFailure);
  EXPECT_EQ(Classify(451, "4.4.2", "conversation timed out; try again later"),
            BounceClass::kConnectionFailure);
  EXPECT_EQ(Classify(451, "4.7.5", "TLS handshake failed: certificate verify failed"),
            BounceClass::kTlsFailure);
  EXPECT_EQ(Classify(451, "4.7.4", "TLS is required but the server does not offer STARTTLS"),
            BounceClass::kTlsFailure);
  EXPECT_EQ(Classify(0, "4.4.7", "message expired"), BounceClass::kExpired);
  EXPECT_EQ(Classify(250, "2.0.0", "ok"), BounceClass::kNone);
}

TEST(BounceClassTest, OperatorRulesComeFirst) {
  std::vector<BounceRuleSpec> rules = {
      {.result = BounceClass::kPolicy, .code = 550, .enhanced = "5.1", .text = "(?i)spamtrap"},
      {.result = BounceClass::kRateLimited, .text = "RL-\\d+"}};
  EXPECT_EQ(Classify(550, "5.1.1", "no such user (spamtrap hit)", rules), BounceClass::kPolicy);
  EXPECT_EQ(Classify(551, "5.1.1", "no such user (spamtrap hit)", rules),
            BounceClass::kInvalidRecipient);
  EXPECT_EQ(Classify(554, "5.0.0", "refused RL-42", rules), BounceClass::kRateLimited);
}

TEST(BounceClassTest, NamesRoundTripAndBadRulesFail) {
  for (int i = 1; i <= static_cast<int>(BounceClass::kOther); ++i) {
    auto c = static_cast<BounceClass>(i);
    EXPECT_EQ(*ParseBounceClass(BounceClassName(c)), c);
  }
  EXPECT_FALSE(ParseBounceClass("spam").ok());
  auto bad = BounceClassifier::Create({{.text = "(unclosed"}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("bounce rule 1"), std::string::npos);
}

}  // namespace
}  // namespace mta::delivery
