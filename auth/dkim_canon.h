// DKIM canonicalization (RFC 6376 section 3.4): header-field parsing, and the "simple" and
// "relaxed" algorithms for header fields and for the body.
//
// Hand-written: no Debian C/C++ DKIM signing library fits an io_uring shard design
// (libopendkim is milter-oriented, with its own DNS resolution and threading), and the
// canonicalization step is small enough to own outright.
#ifndef AUTH_DKIM_CANON_H_
#define AUTH_DKIM_CANON_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mta::auth {

enum class DkimCanonicalization { kSimple, kRelaxed };

/** "simple" or "relaxed", as in the c= tag. */
absl::string_view DkimCanonicalizationName(DkimCanonicalization c);

/** One header field of a message, pointing into the message text. */
struct DkimHeaderField {
  /** The field name as written, e.g. "Subject" (without any WSP before the colon). */
  absl::string_view name;
  /** The whole field as written: name, colon, value, every folded line, final CRLF. */
  absl::string_view raw;
};

/** A message split at the empty line that ends its header section. */
struct DkimMessageParts {
  /** Header fields in message order (top to bottom). */
  std::vector<DkimHeaderField> headers;
  /** Everything after the empty line; empty when the message has no body. */
  absl::string_view body;
};

/**
 * Splits an RFC 5322 message (CRLF line endings) into header fields and body. A header
 * field is a line "name:value" followed by any continuation lines (lines starting with
 * SP or HTAB). The header section ends at the first empty line; a message without one
 * is all header fields and has an empty body.
 *
 * InvalidArgument when the header section has a line that is neither a field nor a
 * continuation, a continuation before the first field, a field name outside printable
 * US-ASCII, a bare CR or LF, or a last line without CRLF. The body is not inspected:
 * its bytes (8-bit included) are canonicalized as they are.
 */
absl::StatusOr<DkimMessageParts> DkimSplitMessage(absl::string_view message);

/**
 * Appends the canonical form of one header field to *out (RFC 6376 3.4.1 and 3.4.2).
 * `raw_field` is a whole field as in DkimHeaderField::raw; its final CRLF may be
 * missing. The output always ends with CRLF.
 *
 * simple: the field unchanged.
 * relaxed: name lowercased; continuation lines unfolded; every run of SP/HTAB becomes one
 * SP; WSP at the end of the value, and before and after the colon, removed. E.g.
 * "B : Y\t\r\n\tZ  \r\n" becomes "b:Y Z\r\n".
 */
void DkimCanonicalizeHeader(DkimCanonicalization c, absl::string_view raw_field, std::string* out);

/**
 * Body canonicalization (RFC 6376 3.4.3 and 3.4.4), streaming: feed the body in chunks of
 * any size (CRLFs and WSP runs may straddle chunks) and hash what comes out.
 *
 * simple: the body unchanged except that all empty lines at its end are removed and it
 * ends with exactly one CRLF; an empty body becomes CRLF.
 * relaxed: WSP at the end of every line removed, every other WSP run becomes one SP, all
 * empty lines at the end removed (a line of only WSP is empty), and a non-empty result
 * ends with CRLF; an empty body (or one of only empty lines) stays empty.
 *
 * Only CRLF ends a line: a bare CR or LF is an ordinary byte, as are 8-bit bytes.
 */
class DkimBodyCanonicalizer {
 public:
  explicit DkimBodyCanonicalizer(DkimCanonicalization c) : mode_(c) {}

  /** Appends to *out the canonical bytes that `chunk` makes final. */
  void Update(absl::string_view chunk, std::string* out);
  /** Appends the rest. The canonicalizer must not be used afterwards. */
  void Finish(std::string* out);

  /** Canonical bytes appended to the outputs so far. */
  uint64_t canonical_length() const { return length_; }

 private:
  void FlushPendingLines(std::string* out);

  DkimCanonicalization mode_;
  bool pending_cr_ = false;   // the last byte seen was a CR that may start a CRLF
  bool pending_wsp_ = false;  // relaxed: WSP seen since the last emitted byte of this line
  uint64_t pending_crlfs_ = 0;
  bool any_content_ = false;  // relaxed: something other than line ends was emitted
  uint64_t length_ = 0;
};

/** The canonical form of a whole body (convenience wrapper of DkimBodyCanonicalizer). */
std::string DkimCanonicalizeBody(DkimCanonicalization c, absl::string_view body);

}  // namespace mta::auth

#endif  // AUTH_DKIM_CANON_H_
