#include "auth/credential_verifier.h"

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace mta::auth {
namespace {

std::shared_ptr<const PasswordFile> File(absl::string_view user, absl::string_view password) {
  absl::StatusOr<std::string> h = HashPassword(password, {.log2_n = 10, .r = 8, .p = 1});
  EXPECT_TRUE(h.ok());
  auto file = PasswordFile::Parse(absl::StrCat(user, ":", *h, ":*:tx\n"), "test");
  EXPECT_TRUE(file.ok()) << file.status();
  return std::shared_ptr<const PasswordFile>(*std::move(file));
}

struct Result {
  absl::Notification done;
  absl::StatusOr<AuthUser> user = absl::UnknownError("not called");
  std::thread::id thread;
};

CredentialVerifier::Callback Capture(Result* r) {
  return [r](absl::StatusOr<AuthUser> user) {
    r->user = std::move(user);
    r->thread = std::this_thread::get_id();
    r->done.Notify();
  };
}

TEST(CredentialVerifierTest, VerifiesOnItsOwnThread) {
  CredentialVerifier verifier(File("alice", "pw"));
  Result good, bad, unknown;
  verifier.Verify("alice", "pw", Capture(&good));
  verifier.Verify("alice", "nope", Capture(&bad));
  verifier.Verify("bob", "pw", Capture(&unknown));
  good.done.WaitForNotification();
  bad.done.WaitForNotification();
  unknown.done.WaitForNotification();
  ASSERT_TRUE(good.user.ok()) << good.user.status();
  EXPECT_EQ(good.user->name, "alice");
  EXPECT_EQ(good.user->stream, "tx");
  EXPECT_NE(good.thread, std::this_thread::get_id());
  EXPECT_EQ(bad.user.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(unknown.user.status().code(), absl::StatusCode::kPermissionDenied);
}

TEST(CredentialVerifierTest, FullQueueIsRefusedAtOnce) {
  CredentialVerifier verifier(File("alice", "pw"), /*max_pending=*/0);
  Result r;
  verifier.Verify("alice", "pw", Capture(&r));
  ASSERT_TRUE(r.done.HasBeenNotified());  // on the calling thread, before Verify returned
  EXPECT_EQ(r.user.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(r.thread, std::this_thread::get_id());
}

TEST(CredentialVerifierTest, ReloadedFileApplies) {
  CredentialVerifier verifier(File("alice", "old"));
  verifier.SetPasswordFile(File("alice", "new"));
  Result old_pw, new_pw;
  verifier.Verify("alice", "old", Capture(&old_pw));
  verifier.Verify("alice", "new", Capture(&new_pw));
  old_pw.done.WaitForNotification();
  new_pw.done.WaitForNotification();
  EXPECT_EQ(old_pw.user.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(new_pw.user.ok()) << new_pw.user.status();
}

TEST(CredentialVerifierTest, NoFileIsUnavailable) {
  CredentialVerifier verifier(nullptr);
  Result r;
  verifier.Verify("alice", "pw", Capture(&r));
  r.done.WaitForNotification();
  EXPECT_EQ(r.user.status().code(), absl::StatusCode::kUnavailable);
}

TEST(CredentialVerifierTest, DestructorFinishesQueuedWork) {
  std::vector<std::unique_ptr<Result>> results;
  {
    CredentialVerifier verifier(File("alice", "pw"));
    for (int i = 0; i < 5; ++i) {
      results.push_back(std::make_unique<Result>());
      verifier.Verify("alice", i % 2 ? "pw" : "x", Capture(results.back().get()));
    }
  }
  for (size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i]->done.HasBeenNotified()) << i;
    EXPECT_EQ(results[i]->user.ok(), i % 2 == 1) << i;
  }
}

}  // namespace
}  // namespace mta::auth
