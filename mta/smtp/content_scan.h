// What an outbound message's content needs from the next hop (8-bit data) and whether it
// can be sent at all (strict CRLF line endings).
#ifndef MTA_SMTP_CONTENT_SCAN_H_
#define MTA_SMTP_CONTENT_SCAN_H_

#include "absl/strings/string_view.h"

namespace mta::smtp {

struct ContentScan {
  bool eight_bit = false;          // any byte >= 0x80
  bool eight_bit_headers = false;  // ... in the header section
  bool bare_line_break = false;    // a CR not followed by LF, or an LF not preceded by CR
};

/** One pass with memchr-speed loops: the content may be tens of megabytes. */
ContentScan ScanContent(absl::string_view content);

}  // namespace mta::smtp

#endif  // MTA_SMTP_CONTENT_SCAN_H_
