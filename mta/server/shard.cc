#include "mta/server/shard.h"

#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <future>

#include "absl/hash/hash.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "auth/credential_verifier.h"
#include "auth/tls_channel.h"
#include "mta/base/log.h"
#include "mta/server/dkim_signing.h"
#include "mta/server/shard_telemetry.h"

namespace mta::server {

/** Multishot accept on one listening socket. */
class AcceptCompletion final : public event::Completion {
 public:
  AcceptCompletion(Shard* shard, size_t listener, int fd)
      : shard_(shard), listener_(listener), fd_(fd) {}
  void Arm() {
    io_uring_prep_multishot_accept(shard_->loop_->Sqe(this), fd_, nullptr, nullptr, SOCK_CLOEXEC);
  }
  void OnComplete(int res, uint32_t flags) override {
    if (res >= 0) {
      shard_->OnAccept(listener_, res);
    } else if (res != -ECANCELED && res != -EAGAIN && res != -EINTR) {
      MTA_LOG_WARNING("shard %d: accept: %s", shard_->index(), strerror(-res));
    }
    if (!(flags & IORING_CQE_F_MORE) && !shard_->shutting_down_) Arm();
  }

 private:
  Shard* shard_;
  size_t listener_;
  int fd_;
};

/** One inbound SMTP connection: socket I/O around an smtp::Session. */
class Connection final : public smtp::SessionDelegate {
 public:
  static constexpr size_t kMaxOutputBacklog = 64 * 1024;

  Connection(Shard* shard, uint64_t id, int fd, size_t listener, smtp::ClientInfo client)
      : shard_(shard),
        id_(id),
        fd_(fd),
        listener_(listener),
        spec_(shard->context_->listeners[listener]),
        ip_(client.ip),
        session_(spec_.session, std::move(client), this),
        recv_op_(this, &Connection::OnRecv),
        send_op_(this, &Connection::OnSend) {}

  uint64_t id() const { return id_; }
  const std::string& ip() const { return ip_; }
  const std::string& listener_name() const { return spec_.session.listener_name; }
  /** The negotiated TLS version ("" = plain text). */
  std::string tls_version() const {
    return tls_ != nullptr && tls_->established() ? tls_->info().protocol_version : "";
  }
  smtp::Session& session() { return session_; }
  bool sending() const { return sending_; }

  /** Greets (or rejects with `reject`) and starts reading. */
  void Begin(const std::string& reject) {
    if (spec_.implicit_tls) {
      // RFC 8314: the handshake comes first; the greeting (or refusal) waits for it.
      if (!StartTls()) return;
      greeted_ = true;
      if (reject.empty()) {
        session_.Greet();
      } else {
        session_.RejectAndClose(reject);
      }
      RefreshDeadline();
      ArmRecv();
      return;
    }
    if (!reject.empty()) {
      session_.RejectAndClose(reject);
      Flush();
      return;
    }
    if (spec_.greeting_delay_ms == 0) {
      char c;
      if (recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT) > 0) return RejectEarlyTalker();
      greeted_ = true;
      session_.Greet();
      Flush();
    } else {
      // Greeting withheld: a client that talks first is a protocol violator (or a bot).
      Loop()->AddTimer(Loop()->Now() + absl::Milliseconds(spec_.greeting_delay_ms),
                       [shard = shard_, id = id_] {
                         auto it = shard->connections_.find(id);
                         if (it == shard->connections_.end()) return;
                         Connection* c = it->second;
                         if (c->closed_ || c->greeted_) return;
                         c->greeted_ = true;
                         c->session_.Greet();
                         c->AfterSessionCall();
                       });
    }
    RefreshDeadline();
    ArmRecv();
  }

  /** Call after anything that may have changed the session's phase or output. */
  void AfterSessionCall() {
    RefreshDeadline();
    Flush();  // the "220 Ready to start TLS" still goes out in plain text
    if (session_.phase() == smtp::Session::Phase::kStartTls && tls_ == nullptr) {
      // From here on every received byte is TLS (plain text pipelined after STARTTLS was
      // dropped by the session), so the ClientHello may arrive before our 220 send
      // completes and must not be mistaken for a command.
      if (!StartTls()) return;
    }
    MaybeArmRecv();
  }

  void Close() {
    if (closed_) return;
    closed_ = true;
    if (timer_ != 0) Loop()->CancelTimer(timer_);
    timer_ = 0;
    // Wakes any pending receive (it completes with 0); the socket is closed once every
    // operation on it has completed.
    ::shutdown(fd_, SHUT_RDWR);
    MaybeDestroy();
  }

  // smtp::SessionDelegate
  std::string NewQueueId() override { return shard_->ids_.Next(absl::ToUnixMillis(Loop()->Now())); }
  absl::Time Now() override { return Loop()->Now(); }
  bool KnownStream(absl::string_view stream) override { return shard_->KnownStream(stream); }
  void Submit(std::unique_ptr<queue::SpoolRecord> record) override {
    shard_->Submit(this, std::move(record));
  }
  void VerifyCredentials(std::string user, std::string password) override {
    shard_->VerifyCredentials(this, spec_.session.listener_name, std::move(user),
                              std::move(password));
  }
  void OnReply(int code) override {
    if (shard_->telemetry_ != nullptr) shard_->telemetry_->InboundReply(code);
  }

 private:
  using Handler = void (Connection::*)(int res, uint32_t flags);
  class Op final : public event::Completion {
   public:
    Op(Connection* conn, Handler handler) : conn_(conn), handler_(handler) {}
    void OnComplete(int res, uint32_t flags) override {
      Connection* conn = conn_;
      (conn->*handler_)(res, flags);
      --conn->pending_ops_;
      conn->MaybeDestroy();
    }

   private:
    Connection* conn_;
    Handler handler_;
  };

  event::EventLoop* Loop() { return shard_->loop_.get(); }

  void RejectEarlyTalker() {
    greeted_ = true;  // the 554 replaces the greeting for good
    session_.RejectAndClose(
        absl::StrCat("554 5.5.1 ", spec_.session.hostname,
                     " Error: SMTP protocol violation, client spoke before greeting"));
    Flush();
  }

  void ArmRecv() {
    if (recv_armed_ || closed_) return;
    recv_armed_ = true;
    ++pending_ops_;
    Loop()->PrepareReceive(&recv_op_, fd_);
  }

  void OnRecv(int res, uint32_t flags) {
    recv_armed_ = false;
    if (res == -ENOBUFS) {
      // Every shard receive buffer is in use; try again shortly.
      if (closed_) return;
      Loop()->AddTimer(Loop()->Now() + absl::Milliseconds(1), [shard = shard_, id = id_] {
        auto it = shard->connections_.find(id);
        if (it != shard->connections_.end()) it->second->MaybeArmRecv();
      });
      return;
    }
    if (res <= 0) {
      if (flags & IORING_CQE_F_BUFFER) Loop()->RecycleBuffer(flags);
      Close();
      return;
    }
    absl::string_view data = Loop()->ReceivedData(flags, res);
    if (closed_) {
      Loop()->RecycleBuffer(flags);
      return;
    }
    if (!greeted_) {
      Loop()->RecycleBuffer(flags);
      RejectEarlyTalker();
      return;
    }
    if (tls_ != nullptr) {
      absl::Status s = tls_->FeedCiphertext(data);
      Loop()->RecycleBuffer(flags);
      if (s.ok()) s = PumpTls();
      if (!s.ok()) {
        MTA_LOG_DEBUG("inbound TLS from %s: %s", ip_, s.message());
        session_.OnTlsFailed();  // a failed channel ends the session (alert sent first)
      }
      AfterSessionCall();
      return;
    }
    session_.OnInput(data);
    Loop()->RecycleBuffer(flags);
    AfterSessionCall();
  }

  // Creates the server channel for this listener's current certificate.
  bool StartTls() {
    const auto& context = shard_->server_tls_[listener_];
    absl::StatusOr<std::unique_ptr<auth::TlsChannel>> channel =
        context == nullptr ? absl::FailedPreconditionError("no certificate for this listener")
                           : auth::TlsChannel::CreateServer(*context);
    if (!channel.ok()) {
      MTA_LOG_WARNING("inbound TLS from %s: %s", ip_, channel.status().message());
      session_.OnTlsFailed();
      Close();
      return false;
    }
    tls_ = *std::move(channel);
    return true;
  }

  // Moves the channel on after ciphertext arrived: the handshake, then decrypted bytes
  // into the session. A channel that failed or whose stream ended is an error.
  absl::Status PumpTls() {
    if (tls_->state() == auth::TlsChannel::State::kHandshaking) {
      absl::Status s = tls_->Handshake();
      if (!s.ok()) return s;
    }
    if (tls_->established() && !tls_announced_) {
      tls_announced_ = true;
      const auth::TlsConnectionInfo& info = tls_->info();
      MTA_LOG_DEBUG("inbound TLS from %s: %s %s", ip_, info.protocol_version, info.cipher);
      if (shard_->telemetry_ != nullptr) shard_->telemetry_->InboundTls(info.protocol_version);
      session_.OnTlsEstablished();  // after STARTTLS; a no-op for implicit TLS
    }
    char buf[16384];
    while (tls_->established() && !session_.closing()) {
      absl::StatusOr<size_t> n = tls_->ReadPlaintext(buf, sizeof(buf));
      if (!n.ok()) return n.status();
      if (*n == 0) break;
      session_.OnInput(absl::string_view(buf, *n));
    }
    if (tls_->read_closed()) return absl::UnavailableError("TLS stream closed by the client");
    return tls_->status();
  }

  void Flush() {
    if (closed_) return;
    if (tls_ != nullptr) return FlushTls();
    if (!sending_ && !session_.output().empty()) {
      send_buf_.swap(session_.output());
      session_.output().clear();
      send_off_ = 0;
      sending_ = true;
      SendMore();
      return;
    }
    if (!sending_ && session_.closing()) Close();
  }

  // Encrypts the session's replies (held until the handshake is done) and sends the
  // pending ciphertext: handshake records, data, alerts and the final close_notify.
  void FlushTls() {
    if (sending_) return;
    std::string& out = session_.output();
    if (tls_->established() && !out.empty()) {
      size_t n = std::min(out.size(), tls_->plaintext_out_capacity());
      if (n > 0 && tls_->WritePlaintext(absl::string_view(out).substr(0, n)).ok()) {
        out.erase(0, n);
      }
    }
    if (session_.closing() && out.empty() && !tls_shutdown_) {
      tls_shutdown_ = true;
      tls_->Shutdown().IgnoreError();  // close_notify after the last reply
    }
    send_buf_.clear();
    tls_->TakeCiphertext(&send_buf_, 256 * 1024);
    if (!send_buf_.empty()) {
      send_off_ = 0;
      sending_ = true;
      SendMore();
      return;
    }
    if (session_.closing() || tls_->state() == auth::TlsChannel::State::kFailed) Close();
  }

  void SendMore() {
    ++pending_ops_;
    io_uring_prep_send(Loop()->Sqe(&send_op_), fd_, send_buf_.data() + send_off_,
                       send_buf_.size() - send_off_, MSG_NOSIGNAL);
  }

  void OnSend(int res, uint32_t flags) {
    if (res < 0) {
      sending_ = false;
      Close();
      return;
    }
    send_off_ += res;
    if (send_off_ < send_buf_.size() && !closed_) {
      SendMore();
      return;
    }
    sending_ = false;
    send_buf_.clear();
    send_off_ = 0;
    Flush();
    MaybeArmRecv();
  }

  // Reads only while the session wants input and the client keeps up with our replies: a
  // client that pipelines commands but never reads cannot make us buffer without bound.
  void MaybeArmRecv() {
    bool handshaking = tls_ != nullptr && !tls_->established();
    if (closed_ || (!session_.WantsInput() && !handshaking)) return;
    if (send_buf_.size() - send_off_ + session_.output().size() > kMaxOutputBacklog) return;
    ArmRecv();
  }

  void RefreshDeadline() {
    const Config& cfg = *shard_->context_->config;
    if (tls_ != nullptr && !tls_->established()) {
      deadline_ = Loop()->Now() + absl::Seconds(30);  // a handshake gets 30 s
      if (timer_ == 0 && !closed_) ArmTimer();
      return;
    }
    switch (session_.phase()) {
      case smtp::Session::Phase::kCommand:
        deadline_ = Loop()->Now() + absl::Seconds(cfg.command_timeout_s);
        break;
      case smtp::Session::Phase::kContent:
        deadline_ = Loop()->Now() + absl::Seconds(cfg.data_timeout_s);
        break;
      default:
        deadline_ = absl::InfiniteFuture();
        return;
    }
    if (timer_ == 0 && !closed_) ArmTimer();
  }

  void ArmTimer() {
    timer_ = Loop()->AddTimer(deadline_, [shard = shard_, id = id_] {
      auto it = shard->connections_.find(id);
      if (it == shard->connections_.end()) return;
      Connection* c = it->second;
      c->timer_ = 0;
      if (c->closed_ || c->deadline_ == absl::InfiniteFuture()) return;
      if (c->Loop()->Now() < c->deadline_) {
        c->ArmTimer();
        return;
      }
      if (c->sending_) {
        // The client has not read our last reply for a whole timeout: no 421 could
        // reach it either, so drop the connection.
        c->Close();
        return;
      }
      c->session_.OnTimeout();
      c->Flush();
    });
  }

  // Destruction is deferred to a later loop pass so no caller up the stack (an op
  // callback, a timer, a commit notification) is left holding a dangling pointer.
  void MaybeDestroy() {
    if (!closed_ || pending_ops_ > 0 || destroy_scheduled_) return;
    destroy_scheduled_ = true;
    Loop()->AddTimer(Loop()->Now(), [this] {
      ::close(fd_);
      shard_->OnConnectionClosed(this);
    });
  }

  Shard* const shard_;
  const uint64_t id_;
  const int fd_;
  const size_t listener_;
  const ListenerSpec& spec_;
  const std::string ip_;
  smtp::Session session_;
  Op recv_op_;
  Op send_op_;
  int pending_ops_ = 0;
  bool recv_armed_ = false;
  bool sending_ = false;
  bool closed_ = false;
  bool greeted_ = false;
  bool destroy_scheduled_ = false;
  std::unique_ptr<auth::TlsChannel> tls_;  // after STARTTLS, or from the start (implicit)
  bool tls_announced_ = false;
  bool tls_shutdown_ = false;
  std::string send_buf_;
  size_t send_off_ = 0;
  absl::Time deadline_ = absl::InfiniteFuture();
  event::EventLoop::TimerId timer_ = 0;
};

Shard::Shard(uint32_t index, ServerContext* context)
    : index_(index),
      context_(context),
      ids_(index, absl::Uniform<uint32_t>(absl::BitGen())),
      queue_(context->body_budget),
      policy_(context->policy),
      server_tls_(context->server_tls),
      auth_ip_failures_(context->auth_max_failures, context->auth_failure_window),
      auth_user_failures_(context->auth_max_failures, context->auth_failure_window) {}

Shard::~Shard() {
  for (int fd : listen_fds_) ::close(fd);
}

absl::Status Shard::Init() {
  for (size_t i = 0; i < context_->listeners.size(); ++i) {
    const ListenerSpec& spec = context_->listeners[i];
    sockaddr_storage addr;
    auto len = spec.address.ToSockaddr(&addr);
    if (!len.ok()) return len.status();
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
    listen_fds_.push_back(fd);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (addr.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), *len) != 0) {
      return absl::FailedPreconditionError(absl::StrCat("listener ", spec.session.listener_name,
                                                        ": bind ", spec.address.host, ":",
                                                        spec.address.port, ": ", strerror(errno)));
    }
    if (listen(fd, 4096) != 0) {
      return absl::InternalError(absl::StrCat("listen: ", strerror(errno)));
    }
    accepts_.push_back(std::make_unique<AcceptCompletion>(this, i, fd));
  }
  return absl::OkStatus();
}

void Shard::ApplyServerTls(std::vector<std::shared_ptr<const auth::ServerTlsContext>> contexts) {
  loop_->Post(
      [this, contexts = std::move(contexts)]() mutable { server_tls_ = std::move(contexts); });
}

namespace {

// A client-supplied user name made safe for one log line.
std::string LoggableUser(absl::string_view user) {
  constexpr size_t kMax = 64;
  std::string out;
  for (unsigned char c : user.substr(0, kMax)) {
    out.push_back(c >= 32 && c < 127 && c != '"' && c != '\\' ? static_cast<char>(c) : '?');
  }
  if (user.size() > kMax) out.append("...");
  return out;
}

}  // namespace

void Shard::VerifyCredentials(Connection* conn, const std::string& listener, std::string user,
                              std::string password) {
  const uint64_t conn_id = conn->id();
  const std::string& ip = conn->ip();
  event::EventLoop* loop = loop_.get();
  const absl::Time now = loop->Now();
  absl::Status refused;
  if (auth_ip_failures_.Blocked(ip, now) || auth_user_failures_.Blocked(user, now)) {
    // No KDF run: a blocked guesser costs neither CPU nor a look at the password.
    refused = absl::ResourceExhaustedError("too many failed attempts");
  } else if (context_->verifier == nullptr) {
    refused = absl::UnavailableError("no password file");
  }
  if (!refused.ok()) {
    loop->Post([this, conn_id, listener, ip, user = std::move(user), refused]() mutable {
      OnCredentialsVerified(conn_id, listener, ip, user, refused);
    });
    return;
  }
  context_->verifier->Verify(
      user, std::move(password),
      [this, loop, conn_id, listener, ip, user](absl::StatusOr<auth::AuthUser> result) mutable {
        // Runs on the verifier's thread: hand the verdict back to this shard's loop.
        loop->Post([this, conn_id, listener = std::move(listener), ip = std::move(ip),
                    user = std::move(user), result = std::move(result)]() mutable {
          OnCredentialsVerified(conn_id, listener, ip, user, std::move(result));
        });
      });
}

void Shard::OnCredentialsVerified(uint64_t conn_id, const std::string& listener,
                                  const std::string& ip, const std::string& user,
                                  absl::StatusOr<auth::AuthUser> result) {
  if (result.ok()) {
    MTA_LOG_INFO("auth: user \"%s\" authenticated from %s on listener %s", LoggableUser(user), ip,
                 listener);
  } else if (result.status().code() == absl::StatusCode::kPermissionDenied) {
    const absl::Time now = loop_->Now();
    auth_ip_failures_.RecordFailure(ip, now);
    auth_user_failures_.RecordFailure(user, now);
    MTA_LOG_WARNING("auth: failed login for user \"%s\" from %s on listener %s%s",
                    LoggableUser(user), ip, listener,
                    auth_ip_failures_.Blocked(ip, now) || auth_user_failures_.Blocked(user, now)
                        ? " (limit reached: further attempts refused for a while)"
                        : "");
  } else {
    MTA_LOG_WARNING("auth: login for user \"%s\" from %s on listener %s refused: %s",
                    LoggableUser(user), ip, listener, result.status().message());
  }
  auto it = connections_.find(conn_id);
  if (it == connections_.end()) return;  // the client left meanwhile
  it->second->session().OnCredentialsVerified(std::move(result));
  it->second->AfterSessionCall();
}

bool Shard::KnownStream(absl::string_view stream) const {
  if (policy_ == nullptr) return true;
  for (const delivery::Stream& s : policy_->streams) {
    if (s.name == stream) return true;
  }
  return false;
}

absl::Status Shard::Start() {
  // The ring is created on the shard's own thread: IORING_SETUP_SINGLE_ISSUER ties it to
  // the thread that creates it.
  auto started = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> result = started->get_future();
  thread_ = std::thread([this, started] {
    std::string name = absl::StrCat("shard-", index_);
    pthread_setname_np(pthread_self(), name.c_str());
    unsigned cpus = std::thread::hardware_concurrency();
    if (cpus > 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(index_ % cpus, &set);
      pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    }
    auto loop = event::EventLoop::Create(event::EventLoop::Options());
    if (!loop.ok()) {
      started->set_value(loop.status());
      return;
    }
    loop_ = *std::move(loop);
    if (context_->telemetry != nullptr) {
      telemetry_ = std::make_unique<ShardTelemetry>(context_->telemetry, index_);
    }
    absl::Time first = loop_->Now() + absl::Seconds(1);
    loop_->AddTimer(first, [this, first] { Tick(first, 0); });
    if (context_->delivery_enabled) {
      absl::Status s = StartDelivery();
      if (!s.ok()) {
        started->set_value(s);
        return;
      }
    }
    started->set_value(absl::OkStatus());
    // Shards post to each other (recovered and accepted messages go to their home and
    // owner shards): nothing may be posted before every shard's loop exists.
    context_->all_started.wait();
    if (delivery_ != nullptr) {
      for (queue::Envelope& env : recovered_) {
        auto message = std::make_shared<delivery::DeliveryMessage>();
        message->envelope = std::move(env);
        delivery_->AddMessage(std::move(message));
      }
      recovered_.clear();
      recovered_.shrink_to_fit();
      queued_.store(delivery_->messages_at_home(), std::memory_order_relaxed);
    }
    for (auto& a : accepts_) a->Arm();
    loop_->Run();
    if (delivery_ != nullptr) queued_.store(delivery_->messages_at_home());
    // Shard-local objects die on their own thread (c-ares and timers are loop-affine).
    delivery_.reset();
    resolver_.reset();
  });
  absl::Status s = result.get();
  if (!s.ok()) thread_.join();
  return s;
}

void Shard::BeginShutdown() {
  loop_->Post([this] { ShutdownOnLoop(); });
}

void Shard::Join() {
  if (thread_.joinable()) thread_.join();
}

void Shard::ShutdownOnLoop() {
  if (shutting_down_) return;
  shutting_down_ = true;
  for (auto& a : accepts_) {
    io_uring_sqe* sqe = loop_->Sqe(nullptr);
    io_uring_prep_cancel64(sqe, reinterpret_cast<uint64_t>(a.get()), 0);
  }
  for (int fd : listen_fds_) ::shutdown(fd, SHUT_RDWR);
  // Snapshot ids: OnShutdown may close (and erase) connections.
  std::vector<uint64_t> ids;
  for (const auto& [id, conn] : connections_) ids.push_back(id);
  for (uint64_t id : ids) {
    auto it = connections_.find(id);
    if (it == connections_.end()) continue;
    it->second->session().OnShutdown();
    it->second->AfterSessionCall();
  }
  uint32_t grace = context_->config->shutdown_grace_s;
  loop_->AddTimer(loop_->Now() + absl::Seconds(grace), [this] {
    std::vector<Connection*> conns;
    for (const auto& [id, conn] : connections_) conns.push_back(conn);
    for (Connection* c : conns) {
      if (c->session().phase() == smtp::Session::Phase::kWaitingCommit) continue;
      if (c->sending()) {
        c->Close();  // a client that stopped reading cannot hold the shutdown up
        continue;
      }
      c->session().RejectAndClose(
          absl::StrCat("421 4.3.2 ", context_->config->hostname, " Service shutting down"));
      c->AfterSessionCall();
    }
  });
  MaybeFinishShutdown();
}

void Shard::MaybeFinishShutdown() {
  if (shutting_down_ && connections_.empty() && pending_commits_ == 0) loop_->Stop();
}

void Shard::OnAccept(size_t listener, int fd) {
  if (shutting_down_) {
    ::close(fd);
    return;
  }
  const ListenerSpec& spec = context_->listeners[listener];
  sockaddr_storage peer;
  socklen_t peer_len = sizeof(peer);
  std::memset(&peer, 0, sizeof(peer));
  getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len);
  IpAddress ip = IpAddress::FromSockaddr(peer);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

  smtp::ClientInfo client;
  client.ip = ip.ToString();
  for (const Cidr& net : spec.relay_networks) {
    if (net.Contains(ip)) {
      client.relay_allowed = true;
      break;
    }
  }
  for (const auto& [net, stream] : spec.stream_networks) {
    if (net.Contains(ip)) {
      client.network_stream = stream;
      break;
    }
  }
  const std::string& host = spec.session.hostname;
  std::string reject;
  switch (context_->limiter->Acquire(client.ip)) {
    case ConnectionLimiter::Verdict::kOk:
      break;
    case ConnectionLimiter::Verdict::kTooManyTotal:
      reject = absl::StrCat("421 4.7.0 ", host, " Error: too many connections");
      break;
    case ConnectionLimiter::Verdict::kTooManyFromIp:
      reject = absl::StrCat("421 4.7.0 ", host, " Error: too many connections from ", client.ip);
      break;
  }
  bool counted = reject.empty();
  if (telemetry_ != nullptr) telemetry_->InboundConnection(spec.session.listener_name, +1);
  if (counted && !context_->spool->Healthy()) {
    reject = absl::StrCat("421 4.3.2 ", host,
                          " Service temporarily unavailable: ", context_->spool->HealthReason());
  }
  uint64_t id = next_conn_id_++;
  client.tls = spec.implicit_tls;
  auto* conn = new Connection(this, id, fd, listener, std::move(client));
  if (!counted) uncounted_.insert(id);
  connections_[id] = conn;
  conn->Begin(reject);
}

void Shard::OnConnectionClosed(Connection* conn) {
  if (telemetry_ != nullptr) telemetry_->InboundConnection(conn->listener_name(), -1);
  if (!uncounted_.erase(conn->id())) context_->limiter->Release(conn->ip());
  connections_.erase(conn->id());
  delete conn;
  MaybeFinishShutdown();
}

void Shard::Submit(Connection* conn, std::unique_ptr<queue::SpoolRecord> record) {
  ++pending_commits_;
  const uint64_t conn_id = conn->id();
  if (context_->dkim != nullptr) {
    std::shared_ptr<const DkimKeySet> keys = context_->dkim->keys();
    std::string domain;
    if (keys != nullptr && !keys->empty()) {
      domain = DkimSigningDomain(record->content, record->envelope.sender);
    }
    if (!domain.empty() && keys->Find(domain) != nullptr) {
      // Signed once here, so the spool holds the signed bytes every attempt sends.
      event::EventLoop* loop = loop_.get();
      context_->dkim->Sign(
          std::move(record), std::move(keys), std::move(domain),
          [this, loop, conn_id](absl::Status status,
                                std::unique_ptr<queue::SpoolRecord> rec) mutable {
            // Runs on the signer's thread (or here when it is full): back to this loop.
            loop->Post([this, conn_id, status = std::move(status), rec = std::move(rec)]() mutable {
              if (status.ok()) {
                Commit(conn_id, std::move(rec));
                return;
              }
              // Never spool an unsigned message for a signing domain (on_sign_error:
              // tempfail): the client tries again later.
              MTA_LOG_WARNING("shard %d: message %s not signed: %s", index_, rec->envelope.id,
                              status.ToString());
              OnCommitted(
                  conn_id,
                  status.code() == absl::StatusCode::kResourceExhausted
                      ? smtp::CommitRefused("451 4.3.2 Too many messages waiting to be signed, try "
                                            "again later")
                      : smtp::CommitRefused(
                            "451 4.7.0 Message could not be signed, try again later"),
                  std::move(rec));
            });
          });
      return;
    }
  }
  Commit(conn_id, std::move(record));
}

void Shard::Commit(uint64_t conn_id, std::unique_ptr<queue::SpoolRecord> record) {
  event::EventLoop* loop = loop_.get();
  context_->spool->Commit(
      std::move(record),
      [this, loop, conn_id](absl::Status status, std::unique_ptr<queue::SpoolRecord> rec) mutable {
        // Runs on the spool's writer thread: hand the verdict back to this shard's loop.
        loop->Post([this, conn_id, status = std::move(status), rec = std::move(rec)]() mutable {
          OnCommitted(conn_id, std::move(status), std::move(rec));
        });
      });
}

void Shard::OnCommitted(uint64_t conn_id, absl::Status status,
                        std::unique_ptr<queue::SpoolRecord> record) {
  --pending_commits_;
  std::string id = record->envelope.id;
  auto conn = connections_.find(conn_id);
  if (status.ok() && telemetry_ != nullptr) {
    telemetry_->MessageReceived(record->envelope,
                                conn != connections_.end() ? conn->second->tls_version() : "",
                                loop_->Now());
  }
  if (status.ok()) {
    Shard* owner = context_->shards[delivery::DeliveryManager::HomeOf(id, context_->shards.size())];
    if (owner == this) {
      Enqueue(std::move(record->envelope), std::move(record->content));
    } else if (owner->loop_ != nullptr) {  // null only when start-up failed
      owner->loop_->Post([owner, rec = std::move(record)]() mutable {
        owner->Enqueue(std::move(rec->envelope), std::move(rec->content));
      });
    }
  } else {
    MTA_LOG_WARNING("shard %d: message %s not accepted: %s", index_, id, status.ToString());
  }
  if (conn != connections_.end()) {
    conn->second->session().OnCommitDone(status, id);
    conn->second->AfterSessionCall();
  }
  MaybeFinishShutdown();
}

}  // namespace mta::server
