#include "metrics/event_log.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "mta/base/log.h"
#include "mta/base/status_macros.h"

namespace mta::metrics {
namespace {

constexpr char kLinkTmpName[] = "events.jsonl.tmp";
constexpr absl::string_view kPrefix = "events-";
constexpr absl::string_view kSuffix = ".jsonl";
constexpr char kTimeFormat[] = "%Y%m%dT%H%M%S";
// After a failed rotation (disk full, out of descriptors) keep writing to the live file and
// try again only after this long, so that a persistent failure costs neither a syscall nor a
// log line per line written.
constexpr absl::Duration kRotationRetryDelay = absl::Seconds(10);

bool AllDigits(absl::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return absl::ascii_isdigit(c); });
}

// "events-20240131T235959-000000.jsonl": the timestamp starts at 7, the sequence at 23.
absl::string_view NameTimestamp(absl::string_view name) { return name.substr(7, 15); }
absl::string_view NameSequence(absl::string_view name) { return name.substr(23, 6); }

// Counts the lines ('\n') in `name` from `offset` on. For the error that reports events lost
// to the backlog cap only; a read error makes the count a lower bound.
uint64_t CountLines(int dir_fd, const std::string& name, uint64_t offset) {
  int fd = ::openat(dir_fd, name.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  uint64_t lines = 0;
  std::string buf(1 << 16, '\0');
  for (;;) {
    ssize_t n = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    lines += std::count(buf.data(), buf.data() + n, '\n');
    offset += static_cast<uint64_t>(n);
  }
  ::close(fd);
  return lines;
}

}  // namespace

bool IsEventLogFileName(absl::string_view name) {
  // events- yyyymmdd T HHMMSS - nnnnnn .jsonl
  if (name.size() != kPrefix.size() + 15 + 1 + 6 + kSuffix.size()) return false;
  if (name.substr(0, kPrefix.size()) != kPrefix) return false;
  if (name.substr(name.size() - kSuffix.size()) != kSuffix) return false;
  absl::string_view ts = NameTimestamp(name);
  return AllDigits(ts.substr(0, 8)) && ts[8] == 'T' && AllDigits(ts.substr(9)) && name[22] == '-' &&
         AllDigits(NameSequence(name));
}

absl::StatusOr<std::vector<std::string>> ListEventLogFiles(const std::string& directory) {
  DIR* dir = ::opendir(directory.c_str());
  if (dir == nullptr) return absl::ErrnoToStatus(errno, absl::StrCat("opendir ", directory));
  std::vector<std::string> names;
  errno = 0;
  while (dirent* entry = ::readdir(dir)) {
    if (IsEventLogFileName(entry->d_name)) names.emplace_back(entry->d_name);
  }
  const int read_errno = errno;
  ::closedir(dir);
  if (read_errno != 0) {
    return absl::ErrnoToStatus(read_errno, absl::StrCat("readdir ", directory));
  }
  std::sort(names.begin(), names.end());
  return names;
}

EventLog::EventLog(EventLogOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<EventLog>> EventLog::Open(EventLogOptions options) {
  if (options.directory.empty()) {
    return absl::InvalidArgumentError("event log: directory is empty");
  }
  if (options.max_file_bytes == 0 || options.max_pending_bytes == 0 ||
      options.flush_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "event log: max_file_bytes, max_pending_bytes and flush_interval must be positive");
  }
  std::unique_ptr<EventLog> log(new EventLog(std::move(options)));
  MTA_RETURN_IF_ERROR(log->Init());
  log->writer_ = std::thread([raw = log.get()] { raw->Run(); });
  return log;
}

absl::Status EventLog::Init() {
  const std::string& dir = options_.directory;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::ErrnoToStatus(ec.value(), absl::StrCat("event log: creating directory ", dir));
  }
  dir_fd_ = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd_ < 0) return absl::ErrnoToStatus(errno, absl::StrCat("event log: open ", dir));
  // Two writers would interleave rotations and delete each other's files.
  if (::flock(dir_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("event log: directory ", dir, " is in use by another process"));
    }
    return absl::ErrnoToStatus(errno, absl::StrCat("event log: flock ", dir));
  }
  if (::unlinkat(dir_fd_, kLinkTmpName, 0) != 0 && errno != ENOENT) {
    return absl::ErrnoToStatus(errno, absl::StrCat("event log: unlink ", dir, "/", kLinkTmpName));
  }
  MTA_ASSIGN_OR_RETURN(std::vector<std::string> files, ListEventLogFiles(dir));
  if (!files.empty()) newest_name_ = files.back();

  // The previous run's live file becomes a complete file: continuing it could glue new lines
  // onto a partial last line, and a reader could not tell it from a file that was cut short.
  struct stat live;
  if (::fstatat(dir_fd_, kEventLogLiveFileName, &live, AT_SYMLINK_NOFOLLOW) == 0) {
    std::string twin;
    for (const std::string& name : files) {
      struct stat st;
      if (::fstatat(dir_fd_, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
          st.st_ino == live.st_ino && st.st_dev == live.st_dev) {
        twin = name;
        break;
      }
    }
    if (live.st_size == 0) {
      if (!twin.empty()) ::unlinkat(dir_fd_, twin.c_str(), 0);
      ::unlinkat(dir_fd_, kEventLogLiveFileName, 0);
    } else if (twin.empty()) {
      // Not created by this class (or by an older version): give it a stable name.
      std::string name = NextFileName();
      if (::renameat(dir_fd_, kEventLogLiveFileName, dir_fd_, name.c_str()) != 0) {
        return absl::ErrnoToStatus(errno, absl::StrCat("event log: rename ", dir, "/",
                                                       kEventLogLiveFileName, " to ", name));
      }
    }
    // With a twin, Rotate() re-points events.jsonl; the twin stays as a complete file.
  } else if (errno != ENOENT) {
    return absl::ErrnoToStatus(errno,
                               absl::StrCat("event log: stat ", dir, "/", kEventLogLiveFileName));
  }
  MTA_RETURN_IF_ERROR(Rotate());
  ApplyRetention();
  return absl::OkStatus();
}

EventLog::~EventLog() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (writer_.joinable()) writer_.join();
  if (live_fd_ >= 0) ::close(live_fd_);
  if (dir_fd_ >= 0) ::close(dir_fd_);  // releases the flock
}

void EventLog::Append(std::string line) {
  if (line.empty()) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  // Outside the lock: the scan, and the push_back that may reallocate.
  for (size_t pos = line.find('\n'); pos != std::string::npos; pos = line.find('\n', pos + 1)) {
    line[pos] = ' ';
  }
  line.push_back('\n');
  const uint64_t size = line.size();
  {
    absl::MutexLock lock(&mu_);
    if (pending_bytes_ + size <= options_.max_pending_bytes) {
      pending_bytes_ += size;
      pending_.push_back(std::move(line));
      ++enqueued_seq_;
      appended_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
  dropped_.fetch_add(1, std::memory_order_relaxed);
}

void EventLog::Flush() {
  absl::MutexLock lock(&mu_);
  const uint64_t target = enqueued_seq_;
  flush_target_ = std::max(flush_target_, target);
  auto done = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_seq_ >= target; };
  mu_.Await(absl::Condition(&done));
}

void EventLog::Reopen() {
  absl::MutexLock lock(&mu_);
  pending_.emplace_back();  // the marker: real entries always end in '\n'
  ++enqueued_seq_;
  flush_target_ = std::max(flush_target_, enqueued_seq_);
}

void EventLog::SetWebhookCursor(std::string file, uint64_t offset) {
  absl::MutexLock lock(&mu_);
  // Only passing a file boundary can make a file deletable; the writer looks then.
  if (!cursor_known_ || file != cursor_file_) retention_requested_ = true;
  cursor_known_ = true;
  cursor_file_ = std::move(file);
  cursor_offset_ = offset;
}

void EventLog::Run() {
  pthread_setname_np(pthread_self(), "event-log");
  const uint64_t wake_bytes = std::max<uint64_t>(1, options_.max_pending_bytes / 2);
  std::vector<std::string> batch;
  for (;;) {
    bool stop = false;
    bool retention = false;
    uint64_t batch_end_seq = 0;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this, wake_bytes]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ ||
               (!paused_for_test_ && (flush_target_ > done_seq_ || pending_bytes_ >= wake_bytes ||
                                      retention_requested_));
      };
      mu_.AwaitWithTimeout(absl::Condition(&ready), options_.flush_interval);
      auto unpaused = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !paused_for_test_;
      };
      mu_.Await(absl::Condition(&unpaused));
      // `batch` is empty but keeps its capacity, so Append rarely reallocates under the lock.
      batch.swap(pending_);
      pending_bytes_ = 0;
      batch_end_seq = enqueued_seq_;
      stop = stopping_;
      retention = std::exchange(retention_requested_, false);
    }
    if (!batch.empty()) WriteEntries(batch);
    batch.clear();
    if (retention) ApplyRetention();
    {
      absl::MutexLock lock(&mu_);
      done_seq_ = batch_end_seq;
    }
    if (stop) return;
  }
}

void EventLog::WriteEntries(std::vector<std::string>& entries) {
  size_t begin = 0;
  uint64_t chunk_bytes = 0;
  auto rotate = [this] {
    SyncLive();
    absl::Status s = Rotate();
    if (s.ok()) {
      ApplyRetention();
    } else {
      next_rotation_attempt_ = absl::Now() + kRotationRetryDelay;
      MTA_LOG_ERROR("event log: rotation failed, writing on to %s: %s", live_name_, s.ToString());
    }
  };
  for (size_t i = 0; i < entries.size(); ++i) {
    const uint64_t size = entries[i].size();
    if (size == 0) {  // Reopen marker
      WriteChunk(entries, begin, i);
      begin = i + 1;
      chunk_bytes = 0;
      if (live_bytes_ > 0) rotate();
      continue;
    }
    const uint64_t before = live_bytes_ + chunk_bytes;
    if (before > 0 && before + size > options_.max_file_bytes &&
        absl::Now() >= next_rotation_attempt_) {
      WriteChunk(entries, begin, i);
      begin = i;
      chunk_bytes = 0;
      rotate();
    }
    chunk_bytes += size;
  }
  WriteChunk(entries, begin, entries.size());
  SyncLive();
}

void EventLog::WriteChunk(std::vector<std::string>& entries, size_t begin, size_t end) {
  if (begin == end) return;
  std::vector<iovec> iov;
  iov.reserve(std::min<size_t>(end - begin, IOV_MAX));
  for (size_t group = begin; group < end; group += IOV_MAX) {
    const size_t group_end = std::min<size_t>(end, group + IOV_MAX);
    iov.clear();
    uint64_t group_bytes = 0;
    for (size_t i = group; i < group_end; ++i) {
      iov.push_back({entries[i].data(), entries[i].size()});
      group_bytes += entries[i].size();
    }
    uint64_t done = 0;
    size_t first = 0;
    int error = 0;
    while (done < group_bytes) {
      ssize_t n = ::writev(live_fd_, iov.data() + first, static_cast<int>(iov.size() - first));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        error = n < 0 ? errno : ENOSPC;
        break;
      }
      done += static_cast<uint64_t>(n);
      // Skip the iovecs written completely; trim the one written in part.
      size_t left = static_cast<size_t>(n);
      while (first < iov.size() && left >= iov[first].iov_len) left -= iov[first++].iov_len;
      if (left > 0) {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
        iov[first].iov_len -= left;
      }
    }
    // Each iovec is one line, so the first `first` lines are in the file whole.
    uint64_t whole_bytes = 0;
    for (size_t i = group; i < group + first; ++i) whole_bytes += entries[i].size();
    live_bytes_ += whole_bytes;
    written_bytes_.fetch_add(whole_bytes, std::memory_order_relaxed);
    if (error == 0) {
      if (write_failing_) {
        write_failing_ = false;
        MTA_LOG_INFO("event log: writing to %s/%s works again; %d lines were dropped",
                     options_.directory, live_name_, lines_dropped_while_failing_);
        lines_dropped_while_failing_ = 0;
      }
      continue;
    }
    // Cut a partly written line off again, so that the next write starts a line. Whole lines
    // stay: a WebhookShipper may have read (and shipped) them already.
    if (done > whole_bytes && ::ftruncate(live_fd_, static_cast<off_t>(live_bytes_)) != 0) {
      MTA_LOG_ERROR("event log: cannot truncate %s after a failed write (%s); rotating", live_name_,
                    strerror(errno));
      absl::Status s = Rotate();
      s.IgnoreError();  // if this fails too, the next write fails and is counted again
    }
    const uint64_t lost = (group_end - group) - first;
    dropped_.fetch_add(lost, std::memory_order_relaxed);
    lines_dropped_while_failing_ += lost;
    if (!write_failing_) {
      write_failing_ = true;
      MTA_LOG_ERROR("event log: writing to %s/%s failed (%s); dropping lines until it works",
                    options_.directory, live_name_, strerror(error));
    }
  }
}

void EventLog::SyncLive() {
  if (!options_.fsync || live_fd_ < 0 || live_bytes_ == synced_bytes_) return;
  if (::fdatasync(live_fd_) == 0) {
    synced_bytes_ = live_bytes_;
  } else if (!write_failing_) {
    MTA_LOG_ERROR("event log: fdatasync %s/%s: %s", options_.directory, live_name_,
                  strerror(errno));
  }
}

std::string EventLog::NextFileName() {
  std::string ts = absl::FormatTime(kTimeFormat, absl::Now(), absl::UTCTimeZone());
  int seq = 0;
  if (!newest_name_.empty()) {
    // Keep names increasing even when the clock steps back or many rotations share a second.
    const std::string newest_ts(NameTimestamp(newest_name_));
    if (ts <= newest_ts) {
      int newest_seq = 0;
      if (!absl::SimpleAtoi(NameSequence(newest_name_), &newest_seq)) newest_seq = 0;
      ts = newest_ts;
      seq = newest_seq + 1;
      if (seq > 999999) {
        absl::Time t;
        std::string err;
        if (absl::ParseTime(kTimeFormat, newest_ts, absl::UTCTimeZone(), &t, &err)) {
          ts = absl::FormatTime(kTimeFormat, t + absl::Seconds(1), absl::UTCTimeZone());
        }
        seq = 0;
      }
    }
  }
  newest_name_ = absl::StrFormat("events-%s-%06d.jsonl", ts, seq);
  return newest_name_;
}

absl::Status EventLog::Rotate() {
  const std::string name = NextFileName();
  const int fd =
      ::openat(dir_fd_, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("create ", options_.directory, "/", name));
  }
  // From here on the previous file is complete: readers move on once they see a newer name.
  // events.jsonl follows via link + rename, so it always names a whole file.
  ::unlinkat(dir_fd_, kLinkTmpName, 0);
  if (::linkat(dir_fd_, name.c_str(), dir_fd_, kLinkTmpName, 0) != 0 ||
      ::renameat(dir_fd_, kLinkTmpName, dir_fd_, kEventLogLiveFileName) != 0) {
    // Readers go by stable names, so only `tail -F events.jsonl` misses the new file.
    MTA_LOG_WARNING("event log: cannot point %s/%s at %s: %s", options_.directory,
                    kEventLogLiveFileName, name, strerror(errno));
  }
  if (options_.fsync) ::fsync(dir_fd_);
  if (live_fd_ >= 0) ::close(live_fd_);
  live_fd_ = fd;
  live_name_ = name;
  live_bytes_ = 0;
  synced_bytes_ = 0;
  return absl::OkStatus();
}

void EventLog::ApplyRetention() {
  absl::StatusOr<std::vector<std::string>> listed = ListEventLogFiles(options_.directory);
  if (!listed.ok()) {
    MTA_LOG_ERROR("event log: retention skipped: %s", listed.status().ToString());
    return;
  }
  bool retain = false;
  bool cursor_known = false;
  std::string cursor_file;
  uint64_t cursor_offset = 0;
  {
    absl::MutexLock lock(&mu_);
    retain = options_.retain_for_webhook || cursor_known_;
    cursor_known = cursor_known_;
    cursor_file = cursor_file_;
    cursor_offset = cursor_offset_;
  }
  auto unshipped = [&](const std::string& name) {
    return retain && (!cursor_known || name >= cursor_file);
  };
  auto remove = [this](const std::string& name) {
    if (::unlinkat(dir_fd_, name.c_str(), 0) != 0 && errno != ENOENT) {
      MTA_LOG_ERROR("event log: cannot delete %s/%s: %s", options_.directory, name,
                    strerror(errno));
      return false;
    }
    return true;
  };

  // 1. max_files: the oldest complete files go first, but only those already shipped. The
  // unshipped ones are the newest (a suffix in name order), so this deletes a prefix.
  std::vector<std::string> kept;
  size_t complete = 0;
  for (const std::string& name : *listed) complete += name != live_name_;
  size_t excess = complete > options_.max_files ? complete - options_.max_files : 0;
  for (const std::string& name : *listed) {
    if (name == live_name_) continue;
    if (excess > 0 && !unshipped(name) && remove(name)) {
      --excess;
      continue;
    }
    kept.push_back(name);
  }
  if (!retain) return;

  // 2. The webhook backlog cap: the unshipped bytes from the cursor to the live file's end.
  auto unshipped_bytes = [&](const std::string& name) -> uint64_t {
    struct stat st;
    if (::fstatat(dir_fd_, name.c_str(), &st, 0) != 0) return 0;
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (cursor_known && name == cursor_file) return size > cursor_offset ? size - cursor_offset : 0;
    return size;
  };
  uint64_t backlog = unshipped_bytes(live_name_);
  for (const std::string& name : kept) {
    if (unshipped(name)) backlog += unshipped_bytes(name);
  }
  if (backlog <= options_.webhook_backlog_max_bytes) return;
  uint64_t lost = 0;
  int files = 0;
  for (const std::string& name : kept) {
    if (backlog <= options_.webhook_backlog_max_bytes) break;
    if (!unshipped(name)) continue;
    const uint64_t bytes = unshipped_bytes(name);
    const uint64_t lines =
        CountLines(dir_fd_, name, cursor_known && name == cursor_file ? cursor_offset : 0);
    if (!remove(name)) continue;
    backlog -= std::min(backlog, bytes);
    lost += lines;
    ++files;
  }
  if (files > 0) {
    webhook_lost_events_.fetch_add(lost, std::memory_order_relaxed);
    MTA_LOG_ERROR(
        "event log: webhook backlog in %s exceeds webhook_backlog_max_bytes (%d); deleted the "
        "%d oldest unshipped files: %d events lost to the webhook",
        options_.directory, options_.webhook_backlog_max_bytes, files, lost);
  }
}

}  // namespace mta::metrics
