// RFC 5321 / RFC 6531 envelope address (Path) parsing.
#ifndef MTA_SMTP_ADDRESS_H_
#define MTA_SMTP_ADDRESS_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mta::smtp {

/** A parsed envelope mailbox. `local_part` keeps its quotes if it was quoted. */
struct Mailbox {
  std::string local_part;
  std::string domain;           // lower-cased unless it is an address literal
  bool quoted = false;          // local part was a Quoted-string
  bool domain_literal = false;  // [1.2.3.4] or [IPv6:...]
  bool non_ascii = false;       // needs SMTPUTF8
  bool had_source_route = false;

  bool IsNull() const { return local_part.empty() && domain.empty(); }
  /** "local@domain", or "" for the null path. */
  std::string ToString() const;
  /**
   * True if the local part carries a relay operator ('%', '!', '@' inside quotes)
   * that some MTAs would route onward; such addresses are refused from clients
   * that may not relay.
   */
  bool HasRelayOperators() const;
};

struct PathParseResult {
  Mailbox mailbox;
  size_t consumed = 0;  // bytes of input used, including the closing '>'
};

struct PathOptions {
  bool allow_null = false;        // MAIL FROM:<>
  bool allow_utf8 = false;        // SMTPUTF8 was requested
  bool allow_postmaster = false;  // RCPT TO:<Postmaster> without domain
};

/**
 * Parses "<[A-d-l:]Mailbox>" at the start of `input`.
 * @return the mailbox, or InvalidArgument with a reason suitable for a 501 reply.
 */
absl::StatusOr<PathParseResult> ParsePath(absl::string_view input, const PathOptions& options);

/** RFC 5321 Domain (or U-label domain when allow_utf8) syntax check. */
bool IsValidDomain(absl::string_view domain, bool allow_utf8);

/** True if `s` is well-formed UTF-8 (no overlongs, no surrogates). */
bool IsValidUtf8(absl::string_view s);

}  // namespace mta::smtp

#endif  // MTA_SMTP_ADDRESS_H_
