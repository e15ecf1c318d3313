// An asynchronous, rotating JSON-lines event log: shard threads hand lines to a writer thread.
#ifndef METRICS_EVENT_LOG_H_
#define METRICS_EVENT_LOG_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace mta::metrics {

/**
 * On-disk layout of an event log directory:
 *
 *   events-20240131T235959-000000.jsonl   a file that was live once; never written again
 *   events-20240201T000312-000000.jsonl   the live file ...
 *   events.jsonl                          ... and a hard link to it (for `tail -F`)
 *   webhook.cursor                        the WebhookShipper's position, if one runs
 *
 * Every file gets its stable name `events-<UTC yyyymmddTHHMMSS>-<seq 6 digits>.jsonl` when it
 * is created (the time is its creation time), so lexical order is age order and a name always
 * means the same bytes. Rotation creates the next file and atomically re-points events.jsonl at
 * it; nothing is renamed, which is what lets a reader's cursor name a file safely. The live
 * file is always the newest (lexically greatest) stable name; every older file is complete.
 * Each line is one JSON object followed by '\n'. After a crash a complete file may end in a
 * partial line (no '\n'); readers skip such a tail.
 */
inline constexpr char kEventLogLiveFileName[] = "events.jsonl";

/** True for a stable file name, "events-yyyymmddTHHMMSS-nnnnnn.jsonl". */
bool IsEventLogFileName(absl::string_view name);

/**
 * The stable names of the log's files in `directory`, oldest first. While an EventLog has the
 * directory open the last one is its live file and all others are complete. NotFound if the
 * directory does not exist.
 */
absl::StatusOr<std::vector<std::string>> ListEventLogFiles(const std::string& directory);

struct EventLogOptions {
  // Directory of the log, created with its parents if missing. Required.
  std::string directory;
  // Rotate when the live file would exceed this many bytes. A single line longer than this
  // gets a file of its own. Default: 256 MiB.
  uint64_t max_file_bytes = 256ull << 20;
  // Complete (rotated) files kept besides the live file; older ones are deleted at rotation,
  // except those a webhook still has to ship (see retain_for_webhook). Default: 10.
  uint32_t max_files = 10;
  // Bytes of lines waiting in memory for the writer; Append drops (and counts) lines beyond
  // it. The writer also wakes early once half of this waits. Default: 64 MiB.
  uint64_t max_pending_bytes = 64ull << 20;
  // The writer writes pending lines at least this often. Lines are in memory only until then.
  // Default: 200 ms.
  absl::Duration flush_interval = absl::Milliseconds(200);
  // false: each batch is written with write(2) only. A crash of mtad loses only lines still
  // pending in memory (at most flush_interval's worth), a crash of the machine also what the
  // kernel had not written back (typically up to 30 s). true: fdatasync after each batch and
  // fsync of the directory after rotation, so a machine crash loses only the pending lines too;
  // costs one fdatasync per flush_interval. A WebhookShipper may ship lines before they are
  // synced; after a machine crash it then finds its cursor beyond a file's end and moves on.
  // Default: false.
  bool fsync = false;
  // Set when a WebhookShipper ships this log: files it has not passed yet (see
  // SetWebhookCursor) are kept beyond max_files. Until the first SetWebhookCursor call every
  // file counts as unshipped, so nothing can be deleted between Open() and the shipper's
  // start. Default: false.
  bool retain_for_webhook = false;
  // Cap on the unshipped bytes kept for the webhook (from its cursor to the end of the live
  // file). Beyond it the oldest unshipped complete files are deleted anyway, and an error is
  // logged with the number of events lost (also counted in webhook_lost_events()). The live
  // file is never deleted. Default: 1 GiB.
  uint64_t webhook_backlog_max_bytes = 1ull << 30;
};

/**
 * Thread-safe. Append() may be called from any thread, including shard threads: it never does
 * I/O or waits on I/O, only takes a short mutex to move the line into the pending batch. A
 * writer thread owned by the log swaps the whole batch out under that mutex and writes it
 * outside it (one writev per up to IOV_MAX lines). One EventLog per directory (an flock on the
 * directory enforces it across processes).
 */
class EventLog {
 public:
  /**
   * Creates the directory if needed, makes the previous run's live file a complete one (or
   * deletes it if empty), starts a new live file and the writer thread.
   * @return FailedPrecondition if another EventLog holds the directory; the errno's status if
   *   the directory or the live file cannot be created.
   */
  static absl::StatusOr<std::unique_ptr<EventLog>> Open(EventLogOptions options);
  /** Writes everything appended (and syncs it if `fsync`), then stops the writer thread. */
  ~EventLog();
  EventLog(const EventLog&) = delete;
  EventLog& operator=(const EventLog&) = delete;

  /**
   * Queues one line. Cheap and non-blocking (see the class comment); drops the line and counts
   * it in dropped() if max_pending_bytes would be exceeded or the line is empty.
   * @param line one JSON object without a trailing newline. A '\n' inside it (invalid in a JSON
   *   string, whitespace elsewhere) is replaced by a space so that it cannot break the framing.
   */
  void Append(std::string line);

  /**
   * Blocks until every line appended (and every Reopen requested) before the call has been
   * written, or dropped after a write error, and synced if `fsync`. For tests, shutdown and
   * admin requests; never call it on a shard thread.
   */
  void Flush();

  /**
   * Asks the writer to rotate now (the SIGHUP-style request), in order with the Append calls
   * around it. Does nothing if the live file is empty at that point. Non-blocking.
   */
  void Reopen();

  /**
   * Tells the log how far the webhook has shipped: `file` (a stable name) from `offset` on is
   * unshipped, and so is every newer file. An empty `file` means nothing is shipped yet.
   * Called by WebhookShipper after each durable cursor update. From the first call on, files
   * are kept for the webhook as with retain_for_webhook. Thread-safe, non-blocking.
   */
  void SetWebhookCursor(std::string file, uint64_t offset);

  const std::string& directory() const { return options_.directory; }
  /** Lines accepted by Append (they are or will be written unless a write fails). */
  uint64_t appended() const { return appended_.load(std::memory_order_relaxed); }
  /** Lines dropped: memory cap, empty line, or a failed write. */
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  /** Bytes written to files (newlines included) since Open. */
  uint64_t written_bytes() const { return written_bytes_.load(std::memory_order_relaxed); }
  /** Unshipped events deleted because of webhook_backlog_max_bytes since Open. */
  uint64_t webhook_lost_events() const {
    return webhook_lost_events_.load(std::memory_order_relaxed);
  }

 private:
  friend class EventLogPeer;  // tests: pause the writer

  explicit EventLog(EventLogOptions options);

  absl::Status Init();
  void Run();
  // Writer thread (or Init, before the thread starts) from here on.
  void WriteEntries(std::vector<std::string>& entries);
  void WriteChunk(std::vector<std::string>& entries, size_t begin, size_t end);
  void SyncLive();
  absl::Status Rotate();
  std::string NextFileName();
  void ApplyRetention();

  const EventLogOptions options_;
  int dir_fd_ = -1;
  int live_fd_ = -1;
  std::string live_name_;      // stable name of the live file
  uint64_t live_bytes_ = 0;    // size of the live file, complete lines only
  uint64_t synced_bytes_ = 0;  // of live_bytes_, synced (fsync mode)
  std::string newest_name_;    // newest stable name ever seen, for NextFileName
  bool write_failing_ = false;
  uint64_t lines_dropped_while_failing_ = 0;
  absl::Time next_rotation_attempt_ = absl::InfinitePast();

  mutable absl::Mutex mu_;
  // Lines each ending in '\n'; an empty entry is a Reopen marker.
  std::vector<std::string> pending_ ABSL_GUARDED_BY(mu_);
  uint64_t pending_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t enqueued_seq_ ABSL_GUARDED_BY(mu_) = 0;  // entries ever put into pending_
  uint64_t done_seq_ ABSL_GUARDED_BY(mu_) = 0;      // entries written (or dropped)
  uint64_t flush_target_ ABSL_GUARDED_BY(mu_) = 0;  // write without waiting up to this
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool paused_for_test_ ABSL_GUARDED_BY(mu_) = false;
  bool cursor_known_ ABSL_GUARDED_BY(mu_) = false;
  std::string cursor_file_ ABSL_GUARDED_BY(mu_);
  uint64_t cursor_offset_ ABSL_GUARDED_BY(mu_) = 0;
  bool retention_requested_ ABSL_GUARDED_BY(mu_) = false;

  std::atomic<uint64_t> appended_{0};
  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> written_bytes_{0};
  std::atomic<uint64_t> webhook_lost_events_{0};

  std::thread writer_;  // started by Open() once Init() succeeded
};

}  // namespace mta::metrics

#endif  // METRICS_EVENT_LOG_H_
