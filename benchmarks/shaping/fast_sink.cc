// fast_sink: a single-threaded epoll ESMTP receiver for benchmarks that records every message
// it accepts, in the record format of tests/integration/capture_sink.py.
//
// Why it is hand-written: the shaping benchmarks need a benchmark peer that records
// per-message timing -- for each message, when the sink had all of it (taken before its 250),
// on which sink connection and as which message of it (conn_id, msg_index), from which peer,
// for which recipients -- from which isolation_bench.py computes injection-to-delivery
// latencies and what each transactional message waited for on its connection. Postfix's
// smtp-sink cannot record per-connection/per-message timing of this kind (it counts messages,
// or dumps them without connection identity or timestamps). capture_sink.py records exactly
// this, but it is Python asyncio: about 2.2 ms of CPU per transaction, ~80% of a core while a
// 100,000-message backlog drains, so on a 2-core machine the receiver's CPU, not mtad's
// scheduling, set the transactional latency. This program writes the same JSON lines (byte for
// byte, apart from times, ports and ids that differ between any two runs) for a small fraction
// of the CPU.
//
// Usage (capture_sink.py's flags; its --stats, --eml-dir, --tls-cert/--tls-key and --script
// are not supported and are refused):
//   fast_sink --listen HOST:PORT [--listen HOST:PORT ...] --out FILE [--no-content]
//             [--hostname NAME] [--max-size BYTES] [--max-connections N] [--timeout SECONDS]
//             [--reply-delay MS]
// For each listening socket it prints {"event": "listening", "address": ..., "port": ...} to
// stdout (port 0 picks a free port). SIGTERM or SIGINT stop it (exit status 0).
//
// Protocol, replies and records follow capture_sink.py (read it for the record fields): EHLO
// offers PIPELINING, SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING and DSN (no
// STARTTLS); MAIL/RCPT parameters are checked as it does; DATA ends only at CRLF.CRLF and the
// content is un-dot-stuffed; BDAT chunks (LAST or not) are read as they stream in. Each
// accepted message gets a "type": "message" record (sha256 and size always, data_b64 unless
// --no-content) and each finished connection a "type": "connection" record.
//
// Differences from capture_sink.py:
// - Records are buffered: written when 50 ms have passed since the oldest unwritten one, when
//   256 KiB are pending, and at exit (capture_sink.py flushes each one before its 250). A
//   record's "timestamp" is still taken when its message is complete, before the 250.
// - As with capture_sink.py, connections still open at SIGTERM get no connection record.
// - Whitespace in EHLO/HELO arguments and parameter lists is ASCII whitespace (Python's
//   str.split()/strip() also treat non-ASCII spaces such as U+00A0 as whitespace).
// - Greeting and HELP texts name fast_sink.
// - --reply-delay MS (not in capture_sink.py) models a receiver that takes MS milliseconds
//   (fractions allowed) to accept a message, as a real MX does when it commits the message to
//   disk and runs its filters before its 250: the final reply to DATA or BDAT LAST goes out MS
//   after the message is complete, the session reads nothing meanwhile (pipelined commands
//   wait), and the record, timestamp included, is made when that reply goes out. The wait is
//   a timer, not CPU.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/base64.h>
#include <openssl/sha.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "benchmarks/shaping/fast_sink_text.h"

namespace mta_bench {
namespace {

// Limits as in capture_sink.py.
constexpr size_t kCommandLineMax = 4096;
constexpr size_t kDataLineMax = size_t{1} << 20;
constexpr size_t kMaxRecipients = 1000;

constexpr int64_t kNsPerMs = 1'000'000;
// Records reach the file at most this long after they were made.
constexpr int64_t kRecordFlushIntervalNs = 50 * kNsPerMs;
constexpr size_t kRecordFlushBytes = 256 * 1024;
// Idle sessions are looked for this often.
constexpr int64_t kSweepIntervalNs = kNsPerSecond;
constexpr size_t kReadChunk = 64 * 1024;
// A client that pipelines commands without reading the replies: stop reading it until the
// replies have gone out.
constexpr size_t kOutputHighWater = 256 * 1024;
constexpr int kListenBacklog = 4096;
constexpr int kMaxEvents = 256;

void Log(const std::string& msg) {
  std::string line = "fast_sink: " + msg + "\n";
  ssize_t ignored = write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;  // nowhere to report a failed diagnostic
}

// ---- Options ---------------------------------------------------------------------------------

struct Options {
  std::vector<std::pair<std::string, std::string>> listen;  // host, port
  std::string out;
  bool no_content = false;
  std::string hostname = "capture-sink.test";
  uint64_t max_size = 50 * 1024 * 1024;
  std::optional<uint64_t> max_connections;
  double timeout_s = 300.0;
  int64_t reply_delay_ns = 0;
};

constexpr char kUsage[] =
    "usage: fast_sink --listen HOST:PORT [--listen HOST:PORT ...] --out FILE [--no-content]\n"
    "                 [--hostname NAME] [--max-size BYTES] [--max-connections N]\n"
    "                 [--timeout SECONDS] [--reply-delay MS]\n";

[[noreturn]] void UsageError(const std::string& msg) {
  fprintf(stderr, "%sfast_sink: error: %s\n", kUsage, msg.c_str());
  exit(2);
}

std::optional<uint64_t> ParseUint(std::string_view s) {
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      fputs(kUsage, stdout);
      exit(0);
    }
    if (arg.substr(0, 2) != "--") UsageError("unrecognized argument " + std::string(arg));
    std::string name(arg);
    std::optional<std::string> value;
    if (size_t eq = arg.find('='); eq != std::string_view::npos) {
      name = std::string(arg.substr(0, eq));
      value = std::string(arg.substr(eq + 1));
    }
    if (name == "--no-content") {
      if (value.has_value()) UsageError("--no-content takes no value");
      o.no_content = true;
      continue;
    }
    if (name == "--stats" || name == "--eml-dir" || name == "--tls-cert" || name == "--tls-key" ||
        name == "--script") {
      UsageError(name + " is not supported by fast_sink; use tests/integration/capture_sink.py");
    }
    if (name != "--listen" && name != "--out" && name != "--hostname" && name != "--max-size" &&
        name != "--max-connections" && name != "--timeout" && name != "--reply-delay") {
      UsageError("unrecognized argument " + name);
    }
    if (!value.has_value()) {
      if (i + 1 >= argc) UsageError(name + " expects a value");
      value = argv[++i];
    }
    const std::string& v = *value;
    if (name == "--listen") {
      // capture_sink.py's parse_listen: HOST:PORT split at the last ':', "[]" stripped.
      const size_t colon = v.rfind(':');
      if (colon == std::string::npos || !IsDigits(std::string_view(v).substr(colon + 1)) ||
          !ParseUint(std::string_view(v).substr(colon + 1)).has_value() ||
          *ParseUint(std::string_view(v).substr(colon + 1)) > 65535) {
        UsageError("expected HOST:PORT, got '" + v + "'");
      }
      std::string host = v.substr(0, colon);
      while (!host.empty() && (host.front() == '[' || host.front() == ']')) host.erase(0, 1);
      while (!host.empty() && (host.back() == '[' || host.back() == ']')) host.pop_back();
      o.listen.emplace_back(host, v.substr(colon + 1));
    } else if (name == "--out") {
      o.out = v;
    } else if (name == "--hostname") {
      o.hostname = v;
    } else if (name == "--max-size") {
      auto n = ParseUint(v);
      if (!n.has_value()) UsageError("--max-size: invalid int value '" + v + "'");
      o.max_size = *n;
    } else if (name == "--max-connections") {
      auto n = ParseUint(v);
      if (!n.has_value()) UsageError("--max-connections: invalid int value '" + v + "'");
      o.max_connections = *n;
    } else if (name == "--timeout") {
      char* end = nullptr;
      o.timeout_s = strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(o.timeout_s >= 0)) {
        UsageError("--timeout: invalid float value '" + v + "'");
      }
    } else if (name == "--reply-delay") {
      char* end = nullptr;
      const double ms = strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(ms >= 0 && ms <= 60'000)) {
        UsageError("--reply-delay: expected milliseconds in [0, 60000], got '" + v + "'");
      }
      o.reply_delay_ns = static_cast<int64_t>(ms * kNsPerMs);
    }
  }
  if (o.listen.empty() || o.out.empty()) {
    UsageError("the following arguments are required: --listen, --out");
  }
  return o;
}

// ---- The server ------------------------------------------------------------------------------

struct EventSource {
  enum class Kind { kListener, kConnection, kSignal };
  explicit EventSource(Kind k) : kind(k) {}
  Kind kind;
  int fd = -1;
};

struct Listener : EventSource {
  Listener() : EventSource(Kind::kListener) {}
};

// One SMTP session; the fields mirror capture_sink.py's Session.
struct Conn : EventSource {
  enum class Mode { kCommand, kData, kBdatChunk };

  Conn() : EventSource(Kind::kConnection) {}

  uint64_t id = 0;
  std::string peer_ip, local_ip;
  uint32_t peer_port = 0, local_port = 0;
  double start = 0;
  bool admitted = true;
  std::optional<std::string> rejected;

  bool closing = false;  // reads nothing more; closed once `out` has gone out
  bool closed = false;
  // A complete message whose final reply waits for --reply-delay (its transfer: DATA or
  // BDAT); nothing more is read or processed until it has gone out.
  std::optional<std::string_view> held;
  uint32_t interest = 0;  // epoll events registered
  int64_t last_input_ns = 0;

  std::string in;  // received, not yet consumed from in_pos on
  size_t in_pos = 0;
  bool skip_long_line = false;  // discarding a line over the limit up to its LF
  std::string out;              // replies not yet sent, from out_pos on
  size_t out_pos = 0;
  Mode mode = Mode::kCommand;

  std::optional<std::string> helo;
  bool esmtp = false;
  uint64_t msg_index = 0;

  // The transaction (capture_sink.py's reset() clears these).
  std::optional<std::string> mail_from;
  Params mail_params;
  std::vector<std::string> rcpts;
  std::vector<Params> rcpt_params;
  bool bdat_active = false;                // a BDAT transfer is in progress
  std::optional<std::string> bdat_failed;  // reply for every chunk of a doomed transfer

  // The message being received: hashed as it streams in; kept only for data_b64.
  SHA256_CTX sha;
  uint64_t content_size = 0;
  std::string content;
  bool data_prev_crlf = true;
  bool data_too_big = false;
  uint64_t chunk_remaining = 0;
  bool chunk_last = false;

  void ResetTransaction() {
    mail_from.reset();
    mail_params.clear();
    rcpts.clear();
    rcpt_params.clear();
    bdat_active = false;
    bdat_failed.reset();
  }
  size_t OutputPending() const { return out.size() - out_pos; }
};

std::string AddressString(const sockaddr_storage& ss, uint32_t* port) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof(buf));
    *port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof(buf));
    *port = ntohs(a->sin6_port);
  } else {
    *port = 0;
  }
  return buf;
}

class Sink {
 public:
  explicit Sink(Options options) : o_(std::move(options)) {}

  // Opens the record file, listens and prints the listening lines. Exits on failure.
  void Start();
  // Serves until SIGTERM/SIGINT, then writes the pending records.
  void Run();

 private:
  void Accept(Listener& l);
  void OnConnEvent(Conn& c, uint32_t events);
  // Reads what the socket has; false on a connection error. Sets *eof at end of stream.
  bool ReadInput(Conn& c, bool* eof);
  // Consumes complete commands, lines and chunks from c.in, appending replies to c.out.
  void Process(Conn& c);
  // Sends replies, then closes a closing connection or updates its epoll interest.
  void AfterIo(Conn& c);
  bool FlushOutput(Conn& c);
  void UpdateInterest(Conn& c);
  void CloseConn(Conn& c);
  void Sweep(int64_t now_mono);

  void Command(Conn& c, std::string_view line);
  void Ehlo(Conn& c, std::string_view arg);
  void Helo(Conn& c, std::string_view arg);
  void Mail(Conn& c, std::string_view arg);
  void Rcpt(Conn& c, std::string_view arg);
  void Data(Conn& c, std::string_view arg);
  void Bdat(Conn& c, std::string_view arg);
  void DataLine(Conn& c, std::string_view line);
  void EndOfChunk(Conn& c);
  void StartContent(Conn& c);
  void AddContent(Conn& c, std::string_view bytes);
  // Accepts the complete message now, or after --reply-delay.
  void CompleteMessage(Conn& c, std::string_view transfer);
  void FinishMessage(Conn& c, std::string_view transfer);
  // Accepts the held messages whose delay is over.
  void ReleaseHeld(int64_t now_mono);

  static void Reply(Conn& c, std::string_view line) {
    c.out.append(line);
    c.out.append("\r\n");
  }

  void NoteRecord(int64_t now_mono);
  void WriteConnectionRecord(const Conn& c);
  void FlushRecords();

  const Options o_;
  int epoll_fd_ = -1;
  int record_fd_ = -1;
  int reserve_fd_ = -1;  // given up to accept (and drop) a connection at EMFILE
  EventSource signal_source_{EventSource::Kind::kSignal};
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::vector<std::unique_ptr<Conn>> graveyard_;  // closed during this batch of events
  uint64_t next_conn_id_ = 1;
  uint64_t concurrent_ = 0;
  bool stop_ = false;
  // (release time, connection id) of held messages; one delay for all, so in time order.
  std::deque<std::pair<int64_t, uint64_t>> held_;

  std::string records_;  // not yet written to record_fd_
  int64_t records_since_ns_ = 0;
  char scratch_[kReadChunk];
};

void Sink::Start() {
  record_fd_ = open(o_.out.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
  if (record_fd_ < 0) {
    Log("cannot open " + o_.out + ": " + strerror(errno));
    exit(1);
  }
  reserve_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) {
    Log(std::string("epoll_create1: ") + strerror(errno));
    exit(1);
  }

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);
  signal_source_.fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  epoll_event sev{};
  sev.events = EPOLLIN;
  sev.data.ptr = &signal_source_;
  if (signal_source_.fd < 0 || epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, signal_source_.fd, &sev) < 0) {
    Log(std::string("signalfd: ") + strerror(errno));
    exit(1);
  }

  std::string lines;
  for (const auto& [host, port] : o_.listen) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    addrinfo* res = nullptr;
    int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res);
    if (rc != 0) {
      Log("cannot listen: " + host + ":" + port + ": " + gai_strerror(rc));
      exit(1);
    }
    for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
      int fd =
          socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
      int one = 1;
      if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      if (fd >= 0 && ai->ai_family == AF_INET6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
      }
      if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, kListenBacklog) < 0) {
        Log("cannot listen: " + host + ":" + port + ": " + strerror(errno));
        exit(1);
      }
      auto l = std::make_unique<Listener>();
      l->fd = fd;
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.ptr = l.get();
      epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
      sockaddr_storage ss{};
      socklen_t len = sizeof(ss);
      getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
      uint32_t bound_port = 0;
      std::string address = AddressString(ss, &bound_port);
      lines.append("{\"event\": \"listening\", \"address\": ");
      AppendJsonString(&lines, address);
      lines.append(", \"port\": ");
      AppendInt(&lines, bound_port);
      lines.append("}\n");
      listeners_.push_back(std::move(l));
    }
    freeaddrinfo(res);
  }
  fputs(lines.c_str(), stdout);
  fflush(stdout);
}

void Sink::Run() {
  epoll_event events[kMaxEvents];
  int64_t next_sweep = ClockNs(CLOCK_MONOTONIC) + kSweepIntervalNs;
  while (!stop_) {
    int64_t now = ClockNs(CLOCK_MONOTONIC);
    int64_t deadline = next_sweep;
    if (!records_.empty())
      deadline = std::min(deadline, records_since_ns_ + kRecordFlushIntervalNs);
    if (!held_.empty()) deadline = std::min(deadline, held_.front().first);
    const int64_t timeout_ns = std::max<int64_t>(0, deadline - now);
    // epoll_pwait2: a timeout finer than epoll_wait's milliseconds, for --reply-delay.
    const timespec timeout{timeout_ns / kNsPerSecond, timeout_ns % kNsPerSecond};
    const int n = epoll_pwait2(epoll_fd_, events, kMaxEvents, &timeout, nullptr);
    if (n < 0 && errno != EINTR) {
      Log(std::string("epoll_wait: ") + strerror(errno));
      break;
    }
    for (int i = 0; i < n; ++i) {
      auto* src = static_cast<EventSource*>(events[i].data.ptr);
      switch (src->kind) {
        case EventSource::Kind::kListener:
          Accept(*static_cast<Listener*>(src));
          break;
        case EventSource::Kind::kConnection: {
          auto* c = static_cast<Conn*>(src);
          if (!c->closed) OnConnEvent(*c, events[i].events);
          break;
        }
        case EventSource::Kind::kSignal:
          stop_ = true;
          break;
      }
    }
    graveyard_.clear();
    now = ClockNs(CLOCK_MONOTONIC);
    ReleaseHeld(now);
    if (now >= next_sweep) {
      Sweep(now);
      graveyard_.clear();
      next_sweep = now + kSweepIntervalNs;
    }
    if (!records_.empty() && (now - records_since_ns_ >= kRecordFlushIntervalNs ||
                              records_.size() >= kRecordFlushBytes)) {
      FlushRecords();
    }
  }
  FlushRecords();
  close(record_fd_);
}

void Sink::Accept(Listener& l) {
  // Bounded, so that a flood of connections cannot starve established sessions.
  for (int k = 0; k < 64; ++k) {
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof(peer);
    int fd =
        accept4(l.fd, reinterpret_cast<sockaddr*>(&peer), &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if ((errno == EMFILE || errno == ENFILE) && reserve_fd_ >= 0) {
        // Out of descriptors: take the connection with the reserve one and drop it, rather
        // than leave it in the queue and spin on a listener that stays readable.
        Log("out of file descriptors: dropping a connection (raise RLIMIT_NOFILE)");
        close(reserve_fd_);
        int dropped = accept(l.fd, nullptr, nullptr);
        if (dropped >= 0) close(dropped);
        reserve_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
        continue;
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK) Log(std::string("accept: ") + strerror(errno));
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // as asyncio does
    auto owned = std::make_unique<Conn>();
    Conn& c = *owned;
    c.fd = fd;
    c.id = next_conn_id_++;
    c.peer_ip = AddressString(peer, &c.peer_port);
    sockaddr_storage local{};
    socklen_t local_len = sizeof(local);
    getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len);
    c.local_ip = AddressString(local, &c.local_port);
    c.start = PySeconds(ClockNs(CLOCK_REALTIME));
    c.last_input_ns = ClockNs(CLOCK_MONOTONIC);
    c.admitted = !o_.max_connections.has_value() || concurrent_ < *o_.max_connections;
    if (c.admitted) {
      ++concurrent_;
      Reply(c, "220 " + o_.hostname + " ESMTP fast_sink");
    } else {
      c.rejected = "too many connections";
      Reply(c, "421 4.7.0 " + o_.hostname + " Error: too many connections");
      c.closing = true;
    }
    epoll_event ev{};
    ev.events = 0;
    ev.data.ptr = &c;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
    conns_.emplace(c.id, std::move(owned));
    AfterIo(c);
  }
}

void Sink::OnConnEvent(Conn& c, uint32_t events) {
  if (!c.closing && (events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
    bool eof = false;
    if (!ReadInput(c, &eof)) {
      CloseConn(c);
      return;
    }
    Process(c);
    // End of stream ends the session once what came before it has been served.
    if (eof) c.closing = true;
  } else if (events & EPOLLOUT) {
    if (!FlushOutput(c)) {
      CloseConn(c);
      return;
    }
    Process(c);  // input held back while the replies were not being read
  } else if (events & (EPOLLHUP | EPOLLERR)) {
    CloseConn(c);
    return;
  }
  AfterIo(c);
}

bool Sink::ReadInput(Conn& c, bool* eof) {
  // A few reads per event at most: level-triggered epoll reports the rest next time.
  for (int k = 0; k < 4; ++k) {
    ssize_t n = recv(c.fd, scratch_, sizeof(scratch_), 0);
    if (n > 0) {
      c.in.append(scratch_, static_cast<size_t>(n));
      c.last_input_ns = ClockNs(CLOCK_MONOTONIC);
      if (static_cast<size_t>(n) < sizeof(scratch_)) return true;
      continue;
    }
    if (n == 0) {
      *eof = true;
      return true;
    }
    if (errno == EINTR) continue;
    return errno == EAGAIN || errno == EWOULDBLOCK;
  }
  return true;
}

void Sink::Process(Conn& c) {
  while (!c.closing && !c.held.has_value() && c.OutputPending() <= kOutputHighWater) {
    std::string_view avail(c.in.data() + c.in_pos, c.in.size() - c.in_pos);
    if (c.mode == Conn::Mode::kBdatChunk) {
      if (c.chunk_remaining > 0) {
        if (avail.empty()) break;
        const size_t take =
            static_cast<size_t>(std::min<uint64_t>(c.chunk_remaining, avail.size()));
        // As capture_sink.py: keep the chunk while the message fits, else fail the transfer.
        if (!c.bdat_failed.has_value() && c.content_size + take <= o_.max_size) {
          AddContent(c, avail.substr(0, take));
        } else if (!c.bdat_failed.has_value()) {
          c.bdat_failed = "552 5.3.4 Message size exceeds fixed limit";
        }
        c.in_pos += take;
        c.chunk_remaining -= take;
        if (c.chunk_remaining > 0) break;
      }
      EndOfChunk(c);
      continue;
    }
    const void* lf = memchr(avail.data(), '\n', avail.size());
    if (lf == nullptr) {
      // capture_sink.py's read_line: a line that outgrows the limit before its LF arrives is
      // dropped up to that LF and answered (commands) or fails the message (DATA).
      const size_t limit = c.mode == Conn::Mode::kCommand ? kCommandLineMax : kDataLineMax;
      if (avail.size() > limit) {
        c.skip_long_line = true;
        c.in_pos = c.in.size();
      }
      break;
    }
    const size_t len = static_cast<const char*>(lf) - avail.data() + 1;
    std::string_view line = avail.substr(0, len);
    c.in_pos += len;
    if (c.mode == Conn::Mode::kCommand) {
      if (c.skip_long_line) {
        c.skip_long_line = false;
        Reply(c, "500 5.5.2 Error: command line too long");
      } else if (len < 2 || line[len - 2] != '\r') {
        Reply(c, "500 5.5.2 Error: bare <LF> received");
      } else {
        Command(c, line.substr(0, len - 2));
      }
    } else if (c.skip_long_line) {
      c.skip_long_line = false;
      c.data_too_big = true;  // an absurd line: read on to the real end, then refuse
      c.data_prev_crlf = false;
    } else {
      DataLine(c, line);
    }
  }
  if (c.in_pos == c.in.size()) {
    c.in.clear();
    c.in_pos = 0;
  } else if (c.in_pos >= kReadChunk && c.in_pos * 2 >= c.in.size()) {
    c.in.erase(0, c.in_pos);
    c.in_pos = 0;
  }
}

void Sink::AfterIo(Conn& c) {
  if (!FlushOutput(c)) {
    CloseConn(c);
    return;
  }
  if (c.closing && c.OutputPending() == 0 && !c.held.has_value()) {
    CloseConn(c);
    return;
  }
  UpdateInterest(c);
}

bool Sink::FlushOutput(Conn& c) {
  while (c.out_pos < c.out.size()) {
    ssize_t n = send(c.fd, c.out.data() + c.out_pos, c.out.size() - c.out_pos, MSG_NOSIGNAL);
    if (n > 0) {
      c.out_pos += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    return false;
  }
  if (c.out_pos == c.out.size()) {
    c.out.clear();
    c.out_pos = 0;
  }
  return true;
}

void Sink::UpdateInterest(Conn& c) {
  uint32_t want = 0;
  if (!c.closing && !c.held.has_value() && c.OutputPending() <= kOutputHighWater) {
    want |= EPOLLIN;
  }
  if (c.OutputPending() > 0) want |= EPOLLOUT;
  if (want == c.interest) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.ptr = &c;
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &ev);
  c.interest = want;
}

void Sink::CloseConn(Conn& c) {
  if (c.closed) return;
  c.closed = true;
  WriteConnectionRecord(c);
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c.fd, nullptr);
  close(c.fd);
  if (c.admitted) --concurrent_;
  auto it = conns_.find(c.id);
  // Freed after the current batch of events, which may still name it.
  graveyard_.push_back(std::move(it->second));
  conns_.erase(it);
}

void Sink::Sweep(int64_t now_mono) {
  const auto timeout_ns = static_cast<int64_t>(o_.timeout_s * 1e9);
  std::vector<Conn*> idle;
  for (auto& [id, c] : conns_) {
    if (!c->closing && now_mono - c->last_input_ns >= timeout_ns) idle.push_back(c.get());
  }
  for (Conn* c : idle) {
    Reply(*c, "421 4.4.2 " + o_.hostname + " Error: timeout exceeded");
    c->closing = true;
    AfterIo(*c);
  }
}

// ---- SMTP ------------------------------------------------------------------------------------

void Sink::Command(Conn& c, std::string_view line) {
  const size_t sp = line.find(' ');
  const std::string verb = AsciiUpper(line.substr(0, sp));
  const std::string_view arg =
      sp == std::string_view::npos ? std::string_view() : line.substr(sp + 1);
  if (verb == "EHLO") return Ehlo(c, arg);
  if (verb == "HELO") return Helo(c, arg);
  if (verb == "MAIL") return Mail(c, arg);
  if (verb == "RCPT") return Rcpt(c, arg);
  if (verb == "DATA") return Data(c, arg);
  if (verb == "BDAT") return Bdat(c, arg);
  if (verb == "RSET") {
    c.ResetTransaction();
    return Reply(c, "250 2.0.0 Ok");
  }
  if (verb == "NOOP") return Reply(c, "250 2.0.0 Ok");
  if (verb == "QUIT") {
    Reply(c, "221 2.0.0 Bye");
    c.closing = true;
    return;
  }
  if (verb == "STARTTLS") return Reply(c, "502 5.5.1 Error: command not implemented");
  if (verb == "VRFY") return Reply(c, "252 2.5.2 Cannot VRFY user");
  if (verb == "HELP") return Reply(c, "214 2.0.0 fast_sink: see the comment atop fast_sink.cc");
  Reply(c, "500 5.5.2 Error: command not recognized");
}

void Sink::Ehlo(Conn& c, std::string_view arg) {
  const std::string_view name = Strip(arg);
  if (name.empty()) return Reply(c, "501 5.5.4 Syntax: EHLO hostname");
  std::string r = "250-" + o_.hostname + " Hello " + std::string(name) + " [" + c.peer_ip + "]\r\n";
  r += "250-PIPELINING\r\n250-SIZE ";
  AppendInt(&r, o_.max_size);
  r += "\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 DSN\r\n";
  c.out += r;
  c.ResetTransaction();
  c.helo = std::string(name);
  c.esmtp = true;
}

void Sink::Helo(Conn& c, std::string_view arg) {
  const std::string_view name = Strip(arg);
  if (name.empty()) return Reply(c, "501 5.5.4 Syntax: HELO hostname");
  Reply(c, "250 " + o_.hostname);
  c.ResetTransaction();
  c.helo = std::string(name);
  c.esmtp = false;
}

void Sink::Mail(Conn& c, std::string_view arg) {
  if (!c.helo.has_value()) return Reply(c, "503 5.5.1 Error: send HELO/EHLO first");
  if (c.mail_from.has_value()) return Reply(c, "503 5.5.1 Error: nested MAIL command");
  auto path = IEquals(arg.substr(0, 5), "FROM:") ? SplitPath(arg.substr(5)) : std::nullopt;
  if (!path.has_value()) return Reply(c, "501 5.5.4 Syntax: MAIL FROM:<address>");
  const auto [address, rest] = *path;
  Params params;
  if (auto err = ParseParams(rest, &params)) return Reply(c, "501 5.5.4 Error: " + *err);
  if (!params.empty() && !c.esmtp) return Reply(c, "555 5.5.4 Error: parameters require EHLO");
  for (const Param& p : params) {
    const std::string value = p.value.value_or("");
    if (p.key == "SIZE") {
      if (!IsDigits(value)) return Reply(c, "501 5.5.4 Error: bad SIZE value");
      if (DigitsGreaterThan(value, o_.max_size)) {
        return Reply(c, "552 5.3.4 Message size exceeds fixed limit");
      }
    } else if (p.key == "BODY") {
      const std::string body = AsciiUpper(value);
      if (body != "7BIT" && body != "8BITMIME") {
        return Reply(c, "501 5.5.4 Error: unsupported BODY type");
      }
    } else if (p.key == "SMTPUTF8") {
      if (p.value.has_value()) return Reply(c, "501 5.5.4 Error: SMTPUTF8 takes no value");
    } else if (p.key == "RET") {
      const std::string ret = AsciiUpper(value);
      if (ret != "FULL" && ret != "HDRS") return Reply(c, "501 5.5.4 Error: bad RET value");
    } else if (p.key == "ENVID") {
      if (value.empty()) return Reply(c, "501 5.5.4 Error: bad ENVID value");
    } else {
      return Reply(c, "555 5.5.4 Error: unsupported parameter " + p.key);
    }
  }
  if (HasNonAscii(address) && FindParam(params, "SMTPUTF8") == nullptr) {
    return Reply(c, "553 5.6.7 Error: non-ASCII address requires SMTPUTF8");
  }
  Reply(c, "250 2.1.0 Ok");
  c.mail_from = std::string(address);
  c.mail_params = std::move(params);
}

void Sink::Rcpt(Conn& c, std::string_view arg) {
  if (!c.mail_from.has_value()) return Reply(c, "503 5.5.1 Error: need MAIL command");
  if (c.bdat_active) return Reply(c, "503 5.5.1 Error: RCPT during BDAT transfer");
  auto path = IEquals(arg.substr(0, 3), "TO:") ? SplitPath(arg.substr(3)) : std::nullopt;
  if (!path.has_value()) return Reply(c, "501 5.5.4 Syntax: RCPT TO:<address>");
  const auto [address, rest] = *path;
  if (address.empty()) return Reply(c, "501 5.1.3 Error: empty recipient");
  Params params;
  if (auto err = ParseParams(rest, &params)) return Reply(c, "501 5.5.4 Error: " + *err);
  if (!params.empty() && !c.esmtp) return Reply(c, "555 5.5.4 Error: parameters require EHLO");
  for (const Param& p : params) {
    const std::string value = p.value.value_or("");
    if (p.key == "NOTIFY") {
      const std::string upper = AsciiUpper(value);
      bool bad = value.empty();
      size_t items = 0;
      bool never = false;
      for (size_t start = 0; start <= upper.size();) {
        size_t comma = upper.find(',', start);
        if (comma == std::string::npos) comma = upper.size();
        const std::string_view item = std::string_view(upper).substr(start, comma - start);
        ++items;
        never |= item == "NEVER";
        if (item != "NEVER" && item != "SUCCESS" && item != "FAILURE" && item != "DELAY") {
          bad = true;
        }
        start = comma + 1;
      }
      if (bad || (never && items > 1)) return Reply(c, "501 5.5.4 Error: bad NOTIFY value");
    } else if (p.key == "ORCPT") {
      if (value.empty() || value.find(';') == std::string::npos) {
        return Reply(c, "501 5.5.4 Error: bad ORCPT value");
      }
    } else {
      return Reply(c, "555 5.5.4 Error: unsupported parameter " + p.key);
    }
  }
  if (HasNonAscii(address) && FindParam(c.mail_params, "SMTPUTF8") == nullptr) {
    return Reply(c, "553 5.6.7 Error: non-ASCII address requires SMTPUTF8");
  }
  if (c.rcpts.size() >= kMaxRecipients) return Reply(c, "452 4.5.3 Error: too many recipients");
  Reply(c, "250 2.1.5 Ok");
  c.rcpts.emplace_back(address);
  c.rcpt_params.push_back(std::move(params));
}

void Sink::Data(Conn& c, std::string_view arg) {
  if (!arg.empty()) return Reply(c, "501 5.5.4 Syntax: DATA");
  if (c.bdat_active) return Reply(c, "503 5.5.1 Error: DATA during BDAT transfer");
  if (!c.mail_from.has_value()) return Reply(c, "503 5.5.1 Error: need MAIL command");
  if (c.rcpts.empty()) return Reply(c, "554 5.5.1 Error: no valid recipients");
  Reply(c, "354 End data with <CR><LF>.<CR><LF>");
  c.mode = Conn::Mode::kData;
  c.data_prev_crlf = true;  // the 354's CRLF: the data starts at a line start
  c.data_too_big = false;
  StartContent(c);
}

void Sink::DataLine(Conn& c, std::string_view line) {
  if (c.data_prev_crlf && line == ".\r\n") {
    c.mode = Conn::Mode::kCommand;
    if (c.data_too_big) {
      c.ResetTransaction();
      return Reply(c, "552 5.3.4 Message size exceeds fixed limit");
    }
    return CompleteMessage(c, "DATA");
  }
  // Dot-stuffing applies at line starts, which only CRLF makes (RFC 5321 4.5.2).
  if (c.data_prev_crlf && line.front() == '.') line.remove_prefix(1);
  c.data_prev_crlf = line.size() >= 2 && line.substr(line.size() - 2) == "\r\n";
  if (c.content_size + line.size() > o_.max_size) c.data_too_big = true;
  if (!c.data_too_big) AddContent(c, line);
}

void Sink::Bdat(Conn& c, std::string_view arg) {
  // capture_sink.py: ([0-9]{1,19})( +LAST)?, case-insensitive, the whole argument.
  size_t digits = 0;
  while (digits < arg.size() && arg[digits] >= '0' && arg[digits] <= '9') ++digits;
  std::string_view tail = arg.substr(digits);
  bool last = false;
  bool ok = digits >= 1 && digits <= 19;
  if (ok && !tail.empty()) {
    size_t spaces = 0;
    while (spaces < tail.size() && tail[spaces] == ' ') ++spaces;
    ok = spaces > 0 && IEquals(tail.substr(spaces), "LAST");
    last = ok;
  }
  if (!ok) {
    // Without a size the chunk cannot be skipped: the stream is lost.
    Reply(c, "501 5.5.4 Syntax: BDAT chunk-size [LAST]; closing connection");
    c.closing = true;
    return;
  }
  uint64_t size = 0;
  std::from_chars(arg.data(), arg.data() + digits, size);
  if (!c.bdat_active) {
    c.bdat_active = true;
    StartContent(c);
    if (!c.mail_from.has_value()) {
      c.bdat_failed = "503 5.5.1 Error: need MAIL command";
    } else if (c.rcpts.empty()) {
      c.bdat_failed = "554 5.5.1 Error: no valid recipients";
    }
  }
  c.mode = Conn::Mode::kBdatChunk;
  c.chunk_remaining = size;
  c.chunk_last = last;
}

void Sink::EndOfChunk(Conn& c) {
  c.mode = Conn::Mode::kCommand;
  if (c.bdat_failed.has_value()) {
    const std::string failure = *c.bdat_failed;
    if (c.chunk_last || failure.compare(0, 3, "503") == 0) c.ResetTransaction();
    return Reply(c, failure);
  }
  if (!c.chunk_last) {
    std::string r = "250 2.0.0 ";
    AppendInt(&r, c.content_size);
    r += " octets received";
    return Reply(c, r);
  }
  CompleteMessage(c, "BDAT");
}

void Sink::StartContent(Conn& c) {
  SHA256_Init(&c.sha);
  c.content_size = 0;
  c.content.clear();
}

void Sink::AddContent(Conn& c, std::string_view bytes) {
  SHA256_Update(&c.sha, bytes.data(), bytes.size());
  c.content_size += bytes.size();
  if (!o_.no_content) c.content.append(bytes);
}

void Sink::CompleteMessage(Conn& c, std::string_view transfer) {
  if (o_.reply_delay_ns == 0) return FinishMessage(c, transfer);
  c.held = transfer;
  held_.emplace_back(ClockNs(CLOCK_MONOTONIC) + o_.reply_delay_ns, c.id);
}

void Sink::ReleaseHeld(int64_t now_mono) {
  while (!held_.empty() && held_.front().first <= now_mono) {
    const uint64_t id = held_.front().second;
    held_.pop_front();
    auto it = conns_.find(id);
    if (it == conns_.end()) continue;  // the client went away first: no 250, no record
    Conn& c = *it->second;
    FinishMessage(c, *c.held);
    c.held.reset();
    Process(c);  // what the client pipelined meanwhile
    AfterIo(c);
  }
  graveyard_.clear();
}

void Sink::FinishMessage(Conn& c, std::string_view transfer) {
  const int64_t now_ns = ClockNs(CLOCK_REALTIME);
  ++c.msg_index;
  std::string id;
  AppendInt(&id, c.id);
  id.push_back('.');
  AppendInt(&id, c.msg_index);
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256_Final(digest, &c.sha);

  // json.dumps(rec, sort_keys=True): the keys below are in sorted order.
  const double t = PySeconds(now_ns);
  std::string& r = records_;
  NoteRecord(ClockNs(CLOCK_MONOTONIC));
  r += "{\"conn_id\": ";
  AppendInt(&r, c.id);
  if (!o_.no_content) {
    r += ", \"data_b64\": \"";
    size_t encoded = 0;
    EVP_EncodedLength(&encoded, c.content.size());  // includes the NUL
    const size_t at = r.size();
    r.resize(at + encoded);
    const size_t written =
        EVP_EncodeBlock(reinterpret_cast<uint8_t*>(&r[at]),
                        reinterpret_cast<const uint8_t*>(c.content.data()), c.content.size());
    r.resize(at + written);
    r += '"';
  }
  r += ", \"esmtp\": ";
  r += c.esmtp ? "true" : "false";
  r += ", \"helo\": ";
  AppendJsonOptString(&r, c.helo);
  r += ", \"id\": ";
  AppendJsonString(&r, id);
  r += ", \"local_ip\": ";
  AppendJsonString(&r, c.local_ip);
  r += ", \"local_port\": ";
  AppendInt(&r, c.local_port);
  r += ", \"mail_from\": ";
  AppendJsonOptString(&r, c.mail_from);
  r += ", \"mail_params\": ";
  AppendJsonParams(&r, c.mail_params);
  r += ", \"msg_index\": ";
  AppendInt(&r, c.msg_index);
  r += ", \"peer_ip\": ";
  AppendJsonString(&r, c.peer_ip);
  r += ", \"peer_port\": ";
  AppendInt(&r, c.peer_port);
  r += ", \"rcpt_params\": [";
  for (size_t i = 0; i < c.rcpt_params.size(); ++i) {
    if (i > 0) r += ", ";
    AppendJsonParams(&r, c.rcpt_params[i]);
  }
  r += "], \"rcpt_to\": [";
  for (size_t i = 0; i < c.rcpts.size(); ++i) {
    if (i > 0) r += ", ";
    AppendJsonString(&r, c.rcpts[i]);
  }
  r += "], \"sha256\": \"";
  static constexpr char kHex[] = "0123456789abcdef";
  for (uint8_t b : digest) {
    r += kHex[b >> 4];
    r += kHex[b & 0xf];
  }
  r += "\", \"size\": ";
  AppendInt(&r, c.content_size);
  r += ", \"time\": ";
  AppendJsonString(&r, IsoTime(t));
  r += ", \"timestamp\": ";
  AppendPyFloat(&r, t);
  r += ", \"tls\": null, \"transfer\": ";
  AppendJsonString(&r, transfer);
  r += ", \"type\": \"message\"}\n";

  c.content.clear();
  c.ResetTransaction();
  Reply(c, "250 2.0.0 Ok: queued as " + id);
}

void Sink::WriteConnectionRecord(const Conn& c) {
  const double end = PySeconds(ClockNs(CLOCK_REALTIME));
  NoteRecord(ClockNs(CLOCK_MONOTONIC));
  std::string& r = records_;
  r += "{\"conn_id\": ";
  AppendInt(&r, c.id);
  r += ", \"end\": ";
  AppendPyFloat(&r, end);
  r += ", \"helo\": ";
  AppendJsonOptString(&r, c.helo);
  r += ", \"local_ip\": ";
  AppendJsonString(&r, c.local_ip);
  r += ", \"local_port\": ";
  AppendInt(&r, c.local_port);
  r += ", \"messages\": ";
  AppendInt(&r, c.msg_index);
  r += ", \"peer_ip\": ";
  AppendJsonString(&r, c.peer_ip);
  r += ", \"peer_port\": ";
  AppendInt(&r, c.peer_port);
  r += ", \"rejected\": ";
  AppendJsonOptString(&r, c.rejected);
  r += ", \"start\": ";
  AppendPyFloat(&r, c.start);
  r += ", \"starttls_discarded_bytes\": 0, \"tls\": null, \"type\": \"connection\"}\n";
}

void Sink::NoteRecord(int64_t now_mono) {
  if (records_.empty()) records_since_ns_ = now_mono;
}

void Sink::FlushRecords() {
  // A blocking write: the records go to tmpfs in the benchmarks.
  size_t pos = 0;
  while (pos < records_.size()) {
    ssize_t n = write(record_fd_, records_.data() + pos, records_.size() - pos);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Log("cannot write " + o_.out + ": " + strerror(errno));
      exit(1);
    }
    pos += static_cast<size_t>(n);
  }
  records_.clear();
}

}  // namespace
}  // namespace mta_bench

int main(int argc, char** argv) {
  auto sink = std::make_unique<mta_bench::Sink>(mta_bench::ParseArgs(argc, argv));
  sink->Start();
  sink->Run();
  return 0;
}
