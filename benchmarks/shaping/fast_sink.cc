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

#include "benchmarks/shaping/fast_sink.h"

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

namespace mta_bench {

void Log(const std::string& msg) {
  std::string line = "fast_sink: " + msg + "\n";
  ssize_t ignored = write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;  // nowhere to report a failed diagnostic
}

namespace {

// ---- Options ---------------------------------------------------------------------------------

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

}  // namespace

// ---- The server ------------------------------------------------------------------------------

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

}  // namespace mta_bench

int main(int argc, char** argv) {
  auto sink = std::make_unique<mta_bench::Sink>(mta_bench::ParseArgs(argc, argv));
  sink->Start();
  sink->Run();
  return 0;
}
