// The test message the SMTP benchmarks send: headers, then 76-column lines that each start
// with a dot, so dot-stuffing and unstuffing do real work.
#ifndef BENCHMARKS_SMTP_BENCH_MESSAGE_H_
#define BENCHMARKS_SMTP_BENCH_MESSAGE_H_

#include <cstddef>
#include <string>

namespace mta::smtp {

inline std::string MakeBenchMessage(size_t bytes) {
  std::string m =
      "From: sender@example.com\r\nTo: rcpt@example.net\r\nSubject: benchmark\r\n"
      "Message-ID: <bench@example.com>\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\n\r\n";
  while (m.size() < bytes) m += ".leading dot line and some more text to fill 76 columns....\r\n";
  return m;
}

}  // namespace mta::smtp

#endif  // BENCHMARKS_SMTP_BENCH_MESSAGE_H_
