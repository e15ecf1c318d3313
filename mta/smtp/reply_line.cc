#include "mta/smtp/reply_line.h"

#include "absl/strings/ascii.h"

namespace mta::smtp {

// RFC 5321 section 4.2: Reply-line = *( Reply-code "-" [ textstring ] CRLF )
//                                      Reply-code [ SP textstring ] CRLF
// with the first digit 2-5 and the second 0-5 (section 4.2.1).
std::optional<ReplyLine> ParseReplyLine(absl::string_view line) {
  if (line.size() < 3) return std::nullopt;
  if (line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '5' || line[2] < '0' ||
      line[2] > '9') {
    return std::nullopt;
  }
  ReplyLine out;
  out.code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
  if (line.size() == 3) {
    out.last = true;  // "250" alone: a final line without text (tolerated per 4.2)
    return out;
  }
  if (line[3] == ' ') {
    out.last = true;
  } else if (line[3] != '-') {
    return std::nullopt;
  }
  out.text = line.substr(4);
  return out;
}

// Length of a leading RFC 3463 enhanced status code ("class.subject.detail", subject and
// detail 1-3 digits) whose class matches the reply code's first digit, or 0.
size_t EnhancedCodeLength(absl::string_view text, char reply_class) {
  if (reply_class != '2' && reply_class != '4' && reply_class != '5') return 0;
  if (text.size() < 5 || text[0] != reply_class || text[1] != '.') return 0;
  size_t i = 2;
  for (int part = 0; part < 2; ++part) {
    size_t start = i;
    while (i < text.size() && absl::ascii_isdigit(text[i]) && i - start < 4) ++i;
    size_t digits = i - start;
    if (digits < 1 || digits > 3) return 0;
    if (part == 0) {
      if (i >= text.size() || text[i] != '.') return 0;
      ++i;
    }
  }
  if (i < text.size() && text[i] != ' ') return 0;
  return i;
}

}  // namespace mta::smtp
