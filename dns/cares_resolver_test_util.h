// Shared helpers for the CaresResolver tests: test zones, an nsd server on loopback, and the
// fixtures that run a resolver on an io_uring loop thread.
#ifndef DNS_CARES_RESOLVER_TEST_UTIL_H_
#define DNS_CARES_RESOLVER_TEST_UTIL_H_

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "dns/cares_resolver.h"
#include "dns/resolver.h"
#include "gtest/gtest.h"
#include "mta/base/net.h"
#include "mta/event/event_loop.h"

extern char** environ;

namespace mta::dns {

inline constexpr char kNsdBinary[] = "/usr/sbin/nsd";
// Generous on purpose: the machine may be loaded by parallel builds.
inline constexpr absl::Duration kCallbackWait = absl::Seconds(60);
inline constexpr absl::Duration kNsdStartWait = absl::Seconds(60);
inline constexpr absl::Duration kNsdStopWait = absl::Seconds(30);

inline constexpr char kExampleZone[] = R"($ORIGIN example.test.
$TTL 3600
@        IN SOA  ns hostmaster 1 3600 600 86400 300
@        IN NS   ns
ns       IN A    127.0.0.1
multi    IN MX   10 mx1a
multi    IN MX   10 mx1b
multi    IN MX   20 mx2
multi    IN MX   5 mx0
mx0      IN A    192.0.2.100
mx1a     IN A    192.0.2.101
mx1b     IN A    192.0.2.102
mx2      IN A    192.0.2.103
aonly    IN A    192.0.2.1
aonly    IN AAAA 2001:db8::1
nullmx   IN MX   0 .
nullmx   IN A    192.0.2.2
noaddr   IN TXT  "no addresses here"
both     IN A    192.0.2.10
both     IN A    192.0.2.11
both     IN AAAA 2001:db8::10
v6only   IN AAAA 2001:db8::20
alias    IN CNAME both
short  1 IN MX   10 mx1a
sub      IN NS   ns.elsewhere.test.
)";

// Every record and the negative TTL (SOA minimum) are 1 s.
inline constexpr char kShortZone[] = R"($ORIGIN short.test.
$TTL 1
@        IN SOA  ns.example.test. hostmaster.example.test. 1 3600 600 86400 1
@        IN NS   ns.example.test.
only-a   IN A    192.0.2.50
)";

inline constexpr int kBigMxCount = 40;

inline std::string BigMxHost(int i) {
  return absl::StrFormat("exchanger-with-a-deliberately-long-name-%02d.example.test", i);
}

inline std::string ExampleZone() {
  std::string zone = kExampleZone;
  // Far more than 512 octets: nsd truncates the UDP answer and c-ares retries over TCP.
  for (int i = 0; i < kBigMxCount; ++i) {
    absl::StrAppend(&zone, "big      IN MX   10 ", BigMxHost(i), ".\n");
  }
  return zone;
}

inline std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline absl::Status WriteFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::trunc);
  out << content;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

/** A socket bound to 127.0.0.1:`port` (0 = any), or -1. */
inline int BindLoopback(int type, uint16_t port, bool reuse_addr) {
  int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  if (reuse_addr) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

inline uint16_t LocalPort(int fd) {
  sockaddr_in addr{};
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  return ntohs(addr.sin_port);
}

/** Whether both UDP and TCP 127.0.0.1:`port` can be bound (nobody serves them). */
inline bool PortIsFree(uint16_t port) {
  int udp = BindLoopback(SOCK_DGRAM, port, /*reuse_addr=*/false);
  // SO_REUSEADDR so that TIME_WAIT connections do not count, while a listener still does.
  int tcp = BindLoopback(SOCK_STREAM, port, /*reuse_addr=*/true);
  bool free = udp >= 0 && tcp >= 0;
  if (udp >= 0) close(udp);
  if (tcp >= 0) close(tcp);
  return free;
}

/** A DNS query for the SOA of `zone` ("example.test"), built by hand for readiness probes. */
inline std::string SoaQuery(const std::string& zone, uint16_t id) {
  std::string q;
  auto u16 = [&q](uint16_t v) {
    q.push_back(static_cast<char>(v >> 8));
    q.push_back(static_cast<char>(v & 0xff));
  };
  u16(id);
  u16(0x0100);  // RD
  u16(1);
  u16(0);
  u16(0);
  u16(0);
  size_t start = 0;
  while (start < zone.size()) {
    size_t dot = zone.find('.', start);
    if (dot == std::string::npos) dot = zone.size();
    q.push_back(static_cast<char>(dot - start));
    q.append(zone, start, dot - start);
    start = dot + 1;
  }
  q.push_back('\0');
  u16(6);  // SOA
  u16(1);  // IN
  return q;
}

/** One nsd process serving test zones on 127.0.0.1 with a free port, in the foreground. */
class NsdServer {
 public:
  struct Zone {
    std::string name;
    std::string text;
  };

  static absl::StatusOr<std::unique_ptr<NsdServer>> Start(const std::string& dir,
                                                          const std::vector<Zone>& zones) {
    if (access(kNsdBinary, X_OK) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(kNsdBinary,
                       " not found: install the Debian package nsd "
                       "(tools/install_deps.sh)"));
    }
    auto server = std::unique_ptr<NsdServer>(new NsdServer(dir, zones));
    absl::Status last;
    // A port found free can be taken by someone else before nsd binds it: try a few.
    for (int attempt = 0; attempt < 5; ++attempt) {
      last = server->Launch();
      if (last.ok()) return server;
      server->Stop();
    }
    return last;
  }

  ~NsdServer() { Stop(); }

  uint16_t port() const { return port_; }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

  /** Stops nsd and all its children and waits until its port is free again. */
  void Stop() {
    if (pid_ <= 0) return;
    kill(-pid_, SIGTERM);  // the whole process group: nsd forks its server processes
    absl::Time deadline = absl::Now() + kNsdStopWait;
    bool reaped = false;
    while (!reaped && absl::Now() < deadline) {
      pid_t r = waitpid(pid_, nullptr, WNOHANG);
      reaped = r == pid_ || (r < 0 && errno == ECHILD);
      if (!reaped) poll(nullptr, 0, 10);
    }
    if (!reaped) {
      kill(-pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    kill(-pid_, SIGKILL);  // stragglers of the group, if any
    pid_ = -1;
    while (!PortIsFree(port_) && absl::Now() < deadline) poll(nullptr, 0, 10);
  }

  std::string Logs() const {
    return absl::StrCat("--- nsd output ---\n", ReadFileOrEmpty(dir_ + "/nsd.out"),
                        "--- nsd.log ---\n", ReadFileOrEmpty(dir_ + "/nsd.log"));
  }

 private:
  NsdServer(std::string dir, std::vector<Zone> zones)
      : dir_(std::move(dir)), zones_(std::move(zones)) {}

  absl::Status Launch() {
    int udp = BindLoopback(SOCK_DGRAM, 0, false);
    if (udp < 0) return absl::InternalError("cannot bind a UDP socket on 127.0.0.1");
    port_ = LocalPort(udp);
    close(udp);
    if (!PortIsFree(port_)) return absl::UnavailableError("port taken");

    std::string conf = absl::StrFormat(
        "server:\n"
        "  ip-address: 127.0.0.1\n"
        "  port: %d\n"
        "  do-ip6: no\n"
        "  username: \"\"\n"
        "  chroot: \"\"\n"
        "  zonesdir: \"%s\"\n"
        "  pidfile: \"%s/nsd.pid\"\n"
        "  database: \"\"\n"
        "  xfrdfile: \"%s/xfrd.state\"\n"
        "  zonelistfile: \"%s/zone.list\"\n"
        "  xfrdir: \"%s\"\n"
        "  logfile: \"%s/nsd.log\"\n"
        "  server-count: 1\n"
        "  verbosity: 1\n"
        "remote-control:\n"
        "  control-enable: no\n",
        port_, dir_, dir_, dir_, dir_, dir_, dir_);
    for (const Zone& zone : zones_) {
      std::string file = zone.name + ".zone";
      absl::Status s = WriteFile(absl::StrCat(dir_, "/", file), zone.text);
      if (!s.ok()) return s;
      absl::StrAppend(&conf, "zone:\n  name: ", zone.name, "\n  zonefile: ", file, "\n");
    }
    std::string conf_path = dir_ + "/nsd.conf";
    absl::Status s = WriteFile(conf_path, conf);
    if (!s.ok()) return s;

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    std::string out_path = dir_ + "/nsd.out";
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out_path.c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
    std::string arg0 = "nsd";
    std::string arg1 = "-d";  // foreground
    std::string arg2 = "-c";
    char* argv[] = {arg0.data(), arg1.data(), arg2.data(), conf_path.data(), nullptr};
    int rc = posix_spawn(&pid_, kNsdBinary, &actions, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
      pid_ = -1;
      return absl::InternalError(absl::StrCat("posix_spawn nsd: ", strerror(rc)));
    }
    return WaitUntilAnswering();
  }

  /** Polls nsd with SOA queries until it answers for every zone, or exits. */
  absl::Status WaitUntilAnswering() {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return absl::InternalError("socket");
    absl::Cleanup close_fd = [fd] { close(fd); };
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port_);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      return absl::InternalError("connect");
    }
    absl::Time deadline = absl::Now() + kNsdStartWait;
    uint16_t id = 1;
    for (const Zone& zone : zones_) {
      bool answered = false;
      while (!answered) {
        if (absl::Now() > deadline) {
          return absl::DeadlineExceededError("nsd did not answer in time\n" + Logs());
        }
        int status = 0;
        if (waitpid(pid_, &status, WNOHANG) == pid_) {
          pid_ = -1;
          return absl::UnavailableError(
              absl::StrCat("nsd exited with status ", status, "\n", Logs()));
        }
        std::string query = SoaQuery(zone.name, ++id);
        send(fd, query.data(), query.size(), 0);  // ECONNREFUSED until nsd binds
        pollfd pfd{fd, POLLIN, 0};
        if (poll(&pfd, 1, 100) == 1) {
          char buf[1500];
          ssize_t n = recv(fd, buf, sizeof(buf), 0);
          // Same id, and RCODE NOERROR (the zone is loaded).
          answered = n >= 12 && static_cast<uint8_t>(buf[0]) == (id >> 8) &&
                     static_cast<uint8_t>(buf[1]) == (id & 0xff) && (buf[3] & 0x0f) == 0;
        }
      }
    }
    return absl::OkStatus();
  }

  std::string dir_;
  std::vector<Zone> zones_;
  pid_t pid_ = -1;
  uint16_t port_ = 0;
};

/** A one-shot slot for a callback's result, filled on the loop thread. */
template <typename T>
struct Slot {
  absl::Notification done;
  std::optional<T> value;
};

template <typename T>
inline T Await(const std::shared_ptr<Slot<T>>& slot) {
  if (!slot->done.WaitForNotificationWithTimeout(kCallbackWait)) {
    return absl::DeadlineExceededError("test: the callback never ran");
  }
  return *std::move(slot->value);
}

using MxOr = absl::StatusOr<MxResult>;
using AddressesOr = absl::StatusOr<std::vector<IpAddress>>;

inline IpAddress Ip(const std::string& text) { return *IpAddress::Parse(text); }

inline std::vector<std::string> Hosts(const MxResult& r) {
  std::vector<std::string> out;
  for (const MxHost& h : r.hosts) out.push_back(h.host);
  return out;
}

/** A running event loop on its own thread, and a resolver living on it. */
class CaresResolverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The ring is IORING_SETUP_SINGLE_ISSUER: it must be created on the thread that runs it.
    absl::Notification created;
    absl::Status create_status;
    loop_thread_ = std::thread([this, &created, &create_status] {
      auto loop = event::EventLoop::Create(
          event::EventLoop::Options{.sq_entries = 256, .recv_buffers = 8, .recv_buffer_bytes = 64});
      create_status = loop.status();
      if (loop.ok()) loop_ = *std::move(loop);
      created.Notify();
      if (loop_ != nullptr) loop_->Run();
    });
    created.WaitForNotification();
    if (!create_status.ok()) {
      loop_thread_.join();
      GTEST_SKIP() << "io_uring unavailable: " << create_status;
    }
    const char* tmp = std::getenv("TEST_TMPDIR");
    std::string dir_template = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/dns.XXXXXX");
    ASSERT_NE(mkdtemp(dir_template.data()), nullptr) << strerror(errno);
    dir_ = dir_template;
  }

  void TearDown() override {
    if (loop_ == nullptr) return;
    RunOnLoop([this] { resolver_.reset(); });
    // One more pass lets the cancelled polls' CQEs arrive before the loop stops.
    loop_->Post([this] {
      loop_->AddTimer(loop_->Now() + absl::Milliseconds(20), [this] { loop_->Stop(); });
    });
    loop_thread_.join();
    loop_.reset();
    nsd_.reset();
  }

  void StartNsd() {
    auto nsd =
        NsdServer::Start(dir_, {{"example.test", ExampleZone()}, {"short.test", kShortZone}});
    ASSERT_TRUE(nsd.ok()) << nsd.status();
    nsd_ = *std::move(nsd);
  }

  CaresResolverOptions NsdOptions() const {
    CaresResolverOptions o;
    o.servers = {nsd_->address()};
    o.query_timeout_ms = 2000;
    o.tries = 3;
    o.ttl_min = absl::ZeroDuration();
    return o;
  }

  absl::Status CreateResolver(const CaresResolverOptions& options) {
    absl::Status status;
    RunOnLoop([&] {
      auto r = CaresResolver::Create(loop_.get(), options);
      status = r.status();
      if (r.ok()) resolver_ = *std::move(r);
    });
    return status;
  }

  /** Runs `fn` on the loop thread and waits for it. */
  void RunOnLoop(absl::AnyInvocable<void()> fn) {
    auto done = std::make_shared<absl::Notification>();
    auto shared_fn = std::make_shared<absl::AnyInvocable<void()>>(std::move(fn));
    loop_->Post([done, shared_fn] {
      (*shared_fn)();
      done->Notify();
    });
    ASSERT_TRUE(done->WaitForNotificationWithTimeout(kCallbackWait)) << "loop stuck";
  }

  std::shared_ptr<Slot<MxOr>> StartMx(const std::string& name) {
    auto slot = std::make_shared<Slot<MxOr>>();
    loop_->Post([this, name, slot] {
      resolver_->ResolveMx(name, [slot](MxOr r) {
        slot->value = std::move(r);
        slot->done.Notify();
      });
    });
    return slot;
  }

  std::shared_ptr<Slot<AddressesOr>> StartAddresses(const std::string& name) {
    auto slot = std::make_shared<Slot<AddressesOr>>();
    loop_->Post([this, name, slot] {
      resolver_->ResolveAddresses(name, [slot](AddressesOr r) {
        slot->value = std::move(r);
        slot->done.Notify();
      });
    });
    return slot;
  }

  MxOr Mx(const std::string& name) { return Await(StartMx(name)); }
  AddressesOr Addresses(const std::string& name) { return Await(StartAddresses(name)); }

  std::string dir_;
  std::unique_ptr<event::EventLoop> loop_;
  std::thread loop_thread_;
  std::unique_ptr<NsdServer> nsd_;
  ResolverPtr resolver_;  // used on the loop thread only
};

/** The same, with nsd serving the test zones. */
class CaresResolverNsdTest : public CaresResolverTest {
 protected:
  void SetUp() override {
    CaresResolverTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    StartNsd();
    if (HasFatalFailure()) return;
    ASSERT_TRUE(CreateResolver(NsdOptions()).ok());
  }
};

}  // namespace mta::dns

#endif  // DNS_CARES_RESOLVER_TEST_UTIL_H_
