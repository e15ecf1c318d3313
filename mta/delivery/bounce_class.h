// Classifies delivery failures (bounces, deferrals, expiries) for events, DSNs and metrics.
#ifndef MTA_DELIVERY_BOUNCE_CLASS_H_
#define MTA_DELIVERY_BOUNCE_CLASS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "re2/re2.h"

namespace mta::delivery {

enum class BounceClass {
  kNone,  // not a failure
  kInvalidRecipient,
  kMailboxFull,
  kMessageTooLarge,
  kPolicy,       // policy or spam block
  kRateLimited,  // reputation or rate limited
  kDnsFailure,
  kTlsFailure,
  kConnectionFailure,
  kExpired,
  kOther,
};

/** "invalid_recipient", "mailbox_full", ... ("" for kNone). */
const char* BounceClassName(BounceClass c);
/** The class named `name` (as printed by BounceClassName), or an error. */
absl::StatusOr<BounceClass> ParseBounceClass(absl::string_view name);

/** An operator's rule: every set condition must hold. */
struct BounceRuleSpec {
  BounceClass result = BounceClass::kOther;
  uint32_t code = 0;     // reply code; 0 = any
  std::string enhanced;  // enhanced status prefix, e.g. "5.7" or "4.7.28"; "" = any
  std::string text;      // RE2 searched in the reply text; "" = any
};

/**
 * Operator rules first (in order), then built-in text patterns of the big receivers, then
 * the RFC 3463 enhanced status, then the reply code. Immutable; shared by the shards.
 */
class BounceClassifier {
 public:
  /** Fails on an invalid regular expression (the error names the rule). */
  static absl::StatusOr<std::shared_ptr<const BounceClassifier>> Create(
      std::vector<BounceRuleSpec> rules);

  /**
   * `code` 0 when no reply code is known; `enhanced` the "x.y.z" status (ours for local
   * failures: 4.4.1 connection, 4.4.3 DNS, 4.7.4/4.7.5 TLS, 4.4.7 expired); `text` the
   * reply or diagnostic text.
   */
  BounceClass Classify(uint32_t code, absl::string_view enhanced, absl::string_view text) const;

 private:
  struct Rule {
    BounceClass result;
    uint32_t code;
    std::string enhanced;
    std::unique_ptr<RE2> text;
  };
  static bool Matches(const Rule& rule, uint32_t code, absl::string_view enhanced,
                      absl::string_view text);
  std::vector<Rule> rules_;    // the operator's
  std::vector<Rule> builtin_;  // text patterns
};

}  // namespace mta::delivery

#endif  // MTA_DELIVERY_BOUNCE_CLASS_H_
