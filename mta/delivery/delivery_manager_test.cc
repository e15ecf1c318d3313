#include "mta/delivery/delivery_manager.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "queue/rocksdb_spool.h"

namespace mta::delivery {
namespace {

using Kind = AttemptResult::Kind;

std::shared_ptr<const TrafficPolicy> Indexed(TrafficPolicy policy) {
  policy.Index();
  return std::make_shared<const TrafficPolicy>(std::move(policy));
}

// Drives a real event loop and a real RocksDB spool; the "connections" are the test
// itself taking jobs and reporting results, so every scheduling decision is observable.
class DeliveryManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    dir_ = std::string(tmp ? tmp : "/tmp") + "/" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    Open();
  }

  void Open() {
    auto loop =
        event::EventLoop::Create({.sq_entries = 64, .recv_buffers = 8, .recv_buffer_bytes = 64});
    ASSERT_TRUE(loop.ok()) << loop.status();
    loop_ = *std::move(loop);
    queue::RocksDbSpoolOptions so;
    so.path = dir_;
    so.min_free_bytes = 0;
    auto spool = queue::OpenRocksDbSpool(so);
    ASSERT_TRUE(spool.ok()) << spool.status();
    spool_ = *std::move(spool);
    loader_ = std::make_unique<queue::ContentLoader>(spool_.get());
    // Every test domain has its own next hop, so each is its own site.
    int n = 10;
    for (const char* d : {"one.test", "two.test", "dead.test", "origin.test"}) {
      options_.routes.push_back({.domain = d, .host = absl::StrCat("127.0.0.", n++), .port = 25});
    }
    policy_.default_rule.name = "default";
    policy_.default_rule.limits.max_connections = 2;
    policy_.default_rule.limits.max_recipients_per_transaction = 2;
    Stream stream{.name = "default"};
    stream.retry.intervals = {absl::Milliseconds(50)};
    stream.retry.jitter = 0;
    stream.retry.lifetime = lifetime_;
    policy_.streams = {stream};
    Start();
  }

  // (Re)creates the manager with options_ and policy_.
  void Start() {
    manager_.reset();
    opened_.clear();
    options_.hostname = "mx.test";
    manager_ = std::make_unique<DeliveryManager>(
        0, 1, loop_.get(), spool_.get(), loader_.get(), &ids_, /*resolver=*/nullptr, options_,
        Indexed(policy_),
        [this](uint32_t, absl::AnyInvocable<void(DeliveryManager&)> fn) {
          loop_->Post([this, fn = std::move(fn)]() mutable { fn(*manager_); });
        },
        [this](Destination& d, const EgressSource* source) {
          opened_.push_back(&d);
          opened_sources_.push_back(source == nullptr ? "" : source->name);
        });
  }

  void Close() {
    manager_.reset();
    options_ = DeliveryOptions();
    policy_ = TrafficPolicy();
    loader_.reset();
    spool_->Shutdown();
    spool_.reset();
    loop_.reset();
  }

  void TearDown() override {
    if (manager_ != nullptr) ExpectSummaryMatchesJobs();
    if (spool_) Close();
  }

  // The manager's running tally equals a walk over every waiting job.
  void ExpectSummaryMatchesJobs() {
    std::map<std::pair<std::string, std::string>, QueueRow> walked;
    manager_->ForEachJob({}, [&](const Job& job, absl::string_view state, absl::Time) {
      const queue::Envelope& env = job.message->envelope;
      QueueRow& row = walked[{job.domain, env.stream}];
      if (row.domain.empty())
        row = {.domain = job.domain, .stream = env.stream, .oldest_received_ms = INT64_MAX};
      (state == "ready"       ? row.ready
       : state == "scheduled" ? row.scheduled
                              : row.suspended) += job.recipients.size();
      row.oldest_received_ms = std::min(row.oldest_received_ms, env.received_ms / 1000 * 1000);
    });
    std::vector<QueueRow> summary = manager_->QueueSummary();
    EXPECT_EQ(summary.size(), walked.size());
    for (const QueueRow& row : summary) {
      auto it = walked.find({row.domain, row.stream});
      if (it == walked.end()) {
        ADD_FAILURE() << "tally has " << row.domain << "/" << row.stream;
        continue;
      }
      EXPECT_EQ(row.ready, it->second.ready) << row.domain;
      EXPECT_EQ(row.scheduled, it->second.scheduled) << row.domain;
      EXPECT_EQ(row.suspended, it->second.suspended) << row.domain;
      EXPECT_EQ(row.oldest_received_ms, it->second.oldest_received_ms) << row.domain;
    }
  }

  // Runs the loop until `done` holds (checked every 5 ms) or 10 s pass.
  bool RunUntil(const std::function<bool()>& done) {
    absl::Time deadline = absl::Now() + absl::Seconds(10);
    std::function<void()> check = [&] {
      if (done() || absl::Now() > deadline) {
        loop_->Stop();
        return;
      }
      loop_->AddTimer(loop_->Now() + absl::Milliseconds(5), check);
    };
    loop_->AddTimer(loop_->Now(), check);
    loop_->Run();
    return done();
  }

  // Spools a message and hands it to the manager as intake would.
  std::shared_ptr<DeliveryMessage> Inject(std::vector<std::string> rcpts,
                                          std::string sender = "sender@origin.test",
                                          std::string stream = "default") {
    auto record = std::make_unique<queue::SpoolRecord>();
    record->envelope.id = ids_.Next(absl::ToUnixMillis(absl::Now()));
    record->envelope.sender = sender;
    record->envelope.stream = stream;
    record->envelope.received_ms = absl::ToUnixMillis(absl::Now());
    for (auto& r : rcpts) record->envelope.recipients.push_back({.address = r});
    record->content = "Subject: t\r\n\r\nbody\r\n";
    auto msg = std::make_shared<DeliveryMessage>();
    msg->envelope = record->envelope;
    msg->content = std::make_shared<const std::string>(record->content);
    bool committed = false;
    spool_->Commit(std::move(record), [&](absl::Status s, auto) {
      EXPECT_TRUE(s.ok());
      loop_->Post([&] { committed = true; });
    });
    EXPECT_TRUE(RunUntil([&] { return committed; }));
    manager_->AddMessage(msg);
    return msg;
  }

  // The site a test domain routes to.
  static std::string Key(absl::string_view domain) {
    int n = domain == "one.test" ? 10 : domain == "two.test" ? 11 : domain == "dead.test" ? 12 : 13;
    return absl::StrCat("127.0.0.", n, ":25/opportunistic#default");
  }
  bool HasSite(absl::string_view domain) { return manager_->destinations().contains(Key(domain)); }
  Destination& Site(absl::string_view domain) { return *manager_->destinations().at(Key(domain)); }

  std::vector<queue::Envelope> Spooled() {
    std::vector<queue::Envelope> out;
    EXPECT_TRUE(spool_->Recover([&](queue::Envelope e) { out.push_back(std::move(e)); }).ok());
    return out;
  }

  static AttemptResult Result(Kind kind, std::string status, std::string diag) {
    return {.kind = kind, .status = status, .diagnostic = diag, .remote_mta = "mx1.dest.test"};
  }

  // Takes one job from `d` and reports `kinds` for its recipients.
  Job Attempt(Destination& d, const std::vector<AttemptResult>& results) {
    std::optional<Job> job = manager_->TakeJob(d, "");
    if (!job.has_value()) {
      ADD_FAILURE() << "no ready job";
      return Job();
    }
    EXPECT_EQ(job->recipients.size(), results.size());
    Job copy = *job;
    manager_->CompleteJob(d, *std::move(job), results, copy.message->content);
    return copy;
  }

  std::string dir_;
  absl::Duration lifetime_ = absl::Hours(1);
  std::unique_ptr<event::EventLoop> loop_;
  queue::SpoolPtr spool_;
  std::unique_ptr<queue::ContentLoader> loader_;
  queue::QueueIdGenerator ids_{0, 1};
  DeliveryOptions options_;
  TrafficPolicy policy_;
  std::unique_ptr<DeliveryManager> manager_;
  std::vector<Destination*> opened_;
  std::vector<std::string> opened_sources_;
};

// The jobs waiting at a site, over all streams.
std::vector<const Job*> Ready(const Destination& d) {
  std::vector<const Job*> out;
  for (const auto& q : d.queues) {
    for (const Job& j : q.jobs) out.push_back(&j);
  }
  return out;
}

TEST_F(DeliveryManagerTest, GroupsByDomainSplitsBigTransactionsAndRemovesWhenDone) {
  Inject({"a@one.test", "b@two.test", "c@one.test", "d@one.test"});
  ASSERT_EQ(manager_->destinations().size(), 2u);
  Destination& one = Site("one.test");
  Destination& two = Site("two.test");
  EXPECT_EQ(one.ready, 1u);        // one job for the domain's 3 recipients...
  EXPECT_EQ(one.connections, 1u);  // one connection per ready job
  EXPECT_EQ(two.connections, 1u);
  // ...split when taken: at most 2 per transaction.
  Job first = Attempt(one, {Result(Kind::kDelivered, "2.0.0", "250 ok"),
                            Result(Kind::kDelivered, "2.0.0", "250 ok")});
  EXPECT_EQ(first.recipients, (std::vector<uint32_t>{0, 2}));
  Attempt(one, {Result(Kind::kDelivered, "2.0.0", "250 ok")});
  EXPECT_TRUE(RunUntil(
      [&] { return Spooled()[0].recipients[3].state == queue::RecipientState::kDelivered; }));
  EXPECT_EQ(manager_->messages_at_home(), 1u);
  Attempt(two, {Result(Kind::kDelivered, "2.0.0", "250 ok")});
  EXPECT_TRUE(RunUntil([&] { return Spooled().empty(); }));
  EXPECT_EQ(manager_->messages_at_home(), 0u);
  EXPECT_EQ(manager_->delivered(), 4u);
}

TEST_F(DeliveryManagerTest, DeferredRecipientsComeBackAfterTheRetryDelay) {
  Inject({"a@one.test", "b@one.test"});
  Destination& one = Site("one.test");
  absl::Time t0 = absl::Now();
  Attempt(one, {Result(Kind::kDelivered, "2.0.0", "250 ok"),
                Result(Kind::kDeferred, "4.2.0", "450 4.2.0 try later")});
  ASSERT_TRUE(RunUntil([&] { return manager_->scheduled() == 1; }));  // waiting its turn
  EXPECT_EQ(one.ready, 0u);
  ASSERT_TRUE(RunUntil([&] { return one.ready > 0; }));
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(45));
  EXPECT_EQ(manager_->scheduled(), 0u);
  EXPECT_EQ(manager_->deferred(), 1u);
  EXPECT_EQ(manager_->delivered(), 1u);
  std::optional<Job> retry = manager_->TakeJob(one, "");
  ASSERT_TRUE(retry.has_value());
  EXPECT_EQ(retry->recipients, (std::vector<uint32_t>{1}));
  EXPECT_EQ(retry->attempts, 1u);
  EXPECT_EQ(retry->last_error, "450 4.2.0 try later");
  // The outcome of the first attempt is durable: a restart would not resend to a@.
  std::vector<queue::Envelope> spooled = Spooled();
  ASSERT_EQ(spooled.size(), 1u);
  EXPECT_EQ(spooled[0].recipients[0].state, queue::RecipientState::kDelivered);
  EXPECT_EQ(spooled[0].recipients[1].state, queue::RecipientState::kPending);
  EXPECT_EQ(spooled[0].recipients[1].attempts, 1u);
}

TEST_F(DeliveryManagerTest, BounceSpoolsAndQueuesAnRfc3464Dsn) {
  Inject({"gone@one.test", "ok@one.test"});
  Destination& one = Site("one.test");
  Attempt(one, {Result(Kind::kBounced, "5.1.1", "550 5.1.1 no such user"),
                Result(Kind::kDelivered, "2.0.0", "250 ok")});
  // The DSN goes to the sender's domain.
  ASSERT_TRUE(RunUntil([&] { return HasSite("origin.test"); }));
  Destination& origin = Site("origin.test");
  ASSERT_EQ(origin.ready, 1u);
  const queue::Envelope& dsn = Ready(origin)[0]->message->envelope;
  EXPECT_EQ(dsn.sender, "");
  EXPECT_EQ(dsn.recipients[0].address, "sender@origin.test");
  const std::string& c = *Ready(origin)[0]->message->content;
  EXPECT_TRUE(absl::StrContains(c,
                                "Final-Recipient: rfc822; gone@one.test\r\nAction: failed\r\n"
                                "Status: 5.1.1\r\nRemote-MTA: dns; mx1.dest.test\r\n"
                                "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
  EXPECT_FALSE(absl::StrContains(c, "Final-Recipient: rfc822; ok@one.test"));
  // The original is gone (all recipients final); the DSN is spooled.
  ASSERT_TRUE(RunUntil([&] { return Spooled().size() == 1; }));
  EXPECT_EQ(Spooled()[0].id, dsn.id);
  // A bounce of the bounce is never generated.
  Attempt(origin, {Result(Kind::kBounced, "5.1.1", "550 5.1.1 sender gone too")});
  ASSERT_TRUE(RunUntil([&] { return Spooled().empty(); }));
  EXPECT_EQ(manager_->destinations().size(), 2u);
  EXPECT_EQ(origin.ready, 0u);
}

TEST_F(DeliveryManagerTest, DestinationFailureAppliesToEveryWaitingJob) {
  Inject({"a@dead.test"});
  Inject({"b@dead.test"}, "");  // from <>: no DSN
  Destination& dead = Site("dead.test");
  std::optional<Job> taken = manager_->TakeJob(dead, "");
  ASSERT_TRUE(taken.has_value());
  std::vector<Job> failed;
  failed.push_back(*std::move(taken));
  manager_->DestinationFailed(dead, std::move(failed),
                              Result(Kind::kBounced, "5.1.2", "domain does not exist"));
  EXPECT_EQ(dead.ready, 0u);
  ASSERT_TRUE(RunUntil([&] { return HasSite("origin.test"); }));
  EXPECT_EQ(manager_->bounced(), 2u);
  ASSERT_TRUE(RunUntil([&] { return Spooled().size() == 1; }));  // just the one DSN
}

TEST_F(DeliveryManagerTest, DeferredPastLifetimeExpiresIntoABounce) {
  Close();
  lifetime_ = absl::Milliseconds(200);
  Open();
  Inject({"slow@one.test"});
  Destination& one = Site("one.test");
  // Keep deferring until the lifetime passes; the job must not outlive it.
  absl::Time start = absl::Now();
  while (!HasSite("origin.test")) {
    if (one.ready > 0) {
      // Once the lifetime has passed TakeJob itself expires the job instead of handing it out.
      std::optional<Job> job = manager_->TakeJob(one, "");
      if (job.has_value()) {
        auto content = job->message->content;
        manager_->CompleteJob(one, *std::move(job),
                              {Result(Kind::kDeferred, "4.4.1", "connection timed out")}, content);
      }
    }
    ASSERT_TRUE(RunUntil([&] { return one.ready > 0 || HasSite("origin.test"); }));
    ASSERT_LT(absl::Now() - start, absl::Seconds(5));
  }
  const std::string& c = *Ready(Site("origin.test"))[0]->message->content;
  EXPECT_TRUE(absl::StrContains(c, "Action: failed\r\nStatus: 4.4.7\r\n"));
  EXPECT_TRUE(absl::StrContains(c, "last error: connection timed out"));
}

TEST_F(DeliveryManagerTest, WatchdogExpiresWaitingJobsThatNoConnectionTakes) {
  Close();
  lifetime_ = absl::Milliseconds(300);
  Open();
  options_.watchdog_interval = absl::Milliseconds(50);
  Stream lasting = policy_.streams[0];
  lasting.name = "lasting";
  lasting.retry.lifetime = absl::Hours(1);
  policy_.streams.push_back(lasting);
  policy_.suspended_destinations = {"two.test"};
  Start();
  Inject({"ready@one.test"});  // ready, but nothing takes it
  Inject({"held@two.test"});   // parked by the suspension
  Inject({"long@one.test"}, "sender@origin.test", "lasting");
  EXPECT_EQ(Site("one.test").ready, 2u);
  EXPECT_EQ(manager_->parked(), 1u);
  // Both short-lived jobs expire into DSNs to origin.test; the lasting one stays.
  ASSERT_TRUE(RunUntil([&] { return HasSite("origin.test") && Site("origin.test").ready == 2; }));
  EXPECT_EQ(manager_->parked(), 0u);
  ASSERT_EQ(Ready(Site("one.test")).size(), 1u);
  EXPECT_EQ(Ready(Site("one.test"))[0]->message->envelope.recipients[0].address, "long@one.test");
  for (const Job* dsn : Ready(Site("origin.test"))) {
    EXPECT_TRUE(absl::StrContains(*dsn->message->content, "Status: 4.4.7"));
  }
}

TEST_F(DeliveryManagerTest, RecoveredMessageSkipsRecipientsAlreadyDelivered) {
  Inject({"a@one.test", "b@one.test"});
  Destination& one = Site("one.test");
  Attempt(one, {Result(Kind::kDelivered, "2.0.0", "250 ok"),
                Result(Kind::kDeferred, "4.0.0", "451 later")});
  ASSERT_TRUE(RunUntil([&] { return one.ready > 0; }));
  Close();  // "crash" and restart on the same spool
  Open();
  std::vector<queue::Envelope> spooled = Spooled();
  ASSERT_EQ(spooled.size(), 1u);
  auto msg = std::make_shared<DeliveryMessage>();
  msg->envelope = spooled[0];
  manager_->AddMessage(msg);
  Destination& again = Site("one.test");
  ASSERT_TRUE(RunUntil([&] { return again.ready > 0; }));
  std::optional<Job> job = manager_->TakeJob(again, "");
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->recipients, (std::vector<uint32_t>{1}));
}

}  // namespace
}  // namespace mta::delivery

namespace mta::delivery {
namespace {

TEST_F(DeliveryManagerTest, DomainsWithTheSameHostsShareOneSite) {
  // Re-route two.test to one.test's next hop: they now share one site.
  options_.routes = {{.domain = "one.test", .host = "127.0.0.10", .port = 25},
                     {.domain = "two.test", .host = "127.0.0.10", .port = 25}};
  policy_.default_rule.limits.max_connections = 1;
  Start();
  Inject({"a@one.test", "b@two.test"});
  ASSERT_EQ(manager_->destinations().size(), 1u);
  Destination& site = Site("one.test");
  EXPECT_EQ(site.ready, 2u);        // one job per domain...
  EXPECT_EQ(site.connections, 1u);  // ...sharing the site's single connection slot
  EXPECT_EQ(opened_.size(), 1u);
  std::optional<Job> first = manager_->TakeJob(site, "");
  std::optional<Job> second = manager_->TakeJob(site, "");
  ASSERT_TRUE(first.has_value() && second.has_value());
  EXPECT_EQ(first->domain, "one.test");
  EXPECT_EQ(second->domain, "two.test");
}

}  // namespace
}  // namespace mta::delivery

namespace mta::delivery {
namespace {

// Shaping: sources, pools, priorities, rates, backoff and suspension.
class ShapingTest : public DeliveryManagerTest {
 protected:
  void SetUp() override {
    DeliveryManagerTest::SetUp();
    for (int i = 2; i <= 4; ++i) {
      policy_.sources.push_back({.name = absl::StrCat("ip", i),
                                 .address = *IpAddress::Parse(absl::StrCat("127.0.0.", i)),
                                 .ehlo = absl::StrCat("mta", i, ".test")});
    }
    policy_.pools = {{.name = "bulk", .members = {{.source = 0, .weight = 3}, {.source = 1}}},
                     {.name = "tx", .members = {{.source = 2}}}};
    Stream bulk = policy_.streams[0];
    bulk.name = "bulk";
    bulk.pool = 0;
    Stream tx = bulk;
    tx.name = "tx";
    tx.pool = 1;
    tx.priority = 10;
    Stream shared = bulk;  // same pool as bulk, higher priority
    shared.name = "urgent";
    shared.priority = 5;
    policy_.streams = {policy_.streams[0], bulk, tx, shared};
  }

  std::vector<std::string> Streams(const Destination& d) {
    std::vector<std::string> out;
    for (const auto& q : d.queues) out.push_back(q.stream);
    return out;
  }
};

TEST_F(ShapingTest, SourcesFollowPoolWeightsWithinTheConnectionCap) {
  policy_.default_rule.limits.max_connections = 100;
  Start();
  std::vector<std::string> rcpts;
  for (int i = 0; i < 40; ++i) Inject({absl::StrCat("u", i, "@one.test")}, "s@origin.test", "bulk");
  // One connection per ready job, 3:1 between ip2 and ip3, never ip4 (another pool).
  ASSERT_EQ(opened_sources_.size(), 40u);
  EXPECT_EQ(std::count(opened_sources_.begin(), opened_sources_.end(), "ip2"), 30);
  EXPECT_EQ(std::count(opened_sources_.begin(), opened_sources_.end(), "ip3"), 10);
  // The first four follow the smooth weighted order.
  EXPECT_EQ(opened_sources_[0], "ip2");
  EXPECT_EQ(opened_sources_[1], "ip2");
  EXPECT_EQ(opened_sources_[2], "ip3");
  EXPECT_EQ(opened_sources_[3], "ip2");
}

TEST_F(ShapingTest, ConnectionCapIsPerSource) {
  policy_.default_rule.limits.max_connections = 2;
  Start();
  for (int i = 0; i < 10; ++i) Inject({absl::StrCat("u", i, "@one.test")}, "s@origin.test", "bulk");
  EXPECT_EQ(opened_sources_.size(), 4u);  // 2 via ip2 + 2 via ip3
  const Budget& b = *Site("one.test").budget;
  EXPECT_EQ(b.lanes.at("ip2").connections, 2u);
  EXPECT_EQ(b.lanes.at("ip3").connections, 2u);
  manager_->ConnectionClosed(Site("one.test"), "ip3");
  EXPECT_EQ(opened_sources_.size(), 5u);  // the freed slot is used again
  EXPECT_EQ(opened_sources_.back(), "ip3");
}

TEST_F(ShapingTest, HigherPriorityStreamsAreTakenFirst) {
  Start();
  Inject({"a@one.test"}, "s@origin.test", "bulk");
  Inject({"b@one.test"}, "s@origin.test", "bulk");
  Inject({"c@one.test"}, "s@origin.test", "urgent");
  Destination& one = Site("one.test");
  EXPECT_EQ(Streams(one), (std::vector<std::string>{"urgent", "bulk"}));
  // ip2 carries both streams (same pool): the urgent job goes first, then bulk in order.
  std::optional<Job> j1 = manager_->TakeJob(one, "ip2");
  std::optional<Job> j2 = manager_->TakeJob(one, "ip2");
  ASSERT_TRUE(j1.has_value() && j2.has_value());
  EXPECT_EQ(j1->message->envelope.recipients[0].address, "c@one.test");
  EXPECT_EQ(j2->message->envelope.recipients[0].address, "a@one.test");
}

TEST_F(ShapingTest, ReservedConnectionsAreKeptForTheTopPriority) {
  policy_.default_rule.limits.max_connections = 3;
  policy_.default_rule.limits.reserved_connections = 1;
  policy_.streams[3].priority = 10;  // "urgent" shares the bulk pool at the top priority
  Start();
  for (int i = 0; i < 4; ++i) Inject({absl::StrCat("b", i, "@one.test")}, "s@origin.test", "bulk");
  Destination& one = Site("one.test");
  // Connections open up to the cap (the reserved one too, so it is warm when needed) ...
  EXPECT_EQ(std::count(opened_sources_.begin(), opened_sources_.end(), "ip2"), 3);
  // ... but bulk mail keeps at most 3 - 1 of a source's connections busy.
  std::optional<Job> b0 = manager_->TakeJob(one, "ip2");
  std::optional<Job> b1 = manager_->TakeJob(one, "ip2");
  ASSERT_TRUE(b0.has_value() && b1.has_value());
  EXPECT_FALSE(manager_->TakeJob(one, "ip2").has_value());
  EXPECT_EQ(one.ready, 2u);
  // The lane of another source has its own reserve.
  std::optional<Job> other = manager_->TakeJob(one, "ip3");
  ASSERT_TRUE(other.has_value());
  // Top-priority mail takes the reserved connection at once.
  Inject({"u@one.test"}, "s@origin.test", "urgent");
  std::optional<Job> u = manager_->TakeJob(one, "ip2");
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->message->envelope.recipients[0].address, "u@one.test");
  // A finished or returned bulk job frees its slot for the next one.
  Job done = *std::move(b0);
  manager_->CompleteJob(one, done, {Result(Kind::kDelivered, "2.0.0", "ok")},
                        done.message->content);
  std::optional<Job> b2 = manager_->TakeJob(one, "ip2");
  ASSERT_TRUE(b2.has_value());
  EXPECT_FALSE(manager_->TakeJob(one, "ip2").has_value());
  manager_->ReturnJob(one, *std::move(b1));
  EXPECT_TRUE(manager_->TakeJob(one, "ip2").has_value());
  EXPECT_FALSE(manager_->TakeJob(one, "ip2").has_value());
}

TEST_F(ShapingTest, ANewStreamAtASiteLeavesTheWaitingJobsInPlace) {
  Start();
  for (int i = 0; i < 100; ++i)
    Inject({absl::StrCat("b", i, "@one.test")}, "s@origin.test", "bulk");
  Destination& one = Site("one.test");
  const Job* first = &one.queues.front().jobs.front();
  Inject({"t@one.test"}, "s@origin.test", "urgent");
  Inject({"t@one.test"}, "s@origin.test", "tx");
  EXPECT_EQ(Streams(one), (std::vector<std::string>{"tx", "urgent", "bulk"}));
  EXPECT_EQ(&one.queues.back().jobs.front(), first);  // not copied
}

TEST_F(ShapingTest, ASourceOnlyCarriesStreamsOfItsPools) {
  Start();
  Inject({"a@one.test"}, "s@origin.test", "tx");
  Destination& one = Site("one.test");
  EXPECT_FALSE(manager_->TakeJob(one, "ip2").has_value());  // bulk pool only
  EXPECT_FALSE(manager_->TakeJob(one, "").has_value());
  EXPECT_TRUE(manager_->TakeJob(one, "ip4").has_value());
  ASSERT_FALSE(opened_sources_.empty());
  EXPECT_EQ(opened_sources_[0], "ip4");
}

TEST_F(ShapingTest, MessageRateIsATokenBucketPerSource) {
  policy_.default_rule.limits.rate_per_second = 20;  // one token per 50 ms
  policy_.default_rule.limits.burst = 2;
  Start();
  for (int i = 0; i < 6; ++i) Inject({absl::StrCat("u", i, "@one.test")}, "s@origin.test", "tx");
  Destination& one = Site("one.test");
  EXPECT_TRUE(manager_->TakeJob(one, "ip4").has_value());
  EXPECT_TRUE(manager_->TakeJob(one, "ip4").has_value());
  EXPECT_FALSE(manager_->TakeJob(one, "ip4").has_value());  // burst spent
  EXPECT_NE(one.budget->wake_timer, 0u);                    // a pump is due at the next token
  absl::Time t0 = absl::Now();
  ASSERT_TRUE(RunUntil([&] { return absl::Now() - t0 >= absl::Milliseconds(60); }));
  EXPECT_TRUE(manager_->TakeJob(one, "ip4").has_value());
  EXPECT_FALSE(manager_->TakeJob(one, "ip4").has_value());
}

TEST_F(ShapingTest, RecipientCapSplitsJobsWhenTaken) {
  policy_.default_rule.limits.max_recipients_per_transaction = 3;
  Start();
  Inject({"a@one.test", "b@one.test", "c@one.test", "d@one.test", "e@one.test"});
  Destination& one = Site("one.test");
  std::optional<Job> first = manager_->TakeJob(one, "");
  std::optional<Job> second = manager_->TakeJob(one, "");
  ASSERT_TRUE(first.has_value() && second.has_value());
  EXPECT_EQ(first->recipients, (std::vector<uint32_t>{0, 1, 2}));
  EXPECT_EQ(second->recipients, (std::vector<uint32_t>{3, 4}));
  EXPECT_EQ(one.ready, 0u);
}

TEST_F(ShapingTest, SuspendBackoffPausesTheSourceThenEasesBack) {
  BackoffRule rule;
  rule.code = 421;
  rule.text = std::make_shared<const RE2>("(?i)too many connections");
  rule.duration = absl::Milliseconds(100);
  policy_.default_rule.limits.backoff = {rule};
  policy_.default_rule.limits.max_connections = 4;
  policy_.default_rule.limits.restore_interval = absl::Milliseconds(100);
  Start();
  Inject({"a@one.test"}, "s@origin.test", "tx");
  Destination& one = Site("one.test");
  EXPECT_FALSE(manager_->ObserveReply(one, "ip4", 450, "4.2.1", "mailbox busy"));  // no match
  EXPECT_TRUE(manager_->ObserveReply(one, "ip4", 421, "4.7.0", "Too many connections, slow down"));
  EXPECT_EQ(manager_->backoff_events(), 1u);
  EXPECT_FALSE(manager_->TakeJob(one, "ip4").has_value());  // paused
  const Lane& lane = one.budget->lanes.at("ip4");
  EXPECT_EQ(DeliveryManager::ConnectionCap(*one.budget->rule, lane), 2u);  // half speed after
  absl::Time t0 = absl::Now();
  ASSERT_TRUE(RunUntil([&] { return absl::Now() - t0 >= absl::Milliseconds(110); }));
  EXPECT_TRUE(manager_->TakeJob(one, "ip4").has_value());  // released
  ASSERT_TRUE(RunUntil([&] { return absl::Now() - t0 >= absl::Milliseconds(220); }));
  manager_->TakeJob(one, "ip4");  // any look at the lane eases it one step
  EXPECT_EQ(DeliveryManager::ConnectionCap(*one.budget->rule, one.budget->lanes.at("ip4")), 4u);
}

TEST_F(ShapingTest, SlowBackoffCutsTheRate) {
  BackoffRule rule;
  rule.enhanced = "4.7.";
  rule.action = BackoffRule::Action::kSlow;
  rule.rate_factor = 0.25;
  policy_.default_rule.limits.backoff = {rule};
  policy_.default_rule.limits.max_connections = 8;
  policy_.default_rule.limits.restore_interval = absl::Hours(1);
  Start();
  Inject({"a@one.test"}, "s@origin.test", "tx");
  Destination& one = Site("one.test");
  EXPECT_FALSE(manager_->ObserveReply(one, "ip4", 451, "4.7.1", "rate limited"));
  EXPECT_EQ(DeliveryManager::ConnectionCap(*one.budget->rule, one.budget->lanes.at("ip4")), 2u);
  EXPECT_TRUE(manager_->TakeJob(one, "ip4").has_value());  // slowed, not paused
}

TEST_F(ShapingTest, MxSuffixRuleSharesOneBudgetAcrossSites) {
  ShapingRule big{.name = "bigmail", .match = ShapingRule::Match::kMxSuffix, .pattern = ".0.10"};
  big.limits.max_connections = 1;
  policy_.rules = {big};
  options_.routes = {{.domain = "one.test", .host = "127.0.0.10", .port = 25},
                     {.domain = "two.test", .host = "127.0.0.10", .port = 26}};
  Start();
  Inject({"a@one.test", "b@two.test"});
  // Two sites (different ports) under one budget with one connection slot between them.
  ASSERT_EQ(manager_->destinations().size(), 2u);
  ASSERT_EQ(manager_->budgets().size(), 1u);
  EXPECT_EQ(manager_->budgets().begin()->first, "rule:bigmail");
  EXPECT_EQ(opened_.size(), 1u);
}

TEST_F(ShapingTest, SuspendedDomainsAndStreamsWaitUntilAReloadResumesThem) {
  policy_.suspended_destinations = {"one.test"};
  policy_.suspended_streams = {"tx"};
  Start();
  Inject({"a@one.test"});
  Inject({"b@two.test"}, "s@origin.test", "tx");
  Inject({"c@two.test"});
  EXPECT_EQ(manager_->parked(), 2u);
  EXPECT_FALSE(HasSite("one.test"));
  EXPECT_EQ(Site("two.test").ready, 1u);
  // Resume the domain, suspend another: parked mail moves, queued mail is parked.
  TrafficPolicy next = policy_;
  next.suspended_destinations = {"two.test"};
  next.suspended_streams.clear();
  manager_->SetPolicy(Indexed(next));
  ASSERT_TRUE(RunUntil([&] { return HasSite("one.test") && manager_->parked() == 2u; }));
  EXPECT_EQ(Site("one.test").ready, 1u);
  EXPECT_EQ(Site("two.test").ready, 0u);
}

TEST_F(ShapingTest, SuspendedSourceIsSkipped) {
  policy_.suspended_sources = {"ip2"};
  policy_.default_rule.limits.max_connections = 100;
  Start();
  for (int i = 0; i < 5; ++i) Inject({absl::StrCat("u", i, "@one.test")}, "s@origin.test", "bulk");
  EXPECT_EQ(std::count(opened_sources_.begin(), opened_sources_.end(), "ip3"), 5);
  EXPECT_FALSE(manager_->TakeJob(Site("one.test"), "ip2").has_value());
  manager_->SourceDown("ip3", "bind failed");
  EXPECT_FALSE(manager_->TakeJob(Site("one.test"), "ip3").has_value());
}

}  // namespace
}  // namespace mta::delivery
