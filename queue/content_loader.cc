#include "queue/content_loader.h"

#include <utility>

namespace mta::queue {

void ContentLoader::Load(const std::string& id, Callback done) {
  queue_.Post([this, id, done = std::move(done)]() mutable {
    absl::StatusOr<std::string> content = spool_->ReadContent(id);
    if (content.ok()) {
      done(std::make_shared<const std::string>(*std::move(content)));
    } else {
      done(content.status());
    }
  });
}

}  // namespace mta::queue
