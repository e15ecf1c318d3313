// The webhook shipper (its HTTP client is metrics/http_client).
#include "metrics/webhook.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <random>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "metrics/http_client.h"
#include "mta/base/log.h"
#include "mta/base/status_macros.h"

namespace mta::metrics {
namespace {

constexpr char kCursorFileName[] = "webhook.cursor";
constexpr char kCursorTmpName[] = "webhook.cursor.tmp";
// Only the status line matters; a longer answer is cut off there.
constexpr size_t kMaxResponseBytes = 64 << 10;
constexpr size_t kReadChunkBytes = 256 << 10;

bool ParseCursor(absl::string_view text, std::string* file, uint64_t* offset) {
  if (!absl::ConsumeSuffix(&text, "\n")) return false;
  const size_t space = text.find(' ');
  if (space == absl::string_view::npos) return false;
  const absl::string_view name = text.substr(0, space);
  if (!IsEventLogFileName(name) || !absl::SimpleAtoi(text.substr(space + 1), offset)) {
    return false;
  }
  *file = std::string(name);
  return true;
}

}  // namespace

WebhookShipper::WebhookShipper(WebhookOptions options, EventLog* log)
    : options_(std::move(options)), log_(log), directory_(log->directory()) {}

absl::StatusOr<std::unique_ptr<WebhookShipper>> WebhookShipper::Start(WebhookOptions options,
                                                                      EventLog* log) {
  if (log == nullptr) return absl::InvalidArgumentError("webhook: no event log");
  MTA_ASSIGN_OR_RETURN(Url url, ParseUrl(options.url));
  if (options.max_batch_events == 0 || options.max_batch_bytes == 0 ||
      options.batch_interval <= absl::ZeroDuration() || options.timeout <= absl::ZeroDuration() ||
      options.min_backoff <= absl::ZeroDuration() || options.max_backoff < options.min_backoff) {
    return absl::InvalidArgumentError(
        "webhook: batch limits, intervals and timeouts must be positive and "
        "min_backoff <= max_backoff");
  }
  std::string head = absl::StrCat("POST ", url.path, " HTTP/1.1\r\nHost: ", url.host_header,
                                  "\r\nUser-Agent: mtad-webhook\r\n"
                                  "Content-Type: application/json\r\nConnection: close\r\n");
  for (const auto& [name, value] : options.headers) {
    if (!IsToken(name) || absl::EqualsIgnoreCase(name, "content-length") ||
        absl::EqualsIgnoreCase(name, "host") || absl::EqualsIgnoreCase(name, "connection") ||
        absl::EqualsIgnoreCase(name, "transfer-encoding")) {
      return absl::InvalidArgumentError(
          absl::StrCat("webhook: header name '", name, "' is invalid or set by the shipper"));
    }
    if (value.find_first_of(std::string("\r\n\0", 3)) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("webhook: the value of header '", name, "' contains CR, LF or NUL"));
    }
    absl::StrAppend(&head, name, ": ", value, "\r\n");
  }
  absl::StrAppend(&head, "Content-Length: ");

  std::unique_ptr<WebhookShipper> shipper(new WebhookShipper(std::move(options), log));
  shipper->url_ = std::move(url);
  shipper->request_head_ = std::move(head);
  const WebhookOptions& opts = shipper->options_;
  if (shipper->url_.https) {
    ERR_clear_error();
    SSL_CTX* ctx = SSL_CTX_new(TLS_method());
    if (ctx == nullptr) return absl::InternalError(absl::StrCat("SSL_CTX_new: ", SslErrorText()));
    shipper->ssl_ctx_ = ctx;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    const bool loaded = opts.ca_file.empty() ? SSL_CTX_set_default_verify_paths(ctx) == 1
                                             : SSL_CTX_load_verify_locations(
                                                   ctx, opts.ca_file.c_str(), nullptr) == 1;
    if (!loaded) {
      return absl::InvalidArgumentError(
          absl::StrCat("webhook: loading CA certificates from ",
                       opts.ca_file.empty() ? "the system's default paths" : opts.ca_file, ": ",
                       SslErrorText()));
    }
  }
  shipper->stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (shipper->stop_fd_ < 0) return absl::ErrnoToStatus(errno, "webhook: eventfd");

  const std::string cursor_path = absl::StrCat(shipper->directory_, "/", kCursorFileName);
  int fd = ::open(cursor_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char buf[256];
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    ::close(fd);
    Position pos;
    if (n > 0 &&
        ParseCursor(absl::string_view(buf, static_cast<size_t>(n)), &pos.file, &pos.offset)) {
      shipper->cursor_ = std::move(pos);
    } else {
      MTA_LOG_ERROR("webhook: %s is unreadable; shipping the whole log again (at least once)",
                    cursor_path);
    }
  } else if (errno != ENOENT) {
    return absl::ErrnoToStatus(errno, absl::StrCat("webhook: open ", cursor_path));
  }
  log->SetWebhookCursor(shipper->cursor_.file, shipper->cursor_.offset);
  shipper->RefreshBacklog();
  shipper->thread_ = std::thread([raw = shipper.get()] { raw->Run(); });
  return shipper;
}

WebhookShipper::~WebhookShipper() {
  if (stop_fd_ >= 0) {
    const uint64_t one = 1;
    ssize_t ignored = ::write(stop_fd_, &one, sizeof(one));
    (void)ignored;  // an eventfd write of 1 cannot fail short of overflow
  }
  if (thread_.joinable()) thread_.join();
  if (stop_fd_ >= 0) ::close(stop_fd_);
  if (ssl_ctx_ != nullptr) SSL_CTX_free(ssl_ctx_);
}

bool WebhookShipper::Sleep(absl::Duration duration) {
  const absl::Time until = absl::Now() + duration;
  for (;;) {
    const absl::Duration left = until - absl::Now();
    pollfd fd = {stop_fd_, POLLIN, 0};
    const int ms =
        left <= absl::ZeroDuration()
            ? 0
            : static_cast<int>(std::min<int64_t>(
                  absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))), INT_MAX));
    const int r = ::poll(&fd, 1, ms);
    if (r > 0) return false;
    if (r == 0 || errno != EINTR) return true;
  }
}

void WebhookShipper::Run() {
  pthread_setname_np(pthread_self(), "webhook");
  // A peer that resets the connection must not raise SIGPIPE in a process that does not
  // ignore it (BoringSSL writes with write(2), without MSG_NOSIGNAL). Blocked here, the
  // signal stays pending on this thread and is discarded when the thread ends.
  sigset_t pipe_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, nullptr);

  std::mt19937_64 rng(std::random_device{}());
  absl::Duration backoff = absl::ZeroDuration();
  // Logged once per change between working and failing, not per retry.
  bool failing = false;
  absl::Time failing_since;
  uint64_t failures = 0;
  bool read_failing = false;
  // A failed batch is retried as it is: the same events, read (and warned about) once.
  std::optional<Batch> batch;
  for (;;) {
    if (!batch.has_value()) {
      absl::StatusOr<Batch> read = ReadBatch();
      if (!read.ok()) {
        if (!read_failing) {
          MTA_LOG_ERROR("webhook: reading the event log failed: %s", read.status().ToString());
          read_failing = true;
        }
        if (!Sleep(options_.batch_interval)) return;
        continue;
      }
      read_failing = false;
      if (read->events == 0) {
        if (read->end.file != cursor_.file || read->end.offset != cursor_.offset) {
          // Only skipped lines, or the step to the next file: record it, so that the
          // EventLog may delete the file passed.
          Advance(read->end);
          continue;
        }
        if (!Sleep(options_.batch_interval)) return;
        continue;
      }
      batch = std::move(read).value();
    }
    absl::Status s = Post(batch->body);
    if (s.ok()) {
      Advance(batch->end);
      shipped_events_.fetch_add(batch->events, std::memory_order_relaxed);
      const bool full = batch->full;
      batch.reset();
      if (failing) {
        MTA_LOG_INFO(
            "webhook: %s accepts events again after %d failed POSTs over %s", options_.url,
            failures,
            absl::FormatDuration(absl::Trunc(absl::Now() - failing_since, absl::Milliseconds(1))));
        failing = false;
      }
      backoff = absl::ZeroDuration();
      if (!full && !Sleep(options_.batch_interval)) return;
      continue;
    }
    if (s.code() == absl::StatusCode::kCancelled) return;  // stopping
    failed_posts_.fetch_add(1, std::memory_order_relaxed);
    RefreshBacklog();
    if (!failing) {
      failing = true;
      failing_since = absl::Now();
      failures = 0;
      MTA_LOG_ERROR(
          "webhook: POST to %s failed: %s; retrying with backoff, events wait in %s (backlog "
          "%d bytes)",
          options_.url, s.ToString(), directory_, backlog_bytes());
    } else {
      MTA_LOG_DEBUG("webhook: POST to %s failed again: %s", options_.url, s.ToString());
    }
    ++failures;
    backoff = backoff == absl::ZeroDuration() ? options_.min_backoff
                                              : std::min(backoff * 2, options_.max_backoff);
    // Uniform in [backoff/2, backoff], so that many senders restarted together spread out.
    std::uniform_real_distribution<double> jitter(0.5, 1.0);
    if (!Sleep(backoff * jitter(rng))) return;
  }
}

void WebhookShipper::Advance(const Position& end) {
  // The endpoint has the events before `end`. If the cursor cannot be written they are sent
  // again after a restart: at least once.
  absl::Status s = WriteCursor(end);
  if (!s.ok()) MTA_LOG_ERROR("webhook: %s", s.ToString());
  cursor_ = end;
  log_->SetWebhookCursor(cursor_.file, cursor_.offset);
  RefreshBacklog();
}

void WebhookShipper::RefreshBacklog() {
  absl::StatusOr<std::vector<std::string>> files = ListEventLogFiles(directory_);
  if (!files.ok()) return;
  uint64_t backlog = 0;
  for (const std::string& name : *files) {
    if (name < cursor_.file) continue;
    struct stat st;
    const std::string path = absl::StrCat(directory_, "/", name);
    if (::stat(path.c_str(), &st) != 0) continue;
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    backlog += name != cursor_.file ? size : size - std::min(size, cursor_.offset);
  }
  backlog_bytes_.store(backlog, std::memory_order_relaxed);
}

absl::StatusOr<WebhookShipper::Batch> WebhookShipper::ReadBatch() {
  // List first, then read: a file with a newer one in this listing is complete, so reading
  // it to its end sees all of it.
  MTA_ASSIGN_OR_RETURN(std::vector<std::string> files, ListEventLogFiles(directory_));
  Position pos = cursor_;
  size_t i = std::lower_bound(files.begin(), files.end(), pos.file) - files.begin();
  if (i == files.size() && !files.empty()) {
    // Every file is older than the cursor's: the files it named were removed by hand (the
    // EventLog's files only get newer names). The log restarted; ship all of it.
    MTA_LOG_ERROR("webhook: cursor %s is ahead of every file in %s; shipping from %s", pos.file,
                  directory_, files.front());
    i = 0;
    pos = Position{files.front(), 0};
  } else if (i < files.size() && files[i] != pos.file) {
    // No cursor yet (start at the oldest file), or its file was deleted by the EventLog's
    // backlog cap, which logged the events lost; continue with the next newer file.
    if (!pos.file.empty()) {
      MTA_LOG_WARNING("webhook: %s/%s was deleted before it was shipped; continuing with %s",
                      directory_, pos.file, files[i]);
    }
    pos = Position{files[i], 0};
  }

  Batch batch;
  batch.body = "[";
  uint64_t skipped = 0;
  bool stop = false;  // the batch is full
  for (; i < files.size(); ++i) {
    const bool complete = i + 1 < files.size();
    const std::string path = absl::StrCat(directory_, "/", files[i]);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno != ENOENT) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
      if (complete) pos = Position{files[i + 1], 0};  // deleted meanwhile
      continue;
    }
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      const int error = errno;
      ::close(fd);
      return absl::ErrnoToStatus(error, absl::StrCat("fstat ", path));
    }
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (pos.offset > size) {
      // The file lost its unsynced tail in a machine crash after it was shipped.
      MTA_LOG_WARNING("webhook: cursor offset %d is beyond the end of %s (%d bytes)", pos.offset,
                      path, size);
      pos.offset = size;
    }
    // Read complete lines from pos.offset on while the batch has room; `carry` holds the
    // start of a line whose end is not read yet.
    std::string carry;
    uint64_t read_at = pos.offset;
    std::string chunk;
    while (!stop && read_at < size) {
      chunk.resize(std::min<uint64_t>(kReadChunkBytes, size - read_at));
      const ssize_t n = ::pread(fd, chunk.data(), chunk.size(), static_cast<off_t>(read_at));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const int error = errno;
        ::close(fd);
        return absl::ErrnoToStatus(error, absl::StrCat("read ", path));
      }
      if (n == 0) break;  // truncated meanwhile
      read_at += static_cast<uint64_t>(n);
      absl::string_view data(chunk.data(), static_cast<size_t>(n));
      for (;;) {
        const size_t nl = data.find('\n');
        if (nl == absl::string_view::npos) {
          carry.append(data.data(), data.size());
          break;
        }
        absl::string_view line = data.substr(0, nl);
        if (!carry.empty()) {
          carry.append(line.data(), line.size());
          line = carry;
        }
        const absl::string_view trimmed = absl::StripAsciiWhitespace(line);
        // What a crash or a foreign writer can leave behind (NULs from a lost tail, a cut
        // line) would make every batch it is in fail forever; it is skipped instead.
        const bool event = trimmed.size() >= 2 && trimmed.front() == '{' && trimmed.back() == '}' &&
                           trimmed.find('\0') == absl::string_view::npos;
        if (event) {
          if (batch.events > 0 &&
              (batch.events >= options_.max_batch_events ||
               batch.body.size() + trimmed.size() + 2 > options_.max_batch_bytes)) {
            stop = true;
            break;
          }
          if (batch.events > 0) batch.body.push_back(',');
          batch.body.append(trimmed.data(), trimmed.size());
          ++batch.events;
        } else if (!trimmed.empty()) {
          ++skipped;
        }
        pos.offset += line.size() + 1;
        carry.clear();
        data.remove_prefix(nl + 1);
      }
    }
    ::close(fd);
    if (stop) {
      batch.full = true;
      break;
    }
    if (!complete) break;  // the live file: the rest is not written yet
    if (pos.offset < size) {
      MTA_LOG_WARNING("webhook: skipping a partial last line of %d bytes in %s", size - pos.offset,
                      path);
    }
    pos = Position{files[i + 1], 0};
  }
  if (skipped > 0) {
    MTA_LOG_WARNING("webhook: skipped %d lines in %s that are not JSON objects", skipped,
                    directory_);
  }
  batch.body.push_back(']');
  batch.end = std::move(pos);
  return batch;
}

absl::Status WebhookShipper::WriteCursor(const Position& position) {
  const std::string tmp = absl::StrCat(directory_, "/", kCursorTmpName);
  const std::string path = absl::StrCat(directory_, "/", kCursorFileName);
  const std::string text = absl::StrCat(position.file, " ", position.offset, "\n");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("writing the cursor: open ", tmp));
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                  ::fsync(fd) == 0;
  const int error = errno;
  ::close(fd);
  if (!ok) return absl::ErrnoToStatus(error, absl::StrCat("writing the cursor ", tmp));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("writing the cursor: rename to ", path));
  }
  const int dir_fd = ::open(directory_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  return absl::OkStatus();
}

absl::Status WebhookShipper::Post(const std::string& body) {
  HttpConnection conn(stop_fd_, absl::Now() + options_.timeout);
  MTA_RETURN_IF_ERROR(conn.Connect(url_.host, url_.port));
  if (url_.https) MTA_RETURN_IF_ERROR(conn.StartTls(ssl_ctx_, url_.host));
  MTA_RETURN_IF_ERROR(conn.WriteAll(absl::StrCat(request_head_, body.size(), "\r\n\r\n", body)));
  std::string data;
  char buf[16 << 10];
  HttpResponseHead response;
  for (;;) {
    absl::StatusOr<size_t> n = conn.Read(buf, sizeof(buf));
    if (!n.ok()) {
      // Once the status line is in, the verdict is known; a stall or reset after it does not
      // change it (a keep-alive server may ignore `Connection: close`).
      if (response.status != 0 && n.status().code() != absl::StatusCode::kCancelled) break;
      return n.status();
    }
    if (*n == 0) break;
    data.append(buf, std::min(*n, kMaxResponseBytes - data.size()));
    response = ParseHttpResponseHead(data);
    if (response.malformed || response.complete || data.size() >= kMaxResponseBytes) break;
  }
  if (response.status == 0) {
    if (data.empty()) return absl::UnavailableError("the connection closed without an answer");
    return absl::UnavailableError(
        absl::StrCat("not an HTTP answer: '", absl::CHexEscape(response.status_line), "'"));
  }
  if (response.status >= 200 && response.status < 300) return absl::OkStatus();
  // Every failure is retried (see the class comment); the code only says what kind it is.
  const bool transient = response.status >= 500 || response.status == 408 || response.status == 429;
  return absl::Status(
      transient ? absl::StatusCode::kUnavailable : absl::StatusCode::kFailedPrecondition,
      absl::StrCat("answered '", absl::CHexEscape(response.status_line), "'"));
}

}  // namespace mta::metrics
