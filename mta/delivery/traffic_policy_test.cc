#include "mta/delivery/traffic_policy.h"

#include "gtest/gtest.h"

namespace mta::delivery {
namespace {

ShapingRule Rule(std::string name, ShapingRule::Match match, std::string pattern) {
  return ShapingRule{.name = std::move(name), .match = match, .pattern = std::move(pattern)};
}

TrafficPolicy PolicyWithRules() {
  TrafficPolicy p;
  p.default_rule = Rule("default", ShapingRule::Match::kDefault, "");
  p.rules = {
      Rule("google-mx", ShapingRule::Match::kMxSuffix, ".google.com"),
      Rule("any-mx", ShapingRule::Match::kMxSuffix, ".com"),
      Rule("example-sub", ShapingRule::Match::kDomainSuffix, ".example.com"),
      Rule("deep-sub", ShapingRule::Match::kDomainSuffix, ".mail.example.com"),
      Rule("exact", ShapingRule::Match::kDomain, "mail.example.com"),
      Rule("gmail", ShapingRule::Match::kDomain, "gmail.com"),
  };
  p.Index();
  return p;
}

TEST(TrafficPolicyTest, ExactDomainBeatsSuffixes) {
  TrafficPolicy p = PolicyWithRules();
  EXPECT_EQ(p.RuleFor("mail.example.com", {"mx.google.com"}).name, "exact");
  EXPECT_EQ(p.RuleFor("Gmail.COM", {"alt1.gmail-smtp-in.l.google.com."}).name, "gmail");
  EXPECT_EQ(p.RuleFor("gmail.com.", {}).name, "gmail");
}

TEST(TrafficPolicyTest, LongestDomainSuffixWinsAndBeatsMxSuffix) {
  TrafficPolicy p = PolicyWithRules();
  EXPECT_EQ(p.RuleFor("a.mail.example.com", {"mx.google.com"}).name, "deep-sub");
  EXPECT_EQ(p.RuleFor("b.example.com", {"mx.google.com"}).name, "example-sub");
  // A suffix matches subdomains only, not the bare name.
  EXPECT_EQ(p.RuleFor("example.com", {"mx.other.net"}).name, "default");
}

TEST(TrafficPolicyTest, LongestMxSuffixOfAnyHost) {
  TrafficPolicy p = PolicyWithRules();
  // Hosts are compared without case and without the trailing root dot.
  EXPECT_EQ(p.RuleFor("customer.org", {"mx.customer.net.", "ASPMX.L.GOOGLE.COM."}).name,
            "google-mx");
  EXPECT_EQ(p.RuleFor("customer.org", {"mx.outlook.com."}).name, "any-mx");
  EXPECT_EQ(p.RuleFor("customer.org", {"mx.outlook.com", "aspmx.l.google.com"}).name, "google-mx");
  EXPECT_EQ(p.RuleFor("customer.org", {"mx.customer.net."}).name, "default");
  EXPECT_EQ(p.RuleFor("customer.org", {}).name, "default");
  // "google.com" itself does not end with ".google.com".
  EXPECT_EQ(p.RuleFor("customer.org", {"google.com."}).name, "any-mx");
}

TEST(TrafficPolicyTest, EqualSuffixesKeepConfigOrder) {
  TrafficPolicy p;
  p.default_rule = Rule("default", ShapingRule::Match::kDefault, "");
  p.rules = {Rule("first", ShapingRule::Match::kMxSuffix, ".mx.net"),
             Rule("second", ShapingRule::Match::kMxSuffix, ".mx.net")};
  p.Index();
  EXPECT_EQ(p.RuleFor("d.org", {"a.mx.net"}).name, "first");
}

TEST(TrafficPolicyTest, RuleNamedAndSourceNamed) {
  TrafficPolicy p = PolicyWithRules();
  p.sources.push_back({.name = "ip2", .address = *IpAddress::Parse("127.0.0.2")});
  ASSERT_NE(p.RuleNamed("gmail"), nullptr);
  EXPECT_EQ(p.RuleNamed("gmail")->pattern, "gmail.com");
  EXPECT_EQ(p.RuleNamed("default"), &p.default_rule);
  EXPECT_EQ(p.RuleNamed("nope"), nullptr);
  ASSERT_NE(p.SourceNamed("ip2"), nullptr);
  EXPECT_EQ(p.SourceNamed("ip2")->address.ToString(), "127.0.0.2");
  EXPECT_EQ(p.SourceNamed("ip3"), nullptr);
}

std::shared_ptr<const RE2> Regex(const char* pattern) {
  auto re = std::make_shared<const RE2>(pattern);
  EXPECT_TRUE(re->ok()) << re->error();
  return re;
}

TEST(BackoffRuleTest, EmptyCriteriaMatchAnything) {
  BackoffRule any;
  EXPECT_TRUE(any.Matches(421, "4.7.0", "Try later"));
  EXPECT_TRUE(any.Matches(250, "", ""));
}

TEST(BackoffRuleTest, CodeEnhancedPrefixAndTextMustAllMatch) {
  BackoffRule rule{.code = 421, .enhanced = "4.7.", .text = Regex("(?i)too many")};
  EXPECT_TRUE(rule.Matches(421, "4.7.0", "Error: Too Many connections from you"));
  EXPECT_FALSE(rule.Matches(450, "4.7.0", "too many connections"));  // code
  EXPECT_FALSE(rule.Matches(421, "4.3.0", "too many connections"));  // enhanced
  EXPECT_FALSE(rule.Matches(421, "", "too many connections"));       // no enhanced code
  EXPECT_FALSE(rule.Matches(421, "4.7.0", "service unavailable"));   // text
}

TEST(BackoffRuleTest, SingleCriteria) {
  BackoffRule code_only{.code = 421};
  EXPECT_TRUE(code_only.Matches(421, "", "anything"));
  EXPECT_FALSE(code_only.Matches(451, "4.7.1", "anything"));

  BackoffRule enhanced_only{.enhanced = "4.7.28"};
  EXPECT_TRUE(enhanced_only.Matches(421, "4.7.28", "rate limited"));
  EXPECT_TRUE(enhanced_only.Matches(550, "4.7.28", ""));
  EXPECT_FALSE(enhanced_only.Matches(421, "4.7.2", "rate limited"));

  BackoffRule text_only{.text = Regex("rate.?limit")};
  EXPECT_TRUE(text_only.Matches(550, "5.7.1", "you are rate-limited"));  // searched, not anchored
  EXPECT_FALSE(text_only.Matches(550, "5.7.1", "Rate limit"));           // case-sensitive
}

TEST(TrafficPolicyTest, StreamForFallsBackToDefaultThenFirst) {
  TrafficPolicy p;
  p.streams = {Stream{.name = "bulk", .priority = -1}, Stream{.name = "default"},
               Stream{.name = "transactional", .priority = 10}};
  EXPECT_EQ(p.StreamFor("transactional").name, "transactional");
  EXPECT_EQ(p.StreamFor("bulk").name, "bulk");
  EXPECT_EQ(p.StreamFor("unknown").name, "default");
  EXPECT_EQ(p.StreamFor("").name, "default");

  p.streams = {Stream{.name = "bulk"}, Stream{.name = "transactional"}};
  EXPECT_EQ(p.StreamFor("unknown").name, "bulk");
  EXPECT_EQ(p.StreamFor("transactional").name, "transactional");
}

}  // namespace
}  // namespace mta::delivery
