// Helpers shared by the client session's files (client_session.cc and
// client_session_transaction.cc). Not for use elsewhere.
#ifndef MTA_SMTP_CLIENT_SESSION_INTERNAL_H_
#define MTA_SMTP_CLIENT_SESSION_INTERNAL_H_

#include <string>

#include "absl/strings/string_view.h"
#include "mta/smtp/client_session.h"

namespace mta::smtp::client_internal {

/** A reply the client makes up itself (ServerReply::local). */
ServerReply LocalReply(int code, absl::string_view enhanced, std::string text);

/**
 * Replaces control characters so that server text is safe in logs and bounce messages.
 * Bytes >= 0x80 are kept: SMTPUTF8 servers may send UTF-8 text.
 */
std::string Sanitize(absl::string_view s);

/** Validates an outbound address with the intake's own parser; sets *non_ascii. */
bool ValidAddress(absl::string_view address, bool recipient, bool* non_ascii);

}  // namespace mta::smtp::client_internal

#endif  // MTA_SMTP_CLIENT_SESSION_INTERNAL_H_
