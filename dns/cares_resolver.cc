// dns::Resolver on c-ares 1.18, driven by the shard's io_uring loop; see cares_resolver.h.
#include "dns/cares_resolver.h"

#include <ares.h>
#include <liburing.h>
#include <poll.h>
#include <sys/time.h>

#include <algorithm>
#include <cstring>
#include <list>
#include <memory>
#include <optional>
#include <utility>

#include "absl/base/call_once.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "dns/cares_setup.h"
#include "dns/wire_parser.h"
#include "mta/base/log.h"
#include "mta/base/net.h"

namespace mta::dns {
namespace {

using internal::NormalizeName;
using internal::ServerToCsvItem;
using internal::ValidateOptions;

/** Maps a c-ares failure to the codes documented in resolver.h. */
absl::Status AresToStatus(int status, absl::string_view name, absl::string_view type) {
  std::string what = absl::StrCat(type, " ", name, ": ", ares_strerror(status));
  switch (status) {
    case ARES_ENOTFOUND:
      return absl::NotFoundError(what);
    case ARES_EBADNAME:
    case ARES_EBADQUERY:
      return absl::InvalidArgumentError(what);
    default:
      // SERVFAIL, REFUSED, NOTIMP, FORMERR, timeouts, refused connections, malformed
      // answers, out of memory: all transient from the delivery engine's point of view.
      return absl::UnavailableError(what);
  }
}

absl::string_view TypeName(uint16_t type) {
  switch (type) {
    case wire::kTypeMx:
      return "MX";
    case wire::kTypeA:
      return "A";
    case wire::kTypeAaaa:
      return "AAAA";
    default:
      return "?";
  }
}

std::string LowerHost(const char* host) {
  std::string out(host);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  if (!out.empty() && out.back() == '.') out.pop_back();
  return out;
}

/** The outcome of one (name, type) query: what the cache holds. */
struct Answer {
  enum class Kind { kRecords, kNoData, kNxDomain };
  Kind kind = Kind::kRecords;
  std::vector<MxHost> mx;            // kRecords of an MX query, root targets removed
  bool null_mx = false;              // kRecords of an MX query whose targets are all "."
  std::vector<IpAddress> addresses;  // kRecords of an A or AAAA query
  absl::Time expires = absl::InfinitePast();
};
using AnswerPtr = std::shared_ptr<const Answer>;
// A non-OK status is a failure of the DNS path or of the name; those are never cached.
using LookupResult = absl::StatusOr<AnswerPtr>;
using LookupCallback = absl::AnyInvocable<void(const LookupResult&)>;
using CacheKey = std::pair<uint16_t, std::string>;  // (record type, normalized name)

class CaresResolverImpl;

/**
 * One io_uring poll on a c-ares socket, and the poll_remove that may cancel it.
 *
 * The object is the owner of both SQEs (their user_data are its two Completion members),
 * so it lives until the poll's CQE and, when a remove was issued, the remove's CQE have
 * both arrived; only then is it freed. A remove therefore never targets an address that
 * a newer poll could be reusing. When the resolver is destroyed first, `owner` is reset
 * and the op frees itself on its last CQE.
 */
class PollOp {
 public:
  PollOp(CaresResolverImpl* owner, int fd, uint32_t events)
      : owner(owner), fd(fd), events(events) {}

  class PollDone final : public event::Completion {
   public:
    explicit PollDone(PollOp* op) : op_(op) {}
    void OnComplete(int res, uint32_t flags) override;

   private:
    PollOp* op_;
  };

  class RemoveDone final : public event::Completion {
   public:
    explicit RemoveDone(PollOp* op) : op_(op) {}
    void OnComplete(int res, uint32_t flags) override;

   private:
    PollOp* op_;
  };

  CaresResolverImpl* owner;
  const int fd;
  uint32_t events;
  bool poll_pending = false;
  bool remove_pending = false;
  // Superseded (c-ares changed or dropped its interest): the poll's result is ignored.
  bool cancelled = false;
  PollDone poll_done{this};
  RemoveDone remove_done{this};
};

class CaresResolverImpl final : public Resolver {
 public:
  CaresResolverImpl(event::EventLoop* loop, const CaresResolverOptions& options)
      : loop_(loop), options_(options) {}
  ~CaresResolverImpl() override;

  absl::Status Init(const std::string& servers_csv);

  // dns::Resolver
  void ResolveMx(const std::string& domain, MxCallback done) override;
  void ResolveAddresses(const std::string& host, AddressCallback done) override;

 private:
  friend class PollOp;

  /** One outstanding ares_query, shared by every look-up of the same key. */
  struct Query {
    CaresResolverImpl* owner;
    CacheKey key;
    std::vector<LookupCallback> waiters;
  };

  struct Watch {
    uint32_t events = 0;   // what c-ares wants (POLLIN/POLLOUT)
    PollOp* op = nullptr;  // the armed poll; null while its completion runs
  };

  struct CacheEntry {
    AnswerPtr answer;
    std::list<CacheKey>::iterator lru;
  };

  struct AddressJoin {
    std::string host;
    AddressCallback done;
    int pending = 2;
    LookupResult a = absl::UnknownError("pending");
    LookupResult aaaa = absl::UnknownError("pending");
  };

  // c-ares callbacks: `data` is the resolver, `arg` the Query.
  static void OnSockState(void* data, ares_socket_t fd, int readable, int writable);
  static void OnAresAnswer(void* arg, int status, int timeouts, unsigned char* abuf, int alen);

  // Look-ups and the cache.
  void Lookup(uint16_t type, const std::string& name, LookupCallback then);
  void OnAnswer(Query* query, int status, const unsigned char* abuf, int alen);
  LookupResult BuildAnswer(const CacheKey& key, int status, const unsigned char* abuf, int alen);
  LookupResult NegativeAnswer(const CacheKey& key, Answer::Kind kind, const unsigned char* abuf,
                              int alen);
  absl::Duration ClampPositive(uint32_t ttl_s) const;
  AnswerPtr CacheGet(const CacheKey& key);
  void CachePut(const CacheKey& key, AnswerPtr answer);
  absl::StatusOr<MxResult> MakeMxResult(const std::string& domain, const LookupResult& r);
  void FinishAddresses(AddressJoin* join);

  // Callbacks to the user always go through here: they run from a zero-delay timer, in
  // order, never inside a Resolve*() call or inside c-ares.
  void Deliver(absl::AnyInvocable<void()> fn);
  void Flush();

  // Driving c-ares from the loop.
  void SockState(int fd, uint32_t events);
  void Arm(int fd, Watch* watch);
  void SubmitPoll(PollOp* op);
  void Cancel(PollOp* op);
  void OnPollDone(PollOp* op, int res);
  static void MaybeFree(PollOp* op);
  void ProcessFd(ares_socket_t read_fd, ares_socket_t write_fd);
  void ScheduleTimeout();

  event::EventLoop* const loop_;
  const CaresResolverOptions options_;
  ares_channel channel_ = nullptr;

  absl::flat_hash_map<int, Watch> watches_;
  absl::flat_hash_set<PollOp*> live_ops_;
  event::EventLoop::TimerId timeout_timer_ = 0;
  absl::Time timeout_deadline_ = absl::InfiniteFuture();

  absl::flat_hash_map<CacheKey, std::unique_ptr<Query>> inflight_;
  absl::flat_hash_map<CacheKey, CacheEntry> cache_;
  std::list<CacheKey> lru_;  // most recently used first

  std::vector<absl::AnyInvocable<void()>> ready_;
  event::EventLoop::TimerId flush_timer_ = 0;
  // Cleared by the destructor; lets Flush() notice that a callback destroyed the resolver.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

  absl::BitGen rng_;
};

void PollOp::PollDone::OnComplete(int res, uint32_t flags) {
  PollOp* op = op_;
  op->poll_pending = false;
  if (op->owner == nullptr || op->cancelled) {
    CaresResolverImpl::MaybeFree(op);
    return;
  }
  op->owner->OnPollDone(op, res);
}

void PollOp::RemoveDone::OnComplete(int res, uint32_t flags) {
  // res is 0 (cancelled), -ENOENT or -EALREADY (the poll completed first): either way the
  // poll's own CQE arrives or has arrived, and MaybeFree waits for both.
  op_->remove_pending = false;
  CaresResolverImpl::MaybeFree(op_);
}

absl::Status CaresResolverImpl::Init(const std::string& servers_csv) {
  ares_options opts;
  std::memset(&opts, 0, sizeof(opts));
  int mask = 0;
  opts.timeout = options_.query_timeout_ms;
  mask |= ARES_OPT_TIMEOUTMS;
  opts.tries = options_.tries;
  mask |= ARES_OPT_TRIES;
  opts.sock_state_cb = &CaresResolverImpl::OnSockState;
  opts.sock_state_cb_data = this;
  mask |= ARES_OPT_SOCK_STATE_CB;
  // DNS only. ares_query() never consults /etc/hosts, but without this c-ares reads
  // /etc/nsswitch.conf, /etc/host.conf and /etc/svc.conf at init to decide.
  char lookups[] = "b";
  opts.lookups = lookups;
  mask |= ARES_OPT_LOOKUPS;
  // No ARES_FLAG_STAYOPEN: c-ares closes its UDP sockets once no query is outstanding, so
  // later queries get fresh source ports (c-ares 1.18 cannot cap queries per socket), at
  // the cost of a socket() and connect() per burst. No ARES_FLAG_EDNS: answers over 512
  // octets come back truncated and c-ares retries them over TCP, which every server
  // supports, whereas some middleboxes still answer EDNS queries with FORMERR.
  int rc = ares_init_options(&channel_, &opts, mask);
  if (rc != ARES_SUCCESS) {
    channel_ = nullptr;
    return absl::InternalError(absl::StrCat("dns: ares_init_options: ", ares_strerror(rc)));
  }
  if (!servers_csv.empty()) {
    rc = ares_set_servers_ports_csv(channel_, servers_csv.c_str());
    if (rc != ARES_SUCCESS) {
      return absl::InvalidArgumentError(
          absl::StrCat("dns: servers '", servers_csv, "': ", ares_strerror(rc)));
    }
  }
  return absl::OkStatus();
}

CaresResolverImpl::~CaresResolverImpl() {
  *alive_ = false;
  if (channel_ != nullptr) {
    // Runs every outstanding query's callback with ARES_EDESTRUCTION (OnAresAnswer ignores
    // it: user callbacks are dropped, see resolver.h) and closes the sockets, reporting
    // each through OnSockState(fd, 0, 0), which cancels its poll.
    ares_destroy(channel_);
    channel_ = nullptr;
  }
  for (auto& [fd, watch] : watches_) {
    if (watch.op != nullptr) Cancel(watch.op);
  }
  watches_.clear();
  // Whatever is still in flight in the ring frees itself when its last CQE arrives.
  for (PollOp* op : live_ops_) op->owner = nullptr;
  live_ops_.clear();
  if (timeout_timer_ != 0) loop_->CancelTimer(timeout_timer_);
  if (flush_timer_ != 0) loop_->CancelTimer(flush_timer_);
  // inflight_, ready_ and the cache go with their callbacks, none of which runs.
}

// --- c-ares callbacks -----------------------------------------------------------------

void CaresResolverImpl::OnSockState(void* data, ares_socket_t fd, int readable, int writable) {
  static_cast<CaresResolverImpl*>(data)->SockState(
      fd, (readable ? POLLIN : 0) | (writable ? POLLOUT : 0));
}

void CaresResolverImpl::OnAresAnswer(void* arg, int status, int timeouts, unsigned char* abuf,
                                     int alen) {
  // ares_destroy() is running inside our destructor, which frees the Query.
  if (status == ARES_EDESTRUCTION) return;
  auto* query = static_cast<Query*>(arg);
  query->owner->OnAnswer(query, status, abuf, alen);
}

// --- Polls ------------------------------------------------------------------------------

void CaresResolverImpl::SockState(int fd, uint32_t events) {
  if (events == 0) {
    auto it = watches_.find(fd);
    if (it == watches_.end()) return;
    if (it->second.op != nullptr) Cancel(it->second.op);
    watches_.erase(it);
    return;
  }
  Watch& watch = watches_[fd];
  watch.events = events;
  if (watch.op != nullptr) {
    if (watch.op->events == events) return;
    // io_uring polls are level-checked when armed, so cancelling and re-arming with the
    // new mask loses no readiness.
    Cancel(watch.op);
    watch.op = nullptr;
  }
  Arm(fd, &watch);
}

void CaresResolverImpl::Arm(int fd, Watch* watch) {
  auto* op = new PollOp(this, fd, watch->events);
  live_ops_.insert(op);
  watch->op = op;
  SubmitPoll(op);
}

void CaresResolverImpl::SubmitPoll(PollOp* op) {
  op->poll_pending = true;
  io_uring_sqe* sqe = loop_->Sqe(&op->poll_done);
  io_uring_prep_poll_add(sqe, op->fd, op->events);
}

void CaresResolverImpl::Cancel(PollOp* op) {
  op->cancelled = true;
  if (op->poll_pending && !op->remove_pending) {
    op->remove_pending = true;
    io_uring_sqe* sqe = loop_->Sqe(&op->remove_done);
    io_uring_prep_poll_remove(
        sqe, reinterpret_cast<uint64_t>(static_cast<event::Completion*>(&op->poll_done)));
  }
  MaybeFree(op);
}

void CaresResolverImpl::MaybeFree(PollOp* op) {
  if (op->poll_pending || op->remove_pending) return;
  if (op->owner != nullptr) op->owner->live_ops_.erase(op);
  delete op;
}

void CaresResolverImpl::OnPollDone(PollOp* op, int res) {
  const int fd = op->fd;
  auto it = watches_.find(fd);
  if (it == watches_.end() || it->second.op != op) {
    // Not reachable: an op stops being its socket's current poll only through Cancel().
    MaybeFree(op);
    return;
  }
  it->second.op = nullptr;
  if (res < 0) {
    // The poll could not be armed (e.g. -ENOMEM). Leave the socket unwatched instead of
    // spinning on the error: the query's timeout still fires through ScheduleTimeout(),
    // c-ares then retries or fails it, and closes the socket once it is idle.
    MTA_LOG_WARNING("dns: io_uring poll on c-ares socket %d failed: %s", fd, strerror(-res));
    MaybeFree(op);
    return;
  }
  // Errors and hang-ups are handed to c-ares as readiness of what it watches, so that its
  // recv()/send() sees the error and it fails over to the next try.
  uint32_t revents = static_cast<uint32_t>(res);
  bool error = (revents & (POLLERR | POLLHUP | POLLNVAL)) != 0;
  ares_socket_t read_fd =
      (op->events & POLLIN) && ((revents & POLLIN) || error) ? fd : ARES_SOCKET_BAD;
  ares_socket_t write_fd =
      (op->events & POLLOUT) && ((revents & POLLOUT) || error) ? fd : ARES_SOCKET_BAD;
  // While c-ares runs, OnSockState may drop this socket, change its mask (which arms a
  // new op, as watch.op is null) or even close it and open another on the same fd.
  ProcessFd(read_fd, write_fd);
  it = watches_.find(fd);
  if (it != watches_.end() && it->second.op == nullptr) {
    // c-ares still wants the socket with the same mask: re-arm this very op (it has no
    // remove in flight, so its address is safe to reuse).
    op->events = it->second.events;
    it->second.op = op;
    SubmitPoll(op);
    return;
  }
  MaybeFree(op);
}

void CaresResolverImpl::ProcessFd(ares_socket_t read_fd, ares_socket_t write_fd) {
  ares_process_fd(channel_, read_fd, write_fd);
  ScheduleTimeout();
}

void CaresResolverImpl::ScheduleTimeout() {
  timeval tv;
  timeval* next = ares_timeout(channel_, nullptr, &tv);
  if (next == nullptr) {
    // No query outstanding.
    if (timeout_timer_ != 0) loop_->CancelTimer(timeout_timer_);
    timeout_timer_ = 0;
    return;
  }
  absl::Time deadline = absl::Now() + absl::DurationFromTimeval(*next);
  // A timer that fires early is harmless (c-ares just finds nothing expired and we
  // re-arm), so an existing earlier timer is kept; that bounds the timer heap to one live
  // entry plus the cancelled ones replaced by earlier deadlines.
  if (timeout_timer_ != 0 && timeout_deadline_ <= deadline) return;
  if (timeout_timer_ != 0) loop_->CancelTimer(timeout_timer_);
  timeout_deadline_ = deadline;
  timeout_timer_ = loop_->AddTimer(deadline, [this] {
    timeout_timer_ = 0;
    ProcessFd(ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  });
}

// --- Look-ups ---------------------------------------------------------------------------

void CaresResolverImpl::Lookup(uint16_t type, const std::string& name, LookupCallback then) {
  CacheKey key(type, name);
  if (AnswerPtr hit = CacheGet(key)) {
    then(LookupResult(std::move(hit)));
    return;
  }
  auto [it, inserted] = inflight_.try_emplace(key);
  if (!inserted) {
    it->second->waiters.push_back(std::move(then));
    return;
  }
  it->second = std::make_unique<Query>(Query{this, key, {}});
  Query* query = it->second.get();
  query->waiters.push_back(std::move(then));
  // May call OnAresAnswer before returning (e.g. out of memory); `query` is not used after.
  ares_query(channel_, name.c_str(), wire::kClassIn, type, &CaresResolverImpl::OnAresAnswer, query);
  ScheduleTimeout();
}

void CaresResolverImpl::OnAnswer(Query* query, int status, const unsigned char* abuf, int alen) {
  LookupResult result = BuildAnswer(query->key, status, abuf, alen);
  if (result.ok()) CachePut(query->key, *result);
  std::vector<LookupCallback> waiters = std::move(query->waiters);
  inflight_.erase(inflight_.find(query->key));  // frees `query`
  // Waiters are ours (MakeMxResult, FinishAddresses): they only queue user callbacks.
  for (LookupCallback& waiter : waiters) waiter(result);
}

LookupResult CaresResolverImpl::BuildAnswer(const CacheKey& key, int status,
                                            const unsigned char* abuf, int alen) {
  const auto& [type, name] = key;
  if (status == ARES_ENOTFOUND || status == ARES_ENODATA) {
    return NegativeAnswer(
        key, status == ARES_ENOTFOUND ? Answer::Kind::kNxDomain : Answer::Kind::kNoData, abuf,
        alen);
  }
  if (status != ARES_SUCCESS) return AresToStatus(status, name, TypeName(type));
  if (abuf == nullptr || alen <= 0) {
    return absl::UnavailableError(absl::StrCat(TypeName(type), " ", name, ": empty answer"));
  }

  auto answer = std::make_shared<Answer>();
  absl::StatusOr<wire::Message> message =
      wire::ParseMessage(absl::MakeConstSpan(abuf, static_cast<size_t>(alen)));
  // c-ares accepted the answer; if the TTL reader does not, use the answer once without
  // caching it rather than fail a delivery over a TTL.
  std::optional<uint32_t> ttl_s;
  if (message.ok()) ttl_s = wire::MinAnswerTtl(*message, type);
  int parse_status = ARES_SUCCESS;
  if (type == wire::kTypeMx) {
    ares_mx_reply* mx = nullptr;
    parse_status = ares_parse_mx_reply(abuf, alen, &mx);
    if (parse_status == ARES_SUCCESS) {
      bool any_root = false;
      for (ares_mx_reply* r = mx; r != nullptr; r = r->next) {
        std::string host = LowerHost(r->host);
        // RFC 7505: "." as exchanger (c-ares expands it to "") means no mail service.
        if (host.empty()) {
          any_root = true;
          continue;
        }
        auto dup = std::find_if(answer->mx.begin(), answer->mx.end(),
                                [&](const MxHost& h) { return h.host == host; });
        if (dup == answer->mx.end()) {
          answer->mx.push_back(MxHost{std::move(host), r->priority});
        } else {
          dup->preference = std::min(dup->preference, r->priority);
        }
      }
      ares_free_data(mx);
      // A null MX must stand alone (RFC 7505 section 3). Next to real exchangers it is a
      // misconfiguration; the real ones are used, as "." could never be delivered to.
      answer->null_mx = any_root && answer->mx.empty();
    }
  } else if (type == wire::kTypeA || type == wire::kTypeAaaa) {
    // Room for every answer record (ANCOUNT, which cannot exceed one record per 11
    // octets), so none is silently dropped.
    int ancount = alen >= 12 ? (abuf[6] << 8 | abuf[7]) : 1;
    int capacity = std::max(1, std::min(ancount, alen / 11 + 1));
    int count = capacity;
    if (type == wire::kTypeA) {
      std::vector<ares_addrttl> rrs(capacity);
      parse_status = ares_parse_a_reply(abuf, alen, nullptr, rrs.data(), &count);
      for (int i = 0; parse_status == ARES_SUCCESS && i < count; ++i) {
        IpAddress ip;
        ip.family = AF_INET;
        std::memcpy(ip.bytes.data(), &rrs[i].ipaddr, 4);
        answer->addresses.push_back(ip);
      }
    } else {
      std::vector<ares_addr6ttl> rrs(capacity);
      parse_status = ares_parse_aaaa_reply(abuf, alen, nullptr, rrs.data(), &count);
      for (int i = 0; parse_status == ARES_SUCCESS && i < count; ++i) {
        sockaddr_storage ss;
        std::memset(&ss, 0, sizeof(ss));
        auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
        v6->sin6_family = AF_INET6;
        std::memcpy(&v6->sin6_addr, &rrs[i].ip6addr, 16);
        answer->addresses.push_back(IpAddress::FromSockaddr(ss));  // unmaps ::ffff:a.b.c.d
      }
    }
  } else {
    return absl::InternalError(absl::StrCat("dns: unexpected query type ", type));
  }

  if (parse_status == ARES_ENODATA) {
    // NOERROR with answers, none of the asked type: a CNAME chain ending in NODATA.
    return NegativeAnswer(key, Answer::Kind::kNoData, abuf, alen);
  }
  if (parse_status != ARES_SUCCESS) return AresToStatus(parse_status, name, TypeName(type));
  answer->kind = Answer::Kind::kRecords;
  const absl::Time now = loop_->Now();
  answer->expires = ttl_s.has_value() ? now + ClampPositive(*ttl_s) : now;
  return answer;
}

LookupResult CaresResolverImpl::NegativeAnswer(const CacheKey& key, Answer::Kind kind,
                                               const unsigned char* abuf, int alen) {
  absl::Duration ttl = options_.negative_ttl_default;
  if (abuf != nullptr && alen > 0) {
    auto packet = absl::MakeConstSpan(abuf, static_cast<size_t>(alen));
    absl::StatusOr<wire::Message> message = wire::ParseMessage(packet);
    if (message.ok()) {
      std::optional<uint32_t> soa_ttl = wire::NegativeTtl(packet, *message);
      if (soa_ttl.has_value()) {
        ttl = absl::Seconds(*soa_ttl);
      } else if (kind == Answer::Kind::kNoData &&
                 std::any_of(
                     message->authority.begin(), message->authority.end(),
                     [](const wire::ResourceRecord& rr) { return rr.type == wire::kTypeNs; })) {
        // No records, no SOA, but NS records: a referral from a server that does not
        // recurse (or a lame one), not NODATA (RFC 2308 section 2.2). Taking it for NODATA
        // would turn an unknown MX set into an implicit MX, so it is a failure to retry.
        return absl::UnavailableError(absl::StrCat(TypeName(key.first), " ", key.second,
                                                   ": referral instead of an answer (is the "
                                                   "server a recursive resolver?)"));
      }
    }
  }
  auto answer = std::make_shared<Answer>();
  answer->kind = kind;
  answer->expires = loop_->Now() + std::clamp(ttl, options_.ttl_min, options_.negative_ttl_max);
  return answer;
}

absl::Duration CaresResolverImpl::ClampPositive(uint32_t ttl_s) const {
  return std::clamp(absl::Seconds(ttl_s), options_.ttl_min, options_.ttl_max);
}

AnswerPtr CaresResolverImpl::CacheGet(const CacheKey& key) {
  auto it = cache_.find(key);
  if (it == cache_.end()) return nullptr;
  if (it->second.answer->expires <= loop_->Now()) {
    lru_.erase(it->second.lru);
    cache_.erase(it);
    return nullptr;
  }
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return it->second.answer;
}

void CaresResolverImpl::CachePut(const CacheKey& key, AnswerPtr answer) {
  if (options_.cache_entries_max == 0 || answer->expires <= loop_->Now()) return;
  auto it = cache_.find(key);
  if (it != cache_.end()) {
    it->second.answer = std::move(answer);
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    return;
  }
  // Bounded: evict the least recently used entry (expired entries drift there too, as
  // nobody can use them).
  while (cache_.size() >= options_.cache_entries_max && !lru_.empty()) {
    cache_.erase(lru_.back());
    lru_.pop_back();
  }
  lru_.push_front(key);
  cache_.emplace(key, CacheEntry{std::move(answer), lru_.begin()});
}

// --- The interface ----------------------------------------------------------------------

void CaresResolverImpl::ResolveMx(const std::string& domain, MxCallback done) {
  absl::StatusOr<std::string> name = NormalizeName(domain);
  if (!name.ok()) {
    Deliver([done = std::move(done), status = name.status()]() mutable { done(status); });
    return;
  }
  std::string key_name = *name;
  Lookup(wire::kTypeMx, key_name,
         [this, domain = *std::move(name), done = std::move(done)](const LookupResult& r) mutable {
           Deliver([done = std::move(done), result = MakeMxResult(domain, r)]() mutable {
             done(std::move(result));
           });
         });
}

absl::StatusOr<MxResult> CaresResolverImpl::MakeMxResult(const std::string& domain,
                                                         const LookupResult& r) {
  if (!r.ok()) return r.status();
  const Answer& answer = **r;
  MxResult result;
  result.ttl = std::max(absl::ZeroDuration(), answer.expires - loop_->Now());
  switch (answer.kind) {
    case Answer::Kind::kNxDomain:
      return absl::NotFoundError(absl::StrCat("MX ", domain, ": domain does not exist"));
    case Answer::Kind::kNoData:
      result.kind = MxResult::Kind::kImplicit;
      result.hosts.push_back(MxHost{domain, 0});
      return result;
    case Answer::Kind::kRecords:
      break;
  }
  if (answer.null_mx) {
    result.kind = MxResult::Kind::kNullMx;
    return result;
  }
  result.kind = MxResult::Kind::kMx;
  result.hosts = answer.mx;
  // A fresh order among equal preferences for every caller, cached answers included.
  std::shuffle(result.hosts.begin(), result.hosts.end(), rng_);
  std::stable_sort(result.hosts.begin(), result.hosts.end(),
                   [](const MxHost& a, const MxHost& b) { return a.preference < b.preference; });
  return result;
}

void CaresResolverImpl::ResolveAddresses(const std::string& host, AddressCallback done) {
  absl::StatusOr<std::string> name = NormalizeName(host);
  if (!name.ok()) {
    Deliver([done = std::move(done), status = name.status()]() mutable { done(status); });
    return;
  }
  // Shared by the two look-ups; whichever finishes second delivers.
  auto join = std::make_shared<AddressJoin>();
  join->host = *name;
  join->done = std::move(done);
  Lookup(wire::kTypeA, *name, [this, join](const LookupResult& r) {
    join->a = r;
    if (--join->pending == 0) FinishAddresses(join.get());
  });
  Lookup(wire::kTypeAaaa, *name, [this, join](const LookupResult& r) {
    join->aaaa = r;
    if (--join->pending == 0) FinishAddresses(join.get());
  });
}

void CaresResolverImpl::FinishAddresses(AddressJoin* join) {
  std::vector<IpAddress> addresses;
  bool nxdomain = false;
  absl::Status failure;
  for (const LookupResult* r : {&join->a, &join->aaaa}) {
    if (!r->ok()) {
      if (failure.ok()) failure = r->status();
      continue;
    }
    const Answer& answer = ***r;
    nxdomain = nxdomain || answer.kind == Answer::Kind::kNxDomain;
    for (const IpAddress& ip : answer.addresses) {
      if (std::find(addresses.begin(), addresses.end(), ip) == addresses.end()) {
        addresses.push_back(ip);
      }
    }
  }
  absl::StatusOr<std::vector<IpAddress>> result;
  if (!addresses.empty()) {
    // One family may have failed transiently; the other's addresses are still usable.
    result = std::move(addresses);
  } else if (!failure.ok()) {
    // Never report "no address" while one of the two answers is unknown.
    result = failure;
  } else if (nxdomain) {
    result = absl::NotFoundError(absl::StrCat("A/AAAA ", join->host, ": domain does not exist"));
  } else {
    result = absl::NotFoundError(absl::StrCat("A/AAAA ", join->host, ": no A or AAAA records"));
  }
  Deliver([done = std::move(join->done), result = std::move(result)]() mutable {
    done(std::move(result));
  });
}

void CaresResolverImpl::Deliver(absl::AnyInvocable<void()> fn) {
  ready_.push_back(std::move(fn));
  if (flush_timer_ == 0) flush_timer_ = loop_->AddTimer(loop_->Now(), [this] { Flush(); });
}

void CaresResolverImpl::Flush() {
  flush_timer_ = 0;
  std::vector<absl::AnyInvocable<void()>> batch;
  batch.swap(ready_);
  std::shared_ptr<bool> alive = alive_;
  for (absl::AnyInvocable<void()>& fn : batch) {
    // A callback may destroy the resolver; the rest of the batch is then dropped with it.
    if (!*alive) return;
    fn();
  }
}

}  // namespace

absl::StatusOr<ResolverPtr> CaresResolver::Create(event::EventLoop* loop,
                                                  const CaresResolverOptions& options) {
  if (loop == nullptr) return absl::InvalidArgumentError("dns: no event loop");
  absl::Status valid = ValidateOptions(options);
  if (!valid.ok()) return valid;
  std::vector<std::string> items;
  for (const std::string& server : options.servers) {
    absl::StatusOr<std::string> item = ServerToCsvItem(server);
    if (!item.ok()) return item.status();
    items.push_back(*std::move(item));
  }

  // A no-op on Linux, but the documented first call; once per process, thread-safe.
  static absl::once_flag init_once;
  static int init_status = ARES_SUCCESS;
  absl::call_once(init_once, [] { init_status = ares_library_init(ARES_LIB_INIT_ALL); });
  if (init_status != ARES_SUCCESS) {
    return absl::InternalError(
        absl::StrCat("dns: ares_library_init: ", ares_strerror(init_status)));
  }

  auto resolver = std::make_unique<CaresResolverImpl>(loop, options);
  absl::Status s = resolver->Init(absl::StrJoin(items, ","));
  if (!s.ok()) return s;
  return ResolverPtr(std::move(resolver));
}

}  // namespace mta::dns
