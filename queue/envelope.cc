// On-disk envelope codec. Hand-written (varints and length-prefixed strings) because
// the stack has no serialization library in Debian that fits (protobuf would add a code
// generator to an offline Bazel 4 build for one small record).
#include "queue/envelope.h"

#include "absl/strings/str_cat.h"

namespace mta::queue {
namespace {

// Version 2 added auth_user after helo. Version 1 records (written before SMTP AUTH)
// still decode, with an empty auth_user; every record is written as the current version.
constexpr uint8_t kVersion = 2;
constexpr uint8_t kVersionWithoutAuthUser = 1;
// An encoded recipient takes at least 5 bytes (address length, notify, orcpt length,
// state, attempts), which bounds what a corrupt count can make us allocate.
constexpr size_t kMinRecipientBytes = 5;

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void PutString(std::string* out, absl::string_view s) {
  PutVarint(out, s.size());
  out->append(s.data(), s.size());
}

class Reader {
 public:
  explicit Reader(absl::string_view in) : in_(in) {}

  bool Varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= in_.size()) return false;
      uint8_t b = static_cast<uint8_t>(in_[pos_++]);
      *v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }
  bool String(std::string* s) {
    uint64_t len;
    if (!Varint(&len) || len > in_.size() - pos_) return false;
    s->assign(in_.data() + pos_, len);
    pos_ += len;
    return true;
  }
  template <typename T>
  bool Small(T* v, uint64_t max) {
    uint64_t x;
    if (!Varint(&x) || x > max) return false;
    *v = static_cast<T>(x);
    return true;
  }
  bool AtEnd() const { return pos_ == in_.size(); }

 private:
  absl::string_view in_;
  size_t pos_ = 0;
};

// Signed values are stored zig-zag encoded.
uint64_t ZigZag(int64_t v) {
  return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63);
}
int64_t UnZigZag(uint64_t v) { return static_cast<int64_t>((v >> 1) ^ (~(v & 1) + 1)); }

}  // namespace

std::string EncodeEnvelope(const Envelope& e) {
  std::string out;
  out.reserve(128 + e.recipients.size() * 48);
  out.push_back(static_cast<char>(kVersion));
  PutString(&out, e.id);
  PutString(&out, e.sender);
  PutVarint(&out, static_cast<uint8_t>(e.ret));
  PutString(&out, e.envid);
  PutVarint(&out, static_cast<uint8_t>(e.body_type));
  PutVarint(&out, e.smtputf8 ? 1 : 0);
  PutString(&out, e.stream);
  PutString(&out, e.listener);
  PutString(&out, e.client_ip);
  PutString(&out, e.helo);
  PutString(&out, e.auth_user);
  PutVarint(&out, ZigZag(e.received_ms));
  PutVarint(&out, e.content_bytes);
  PutVarint(&out, ZigZag(e.next_attempt_ms));
  PutVarint(&out, e.recipients.size());
  for (const Recipient& r : e.recipients) {
    PutString(&out, r.address);
    PutVarint(&out, r.notify);
    PutString(&out, r.orcpt);
    PutVarint(&out, static_cast<uint8_t>(r.state));
    PutVarint(&out, r.attempts);
  }
  return out;
}

absl::StatusOr<Envelope> DecodeEnvelope(absl::string_view bytes) {
  const uint8_t version = bytes.empty() ? 0 : static_cast<uint8_t>(bytes[0]);
  if (version != kVersion && version != kVersionWithoutAuthUser) {
    return absl::DataLossError("envelope: unknown version");
  }
  Reader r(bytes.substr(1));
  Envelope e;
  uint64_t received, next, count;
  int smtputf8;
  bool ok = r.String(&e.id) && r.String(&e.sender) && r.Small(&e.ret, 2) && r.String(&e.envid) &&
            r.Small(&e.body_type, 2) && r.Small(&smtputf8, 1) && r.String(&e.stream) &&
            r.String(&e.listener) && r.String(&e.client_ip) && r.String(&e.helo) &&
            (version == kVersionWithoutAuthUser || r.String(&e.auth_user)) && r.Varint(&received) &&
            r.Varint(&e.content_bytes) && r.Varint(&next) && r.Varint(&count) &&
            count <= bytes.size() / kMinRecipientBytes;
  if (!ok) return absl::DataLossError("envelope: truncated or corrupt header");
  e.smtputf8 = smtputf8 != 0;
  e.received_ms = UnZigZag(received);
  e.next_attempt_ms = UnZigZag(next);
  e.recipients.resize(count);
  for (Recipient& rcpt : e.recipients) {
    if (!(r.String(&rcpt.address) && r.Small(&rcpt.notify, 15) && r.String(&rcpt.orcpt) &&
          r.Small(&rcpt.state, 3) && r.Small(&rcpt.attempts, UINT32_MAX))) {
      return absl::DataLossError(absl::StrCat("envelope ", e.id, ": corrupt recipient"));
    }
  }
  if (!r.AtEnd()) return absl::DataLossError(absl::StrCat("envelope ", e.id, ": trailing bytes"));
  return e;
}

}  // namespace mta::queue
