// Unit tests of the DNS message reader on hand-made packets, valid, truncated and hostile.
#include "dns/wire_parser.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mta::dns::wire {
namespace {

using ::testing::HasSubstr;

/** Appends wire-format pieces; names are written uncompressed unless a pointer is given. */
class PacketBuilder {
 public:
  PacketBuilder& U8(uint8_t v) {
    bytes_.push_back(v);
    return *this;
  }
  PacketBuilder& U16(uint16_t v) {
    bytes_.push_back(static_cast<uint8_t>(v >> 8));
    bytes_.push_back(static_cast<uint8_t>(v));
    return *this;
  }
  PacketBuilder& U32(uint32_t v) {
    U16(static_cast<uint16_t>(v >> 16));
    return U16(static_cast<uint16_t>(v));
  }
  PacketBuilder& Header(uint16_t flags, uint16_t qd, uint16_t an, uint16_t ns, uint16_t ar) {
    return U16(0x1234).U16(flags).U16(qd).U16(an).U16(ns).U16(ar);
  }
  /** Labels of `dotted` ("" is the root); ends with a zero octet. */
  PacketBuilder& Name(const std::string& dotted) {
    Labels(dotted);
    return U8(0);
  }
  /** Labels of `dotted` followed by a compression pointer to `target`. */
  PacketBuilder& NameThenPointer(const std::string& dotted, uint16_t target) {
    Labels(dotted);
    return Pointer(target);
  }
  PacketBuilder& Pointer(uint16_t target) { return U16(static_cast<uint16_t>(0xc000 | target)); }
  PacketBuilder& Question(const std::string& name, uint16_t type) {
    return Name(name).U16(type).U16(kClassIn);
  }
  /** Type, class, TTL; the caller writes RDLENGTH and RDATA. */
  PacketBuilder& RrFixed(uint16_t type, uint32_t ttl) { return U16(type).U16(kClassIn).U32(ttl); }
  size_t size() const { return bytes_.size(); }
  const std::vector<uint8_t>& bytes() const { return bytes_; }
  std::vector<uint8_t>& mutable_bytes() { return bytes_; }

 private:
  void Labels(const std::string& dotted) {
    size_t start = 0;
    while (start < dotted.size()) {
      size_t dot = dotted.find('.', start);
      if (dot == std::string::npos) dot = dotted.size();
      U8(static_cast<uint8_t>(dot - start));
      for (size_t i = start; i < dot; ++i) U8(static_cast<uint8_t>(dotted[i]));
      start = dot + 1;
    }
  }

  std::vector<uint8_t> bytes_;
};

constexpr uint16_t kResponseFlags = 0x8400;  // QR, AA, NOERROR
constexpr uint16_t kQuestionOffset = 12;

/** An MX answer for example.com with two records (compressed) and an SOA in authority. */
PacketBuilder MxResponse(uint32_t ttl1, uint32_t ttl2) {
  PacketBuilder p;
  p.Header(kResponseFlags, 1, 2, 1, 0).Question("Example.COM", kTypeMx);
  // MX 10 mx1.example.com (owner and target compressed to the question name).
  p.Pointer(kQuestionOffset).RrFixed(kTypeMx, ttl1).U16(2 + 4 + 2);
  p.U16(10).NameThenPointer("mx1", kQuestionOffset);
  p.Pointer(kQuestionOffset).RrFixed(kTypeMx, ttl2).U16(2 + 4 + 2);
  p.U16(20).NameThenPointer("mx2", kQuestionOffset);
  // SOA: ns1.example.com hostmaster.example.com 1 3600 600 86400 300.
  p.Pointer(kQuestionOffset).RrFixed(kTypeSoa, 900).U16(4 + 2 + 11 + 2 + 20);
  p.NameThenPointer("ns1", kQuestionOffset).NameThenPointer("hostmaster", kQuestionOffset);
  p.U32(1).U32(3600).U32(600).U32(86400).U32(300);
  return p;
}

absl::StatusOr<Message> Parse(const std::vector<uint8_t>& bytes) {
  return ParseMessage(absl::MakeConstSpan(bytes));
}

TEST(WireParserTest, ParsesHeaderQuestionAnswersAndAuthority) {
  PacketBuilder p = MxResponse(3600, 1800);
  absl::StatusOr<Message> m = Parse(p.bytes());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->id, 0x1234);
  EXPECT_EQ(m->rcode(), kRcodeNoError);
  EXPECT_FALSE(m->truncated());
  ASSERT_EQ(m->questions.size(), 1u);
  EXPECT_EQ(m->questions[0].name, "example.com");  // lower-cased
  EXPECT_EQ(m->questions[0].type, kTypeMx);
  ASSERT_EQ(m->answers.size(), 2u);
  EXPECT_EQ(m->answers[0].name, "example.com");
  EXPECT_EQ(m->answers[0].ttl, 3600u);
  EXPECT_EQ(m->answers[1].ttl, 1800u);
  EXPECT_EQ(m->answers[0].rdata_length, 8);
  ASSERT_EQ(m->authority.size(), 1u);
  EXPECT_EQ(m->authority[0].type, kTypeSoa);

  EXPECT_EQ(MinAnswerTtl(*m, kTypeMx), 1800u);
  EXPECT_EQ(MinAnswerTtl(*m, kTypeA), std::nullopt);

  absl::StatusOr<Soa> soa = ParseSoa(absl::MakeConstSpan(p.bytes()), m->authority[0]);
  ASSERT_TRUE(soa.ok()) << soa.status();
  EXPECT_EQ(soa->mname, "ns1.example.com");
  EXPECT_EQ(soa->rname, "hostmaster.example.com");
  EXPECT_EQ(soa->serial, 1u);
  EXPECT_EQ(soa->expire, 86400u);
  EXPECT_EQ(soa->minimum, 300u);
  // min(SOA TTL 900, MINIMUM 300).
  EXPECT_EQ(NegativeTtl(absl::MakeConstSpan(p.bytes()), *m), 300u);
}

TEST(WireParserTest, NegativeTtlUsesSoaTtlWhenSmallerThanMinimum) {
  PacketBuilder p;
  p.Header(kResponseFlags | kRcodeNxDomain, 1, 0, 1, 0).Question("nope.example.com", kTypeMx);
  p.NameThenPointer("", kQuestionOffset + 5)  // "example.com" inside the question name
      .RrFixed(kTypeSoa, 60)
      .U16(1 + 1 + 20);
  p.Name("").Name("").U32(7).U32(1).U32(1).U32(1).U32(3600);
  absl::StatusOr<Message> m = Parse(p.bytes());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->rcode(), kRcodeNxDomain);
  EXPECT_EQ(m->authority[0].name, "example.com");
  EXPECT_EQ(NegativeTtl(absl::MakeConstSpan(p.bytes()), *m), 60u);
}

TEST(WireParserTest, NegativeTtlAbsentWithoutSoa) {
  PacketBuilder p;
  p.Header(kResponseFlags, 1, 0, 0, 0).Question("example.com", kTypeMx);
  absl::StatusOr<Message> m = Parse(p.bytes());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(NegativeTtl(absl::MakeConstSpan(p.bytes()), *m), std::nullopt);
}

TEST(WireParserTest, CnameChainCountsTowardsAnswerTtl) {
  PacketBuilder p;
  p.Header(kResponseFlags, 1, 2, 0, 0).Question("www.example.com", kTypeA);
  p.Pointer(kQuestionOffset).RrFixed(kTypeCname, 30).U16(1 + 4 + 2);
  p.NameThenPointer("host", kQuestionOffset + 4);  // host.example.com
  p.Name("host.example.com").RrFixed(kTypeA, 600).U16(4).U32(0xc0000201);
  absl::StatusOr<Message> m = Parse(p.bytes());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(MinAnswerTtl(*m, kTypeA), 30u);
  // A CNAME alone is no answer of the asked type.
  EXPECT_EQ(MinAnswerTtl(*m, kTypeAaaa), std::nullopt);
}

TEST(WireParserTest, TtlWithTopBitSetReadsAsZero) {
  PacketBuilder p;
  p.Header(kResponseFlags, 1, 1, 0, 0).Question("example.com", kTypeA);
  p.Pointer(kQuestionOffset).RrFixed(kTypeA, 0x80000001u).U16(4).U32(0x7f000001);
  absl::StatusOr<Message> m = Parse(p.bytes());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->answers[0].ttl, 0u);
}

TEST(WireParserTest, RootNameAndEscapedLabels) {
  PacketBuilder p;
  p.Header(kResponseFlags, 2, 0, 0, 0).Question("", kTypeNs);
  // One label "a.b\" plus a label with a space and a high octet.
  p.U8(4).U8('a').U8('.').U8('b').U8('\\');
  p.U8(2).U8(' ').U8(0xff).U8(0).U16(kTypeA).U16(kClassIn);
  absl::StatusOr<Message> m = Parse(p.bytes());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->questions[0].name, ".");
  EXPECT_EQ(m->questions[1].name, "a\\.b\\\\.\\032\\255");
}

TEST(WireParserTest, RejectsShortHeader) {
  for (size_t n = 0; n < 12; ++n) {
    std::vector<uint8_t> bytes(n, 0);
    absl::StatusOr<Message> m = Parse(bytes);
    ASSERT_FALSE(m.ok()) << n;
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(WireParserTest, EveryTruncationFailsCleanly) {
  PacketBuilder p = MxResponse(3600, 1800);
  const std::vector<uint8_t>& full = p.bytes();
  for (size_t n = 0; n < full.size(); ++n) {
    std::vector<uint8_t> prefix(full.begin(), full.begin() + n);
    absl::StatusOr<Message> m = Parse(prefix);
    EXPECT_FALSE(m.ok()) << "prefix of " << n << " octets parsed";
    if (!m.ok()) {
      EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << n;
    }
  }
}

TEST(WireParserTest, RejectsCompressionLoops) {
  {
    // The question name is a pointer to itself.
    PacketBuilder p;
    p.Header(kResponseFlags, 1, 0, 0, 0).Pointer(kQuestionOffset).U16(kTypeA).U16(kClassIn);
    absl::StatusOr<Message> m = Parse(p.bytes());
    ASSERT_FALSE(m.ok());
    EXPECT_THAT(m.status().message(), HasSubstr("compression pointer"));
  }
  {
    // Two names pointing at each other: the second points back at the first, whose
    // pointer goes forward to the second.
    PacketBuilder p;
    p.Header(kResponseFlags, 2, 0, 0, 0);
    p.U8(1).U8('a').Pointer(kQuestionOffset + 4 + 4).U16(kTypeA).U16(kClassIn);
    p.U8(1).U8('b').Pointer(kQuestionOffset).U16(kTypeA).U16(kClassIn);
    absl::StatusOr<Message> m = Parse(p.bytes());
    ASSERT_FALSE(m.ok());
    EXPECT_THAT(m.status().message(), HasSubstr("compression pointer"));
  }
  {
    // A label run that points back into its own middle.
    PacketBuilder p;
    p.Header(kResponseFlags, 1, 0, 0, 0);
    p.U8(1).U8('a').U8(1).U8('b').Pointer(kQuestionOffset + 2).U16(kTypeA).U16(kClassIn);
    absl::StatusOr<Message> m = Parse(p.bytes());
    ASSERT_FALSE(m.ok());
  }
}

TEST(WireParserTest, RejectsOutOfBoundsPointers) {
  PacketBuilder p;
  p.Header(kResponseFlags, 1, 1, 0, 0).Question("example.com", kTypeA);
  p.Pointer(0x3fff).RrFixed(kTypeA, 1).U16(4).U32(1);
  absl::StatusOr<Message> m = Parse(p.bytes());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);

  // A pointer whose second octet is missing.
  PacketBuilder q;
  q.Header(kResponseFlags, 1, 0, 0, 0).U8(0xc0);
  EXPECT_FALSE(Parse(q.bytes()).ok());
}

TEST(WireParserTest, RejectsReservedLabelTypes) {
  for (uint8_t type : {0x40, 0x80}) {
    PacketBuilder p;
    p.Header(kResponseFlags, 1, 0, 0, 0).U8(type | 1).U8('a').U8(0).U16(kTypeA).U16(kClassIn);
    absl::StatusOr<Message> m = Parse(p.bytes());
    ASSERT_FALSE(m.ok());
    EXPECT_THAT(m.status().message(), HasSubstr("label type"));
  }
}

TEST(WireParserTest, RejectsNamesOver255Octets) {
  // Four 63-octet labels are 256 octets with their length octets plus the root.
  std::string label(63, 'x');
  PacketBuilder ok;
  ok.Header(kResponseFlags, 1, 0, 0, 0)
      .Question(label + "." + label + "." + label + "." + std::string(61, 'y'), kTypeA);
  EXPECT_TRUE(Parse(ok.bytes()).ok());
  PacketBuilder p;
  p.Header(kResponseFlags, 1, 0, 0, 0)
      .Question(label + "." + label + "." + label + "." + label, kTypeA);
  absl::StatusOr<Message> m = Parse(p.bytes());
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("255"));

  // The same length reached through a chain of pointers is refused too.
  PacketBuilder chain;
  chain.Header(kResponseFlags, 4, 0, 0, 0);
  uint16_t previous = 0;
  for (int i = 0; i < 4; ++i) {
    uint16_t here = static_cast<uint16_t>(chain.size());
    chain.U8(63);
    for (int j = 0; j < 63; ++j) chain.U8('z');
    if (i == 0) {
      chain.U8(0);
    } else {
      chain.Pointer(previous);
    }
    chain.U16(kTypeA).U16(kClassIn);
    previous = here;
  }
  m = Parse(chain.bytes());
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("255"));
}

TEST(WireParserTest, RejectsRdataPastTheEnd) {
  PacketBuilder p;
  p.Header(kResponseFlags, 1, 1, 0, 0).Question("example.com", kTypeA);
  p.Pointer(kQuestionOffset).RrFixed(kTypeA, 1).U16(0xffff).U32(1);
  absl::StatusOr<Message> m = Parse(p.bytes());
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("RDATA"));
}

TEST(WireParserTest, RejectsCountsTheMessageCannotHold) {
  PacketBuilder p;
  p.Header(kResponseFlags, 1, 0xffff, 0xffff, 0).Question("example.com", kTypeA);
  absl::StatusOr<Message> m = Parse(p.bytes());
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("exceeds the message"));
}

TEST(WireParserTest, RejectsSoaWithBadLength) {
  for (uint16_t rdlength : {uint16_t{10}, uint16_t{25}}) {
    PacketBuilder p;
    p.Header(kResponseFlags | kRcodeNxDomain, 1, 0, 1, 0).Question("example.com", kTypeMx);
    p.Pointer(kQuestionOffset).RrFixed(kTypeSoa, 60).U16(rdlength);
    // Root mname and rname plus 20 octets of numbers; RDLENGTH says otherwise.
    p.Name("").Name("").U32(1).U32(2).U32(3).U32(4).U32(5);
    if (rdlength > 22) p.U8(0).U8(0).U8(0);  // pad so the record itself stays in bounds
    absl::StatusOr<Message> m = Parse(p.bytes());
    ASSERT_TRUE(m.ok()) << m.status();
    auto packet = absl::MakeConstSpan(p.bytes());
    EXPECT_FALSE(ParseSoa(packet, m->authority[0]).ok()) << rdlength;
    EXPECT_EQ(NegativeTtl(packet, *m), std::nullopt) << rdlength;
  }
}

TEST(WireParserTest, ParseSoaRejectsRecordOutsidePacket) {
  PacketBuilder p = MxResponse(1, 1);
  ResourceRecord rr;
  rr.type = kTypeSoa;
  rr.rdata_offset = p.size() - 2;
  rr.rdata_length = 40;
  EXPECT_FALSE(ParseSoa(absl::MakeConstSpan(p.bytes()), rr).ok());
  rr.rdata_offset = p.size() + 100;
  rr.rdata_length = 0;
  EXPECT_FALSE(ParseSoa(absl::MakeConstSpan(p.bytes()), rr).ok());
}

TEST(WireParserTest, RandomMutationsNeverCrash) {
  // Deterministic garbage: every result must be a clean success or InvalidArgument, and
  // every parsed record must lie inside the packet.
  PacketBuilder base = MxResponse(3600, 1800);
  std::mt19937 rng(20240607);
  for (int round = 0; round < 20000; ++round) {
    std::vector<uint8_t> bytes = base.bytes();
    int flips = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < flips; ++i) bytes[rng() % bytes.size()] = static_cast<uint8_t>(rng());
    if (rng() % 4 == 0) bytes.resize(rng() % bytes.size());
    auto packet = absl::MakeConstSpan(bytes);
    absl::StatusOr<Message> m = ParseMessage(packet);
    if (!m.ok()) {
      ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
      continue;
    }
    for (const auto* section : {&m->answers, &m->authority}) {
      for (const ResourceRecord& rr : *section) {
        ASSERT_LE(rr.rdata_offset + rr.rdata_length, bytes.size());
      }
    }
    NegativeTtl(packet, *m);  // must not crash either
  }
}

}  // namespace
}  // namespace mta::dns::wire
