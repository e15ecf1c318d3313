// One line of an SMTP reply (RFC 5321 section 4.2) and its RFC 3463 enhanced status code.
#ifndef MTA_SMTP_REPLY_LINE_H_
#define MTA_SMTP_REPLY_LINE_H_

#include <cstddef>
#include <optional>

#include "absl/strings/string_view.h"

namespace mta::smtp {

struct ReplyLine {
  int code = 0;
  bool last = false;       // "NNN " or a bare "NNN" (not a "NNN-" continuation)
  absl::string_view text;  // after the separator; points into the parsed line
};

/**
 * Reply-line = Reply-code ("-" / SP) textstring, first digit 2-5, second 0-5.
 * @return nullopt for anything else.
 */
std::optional<ReplyLine> ParseReplyLine(absl::string_view line);

/**
 * Length of a leading enhanced status code ("class.subject.detail", 1-3 digit parts) whose
 * class matches `reply_class` (the reply code's first digit), or 0.
 */
size_t EnhancedCodeLength(absl::string_view text, char reply_class);

}  // namespace mta::smtp

#endif  // MTA_SMTP_REPLY_LINE_H_
