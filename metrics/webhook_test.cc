#include "metrics/webhook.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "metrics/event_log.h"

namespace mta::metrics {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string TmpDir() {
  const char* tmp = std::getenv("TEST_TMPDIR");
  return tmp != nullptr ? tmp : "/tmp";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool WaitFor(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(5)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return true;
}

/** Runs argv[0] with the arguments, waits for it; returns its exit status. */
int RunCommand(const std::vector<std::string>& argv) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> args;
    for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, STDERR_FILENO);
    execv(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

/** The webhook_test_receiver.py subprocess: a real HTTP(S) server recording each POST. */
class Receiver {
 public:
  static std::unique_ptr<Receiver> Start(const std::string& record_path,
                                         const std::string& statuses = "",
                                         const std::string& cert = "",
                                         const std::string& key = "") {
    const char* srcdir = std::getenv("TEST_SRCDIR");
    const char* workspace = std::getenv("TEST_WORKSPACE");
    std::string script = "metrics/webhook_test_receiver.py";
    if (srcdir != nullptr) {
      script = absl::StrCat(srcdir, "/", workspace != nullptr ? workspace : "mta", "/", script);
    }
    std::vector<std::string> argv = {"/usr/bin/python3", script,       "--record",
                                     record_path,        "--statuses", statuses};
    if (!cert.empty()) {
      argv.insert(argv.end(), {"--cert", cert, "--key", key});
    }
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) return nullptr;
    const pid_t pid = fork();
    if (pid == 0) {
      std::vector<char*> args;
      for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
      args.push_back(nullptr);
      dup2(out[1], STDOUT_FILENO);
      execv(args[0], args.data());
      _exit(127);
    }
    close(out[1]);
    auto receiver = std::unique_ptr<Receiver>(new Receiver(pid, record_path));
    // The port, once it listens.
    std::string line;
    pollfd pfd = {out[0], POLLIN, 0};
    while (line.find('\n') == std::string::npos && poll(&pfd, 1, 10000) == 1) {
      char buf[64];
      const ssize_t n = read(out[0], buf, sizeof(buf));
      if (n <= 0) break;
      line.append(buf, static_cast<size_t>(n));
    }
    close(out[0]);
    receiver->port_ = std::atoi(line.c_str());
    if (receiver->port_ <= 0) return nullptr;
    return receiver;
  }

  ~Receiver() { Stop(); }

  void Stop() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }

  int port() const { return port_; }

  std::vector<json> Records() const {
    std::vector<json> records;
    for (absl::string_view line : absl::StrSplit(ReadFile(record_path_), '\n', absl::SkipEmpty())) {
      records.push_back(json::parse(line));
    }
    return records;
  }

  /** The events of the batches answered 2xx, in order. */
  std::vector<json> AcceptedEvents() const {
    std::vector<json> events;
    for (const json& record : Records()) {
      if (record["status"].get<int>() / 100 != 2) continue;
      for (const json& event : record["events"]) events.push_back(event);
    }
    return events;
  }

 private:
  Receiver(pid_t pid, std::string record_path) : pid_(pid), record_path_(std::move(record_path)) {}

  pid_t pid_;
  std::string record_path_;
  int port_ = 0;
};

/** A port on which nothing listens (bound, then closed). */
int ClosedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

std::string Event(int seq) { return absl::StrCat(R"({"seq":)", seq, R"(,"pad":"0123456789"})"); }

std::vector<int> Seqs(const std::vector<json>& events) {
  std::vector<int> seqs;
  for (const json& event : events) seqs.push_back(event["seq"].get<int>());
  return seqs;
}

std::vector<int> Range(int begin, int end) {
  std::vector<int> out;
  for (int i = begin; i < end; ++i) out.push_back(i);
  return out;
}

class WebhookTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = absl::StrCat(TmpDir(), "/webhook_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(base_);
    fs::create_directories(base_);
    dir_ = base_ + "/log";
  }

  EventLogOptions LogOptions() {
    EventLogOptions options;
    options.directory = dir_;
    options.flush_interval = absl::Milliseconds(5);
    options.retain_for_webhook = true;
    return options;
  }

  static WebhookOptions FastOptions(const std::string& url) {
    WebhookOptions options;
    options.url = url;
    options.batch_interval = absl::Milliseconds(10);
    options.timeout = absl::Seconds(3);
    options.min_backoff = absl::Milliseconds(10);
    options.max_backoff = absl::Milliseconds(50);
    return options;
  }

  static std::string Url(int port, const std::string& path = "/hook") {
    return absl::StrCat("http://127.0.0.1:", port, path);
  }

  std::vector<std::string> Files() {
    absl::StatusOr<std::vector<std::string>> files = ListEventLogFiles(dir_);
    return files.ok() ? *files : std::vector<std::string>{};
  }

  std::string base_;
  std::string dir_;
};

TEST(WebhookUrlTest, Parses) {
  auto url = WebhookShipper::ParseUrl("http://example.com/a/b?c=d#frag");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_FALSE(url->https);
  EXPECT_EQ(url->host, "example.com");
  EXPECT_EQ(url->port, 80);
  EXPECT_EQ(url->path, "/a/b?c=d");
  EXPECT_EQ(url->host_header, "example.com");

  url = WebhookShipper::ParseUrl("HTTPS://[::1]:8443");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_TRUE(url->https);
  EXPECT_EQ(url->host, "::1");
  EXPECT_EQ(url->port, 8443);
  EXPECT_EQ(url->path, "/");
  EXPECT_EQ(url->host_header, "[::1]:8443");

  url = WebhookShipper::ParseUrl("https://hooks.example:443?x");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->path, "/?x");
  EXPECT_EQ(url->host_header, "hooks.example");

  for (const char* bad : {"ftp://x/", "http://", "http://:80/", "http://h:0/", "http://h:99999/",
                          "http://user:pw@h/", "http://[::1/", "http://[nope]/", "http://h/a b"}) {
    EXPECT_EQ(WebhookShipper::ParseUrl(bad).status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

TEST_F(WebhookTest, StartRejectsBadOptions) {
  auto log = EventLog::Open(LogOptions());
  ASSERT_TRUE(log.ok()) << log.status();
  WebhookOptions options = FastOptions("http://127.0.0.1:1/");
  options.headers = {{"X-Bad", "a\r\nInjected: 1"}};
  EXPECT_EQ(WebhookShipper::Start(options, log->get()).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.headers = {{"Content-Length", "5"}};
  EXPECT_EQ(WebhookShipper::Start(options, log->get()).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = FastOptions("http://127.0.0.1:1/");
  options.max_batch_events = 0;
  EXPECT_EQ(WebhookShipper::Start(options, log->get()).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = FastOptions("https://127.0.0.1:1/");
  options.ca_file = base_ + "/missing.pem";
  EXPECT_EQ(WebhookShipper::Start(options, log->get()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(WebhookTest, ShipsEveryEventOnceInOrder) {
  EventLogOptions log_options = LogOptions();
  log_options.max_file_bytes = 2048;  // several rotations
  auto log = EventLog::Open(log_options);
  ASSERT_TRUE(log.ok()) << log.status();
  auto receiver = Receiver::Start(base_ + "/record.jsonl");
  ASSERT_NE(receiver, nullptr);
  WebhookOptions options = FastOptions(Url(receiver->port(), "/hook?x=1"));
  options.max_batch_events = 100;
  options.headers = {{"Authorization", "Bearer t0ken"}};
  auto shipper = WebhookShipper::Start(options, log->get());
  ASSERT_TRUE(shipper.ok()) << shipper.status();

  for (int i = 0; i < 700; ++i) (*log)->Append(Event(i));
  ASSERT_TRUE(WaitFor([&] { return (*shipper)->shipped_events() >= 700; }))
      << (*shipper)->shipped_events();
  // A second wave after the shipper went idle.
  absl::SleepFor(absl::Milliseconds(30));
  for (int i = 700; i < 1000; ++i) (*log)->Append(Event(i));
  ASSERT_TRUE(WaitFor([&] { return (*shipper)->shipped_events() >= 1000; }))
      << (*shipper)->shipped_events();
  absl::SleepFor(absl::Milliseconds(30));  // nothing more arrives
  EXPECT_EQ((*shipper)->shipped_events(), 1000u);
  EXPECT_EQ((*shipper)->failed_posts(), 0u);

  std::vector<json> records = receiver->Records();
  ASSERT_GE(records.size(), 10u);
  for (const json& record : records) {
    EXPECT_EQ(record["status"], 200);
    EXPECT_TRUE(record["valid"].get<bool>());
    EXPECT_LE(record["events"].size(), 100u);
    EXPECT_EQ(record["path"], "/hook?x=1");
    EXPECT_EQ(record["headers"]["content-type"], "application/json");
    EXPECT_EQ(record["headers"]["authorization"], "Bearer t0ken");
    EXPECT_EQ(record["headers"]["host"], absl::StrCat("127.0.0.1:", receiver->port()));
  }
  EXPECT_EQ(Seqs(receiver->AcceptedEvents()), Range(0, 1000));
  EXPECT_EQ(receiver->AcceptedEvents()[0], json::parse(Event(0)));

  // The cursor names the end of the live file.
  std::vector<std::string> files = Files();
  ASSERT_GT(files.size(), 5u);
  const auto size = fs::file_size(dir_ + "/" + files.back());
  EXPECT_EQ(ReadFile(dir_ + "/webhook.cursor"), absl::StrCat(files.back(), " ", size, "\n"));
  EXPECT_TRUE(WaitFor([&] { return (*shipper)->backlog_bytes() == 0; }));
  // Shipped files are subject to max_files again (default 10) once the cursor passed them.
  EXPECT_TRUE(WaitFor([&] { return Files().size() <= 11; })) << Files().size();
}

TEST_F(WebhookTest, RetriesAfterServerErrorsWithoutLoss) {
  auto log = EventLog::Open(LogOptions());
  ASSERT_TRUE(log.ok()) << log.status();
  auto receiver = Receiver::Start(base_ + "/record.jsonl", "500,503");
  ASSERT_NE(receiver, nullptr);
  for (int i = 0; i < 50; ++i) (*log)->Append(Event(i));
  (*log)->Flush();
  auto shipper = WebhookShipper::Start(FastOptions(Url(receiver->port())), log->get());
  ASSERT_TRUE(shipper.ok()) << shipper.status();
  ASSERT_TRUE(WaitFor([&] { return (*shipper)->shipped_events() >= 50; }));
  EXPECT_EQ((*shipper)->shipped_events(), 50u);
  EXPECT_EQ((*shipper)->failed_posts(), 2u);
  std::vector<json> records = receiver->Records();
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0]["status"], 500);
  EXPECT_EQ(records[1]["status"], 503);
  EXPECT_EQ(records[2]["status"], 200);
  // The same batch each time.
  EXPECT_EQ(records[0]["events"], records[2]["events"]);
  EXPECT_EQ(records[1]["events"], records[2]["events"]);
  EXPECT_EQ(Seqs(receiver->AcceptedEvents()), Range(0, 50));
}

TEST_F(WebhookTest, BacklogSurvivesAnOutageAndARestart) {
  EventLogOptions log_options = LogOptions();
  log_options.max_file_bytes = 1024;
  log_options.max_files = 1;
  auto receiver_a = Receiver::Start(base_ + "/a.jsonl");
  ASSERT_NE(receiver_a, nullptr);
  std::string cursor_during_outage;
  {
    auto log = EventLog::Open(log_options);
    ASSERT_TRUE(log.ok()) << log.status();
    auto shipper = WebhookShipper::Start(FastOptions(Url(receiver_a->port())), log->get());
    ASSERT_TRUE(shipper.ok()) << shipper.status();
    for (int i = 0; i < 100; ++i) (*log)->Append(Event(i));
    ASSERT_TRUE(WaitFor([&] { return (*shipper)->shipped_events() >= 100; }));

    receiver_a->Stop();  // the endpoint goes down
    for (int i = 100; i < 800; ++i) (*log)->Append(Event(i));
    (*log)->Flush();
    ASSERT_TRUE(WaitFor([&] { return (*shipper)->failed_posts() >= 3; }));
    EXPECT_EQ((*shipper)->shipped_events(), 100u);
    // ~22 KB in 1 KB files: far more than max_files, all kept because unshipped.
    EXPECT_GT(Files().size(), 15u);
    EXPECT_TRUE(WaitFor([&] { return (*shipper)->backlog_bytes() > 15000; }))
        << (*shipper)->backlog_bytes();
    cursor_during_outage = ReadFile(dir_ + "/webhook.cursor");
    // mtad stops: shipper first, then the log.
  }
  EXPECT_EQ(Seqs(receiver_a->AcceptedEvents()), Range(0, 100));
  EXPECT_EQ(ReadFile(dir_ + "/webhook.cursor"), cursor_during_outage);

  // mtad starts again, and so does the endpoint, elsewhere.
  auto receiver_b = Receiver::Start(base_ + "/b.jsonl");
  ASSERT_NE(receiver_b, nullptr);
  auto log = EventLog::Open(log_options);
  ASSERT_TRUE(log.ok()) << log.status();
  auto shipper = WebhookShipper::Start(FastOptions(Url(receiver_b->port())), log->get());
  ASSERT_TRUE(shipper.ok()) << shipper.status();
  for (int i = 800; i < 850; ++i) (*log)->Append(Event(i));
  ASSERT_TRUE(WaitFor([&] { return (*shipper)->shipped_events() >= 750; }))
      << (*shipper)->shipped_events();
  absl::SleepFor(absl::Milliseconds(30));
  EXPECT_EQ((*shipper)->shipped_events(), 750u);
  EXPECT_EQ(Seqs(receiver_b->AcceptedEvents()), Range(100, 850));

  // Shipped, the files are subject to max_files again: one complete file and the live one.
  EXPECT_TRUE(WaitFor([&] { return Files().size() <= 2; })) << Files().size();
}

TEST_F(WebhookTest, ContinuesAfterTheBacklogCapDeletedItsFile) {
  EventLogOptions log_options = LogOptions();
  log_options.max_file_bytes = 1024;
  log_options.max_files = 1;
  log_options.webhook_backlog_max_bytes = 3000;
  auto log = EventLog::Open(log_options);
  ASSERT_TRUE(log.ok()) << log.status();
  auto receiver_a = Receiver::Start(base_ + "/a.jsonl");
  ASSERT_NE(receiver_a, nullptr);
  {
    auto shipper = WebhookShipper::Start(FastOptions(Url(receiver_a->port())), log->get());
    ASSERT_TRUE(shipper.ok()) << shipper.status();
    for (int i = 0; i < 10; ++i) (*log)->Append(Event(i));
    ASSERT_TRUE(WaitFor([&] { return (*shipper)->shipped_events() >= 10; }));
    receiver_a->Stop();
    // ~10 KB while the endpoint is down: the oldest unshipped files, the cursor's among them,
    // are deleted to stay under 3000 bytes.
    for (int i = 10; i < 310; ++i) (*log)->Append(Event(i));
    (*log)->Flush();
    ASSERT_TRUE(WaitFor([&] { return (*shipper)->failed_posts() >= 1; }));
  }
  const uint64_t lost = (*log)->webhook_lost_events();
  ASSERT_GT(lost, 200u);
  auto receiver_b = Receiver::Start(base_ + "/b.jsonl");
  ASSERT_NE(receiver_b, nullptr);
  auto shipper = WebhookShipper::Start(FastOptions(Url(receiver_b->port())), log->get());
  ASSERT_TRUE(shipper.ok()) << shipper.status();
  ASSERT_TRUE(WaitFor([&] { return (*shipper)->shipped_events() >= 300 - lost; }));
  absl::SleepFor(absl::Milliseconds(30));
  // Exactly the events the log did not report lost.
  EXPECT_EQ(Seqs(receiver_b->AcceptedEvents()), Range(10 + static_cast<int>(lost), 310));
}

TEST_F(WebhookTest, ShipsWhatAnEarlierRunLeftWithoutACursor) {
  // A previous run (or a crash) left a live file with a non-JSON line and a cut-off last line.
  fs::create_directories(dir_);
  std::ofstream(dir_ + "/events.jsonl") << Event(0) << "\nnot json\n\n"
                                        << Event(1) << "\n{\"seq\":2,";
  auto log = EventLog::Open(LogOptions());
  ASSERT_TRUE(log.ok()) << log.status();
  (*log)->Append(Event(3));
  auto receiver = Receiver::Start(base_ + "/record.jsonl");
  ASSERT_NE(receiver, nullptr);
  auto shipper = WebhookShipper::Start(FastOptions(Url(receiver->port())), log->get());
  ASSERT_TRUE(shipper.ok()) << shipper.status();
  ASSERT_TRUE(WaitFor([&] { return (*shipper)->shipped_events() >= 3; }));
  absl::SleepFor(absl::Milliseconds(30));
  EXPECT_EQ(Seqs(receiver->AcceptedEvents()), (std::vector<int>{0, 1, 3}));
}

TEST_F(WebhookTest, HttpsVerifiesTheServer) {
  // A certificate for localhost and 127.0.0.1, and one for another name.
  auto make_cert = [this](const std::string& name, const std::string& san) {
    return RunCommand({"/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                       "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                       base_ + "/" + name + ".key", "-out", base_ + "/" + name + ".pem", "-days",
                       "2", "-subj", "/CN=" + name, "-addext", "subjectAltName=" + san}) == 0;
  };
  ASSERT_TRUE(make_cert("good", "DNS:localhost,IP:127.0.0.1"));
  ASSERT_TRUE(make_cert("other", "DNS:other.example"));
  auto receiver =
      Receiver::Start(base_ + "/good.jsonl", "", base_ + "/good.pem", base_ + "/good.key");
  ASSERT_NE(receiver, nullptr);
  auto other =
      Receiver::Start(base_ + "/other.jsonl", "", base_ + "/other.pem", base_ + "/other.key");
  ASSERT_NE(other, nullptr);
  auto log = EventLog::Open(LogOptions());
  ASSERT_TRUE(log.ok()) << log.status();
  for (int i = 0; i < 20; ++i) (*log)->Append(Event(i));

  {
    // The system's trust store does not know this certificate: nothing is shipped.
    auto shipper = WebhookShipper::Start(
        FastOptions(absl::StrCat("https://localhost:", receiver->port(), "/tls")), log->get());
    ASSERT_TRUE(shipper.ok()) << shipper.status();
    ASSERT_TRUE(WaitFor([&] { return (*shipper)->failed_posts() >= 2; }));
    EXPECT_EQ((*shipper)->shipped_events(), 0u);
  }
  {
    // Trusted, but issued for another name.
    WebhookOptions options = FastOptions(absl::StrCat("https://localhost:", other->port(), "/"));
    options.ca_file = base_ + "/other.pem";
    auto shipper = WebhookShipper::Start(options, log->get());
    ASSERT_TRUE(shipper.ok()) << shipper.status();
    ASSERT_TRUE(WaitFor([&] { return (*shipper)->failed_posts() >= 2; }));
    EXPECT_EQ((*shipper)->shipped_events(), 0u);
  }
  EXPECT_TRUE(receiver->Records().empty());
  EXPECT_TRUE(other->Records().empty());

  // Trusted via ca_file, by name (SNI and host name check) and by IP address.
  for (const std::string host : {"localhost", "127.0.0.1"}) {
    WebhookOptions options =
        FastOptions(absl::StrCat("https://", host, ":", receiver->port(), "/tls"));
    options.ca_file = base_ + "/good.pem";
    auto shipper = WebhookShipper::Start(options, log->get());
    ASSERT_TRUE(shipper.ok()) << shipper.status();
    if (host == "localhost") {
      ASSERT_TRUE(WaitFor([&] { return (*shipper)->shipped_events() >= 20; }));
    } else {
      (*log)->Append(Event(20));
      ASSERT_TRUE(WaitFor([&] { return (*shipper)->shipped_events() >= 1; }));
    }
    EXPECT_EQ((*shipper)->failed_posts(), 0u);
  }
  EXPECT_EQ(Seqs(receiver->AcceptedEvents()), Range(0, 21));
  EXPECT_EQ(receiver->Records()[0]["path"], "/tls");
}

TEST_F(WebhookTest, TimesOutOnASilentServerAndStopsPromptly) {
  // Accepts connections (the kernel does, from the backlog) but never answers.
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(listener, 16), 0);
  socklen_t len = sizeof(addr);
  getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);

  auto log = EventLog::Open(LogOptions());
  ASSERT_TRUE(log.ok()) << log.status();
  (*log)->Append(Event(0));
  {
    WebhookOptions options = FastOptions(Url(port));
    options.timeout = absl::Milliseconds(100);
    auto shipper = WebhookShipper::Start(options, log->get());
    ASSERT_TRUE(shipper.ok()) << shipper.status();
    ASSERT_TRUE(WaitFor([&] { return (*shipper)->failed_posts() >= 2; }));
    EXPECT_EQ((*shipper)->shipped_events(), 0u);
  }
  {
    WebhookOptions options = FastOptions(Url(port));
    options.timeout = absl::Minutes(1);
    auto shipper = WebhookShipper::Start(options, log->get());
    ASSERT_TRUE(shipper.ok()) << shipper.status();
    absl::SleepFor(absl::Milliseconds(100));  // a POST is waiting for its answer
    const absl::Time start = absl::Now();
    shipper->reset();
    EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  }
  close(listener);
}

TEST_F(WebhookTest, ConnectionRefusedIsRetried) {
  auto log = EventLog::Open(LogOptions());
  ASSERT_TRUE(log.ok()) << log.status();
  (*log)->Append(Event(0));
  auto shipper = WebhookShipper::Start(FastOptions(Url(ClosedPort())), log->get());
  ASSERT_TRUE(shipper.ok()) << shipper.status();
  ASSERT_TRUE(WaitFor([&] { return (*shipper)->failed_posts() >= 3; }));
  EXPECT_EQ((*shipper)->shipped_events(), 0u);
  EXPECT_FALSE(fs::exists(dir_ + "/webhook.cursor"));
}

}  // namespace
}  // namespace mta::metrics
