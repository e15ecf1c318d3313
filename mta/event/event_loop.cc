#include "mta/event/event_loop.h"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace mta::event {
namespace {
absl::Status ErrnoToStatus(int err, absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(err)));
}
}  // namespace

class EventLoop::WakeCompletion final : public Completion {
 public:
  explicit WakeCompletion(EventLoop* loop) : loop_(loop) {}
  void OnComplete(int res, uint32_t flags) override { loop_->ArmWake(); }

 private:
  EventLoop* loop_;
};

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create(const Options& options) {
  std::unique_ptr<EventLoop> loop(new EventLoop());
  absl::Status s = loop->Init(options);
  if (!s.ok()) return s;
  return loop;
}

absl::Status EventLoop::Init(const Options& options) {
  io_uring_params params;
  std::memset(&params, 0, sizeof(params));
  params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN;
  int ret = io_uring_queue_init_params(options.sq_entries, &ring_, &params);
  if (ret == -EINVAL) {
    // Older kernels lack SINGLE_ISSUER/COOP_TASKRUN; they are optimizations only.
    std::memset(&params, 0, sizeof(params));
    ret = io_uring_queue_init_params(options.sq_entries, &ring_, &params);
  }
  if (ret < 0) return ErrnoToStatus(-ret, "io_uring_queue_init");
  ring_ready_ = true;

  buffer_count_ = options.recv_buffers;
  buffer_bytes_ = options.recv_buffer_bytes;
  buf_ring_bytes_ = sizeof(io_uring_buf) * buffer_count_;
  void* mem =
      mmap(nullptr, buf_ring_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) return ErrnoToStatus(errno, "mmap buffer ring");
  buf_ring_ = static_cast<io_uring_buf_ring*>(mem);
  io_uring_buf_reg reg;
  std::memset(&reg, 0, sizeof(reg));
  reg.ring_addr = reinterpret_cast<uint64_t>(buf_ring_);
  reg.ring_entries = buffer_count_;
  reg.bgid = kRecvBufferGroup;
  ret = io_uring_register_buf_ring(&ring_, &reg, 0);
  if (ret < 0) return ErrnoToStatus(-ret, "io_uring_register_buf_ring (needs Linux 5.19+)");
  io_uring_buf_ring_init(buf_ring_);
  buffers_.reset(new char[static_cast<size_t>(buffer_count_) * buffer_bytes_]);
  int mask = io_uring_buf_ring_mask(buffer_count_);
  for (uint32_t i = 0; i < buffer_count_; ++i) {
    io_uring_buf_ring_add(buf_ring_, buffers_.get() + static_cast<size_t>(i) * buffer_bytes_,
                          buffer_bytes_, i, mask, i);
  }
  io_uring_buf_ring_advance(buf_ring_, buffer_count_);

  wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (wake_fd_ < 0) return ErrnoToStatus(errno, "eventfd");
  wake_completion_ = std::make_unique<WakeCompletion>(this);
  ArmWake();
  return absl::OkStatus();
}

EventLoop::~EventLoop() {
  if (ring_ready_) io_uring_queue_exit(&ring_);
  if (buf_ring_ != nullptr) munmap(buf_ring_, buf_ring_bytes_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

io_uring_sqe* EventLoop::Sqe(Completion* c) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    int ret = io_uring_submit(&ring_);
    if (ret < 0 && ret != -EBUSY && ret != -EAGAIN && ret != -EINTR) {
      // Only misuse (a foreign thread on a SINGLE_ISSUER ring) or a dead ring gets here.
      fprintf(stderr, "fatal: io_uring_submit: %s\n", strerror(-ret));
      abort();
    }
    sqe = io_uring_get_sqe(&ring_);
  }
  io_uring_sqe_set_data(sqe, c);
  return sqe;
}

void EventLoop::ReserveSqes(unsigned n) {
  if (io_uring_sq_space_left(&ring_) < n) io_uring_submit(&ring_);
}

void EventLoop::PrepareReceive(Completion* c, int fd) {
  io_uring_sqe* sqe = Sqe(c);
  io_uring_prep_recv(sqe, fd, nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = kRecvBufferGroup;
}

absl::string_view EventLoop::ReceivedData(uint32_t cqe_flags, int len) const {
  uint32_t bid = cqe_flags >> IORING_CQE_BUFFER_SHIFT;
  return absl::string_view(buffers_.get() + static_cast<size_t>(bid) * buffer_bytes_, len);
}

void EventLoop::RecycleBuffer(uint32_t cqe_flags) {
  uint32_t bid = cqe_flags >> IORING_CQE_BUFFER_SHIFT;
  io_uring_buf_ring_add(buf_ring_, buffers_.get() + static_cast<size_t>(bid) * buffer_bytes_,
                        buffer_bytes_, bid, io_uring_buf_ring_mask(buffer_count_), 0);
  io_uring_buf_ring_advance(buf_ring_, 1);
}

void EventLoop::ArmWake() {
  io_uring_sqe* sqe = Sqe(wake_completion_.get());
  io_uring_prep_read(sqe, wake_fd_, &wake_value_, sizeof(wake_value_), 0);
}

EventLoop::TimerId EventLoop::AddTimer(absl::Time deadline, absl::AnyInvocable<void()> fn) {
  TimerId id = next_timer_id_++;
  timers_.emplace(id, std::move(fn));
  timer_heap_.emplace(deadline, id);
  return id;
}

void EventLoop::CancelTimer(TimerId id) { timers_.erase(id); }

void EventLoop::Post(absl::AnyInvocable<void()> fn) {
  bool wake;
  {
    absl::MutexLock lock(&post_mu_);
    posted_.push_back(std::move(fn));
    wake = !wake_pending_;
    wake_pending_ = true;
  }
  if (wake) {
    uint64_t one = 1;
    ssize_t n = write(wake_fd_, &one, sizeof(one));
    (void)n;  // eventfd write only fails on counter overflow, which still wakes the loop
  }
}

void EventLoop::RunPosted() {
  std::vector<absl::AnyInvocable<void()>> batch;
  {
    absl::MutexLock lock(&post_mu_);
    batch.swap(posted_);
    wake_pending_ = false;
  }
  for (auto& fn : batch) fn();
}

void EventLoop::RunTimers() {
  while (!timer_heap_.empty() && timer_heap_.top().first <= now_) {
    TimerId id = timer_heap_.top().second;
    timer_heap_.pop();
    auto it = timers_.find(id);
    if (it == timers_.end()) continue;  // cancelled
    auto fn = std::move(it->second);
    timers_.erase(it);
    fn();
  }
}

void EventLoop::Run() {
  struct Cqe {
    Completion* c;
    int res;
    uint32_t flags;
  };
  std::vector<Cqe> batch;
  batch.reserve(1024);
  stopped_ = false;
  while (!stopped_) {
    now_ = absl::Now();
    RunPosted();
    RunTimers();
    if (stopped_) break;
    absl::Duration wait = absl::Seconds(1);
    while (!timer_heap_.empty() && !timers_.contains(timer_heap_.top().second)) timer_heap_.pop();
    if (!timer_heap_.empty()) {
      wait = std::max(absl::ZeroDuration(), std::min(wait, timer_heap_.top().first - now_));
    }
    int64_t wait_ns = absl::ToInt64Nanoseconds(wait);
    __kernel_timespec ts{wait_ns / 1000000000, wait_ns % 1000000000};
    io_uring_cqe* cqe = nullptr;
    int ret = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
    if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY) {
      // Nothing sensible can continue without the ring.
      fprintf(stderr, "fatal: io_uring_submit_and_wait_timeout: %s\n", strerror(-ret));
      abort();
    }
    unsigned head;
    unsigned count = 0;
    batch.clear();
    io_uring_for_each_cqe(&ring_, head, cqe) {
      batch.push_back({static_cast<Completion*>(io_uring_cqe_get_data(cqe)), cqe->res, cqe->flags});
      ++count;
    }
    io_uring_cq_advance(&ring_, count);
    now_ = absl::Now();
    for (const Cqe& e : batch) {
      if (e.c != nullptr) e.c->OnComplete(e.res, e.flags);
    }
  }
  // Push out anything queued by the last callbacks (e.g. final replies).
  io_uring_submit(&ring_);
}

}  // namespace mta::event
