#include "mta/smtp/content_scan.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "absl/strings/match.h"

namespace mta::smtp {
namespace {

bool Has8Bit(absl::string_view s) {
  const char* p = s.data();
  size_t n = s.size();
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t w;
    std::memcpy(&w, p, sizeof(w));
    if (w & 0x8080808080808080ull) return true;
  }
  for (; n > 0; ++p, --n) {
    if (static_cast<unsigned char>(*p) >= 0x80) return true;
  }
  return false;
}

}  // namespace

ContentScan ScanContent(absl::string_view c) {
  ContentScan scan;
  size_t header_end = 0;
  if (!absl::StartsWith(c, "\r\n")) {
    size_t blank = c.find("\r\n\r\n");
    header_end = blank == absl::string_view::npos ? c.size() : blank + 2;
  }
  scan.eight_bit_headers = Has8Bit(c.substr(0, header_end));
  scan.eight_bit = scan.eight_bit_headers || Has8Bit(c.substr(header_end));
  size_t lf_count = 0;
  for (const char* p = c.data();
       (p = static_cast<const char*>(std::memchr(p, '\n', c.data() + c.size() - p))) != nullptr;
       ++p) {
    if (p == c.data() || p[-1] != '\r') {
      scan.bare_line_break = true;
      return scan;
    }
    ++lf_count;
  }
  // Every LF has its CR; any further CR is bare.
  size_t cr_count = static_cast<size_t>(std::count(c.begin(), c.end(), '\r'));
  scan.bare_line_break = cr_count != lf_count;
  return scan;
}

}  // namespace mta::smtp
