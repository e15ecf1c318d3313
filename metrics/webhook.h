// Ships an EventLog's files to an HTTP(S) endpoint in batches, with a durable cursor.
#ifndef METRICS_WEBHOOK_H_
#define METRICS_WEBHOOK_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "metrics/event_log.h"
#include "metrics/http_client.h"

struct ssl_ctx_st;  // BoringSSL's SSL_CTX; kept out of this header

namespace mta::metrics {

struct WebhookOptions {
  // http://host[:port]/path or https://host[:port]/path; host may be a name, an IPv4
  // literal or [IPv6]. Redirects are not followed. Required.
  std::string url;
  // Extra request headers, e.g. {"Authorization", "Bearer x"}. Default: none.
  std::vector<std::pair<std::string, std::string>> headers;
  // A batch holds at most this many events ... Default: 500.
  size_t max_batch_events = 500;
  // ... and at most this many body bytes, unless a single event is larger. Default: 1 MiB.
  size_t max_batch_bytes = 1 << 20;
  // How often the log is polled for new events when the last batch was not full.
  // Default: 1 s.
  absl::Duration batch_interval = absl::Seconds(1);
  // For one POST: connect, TLS handshake, request and response together. Name resolution
  // (getaddrinfo) is not covered. Default: 10 s.
  absl::Duration timeout = absl::Seconds(10);
  // After a failed POST the same batch is retried after a delay that doubles per failure
  // from min_backoff up to max_backoff, each drawn uniformly from [delay/2, delay].
  // Default: 1 s and 5 min.
  absl::Duration min_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Minutes(5);
  // PEM file of CA certificates for https; empty: the system's (SSL_CTX_set_default_verify_paths).
  // Default: empty.
  std::string ca_file;
};

/**
 * Ships the events of an EventLog to `url`, oldest first, with at-least-once delivery.
 *
 * The shipper reads the log's files themselves (complete files oldest first, then the live
 * file, complete lines only; see event_log.h for the layout) and POSTs each batch as a JSON
 * array of the events (Content-Type: application/json). Its position is the cursor file
 * <directory>/webhook.cursor, "<stable file name> <byte offset>\n", replaced atomically (write
 * a temporary file, fsync, rename, fsync the directory) only after the endpoint answered 2xx.
 * So while the endpoint fails or is down the cursor stays behind and the events wait in the
 * files (the EventLog keeps unshipped files; open it with retain_for_webhook), and after a
 * restart of mtad or of the receiver shipping resumes from the cursor. A crash between a 2xx
 * and the cursor update sends that batch again. Every non-2xx answer is retried, so that no
 * event is lost while an operator fixes a wrong URL or token; the first failure and the
 * recovery are logged once each.
 *
 * How much may wait is capped by EventLogOptions::webhook_backlog_max_bytes (the EventLog
 * deletes files, so it enforces the cap; events deleted unshipped are logged and counted
 * there). The shipper then continues with the oldest file left.
 *
 * Runs on its own thread, with sockets driven by poll() for timeouts; nothing runs on a
 * shard. Thread-safe accessors. `log` must outlive the shipper. One shipper per log at a time.
 */
class WebhookShipper {
 public:
  /**
   * Validates the options, loads the cursor (none: everything in the log is unshipped; an
   * unreadable one is logged and treated the same way: at least once) and starts the thread.
   * @return InvalidArgument for a bad URL or header; the TLS setup's error for https.
   */
  static absl::StatusOr<std::unique_ptr<WebhookShipper>> Start(WebhookOptions options,
                                                               EventLog* log);
  /** Stops the thread, interrupting a POST in flight (its batch is sent again later). */
  ~WebhookShipper();
  WebhookShipper(const WebhookShipper&) = delete;
  WebhookShipper& operator=(const WebhookShipper&) = delete;

  /** Events acknowledged by the endpoint since Start. */
  uint64_t shipped_events() const { return shipped_events_.load(std::memory_order_relaxed); }
  /** POSTs that failed (transport error, timeout or non-2xx) since Start. */
  uint64_t failed_posts() const { return failed_posts_.load(std::memory_order_relaxed); }
  /** Bytes from the cursor to the end of the log, as of the last poll. */
  uint64_t backlog_bytes() const { return backlog_bytes_.load(std::memory_order_relaxed); }

  using Url = HttpUrl;
  /** Parses http(s)://host[:port][/path]; exposed for tests. */
  static absl::StatusOr<Url> ParseUrl(absl::string_view url) { return ParseHttpUrl(url); }

 private:
  struct Position {
    std::string file;  // stable name; empty: before the oldest file
    uint64_t offset = 0;
  };
  struct Batch {
    std::string body;  // "[e1,e2,...]"
    size_t events = 0;
    bool full = false;  // stopped at a limit, more is ready
    Position end;       // the cursor once the batch is acknowledged
  };

  WebhookShipper(WebhookOptions options, EventLog* log);
  void Run();
  absl::StatusOr<Batch> ReadBatch();
  /** Makes `end` the cursor: on disk, in the EventLog and in backlog_bytes(). */
  void Advance(const Position& end);
  void RefreshBacklog();
  absl::Status WriteCursor(const Position& position);
  /** One POST of `body`; OK only for a 2xx answer. */
  absl::Status Post(const std::string& body);
  /** Sleeps up to `duration`; false if the shipper is stopping. */
  bool Sleep(absl::Duration duration);

  const WebhookOptions options_;
  EventLog* const log_;
  const std::string directory_;
  Url url_;
  std::string request_head_;  // the request up to Content-Length's value
  ssl_ctx_st* ssl_ctx_ = nullptr;
  int stop_fd_ = -1;  // eventfd; readable once the destructor runs
  Position cursor_;   // shipper thread only (and Start before it)
  std::atomic<uint64_t> shipped_events_{0};
  std::atomic<uint64_t> failed_posts_{0};
  std::atomic<uint64_t> backlog_bytes_{0};
  std::thread thread_;
};

}  // namespace mta::metrics

#endif  // METRICS_WEBHOOK_H_
