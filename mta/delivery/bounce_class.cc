#include "mta/delivery/bounce_class.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace mta::delivery {
namespace {

constexpr const char* kNames[] = {"",
                                  "invalid_recipient",
                                  "mailbox_full",
                                  "message_too_large",
                                  "policy",
                                  "rate_limited",
                                  "dns_failure",
                                  "tls_failure",
                                  "connection_failure",
                                  "expired",
                                  "other"};

// What receivers say in words when their codes are generic (e.g. "550 5.7.1" for an
// unknown user, "421 4.7.0" for rate limits). Checked in this order.
struct TextPattern {
  BounceClass result;
  const char* re;
};
constexpr TextPattern kTextPatterns[] = {
    {BounceClass::kRateLimited,
     R"((?i)rate limit|too many (messages|connections)|unusual rate|throttl|)"
     R"(temporarily (deferred|rate)|try (again )?later|exceeded .*(quota|limit) for|)"
     R"(receiving mail at a rate|reputation)"},
    {BounceClass::kPolicy,
     R"((?i)spam|blocked|block ?list|blacklist|denied by policy|policy (reason|violation)|)"
     R"(dmarc|dkim|spf|not authori[sz]ed|access denied|rbl|spamhaus|barracuda|)"
     R"(message (rejected|refused) (due|for|as)|content rejected)"},
    {BounceClass::kMailboxFull, R"((?i)mailbox (is )?full|over ?quota|quota exceeded|)"
                                R"(insufficient (storage|space)|out of storage)"},
    {BounceClass::kMessageTooLarge, R"((?i)message (is )?too (large|big)|size limit|)"
                                    R"(exceeds (the )?(maximum|max|size))"},
    {BounceClass::kInvalidRecipient,
     R"((?i)user unknown|unknown user|no such (user|mailbox|recipient)|)"
     R"(does not exist|doesn't exist|invalid (recipient|mailbox|address)|)"
     R"(recipient (address )?rejected|mailbox unavailable|not found|)"
     R"(address rejected|account (is )?(disabled|inactive))"},
};

// RFC 3463 subject.detail -> class (checked on the status without its class digit).
BounceClass FromEnhanced(absl::string_view e) {
  if (e.size() < 5 || e[1] != '.') return BounceClass::kNone;
  absl::string_view rest = e.substr(2);  // "1.1", "7.26", ...
  auto is = [&](absl::string_view s) { return rest == s; };
  if (is("1.1") || is("1.0") || is("1.3") || is("1.6") || is("2.1")) {
    return BounceClass::kInvalidRecipient;
  }
  if (is("1.2") || is("1.10") || is("4.3") || is("4.4")) return BounceClass::kDnsFailure;
  if (is("2.2")) return BounceClass::kMailboxFull;
  if (is("2.3") || is("3.4")) return BounceClass::kMessageTooLarge;
  if (is("4.1") || is("4.2")) return BounceClass::kConnectionFailure;
  if (is("4.5") || is("7.28")) return BounceClass::kRateLimited;
  if (is("4.7")) return BounceClass::kExpired;
  if (is("7.4") || is("7.5") || is("7.10") || is("7.11")) return BounceClass::kTlsFailure;
  if (absl::StartsWith(rest, "7.")) return BounceClass::kPolicy;
  return BounceClass::kNone;
}

}  // namespace

const char* BounceClassName(BounceClass c) { return kNames[static_cast<int>(c)]; }

absl::StatusOr<BounceClass> ParseBounceClass(absl::string_view name) {
  for (int i = 1; i < static_cast<int>(std::size(kNames)); ++i) {
    if (name == kNames[i]) return static_cast<BounceClass>(i);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown bounce class '", name,
                   "' (invalid_recipient, mailbox_full, message_too_large, policy, rate_limited, "
                   "dns_failure, tls_failure, connection_failure, expired, other)"));
}

absl::StatusOr<std::shared_ptr<const BounceClassifier>> BounceClassifier::Create(
    std::vector<BounceRuleSpec> rules) {
  auto classifier = std::shared_ptr<BounceClassifier>(new BounceClassifier());
  auto compile = [](const std::string& re, std::unique_ptr<RE2>* out) -> absl::Status {
    if (re.empty()) return absl::OkStatus();
    RE2::Options options;
    options.set_log_errors(false);
    *out = std::make_unique<RE2>(re, options);
    if (!(*out)->ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad regular expression '", re, "': ", (*out)->error()));
    }
    return absl::OkStatus();
  };
  for (size_t i = 0; i < rules.size(); ++i) {
    Rule rule{
        .result = rules[i].result, .code = rules[i].code, .enhanced = std::move(rules[i].enhanced)};
    if (auto s = compile(rules[i].text, &rule.text); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("bounce rule ", i + 1, ": ", s.message()));
    }
    classifier->rules_.push_back(std::move(rule));
  }
  for (const TextPattern& p : kTextPatterns) {
    Rule rule{.result = p.result, .code = 0};
    if (auto s = compile(p.re, &rule.text); !s.ok()) return s;  // a bug: tests catch it
    classifier->builtin_.push_back(std::move(rule));
  }
  return std::shared_ptr<const BounceClassifier>(std::move(classifier));
}

bool BounceClassifier::Matches(const Rule& rule, uint32_t code, absl::string_view enhanced,
                               absl::string_view text) {
  if (rule.code != 0 && rule.code != code) return false;
  if (!rule.enhanced.empty() && !absl::StartsWith(enhanced, rule.enhanced)) return false;
  return rule.text == nullptr ||
         RE2::PartialMatch(re2::StringPiece(text.data(), text.size()), *rule.text);
}

BounceClass BounceClassifier::Classify(uint32_t code, absl::string_view enhanced,
                                       absl::string_view text) const {
  if ((code >= 200 && code < 300) || absl::StartsWith(enhanced, "2.")) return BounceClass::kNone;
  for (const Rule& rule : rules_) {
    if (Matches(rule, code, enhanced, text)) return rule.result;
  }
  // Our own failures (DNS, connection, TLS, expiry) carry precise statuses: trust them
  // before any words; receivers' generic statuses (x.0.0, x.7.1, ...) yield to the text.
  BounceClass by_status = FromEnhanced(enhanced);
  if (enhanced.size() > 2 && enhanced.substr(1) == ".1.1") return by_status;  // no such mailbox
  switch (by_status) {
    case BounceClass::kDnsFailure:
    case BounceClass::kConnectionFailure:
    case BounceClass::kTlsFailure:
    case BounceClass::kExpired:
    case BounceClass::kMailboxFull:
    case BounceClass::kMessageTooLarge:
    case BounceClass::kRateLimited:
      return by_status;
    default:
      break;
  }
  for (const Rule& rule : builtin_) {
    if (Matches(rule, code, enhanced, text)) return rule.result;
  }
  if (by_status != BounceClass::kNone) return by_status;
  if (code == 552) return BounceClass::kMessageTooLarge;
  if (code == 550 || code == 551 || code == 553) return BounceClass::kInvalidRecipient;
  if (code == 421) return BounceClass::kRateLimited;
  return BounceClass::kOther;
}

}  // namespace mta::delivery
