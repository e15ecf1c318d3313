#include "metrics/event_log.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace mta::metrics {

class EventLogPeer {
 public:
  /** While paused the writer takes no batch, so pending lines stay in memory. */
  static void SetPaused(EventLog* log, bool paused) {
    absl::MutexLock lock(&log->mu_);
    log->paused_for_test_ = paused;
  }
};

namespace {

namespace fs = std::filesystem;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class EventLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    dir_ = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/event_log_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }

  EventLogOptions Options() {
    EventLogOptions options;
    options.directory = dir_;
    options.flush_interval = absl::Milliseconds(5);
    return options;
  }

  std::vector<std::string> Files() {
    absl::StatusOr<std::vector<std::string>> files = ListEventLogFiles(dir_);
    EXPECT_TRUE(files.ok()) << files.status();
    return files.ok() ? *files : std::vector<std::string>{};
  }

  std::string Read(const std::string& name) { return ReadFile(absl::StrCat(dir_, "/", name)); }

  /** All files' contents, oldest first. */
  std::string ReadAll() {
    std::string all;
    for (const std::string& name : Files()) all += Read(name);
    return all;
  }

  std::string dir_;
};

TEST(EventLogFileNameTest, RecognizesStableNames) {
  EXPECT_TRUE(IsEventLogFileName("events-20240131T235959-000000.jsonl"));
  EXPECT_TRUE(IsEventLogFileName("events-20240131T235959-123456.jsonl"));
  EXPECT_FALSE(IsEventLogFileName("events.jsonl"));
  EXPECT_FALSE(IsEventLogFileName("events-20240131T235959-00000.jsonl"));
  EXPECT_FALSE(IsEventLogFileName("events-20240131X235959-000000.jsonl"));
  EXPECT_FALSE(IsEventLogFileName("events-20240131T235959-000000.json"));
  EXPECT_FALSE(IsEventLogFileName("webhook.cursor"));
}

TEST_F(EventLogTest, OpenRejectsBadOptions) {
  EventLogOptions options = Options();
  options.directory = "";
  EXPECT_EQ(EventLog::Open(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = Options();
  options.max_file_bytes = 0;
  EXPECT_EQ(EventLog::Open(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(EventLogTest, AppendAndFlushWriteLines) {
  auto log = EventLog::Open(Options());
  ASSERT_TRUE(log.ok()) << log.status();
  ASSERT_TRUE(fs::is_directory(dir_));  // created
  (*log)->Append(R"({"a":1})");
  (*log)->Append("{\"b\":\n2}");  // a newline must not split the line
  (*log)->Append("");             // dropped
  (*log)->Flush();
  const std::string expected = "{\"a\":1}\n{\"b\": 2}\n";
  EXPECT_EQ(Read(kEventLogLiveFileName), expected);
  EXPECT_EQ((*log)->appended(), 2u);
  EXPECT_EQ((*log)->dropped(), 1u);
  EXPECT_EQ((*log)->written_bytes(), expected.size());
  // events.jsonl is a hard link to the newest stable name.
  std::vector<std::string> files = Files();
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(Read(files[0]), expected);
}

TEST_F(EventLogTest, DestructorWritesEverything) {
  EventLogOptions options = Options();
  options.flush_interval = absl::Minutes(10);  // only the destructor writes
  {
    auto log = EventLog::Open(options);
    ASSERT_TRUE(log.ok()) << log.status();
    for (int i = 0; i < 100; ++i) (*log)->Append(absl::StrCat(R"({"i":)", i, "}"));
  }
  std::string expected;
  for (int i = 0; i < 100; ++i) absl::StrAppend(&expected, R"({"i":)", i, "}\n");
  EXPECT_EQ(ReadAll(), expected);
}

TEST_F(EventLogTest, RotatesBySizeWithWholeLinesInOrder) {
  EventLogOptions options = Options();
  options.max_file_bytes = 1000;
  options.max_files = 100;
  auto log = EventLog::Open(options);
  ASSERT_TRUE(log.ok()) << log.status();
  std::string expected;
  for (int i = 0; i < 200; ++i) {
    std::string line = absl::StrCat(R"({"i":)", i, R"(,"p":")", std::string(i % 40, 'x'), "\"}");
    absl::StrAppend(&expected, line, "\n");
    (*log)->Append(std::move(line));
  }
  (*log)->Flush();
  std::vector<std::string> files = Files();
  ASSERT_GT(files.size(), 5u);
  for (const std::string& name : files) {
    const std::string content = Read(name);
    EXPECT_LE(content.size(), 1000u) << name;
    EXPECT_FALSE(content.empty()) << name;
    EXPECT_EQ(content.back(), '\n') << name;
  }
  EXPECT_EQ(ReadAll(), expected);
  // events.jsonl is the newest file.
  struct stat live, newest;
  ASSERT_EQ(stat(absl::StrCat(dir_, "/", kEventLogLiveFileName).c_str(), &live), 0);
  ASSERT_EQ(stat(absl::StrCat(dir_, "/", files.back()).c_str(), &newest), 0);
  EXPECT_EQ(live.st_ino, newest.st_ino);
}

TEST_F(EventLogTest, OversizedLineGetsAFileOfItsOwn) {
  EventLogOptions options = Options();
  options.max_file_bytes = 100;
  auto log = EventLog::Open(options);
  ASSERT_TRUE(log.ok()) << log.status();
  const std::string big = absl::StrCat(R"({"p":")", std::string(300, 'x'), "\"}");
  (*log)->Append(R"({"a":1})");
  (*log)->Append(big);
  (*log)->Append(R"({"b":2})");
  (*log)->Flush();
  std::vector<std::string> files = Files();
  ASSERT_EQ(files.size(), 3u);
  EXPECT_EQ(Read(files[0]), "{\"a\":1}\n");
  EXPECT_EQ(Read(files[1]), big + "\n");
  EXPECT_EQ(Read(files[2]), "{\"b\":2}\n");
}

TEST_F(EventLogTest, ReopenRotatesInOrderWithAppends) {
  auto log = EventLog::Open(Options());
  ASSERT_TRUE(log.ok()) << log.status();
  (*log)->Reopen();  // empty live file: nothing to rotate
  (*log)->Append(R"({"a":1})");
  (*log)->Reopen();
  (*log)->Append(R"({"b":2})");
  (*log)->Flush();
  std::vector<std::string> files = Files();
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(Read(files[0]), "{\"a\":1}\n");
  EXPECT_EQ(Read(files[1]), "{\"b\":2}\n");
  EXPECT_EQ(Read(kEventLogLiveFileName), "{\"b\":2}\n");
}

TEST_F(EventLogTest, MaxFilesDeletesTheOldest) {
  EventLogOptions options = Options();
  options.max_files = 2;
  auto log = EventLog::Open(options);
  ASSERT_TRUE(log.ok()) << log.status();
  for (int i = 0; i < 6; ++i) {
    (*log)->Append(absl::StrCat(R"({"i":)", i, "}"));
    (*log)->Reopen();
  }
  (*log)->Append(R"({"i":6})");
  (*log)->Flush();
  std::vector<std::string> files = Files();
  ASSERT_EQ(files.size(), 3u);  // two complete files and the live one
  EXPECT_EQ(Read(files[0]), "{\"i\":4}\n");
  EXPECT_EQ(Read(files[1]), "{\"i\":5}\n");
  EXPECT_EQ(Read(files[2]), "{\"i\":6}\n");
}

TEST_F(EventLogTest, DropsBeyondThePendingCap) {
  EventLogOptions options = Options();
  options.max_pending_bytes = 1000;
  auto log = EventLog::Open(options);
  ASSERT_TRUE(log.ok()) << log.status();
  EventLogPeer::SetPaused(log->get(), true);
  const std::string line = absl::StrCat("{\"p\":\"", std::string(99 - 8, 'x'), "\"}");
  ASSERT_EQ(line.size(), 99u);  // 100 bytes with its newline
  for (int i = 0; i < 10; ++i) (*log)->Append(line);
  EXPECT_EQ((*log)->appended(), 10u);
  EXPECT_EQ((*log)->dropped(), 0u);
  (*log)->Append(line);                                                      // the cap is full
  (*log)->Append(absl::StrCat("{\"p\":\"", std::string(2000, 'x'), "\"}"));  // never fits
  EXPECT_EQ((*log)->appended(), 10u);
  EXPECT_EQ((*log)->dropped(), 2u);
  EventLogPeer::SetPaused(log->get(), false);
  (*log)->Flush();
  std::string expected;
  for (int i = 0; i < 10; ++i) absl::StrAppend(&expected, line, "\n");
  EXPECT_EQ(ReadAll(), expected);
  // Room again once written.
  (*log)->Append(line);
  EXPECT_EQ((*log)->appended(), 11u);
}

TEST_F(EventLogTest, ConcurrentAppendsStayWholeAndOrderedPerThread) {
  EventLogOptions options = Options();
  options.max_file_bytes = 64 << 10;
  options.max_files = 1000;
  options.flush_interval = absl::Milliseconds(1);
  auto log = EventLog::Open(options);
  ASSERT_TRUE(log.ok()) << log.status();
  constexpr int kThreads = 4;
  constexpr int kLines = 5000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&log, t] {
      for (int i = 0; i < kLines; ++i) {
        // Lines of different lengths, padded with the thread's own letter.
        (*log)->Append(absl::StrCat(R"({"t":)", t, R"(,"i":)", i, R"(,"p":")",
                                    std::string(i % 97, static_cast<char>('a' + t)), "\"}"));
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  (*log)->Flush();
  EXPECT_EQ((*log)->appended(), static_cast<uint64_t>(kThreads * kLines));
  EXPECT_EQ((*log)->dropped(), 0u);
  EXPECT_GT(Files().size(), 10u);  // rotated under load
  int next[kThreads] = {};
  int total = 0;
  for (absl::string_view line : absl::StrSplit(ReadAll(), '\n', absl::SkipEmpty())) {
    // {"t":T,"i":I,"p":"ppp"}
    std::vector<absl::string_view> parts = absl::StrSplit(line, absl::ByAnyChar(":,"));
    ASSERT_EQ(parts.size(), 6u) << line;
    int t = 0, i = 0;
    ASSERT_TRUE(absl::SimpleAtoi(parts[1], &t)) << line;
    ASSERT_TRUE(absl::SimpleAtoi(parts[3], &i)) << line;
    ASSERT_TRUE(t >= 0 && t < kThreads) << line;
    ASSERT_EQ(i, next[t]) << "thread " << t << " out of order: " << line;
    ++next[t];
    EXPECT_EQ(line, absl::StrCat(R"({"t":)", t, R"(,"i":)", i, R"(,"p":")",
                                 std::string(i % 97, static_cast<char>('a' + t)), "\"}"));
    ++total;
  }
  EXPECT_EQ(total, kThreads * kLines);
}

TEST_F(EventLogTest, AFailedWriteKeepsWholeLinesAndDropsTheRest) {
  EventLogOptions options = Options();
  options.flush_interval = absl::Minutes(10);  // written by Flush only
  auto log = EventLog::Open(options);
  ASSERT_TRUE(log.ok()) << log.status();
  // Writes past 1 MiB fail with EFBIG (instead of SIGXFSZ), in the middle of a writev.
  signal(SIGXFSZ, SIG_IGN);
  rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  rlimit limit = {1 << 20, old_limit.rlim_max};
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  const std::string line = absl::StrCat("{\"p\":\"", std::string(99 - 8, 'x'), "\"}");
  for (int i = 0; i < 15000; ++i) (*log)->Append(line);  // 1.5 MB
  (*log)->Flush();
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
  signal(SIGXFSZ, SIG_DFL);
  (*log)->Append(R"({"after":1})");
  (*log)->Flush();

  constexpr int kWhole = (1 << 20) / 100;  // 10485 lines fit; the next one was cut off
  EXPECT_EQ((*log)->dropped(), static_cast<uint64_t>(15000 - kWhole));
  std::string expected;
  for (int i = 0; i < kWhole; ++i) absl::StrAppend(&expected, line, "\n");
  absl::StrAppend(&expected, "{\"after\":1}\n");
  EXPECT_TRUE(Read(kEventLogLiveFileName) == expected);  // (too long to print)
  EXPECT_EQ((*log)->written_bytes(), expected.size());
}

TEST_F(EventLogTest, OpenTurnsThePreviousLiveFileIntoACompleteOne) {
  {
    auto log = EventLog::Open(Options());
    ASSERT_TRUE(log.ok()) << log.status();
    (*log)->Append(R"({"run":1})");
  }
  {
    auto log = EventLog::Open(Options());
    ASSERT_TRUE(log.ok()) << log.status();
    (*log)->Append(R"({"run":2})");
    (*log)->Flush();
    std::vector<std::string> files = Files();
    ASSERT_EQ(files.size(), 2u);
    EXPECT_EQ(Read(files[0]), "{\"run\":1}\n");
    EXPECT_EQ(Read(files[1]), "{\"run\":2}\n");
    EXPECT_EQ(Read(kEventLogLiveFileName), "{\"run\":2}\n");
  }
  // A run that wrote nothing leaves no empty file behind.
  { ASSERT_TRUE(EventLog::Open(Options()).ok()); }
  { ASSERT_TRUE(EventLog::Open(Options()).ok()); }
  EXPECT_EQ(Files().size(), 3u);
}

TEST_F(EventLogTest, OpenGivesAForeignLiveFileAStableName) {
  fs::create_directories(dir_);
  std::ofstream(absl::StrCat(dir_, "/", kEventLogLiveFileName)) << "{\"old\":1}\n";
  auto log = EventLog::Open(Options());
  ASSERT_TRUE(log.ok()) << log.status();
  std::vector<std::string> files = Files();
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(Read(files[0]), "{\"old\":1}\n");
  EXPECT_EQ(Read(kEventLogLiveFileName), "");
}

TEST_F(EventLogTest, SecondOpenOfTheSameDirectoryFails) {
  auto log = EventLog::Open(Options());
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(EventLog::Open(Options()).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(EventLogTest, KeepsFilesTheWebhookHasNotShipped) {
  EventLogOptions options = Options();
  options.max_files = 1;
  options.retain_for_webhook = true;
  auto log = EventLog::Open(options);
  ASSERT_TRUE(log.ok()) << log.status();
  for (int i = 0; i < 5; ++i) {
    (*log)->Append(absl::StrCat(R"({"i":)", i, "}"));
    (*log)->Reopen();
  }
  (*log)->Flush();
  // No cursor reported yet: everything counts as unshipped.
  std::vector<std::string> files = Files();
  ASSERT_EQ(files.size(), 6u);
  // Shipped up to the fourth file: the three before it may go, the fourth and fifth stay.
  (*log)->SetWebhookCursor(files[3], 0);
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (Files().size() > 3 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(2));
  EXPECT_EQ(Files(), std::vector<std::string>(files.begin() + 3, files.end()));
  EXPECT_EQ((*log)->webhook_lost_events(), 0u);
}

TEST_F(EventLogTest, BacklogCapDeletesTheOldestUnshippedFiles) {
  EventLogOptions options = Options();
  options.max_files = 1;
  options.retain_for_webhook = true;
  options.webhook_backlog_max_bytes = 300;
  auto log = EventLog::Open(options);
  ASSERT_TRUE(log.ok()) << log.status();
  (*log)->SetWebhookCursor("", 0);  // nothing shipped
  const std::string line = absl::StrCat("{\"p\":\"", std::string(49 - 8, 'x'), "\"}");
  ASSERT_EQ(line.size(), 49u);  // three lines make 150 bytes
  for (int file = 0; file < 4; ++file) {
    for (int i = 0; i < 3; ++i) (*log)->Append(line);
    (*log)->Reopen();
    (*log)->Flush();
  }
  // Unshipped after each rotation: 150, 300, 450 (> 300: the oldest file goes), 450 again.
  EXPECT_EQ((*log)->webhook_lost_events(), 6u);
  EXPECT_EQ(Files().size(), 3u);  // two complete files of 150 bytes and the empty live one
}

}  // namespace
}  // namespace mta::metrics
