#include "mta/delivery/outbound_connection.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "auth/tls_channel.h"
#include "auth/tls_context.h"
#include "mta/base/log.h"
#include "mta/base/net.h"
#include "mta/smtp/client_session.h"

namespace mta::delivery {
namespace {

using smtp::ClientSession;
using smtp::ServerReply;
using Phase = ClientSession::Phase;

AttemptResult Deferred(std::string status, std::string diagnostic, std::string remote = "") {
  return {.kind = AttemptResult::Kind::kDeferred,
          .status = std::move(status),
          .diagnostic = std::move(diagnostic),
          .remote_mta = std::move(remote)};
}

// Maps one recipient's final reply to the scheduler's outcome.
AttemptResult FromReply(const ServerReply& reply, const std::string& host, bool remote_dsn) {
  AttemptResult r;
  r.remote_mta = reply.local ? "" : host;
  r.code = reply.local ? 0 : static_cast<uint32_t>(reply.code);
  r.remote_dsn = remote_dsn;
  r.diagnostic = reply.ToString();
  if (reply.positive()) {
    r.kind = AttemptResult::Kind::kDelivered;
    r.status = reply.enhanced.empty() ? "2.0.0" : reply.enhanced;
  } else if (reply.permanent()) {
    r.kind = AttemptResult::Kind::kBounced;
    r.status = reply.enhanced.empty() ? "5.0.0" : reply.enhanced;
  } else {
    r.kind = AttemptResult::Kind::kDeferred;
    r.status = reply.enhanced.empty() || reply.enhanced[0] != '4' ? "4.0.0" : reply.enhanced;
    if (reply.empty()) r.diagnostic = "no reply from the server";
  }
  return r;
}

class Connection {
 public:
  Connection(OutboundContext* ctx, Destination* dest, const EgressSource* source)
      : ctx_(ctx), dest_(dest), alive_(std::make_shared<bool>(true)) {
    tls_policy_ = dest->tls;
    if (source != nullptr) {
      source_ = *source;
      source_name_ = source->name;
    }
  }

  // Deferred to the next loop turn, so the scheduler is never re-entered while it pumps.
  void Start() {
    Loop()->AddTimer(Loop()->Now(), [this] { NextCandidate(); });
  }

 private:
  class Op final : public event::Completion {
   public:
    using Handler = void (Connection::*)(int res, uint32_t flags);
    Op(Connection* c, Handler h) : c_(c), h_(h) {}
    void OnComplete(int res, uint32_t flags) override {
      Connection* c = c_;
      (c->*h_)(res, flags);
      --c->pending_ops_;
      if (c->pending_ops_ == 0 && c->after_drain_ != nullptr && !c->finished_) {
        auto step = c->after_drain_;
        c->after_drain_ = nullptr;
        (c->*step)();
      }
      c->MaybeFinish();
    }

   private:
    Connection* c_;
    Handler h_;
  };

  event::EventLoop* Loop() { return ctx_->loop; }
  const ShapingLimits& Limits() const { return dest_->budget->rule->limits; }

  // ---- Host and address selection ---------------------------------------------------

  void NextCandidate() {
    if (next_candidate_ >= dest_->hosts.size()) {
      if (source_.has_value() && !family_matched_ && last_error_.has_value()) {
        // No address of the site is of the source's family: the source is wrong for this
        // site, not the site down; other sources may carry its mail.
        ctx_->manager->SourceCannotReach(*dest_, source_name_, last_error_->diagnostic);
        return Finish();
      }
      return Fail(last_error_.has_value()
                      ? *last_error_
                      : Deferred("4.4.1", absl::StrCat("no mail host of ", dest_->key,
                                                       " could be reached")));
    }
    const SiteHost& c = dest_->hosts[next_candidate_++];
    plain_retry_ = false;
    host_ = c.host;
    port_ = c.port;
    addresses_.clear();
    next_address_ = 0;
    if (auto ip = IpAddress::Parse(host_); ip.ok()) {
      addresses_.push_back(*ip);
      return NextAddress();
    }
    ctx_->resolver->ResolveAddresses(host_, [this](absl::StatusOr<std::vector<IpAddress>> a) {
      if (!a.ok()) {
        family_matched_ = true;  // a DNS failure is the site's problem, not the source's
        last_error_ = Deferred(
            "4.4.3", absl::StrCat("cannot resolve mail host ", host_, ": ", a.status().message()));
        return NextCandidate();
      }
      addresses_ = *std::move(a);
      NextAddress();
    });
  }

  void NextAddress() {
    if (next_address_ >= addresses_.size()) return NextCandidate();
    Connect(addresses_[next_address_++]);
  }

  // ---- Socket I/O -----------------------------------------------------------------------

  void Connect(const IpAddress& ip) {
    CloseSocket();
    peer_ = absl::StrCat(host_, "[", ip.ToString(), "]:", port_);
    peer_ip_ = ip.ToString();
    HostPort hp{ip.ToString(), port_};
    auto len = hp.ToSockaddr(&addr_);
    if (source_.has_value() && source_->address.family != ip.family) {
      last_error_ =
          Deferred("4.4.1", absl::StrCat("source ", source_name_, " (", source_->address.ToString(),
                                         ") cannot reach ", peer_));
      return NextAddress();
    }
    family_matched_ = true;
    fd_ = socket(addr_.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (!len.ok() || fd_ < 0) {
      last_error_ = Deferred("4.4.1", absl::StrCat("socket for ", peer_, ": ", strerror(errno)));
      return NextAddress();
    }
    if (source_.has_value()) {
      // Binding a fresh socket to a local address (port 0) does no I/O and cannot block.
      sockaddr_storage local{};
      auto local_len = HostPort{source_->address.ToString(), 0}.ToSockaddr(&local);
      if (!local_len.ok() || bind(fd_, reinterpret_cast<sockaddr*>(&local), *local_len) != 0) {
        std::string why =
            local_len.ok() ? strerror(errno) : std::string(local_len.status().message());
        ::close(fd_);
        fd_ = -1;
        // The source is down, not the destination: its jobs stay queued for other sources.
        ctx_->manager->SourceDown(source_name_,
                                  absl::StrCat("bind to ", source_->address.ToString(), ": ", why));
        return Finish();
      }
    }
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ++pending_ops_;
    Loop()->ReserveSqes(2);  // the connect and its linked timeout must go in together
    io_uring_sqe* sqe = Loop()->Sqe(&connect_op_);
    io_uring_prep_connect(sqe, fd_, reinterpret_cast<sockaddr*>(&addr_), *len);
    sqe->flags |= IOSQE_IO_LINK;
    timeout_ts_ = {absl::ToInt64Seconds(Limits().connect_timeout), 0};
    io_uring_prep_link_timeout(Loop()->Sqe(nullptr), &timeout_ts_, 0);
  }

  void OnConnect(int res, uint32_t) {
    if (finished_) return;
    if (res < 0) {
      std::string why = res == -ECANCELED ? "connection timed out" : strerror(-res);
      last_error_ = Deferred("4.4.1", absl::StrCat("connect to ", peer_, ": ", why));
      return NextAddress();
    }
    // Every established TCP connection counts (also the next address after a refusal).
    counted_open_ = true;
    if (auto* o = ctx_->manager->observer()) o->OnOutboundConnection(source_name_, +1);
    smtp::ClientSessionOptions o;
    o.helo_name = source_.has_value() && !source_->ehlo.empty() ? source_->ehlo : ctx_->helo_name;
    o.use_chunking = true;  // BDAT when offered: no dot-stuffing, one round trip
    o.tls = tls_policy_;
    // Opportunistic TLS is skipped without a client context, and for a host whose
    // handshake just failed (we reconnect to it in plain text, as the policy allows).
    if (o.tls == smtp::TlsPolicy::kOpportunistic && (ctx_->tls == nullptr || plain_retry_)) {
      o.tls = smtp::TlsPolicy::kNone;
    }
    tls_.reset();
    auto session = ClientSession::Create(o);
    if (!session.ok()) return Fail(Deferred("4.3.5", std::string(session.status().message())));
    session_ = *std::move(session);
    ready_seen_ = false;
    ArmRecv();
    Drive();
  }

  void ArmRecv() {
    if (recv_armed_ || fd_ < 0) return;
    recv_armed_ = true;
    ++pending_ops_;
    Loop()->PrepareReceive(&recv_op_, fd_);
  }

  void OnRecv(int res, uint32_t flags) {
    recv_armed_ = false;
    if (res == -ENOBUFS) {
      Loop()->AddTimer(Loop()->Now() + absl::Milliseconds(1), [this, alive = alive_] {
        if (*alive && session_ != nullptr && session_->phase() != Phase::kClosed) ArmRecv();
      });
      return;
    }
    if (res <= 0) {
      if (flags & IORING_CQE_F_BUFFER) Loop()->RecycleBuffer(flags);
      if (session_ != nullptr && session_->phase() != Phase::kClosed) {
        session_->OnConnectionLost(res == 0 ? "connection closed by server" : strerror(-res));
        Drive();
      }
      return;
    }
    absl::string_view data = Loop()->ReceivedData(flags, res);
    if (session_ != nullptr && session_->phase() != Phase::kClosed) {
      if (tls_ != nullptr) {
        absl::Status s = tls_->FeedCiphertext(data);
        Loop()->RecycleBuffer(flags);
        if (s.ok()) PumpTls();
        if (!s.ok() && session_->phase() != Phase::kClosed) {
          session_->OnConnectionLost(s.message());
        }
        if (session_ != nullptr && session_->phase() != Phase::kClosed) ArmRecv();
        Drive();
        return;
      }
      session_->OnInput(data);
    }
    Loop()->RecycleBuffer(flags);
    if (session_ != nullptr && session_->phase() != Phase::kClosed) ArmRecv();
    Drive();
  }

  void Flush() {
    if (sending_ || session_ == nullptr || fd_ < 0) return;
    size_t pending = session_->output().size();
    if (tls_ != nullptr) {
      if (tls_->established() && pending > 0) {
        size_t n = std::min(pending, tls_->plaintext_out_capacity());
        if (n > 0 && tls_->WritePlaintext(session_->output().substr(0, n)).ok()) {
          session_->ConsumeOutput(n);
        }
      }
      send_buf_.clear();
      tls_->TakeCiphertext(&send_buf_, 256 * 1024);
      if (send_buf_.empty()) return;
    } else {
      if (pending == 0) return;
      send_buf_ = std::string(session_->output());
      session_->ConsumeOutput(pending);
    }
    send_off_ = 0;
    sending_ = true;
    SendMore();
  }

  // Moves the TLS channel forward after ciphertext arrived: the handshake, then
  // decrypted bytes into the session.
  void PumpTls() {
    if (tls_->state() == auth::TlsChannel::State::kHandshaking) {
      tls_->Handshake().IgnoreError();  // failure shows in state() below
    }
    // The channel may also finish its handshake inside FeedCiphertext().
    if (tls_->established() && session_->phase() == Phase::kStartTls) {
      const auth::TlsConnectionInfo& info = tls_->info();
      tls_summary_ = absl::StrCat(info.protocol_version, " ", info.cipher,
                                  info.peer_certificate_verified ? " verified" : " unverified");
      if (auto* o = ctx_->manager->observer()) o->OnOutboundTls(info.protocol_version);
      session_->OnTlsEstablished().IgnoreError();
    }
    if (tls_->state() == auth::TlsChannel::State::kFailed) {
      if (session_->phase() == Phase::kStartTls) {
        session_->OnTlsFailed(tls_->status().message()).IgnoreError();
      } else {
        session_->OnConnectionLost(tls_->status().message());
      }
      return;
    }
    char buf[16384];
    while (tls_->established()) {
      absl::StatusOr<size_t> n = tls_->ReadPlaintext(buf, sizeof(buf));
      if (!n.ok() || *n == 0) break;
      session_->OnInput(absl::string_view(buf, *n));
    }
    if (tls_->read_closed() && session_->phase() != Phase::kClosed) {
      session_->OnConnectionLost("TLS stream closed by the server");
    }
  }

  void StartTls() {
    auto channel = auth::TlsChannel::CreateClient(*ctx_->tls, host_);
    if (!channel.ok()) {
      session_->OnTlsFailed(channel.status().message()).IgnoreError();
      return;
    }
    tls_ = *std::move(channel);
    tls_->Handshake().IgnoreError();  // produces the ClientHello
  }

  void SendMore() {
    ++pending_ops_;
    io_uring_prep_send(Loop()->Sqe(&send_op_), fd_, send_buf_.data() + send_off_,
                       send_buf_.size() - send_off_, MSG_NOSIGNAL);
  }

  void OnSend(int res, uint32_t) {
    if (res < 0) {
      sending_ = false;
      if (session_ != nullptr && session_->phase() != Phase::kClosed) {
        session_->OnConnectionLost(strerror(-res));
      }
      Drive();
      return;
    }
    send_off_ += res;
    if (send_off_ < send_buf_.size()) return SendMore();
    sending_ = false;
    Drive();
  }

  void CloseSocket() {
    if (fd_ < 0) return;
    if (counted_open_) {
      counted_open_ = false;
      if (auto* o = ctx_->manager->observer()) o->OnOutboundConnection(source_name_, -1);
    }
    // Pending operations complete (with errors) after shutdown; the fd is closed once the
    // last of them has, so a recycled descriptor never sees a stale completion.
    ::shutdown(fd_, SHUT_RDWR);
    if (pending_ops_ == 0) {
      ::close(fd_);
    } else {
      zombie_fds_.push_back(fd_);
    }
    fd_ = -1;
    recv_armed_ = false;
  }

  // ---- Protocol ------------------------------------------------------------------------

  void Drive() {
    while (!finished_ && session_ != nullptr) {
      if (session_->has_result()) HandleResult(*session_->TakeResult());
      Flush();
      Phase phase = session_->phase();
      if (phase == Phase::kStartTls) {
        if (tls_ == nullptr) {
          if (ctx_->tls == nullptr) {
            // Only a route that requires TLS sends STARTTLS without a client context.
            session_->OnTlsFailed("no TLS client context configured").IgnoreError();
            continue;
          }
          StartTls();
          continue;
        }
        Flush();  // handshake records
        break;
      }
      if (phase == Phase::kClosed) return SessionClosed();
      if (phase == Phase::kReady) {
        if (!ready_seen_) {
          // One line per connection, so TLS use per delivery can be traced from the log.
          MTA_LOG_INFO("delivery: connected to %s (%s) for %s: %s", peer_,
                       tls_summary_.empty() ? "plain text" : tls_summary_, dest_->key,
                       session_->capabilities().ToString());
        }
        ready_seen_ = true;
        uint32_t max_messages = Limits().max_messages_per_connection;
        if (!job_.has_value() && !loading_ && max_messages > 0 && jobs_taken_ >= max_messages) {
          idle_token_.reset();
          session_->Quit().IgnoreError();  // this connection has carried its share
          continue;
        }
        if (!job_.has_value() && !loading_ && idle_token_ == nullptr) {
          NextJob();
          if (job_.has_value() && !loading_) continue;  // a transaction just started
        }
      }
      break;
    }
    ArmPhaseTimer();
  }

  // One timer at a time: the deadline moves with every event, and the timer, when it
  // fires early, re-arms itself for the current deadline (no timer churn per event).
  void ArmPhaseTimer() {
    if (session_ == nullptr) return;
    Phase phase = session_->phase();
    absl::Duration d = phase == Phase::kReady      ? Limits().idle_timeout
                       : phase == Phase::kStartTls ? ctx_->tls_handshake_timeout
                                                   : ClientSession::DefaultTimeout(phase);
    if (loading_) d = absl::InfiniteDuration();  // the content loader answers in any case
    // Idleness counts from when the last job ended: being offered work this connection
    // cannot carry does not keep it open.
    absl::Time from =
        phase == Phase::kReady && idle_since_ != absl::InfinitePast() ? idle_since_ : Loop()->Now();
    deadline_ = d == absl::InfiniteDuration() ? absl::InfiniteFuture() : from + d;
    if (deadline_ == absl::InfiniteFuture()) return;
    // A later deadline is caught when the pending timer fires; an earlier one (a short
    // idle timeout after a long phase timeout) needs the timer moved.
    if (timer_ != 0 && deadline_ < timer_at_) {
      Loop()->CancelTimer(timer_);
      timer_ = 0;
    }
    if (timer_ == 0) ArmTimerAt(deadline_);
  }

  void ArmTimerAt(absl::Time when) {
    timer_at_ = when;
    timer_ = Loop()->AddTimer(when, [this, alive = alive_] {
      if (!*alive) return;
      timer_ = 0;
      if (session_ == nullptr || finished_ || deadline_ == absl::InfiniteFuture()) return;
      if (Loop()->Now() < deadline_) return ArmTimerAt(deadline_);
      if (session_->phase() == Phase::kReady && !job_.has_value() && !loading_) {
        idle_token_.reset();  // no longer idle: the destination must not hand us work
        session_->Quit().IgnoreError();
      } else if (session_->phase() == Phase::kStartTls) {
        session_->OnTlsFailed("TLS handshake timed out").IgnoreError();
      } else {
        session_->OnTimeout();
      }
      Drive();
    });
  }

  void NextJob() {
    std::optional<Job> job = ctx_->manager->TakeJob(*dest_, source_name_);
    if (!job.has_value()) {
      // Idle: offer ourselves to the destination until the idle timer ends the connection.
      if (idle_since_ == absl::InfinitePast()) idle_since_ = Loop()->Now();
      idle_token_ = std::make_shared<bool>(true);
      dest_->idle.push_back({idle_token_, [this, alive = alive_] {
                               if (!*alive || finished_) return;
                               idle_token_.reset();
                               Drive();  // takes the waiting job
                             }});
      // Ready work this connection cannot carry may need a connection of its own.
      ctx_->manager->ConnectionIdle(*dest_);
      return;
    }
    idle_since_ = absl::InfinitePast();
    job_ = *std::move(job);
    job_started_ = Loop()->Now();
    ++jobs_taken_;
    content_ = job_->message->content;
    if (content_ != nullptr) return SendJob();
    // Beyond the in-memory budget: read the content back from the spool first.
    loading_ = true;
    ctx_->loader->Load(job_->message->envelope.id,
                       [loop = Loop(), this, alive = alive_](
                           absl::StatusOr<std::shared_ptr<const std::string>> c) mutable {
                         loop->Post([this, alive, c = std::move(c)]() mutable {
                           if (!*alive) return;
                           loading_ = false;
                           if (!c.ok()) {
                             // The content is gone from the spool: nothing can be sent.
                             Report(std::vector<AttemptResult>(
                                 job_->recipients.size(),
                                 Deferred("4.3.0", absl::StrCat("reading the message from "
                                                                "the spool failed: ",
                                                                c.status().message()))));
                             Drive();
                             return;
                           }
                           content_ = *std::move(c);
                           SendJob();
                           Drive();
                         });
                       });
  }

  void SendJob() {
    observed_.clear();
    const queue::Envelope& env = job_->message->envelope;
    smtp::OutboundMessage m;
    m.sender = env.sender;
    for (uint32_t i : job_->recipients) {
      const queue::Recipient& r = env.recipients[i];
      m.recipients.push_back({.address = r.address, .notify = r.notify, .orcpt = r.orcpt});
    }
    m.ret = env.ret;
    m.envid = env.envid;
    m.body_type = env.body_type;
    m.smtputf8 = env.smtputf8;
    m.content = content_.get();
    absl::Status s = session_->StartTransaction(std::move(m));
    if (!s.ok()) {
      Report(std::vector<AttemptResult>(job_->recipients.size(),
                                        Deferred("4.3.0", std::string(s.message()))));
    }
  }

  void HandleResult(const smtp::TransactionResult& result) {
    if (!job_.has_value()) return;
    // A reply that puts this source into backoff at the site sends the job back to wait
    // for the pause to end, as no attempt was really made on its merits.
    bool suspended = Observe(result.mail_reply);
    for (const ServerReply& reply : result.recipients) suspended |= Observe(reply);
    suspended |= Observe(result.data_reply);
    suspended |= Observe(result.final_reply);
    if (suspended && result.CountDelivered() == 0) {
      MTA_LOG_INFO("delivery: %s to %s: source in backoff, job requeued",
                   job_->message->envelope.id, peer_);
      Job job = *std::move(job_);
      job_.reset();
      content_.reset();
      ctx_->manager->ReturnJob(*dest_, std::move(job));
      idle_token_.reset();
      session_->Quit().IgnoreError();
      return;
    }
    std::vector<AttemptResult> out;
    bool dsn = session_->capabilities().dsn;
    for (const ServerReply& reply : result.recipients) {
      out.push_back(FromReply(reply, host_, dsn));
      out.back().tls = tls_summary_;
    }
    out.resize(job_->recipients.size(), Deferred("4.0.0", "no reply for this recipient"));
    MTA_LOG_DEBUG("delivery: %s to %s: %d of %d recipients accepted%s", job_->message->envelope.id,
                  peer_, result.CountDelivered(), out.size(),
                  tls_summary_.empty() ? "" : absl::StrCat(" (", tls_summary_, ")"));
    Report(std::move(out));
  }

  void Report(std::vector<AttemptResult> results) {
    absl::Duration took = Loop()->Now() - job_started_;
    for (AttemptResult& r : results) {
      r.source = source_name_;
      r.duration = took;
      if (!r.remote_mta.empty()) r.remote_ip = peer_ip_;
    }
    Job job = *std::move(job_);
    job_.reset();
    ctx_->manager->CompleteJob(*dest_, std::move(job), std::move(results), std::move(content_));
    content_.reset();
  }

  // Feeds a server reply to the site's backoff rules; true if it paused this source. Each
  // distinct reply counts once per transaction (a refused MAIL is repeated for every
  // recipient, and a 421 also ends the session) and once for all greetings.
  bool Observe(const ServerReply& reply) {
    if (reply.empty() || reply.local || reply.positive() || reply.intermediate()) return false;
    if (!observed_.insert(reply.ToString()).second) return false;
    return ctx_->manager->ObserveReply(*dest_, source_name_, reply.code, reply.enhanced,
                                       absl::StrJoin(reply.lines, " "));
  }

  void SessionClosed() {
    const auto& error = session_->error();
    if (error.has_value() && !job_.has_value() && Observe(error->reply)) {
      // Backing off: the site's queue waits for the pause instead of being deferred.
      return Finish();
    }
    // Before the connection ever became ready (greeting refused, EHLO failed, lost early),
    // the next address or host gets a chance; after that, the destination simply has one
    // connection fewer.
    if (error.has_value() && error->kind == smtp::ClientErrorKind::kTlsFailed &&
        tls_policy_ == smtp::TlsPolicy::kOpportunistic && !plain_retry_ && !job_.has_value()) {
      MTA_LOG_INFO("delivery: %s: %s; retrying without TLS", peer_, error->reply.ToString());
      plain_retry_ = true;
      --next_address_;  // the same address again
      session_.reset();
      CloseSocket();
      return AfterDrain(&Connection::NextAddress);
    }
    if (error.has_value() && !ready_seen_ && !job_.has_value()) {
      const ServerReply& reply = error->reply;
      // One host refusing us is never final for the whole domain: report it as transient.
      std::string status = reply.enhanced.empty() ? "4.4.2" : reply.enhanced;
      status[0] = '4';
      last_error_ = Deferred(status, absl::StrCat(peer_, " said: ", reply.ToString()), host_);
      session_.reset();
      CloseSocket();
      return AfterDrain(&Connection::NextAddress);
    }
    Finish();
  }

  // Runs `step` once no operation on the old socket is pending, so that late completions
  // of the old socket can never be mistaken for the new one's.
  void AfterDrain(void (Connection::*step)()) {
    if (pending_ops_ == 0) return (this->*step)();
    after_drain_ = step;
  }

  void Fail(const AttemptResult& reason) {
    if (finished_) return;
    std::vector<Job> failed;
    if (job_.has_value()) failed.push_back(*std::move(job_));
    job_.reset();
    MTA_LOG_INFO("delivery: %s: %s", dest_->key, reason.diagnostic);
    ctx_->manager->DestinationFailed(*dest_, std::move(failed), reason);
    Finish();
  }

  void Finish() {
    if (finished_) return;
    if (job_.has_value()) {
      // A job taken but never attempted (its content was still loading when the
      // connection ended) goes back to be retried: it must never simply vanish.
      loading_ = false;
      Report(std::vector<AttemptResult>(
          job_->recipients.size(),
          Deferred("4.4.2", absl::StrCat("connection to ", peer_, " ended before sending"))));
    }
    finished_ = true;
    *alive_ = false;
    idle_token_.reset();
    if (timer_ != 0) Loop()->CancelTimer(timer_);
    timer_ = 0;
    CloseSocket();
    ctx_->manager->ConnectionClosed(*dest_, source_name_);
    MaybeFinish();
  }

  void MaybeFinish() {
    if (!finished_ || pending_ops_ > 0 || deleting_) return;
    deleting_ = true;
    for (int fd : zombie_fds_) ::close(fd);
    zombie_fds_.clear();
    Loop()->AddTimer(Loop()->Now(), [this] { delete this; });
  }

  OutboundContext* const ctx_;
  Destination* const dest_;
  std::optional<EgressSource> source_;  // none: the kernel picks the local address
  std::string source_name_;             // "" without a source
  uint32_t jobs_taken_ = 0;
  absl::Time idle_since_ = absl::InfinitePast();  // when the connection last ran out of work
  bool family_matched_ = false;  // some address had the source's family (or DNS failed)
  absl::flat_hash_set<std::string> observed_;  // replies fed to backoff (see Observe)
  smtp::TlsPolicy tls_policy_;
  std::shared_ptr<bool> alive_;
  std::shared_ptr<bool> idle_token_;
  size_t next_candidate_ = 0;
  std::vector<IpAddress> addresses_;
  size_t next_address_ = 0;
  std::string host_;
  uint16_t port_ = 25;
  std::string peer_;
  std::string peer_ip_;        // of peer_
  bool counted_open_ = false;  // fd_ is connected and reported to the observer as open
  absl::Time job_started_ = absl::InfinitePast();
  std::optional<AttemptResult> last_error_;

  int fd_ = -1;
  std::vector<int> zombie_fds_;
  sockaddr_storage addr_{};
  __kernel_timespec timeout_ts_{};
  Op connect_op_{this, &Connection::OnConnect};
  Op recv_op_{this, &Connection::OnRecv};
  Op send_op_{this, &Connection::OnSend};
  int pending_ops_ = 0;
  void (Connection::*after_drain_)() = nullptr;
  bool recv_armed_ = false;
  bool sending_ = false;
  std::string send_buf_;
  size_t send_off_ = 0;
  event::EventLoop::TimerId timer_ = 0;
  absl::Time timer_at_;
  absl::Time deadline_ = absl::InfiniteFuture();

  std::unique_ptr<ClientSession> session_;
  std::unique_ptr<auth::TlsChannel> tls_;
  std::string tls_summary_;  // "TLSv1.3 TLS_AES_128_GCM_SHA256 verified", "" = plain text
  bool plain_retry_ = false;
  bool ready_seen_ = false;
  std::optional<Job> job_;
  std::shared_ptr<const std::string> content_;
  bool loading_ = false;
  bool finished_ = false;
  bool deleting_ = false;
};

}  // namespace

void StartOutboundConnection(OutboundContext* context, Destination* destination,
                             const EgressSource* source) {
  (new Connection(context, destination, source))->Start();
}

}  // namespace mta::delivery
