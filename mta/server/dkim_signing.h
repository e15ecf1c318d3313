// DKIM signing at intake: the configured keys, the choice of key by the From: domain, and
// a worker thread that signs messages off the shard event loops.
#ifndef MTA_SERVER_DKIM_SIGNING_H_
#define MTA_SERVER_DKIM_SIGNING_H_

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "auth/dkim_signer.h"
#include "mta/base/work_queue.h"
#include "mta/server/config.h"
#include "queue/spool.h"

namespace mta::server {

/** One loaded key with the options of its dkim.signing entry. */
struct DkimSigningKey {
  auth::DkimKey key;
  auth::DkimSignOptions options;  // `now` unset: the signing time is taken per message
};

/** The keys of one sending domain, in configuration order (several = dual signing). */
using DkimDomainKeys = std::vector<DkimSigningKey>;

/** Immutable once built; shared by the shards and the signer (replaced on SIGHUP). */
class DkimKeySet {
 public:
  /** The keys for `domain` (lower-case, exact match), or null. */
  const DkimDomainKeys* Find(absl::string_view domain) const;
  bool empty() const { return domains_.empty(); }
  size_t key_count() const;

 private:
  friend absl::StatusOr<std::shared_ptr<const DkimKeySet>> LoadDkimKeys(const Config& config);
  absl::flat_hash_map<std::string, DkimDomainKeys> domains_;
};

/**
 * Reads every dkim.signing key file. Blocking: start-up, SIGHUP and --check-config only.
 * The error names the entry and the file, e.g.
 * "dkim.signing[1] (s2._domainkey.example.com): /etc/k.pem: ...".
 */
absl::StatusOr<std::shared_ptr<const DkimKeySet>> LoadDkimKeys(const Config& config);

/**
 * The domain whose keys sign `content`: that of the first address in the RFC 5322 From:
 * header field, lower-cased; the envelope sender's domain when there is no parsable From:.
 * "" when neither has a domain.
 */
std::string DkimSigningDomain(absl::string_view content, absl::string_view envelope_sender);

/**
 * Prepends the DKIM-Signature fields of every key in `keys` to record->content and updates
 * envelope.content_bytes. The fields go at the very top of the message, above our own
 * Received: field: verifiers find DKIM-Signature anywhere in the header block, and our
 * Received: (not signed by default) stays out of the signed data either way.
 */
absl::Status DkimSignRecord(const DkimDomainKeys& keys, queue::SpoolRecord* record);

/**
 * Thread-safe. Signs records one at a time on its own thread (an RSA signature costs about
 * a millisecond: too long for a shard loop). The callback runs on that thread and must only
 * post the result back to its shard.
 */
class DkimSigningService {
 public:
  using Callback = absl::AnyInvocable<void(absl::Status, std::unique_ptr<queue::SpoolRecord>)>;

  static constexpr size_t kDefaultMaxPending = 10000;

  /**
   * @param threads signer threads (0 = one per CPU): an RSA-2048 signature takes about a
   *     millisecond of CPU, so one thread would cap intake near 1,000 signed messages/s.
   * @param max_pending records waiting, over all threads, beyond which Sign() refuses.
   */
  explicit DkimSigningService(std::shared_ptr<const DkimKeySet> keys,
                              size_t max_pending = kDefaultMaxPending, size_t threads = 0);
  ~DkimSigningService();  // finishes queued records, then stops

  /** The current keys (a short lock; never null). */
  std::shared_ptr<const DkimKeySet> keys() const;
  /** Records signed after this call use `keys` (SIGHUP reload). */
  void SetKeys(std::shared_ptr<const DkimKeySet> keys);

  /**
   * Signs `record` with `keys` (a snapshot taken by the caller). `done` gets OK and the
   * signed record, Internal/InvalidArgument when signing failed, or ResourceExhausted when
   * more than max_pending records wait (then `done` runs at once on the calling thread).
   */
  void Sign(std::unique_ptr<queue::SpoolRecord> record, std::shared_ptr<const DkimKeySet> keys,
            std::string domain, Callback done);

 private:
  mutable absl::Mutex mu_;
  std::shared_ptr<const DkimKeySet> keys_ ABSL_GUARDED_BY(mu_);
  std::atomic<size_t> next_{0};                     // round robin over the signer threads
  std::vector<std::unique_ptr<WorkQueue>> queues_;  // last: drained before the members above
};

}  // namespace mta::server

#endif  // MTA_SERVER_DKIM_SIGNING_H_
