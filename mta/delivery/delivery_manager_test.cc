#include "mta/delivery/delivery_manager.h"

#include <cstdlib>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "queue/rocksdb_spool.h"

namespace mta::delivery {
namespace {

using Kind = AttemptResult::Kind;

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
    DeliveryOptions o;
    o.hostname = "mx.test";
    o.retry.intervals = {absl::Milliseconds(50)};
    o.retry.jitter = 0;
    o.retry.lifetime = lifetime_;
    o.max_connections_per_destination = 2;
    o.max_recipients_per_transaction = 2;
    // Every test domain has its own next hop, so each is its own site.
    int n = 10;
    for (const char* d : {"one.test", "two.test", "dead.test", "origin.test"}) {
      o.routes.push_back({.domain = d, .host = absl::StrCat("127.0.0.", n++), .port = 25});
    }
    manager_ = std::make_unique<DeliveryManager>(
        0, 1, loop_.get(), spool_.get(), loader_.get(), &ids_, /*resolver=*/nullptr, o,
        [this](uint32_t, absl::AnyInvocable<void(DeliveryManager&)> fn) {
          loop_->Post([this, fn = std::move(fn)]() mutable { fn(*manager_); });
        },
        [this](Destination& d) { opened_.push_back(&d); });
  }

  void Close() {
    manager_.reset();
    loader_.reset();
    spool_->Shutdown();
    spool_.reset();
    loop_.reset();
  }

  void TearDown() override {
    if (spool_) Close();
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
                                          std::string sender = "sender@origin.test") {
    auto record = std::make_unique<queue::SpoolRecord>();
    record->envelope.id = ids_.Next(absl::ToUnixMillis(absl::Now()));
    record->envelope.sender = sender;
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
    return absl::StrCat("127.0.0.", n, ":25/opportunistic");
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
    std::optional<Job> job = manager_->TakeJob(d);
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
  std::unique_ptr<DeliveryManager> manager_;
  std::vector<Destination*> opened_;
};

TEST_F(DeliveryManagerTest, GroupsByDomainSplitsBigTransactionsAndRemovesWhenDone) {
  Inject({"a@one.test", "b@two.test", "c@one.test", "d@one.test"});
  ASSERT_EQ(manager_->destinations().size(), 2u);
  Destination& one = Site("one.test");
  Destination& two = Site("two.test");
  EXPECT_EQ(one.ready.size(), 2u);  // 3 recipients, at most 2 per transaction
  EXPECT_EQ(one.connections, 2u);   // capped at 2
  EXPECT_EQ(two.connections, 1u);
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
  EXPECT_TRUE(one.ready.empty());
  ASSERT_TRUE(RunUntil([&] { return !one.ready.empty(); }));
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(45));
  EXPECT_EQ(manager_->scheduled(), 0u);
  EXPECT_EQ(manager_->deferred(), 1u);
  EXPECT_EQ(manager_->delivered(), 1u);
  std::optional<Job> retry = manager_->TakeJob(one);
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
  ASSERT_EQ(origin.ready.size(), 1u);
  const queue::Envelope& dsn = origin.ready.front().message->envelope;
  EXPECT_EQ(dsn.sender, "");
  EXPECT_EQ(dsn.recipients[0].address, "sender@origin.test");
  const std::string& c = *origin.ready.front().message->content;
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
  EXPECT_TRUE(origin.ready.empty());
}

TEST_F(DeliveryManagerTest, DestinationFailureAppliesToEveryWaitingJob) {
  Inject({"a@dead.test"});
  Inject({"b@dead.test"}, "");  // from <>: no DSN
  Destination& dead = Site("dead.test");
  std::optional<Job> taken = manager_->TakeJob(dead);
  ASSERT_TRUE(taken.has_value());
  std::vector<Job> failed;
  failed.push_back(*std::move(taken));
  manager_->DestinationFailed(dead, std::move(failed),
                              Result(Kind::kBounced, "5.1.2", "domain does not exist"));
  EXPECT_TRUE(dead.ready.empty());
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
    if (!one.ready.empty()) {
      // Once the lifetime has passed TakeJob itself expires the job instead of handing it out.
      std::optional<Job> job = manager_->TakeJob(one);
      if (job.has_value()) {
        auto content = job->message->content;
        manager_->CompleteJob(one, *std::move(job),
                              {Result(Kind::kDeferred, "4.4.1", "connection timed out")}, content);
      }
    }
    ASSERT_TRUE(RunUntil([&] { return !one.ready.empty() || HasSite("origin.test"); }));
    ASSERT_LT(absl::Now() - start, absl::Seconds(5));
  }
  const std::string& c = *Site("origin.test").ready.front().message->content;
  EXPECT_TRUE(absl::StrContains(c, "Action: failed\r\nStatus: 4.4.7\r\n"));
  EXPECT_TRUE(absl::StrContains(c, "last error: connection timed out"));
}

TEST_F(DeliveryManagerTest, RecoveredMessageSkipsRecipientsAlreadyDelivered) {
  Inject({"a@one.test", "b@one.test"});
  Destination& one = Site("one.test");
  Attempt(one, {Result(Kind::kDelivered, "2.0.0", "250 ok"),
                Result(Kind::kDeferred, "4.0.0", "451 later")});
  ASSERT_TRUE(RunUntil([&] { return !one.ready.empty(); }));
  Close();  // "crash" and restart on the same spool
  Open();
  std::vector<queue::Envelope> spooled = Spooled();
  ASSERT_EQ(spooled.size(), 1u);
  auto msg = std::make_shared<DeliveryMessage>();
  msg->envelope = spooled[0];
  manager_->AddMessage(msg);
  Destination& again = Site("one.test");
  ASSERT_TRUE(RunUntil([&] { return !again.ready.empty(); }));
  std::optional<Job> job = manager_->TakeJob(again);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->recipients, (std::vector<uint32_t>{1}));
}

}  // namespace
}  // namespace mta::delivery

namespace mta::delivery {
namespace {

TEST_F(DeliveryManagerTest, DomainsWithTheSameHostsShareOneSite) {
  Close();
  Open();
  // Re-route two.test to one.test's next hop: they now share one site.
  manager_.reset();
  DeliveryOptions o;
  o.hostname = "mx.test";
  o.max_connections_per_destination = 1;
  o.routes = {{.domain = "one.test", .host = "127.0.0.10", .port = 25},
              {.domain = "two.test", .host = "127.0.0.10", .port = 25}};
  manager_ = std::make_unique<DeliveryManager>(
      0, 1, loop_.get(), spool_.get(), loader_.get(), &ids_, nullptr, o,
      [this](uint32_t, absl::AnyInvocable<void(DeliveryManager&)> fn) {
        loop_->Post([this, fn = std::move(fn)]() mutable { fn(*manager_); });
      },
      [this](Destination& d) { opened_.push_back(&d); });
  opened_.clear();
  Inject({"a@one.test", "b@two.test"});
  ASSERT_EQ(manager_->destinations().size(), 1u);
  Destination& site = Site("one.test");
  EXPECT_EQ(site.ready.size(), 2u);  // one job per domain...
  EXPECT_EQ(site.connections, 1u);   // ...sharing the site's single connection slot
  EXPECT_EQ(opened_.size(), 1u);
  std::optional<Job> first = manager_->TakeJob(site);
  std::optional<Job> second = manager_->TakeJob(site);
  ASSERT_TRUE(first.has_value() && second.has_value());
  EXPECT_EQ(first->domain, "one.test");
  EXPECT_EQ(second->domain, "two.test");
}

}  // namespace
}  // namespace mta::delivery
