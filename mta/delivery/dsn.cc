// Builds RFC 3464 DSNs. Hand-written: the Debian MIME libraries (gmime) parse and
// rewrite messages, but a DSN is a fixed template whose every field RFC 3464 dictates.
#include "mta/delivery/dsn.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "mta/base/rfc5322_date.h"

namespace mta::delivery {
namespace {

// Header and DSN field values must be one line of printable text.
std::string OneLine(absl::string_view s, size_t max_len = 900) {
  std::string out;
  for (unsigned char c : s) {
    if (out.size() >= max_len) break;
    if (c == '\r') continue;
    out.push_back(c == '\n' || c == '\t' ? ' ' : static_cast<char>(c));
  }
  return out;
}

absl::string_view ActionName(DsnAction a) {
  switch (a) {
    case DsnAction::kFailed:
      return "failed";
    case DsnAction::kDelayed:
      return "delayed";
    case DsnAction::kDelivered:
      return "delivered";
    case DsnAction::kRelayed:
      return "relayed";
  }
  return "failed";
}

// The header section of a message: everything before the first empty line.
absl::string_view HeaderSection(absl::string_view content) {
  size_t end = content.find("\r\n\r\n");
  return end == absl::string_view::npos ? content : content.substr(0, end + 2);
}

}  // namespace

bool WantsDsn(const queue::Envelope& original, const queue::Recipient& recipient,
              DsnAction action) {
  if (original.sender.empty()) return false;  // never bounce to <> (RFC 5321 section 6.1)
  uint8_t n = recipient.notify;
  if (n & queue::kNotifyNever) return false;
  switch (action) {
    case DsnAction::kFailed:
      return n == 0 || (n & queue::kNotifyFailure);
    case DsnAction::kDelayed:
      return n & queue::kNotifyDelay;
    case DsnAction::kDelivered:
    case DsnAction::kRelayed:
      return n & queue::kNotifySuccess;
  }
  return false;
}

std::unique_ptr<queue::SpoolRecord> BuildDsn(const DsnOptions& options,
                                             const queue::Envelope& original,
                                             absl::string_view original_content,
                                             const std::vector<DsnRecipient>& recipients) {
  auto record = std::make_unique<queue::SpoolRecord>();
  queue::Envelope& env = record->envelope;
  env.id = options.dsn_id;
  env.sender = "";
  env.smtputf8 = original.smtputf8;
  env.body_type = original.smtputf8 ? queue::BodyType::k8BitMime : original.body_type;
  env.stream = original.stream;
  env.listener = "dsn";
  env.received_ms = absl::ToUnixMillis(options.now);
  env.next_attempt_ms = env.received_ms;
  queue::Recipient to;
  to.address = original.sender;
  to.notify = queue::kNotifyNever;
  env.recipients.push_back(to);

  bool all_delivered = true, any_failed = false;
  for (const DsnRecipient& r : recipients) {
    all_delivered =
        all_delivered && (r.action == DsnAction::kDelivered || r.action == DsnAction::kRelayed);
    any_failed = any_failed || r.action == DsnAction::kFailed;
  }
  const char* subject = any_failed      ? "Undelivered Mail Returned to Sender"
                        : all_delivered ? "Successful Mail Delivery Report"
                                        : "Delayed Mail (still being retried)";
  const bool global = original.smtputf8;
  std::string boundary = absl::StrCat(options.dsn_id, "/", options.reporting_mta);
  // The boundary must not occur in the attached original.
  while (absl::StrContains(original_content, boundary)) absl::StrAppend(&boundary, "=_");
  std::string& c = record->content;
  absl::StrAppend(&c, "From: Mail Delivery System <MAILER-DAEMON@", options.reporting_mta,
                  ">\r\nTo: <", original.sender, ">\r\nSubject: ", subject,
                  "\r\nDate: ", Rfc5322Date(options.now), "\r\nMessage-ID: <", options.dsn_id, "@",
                  options.reporting_mta,
                  ">\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
                  "Content-Type: multipart/report; report-type=",
                  global ? "global-delivery-status" : "delivery-status", ";\r\n\tboundary=\"",
                  boundary, "\"\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n--", boundary,
                  "\r\nContent-Description: Notification\r\n"
                  "Content-Type: text/plain; charset=us-ascii\r\n\r\n");
  absl::StrAppend(&c, "This is the mail system at host ", options.reporting_mta, ".\r\n\r\n");
  if (any_failed) {
    absl::StrAppend(&c,
                    "Your message could not be delivered to one or more recipients.\r\n"
                    "It is attached below.\r\n\r\n");
  } else if (all_delivered) {
    absl::StrAppend(&c, "Your message was delivered to the recipients listed below.\r\n\r\n");
  } else {
    absl::StrAppend(&c,
                    "Your message could not be delivered yet; the mail system will keep\r\n"
                    "trying. You do not need to resend it.\r\n\r\n");
  }
  for (const DsnRecipient& r : recipients) {
    const queue::Recipient& rcpt = original.recipients[r.index];
    absl::StrAppend(&c, "<", OneLine(rcpt.address, 300), ">: ", ActionName(r.action));
    if (!r.diagnostic.empty()) absl::StrAppend(&c, ": ", OneLine(r.diagnostic, 600));
    if (!r.bounce_class.empty() &&
        (r.action == DsnAction::kFailed || r.action == DsnAction::kDelayed)) {
      absl::StrAppend(&c, " (", OneLine(r.bounce_class, 40), ")");
    }
    absl::StrAppend(&c, "\r\n");
  }
  absl::StrAppend(
      &c, "\r\n--", boundary, "\r\nContent-Description: Delivery report\r\n",
      "Content-Type: ", global ? "message/global-delivery-status" : "message/delivery-status",
      "\r\n\r\nReporting-MTA: dns; ", options.reporting_mta, "\r\n");
  if (!original.envid.empty()) {
    absl::StrAppend(&c, "Original-Envelope-Id: ", OneLine(original.envid), "\r\n");
  }
  absl::StrAppend(&c, "Arrival-Date: ", Rfc5322Date(absl::FromUnixMillis(original.received_ms)),
                  "\r\n");
  for (const DsnRecipient& r : recipients) {
    const queue::Recipient& rcpt = original.recipients[r.index];
    absl::StrAppend(&c, "\r\nFinal-Recipient: ", global ? "utf-8; " : "rfc822; ",
                    OneLine(rcpt.address, 300), "\r\n");
    if (!rcpt.orcpt.empty()) {
      absl::StrAppend(&c, "Original-Recipient: ", OneLine(rcpt.orcpt, 300), "\r\n");
    }
    absl::StrAppend(&c, "Action: ", ActionName(r.action), "\r\nStatus: ", OneLine(r.status, 20),
                    "\r\n");
    if (!r.remote_mta.empty()) {
      absl::StrAppend(&c, "Remote-MTA: dns; ", OneLine(r.remote_mta, 255), "\r\n");
    }
    if (!r.diagnostic.empty()) {
      absl::StrAppend(&c, "Diagnostic-Code: smtp; ", OneLine(r.diagnostic), "\r\n");
    }
    if (r.last_attempt != absl::InfinitePast()) {
      absl::StrAppend(&c, "Last-Attempt-Date: ", Rfc5322Date(r.last_attempt), "\r\n");
    }
    // An extension field (RFC 3464 section 7): the failure's class for bounce processors.
    if (!r.bounce_class.empty() && r.action != DsnAction::kDelivered &&
        r.action != DsnAction::kRelayed) {
      absl::StrAppend(&c, "X-Bounce-Class: ", OneLine(r.bounce_class, 40), "\r\n");
    }
  }
  bool headers_only = original.ret == queue::DsnRet::kHeaders;
  absl::StrAppend(&c, "\r\n--", boundary, "\r\nContent-Description: ",
                  headers_only ? "Undelivered Message Headers" : "Undelivered Message",
                  "\r\nContent-Type: ",
                  headers_only ? (global ? "message/global-headers" : "text/rfc822-headers")
                               : (global ? "message/global" : "message/rfc822"),
                  "\r\n");
  if (!headers_only && original.body_type == queue::BodyType::k8BitMime) {
    absl::StrAppend(&c, "Content-Transfer-Encoding: 8bit\r\n");
  }
  absl::StrAppend(&c, "\r\n");
  absl::string_view part = headers_only ? HeaderSection(original_content) : original_content;
  c.append(part.data(), part.size());
  if (!part.empty() && !absl::EndsWith(part, "\r\n")) c.append("\r\n");
  absl::StrAppend(&c, "\r\n--", boundary, "--\r\n");
  env.content_bytes = c.size();
  return record;
}

}  // namespace mta::delivery
