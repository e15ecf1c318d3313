// One io_uring-driven event loop per shard thread.
#ifndef MTA_EVENT_EVENT_LOOP_H_
#define MTA_EVENT_EVENT_LOOP_H_

#include <liburing.h>

#include <cstdint>
#include <memory>
#include <queue>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace mta::event {

/**
 * The owner of one in-flight io_uring operation; its address is the SQE's user_data.
 * It must stay alive until its last completion (no IORING_CQE_F_MORE) has been delivered.
 */
class Completion {
 public:
  virtual ~Completion() = default;
  virtual void OnComplete(int res, uint32_t flags) = 0;
};

/**
 * Shard-local: every method except Post() must be called on the loop's thread, and Create()
 * must run on that thread too (the ring is IORING_SETUP_SINGLE_ISSUER).
 *
 * Completions are drained into a local batch before any callback runs, so callbacks never
 * recurse into the ring. Receives use a provided-buffer ring (kernel picks the buffer at
 * completion time), so idle connections pin no receive memory.
 */
class EventLoop {
 public:
  using TimerId = uint64_t;

  struct Options {
    uint32_t sq_entries = 4096;
    uint32_t recv_buffers = 1024;  // power of two
    uint32_t recv_buffer_bytes = 16384;
  };

  static absl::StatusOr<std::unique_ptr<EventLoop>> Create(const Options& options);
  ~EventLoop();

  /** Makes sure the next `n` Sqe() calls need no submit in between (for linked SQEs). */
  void ReserveSqes(unsigned n);
  /** An SQE whose user_data is `c`; submits first if the SQ is full. Never null. */
  io_uring_sqe* Sqe(Completion* c);

  /** Group id to pass with IOSQE_BUFFER_SELECT for receives. */
  static constexpr uint16_t kRecvBufferGroup = 1;
  /** Queues a receive on `fd` into a provided buffer, completing into `c`. */
  void PrepareReceive(Completion* c, int fd);
  /** The bytes of a completed buffer-select receive. Valid until RecycleBuffer(). */
  absl::string_view ReceivedData(uint32_t cqe_flags, int len) const;
  void RecycleBuffer(uint32_t cqe_flags);

  TimerId AddTimer(absl::Time deadline, absl::AnyInvocable<void()> fn);
  void CancelTimer(TimerId id);

  /** Thread-safe: runs `fn` on the loop thread soon. */
  void Post(absl::AnyInvocable<void()> fn);

  /** Runs until Stop(); may be called again afterwards. */
  void Run();
  void Stop() { stopped_ = true; }

  /** Time cached at the start of each loop pass. */
  absl::Time Now() const { return now_; }

 private:
  class WakeCompletion;
  EventLoop() = default;
  absl::Status Init(const Options& options);
  void ArmWake();
  void RunPosted();
  void RunTimers();

  io_uring ring_{};
  bool ring_ready_ = false;
  io_uring_buf_ring* buf_ring_ = nullptr;
  size_t buf_ring_bytes_ = 0;
  std::unique_ptr<char[]> buffers_;
  uint32_t buffer_count_ = 0;
  uint32_t buffer_bytes_ = 0;

  int wake_fd_ = -1;
  uint64_t wake_value_ = 0;
  std::unique_ptr<WakeCompletion> wake_completion_;

  absl::Mutex post_mu_;
  std::vector<absl::AnyInvocable<void()>> posted_ ABSL_GUARDED_BY(post_mu_);
  bool wake_pending_ ABSL_GUARDED_BY(post_mu_) = false;

  using TimerEntry = std::pair<absl::Time, TimerId>;
  std::priority_queue<TimerEntry, std::vector<TimerEntry>, std::greater<>> timer_heap_;
  absl::flat_hash_map<TimerId, absl::AnyInvocable<void()>> timers_;
  TimerId next_timer_id_ = 1;

  bool stopped_ = false;
  absl::Time now_ = absl::Now();
};

}  // namespace mta::event

#endif  // MTA_EVENT_EVENT_LOOP_H_
