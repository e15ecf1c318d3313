// The durable message spool: the contract the rest of the MTA sees.
#ifndef QUEUE_SPOOL_H_
#define QUEUE_SPOOL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "queue/envelope.h"

namespace mta::queue {

/** One message as spooled: envelope plus content (headers and body, CRLF lines). */
struct SpoolRecord {
  Envelope envelope;
  std::string content;
};

/**
 * Runs on the spool's writer thread once the batch holding the record is durable (or has
 * failed). It must only hand work back to its shard (e.g. post to a mailbox).
 */
using CommitCallback = absl::AnyInvocable<void(absl::Status, std::unique_ptr<SpoolRecord>)>;
/** Runs on the spool's writer thread; same rules as CommitCallback. */
using WriteCallback = absl::AnyInvocable<void(absl::Status)>;

/** A change to one recipient's delivery state, by its index in Envelope::recipients. */
struct RecipientUpdate {
  uint32_t index = 0;
  RecipientState state = RecipientState::kPending;
  uint32_t attempts = 0;
  int64_t next_attempt_ms = 0;
};

struct SpoolStats {
  uint64_t commits = 0;        // records made durable
  uint64_t batches = 0;        // fsynced WriteBatches
  uint64_t commit_errors = 0;  // records whose write failed
  uint64_t bytes = 0;          // estimated live data (envelopes, contents, outcomes)
};

/**
 * Thread-safe. Commit() never blocks its caller: records are group-committed by a writer
 * thread in one WriteBatch with sync=true, so each record waits for exactly one fsync and
 * throughput grows with concurrency. Recover() and ReadContent() block and must not be
 * called from a shard's event loop.
 */
class Spool {
 public:
  virtual ~Spool() = default;

  /**
   * Makes `record` durable. `done` gets OK only after the fsync returned; any error means
   * nothing may be reported as accepted (Unavailable: retry later).
   */
  virtual void Commit(std::unique_ptr<SpoolRecord> record, CommitCallback done) = 0;

  /**
   * Durably records recipient outcomes (group-committed with sync=true like Commit), so
   * a recipient recorded as delivered is never sent again after a crash.
   */
  virtual void RecordOutcomes(const std::string& id, std::vector<RecipientUpdate> updates,
                              WriteCallback done) = 0;

  /**
   * Deletes a message whose recipients are all final. Not synced on its own: after a crash
   * the message may come back and be delivered again (at-least-once), never lost.
   */
  virtual void Remove(const std::string& id, WriteCallback done) = 0;

  /**
   * Calls `fn` for every spooled envelope in id (arrival) order, with recorded recipient
   * outcomes applied. Blocking.
   */
  virtual absl::Status Recover(const std::function<void(Envelope)>& fn) = 0;

  /** Reads a message's content back. Blocking. NotFound if absent. */
  virtual absl::StatusOr<std::string> ReadContent(const std::string& id) = 0;

  /**
   * False while the spool cannot keep what it would accept (a write failed and has not
   * recovered, or free disk is below the configured floor). Cheap; any thread.
   */
  virtual bool Healthy() const = 0;
  virtual std::string HealthReason() const = 0;
  virtual SpoolStats Stats() const = 0;

  /** Completes every queued commit, stops the writer and closes the database. */
  virtual void Shutdown() = 0;
};

using SpoolPtr = std::unique_ptr<Spool>;

}  // namespace mta::queue

#endif  // QUEUE_SPOOL_H_
