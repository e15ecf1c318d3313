// DeliveryManager's shaping half: per-source lanes (connection caps, token buckets, backoff),
// source choice by weight, pumping connections and handing out jobs by stream priority.
// (Scheduling, routing, outcomes and DSNs are in delivery_manager.cc.)
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "mta/base/log.h"
#include "mta/delivery/delivery_manager.h"

namespace mta::delivery {

uint32_t DeliveryManager::ConnectionCap(const ShapingRule& rule, const Lane& lane) {
  return std::max<uint32_t>(1, static_cast<uint32_t>(rule.limits.max_connections * lane.throttle));
}

uint32_t DeliveryManager::LowerPriorityCap(const ShapingRule& rule, const Lane& lane) {
  const uint32_t cap = ConnectionCap(rule, lane);
  const uint32_t reserved = rule.limits.reserved_connections;
  return cap > reserved ? cap - reserved : 1;
}

void DeliveryManager::ReleaseSlot(Job& job) {
  if (job.lower_slot == nullptr) return;
  if (job.lower_slot->lower_busy > 0) --job.lower_slot->lower_busy;
  job.lower_slot = nullptr;
}

void DeliveryManager::ConfigureBucket(const Budget& budget, Lane& lane) {
  const ShapingLimits& l = budget.rule->limits;
  lane.bucket.Configure(l.rate_per_second * lane.throttle, l.burst, loop_->Now());
}

Lane& DeliveryManager::LaneOf(Budget& budget, const std::string& source) {
  auto [it, inserted] = budget.lanes.try_emplace(source);
  Lane& lane = it->second;
  if (inserted) ConfigureBucket(budget, lane);
  absl::Time now = loop_->Now();
  const ShapingLimits& l = budget.rule->limits;
  if (lane.throttle < 1 && now >= lane.suspended_until &&
      now - lane.throttled_at >= l.restore_interval) {
    // Backoff eases off one step per quiet interval: the throttle doubles back to 1.
    while (lane.throttle < 1 && now - lane.throttled_at >= l.restore_interval) {
      lane.throttle = std::min(1.0, lane.throttle * 2);
      lane.throttled_at += l.restore_interval;
    }
    ConfigureBucket(budget, lane);
    MTA_LOG_INFO("shaping: %s via %s: backoff eased, now at %d%% of the limits", budget.key,
                 source.empty() ? "default source" : source, static_cast<int>(lane.throttle * 100));
    if (observer_ != nullptr) observer_->OnBackoff(budget.rule->name, source, "restore");
  }
  if (lane.throttle < 1) {
    // The next easing step may allow more connections: look again then.
    WakeBudgetAt(budget, std::max(lane.throttled_at, lane.suspended_until) + l.restore_interval);
  }
  return lane;
}

bool DeliveryManager::LaneOpen(const Lane& lane, const std::string& source, absl::Time now) const {
  if (now < lane.suspended_until) return false;
  if (source.empty()) return true;
  if (policy_->suspended_sources.contains(source)) return false;
  auto down = source_down_until_.find(source);
  return down == source_down_until_.end() || now >= down->second;
}

bool DeliveryManager::StreamUsesSource(const Stream& stream, const std::string& source) const {
  if (stream.pool < 0) return source.empty();
  for (const Pool::Member& m : policy_->pools[stream.pool].members) {
    if (policy_->sources[m.source].name == source) return true;
  }
  return false;
}

const EgressSource* DeliveryManager::PickSource(Budget& budget, int32_t pool,
                                                bool* none_available) {
  absl::Time now = loop_->Now();
  // When no source may open a connection now, the earliest time one may (its pause,
  // down time or next token) gets a wake-up.
  absl::Time retry_at = absl::InfiniteFuture();
  auto usable = [&](Lane& lane, const std::string& name) {
    absl::Time until = lane.suspended_until;
    if (!name.empty()) {
      auto down = source_down_until_.find(name);
      if (down != source_down_until_.end()) until = std::max(until, down->second);
    }
    if (until > now) {
      retry_at = std::min(retry_at, until);
      return false;
    }
    if (!LaneOpen(lane, name, now)) return false;  // suspended by the policy: no timer
    if (lane.connections >= ConnectionCap(*budget.rule, lane)) return false;
    absl::Time token = lane.bucket.NextAvailable(now);
    if (token > now) {
      retry_at = std::min(retry_at, token);
      return false;
    }
    return true;
  };
  auto none = [&]() -> const EgressSource* {
    *none_available = true;
    if (retry_at != absl::InfiniteFuture()) WakeBudgetAt(budget, retry_at);
    return nullptr;
  };
  *none_available = false;
  if (pool < 0) {
    if (!usable(LaneOf(budget, ""), "")) return none();
    return nullptr;
  }
  // Smooth weighted round robin over the sources that may open a connection now: over
  // many connections each source gets its weight's share, interleaved.
  const Pool& p = policy_->pools[pool];
  int64_t total = 0;
  Lane* best = nullptr;
  const EgressSource* chosen = nullptr;
  for (const Pool::Member& m : p.members) {
    const EgressSource& src = policy_->sources[m.source];
    Lane& lane = LaneOf(budget, src.name);
    if (!usable(lane, src.name)) continue;
    lane.wrr_current += m.weight;
    total += m.weight;
    if (best == nullptr || lane.wrr_current > best->wrr_current) {
      best = &lane;
      chosen = &src;
    }
  }
  if (best == nullptr) return none();
  best->wrr_current -= total;
  return chosen;
}

void DeliveryManager::WakeBudgetAt(Budget& budget, absl::Time when) {
  if (budget.wake_timer != 0 && budget.wake_at <= when) return;
  if (budget.wake_timer != 0) loop_->CancelTimer(budget.wake_timer);
  budget.wake_at = when;
  budget.wake_timer = loop_->AddTimer(when, [this, key = budget.key] {
    auto it = budgets_.find(key);
    if (it == budgets_.end()) return;
    it->second->wake_timer = 0;
    it->second->wake_at = absl::InfiniteFuture();
    Pump(*it->second);
  });
}

void DeliveryManager::Pump(Budget& budget) {
  // Sites take turns for free connection slots.
  size_t count = budget.sites.size();
  for (size_t i = 0; i < count; ++i) {
    Destination& site = *budget.sites[(budget.next_site + i) % count];
    if (site.ready > 0) PumpSite(site);
  }
  if (count > 0) budget.next_site = (budget.next_site + 1) % count;
}

void DeliveryManager::PumpSite(Destination& site) {
  // Idle connections first: each asks for a job it may carry (a waker that cannot take
  // one offers itself again, so only the wakers present now are called).
  size_t n = site.idle.size();
  while (n-- > 0 && site.ready > 0 && !site.idle.empty()) {
    Destination::IdleWaker waker = std::move(site.idle.front());
    site.idle.pop_front();
    if (!waker.token.expired()) waker.wake();
  }
  if (site.ready > 0) OpenConnections(*site.budget, site);
}

void DeliveryManager::ConnectionIdle(Destination& site) {
  if (site.ready > 0) OpenConnections(*site.budget, site);
}

void DeliveryManager::OpenConnections(Budget& budget, Destination& site) {
  // One connection per ready job that no opening connection is about to take, highest-
  // priority streams first. (Idle connections were offered the work already: those still
  // idle cannot carry it, from their source or under their lane's limits.)
  std::erase_if(site.idle, [](const Destination::IdleWaker& w) { return w.token.expired(); });
  size_t busy = site.in_flight + site.idle.size();
  size_t covered = site.connections - std::min<size_t>(site.connections, busy);
  if (site.ready <= covered) return;
  size_t want = site.ready - covered;
  for (const auto& q : site.queues) {
    if (q.jobs.empty()) continue;
    const Stream& stream = policy_->StreamFor(q.stream);
    size_t for_stream = std::min(want, q.jobs.size());
    while (for_stream > 0) {
      bool none = false;
      const EgressSource* source = PickSource(budget, stream.pool, &none);
      if (none) break;
      Lane& lane = LaneOf(budget, source == nullptr ? std::string() : source->name);
      ++lane.connections;
      ++site.connections;
      --for_stream;
      --want;
      open_connection_(site, source);
    }
    if (want == 0) return;
  }
}

std::optional<Job> DeliveryManager::TakeJob(Destination& site, const std::string& source) {
  Budget& budget = *site.budget;
  absl::Time now = loop_->Now();
  Lane& lane = LaneOf(budget, source);
  if (!LaneOpen(lane, source, now)) return std::nullopt;
  // Backoff may have lowered the cap below the connections already open: the extra
  // ones get no more work and close when idle.
  if (lane.connections > ConnectionCap(*budget.rule, lane)) return std::nullopt;
  for (auto& q : site.queues) {
    const Stream& stream = policy_->StreamFor(q.stream);
    if (!StreamUsesSource(stream, source)) continue;
    // Below the top priority, the rule's reserved connections are not for this stream:
    // they stay free (idle and warm) for top-priority mail.
    const bool lower =
        budget.rule->limits.reserved_connections > 0 && stream.priority < policy_->top_priority();
    if (lower && lane.lower_busy >= LowerPriorityCap(*budget.rule, lane)) continue;
    while (!q.jobs.empty()) {
      Job& front = q.jobs.front();
      if (queue::Expired(stream.retry, absl::FromUnixMillis(front.message->envelope.received_ms),
                         now)) {
        Job job = std::move(front);
        q.jobs.pop_front();
        --site.ready;
        tally_.Remove(job, QueueTally::State::kReady);
        std::string last_error = job.last_error;  // a deferral past the lifetime expires
        SettleAll(
            std::move(job),
            {.kind = AttemptResult::Kind::kDeferred, .status = "4.4.7", .diagnostic = last_error});
        continue;
      }
      if (!lane.bucket.TryTake(now)) {
        WakeBudgetAt(budget, lane.bucket.NextAvailable(now));
        if (observer_ != nullptr) observer_->OnBackoff(budget.rule->name, source, "throttle");
        return std::nullopt;
      }
      Job job = std::move(front);
      q.jobs.pop_front();
      --site.ready;
      tally_.Remove(job, QueueTally::State::kReady);
      uint32_t cap = budget.rule->limits.max_recipients_per_transaction;
      if (job.recipients.size() > cap) {
        // The rest waits at the front for the next transaction.
        Job rest = job;
        rest.recipients.erase(rest.recipients.begin(), rest.recipients.begin() + cap);
        job.recipients.resize(cap);
        tally_.Add(rest, QueueTally::State::kReady);
        q.jobs.push_front(std::move(rest));
        ++site.ready;
      }
      ++site.in_flight;
      if (lower) {
        ++lane.lower_busy;
        job.lower_slot = &lane;
      }
      return job;
    }
  }
  return std::nullopt;
}

void DeliveryManager::CompleteJob(Destination& dest, Job job, std::vector<AttemptResult> results,
                                  std::shared_ptr<const std::string> content) {
  dest.last_progress = loop_->Now();
  if (dest.in_flight > 0) --dest.in_flight;
  ReleaseSlot(job);
  Settle(std::move(job), std::move(results), std::move(content));
}

void DeliveryManager::ReturnJob(Destination& site, Job job) {
  ReleaseSlot(job);
  tally_.Add(job, QueueTally::State::kReady);
  QueueOf(site, job).push_front(std::move(job));
  ++site.ready;
  if (site.in_flight > 0) --site.in_flight;
}

void DeliveryManager::DestinationFailed(Destination& dest, std::vector<Job> failed,
                                        const AttemptResult& reason) {
  dest.in_flight -= std::min<uint32_t>(dest.in_flight, failed.size());  // the taken ones
  for (Job& job : failed) ReleaseSlot(job);
  for (auto& q : dest.queues) {
    for (Job& j : q.jobs) {
      tally_.Remove(j, QueueTally::State::kReady);
      failed.push_back(std::move(j));
    }
    q.jobs.clear();
  }
  dest.ready = 0;
  for (Job& job : failed) SettleAll(std::move(job), reason);
}

bool DeliveryManager::ObserveReply(Destination& site, const std::string& source, uint32_t code,
                                   absl::string_view enhanced, absl::string_view text) {
  Budget& budget = *site.budget;
  Lane& lane = LaneOf(budget, source);
  absl::Time now = loop_->Now();
  for (const BackoffRule& b : budget.rule->limits.backoff) {
    if (!b.Matches(code, enhanced, text)) continue;
    ++backoff_events_;
    const char* who = source.empty() ? "default source" : source.c_str();
    lane.throttled_at = now;
    if (b.action == BackoffRule::Action::kSuspend) {
      // After the pause the lane restarts at half speed at most, then eases back.
      lane.suspended_until = std::max(lane.suspended_until, now + b.duration);
      lane.throttle = std::min(lane.throttle, 0.5);
      lane.throttled_at = lane.suspended_until;  // easing starts when the pause ends
      MTA_LOG_WARNING("shaping: %s via %s: suspended for %s after \"%d %s %s\"", budget.key, who,
                      absl::FormatDuration(b.duration), code, enhanced, text);
      WakeBudgetAt(budget, lane.suspended_until);
      if (observer_ != nullptr) observer_->OnBackoff(budget.rule->name, source, "suspend");
    } else {
      lane.throttle = std::max(1.0 / 64, lane.throttle * b.rate_factor);
      MTA_LOG_WARNING("shaping: %s via %s: slowed to %d%% of the limits after \"%d %s %s\"",
                      budget.key, who, static_cast<int>(lane.throttle * 100), code, enhanced, text);
      if (observer_ != nullptr) observer_->OnBackoff(budget.rule->name, source, "slow");
    }
    ConfigureBucket(budget, lane);
    return b.action == BackoffRule::Action::kSuspend;
  }
  return false;
}

void DeliveryManager::SourceCannotReach(Destination& site, const std::string& source,
                                        absl::string_view why) {
  Lane& lane = LaneOf(*site.budget, source);
  lane.suspended_until = std::max(lane.suspended_until, loop_->Now() + options_.source_down_time);
  MTA_LOG_WARNING("egress: source %s skipped at %s for %s: %s", source, site.budget->key,
                  absl::FormatDuration(options_.source_down_time), why);
  WakeBudgetAt(*site.budget, lane.suspended_until);
}

void DeliveryManager::SourceDown(const std::string& source, absl::string_view why) {
  absl::Time until = loop_->Now() + options_.source_down_time;
  source_down_until_[source] = until;
  MTA_LOG_WARNING("egress: source %s unusable for %s: %s", source,
                  absl::FormatDuration(options_.source_down_time), why);
}

void DeliveryManager::ConnectionClosed(Destination& dest, const std::string& source) {
  if (dest.connections > 0) --dest.connections;
  Lane& lane = LaneOf(*dest.budget, source);
  if (lane.connections > 0) --lane.connections;
  Pump(*dest.budget);
}

}  // namespace mta::delivery
