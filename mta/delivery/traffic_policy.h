// Egress sources, pools, streams and shaping rules: the delivery engine's traffic policy.
// One immutable snapshot is shared by every shard; a configuration reload swaps it.
#ifndef MTA_DELIVERY_TRAFFIC_POLICY_H_
#define MTA_DELIVERY_TRAFFIC_POLICY_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "mta/base/net.h"
#include "mta/delivery/bounce_class.h"
#include "queue/retry_schedule.h"
#include "re2/re2.h"

namespace mta::delivery {

/** A local address outbound connections bind to. */
struct EgressSource {
  std::string name;
  IpAddress address;
  std::string ehlo;  // EHLO name from this source
};

/** A weighted set of sources (indices into TrafficPolicy::sources). */
struct Pool {
  struct Member {
    uint32_t source = 0;
    uint32_t weight = 1;
  };
  std::string name;
  std::vector<Member> members;
};

struct Stream {
  std::string name;
  int32_t priority = 0;  // larger is served first at a shared destination
  int32_t pool = -1;     // index into TrafficPolicy::pools; -1 = the kernel's choice
  queue::RetryPolicy retry;
};

/** A reply pattern that, when seen, backs a source x destination off. */
struct BackoffRule {
  enum class Action { kSuspend, kSlow };
  uint32_t code = 0;                // 0 = any
  std::string enhanced;             // prefix; "" = any
  std::shared_ptr<const RE2> text;  // searched in the reply text; null = any
  Action action = Action::kSuspend;
  absl::Duration duration = absl::Minutes(5);  // kSuspend
  double rate_factor = 0.5;                    // kSlow

  /** True if a reply with this code, enhanced code and text matches. */
  bool Matches(uint32_t reply_code, absl::string_view reply_enhanced,
               absl::string_view reply_text) const;
};

/** Limits per source x destination. */
struct ShapingLimits {
  uint32_t max_connections = 10;
  uint32_t max_messages_per_connection = 0;  // 0 = unlimited
  double rate_per_second = 0;                // 0 = unlimited
  double burst = 1;                          // tokens the bucket holds
  uint32_t max_recipients_per_transaction = 100;
  // Of max_connections, connections that only the highest-priority streams may use: the
  // other streams together keep at most max_connections - reserved_connections busy, so a
  // top-priority message never waits for their transactions in flight.
  uint32_t reserved_connections = 0;
  absl::Duration connect_timeout = absl::Seconds(30);
  absl::Duration idle_timeout = absl::Seconds(5);
  std::vector<BackoffRule> backoff;
  absl::Duration restore_interval = absl::Minutes(1);
};

struct ShapingRule {
  enum class Match { kDefault, kDomain, kDomainSuffix, kMxSuffix };
  std::string name;  // "default" for the default rule
  Match match = Match::kDefault;
  std::string pattern;  // lower-case domain or suffix
  ShapingLimits limits;
};

struct TrafficPolicy {
  std::vector<EgressSource> sources;
  std::vector<Pool> pools;
  std::vector<Stream> streams;  // never empty
  std::vector<ShapingRule> rules;
  ShapingRule default_rule;
  absl::flat_hash_set<std::string> suspended_destinations;  // domains or rule names
  absl::flat_hash_set<std::string> suspended_sources;       // source names
  absl::flat_hash_set<std::string> suspended_streams;       // stream names
  // Classifies failures (bounce_rules + built-in); null = the built-in rules only.
  std::shared_ptr<const BounceClassifier> bounce_classifier;

  /**
   * Builds the rule indexes that RuleFor() and RuleNamed() use. Call once the rules are
   * filled in; the policy is immutable afterwards (the indexes hold positions, so copies
   * stay valid).
   */
  void Index();
  /** The highest stream priority (set by Index()). */
  int32_t top_priority() const { return top_priority_; }

  /** The stream called `name`, else the one called "default", else the first. */
  const Stream& StreamFor(absl::string_view name) const;
  /**
   * The rule for a domain whose mail goes to `hosts`: an exact domain rule, else the
   * longest matching domain suffix, else the longest matching MX host suffix (any host),
   * else the default. Hash look-ups per label of the names: the cost does not grow with
   * the number of rules.
   */
  const ShapingRule& RuleFor(absl::string_view domain, const std::vector<std::string>& hosts) const;
  /** The rule called `name`, if any (the default rule is "default"). */
  const ShapingRule* RuleNamed(absl::string_view name) const;
  /** The source called `name`, if any. */
  const EgressSource* SourceNamed(absl::string_view name) const;

 private:
  // Positions in `rules`; for equal keys the first rule in config order.
  absl::flat_hash_map<std::string, size_t> by_domain_, by_domain_suffix_, by_mx_suffix_, by_name_;
  int32_t top_priority_ = 0;
};

}  // namespace mta::delivery

#endif  // MTA_DELIVERY_TRAFFIC_POLICY_H_
