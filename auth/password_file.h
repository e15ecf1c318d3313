// SMTP AUTH credentials: salted password hashes (scrypt or PBKDF2 from BoringSSL) in a text
// file, one user per line.
//
//   # comment
//   user:scheme$params$salt$hash:sender_domains:stream
//   alice:scrypt$ln=15,r=8,p=1$<salt>$<key>:example.com,example.org:transactional
//   bob:pbkdf2-sha256$i=600000$<salt>$<key>:*
//
// sender_domains is a comma list of the domains the user may send from (MAIL FROM), or `*`
// for any; stream (optional, may be empty) is the stream of the user's messages. Salt and key
// are unpadded standard base64. Blank lines and lines starting with `#` are ignored.
#ifndef AUTH_PASSWORD_FILE_H_
#define AUTH_PASSWORD_FILE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "auth/auth_user.h"

namespace mta::auth {

/**
 * scrypt cost (RFC 7914). The defaults take 32 MiB and about 0.15 s of one core per
 * verification: run verifications off the event loops (CredentialVerifier).
 */
struct ScryptParams {
  uint32_t log2_n = 15;  // N = 2^15. Default: 15.
  uint32_t r = 8;        // Default: 8.
  uint32_t p = 1;        // Default: 1.
};

/** PBKDF2-HMAC-SHA256 iterations accepted in files, at least (OWASP 2023 guidance). */
inline constexpr uint32_t kMinPbkdf2Iterations = 600000;

/** One user line of a password file. */
struct PasswordEntry {
  std::string hash;  // "scheme$params$salt$key"
  AuthUser user;     // name, allowed sender domains, stream

  bool operator==(const PasswordEntry&) const = default;
};

/**
 * Hashes `password` with scrypt and a fresh random 16-byte salt.
 * @return "scrypt$ln=15,r=8,p=1$<salt>$<key>"
 */
absl::StatusOr<std::string> HashPassword(absl::string_view password,
                                         const ScryptParams& params = ScryptParams());

/** Same, with PBKDF2-HMAC-SHA256 (`iterations` >= kMinPbkdf2Iterations). */
absl::StatusOr<std::string> HashPasswordPbkdf2(absl::string_view password,
                                               uint32_t iterations = kMinPbkdf2Iterations);

/** InvalidArgument if `hash` is not a well-formed hash with parameters in range. */
absl::Status CheckPasswordHash(absl::string_view hash);

/**
 * Runs the KDF of `hash` over `password` and compares in constant time (CRYPTO_memcmp).
 * Blocking (milliseconds). @return whether they match; an error if `hash` is malformed or
 * the KDF could not run (e.g. out of memory).
 */
absl::StatusOr<bool> VerifyPasswordHash(absl::string_view hash, absl::string_view password);

/**
 * Parses one user line (no line terminator). Errors are InvalidArgument, without position.
 * Domains are lower-cased.
 */
absl::StatusOr<PasswordEntry> ParsePasswordLine(absl::string_view line);

/** The line for `entry`, without a terminator (ParsePasswordLine's inverse). */
std::string FormatPasswordLine(const PasswordEntry& entry);

/**
 * `text` (a password file) with `entry`'s line replacing the line of the same user, or
 * appended when there is none. Comments, blank lines and other users' lines are kept as they
 * are. Lines that do not parse are an error (the file would not load either).
 * @param must_exist: NotFound if the user has no line; else AlreadyExists if it has one.
 */
absl::StatusOr<std::string> UpsertPasswordLine(absl::string_view text, const PasswordEntry& entry,
                                               bool must_exist);

/**
 * A parsed password file. Immutable and thread-safe once created. Verify() runs a KDF: call
 * it on a thread that may block (CredentialVerifier), never on a shard.
 */
class PasswordFile {
 public:
  /**
   * Parses file text. Errors name `source_name` and the line, e.g.
   * "users.pw:3: sender domains: must be '*' or a comma list of domains".
   */
  static absl::StatusOr<std::unique_ptr<const PasswordFile>> Parse(absl::string_view text,
                                                                   absl::string_view source_name);
  /** Reads and parses a file. Blocking. */
  static absl::StatusOr<std::unique_ptr<const PasswordFile>> Load(const std::string& path);

  /**
   * Checks `password` for `user` (names compare exactly). An unknown user costs a KDF run
   * all the same, so timing does not tell which user names exist.
   * @return the user on success; PermissionDenied for an unknown user or a wrong password;
   * Internal if the KDF could not run.
   */
  absl::StatusOr<AuthUser> Verify(absl::string_view user, absl::string_view password) const;

  /** The entry of `user`, or null. */
  const PasswordEntry* Find(absl::string_view user) const;
  const std::vector<PasswordEntry>& entries() const { return entries_; }

 private:
  PasswordFile() = default;

  std::vector<PasswordEntry> entries_;
  absl::flat_hash_map<std::string, size_t> by_name_;  // index into entries_
};

/** Process-wide count of password KDF evaluations (so tests can see the dummy run). */
uint64_t KdfEvaluations();

}  // namespace mta::auth

#endif  // AUTH_PASSWORD_FILE_H_
