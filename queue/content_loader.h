// Reads message content back from the spool off the shard threads.
#ifndef QUEUE_CONTENT_LOADER_H_
#define QUEUE_CONTENT_LOADER_H_

#include <deque>
#include <memory>
#include <string>
#include <thread>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "queue/spool.h"

namespace mta::queue {

/**
 * Thread-safe. Spool reads block (disk), so they run on this loader's own thread; the
 * callback runs on that thread too and must only post the result back to its shard.
 * Bodies beyond the in-memory budget are read back through here when a delivery needs them.
 */
class ContentLoader {
 public:
  using Callback = absl::AnyInvocable<void(absl::StatusOr<std::shared_ptr<const std::string>>)>;

  explicit ContentLoader(Spool* spool);
  ~ContentLoader();  // finishes queued loads, then stops

  void Load(const std::string& id, Callback done);

 private:
  struct Request {
    std::string id;
    Callback done;
  };
  void Run();

  Spool* const spool_;
  absl::Mutex mu_;
  std::deque<Request> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace mta::queue

#endif  // QUEUE_CONTENT_LOADER_H_
