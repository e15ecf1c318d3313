// Reads message content back from the spool off the shard threads.
#ifndef QUEUE_CONTENT_LOADER_H_
#define QUEUE_CONTENT_LOADER_H_

#include <memory>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "mta/base/work_queue.h"
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

  explicit ContentLoader(Spool* spool) : spool_(spool) {}
  // Destruction finishes queued loads, then stops.

  void Load(const std::string& id, Callback done);

 private:
  Spool* const spool_;
  WorkQueue queue_{"spool-loader"};
};

}  // namespace mta::queue

#endif  // QUEUE_CONTENT_LOADER_H_
