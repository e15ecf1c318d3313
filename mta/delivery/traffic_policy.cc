#include "mta/delivery/traffic_policy.h"

#include "absl/strings/match.h"

namespace mta::delivery {
namespace {

// Domains and host names compare without case and without a trailing root dot.
absl::string_view WithoutRootDot(absl::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  return name;
}

}  // namespace

bool BackoffRule::Matches(uint32_t reply_code, absl::string_view reply_enhanced,
                          absl::string_view reply_text) const {
  if (code != 0 && code != reply_code) return false;
  if (!enhanced.empty() && !absl::StartsWith(reply_enhanced, enhanced)) return false;
  if (text != nullptr &&
      !RE2::PartialMatch(re2::StringPiece(reply_text.data(), reply_text.size()), *text)) {
    return false;
  }
  return true;
}

const Stream& TrafficPolicy::StreamFor(absl::string_view name) const {
  static const Stream* const kNoStreams = new Stream{.name = "default"};
  const Stream* fallback = nullptr;
  for (const Stream& s : streams) {
    if (s.name == name) return s;
    if (fallback == nullptr && s.name == "default") fallback = &s;
  }
  if (fallback != nullptr) return *fallback;
  return streams.empty() ? *kNoStreams : streams.front();
}

const ShapingRule& TrafficPolicy::RuleFor(absl::string_view domain,
                                          const std::vector<std::string>& hosts) const {
  domain = WithoutRootDot(domain);
  const ShapingRule* best_suffix = nullptr;
  for (const ShapingRule& rule : rules) {
    switch (rule.match) {
      case ShapingRule::Match::kDomain:
        if (absl::EqualsIgnoreCase(domain, rule.pattern)) return rule;
        break;
      case ShapingRule::Match::kDomainSuffix:
        if (absl::EndsWithIgnoreCase(domain, rule.pattern) &&
            (best_suffix == nullptr || rule.pattern.size() > best_suffix->pattern.size())) {
          best_suffix = &rule;
        }
        break;
      default:
        break;
    }
  }
  if (best_suffix != nullptr) return *best_suffix;
  const ShapingRule* best_mx = nullptr;
  for (const ShapingRule& rule : rules) {
    if (rule.match != ShapingRule::Match::kMxSuffix) continue;
    if (best_mx != nullptr && rule.pattern.size() <= best_mx->pattern.size()) continue;
    for (const std::string& host : hosts) {
      if (absl::EndsWithIgnoreCase(WithoutRootDot(host), rule.pattern)) {
        best_mx = &rule;
        break;
      }
    }
  }
  return best_mx != nullptr ? *best_mx : default_rule;
}

const ShapingRule* TrafficPolicy::RuleNamed(absl::string_view name) const {
  if (name == default_rule.name) return &default_rule;
  for (const ShapingRule& rule : rules) {
    if (rule.name == name) return &rule;
  }
  return nullptr;
}

const EgressSource* TrafficPolicy::SourceNamed(absl::string_view name) const {
  for (const EgressSource& source : sources) {
    if (source.name == name) return &source;
  }
  return nullptr;
}

}  // namespace mta::delivery
