#include "auth/credential_verifier.h"

#include <openssl/mem.h>

#include <utility>

namespace mta::auth {

CredentialVerifier::CredentialVerifier(std::shared_ptr<const PasswordFile> file, size_t max_pending)
    : file_(std::move(file)), queue_("auth-verifier", max_pending) {}

CredentialVerifier::~CredentialVerifier() = default;

void CredentialVerifier::Verify(std::string user, std::string password, Callback done) {
  if (!queue_.HasRoom()) {
    // Each check holds a core for about 0.15 s: a backlog this long would only make
    // every client wait past its timeout, so refuse now (454, try again later).
    OPENSSL_cleanse(password.data(), password.size());
    done(absl::UnavailableError("too many authentications in progress"));
    return;
  }
  queue_.Post([this, user = std::move(user), password = std::move(password),
               done = std::move(done)]() mutable {
    std::shared_ptr<const PasswordFile> file;
    {
      absl::MutexLock lock(&mu_);
      file = file_;
    }
    absl::StatusOr<AuthUser> result =
        file == nullptr ? absl::StatusOr<AuthUser>(absl::UnavailableError("no password file"))
                        : file->Verify(user, password);
    OPENSSL_cleanse(password.data(), password.size());
    done(std::move(result));
  });
}

void CredentialVerifier::SetPasswordFile(std::shared_ptr<const PasswordFile> file) {
  absl::MutexLock lock(&mu_);
  file_ = std::move(file);
}

}  // namespace mta::auth
