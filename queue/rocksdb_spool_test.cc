#include "queue/rocksdb_spool.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "queue/envelope.h"
#include "queue/queue_id.h"
#include "queue/spool.h"

namespace mta::queue {
namespace {

constexpr absl::Duration kWait = absl::Seconds(120);

// A fresh directory under TEST_TMPDIR for each test.
std::string TestDir(absl::string_view name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::string base = tmp != nullptr ? tmp : std::filesystem::temp_directory_path().string();
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string dir = absl::StrCat(base, "/", info->test_suite_name(), ".", info->name(), "/", name);
  std::filesystem::remove_all(dir);
  return dir;
}

RocksDbSpoolOptions Options(const std::string& path) {
  RocksDbSpoolOptions o;
  o.path = path;
  o.min_free_bytes = 0;  // do not depend on the test machine's free space
  o.health_check_interval_ms = 50;
  return o;
}

SpoolPtr MustOpen(const RocksDbSpoolOptions& options) {
  auto spool = OpenRocksDbSpool(options);
  EXPECT_TRUE(spool.ok()) << spool.status();
  return spool.ok() ? *std::move(spool) : nullptr;
}

// Deterministic record: content varies in size (small, around the 512-byte blob threshold,
// large) and holds binary bytes.
std::unique_ptr<SpoolRecord> MakeRecord(const std::string& id, int n) {
  auto r = std::make_unique<SpoolRecord>();
  Envelope& e = r->envelope;
  e.id = id;
  e.sender = n % 5 == 0 ? "" : absl::StrCat("sender", n, "@example.com");
  e.ret = static_cast<DsnRet>(n % 3);
  e.envid = absl::StrCat("env", n);
  e.stream = "default";
  e.listener = "mx";
  e.client_ip = "192.0.2.7";
  e.helo = "client.example";
  e.received_ms = 1700000000000 + n;
  e.next_attempt_ms = e.received_ms + 1000;
  for (int i = 0; i <= n % 3; ++i) {
    Recipient rcpt;
    rcpt.address = absl::StrCat("rcpt", i, "-", n, "@example.net");
    rcpt.notify = static_cast<uint8_t>(n % 16);
    e.recipients.push_back(rcpt);
  }
  size_t size = n % 10 == 0 ? 100000 + n : (n % 3 == 0 ? 511 + n % 3 : 40 + n % 200);
  std::string& c = r->content;
  c = absl::StrCat("Subject: message ", n, "\r\n\r\n");
  for (size_t i = 0; c.size() < size; ++i) {
    c.push_back(static_cast<char>((i * 131 + n) & 0xff));  // includes NUL, CR, LF, 0x80+
  }
  e.content_bytes = c.size();
  return r;
}

// Collects commit callbacks from the writer thread.
class Callbacks {
 public:
  CommitCallback Make() {
    return [this](absl::Status status, std::unique_ptr<SpoolRecord> record) {
      absl::MutexLock lock(&mu_);
      ++done_;
      if (status.ok()) {
        ++ok_;
      } else {
        errors_.push_back(status);
      }
      if (record == nullptr) {
        ++null_records_;
      } else {
        ids_.push_back(record->envelope.id);
      }
    };
  }
  bool WaitFor(int n) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, n]() { return done_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), kWait);
  }
  int done() {
    absl::MutexLock lock(&mu_);
    return done_;
  }
  int ok() {
    absl::MutexLock lock(&mu_);
    return ok_;
  }
  int null_records() {
    absl::MutexLock lock(&mu_);
    return null_records_;
  }
  std::vector<absl::Status> errors() {
    absl::MutexLock lock(&mu_);
    return errors_;
  }
  std::vector<std::string> ids() {
    absl::MutexLock lock(&mu_);
    return ids_;
  }

 private:
  absl::Mutex mu_;
  int done_ ABSL_GUARDED_BY(mu_) = 0;
  int ok_ ABSL_GUARDED_BY(mu_) = 0;
  int null_records_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<absl::Status> errors_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> ids_ ABSL_GUARDED_BY(mu_);
};

std::vector<Envelope> RecoverAll(Spool& spool) {
  std::vector<Envelope> out;
  absl::Status s = spool.Recover([&](Envelope e) { out.push_back(std::move(e)); });
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

TEST(RocksDbSpoolTest, ConcurrentCommitsSurviveReopen) {
  const std::string dir = TestDir("spool");
  constexpr int kThreads = 4;
  constexpr int kPerThread = 150;
  constexpr int kTotal = kThreads * kPerThread;

  // Expected records by id, built up front so threads only commit.
  std::map<std::string, std::unique_ptr<SpoolRecord>> expected;
  std::vector<std::vector<std::string>> ids_by_thread(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    QueueIdGenerator gen(t, 1000 * t);
    for (int i = 0; i < kPerThread; ++i) {
      std::string id = gen.Next(1700000000000 + i * 3 + t);
      ids_by_thread[t].push_back(id);
      expected[id] = MakeRecord(id, t * kPerThread + i);
    }
  }
  ASSERT_EQ(expected.size(), static_cast<size_t>(kTotal));

  Callbacks callbacks;
  {
    SpoolPtr spool = MustOpen(Options(dir));
    ASSERT_NE(spool, nullptr);
    EXPECT_TRUE(spool->Healthy()) << spool->HealthReason();
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (const std::string& id : ids_by_thread[t]) {
          auto copy = std::make_unique<SpoolRecord>(*expected.at(id));
          spool->Commit(std::move(copy), callbacks.Make());
        }
      });
    }
    for (auto& th : threads) th.join();
    ASSERT_TRUE(callbacks.WaitFor(kTotal)) << "only " << callbacks.done() << " callbacks";
    EXPECT_EQ(callbacks.ok(), kTotal);
    EXPECT_TRUE(callbacks.errors().empty()) << callbacks.errors().front();
    EXPECT_EQ(callbacks.null_records(), 0);
    // Every record came back to its callback.
    std::vector<std::string> cb_ids = callbacks.ids();
    std::sort(cb_ids.begin(), cb_ids.end());
    std::vector<std::string> all_ids;
    for (const auto& [id, rec] : expected) all_ids.push_back(id);
    EXPECT_EQ(cb_ids, all_ids);

    SpoolStats stats = spool->Stats();
    EXPECT_EQ(stats.commits, static_cast<uint64_t>(kTotal));
    EXPECT_EQ(stats.commit_errors, 0u);
    EXPECT_GE(stats.batches, 1u);
    EXPECT_LE(stats.batches, static_cast<uint64_t>(kTotal));
    EXPECT_TRUE(spool->Healthy());

    // Visible before reopen too.
    EXPECT_EQ(RecoverAll(*spool).size(), static_cast<size_t>(kTotal));
    spool->Shutdown();
  }

  SpoolPtr reopened = MustOpen(Options(dir));
  ASSERT_NE(reopened, nullptr);
  std::vector<Envelope> recovered = RecoverAll(*reopened);
  ASSERT_EQ(recovered.size(), static_cast<size_t>(kTotal));
  auto it = expected.begin();  // std::map iterates in id order
  for (size_t i = 0; i < recovered.size(); ++i, ++it) {
    EXPECT_EQ(recovered[i].id, it->first) << "position " << i;
    EXPECT_EQ(recovered[i], it->second->envelope) << it->first;
    if (i > 0) {
      EXPECT_LT(recovered[i - 1].id, recovered[i].id);
    }
  }
  for (const auto& [id, rec] : expected) {
    auto content = reopened->ReadContent(id);
    ASSERT_TRUE(content.ok()) << id << ": " << content.status();
    EXPECT_TRUE(*content == rec->content)
        << id << " differs (" << content->size() << " vs " << rec->content.size() << " bytes)";
  }
  auto missing = reopened->ReadContent("ffffffffffffffffffff");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  reopened->Shutdown();
}

TEST(RocksDbSpoolTest, ShutdownCompletesPendingCommits) {
  const std::string dir = TestDir("spool");
  constexpr int kCount = 300;
  Callbacks callbacks;
  std::vector<std::string> ids;
  {
    RocksDbSpoolOptions options = Options(dir);
    options.max_batch_records = 7;
    SpoolPtr spool = MustOpen(options);
    ASSERT_NE(spool, nullptr);
    QueueIdGenerator gen(0, 0);
    for (int i = 0; i < kCount; ++i) {
      ids.push_back(gen.Next(1700000000000));
      spool->Commit(MakeRecord(ids.back(), i), callbacks.Make());
    }
    spool->Shutdown();  // must not return before every queued record is answered
    EXPECT_EQ(callbacks.done(), kCount);
    EXPECT_EQ(callbacks.ok(), kCount);
    SpoolStats stats = spool->Stats();
    EXPECT_EQ(stats.commits, static_cast<uint64_t>(kCount));
    // No batch holds more than max_batch_records.
    EXPECT_GE(stats.batches, static_cast<uint64_t>((kCount + 6) / 7));

    // After shutdown, commits fail at once and hand the record back.
    Callbacks late;
    spool->Commit(MakeRecord("late", 1), late.Make());
    EXPECT_EQ(late.done(), 1);
    ASSERT_EQ(late.errors().size(), 1u);
    EXPECT_EQ(late.errors()[0].code(), absl::StatusCode::kUnavailable);
    EXPECT_EQ(late.null_records(), 0);
    EXPECT_EQ(late.ids(), std::vector<std::string>({"late"}));
    spool->Shutdown();  // idempotent
  }
  SpoolPtr reopened = MustOpen(Options(dir));
  ASSERT_NE(reopened, nullptr);
  std::vector<Envelope> recovered = RecoverAll(*reopened);
  ASSERT_EQ(recovered.size(), ids.size());
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(recovered[i].id, ids[i]);
  auto late_content = reopened->ReadContent("late");
  EXPECT_EQ(late_content.status().code(), absl::StatusCode::kNotFound);
}

TEST(RocksDbSpoolTest, DestructorCompletesPendingCommits) {
  const std::string dir = TestDir("spool");
  Callbacks callbacks;
  {
    SpoolPtr spool = MustOpen(Options(dir));
    ASSERT_NE(spool, nullptr);
    QueueIdGenerator gen(1, 0);
    for (int i = 0; i < 50; ++i) spool->Commit(MakeRecord(gen.Next(5), i), callbacks.Make());
  }
  EXPECT_EQ(callbacks.done(), 50);
  EXPECT_EQ(callbacks.ok(), 50);
  SpoolPtr reopened = MustOpen(Options(dir));
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(RecoverAll(*reopened).size(), 50u);
}

TEST(RocksDbSpoolTest, FreeSpaceFloorMakesSpoolUnhealthy) {
  const std::string dir = TestDir("spool");
  RocksDbSpoolOptions options = Options(dir);
  options.min_free_bytes = std::numeric_limits<uint64_t>::max();
  {
    SpoolPtr spool = MustOpen(options);
    ASSERT_NE(spool, nullptr);
    EXPECT_FALSE(spool->Healthy());
    EXPECT_NE(spool->HealthReason().find("free disk"), std::string::npos) << spool->HealthReason();
    Callbacks callbacks;
    spool->Commit(MakeRecord("00000000000100000001", 1), callbacks.Make());
    ASSERT_TRUE(callbacks.WaitFor(1));
    ASSERT_EQ(callbacks.errors().size(), 1u);
    EXPECT_FALSE(callbacks.errors()[0].ok());
    EXPECT_EQ(callbacks.errors()[0].code(), absl::StatusCode::kUnavailable);
    EXPECT_EQ(callbacks.null_records(), 0);
    SpoolStats stats = spool->Stats();
    EXPECT_EQ(stats.commits, 0u);
    EXPECT_EQ(stats.commit_errors, 1u);
    EXPECT_FALSE(spool->Healthy());
    spool->Shutdown();
  }
  // Nothing was written.
  SpoolPtr reopened = MustOpen(Options(dir));
  ASSERT_NE(reopened, nullptr);
  EXPECT_TRUE(reopened->Healthy());
  EXPECT_TRUE(RecoverAll(*reopened).empty());
  EXPECT_EQ(reopened->ReadContent("00000000000100000001").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(RocksDbSpoolTest, EmptySpoolRecoversNothing) {
  SpoolPtr spool = MustOpen(Options(TestDir("spool")));
  ASSERT_NE(spool, nullptr);
  EXPECT_TRUE(spool->Healthy());
  EXPECT_TRUE(RecoverAll(*spool).empty());
  SpoolStats stats = spool->Stats();
  EXPECT_EQ(stats.commits, 0u);
  EXPECT_EQ(stats.batches, 0u);
}

TEST(RocksDbSpoolTest, OverwriteKeepsLatestVersion) {
  const std::string dir = TestDir("spool");
  SpoolPtr spool = MustOpen(Options(dir));
  ASSERT_NE(spool, nullptr);
  Callbacks callbacks;
  auto first = MakeRecord("00000000000a00000001", 1);
  auto second = MakeRecord("00000000000a00000001", 2);
  const Envelope second_env = second->envelope;
  const std::string second_content = second->content;
  spool->Commit(std::move(first), callbacks.Make());
  ASSERT_TRUE(callbacks.WaitFor(1));
  spool->Commit(std::move(second), callbacks.Make());
  ASSERT_TRUE(callbacks.WaitFor(2));
  EXPECT_EQ(callbacks.ok(), 2);
  std::vector<Envelope> recovered = RecoverAll(*spool);
  ASSERT_EQ(recovered.size(), 1u);
  EXPECT_EQ(recovered[0], second_env);
  auto content = spool->ReadContent("00000000000a00000001");
  ASSERT_TRUE(content.ok());
  EXPECT_EQ(*content, second_content);
}

TEST(RocksDbSpoolTest, OpenFailures) {
  const std::string dir = TestDir("spool");
  // A path below a regular file cannot be created.
  std::filesystem::create_directories(dir);
  const std::string file = dir + "/plain-file";
  std::ofstream(file) << "x";
  auto below_file = OpenRocksDbSpool(Options(file + "/spool"));
  EXPECT_FALSE(below_file.ok());

  // The same spool cannot be opened twice at once (RocksDB's LOCK file).
  SpoolPtr first = MustOpen(Options(dir + "/db"));
  ASSERT_NE(first, nullptr);
  auto second = OpenRocksDbSpool(Options(dir + "/db"));
  EXPECT_FALSE(second.ok());
  first->Shutdown();
  first.reset();
  SpoolPtr again = MustOpen(Options(dir + "/db"));
  EXPECT_NE(again, nullptr);
}

}  // namespace
}  // namespace mta::queue

namespace mta::queue {
namespace {

// Blocks until a WriteCallback has run; returns its status.
absl::Status Wait(const std::function<void(WriteCallback)>& start) {
  absl::Mutex mu;
  bool done = false;
  absl::Status result;
  start([&](absl::Status s) {
    absl::MutexLock lock(&mu);
    result = s;
    done = true;
  });
  absl::MutexLock lock(&mu);
  mu.AwaitWithTimeout(absl::Condition(&done), kWait);
  EXPECT_TRUE(done);
  return result;
}

TEST(RocksDbSpoolOutcomesTest, OutcomesSurviveReopenAndRemoveDeletesEverything) {
  std::string dir = TestDir("spool");
  {
    SpoolPtr spool = MustOpen(Options(dir));
    Callbacks cb;
    spool->Commit(MakeRecord("00000000000100000001", 2), cb.Make());  // 3 recipients
    spool->Commit(MakeRecord("00000000000200000002", 5), cb.Make());  // 3 recipients
    ASSERT_TRUE(cb.WaitFor(2));
    ASSERT_EQ(cb.ok(), 2);
    ASSERT_TRUE(Wait([&](WriteCallback done) {
                  spool->RecordOutcomes(
                      "00000000000100000001",
                      {{.index = 0, .state = RecipientState::kDelivered, .attempts = 1},
                       {.index = 2,
                        .state = RecipientState::kPending,
                        .attempts = 2,
                        .next_attempt_ms = 99}},
                      std::move(done));
                }).ok());
    ASSERT_TRUE(Wait([&](WriteCallback done) {
                  spool->RecordOutcomes(
                      "00000000000200000002",
                      {{.index = 1, .state = RecipientState::kBounced, .attempts = 1}},
                      std::move(done));
                }).ok());
  }
  {
    SpoolPtr spool = MustOpen(Options(dir));
    std::vector<Envelope> all = RecoverAll(*spool);
    ASSERT_EQ(all.size(), 2u);
    EXPECT_EQ(all[0].recipients[0].state, RecipientState::kDelivered);
    EXPECT_EQ(all[0].recipients[0].attempts, 1u);
    EXPECT_EQ(all[0].recipients[1].state, RecipientState::kPending);
    EXPECT_EQ(all[0].recipients[2].attempts, 2u);
    // The neighbouring message's outcomes do not leak into the first one and vice versa.
    EXPECT_EQ(all[1].recipients[0].state, RecipientState::kPending);
    EXPECT_EQ(all[1].recipients[1].state, RecipientState::kBounced);
    ASSERT_TRUE(Wait([&](WriteCallback done) {
                  spool->Remove("00000000000100000001", std::move(done));
                }).ok());
    EXPECT_TRUE(absl::IsNotFound(spool->ReadContent("00000000000100000001").status()));
  }
  SpoolPtr spool = MustOpen(Options(dir));
  std::vector<Envelope> all = RecoverAll(*spool);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].id, "00000000000200000002");
  EXPECT_EQ(all[0].recipients[1].state, RecipientState::kBounced);
}

TEST(RocksDbSpoolOutcomesTest, DiskFloorRefusesNewMessagesButNotOutcomes) {
  std::string dir = TestDir("spool");
  SpoolPtr spool = MustOpen(Options(dir));
  Callbacks cb;
  spool->Commit(MakeRecord("00000000000100000001", 1), cb.Make());
  ASSERT_TRUE(cb.WaitFor(1));
  spool.reset();
  RocksDbSpoolOptions o = Options(dir);
  o.min_free_bytes = std::numeric_limits<uint64_t>::max();
  spool = MustOpen(o);
  ASSERT_FALSE(spool->Healthy());
  Callbacks refused;
  spool->Commit(MakeRecord("00000000000200000002", 2), refused.Make());
  ASSERT_TRUE(refused.WaitFor(1));
  EXPECT_EQ(refused.ok(), 0);
  EXPECT_TRUE(Wait([&](WriteCallback done) {
                spool->RecordOutcomes("00000000000100000001",
                                      {{.index = 0, .state = RecipientState::kDelivered}},
                                      std::move(done));
              }).ok());
  EXPECT_TRUE(Wait([&](WriteCallback done) {
                spool->Remove("00000000000100000001", std::move(done));
              }).ok());
  EXPECT_TRUE(RecoverAll(*spool).empty());
}

}  // namespace
}  // namespace mta::queue
