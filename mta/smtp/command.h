// SMTP command-line parsing (RFC 5321 section 4.1, ESMTP parameters per RFC 1869/5321).
#ifndef MTA_SMTP_COMMAND_H_
#define MTA_SMTP_COMMAND_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mta::smtp {

enum class Verb {
  kUnknown,
  kEhlo,
  kHelo,
  kMail,
  kRcpt,
  kData,
  kBdat,
  kRset,
  kNoop,
  kQuit,
  kVrfy,
  kExpn,
  kHelp,
  kStartTls,
  kAuth,
};

struct Command {
  Verb verb = Verb::kUnknown;
  absl::string_view args;  // text after the verb and one separating space
};

/** Splits a command line (without CRLF) into verb and arguments. Case-insensitive verb. */
Command ParseCommand(absl::string_view line);

/** One ESMTP parameter "KEYWORD[=value]"; keyword upper-cased. */
struct EsmtpParam {
  std::string keyword;
  std::string value;
  bool has_value = false;
};

/**
 * Parses space-separated ESMTP parameters after a path.
 * @return InvalidArgument on malformed keywords or values.
 */
absl::StatusOr<std::vector<EsmtpParam>> ParseEsmtpParams(absl::string_view text);

/** Decodes RFC 3461 xtext ("+XX" hex escapes). */
absl::StatusOr<std::string> DecodeXtext(absl::string_view xtext);
/** Encodes RFC 3461 xtext: '+', '=' and bytes outside 33..126 become "+XX". */
std::string EncodeXtext(absl::string_view s);

/** The NOTIFY= value for queue::NotifyFlags bits, e.g. "SUCCESS,FAILURE". */
std::string NotifyValue(uint8_t notify);
/**
 * The ORCPT= value for a decoded "addr-type;address" ("rfc822;u@x" -> "rfc822;u+40x"
 * style xtext), or "" when it has no usable addr-type (ORCPT is then left out).
 */
std::string OrcptValue(absl::string_view orcpt);

/** Parses "BDAT <size> [LAST]". */
struct BdatArgs {
  uint64_t size = 0;
  bool last = false;
};
absl::StatusOr<BdatArgs> ParseBdatArgs(absl::string_view args);

}  // namespace mta::smtp

#endif  // MTA_SMTP_COMMAND_H_
