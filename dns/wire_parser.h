// A small, bounds-checked reader for DNS response messages (RFC 1035 section 4), used to
// read the record TTLs that c-ares does not expose.
//
// Why hand-written: c-ares 1.18.1 (Debian 12) parses MX, A and AAAA answers but drops the
// MX TTLs and never exposes the authority section, so the SOA that drives negative caching
// (RFC 2308) is out of its reach; its generic record API (ares_dns_record_t) only arrived
// in 1.22. Debian's libldns could parse these messages, but it would be a second DNS
// library with its own record model and allocations, linked to read a few integers from
// packets c-ares has already accepted. So this reader only ever reads: every offset is
// checked against the packet size, and compression pointers must point strictly
// backwards, so malformed or hostile packets fail with InvalidArgument, never by reading
// out of bounds or looping.
#ifndef DNS_WIRE_PARSER_H_
#define DNS_WIRE_PARSER_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace mta::dns::wire {

inline constexpr uint16_t kTypeA = 1;
inline constexpr uint16_t kTypeNs = 2;
inline constexpr uint16_t kTypeCname = 5;
inline constexpr uint16_t kTypeSoa = 6;
inline constexpr uint16_t kTypeMx = 15;
inline constexpr uint16_t kTypeAaaa = 28;
inline constexpr uint16_t kClassIn = 1;

inline constexpr uint8_t kRcodeNoError = 0;
inline constexpr uint8_t kRcodeServFail = 2;
inline constexpr uint8_t kRcodeNxDomain = 3;

struct Question {
  std::string name;  // presentation form, lower-case, no trailing dot ("." for the root)
  uint16_t type = 0;
  uint16_t qclass = 0;
};

struct ResourceRecord {
  std::string name;  // same form as Question::name
  uint16_t type = 0;
  uint16_t rclass = 0;
  uint32_t ttl = 0;  // RFC 2181 section 8: values with the top bit set read as 0
  size_t rdata_offset = 0;
  uint16_t rdata_length = 0;  // rdata_offset + rdata_length <= packet size
};

struct Message {
  uint16_t id = 0;
  uint16_t flags = 0;
  uint8_t rcode() const { return flags & 0x000f; }
  bool truncated() const { return (flags & 0x0200) != 0; }
  std::vector<Question> questions;
  std::vector<ResourceRecord> answers;
  std::vector<ResourceRecord> authority;
  // The additional section is not read: nothing here needs it.
};

struct Soa {
  std::string mname;
  std::string rname;
  uint32_t serial = 0;
  uint32_t refresh = 0;
  uint32_t retry = 0;
  uint32_t expire = 0;
  uint32_t minimum = 0;
};

/**
 * Parses the header, question, answer and authority sections of `packet`.
 * @return InvalidArgument for any truncated or malformed part.
 */
absl::StatusOr<Message> ParseMessage(absl::Span<const uint8_t> packet);

/**
 * Reads the RDATA of an SOA record of `packet` (names may be compressed).
 * REQUIRES: `rr` came from ParseMessage(packet) and rr.type == kTypeSoa.
 */
absl::StatusOr<Soa> ParseSoa(absl::Span<const uint8_t> packet, const ResourceRecord& rr);

/**
 * The smallest TTL among the answer records of `type` and the CNAMEs leading to them
 * (the time the whole answer may be cached); nullopt when there is no such record.
 */
std::optional<uint32_t> MinAnswerTtl(const Message& message, uint16_t type);

/**
 * The negative-caching TTL of an NXDOMAIN or NODATA response (RFC 2308 section 5): the
 * smaller of the TTL and the MINIMUM field of the first SOA in the authority section.
 * nullopt when the response carries no readable SOA.
 */
std::optional<uint32_t> NegativeTtl(absl::Span<const uint8_t> packet, const Message& message);

}  // namespace mta::dns::wire

#endif  // DNS_WIRE_PARSER_H_
