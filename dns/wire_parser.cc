// Bounds-checked DNS message reader; see wire_parser.h for why it exists.
#include "dns/wire_parser.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace mta::dns::wire {
namespace {

constexpr size_t kHeaderBytes = 12;
// RFC 1035 section 3.1: a name is at most 255 octets on the wire, labels at most 63.
constexpr size_t kMaxNameWireBytes = 255;
// The smallest question (root name, type, class) and resource record (root name, type,
// class, ttl, rdlength). Used to refuse counts the packet cannot possibly hold before
// reserving memory for them.
constexpr size_t kMinQuestionBytes = 5;
constexpr size_t kMinRecordBytes = 11;

absl::Status Malformed(absl::string_view what, size_t offset) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed DNS message: ", what, " at offset ", offset));
}

/** A cursor over the packet; every read checks the remaining length first. */
class Reader {
 public:
  explicit Reader(absl::Span<const uint8_t> packet) : packet_(packet) {}

  size_t offset() const { return offset_; }
  size_t remaining() const { return packet_.size() - offset_; }
  void Seek(size_t offset) { offset_ = offset; }

  bool ReadU16(uint16_t* out) {
    if (remaining() < 2) return false;
    *out = static_cast<uint16_t>(packet_[offset_] << 8 | packet_[offset_ + 1]);
    offset_ += 2;
    return true;
  }

  bool ReadU32(uint32_t* out) {
    if (remaining() < 4) return false;
    *out = static_cast<uint32_t>(packet_[offset_]) << 24 |
           static_cast<uint32_t>(packet_[offset_ + 1]) << 16 |
           static_cast<uint32_t>(packet_[offset_ + 2]) << 8 |
           static_cast<uint32_t>(packet_[offset_ + 3]);
    offset_ += 4;
    return true;
  }

  bool Skip(size_t n) {
    if (remaining() < n) return false;
    offset_ += n;
    return true;
  }

  /**
   * Reads a possibly compressed name starting at the cursor and leaves the cursor after
   * its in-place part (after the first pointer, or after the terminating zero octet).
   *
   * Termination: a pointer must point strictly before the start of the label run that
   * contains it. Every jump therefore lands at a lower offset than the previous run
   * started, so a chain of pointers can neither loop nor go forward, whatever the input.
   */
  absl::StatusOr<std::string> ReadName() {
    std::string name;
    size_t pos = offset_;
    size_t run_start = offset_;
    size_t resume = 0;  // where the cursor continues once the name is read
    bool jumped = false;
    size_t wire_bytes = 1;  // the terminating zero octet
    while (true) {
      if (pos >= packet_.size()) return Malformed("name runs past the end", pos);
      uint8_t len = packet_[pos];
      if ((len & 0xc0) == 0xc0) {
        if (pos + 1 >= packet_.size()) return Malformed("truncated compression pointer", pos);
        size_t target = static_cast<size_t>(len & 0x3f) << 8 | packet_[pos + 1];
        if (target >= run_start) return Malformed("compression pointer not backwards", pos);
        if (!jumped) {
          resume = pos + 2;
          jumped = true;
        }
        pos = target;
        run_start = target;
        continue;
      }
      if ((len & 0xc0) != 0) {
        // 0x40 (RFC 6891 extended label types, deprecated) and 0x80 (reserved).
        return Malformed("unsupported label type", pos);
      }
      if (len == 0) {
        ++pos;
        break;
      }
      if (pos + 1 + len > packet_.size()) return Malformed("label runs past the end", pos);
      wire_bytes += 1 + len;
      if (wire_bytes > kMaxNameWireBytes) return Malformed("name longer than 255 octets", pos);
      if (!name.empty()) name.push_back('.');
      AppendLabel(packet_.subspan(pos + 1, len), &name);
      pos += 1 + len;
    }
    offset_ = jumped ? resume : pos;
    if (name.empty()) name.push_back('.');  // the root (not `= "."`: GCC 12 -Wrestrict)
    return name;
  }

 private:
  // Presentation form (RFC 1035 section 5.1), lower-cased: a '.' or '\' inside a label is
  // escaped, and octets outside printable ASCII are written as \DDD, so two different
  // wire names can never read as the same text.
  static void AppendLabel(absl::Span<const uint8_t> label, std::string* out) {
    for (uint8_t c : label) {
      if (c == '.' || c == '\\') {
        out->push_back('\\');
        out->push_back(static_cast<char>(c));
      } else if (c > 0x20 && c < 0x7f) {
        out->push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c));
      } else {
        out->push_back('\\');
        out->push_back(static_cast<char>('0' + c / 100));
        out->push_back(static_cast<char>('0' + c / 10 % 10));
        out->push_back(static_cast<char>('0' + c % 10));
      }
    }
  }

  absl::Span<const uint8_t> packet_;
  size_t offset_ = 0;
};

absl::Status ReadRecords(Reader* reader, uint16_t count, absl::string_view section,
                         std::vector<ResourceRecord>* out) {
  if (static_cast<size_t>(count) * kMinRecordBytes > reader->remaining()) {
    return Malformed(absl::StrCat(section, " count ", count, " exceeds the message"),
                     reader->offset());
  }
  out->reserve(count);
  for (uint16_t i = 0; i < count; ++i) {
    ResourceRecord rr;
    absl::StatusOr<std::string> name = reader->ReadName();
    if (!name.ok()) return name.status();
    rr.name = *std::move(name);
    uint32_t ttl = 0;
    if (!reader->ReadU16(&rr.type) || !reader->ReadU16(&rr.rclass) || !reader->ReadU32(&ttl) ||
        !reader->ReadU16(&rr.rdata_length)) {
      return Malformed(absl::StrCat("truncated ", section, " record"), reader->offset());
    }
    // RFC 2181 section 8: a TTL with the most significant bit set is treated as zero.
    rr.ttl = (ttl & 0x80000000u) != 0 ? 0 : ttl;
    rr.rdata_offset = reader->offset();
    if (!reader->Skip(rr.rdata_length)) {
      return Malformed(absl::StrCat(section, " RDATA runs past the end"), rr.rdata_offset);
    }
    out->push_back(std::move(rr));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Message> ParseMessage(absl::Span<const uint8_t> packet) {
  Reader reader(packet);
  Message message;
  uint16_t qdcount = 0;
  uint16_t ancount = 0;
  uint16_t nscount = 0;
  uint16_t arcount = 0;
  if (!reader.ReadU16(&message.id) || !reader.ReadU16(&message.flags) ||
      !reader.ReadU16(&qdcount) || !reader.ReadU16(&ancount) || !reader.ReadU16(&nscount) ||
      !reader.ReadU16(&arcount)) {
    return Malformed("header shorter than 12 octets", 0);
  }
  static_assert(kHeaderBytes == 12);
  if (static_cast<size_t>(qdcount) * kMinQuestionBytes > reader.remaining()) {
    return Malformed(absl::StrCat("question count ", qdcount, " exceeds the message"),
                     reader.offset());
  }
  message.questions.reserve(qdcount);
  for (uint16_t i = 0; i < qdcount; ++i) {
    Question q;
    absl::StatusOr<std::string> name = reader.ReadName();
    if (!name.ok()) return name.status();
    q.name = *std::move(name);
    if (!reader.ReadU16(&q.type) || !reader.ReadU16(&q.qclass)) {
      return Malformed("truncated question", reader.offset());
    }
    message.questions.push_back(std::move(q));
  }
  absl::Status s = ReadRecords(&reader, ancount, "answer", &message.answers);
  if (!s.ok()) return s;
  s = ReadRecords(&reader, nscount, "authority", &message.authority);
  if (!s.ok()) return s;
  return message;
}

absl::StatusOr<Soa> ParseSoa(absl::Span<const uint8_t> packet, const ResourceRecord& rr) {
  if (rr.type != kTypeSoa) return absl::InvalidArgumentError("not an SOA record");
  if (rr.rdata_offset > packet.size() || packet.size() - rr.rdata_offset < rr.rdata_length) {
    return Malformed("SOA RDATA outside the message", rr.rdata_offset);
  }
  // Names inside RDATA may point anywhere earlier in the whole message, so the reader
  // spans the packet; the RDATA bounds are checked once the fields are read.
  Reader reader(packet);
  reader.Seek(rr.rdata_offset);
  Soa soa;
  absl::StatusOr<std::string> mname = reader.ReadName();
  if (!mname.ok()) return mname.status();
  soa.mname = *std::move(mname);
  absl::StatusOr<std::string> rname = reader.ReadName();
  if (!rname.ok()) return rname.status();
  soa.rname = *std::move(rname);
  if (!reader.ReadU32(&soa.serial) || !reader.ReadU32(&soa.refresh) ||
      !reader.ReadU32(&soa.retry) || !reader.ReadU32(&soa.expire) ||
      !reader.ReadU32(&soa.minimum)) {
    return Malformed("truncated SOA RDATA", reader.offset());
  }
  if (reader.offset() != rr.rdata_offset + rr.rdata_length) {
    return Malformed("SOA fields do not match RDLENGTH", rr.rdata_offset);
  }
  return soa;
}

std::optional<uint32_t> MinAnswerTtl(const Message& message, uint16_t type) {
  std::optional<uint32_t> ttl;
  bool found = false;
  for (const ResourceRecord& rr : message.answers) {
    if (rr.type != type && rr.type != kTypeCname) continue;
    found = found || rr.type == type;
    ttl = ttl.has_value() ? std::min(*ttl, rr.ttl) : rr.ttl;
  }
  if (!found) return std::nullopt;
  return ttl;
}

std::optional<uint32_t> NegativeTtl(absl::Span<const uint8_t> packet, const Message& message) {
  for (const ResourceRecord& rr : message.authority) {
    if (rr.type != kTypeSoa) continue;
    absl::StatusOr<Soa> soa = ParseSoa(packet, rr);
    if (!soa.ok()) return std::nullopt;
    // The SOA's MINIMUM field bounds the negative TTL (RFC 2308 section 5); for a SOA
    // served from a cache the record's own TTL has already counted down.
    return std::min(rr.ttl, soa->minimum);
  }
  return std::nullopt;
}

}  // namespace mta::dns::wire
