// The spooled envelope: everything about a message except its content.
#ifndef QUEUE_ENVELOPE_H_
#define QUEUE_ENVELOPE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mta::queue {

/** RFC 3461 NOTIFY bits; 0 means the client gave no NOTIFY parameter. */
enum NotifyFlags : uint8_t {
  kNotifyNever = 1u << 0,
  kNotifySuccess = 1u << 1,
  kNotifyFailure = 1u << 2,
  kNotifyDelay = 1u << 3,
};

enum class DsnRet : uint8_t { kUnspecified = 0, kFull = 1, kHeaders = 2 };
enum class BodyType : uint8_t { kUnspecified = 0, k7Bit = 1, k8BitMime = 2 };
enum class RecipientState : uint8_t { kPending = 0, kDelivered = 1, kBounced = 2, kExpired = 3 };

struct Recipient {
  std::string address;  // "local@domain" as received (domain lower-cased)
  uint8_t notify = 0;   // NotifyFlags
  std::string orcpt;    // RFC 3461 ORCPT, decoded: "rfc822;user@example.com"
  RecipientState state = RecipientState::kPending;
  uint32_t attempts = 0;

  bool operator==(const Recipient&) const = default;
};

struct Envelope {
  std::string id;      // queue id, also the spool key
  std::string sender;  // "" for the null reverse-path
  DsnRet ret = DsnRet::kUnspecified;
  std::string envid;  // RFC 3461 ENVID, decoded
  BodyType body_type = BodyType::kUnspecified;
  bool smtputf8 = false;
  std::string stream;       // traffic stream name
  std::string listener;     // name of the listener that accepted it
  std::string client_ip;    // peer address
  std::string helo;         // client's EHLO/HELO argument
  std::string auth_user;    // SMTP AUTH identity that submitted it; "" = not authenticated
  int64_t received_ms = 0;  // Unix milliseconds at acceptance
  uint64_t content_bytes = 0;
  int64_t next_attempt_ms = 0;
  std::vector<Recipient> recipients;

  bool operator==(const Envelope&) const = default;
};

/** Serializes to the versioned on-disk form. */
std::string EncodeEnvelope(const Envelope& envelope);
/** Parses the on-disk form; DataLoss on corruption or an unknown version. */
absl::StatusOr<Envelope> DecodeEnvelope(absl::string_view bytes);

}  // namespace mta::queue

#endif  // QUEUE_ENVELOPE_H_
