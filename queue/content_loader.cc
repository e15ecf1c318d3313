#include "queue/content_loader.h"

namespace mta::queue {

ContentLoader::ContentLoader(Spool* spool) : spool_(spool), thread_([this] { Run(); }) {}

ContentLoader::~ContentLoader() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void ContentLoader::Load(const std::string& id, Callback done) {
  absl::MutexLock lock(&mu_);
  queue_.push_back({id, std::move(done)});
}

void ContentLoader::Run() {
  for (;;) {
    Request req;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this] { return stopping_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping and drained
      req = std::move(queue_.front());
      queue_.pop_front();
    }
    absl::StatusOr<std::string> content = spool_->ReadContent(req.id);
    if (content.ok()) {
      req.done(std::make_shared<const std::string>(*std::move(content)));
    } else {
      req.done(content.status());
    }
  }
}

}  // namespace mta::queue
