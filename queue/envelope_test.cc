#include "queue/envelope.h"

#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace mta::queue {
namespace {

Envelope FullEnvelope() {
  Envelope e;
  e.id = "018f3a2b4c5d03000a1f";
  e.sender = "sender@example.com";
  e.ret = DsnRet::kHeaders;
  e.envid = "envelope+id=42";
  e.body_type = BodyType::k8BitMime;
  e.smtputf8 = true;
  e.stream = "bulk";
  e.listener = "submission";
  e.client_ip = "2001:db8::1";
  e.helo = "client.example";
  e.auth_user = "alice";
  e.received_ms = 1700000000123;
  e.content_bytes = 123456789;
  e.next_attempt_ms = 1700000300000;
  Recipient a;
  a.address = "alice@example.net";
  a.notify = kNotifySuccess | kNotifyFailure | kNotifyDelay;
  a.orcpt = "rfc822;Alice@Example.net";
  a.state = RecipientState::kDelivered;
  a.attempts = 3;
  Recipient b;
  b.address = "b\xc3\xbcro@example.net";
  b.notify = kNotifyNever;
  b.state = RecipientState::kExpired;
  b.attempts = std::numeric_limits<uint32_t>::max();
  Recipient c;
  c.address = "c@example.net";
  c.state = RecipientState::kBounced;
  e.recipients = {a, b, c};
  return e;
}

void ExpectDataLoss(absl::string_view bytes, const std::string& what) {
  auto r = DecodeEnvelope(bytes);
  EXPECT_FALSE(r.ok()) << what;
  if (!r.ok()) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << what << ": " << r.status();
  }
}

// Hand-built encodings for targeted corruption. Fields in order: version, id, sender, ret,
// envid, body_type, smtputf8, stream, listener, client_ip, helo, auth_user (version 2 on),
// received, content_bytes, next_attempt, recipient count, then per recipient: address,
// notify, orcpt, state, attempts.
struct Raw {
  std::string bytes;
  Raw& Byte(uint8_t b) {
    bytes.push_back(static_cast<char>(b));
    return *this;
  }
  Raw& Varint(uint64_t v) {
    while (v >= 0x80) {
      Byte(static_cast<uint8_t>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    return Byte(static_cast<uint8_t>(v));
  }
  Raw& Str(absl::string_view s) {
    Varint(s.size());
    bytes.append(s.data(), s.size());
    return *this;
  }
};

Raw Header(uint64_t ret = 0, uint64_t body = 0, uint64_t utf8 = 0, uint64_t count = 0) {
  Raw r;
  r.Byte(2).Str("id").Str("s@x").Varint(ret).Str("").Varint(body).Varint(utf8);
  r.Str("st").Str("l").Str("1.2.3.4").Str("h").Str("u");
  r.Varint(2).Varint(7).Varint(4).Varint(count);
  return r;
}

TEST(EnvelopeTest, RoundTripFull) {
  const Envelope e = FullEnvelope();
  const std::string bytes = EncodeEnvelope(e);
  ASSERT_FALSE(bytes.empty());
  EXPECT_EQ(static_cast<uint8_t>(bytes[0]), 2);  // version
  auto d = DecodeEnvelope(bytes);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, e);
  // Encoding is deterministic.
  EXPECT_EQ(EncodeEnvelope(*d), bytes);
}

TEST(EnvelopeTest, RoundTripDefault) {
  const Envelope e;
  auto d = DecodeEnvelope(EncodeEnvelope(e));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, e);
  EXPECT_TRUE(d->sender.empty());
  EXPECT_TRUE(d->recipients.empty());
}

TEST(EnvelopeTest, RoundTripExtremeValues) {
  for (int64_t t : {std::numeric_limits<int64_t>::min(), int64_t{-1}, int64_t{0}, int64_t{1},
                    int64_t{63}, int64_t{-64}, int64_t{64}, std::numeric_limits<int64_t>::max()}) {
    Envelope e;
    e.received_ms = t;
    e.next_attempt_ms = -t - 1;
    e.content_bytes = std::numeric_limits<uint64_t>::max();
    auto d = DecodeEnvelope(EncodeEnvelope(e));
    ASSERT_TRUE(d.ok()) << t << ": " << d.status();
    EXPECT_EQ(*d, e) << t;
  }
}

TEST(EnvelopeTest, RoundTripBinaryAndLongStrings) {
  Envelope e = FullEnvelope();
  e.id = std::string("a\0b\xff", 4);
  e.sender = std::string(300, 's');  // multi-byte length varint
  e.envid = std::string(20000, '\x80');
  e.helo = std::string("\0\0\0", 3);
  e.recipients.clear();
  for (int i = 0; i < 1000; ++i) {
    Recipient r;
    r.address = absl::StrCat("user", i, "@example.org");
    r.notify = static_cast<uint8_t>(i % 16);
    r.orcpt = i % 3 ? "" : absl::StrCat("rfc822;", r.address);
    r.state = static_cast<RecipientState>(i % 4);
    r.attempts = static_cast<uint32_t>(i * 1000003);
    e.recipients.push_back(r);
  }
  auto d = DecodeEnvelope(EncodeEnvelope(e));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, e);
}

TEST(EnvelopeTest, EmptyAndUnknownVersion) {
  ExpectDataLoss("", "empty");
  std::string bytes = EncodeEnvelope(FullEnvelope());
  for (uint8_t v : {0, 3, 0x81, 0xff}) {
    bytes[0] = static_cast<char>(v);
    ExpectDataLoss(bytes, absl::StrCat("version ", v));
  }
}

TEST(EnvelopeTest, EveryTruncationIsDataLoss) {
  for (const Envelope& e : {FullEnvelope(), Envelope()}) {
    const std::string bytes = EncodeEnvelope(e);
    for (size_t n = 0; n < bytes.size(); ++n) {
      ExpectDataLoss(absl::string_view(bytes).substr(0, n), absl::StrCat("truncated to ", n));
    }
  }
}

TEST(EnvelopeTest, TrailingBytesAreDataLoss) {
  const std::string bytes = EncodeEnvelope(FullEnvelope());
  ExpectDataLoss(bytes + '\0', "trailing NUL");
  ExpectDataLoss(bytes + "junk", "trailing junk");
  ExpectDataLoss(bytes + bytes, "doubled");
}

TEST(EnvelopeTest, HandBuiltMatchesEncoder) {
  Raw raw = Header(/*ret=*/1, /*body=*/2, /*utf8=*/1, /*count=*/1);
  raw.Str("r@y").Varint(kNotifyDelay).Str("rfc822;r@y").Varint(2).Varint(9);
  auto d = DecodeEnvelope(raw.bytes);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->id, "id");
  EXPECT_EQ(d->sender, "s@x");
  EXPECT_EQ(d->ret, DsnRet::kFull);
  EXPECT_EQ(d->body_type, BodyType::k8BitMime);
  EXPECT_TRUE(d->smtputf8);
  EXPECT_EQ(d->stream, "st");
  EXPECT_EQ(d->listener, "l");
  EXPECT_EQ(d->client_ip, "1.2.3.4");
  EXPECT_EQ(d->helo, "h");
  EXPECT_EQ(d->auth_user, "u");
  EXPECT_EQ(d->received_ms, 1);  // zig-zag 2
  EXPECT_EQ(d->content_bytes, 7u);
  EXPECT_EQ(d->next_attempt_ms, 2);  // zig-zag 4
  ASSERT_EQ(d->recipients.size(), 1u);
  EXPECT_EQ(d->recipients[0].address, "r@y");
  EXPECT_EQ(d->recipients[0].notify, kNotifyDelay);
  EXPECT_EQ(d->recipients[0].orcpt, "rfc822;r@y");
  EXPECT_EQ(d->recipients[0].state, RecipientState::kBounced);
  EXPECT_EQ(d->recipients[0].attempts, 9u);
  EXPECT_EQ(EncodeEnvelope(*d), raw.bytes);
}

// A record written by the version 1 encoder (before auth_user existed), byte for byte: spools
// from before SMTP AUTH must still recover.
constexpr char kVersion1Record[] =
    "\x01\x14\x30\x31\x38\x66\x33\x61\x32\x62\x34\x63\x35\x64\x30\x33\x30\x30\x30\x61"
    "\x31\x66\x12\x73\x65\x6e\x64\x65\x72\x40\x65\x78\x61\x6d\x70\x6c\x65\x2e\x63\x6f"
    "\x6d\x02\x0e\x65\x6e\x76\x65\x6c\x6f\x70\x65\x2b\x69\x64\x3d\x34\x32\x02\x01\x04"
    "\x62\x75\x6c\x6b\x0a\x73\x75\x62\x6d\x69\x73\x73\x69\x6f\x6e\x0b\x32\x30\x30\x31"
    "\x3a\x64\x62\x38\x3a\x3a\x31\x0e\x63\x6c\x69\x65\x6e\x74\x2e\x65\x78\x61\x6d\x70"
    "\x6c\x65\xf6\xa1\xab\xfe\xf9\x62\x95\x9a\xef\x3a\xc0\xef\xcf\xfe\xf9\x62\x01\x11"
    "\x61\x6c\x69\x63\x65\x40\x65\x78\x61\x6d\x70\x6c\x65\x2e\x6e\x65\x74\x0e\x18\x72"
    "\x66\x63\x38\x32\x32\x3b\x41\x6c\x69\x63\x65\x40\x45\x78\x61\x6d\x70\x6c\x65\x2e"
    "\x6e\x65\x74\x01\x03";

TEST(EnvelopeTest, Version1RecordStillDecodes) {
  Envelope expected = FullEnvelope();
  expected.auth_user = "";
  expected.recipients.resize(1);
  const absl::string_view v1(kVersion1Record, sizeof(kVersion1Record) - 1);
  auto d = DecodeEnvelope(v1);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, expected);
  // Rewritten (e.g. when a recipient's state is recorded) it becomes a version 2 record.
  const std::string v2 = EncodeEnvelope(*d);
  EXPECT_EQ(static_cast<uint8_t>(v2[0]), 2);
  auto again = DecodeEnvelope(v2);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, expected);
  // Every truncation of the old record is still caught.
  for (size_t n = 0; n < v1.size(); ++n) {
    ExpectDataLoss(v1.substr(0, n), absl::StrCat("v1 truncated to ", n));
  }
}

TEST(EnvelopeTest, Version1HandBuiltHasNoAuthUser) {
  Raw raw;
  raw.Byte(1).Str("id").Str("s@x").Varint(0).Str("").Varint(0).Varint(0);
  raw.Str("st").Str("l").Str("1.2.3.4").Str("h").Varint(2).Varint(7).Varint(4).Varint(0);
  auto d = DecodeEnvelope(raw.bytes);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->helo, "h");
  EXPECT_EQ(d->auth_user, "");
  EXPECT_EQ(d->received_ms, 1);
  // The same bytes labelled version 2 lack the auth_user field: corrupt, never misread.
  raw.bytes[0] = 2;
  ExpectDataLoss(raw.bytes, "v1 body under version 2");
}

TEST(EnvelopeTest, OutOfRangeFieldsAreDataLoss) {
  ExpectDataLoss(Header(/*ret=*/3).bytes, "ret 3");
  ExpectDataLoss(Header(0, /*body=*/3).bytes, "body 3");
  ExpectDataLoss(Header(0, 0, /*utf8=*/2).bytes, "smtputf8 2");
  auto rcpt = [](uint64_t notify, uint64_t state, uint64_t attempts) {
    Raw r = Header(0, 0, 0, 1);
    r.Str("r@y").Varint(notify).Str("").Varint(state).Varint(attempts);
    return r.bytes;
  };
  ASSERT_TRUE(DecodeEnvelope(rcpt(15, 3, 0xffffffffu)).ok());
  ExpectDataLoss(rcpt(16, 0, 0), "notify 16");
  ExpectDataLoss(rcpt(0, 4, 0), "state 4");
  ExpectDataLoss(rcpt(0, 0, 0x100000000ull), "attempts 2^32");
}

TEST(EnvelopeTest, HugeCountsAndLengthsAreDataLoss) {
  // A recipient count far beyond what the input could hold must not allocate.
  ExpectDataLoss(Header(0, 0, 0, uint64_t{1} << 40).bytes, "count 2^40");
  ExpectDataLoss(Header(0, 0, 0, std::numeric_limits<uint64_t>::max()).bytes, "count max");
  ExpectDataLoss(Header(0, 0, 0, 5).bytes, "count 5 with no recipients");
  Raw huge_string;
  huge_string.Byte(2).Varint(std::numeric_limits<uint64_t>::max()).Str("x");
  ExpectDataLoss(huge_string.bytes, "string length max");
  Raw long_string;
  long_string.Byte(2).Varint(1000).Str("short");
  ExpectDataLoss(long_string.bytes, "string length past end");
  // A varint that never terminates.
  std::string endless(1, '\x01');
  endless.append(20, '\x80');
  ExpectDataLoss(endless, "unterminated varint");
  std::string eleven(1, '\x01');
  eleven.append(10, '\xff');
  eleven.push_back('\x01');
  ExpectDataLoss(eleven, "11-byte varint");
}

TEST(EnvelopeTest, FlippedBytesNeverCrash) {
  const std::string good = EncodeEnvelope(FullEnvelope());
  size_t decoded_ok = 0;
  for (size_t i = 0; i < good.size(); ++i) {
    for (uint8_t mask : {0x01, 0x02, 0x10, 0x40, 0x7f, 0x80, 0xff}) {
      std::string bad = good;
      bad[i] = static_cast<char>(bad[i] ^ mask);
      auto r = DecodeEnvelope(bad);
      if (r.ok()) {
        ++decoded_ok;
        // Whatever decodes must be a self-consistent envelope.
        auto again = DecodeEnvelope(EncodeEnvelope(*r));
        ASSERT_TRUE(again.ok());
        EXPECT_EQ(*again, *r);
      } else {
        EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << i << " " << int{mask};
      }
    }
  }
  // Flipping bits inside string payloads yields different but valid envelopes.
  EXPECT_GT(decoded_ok, 0u);
}

TEST(EnvelopeTest, RandomGarbageNeverCrashes) {
  std::mt19937 rng(4242);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> len(0, 200);
  for (int iter = 0; iter < 20000; ++iter) {
    std::string bytes(len(rng), '\0');
    for (char& c : bytes) c = static_cast<char>(byte(rng));
    // Get past the version check, for both versions.
    if (!bytes.empty() && iter % 2 == 0) bytes[0] = static_cast<char>(1 + (iter / 2) % 2);
    auto r = DecodeEnvelope(bytes);
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
    }
  }
}

}  // namespace
}  // namespace mta::queue
