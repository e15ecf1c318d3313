// RFC 3464 delivery status notifications (bounces, delay and success notices).
#ifndef MTA_DELIVERY_DSN_H_
#define MTA_DELIVERY_DSN_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "queue/envelope.h"
#include "queue/spool.h"

namespace mta::delivery {

enum class DsnAction { kFailed, kDelayed, kDelivered, kRelayed };

/** What happened to one recipient, as reported in its per-recipient DSN fields. */
struct DsnRecipient {
  uint32_t index = 0;  // in the original envelope's recipients
  DsnAction action = DsnAction::kFailed;
  std::string status;      // enhanced status code, e.g. "5.1.1"
  std::string remote_mta;  // host that answered, or "" when none did
  std::string diagnostic;  // the remote reply, e.g. "550 5.1.1 No such user"
  absl::Time last_attempt = absl::InfinitePast();
  std::string bounce_class;  // e.g. "mailbox_full" (X-Bounce-Class); "" = none
};

/**
 * True if the recipient asked for (or by default gets) a notification for `action`
 * (RFC 3461 section 4.1: without NOTIFY only failures are reported; NEVER suppresses all).
 * A message from the null sender never gets a DSN.
 */
bool WantsDsn(const queue::Envelope& original, const queue::Recipient& recipient, DsnAction action);

struct DsnOptions {
  std::string reporting_mta;  // our hostname
  std::string dsn_id;         // queue id for the DSN itself
  absl::Time now;
};

/**
 * Builds the DSN as a spool record: envelope from <> to the original sender, content a
 * multipart/report (text/plain explanation, message/delivery-status, and the original as
 * message/rfc822 or, with RET=HDRS, text/rfc822-headers). SMTPUTF8 originals use the
 * RFC 6533 message/global-delivery-status and message/global types.
 * REQUIRES: !original.sender.empty() and !recipients.empty().
 */
std::unique_ptr<queue::SpoolRecord> BuildDsn(const DsnOptions& options,
                                             const queue::Envelope& original,
                                             absl::string_view original_content,
                                             const std::vector<DsnRecipient>& recipients);

}  // namespace mta::delivery

#endif  // MTA_DELIVERY_DSN_H_
