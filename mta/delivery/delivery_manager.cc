#include "mta/delivery/delivery_manager.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "mta/base/log.h"

namespace mta::delivery {
namespace {

std::string DomainOf(const std::string& address) {
  size_t at = address.rfind('@');
  return at == std::string::npos ? std::string() : absl::AsciiStrToLower(address.substr(at + 1));
}

}  // namespace

DeliveryManager::DeliveryManager(uint32_t shard, uint32_t num_shards, event::EventLoop* loop,
                                 queue::Spool* spool, queue::ContentLoader* loader,
                                 queue::QueueIdGenerator* ids, dns::Resolver* resolver,
                                 DeliveryOptions options,
                                 std::shared_ptr<const TrafficPolicy> policy, PostFn post,
                                 OpenConnectionFn open_connection)
    : shard_(shard),
      num_shards_(num_shards),
      loop_(loop),
      spool_(spool),
      loader_(loader),
      ids_(ids),
      resolver_(resolver),
      options_(std::move(options)),
      policy_(std::move(policy)),
      post_(std::move(post)),
      open_connection_(std::move(open_connection)) {
  watchdog_timer_ =
      loop_->AddTimer(loop_->Now() + options_.watchdog_interval, [this] { Watchdog(); });
}

DeliveryManager::~DeliveryManager() {
  loop_->CancelTimer(watchdog_timer_);
  for (auto& [serial, entry] : scheduled_jobs_) loop_->CancelTimer(entry.timer);
  for (auto& [key, budget] : budgets_) {
    if (budget->wake_timer != 0) loop_->CancelTimer(budget->wake_timer);
  }
}

uint32_t DeliveryManager::OwnerOf(absl::string_view domain_or_site, uint32_t num_shards) {
  return absl::Hash<absl::string_view>()(domain_or_site) % num_shards;
}

uint32_t DeliveryManager::HomeOf(absl::string_view id, uint32_t num_shards) {
  return absl::Hash<absl::string_view>()(id) % num_shards;
}

void DeliveryManager::AddMessage(std::shared_ptr<const DeliveryMessage> message) {
  const queue::Envelope& env = message->envelope;
  // Group pending recipients by domain, keeping envelope order within each group.
  std::vector<std::pair<std::string, std::vector<uint32_t>>> groups;
  uint32_t pending = 0;
  for (uint32_t i = 0; i < env.recipients.size(); ++i) {
    if (env.recipients[i].state != queue::RecipientState::kPending) continue;
    ++pending;
    std::string domain = DomainOf(env.recipients[i].address);
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const auto& g) { return g.first == domain; });
    if (it == groups.end()) {
      groups.push_back({domain, {i}});
    } else {
      it->second.push_back(i);
    }
  }
  if (pending == 0) {
    // Every recipient was final before a crash interrupted the removal.
    spool_->Remove(env.id, [](absl::Status s) {
      s.IgnoreError(); /* retried at next start */
    });
    return;
  }
  remaining_[env.id] = pending;
  absl::Time due = std::max(loop_->Now(), absl::FromUnixMillis(env.next_attempt_ms));
  uint32_t attempts = 0;
  for (const queue::Recipient& r : env.recipients) attempts = std::max(attempts, r.attempts);
  for (auto& [domain, indices] : groups) {
    // Recipients of one message at one domain travel together; the site splits the job
    // when its rule caps recipients per transaction.
    Job job;
    job.message = message;
    job.domain = domain;
    job.attempts = attempts;
    job.recipients = std::move(indices);
    uint32_t owner = OwnerOf(domain, num_shards_);
    if (owner == shard_) {
      AddJob(std::move(job), due);
    } else {
      post_(owner, [job = std::move(job), due](DeliveryManager& m) mutable {
        m.AddJob(std::move(job), due);
      });
    }
  }
}

void DeliveryManager::AddJob(Job job, absl::Time due) {
  // Never rest past the message's expiry: it must expire on time, not at the next retry.
  absl::Time expiry = absl::FromUnixMillis(job.message->envelope.received_ms) +
                      policy_->StreamFor(job.message->envelope.stream).retry.lifetime;
  due = std::min(due, expiry);
  if (due <= loop_->Now()) return Route(std::move(job));
  uint64_t serial = next_scheduled_++;
  tally_.Add(job, QueueTally::State::kScheduled);
  ScheduledJob& entry = scheduled_jobs_[serial];
  entry.job = std::move(job);
  entry.due = due;
  entry.timer = loop_->AddTimer(due, [this, serial] {
    auto it = scheduled_jobs_.find(serial);
    if (it == scheduled_jobs_.end()) return;  // cancelled or retried already
    Job job = std::move(it->second.job);
    scheduled_jobs_.erase(it);
    tally_.Remove(job, QueueTally::State::kScheduled);
    Route(std::move(job));
  });
}

void DeliveryManager::Route(Job job) {
  const Stream& stream = policy_->StreamFor(job.message->envelope.stream);
  if (queue::Expired(stream.retry, absl::FromUnixMillis(job.message->envelope.received_ms),
                     loop_->Now())) {
    std::string last_error = job.last_error;
    return SettleAll(
        std::move(job),
        {.kind = AttemptResult::Kind::kDeferred, .status = "4.4.7", .diagnostic = last_error});
  }
  delivery::Route route = FindRoute(options_.routes, job.domain, options_.default_tls);
  auto to_site = [this](std::vector<SiteHost> hosts, smtp::TlsPolicy tls, Job job) {
    std::vector<std::string> names;
    for (const SiteHost& h : hosts) names.push_back(h.host);
    const ShapingRule& rule = policy_->RuleFor(job.domain, names);
    if (Suspended(job, rule.name)) {
      tally_.Add(job, QueueTally::State::kSuspended);
      parked_.push_back(std::move(job));
      return;
    }
    std::string key;
    for (const SiteHost& h : hosts) {
      absl::StrAppend(&key, key.empty() ? "" : ",", h.host, ":", h.port);
    }
    absl::StrAppend(&key,
                    tls == smtp::TlsPolicy::kRequire ? "/require"
                    : tls == smtp::TlsPolicy::kNone  ? "/none"
                                                     : "/opportunistic",
                    "#", rule.name);
    // Every domain whose MX matches an MX-suffix rule shares one budget, wherever it is.
    std::string budget_key =
        rule.match == ShapingRule::Match::kMxSuffix ? absl::StrCat("rule:", rule.name) : key;
    uint32_t owner = OwnerOf(budget_key, num_shards_);
    if (owner == shard_) {
      return AddToSite(key, budget_key, rule.name, std::move(hosts), tls, std::move(job));
    }
    post_(owner, [key, budget_key, rule = rule.name, hosts = std::move(hosts), tls,
                  job = std::move(job)](DeliveryManager& m) mutable {
      m.AddToSite(key, budget_key, rule, std::move(hosts), tls, std::move(job));
    });
  };
  if (!route.host.empty()) {
    return to_site({{route.host, route.port}}, route.tls, std::move(job));
  }
  if (resolver_ == nullptr) {
    return SettleAll(std::move(job), {.kind = AttemptResult::Kind::kDeferred,
                                      .status = "4.4.3",
                                      .diagnostic = "no resolver and no route for the domain"});
  }
  std::string domain = job.domain;
  resolver_->ResolveMx(domain, [this, to_site, tls = route.tls,
                                job = std::move(job)](absl::StatusOr<dns::MxResult> mx) mutable {
    const std::string& d = job.domain;
    if (!mx.ok()) {
      if (absl::IsNotFound(mx.status()) || absl::IsInvalidArgument(mx.status())) {
        return SettleAll(std::move(job),
                         {.kind = AttemptResult::Kind::kBounced,
                          .status = "5.1.2",
                          .diagnostic = absl::StrCat(
                              "domain ", d, " does not exist (DNS: ", mx.status().message(), ")")});
      }
      return SettleAll(
          std::move(job),
          {.kind = AttemptResult::Kind::kDeferred,
           .status = "4.4.3",
           .diagnostic = absl::StrCat("DNS lookup of ", d, " failed: ", mx.status().message())});
    }
    if (mx->kind == dns::MxResult::Kind::kNullMx) {
      return SettleAll(std::move(job),
                       {.kind = AttemptResult::Kind::kBounced,
                        .status = "5.1.10",
                        .diagnostic = absl::StrCat("556 5.1.10 domain ", d,
                                                   " accepts no mail (null MX, RFC 7505)")});
    }
    std::vector<SiteHost> hosts;
    for (const dns::MxHost& h : mx->hosts) hosts.push_back({h.host, options_.smtp_port});
    to_site(std::move(hosts), tls, std::move(job));
  });
}

bool DeliveryManager::Suspended(const Job& job, const std::string& rule_name) const {
  const TrafficPolicy& p = *policy_;
  return p.suspended_destinations.contains(job.domain) ||
         p.suspended_destinations.contains(rule_name) ||
         p.suspended_streams.contains(p.StreamFor(job.message->envelope.stream).name);
}

void DeliveryManager::AddToSite(const std::string& key, const std::string& budget_key,
                                const std::string& rule_name, std::vector<SiteHost> hosts,
                                smtp::TlsPolicy tls, Job job) {
  auto& slot = destinations_[key];
  if (slot == nullptr) {
    auto& budget = budgets_[budget_key];
    if (budget == nullptr) {
      budget = std::make_unique<Budget>();
      budget->key = budget_key;
      const ShapingRule* rule = policy_->RuleNamed(rule_name);
      budget->rule = rule != nullptr ? rule : &policy_->default_rule;
    }
    slot = std::make_unique<Destination>();
    slot->key = key;
    slot->hosts = std::move(hosts);
    slot->tls = tls;
    slot->budget = budget.get();
    budget->sites.push_back(slot.get());
  }
  Destination& site = *slot;
  if (Suspended(job, site.budget->rule->name)) {
    // Routed under a policy another shard had not replaced yet.
    tally_.Add(job, QueueTally::State::kSuspended);
    parked_.push_back(std::move(job));
    return;
  }
  tally_.Add(job, QueueTally::State::kReady);
  QueueOf(site, job).push_back(std::move(job));
  ++site.ready;
  PumpSite(site);
}

std::deque<Job>& DeliveryManager::QueueOf(Destination& site, const Job& job) {
  const Stream& stream = policy_->StreamFor(job.message->envelope.stream);
  auto it = std::find_if(site.queues.begin(), site.queues.end(),
                         [&](const auto& q) { return q.stream == stream.name; });
  if (it == site.queues.end()) {
    // Highest priority first; equal priorities keep the order they appeared in.
    auto pos = std::find_if(site.queues.begin(), site.queues.end(),
                            [&](const auto& q) { return q.priority < stream.priority; });
    it = site.queues.insert(pos, {.stream = stream.name, .priority = stream.priority});
  }
  return it->jobs;
}

void DeliveryManager::Reroute(std::shared_ptr<std::vector<Job>> jobs, size_t from, absl::Time now) {
  // In slices: a resumed backlog of a million jobs must not stall the loop for seconds.
  constexpr size_t kSlice = 2048;
  size_t end = std::min(jobs->size(), from + kSlice);
  for (size_t i = from; i < end; ++i) {
    Job& job = (*jobs)[i];
    uint32_t owner = OwnerOf(job.domain, num_shards_);
    if (owner == shard_) {
      AddJob(std::move(job), now);
    } else {
      post_(owner, [job = std::move(job), now](DeliveryManager& m) mutable {
        m.AddJob(std::move(job), now);
      });
    }
  }
  if (end < jobs->size()) {
    loop_->Post(
        [this, jobs = std::move(jobs), end, now]() mutable { Reroute(std::move(jobs), end, now); });
  }
}

void DeliveryManager::SetPolicy(std::shared_ptr<const TrafficPolicy> policy) {
  // Budgets point into the old policy until they are moved over below.
  std::shared_ptr<const TrafficPolicy> old = std::exchange(policy_, std::move(policy));
  absl::Time now = loop_->Now();
  for (auto& [key, budget] : budgets_) {
    // Rules are found again by name; a rule that is gone leaves its sites on the default.
    const ShapingRule* rule = policy_->RuleNamed(budget->rule->name);
    budget->rule = rule != nullptr ? rule : &policy_->default_rule;
    for (auto& [source, lane] : budget->lanes) ConfigureBucket(*budget, lane);
  }
  for (const Job& job : parked_) tally_.Remove(job, QueueTally::State::kSuspended);
  auto reroute = std::make_shared<std::vector<Job>>(std::move(parked_));
  parked_.clear();
  for (auto& [key, site] : destinations_) {
    // Re-sort by the new priorities, and send what is now suspended back to be parked.
    for (auto& q : site->queues) {
      q.priority = policy_->StreamFor(q.stream).priority;
      std::deque<Job> kept;
      for (Job& job : q.jobs) {
        if (Suspended(job, site->budget->rule->name)) {
          tally_.Remove(job, QueueTally::State::kReady);
          reroute->push_back(std::move(job));
          --site->ready;
        } else {
          kept.push_back(std::move(job));
        }
      }
      q.jobs.swap(kept);
    }
    site->queues.sort([](const auto& a, const auto& b) { return a.priority > b.priority; });
  }
  Reroute(std::move(reroute), 0, now);
  for (auto& [key, budget] : budgets_) Pump(*budget);
}

const BounceClassifier& DeliveryManager::Classifier() const {
  if (policy_->bounce_classifier != nullptr) return *policy_->bounce_classifier;
  static const std::shared_ptr<const BounceClassifier> builtin =
      *BounceClassifier::Create({});  // built-in rules only: cannot fail
  return *builtin;
}

void DeliveryManager::SettleAll(Job job, const AttemptResult& result) {
  std::vector<AttemptResult> results(job.recipients.size(), result);
  Settle(std::move(job), std::move(results), nullptr);
}

void DeliveryManager::Settle(Job job, std::vector<AttemptResult> results,
                             std::shared_ptr<const std::string> content) {
  const queue::Envelope& env = job.message->envelope;
  absl::Time now = loop_->Now();
  const Stream& stream = policy_->StreamFor(env.stream);
  const queue::RetryPolicy& retry_policy = stream.retry;
  static const std::string kNoPool;
  const std::string& pool = stream.pool >= 0 ? policy_->pools[stream.pool].name : kNoPool;
  bool expired = queue::Expired(retry_policy, absl::FromUnixMillis(env.received_ms), now);
  std::vector<queue::RecipientUpdate> updates;
  std::vector<DsnRecipient> dsn;
  Job retry;
  retry.message = job.message;
  retry.domain = job.domain;
  retry.attempts = job.attempts + 1;
  retry.delay_notified = job.delay_notified;
  uint32_t finals = 0;
  for (size_t i = 0; i < job.recipients.size(); ++i) {
    uint32_t index = job.recipients[i];
    const queue::Recipient& rcpt = env.recipients[index];
    AttemptResult& r = results[i];
    queue::RecipientUpdate u{.index = index, .attempts = job.attempts + 1};
    DsnRecipient d{.index = index,
                   .status = r.status,
                   .remote_mta = r.remote_mta,
                   .diagnostic = r.diagnostic,
                   .last_attempt = now};
    Outcome outcome = r.kind == AttemptResult::Kind::kDelivered ? Outcome::kDelivered
                      : r.kind == AttemptResult::Kind::kBounced ? Outcome::kBounced
                      : expired                                 ? Outcome::kExpired
                                                                : Outcome::kDeferred;
    BounceClass bounce_class = outcome == Outcome::kDelivered ? BounceClass::kNone
                               : outcome == Outcome::kExpired ? BounceClass::kExpired
                               : r.cancelled
                                   ? BounceClass::kOther
                                   : Classifier().Classify(r.code, r.status, r.diagnostic);
    d.bounce_class = BounceClassName(bounce_class);
    switch (r.kind) {
      case AttemptResult::Kind::kDelivered:
        u.state = queue::RecipientState::kDelivered;
        ++finals;
        ++delivered_;
        // A next hop without DSN support cannot report success: we do, as "relayed".
        if (!r.remote_dsn && WantsDsn(env, rcpt, DsnAction::kDelivered)) {
          d.action = DsnAction::kRelayed;
          dsn.push_back(d);
        }
        break;
      case AttemptResult::Kind::kBounced:
        u.state = queue::RecipientState::kBounced;
        ++finals;
        ++bounced_;
        if (WantsDsn(env, rcpt, DsnAction::kFailed)) {
          d.action = DsnAction::kFailed;
          dsn.push_back(d);
        }
        break;
      case AttemptResult::Kind::kDeferred:
        if (expired) {
          u.state = queue::RecipientState::kExpired;
          ++finals;
          ++bounced_;
          if (WantsDsn(env, rcpt, DsnAction::kFailed)) {
            d.action = DsnAction::kFailed;
            d.status = "4.4.7";
            d.diagnostic = absl::StrCat(
                "message expired after ", absl::FormatDuration(retry_policy.lifetime),
                " in the queue; last error: ", r.diagnostic.empty() ? "none" : r.diagnostic);
            dsn.push_back(d);
          }
        } else {
          u.state = queue::RecipientState::kPending;
          ++deferred_;
          retry.recipients.push_back(index);
          retry.last_error = r.diagnostic;
          if (!job.delay_notified && WantsDsn(env, rcpt, DsnAction::kDelayed) &&
              now - absl::FromUnixMillis(env.received_ms) >= options_.delay_warning_after) {
            d.action = DsnAction::kDelayed;
            dsn.push_back(d);
            retry.delay_notified = true;
          }
        }
        break;
    }
    updates.push_back(u);
    if (observer_ != nullptr) {
      observer_->OnOutcome({.envelope = env,
                            .recipient = index,
                            .domain = job.domain,
                            .outcome = outcome,
                            .bounce_class = bounce_class,
                            .result = r,
                            .attempt = job.attempts + 1,
                            .pool = pool,
                            .now = now});
    }
  }
  absl::Duration delay = queue::NextRetryDelay(retry_policy, retry.attempts, rng_);
  std::string id = env.id;
  // Outcomes are recorded only after the DSNs they cause are durable: a crash in between
  // repeats the attempt (and maybe the DSN), but a bounce is never recorded without its DSN.
  auto record = [this, id, updates = std::move(updates), finals, delay,
                 retry = std::move(retry)]() mutable {
    spool_->RecordOutcomes(
        id, std::move(updates),
        [this, loop = loop_, id, finals, delay, retry = std::move(retry)](absl::Status s) mutable {
          // On the spool's writer thread: only the loop is touched here (the manager may be
          // gone once its loop has stopped); the rest runs on the shard.
          loop->Post([this, s = std::move(s), id, finals, delay,
                      retry = std::move(retry)]() mutable {
            if (!s.ok()) {
              // Not durable: a crash would repeat these recipients (at-least-once); in
              // memory they are settled as attempted.
              MTA_LOG_WARNING("delivery: recording outcomes of %s failed: %s", id, s.ToString());
            }
            if (!retry.recipients.empty()) {
              // Back to the first tier: the domain's owner schedules the retry.
              absl::Time due = loop_->Now() + delay;
              uint32_t owner = OwnerOf(retry.domain, num_shards_);
              if (owner == shard_) {
                AddJob(std::move(retry), due);
              } else {
                post_(owner, [retry = std::move(retry), due](DeliveryManager& m) mutable {
                  m.AddJob(std::move(retry), due);
                });
              }
            }
            if (finals > 0) {
              uint32_t home = HomeOf(id, num_shards_);
              if (home == shard_) {
                RecipientsFinal(id, finals);
              } else {
                post_(home, [id, finals](DeliveryManager& m) { m.RecipientsFinal(id, finals); });
              }
            }
          });
        });
  };
  if (dsn.empty()) return record();
  SendDsns(job.message, std::move(dsn), std::move(content), std::move(record));
}

void DeliveryManager::SendDsns(std::shared_ptr<const DeliveryMessage> message,
                               std::vector<DsnRecipient> recipients,
                               std::shared_ptr<const std::string> content,
                               absl::AnyInvocable<void()> then) {
  if (content == nullptr) content = message->content;
  if (content == nullptr) {
    loader_->Load(
        message->envelope.id,
        [this, loop = loop_, message, recipients = std::move(recipients), then = std::move(then)](
            absl::StatusOr<std::shared_ptr<const std::string>> loaded) mutable {
          loop->Post([this, message, recipients = std::move(recipients), then = std::move(then),
                      loaded = std::move(loaded)]() mutable {
            // Without the original (it vanished from the spool) the report still
            // goes out.
            SendDsns(message, std::move(recipients),
                     loaded.ok() ? *loaded : std::make_shared<const std::string>(),
                     std::move(then));
          });
        });
    return;
  }
  DsnOptions options{.reporting_mta = options_.hostname,
                     .dsn_id = ids_->Next(absl::ToUnixMillis(loop_->Now())),
                     .now = loop_->Now()};
  auto record = BuildDsn(options, message->envelope, *content, recipients);
  spool_->Commit(std::move(record), [this, loop = loop_, then = std::move(then)](
                                        absl::Status s,
                                        std::unique_ptr<queue::SpoolRecord> rec) mutable {
    loop->Post([this, s = std::move(s), rec = std::move(rec), then = std::move(then)]() mutable {
      if (!s.ok()) {
        MTA_LOG_ERROR("delivery: could not spool DSN %s: %s", rec->envelope.id, s.ToString());
      } else {
        auto dsn = std::make_shared<DeliveryMessage>();
        dsn->envelope = std::move(rec->envelope);
        dsn->content = std::make_shared<const std::string>(std::move(rec->content));
        uint32_t home = HomeOf(dsn->envelope.id, num_shards_);
        if (home == shard_) {
          AddMessage(std::move(dsn));
        } else {
          post_(home, [dsn = std::move(dsn)](DeliveryManager& m) mutable { m.AddMessage(dsn); });
        }
      }
      then();
    });
  });
}

void DeliveryManager::RecipientsFinal(const std::string& id, uint32_t count) {
  auto it = remaining_.find(id);
  if (it == remaining_.end()) return;
  it->second -= std::min(it->second, count);
  if (it->second > 0) return;
  remaining_.erase(it);
  spool_->Remove(id, [id](absl::Status s) {
    if (!s.ok()) MTA_LOG_WARNING("delivery: removing %s: %s", id, s.ToString());
  });
}

void DeliveryManager::Watchdog() {
  absl::Time now = loop_->Now();
  // Forget sites with nothing queued or connected: nothing refers to them any more (the
  // scheduled tier keeps jobs by domain), and a long-running MTA sees millions of them.
  absl::erase_if(destinations_, [](const auto& kv) {
    Destination& d = *kv.second;
    std::erase_if(d.idle, [](const Destination::IdleWaker& w) { return w.token.expired(); });
    bool forget = d.ready == 0 && d.connections == 0 && d.idle.empty();
    if (forget) std::erase(d.budget->sites, &d);
    return forget;
  });
  // A budget outlives its sites while it is backing off, so a pause is not forgotten.
  absl::erase_if(budgets_, [this, now](const auto& kv) {
    Budget& b = *kv.second;
    if (!b.sites.empty()) return false;
    for (auto& [source, lane] : b.lanes) {
      LaneOf(b, source);  // eases the backoff by the time that passed
      if (lane.throttle < 1 || lane.suspended_until > now) return false;
    }
    if (b.wake_timer != 0) loop_->CancelTimer(b.wake_timer);
    return true;
  });
  for (auto& [key, dest] : destinations_) {
    bool stalled = dest->ready > 0 && dest->connections == 0 && dest->budget->wake_timer == 0;
    if (stalled) {
      MTA_LOG_WARNING(
          "watchdog: destination %s has %d ready jobs but no connection in progress or planned",
          key, dest->ready);
      Pump(*dest->budget);
    } else if (dest->ready > 0 && dest->last_progress != absl::InfinitePast() &&
               now - dest->last_progress > 10 * options_.watchdog_interval) {
      MTA_LOG_WARNING("watchdog: destination %s made no progress for %s with %d ready jobs", key,
                      absl::FormatDuration(now - dest->last_progress), dest->ready);
    }
  }
  ExpireWaiting(now);
  watchdog_timer_ = loop_->AddTimer(now + options_.watchdog_interval, [this] { Watchdog(); });
}

void DeliveryManager::ExpireWaiting(absl::Time now) {
  // Ready and parked jobs expire on time even when no connection asks for them (their
  // sources are all suspended or down). The tally's oldest message per domain and stream
  // tells which streams can have any, so a large queue far from expiry is not walked (a
  // walk costs ~200 ns per job on this loop).
  absl::flat_hash_set<std::string> expiring;  // stream names as the queues hold them
  for (const QueueRow& row : tally_.Rows()) {
    const Stream& stream = policy_->StreamFor(row.stream);
    if (queue::Expired(stream.retry, absl::FromUnixMillis(row.oldest_received_ms), now)) {
      expiring.insert(stream.name);
    }
  }
  if (expiring.empty()) return;
  for (auto& [key, site] : destinations_) {
    for (auto& q : site->queues) {
      if (!expiring.contains(q.stream)) continue;
      const queue::RetryPolicy& r = policy_->StreamFor(q.stream).retry;
      for (auto it = q.jobs.begin(); it != q.jobs.end();) {
        if (!queue::Expired(r, absl::FromUnixMillis(it->message->envelope.received_ms), now)) {
          ++it;
          continue;
        }
        Job job = std::move(*it);
        it = q.jobs.erase(it);
        --site->ready;
        tally_.Remove(job, QueueTally::State::kReady);
        std::string last_error = job.last_error;
        SettleAll(
            std::move(job),
            {.kind = AttemptResult::Kind::kDeferred, .status = "4.4.7", .diagnostic = last_error});
      }
    }
  }
  std::vector<Job> waiting, expired;
  for (Job& job : parked_) {
    const queue::RetryPolicy& r = policy_->StreamFor(job.message->envelope.stream).retry;
    bool gone = queue::Expired(r, absl::FromUnixMillis(job.message->envelope.received_ms), now);
    if (gone) tally_.Remove(job, QueueTally::State::kSuspended);
    (gone ? expired : waiting).push_back(std::move(job));
  }
  parked_ = std::move(waiting);
  for (Job& job : expired) Route(std::move(job));
}

}  // namespace mta::delivery
