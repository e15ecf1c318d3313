#include "mta/server/policy_control.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "mta/base/log.h"
#include "mta/server/shard.h"
#include "mta/smtp/address.h"
#include "nlohmann/json.hpp"

namespace mta::server {
PolicyControl::PolicyControl(std::vector<Shard*> shards, std::string state_file)
    : shards_(std::move(shards)), state_file_(std::move(state_file)) {
  if (state_file_.empty()) return;
  if (::access(state_file_.c_str(), F_OK) != 0 && errno == ENOENT) return;  // none yet
  std::ifstream in(state_file_);
  if (!in) {
    // Unreadable is not "nothing suspended": that would release held mail.
    status_ = absl::ErrnoToStatus(errno, absl::StrCat("reading ", state_file_));
    return;
  }
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) {
    status_ = absl::DataLossError(absl::StrCat(state_file_, ": not a JSON object"));
    return;
  }
  for (Kind kind : {Kind::kDestination, Kind::kSource, Kind::kStream}) {
    const char* key = kind == Kind::kDestination ? "destinations"
                      : kind == Kind::kSource    ? "sources"
                                                 : "streams";
    for (const auto& name : j.value(key, nlohmann::json::array())) {
      if (name.is_string()) Overlay(kind).insert(name.get<std::string>());
    }
  }
  MTA_LOG_INFO("admin suspensions from %s: %d destinations, %d sources, %d streams", state_file_,
               destinations_.size(), sources_.size(), streams_.size());
}

absl::Status PolicyControl::SaveLocked() const {
  if (state_file_.empty()) return absl::OkStatus();
  nlohmann::json j = {
      {"destinations", destinations_}, {"sources", sources_}, {"streams", streams_}};
  std::string text = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::string tmp = state_file_ + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  bool ok = fd >= 0 && ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            ::fsync(fd) == 0;
  int err = errno;
  if (fd >= 0) ::close(fd);
  if (!ok || ::rename(tmp.c_str(), state_file_.c_str()) != 0) {
    int rename_errno = errno;
    ::unlink(tmp.c_str());
    return absl::ErrnoToStatus(ok ? rename_errno : err, absl::StrCat("writing ", state_file_));
  }
  // The rename itself must survive a power cut too.
  std::string dir = state_file_.substr(0, state_file_.find_last_of('/') + 1);
  int dir_fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  return absl::OkStatus();
}

std::shared_ptr<const delivery::TrafficPolicy> PolicyControl::Adopt(
    std::shared_ptr<const delivery::TrafficPolicy> base) {
  std::lock_guard<std::mutex> lock(mu_);
  base_ = std::move(base);
  MergeLocked();
  return current_;
}

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
  if (kind == Kind::kDestination && p.RuleNamed(name) == nullptr &&
      !smtp::IsValidDomain(name, /*allow_utf8=*/false)) {
    return absl::InvalidArgumentError(
        "a destination is a domain name (A-labels for IDNs) or a shaping rule's name");
  }
  if (!suspend && configured->contains(name)) {
    return absl::FailedPreconditionError(
        absl::StrCat("'", name, "' is suspended by the configuration file: edit it and reload"));
  }
  // Durable first: an answer of success means the suspension also survives a restart.
  absl::btree_set<std::string>& overlay = Overlay(kind);
  bool changed = suspend ? overlay.insert(name).second : overlay.erase(name) > 0;
  if (!changed) return absl::OkStatus();
  if (absl::Status saved = SaveLocked(); !saved.ok()) {
    if (suspend) {
      overlay.erase(name);
    } else {
      overlay.insert(name);
    }
    return absl::InternalError(saved.message());
  }
  PushLocked();
  return absl::OkStatus();
}

void PolicyControl::MergeLocked() {
  if (destinations_.empty() && sources_.empty() && streams_.empty()) {
    current_ = base_;
    return;
  }
  auto merged = std::make_shared<delivery::TrafficPolicy>(*base_);
  merged->suspended_destinations.insert(destinations_.begin(), destinations_.end());
  merged->suspended_sources.insert(sources_.begin(), sources_.end());
  merged->suspended_streams.insert(streams_.begin(), streams_.end());
  merged->Index();
  current_ = std::move(merged);
}

void PolicyControl::PushLocked() {
  MergeLocked();
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
