#include "mta/server/policy_control.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "mta/server/shard.h"

namespace mta::server {

void PolicyControl::SetBase(std::shared_ptr<const delivery::TrafficPolicy> base) {
  std::lock_guard<std::mutex> lock(mu_);
  base_ = std::move(base);
  PushLocked();
}

absl::btree_set<std::string>& PolicyControl::Overlay(Kind kind) {
  return kind == Kind::kDestination ? destinations_ : kind == Kind::kSource ? sources_ : streams_;
}

absl::Status PolicyControl::Set(Kind kind, const std::string& raw_name, bool suspend) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string name = raw_name;
  const delivery::TrafficPolicy& p = *base_;
  const absl::flat_hash_set<std::string>* configured = nullptr;
  switch (kind) {
    case Kind::kDestination:
      // Domains compare lower-case; rule names as written.
      if (p.RuleNamed(name) == nullptr) name = absl::AsciiStrToLower(name);
      configured = &p.suspended_destinations;
      break;
    case Kind::kSource:
      if (p.SourceNamed(name) == nullptr) {
        return absl::NotFoundError(absl::StrCat("no source named '", name, "'"));
      }
      configured = &p.suspended_sources;
      break;
    case Kind::kStream:
      if (std::none_of(p.streams.begin(), p.streams.end(),
                       [&](const delivery::Stream& s) { return s.name == name; })) {
        return absl::NotFoundError(absl::StrCat("no stream named '", name, "'"));
      }
      configured = &p.suspended_streams;
      break;
  }
  if (name.empty()) return absl::InvalidArgumentError("empty name");
  if (!suspend && configured->contains(name)) {
    return absl::FailedPreconditionError(
        absl::StrCat("'", name, "' is suspended by the configuration file: edit it and reload"));
  }
  if (suspend) {
    Overlay(kind).insert(name);
  } else {
    Overlay(kind).erase(name);
  }
  PushLocked();
  return absl::OkStatus();
}

void PolicyControl::PushLocked() {
  if (destinations_.empty() && sources_.empty() && streams_.empty()) {
    current_ = base_;
  } else {
    auto merged = std::make_shared<delivery::TrafficPolicy>(*base_);
    merged->suspended_destinations.insert(destinations_.begin(), destinations_.end());
    merged->suspended_sources.insert(sources_.begin(), sources_.end());
    merged->suspended_streams.insert(streams_.begin(), streams_.end());
    merged->Index();
    current_ = std::move(merged);
  }
  for (Shard* shard : shards_) shard->ApplyPolicy(current_);
}

PolicyControl::Suspensions PolicyControl::Current() const {
  std::lock_guard<std::mutex> lock(mu_);
  auto sorted = [](const absl::flat_hash_set<std::string>& s) {
    std::vector<std::string> v(s.begin(), s.end());
    std::sort(v.begin(), v.end());
    return v;
  };
  return {sorted(current_->suspended_destinations), sorted(current_->suspended_sources),
          sorted(current_->suspended_streams)};
}

}  // namespace mta::server
