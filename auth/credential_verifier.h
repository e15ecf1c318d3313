// Runs SMTP AUTH password checks (a KDF costing milliseconds) off the shard event loops.
#ifndef AUTH_CREDENTIAL_VERIFIER_H_
#define AUTH_CREDENTIAL_VERIFIER_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "auth/auth_user.h"
#include "auth/password_file.h"
#include "mta/base/work_queue.h"

namespace mta::auth {

/**
 * Thread-safe. Verifications run one at a time on this verifier's own thread (a memory-hard
 * KDF would stall a shard's loop); the callback runs on that thread too and must only post
 * the result back to its shard, as with queue::ContentLoader.
 */
class CredentialVerifier {
 public:
  using Callback = absl::AnyInvocable<void(absl::StatusOr<AuthUser>)>;

  /** Requests waiting beyond this are refused at once (Unavailable): see Verify(). */
  static constexpr size_t kDefaultMaxPending = 64;

  explicit CredentialVerifier(std::shared_ptr<const PasswordFile> file,
                              size_t max_pending = kDefaultMaxPending);
  ~CredentialVerifier();  // finishes queued verifications, then stops

  /**
   * Checks `password` for `user` against the current password file. `done` gets the user,
   * PermissionDenied (unknown user or wrong password), Unavailable (the queue is full; then
   * `done` runs at once on the calling thread) or Internal (the KDF failed).
   */
  void Verify(std::string user, std::string password, Callback done);

  /** Verifications queued after this call use `file` (SIGHUP reload). */
  void SetPasswordFile(std::shared_ptr<const PasswordFile> file);

 private:
  absl::Mutex mu_;
  std::shared_ptr<const PasswordFile> file_ ABSL_GUARDED_BY(mu_);
  WorkQueue queue_;  // last: its tasks use the members above
};

}  // namespace mta::auth

#endif  // AUTH_CREDENTIAL_VERIFIER_H_
