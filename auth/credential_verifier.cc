#include "auth/credential_verifier.h"

#include <openssl/mem.h>
#include <pthread.h>

#include <utility>

namespace mta::auth {

CredentialVerifier::CredentialVerifier(std::shared_ptr<const PasswordFile> file, size_t max_pending)
    : max_pending_(max_pending), file_(std::move(file)), thread_([this] { Run(); }) {}

CredentialVerifier::~CredentialVerifier() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void CredentialVerifier::Verify(std::string user, std::string password, Callback done) {
  {
    absl::MutexLock lock(&mu_);
    if (queue_.size() < max_pending_) {
      queue_.push_back({std::move(user), std::move(password), std::move(done)});
      return;
    }
  }
  // Each check holds a core for about 0.15 s: a backlog this long would only make
  // every client wait past its timeout, so refuse now (454, try again later).
  OPENSSL_cleanse(password.data(), password.size());
  done(absl::UnavailableError("too many authentications in progress"));
}

void CredentialVerifier::SetPasswordFile(std::shared_ptr<const PasswordFile> file) {
  absl::MutexLock lock(&mu_);
  file_ = std::move(file);
}

void CredentialVerifier::Run() {
  pthread_setname_np(pthread_self(), "auth-verifier");
  for (;;) {
    Request req;
    std::shared_ptr<const PasswordFile> file;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this] { return stopping_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping and drained
      req = std::move(queue_.front());
      queue_.pop_front();
      file = file_;
    }
    absl::StatusOr<AuthUser> result =
        file == nullptr ? absl::StatusOr<AuthUser>(absl::UnavailableError("no password file"))
                        : file->Verify(req.user, req.password);
    OPENSSL_cleanse(req.password.data(), req.password.size());
    req.done(std::move(result));
  }
}

}  // namespace mta::auth
