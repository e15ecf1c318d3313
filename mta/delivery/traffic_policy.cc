#include "mta/delivery/traffic_policy.h"

#include <algorithm>

#include "absl/strings/ascii.h"
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

void TrafficPolicy::Index() {
  by_domain_.clear();
  by_domain_suffix_.clear();
  by_mx_suffix_.clear();
  by_name_.clear();
  top_priority_ = streams.empty() ? 0 : streams.front().priority;
  for (const Stream& s : streams) top_priority_ = std::max(top_priority_, s.priority);
  for (size_t i = 0; i < rules.size(); ++i) {
    const ShapingRule& rule = rules[i];
    by_name_.try_emplace(rule.name, i);
    std::string pattern = absl::AsciiStrToLower(WithoutRootDot(rule.pattern));
    switch (rule.match) {
      case ShapingRule::Match::kDomain:
        by_domain_.try_emplace(pattern, i);
        break;
      case ShapingRule::Match::kDomainSuffix:
        by_domain_suffix_.try_emplace(pattern, i);
        break;
      case ShapingRule::Match::kMxSuffix:
        by_mx_suffix_.try_emplace(pattern, i);
        break;
      case ShapingRule::Match::kDefault:
        break;
    }
  }
}

namespace {

// The longest ".suffix" of `name` (lower-case, no root dot) in `index`: its rule position
// and length, or {npos, 0}.
std::pair<size_t, size_t> LongestSuffix(const absl::flat_hash_map<std::string, size_t>& index,
                                        const std::string& name) {
  if (index.empty()) return {std::string::npos, 0};
  for (size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', dot + 1)) {
    auto it = index.find(absl::string_view(name).substr(dot));
    if (it != index.end()) return {it->second, name.size() - dot};
  }
  return {std::string::npos, 0};
}

}  // namespace

const ShapingRule& TrafficPolicy::RuleFor(absl::string_view domain,
                                          const std::vector<std::string>& hosts) const {
  std::string d = absl::AsciiStrToLower(WithoutRootDot(domain));
  if (auto it = by_domain_.find(d); it != by_domain_.end()) return rules[it->second];
  if (auto [rule, len] = LongestSuffix(by_domain_suffix_, d); rule != std::string::npos) {
    return rules[rule];
  }
  size_t best = std::string::npos, best_len = 0;
  for (const std::string& host : hosts) {
    if (by_mx_suffix_.empty()) break;
    auto [rule, len] = LongestSuffix(by_mx_suffix_, absl::AsciiStrToLower(WithoutRootDot(host)));
    // Longest suffix over all hosts; between equal lengths, the earlier rule.
    if (rule != std::string::npos && (len > best_len || (len == best_len && rule < best))) {
      best = rule;
      best_len = len;
    }
  }
  return best != std::string::npos ? rules[best] : default_rule;
}

const ShapingRule* TrafficPolicy::RuleNamed(absl::string_view name) const {
  if (name == default_rule.name) return &default_rule;
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &rules[it->second];
}

const EgressSource* TrafficPolicy::SourceNamed(absl::string_view name) const {
  for (const EgressSource& source : sources) {
    if (source.name == name) return &source;
  }
  return nullptr;
}

}  // namespace mta::delivery
