// Minimal leveled logging to stderr (abseil 20220623 in Debian predates absl/log).
#ifndef MTA_BASE_LOG_H_
#define MTA_BASE_LOG_H_

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace mta {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

/** Sets the minimum level that is written. Default: kInfo. Thread-safe. */
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);
/** Writes one line with a UTC timestamp and level. Thread-safe (one write(2) per line). */
void LogLine(LogLevel level, absl::string_view message);

template <typename... Args>
void Logf(LogLevel level, const absl::FormatSpec<Args...>& format, const Args&... args) {
  if (LogEnabled(level)) LogLine(level, absl::StrFormat(format, args...));
}

}  // namespace mta

#define MTA_LOG_INFO(...) ::mta::Logf(::mta::LogLevel::kInfo, __VA_ARGS__)
#define MTA_LOG_WARNING(...) ::mta::Logf(::mta::LogLevel::kWarning, __VA_ARGS__)
#define MTA_LOG_ERROR(...) ::mta::Logf(::mta::LogLevel::kError, __VA_ARGS__)
#define MTA_LOG_DEBUG(...) ::mta::Logf(::mta::LogLevel::kDebug, __VA_ARGS__)

#endif  // MTA_BASE_LOG_H_
