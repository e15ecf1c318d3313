// One worker thread that runs tasks in order: the home for blocking work (spool reads, key
// derivation, signatures) that must stay off the shards' event loops.
#ifndef MTA_BASE_WORK_QUEUE_H_
#define MTA_BASE_WORK_QUEUE_H_

#include <cstddef>
#include <deque>
#include <limits>
#include <string>
#include <thread>

#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace mta {

/**
 * Thread-safe. Tasks run on the queue's own thread, one at a time, in the order posted; a
 * task that has a result for a shard posts it into that shard's loop itself. Destroying the
 * queue runs the tasks already posted, then joins the thread, so an owner should declare
 * its WorkQueue after (destroy it before) whatever the tasks use.
 */
class WorkQueue {
 public:
  /**
   * @param name thread name (at most 15 characters are kept).
   * @param max_pending tasks waiting beyond which HasRoom() is false.
   */
  explicit WorkQueue(std::string name, size_t max_pending = std::numeric_limits<size_t>::max());
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  /**
   * False while max_pending tasks wait. A soft bound: callers on several threads that all
   * saw room may each add one more.
   */
  bool HasRoom() const;
  void Post(absl::AnyInvocable<void()> task);

 private:
  void Run();

  const std::string name_;
  const size_t max_pending_;
  mutable absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace mta

#endif  // MTA_BASE_WORK_QUEUE_H_
