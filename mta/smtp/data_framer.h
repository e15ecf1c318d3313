// The message-content state machine for DATA (dot-terminated, dot-stuffed) and BDAT
// (length-delimited) with strict line checks.
#ifndef MTA_SMTP_DATA_FRAMER_H_
#define MTA_SMTP_DATA_FRAMER_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace mta::smtp {

/**
 * Consumes message text, appending it (dot-unstuffed for DATA) to an output buffer and
 * recording framing violations instead of stopping, so that the whole message is still
 * read up to its real end and rejected as one unit.
 *
 * Only CRLF "." CRLF ends DATA. A bare LF or bare CR never starts a new line, so the
 * smuggling sequences "\n.\n", "\n.\r\n" and "\r.\r\n" can never end a message early.
 */
class DataFramer {
 public:
  enum class Mode { kData, kBdat };
  enum Violation : uint32_t {
    kNone = 0,
    kBareLf = 1u << 0,
    kBareCr = 1u << 1,
    kLineTooLong = 1u << 2,
    kNul = 1u << 3,
    kTooBig = 1u << 4,
  };

  /** @param max_bytes content beyond this is counted but not stored. */
  DataFramer(Mode mode, uint64_t max_bytes, std::string* out);

  /**
   * Feeds bytes. In kData mode stops right after the terminating CRLF.CRLF.
   * @return the number of bytes consumed from `in`.
   */
  size_t Feed(absl::string_view in);
  /** BDAT: call after the LAST chunk; flags a trailing bare CR. */
  void Finish();

  bool done() const { return state_ == State::kDone; }
  uint32_t violations() const { return violations_; }
  /** Unstuffed content size, including bytes dropped after kTooBig. */
  uint64_t content_bytes() const { return content_bytes_; }

  /** Max octets in a text line including CRLF (RFC 5321 section 4.5.3.1.6). */
  static constexpr size_t kMaxLineOctets = 1000;

 private:
  enum class State { kLineStart, kDot, kDotCr, kInLine, kCr, kDone };
  void Emit(absl::string_view bytes);
  void CountLine(size_t n);

  Mode mode_;
  uint64_t max_bytes_;
  std::string* out_;
  State state_ = State::kLineStart;
  uint32_t violations_ = kNone;
  uint64_t content_bytes_ = 0;
  size_t line_len_ = 0;
};

}  // namespace mta::smtp

#endif  // MTA_SMTP_DATA_FRAMER_H_
