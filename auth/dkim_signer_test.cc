// Tests for the DKIM signer: signatures checked with BoringSSL against the canonical data,
// the RFC 8463 Appendix A test vector, header selection, folding and key loading errors.
//
// Hand-written like the code under test: no Debian C/C++ DKIM signing library fits an
// io_uring shard design (libopendkim is milter-oriented, with its own DNS and threading).
// Independent verifiers (python3-dkim, opendkim-testmsg) run in
// tests/integration/dkim_verify_test.py.
#include "auth/dkim_signer.h"

#include <openssl/base64.h>
#include <openssl/bio.h>
#include <openssl/bytestring.h>
#include <openssl/cipher.h>
#include <openssl/curve25519.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "auth/dkim_canon.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mta::auth {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string Msg(const absl::Status& status) { return std::string(status.message()); }

// ---------------------------------------------------------------------------------------
// Keys and files.

bssl::UniquePtr<EVP_PKEY> GenerateKey(int type, int rsa_bits = 2048) {
  bssl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_id(type, nullptr));
  if (ctx == nullptr || EVP_PKEY_keygen_init(ctx.get()) != 1) return nullptr;
  if (type == EVP_PKEY_RSA && EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.get(), rsa_bits) != 1) {
    return nullptr;
  }
  if (type == EVP_PKEY_EC &&
      EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx.get(), NID_X9_62_prime256v1) != 1) {
    return nullptr;
  }
  EVP_PKEY* key = nullptr;
  if (EVP_PKEY_keygen(ctx.get(), &key) != 1) return nullptr;
  return bssl::UniquePtr<EVP_PKEY>(key);
}

enum class PemFormat { kPkcs1, kPkcs8, kPkcs8Encrypted };

std::string ToPem(EVP_PKEY* key, PemFormat format) {
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  int ok = 0;
  switch (format) {
    case PemFormat::kPkcs1:
      ok = PEM_write_bio_RSAPrivateKey(bio.get(), EVP_PKEY_get0_RSA(key), nullptr, nullptr, 0,
                                       nullptr, nullptr);
      break;
    case PemFormat::kPkcs8:
      ok = PEM_write_bio_PKCS8PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
      break;
    case PemFormat::kPkcs8Encrypted: {
      char password[] = "secret";
      ok = PEM_write_bio_PKCS8PrivateKey(bio.get(), key, EVP_aes_256_cbc(), password,
                                         sizeof(password) - 1, nullptr, nullptr);
      break;
    }
  }
  EXPECT_EQ(ok, 1);
  const uint8_t* data = nullptr;
  size_t len = 0;
  BIO_mem_contents(bio.get(), &data, &len);
  return std::string(reinterpret_cast<const char*>(data), len);
}

std::string TempPath(absl::string_view name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return absl::StrCat(dir != nullptr ? dir : "/tmp", "/", name);
}

std::string WriteFile(absl::string_view name, absl::string_view content) {
  const std::string path = TempPath(name);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
  return path;
}

// One RSA-2048 and one Ed25519 key for the whole binary (RSA key generation is slow).
const DkimKey& RsaKey() {
  static const DkimKey* key = [] {
    bssl::UniquePtr<EVP_PKEY> pkey = GenerateKey(EVP_PKEY_RSA);
    absl::StatusOr<DkimKey> parsed =
        ParseDkimKey("example.com", "rsa2026", ToPem(pkey.get(), PemFormat::kPkcs8));
    EXPECT_TRUE(parsed.ok()) << parsed.status();
    return new DkimKey(std::move(parsed).value());
  }();
  return *key;
}

const DkimKey& Ed25519Key() {
  static const DkimKey* key = [] {
    bssl::UniquePtr<EVP_PKEY> pkey = GenerateKey(EVP_PKEY_ED25519);
    absl::StatusOr<DkimKey> parsed =
        ParseDkimKey("example.com", "ed2026", ToPem(pkey.get(), PemFormat::kPkcs8));
    EXPECT_TRUE(parsed.ok()) << parsed.status();
    return new DkimKey(std::move(parsed).value());
  }();
  return *key;
}

std::string Unbase64(absl::string_view text) {
  std::string clean;
  for (char c : text) {
    if (!absl::ascii_isspace(c)) clean.push_back(c);
  }
  size_t max_len = 0;
  if (!EVP_DecodedLength(&max_len, clean.size())) return "";
  std::string out(max_len, '\0');
  size_t len = 0;
  if (!EVP_DecodeBase64(reinterpret_cast<uint8_t*>(out.data()), &len, out.size(),
                        reinterpret_cast<const uint8_t*>(clean.data()), clean.size())) {
    return "";
  }
  out.resize(len);
  return out;
}

// ---------------------------------------------------------------------------------------
// A small verifier written from RFC 6376 section 6 (for the test only; the integration test
// checks against python3-dkim and OpenDKIM as well).

// Parses a tag-list (RFC 6376 3.2); FWS is removed from every value.
std::map<std::string, std::string> ParseTags(absl::string_view list) {
  std::map<std::string, std::string> tags;
  for (absl::string_view piece : absl::StrSplit(list, ';')) {
    piece = absl::StripAsciiWhitespace(piece);
    if (piece.empty()) continue;
    const size_t eq = piece.find('=');
    if (eq == absl::string_view::npos) continue;
    std::string value;
    for (char c : piece.substr(eq + 1)) {
      if (!absl::ascii_isspace(c)) value.push_back(c);
    }
    tags[std::string(absl::StripAsciiWhitespace(piece.substr(0, eq)))] = value;
  }
  return tags;
}

// The field with the value of its b= tag deleted (RFC 6376 3.7).
std::string WithoutSignature(absl::string_view raw) {
  size_t start = raw.find(':') + 1;
  while (start < raw.size()) {
    size_t end = raw.find(';', start);
    if (end == absl::string_view::npos) end = raw.size() - (absl::EndsWith(raw, "\r\n") ? 2 : 0);
    absl::string_view piece = raw.substr(start, end - start);
    const size_t name_at = piece.find_first_not_of(" \t\r\n");
    if (name_at != absl::string_view::npos && piece[name_at] == 'b') {
      const size_t eq = piece.find('=', name_at);
      if (eq != absl::string_view::npos &&
          absl::StripAsciiWhitespace(piece.substr(name_at + 1, eq - name_at - 1)).empty()) {
        return absl::StrCat(raw.substr(0, start + eq + 1), raw.substr(end));
      }
    }
    start = end + 1;
  }
  return std::string(raw);
}

struct PublicKey {
  std::string type;  // "rsa" or "ed25519"
  std::string p;     // raw p= bytes
};

PublicKey ParseRecord(absl::string_view record) {
  std::map<std::string, std::string> tags = ParseTags(record);
  return {tags["k"], Unbase64(tags["p"])};
}

// Verifies the `index`-th DKIM-Signature field (from the top) of `message`.
absl::Status Verify(absl::string_view message, const PublicKey& key, size_t index = 0) {
  absl::StatusOr<DkimMessageParts> parts = DkimSplitMessage(message);
  if (!parts.ok()) return parts.status();
  const DkimHeaderField* signature = nullptr;
  size_t seen = 0;
  for (const DkimHeaderField& field : parts->headers) {
    if (absl::EqualsIgnoreCase(field.name, "DKIM-Signature") && seen++ == index) {
      signature = &field;
    }
  }
  if (signature == nullptr) return absl::NotFoundError("no DKIM-Signature");
  std::map<std::string, std::string> tags =
      ParseTags(signature->raw.substr(signature->raw.find(':') + 1));
  std::vector<std::string> c = absl::StrSplit(tags["c"], '/');
  if (c.size() == 1) c.push_back("simple");
  const DkimCanonicalization header_c =
      c[0] == "relaxed" ? DkimCanonicalization::kRelaxed : DkimCanonicalization::kSimple;
  const DkimCanonicalization body_c =
      c[1] == "relaxed" ? DkimCanonicalization::kRelaxed : DkimCanonicalization::kSimple;

  const std::string body = DkimCanonicalizeBody(body_c, parts->body);
  uint8_t body_hash[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(body.data()), body.size(), body_hash);
  if (Unbase64(tags["bh"]) != std::string(reinterpret_cast<char*>(body_hash), 32)) {
    return absl::DataLossError("body hash mismatch");
  }

  std::string data;
  std::map<std::string, size_t> used;
  for (absl::string_view name : absl::StrSplit(tags["h"], ':')) {
    std::vector<const DkimHeaderField*> instances;
    for (const DkimHeaderField& field : parts->headers) {
      if (absl::EqualsIgnoreCase(field.name, name)) instances.push_back(&field);
    }
    size_t& n = used[absl::AsciiStrToLower(name)];
    if (n < instances.size()) {
      DkimCanonicalizeHeader(header_c, instances[instances.size() - 1 - n]->raw, &data);
    }
    ++n;
  }
  DkimCanonicalizeHeader(header_c, WithoutSignature(signature->raw), &data);
  data.resize(data.size() - 2);
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(data.data()), data.size(), digest);

  const std::string sig = Unbase64(tags["b"]);
  const uint8_t* sig_bytes = reinterpret_cast<const uint8_t*>(sig.data());
  if (key.type == "ed25519") {
    if (tags["a"] != "ed25519-sha256") return absl::InvalidArgumentError("a= is not ed25519");
    if (key.p.size() != 32 || sig.size() != 64) return absl::InvalidArgumentError("bad sizes");
    if (ED25519_verify(digest, sizeof(digest), sig_bytes,
                       reinterpret_cast<const uint8_t*>(key.p.data())) != 1) {
      return absl::PermissionDeniedError("Ed25519 signature does not verify");
    }
    return absl::OkStatus();
  }
  if (tags["a"] != "rsa-sha256") return absl::InvalidArgumentError("a= is not rsa-sha256");
  CBS cbs;
  CBS_init(&cbs, reinterpret_cast<const uint8_t*>(key.p.data()), key.p.size());
  bssl::UniquePtr<EVP_PKEY> pkey(EVP_parse_public_key(&cbs));
  if (pkey == nullptr || EVP_PKEY_id(pkey.get()) != EVP_PKEY_RSA) {
    return absl::InvalidArgumentError("bad RSA public key");
  }
  if (RSA_verify(NID_sha256, digest, sizeof(digest), sig_bytes, sig.size(),
                 EVP_PKEY_get0_RSA(pkey.get())) != 1) {
    return absl::PermissionDeniedError("RSA signature does not verify");
  }
  return absl::OkStatus();
}

PublicKey PublicKeyOf(const DkimKey& key) {
  absl::StatusOr<std::string> record = DkimPublicRecord(key);
  EXPECT_TRUE(record.ok()) << record.status();
  return ParseRecord(record.value_or(""));
}

std::map<std::string, std::string> TagsOf(absl::string_view field) {
  return ParseTags(field.substr(field.find(':') + 1));
}

// ---------------------------------------------------------------------------------------
// Messages.

constexpr absl::string_view kMessage =
    "Received: from a.example by b.example; Mon, 1 Dec 2026 10:00:00 +0000\r\n"
    "From: Alice <alice@example.com>\r\n"
    "To: Bob <bob@example.net>,\r\n"
    "\tCarol <carol@example.net>\r\n"
    "Subject: Quarterly   report\t\r\n"
    "Date: Mon, 1 Dec 2026 10:00:00 +0000\r\n"
    "Message-ID: <1@example.com>\r\n"
    "Comments: first\r\n"
    "Comments: second\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Caf\xc3\xa9 au lait  \t\r\n"
    "\r\n"
    "A line with trailing whitespace   \r\n"
    "\r\n"
    "\r\n";

DkimSignOptions FixedOptions() {
  DkimSignOptions options;
  options.now = absl::FromUnixSeconds(1796112000);
  return options;
}

absl::StatusOr<std::string> SignAndPrepend(const DkimKey& key, const DkimSignOptions& options,
                                           absl::string_view message) {
  absl::StatusOr<std::string> field = DkimSign(key, options, message);
  if (!field.ok()) return field.status();
  return absl::StrCat(*field, message);
}

// ---------------------------------------------------------------------------------------

struct Params {
  bool ed25519;
  DkimCanonicalization header;
  DkimCanonicalization body;
};

class DkimRoundTripTest : public ::testing::TestWithParam<Params> {
 protected:
  const DkimKey& key() const { return GetParam().ed25519 ? Ed25519Key() : RsaKey(); }
  DkimSignOptions options() const {
    DkimSignOptions o = FixedOptions();
    o.header_canonicalization = GetParam().header;
    o.body_canonicalization = GetParam().body;
    o.signed_headers.push_back("comments");
    return o;
  }
};

TEST_P(DkimRoundTripTest, SignatureVerifies) {
  const std::vector<std::string> messages = {
      std::string(kMessage),
      "From: a@example.com\r\n\r\n",
      "From: a@example.com\r\n",
      "From: a@example.com\r\nSubject: no final newline in body\r\n\r\nlast line",
      absl::StrCat("From: a@example.com\r\nSubject: long\r\n\r\n", std::string(5000, 'x'), "\r\n",
                   std::string(200000, 'y'), "  \r\n"),
  };
  for (const std::string& message : messages) {
    absl::StatusOr<std::string> signed_message = SignAndPrepend(key(), options(), message);
    ASSERT_TRUE(signed_message.ok()) << signed_message.status();
    EXPECT_TRUE(Verify(*signed_message, PublicKeyOf(key())).ok())
        << Verify(*signed_message, PublicKeyOf(key())) << "\n"
        << signed_message->substr(0, 2000);
  }
}

TEST_P(DkimRoundTripTest, TamperingIsDetected) {
  absl::StatusOr<std::string> signed_message = SignAndPrepend(key(), options(), kMessage);
  ASSERT_TRUE(signed_message.ok()) << signed_message.status();
  const PublicKey pub = PublicKeyOf(key());
  ASSERT_TRUE(Verify(*signed_message, pub).ok());

  // Body changed.
  EXPECT_FALSE(Verify(absl::StrReplaceAll(*signed_message, {{"au lait", "au loot"}}), pub).ok());
  // A second From or Subject added above (over-signed), or a Cc added (absence signed).
  const size_t at = signed_message->find("Received:");
  for (absl::string_view added :
       {"From: Mallory <m@evil.example>\r\n", "Subject: Urgent\r\n", "Cc: x@evil.example\r\n",
        "To: y@evil.example\r\n", "Reply-To: z@evil.example\r\n"}) {
    std::string tampered = *signed_message;
    tampered.insert(at, std::string(added));
    EXPECT_FALSE(Verify(tampered, pub).ok()) << added;
  }
  // The two Comments fields swapped: signed bottom-up, so order matters.
  std::string swapped = absl::StrReplaceAll(
      *signed_message,
      {{"Comments: first", "Comments: XXXX"}, {"Comments: second", "Comments: first"}});
  swapped = absl::StrReplaceAll(swapped, {{"Comments: XXXX", "Comments: second"}});
  EXPECT_FALSE(Verify(swapped, pub).ok());
  // A header field that is not signed may be added.
  std::string unsigned_added = *signed_message;
  unsigned_added.insert(at, "X-Spam-Score: 0\r\n");
  EXPECT_TRUE(Verify(unsigned_added, pub).ok());
}

TEST_P(DkimRoundTripTest, WhitespaceChangesSurviveOnlyRelaxed) {
  absl::StatusOr<std::string> signed_message = SignAndPrepend(key(), options(), kMessage);
  ASSERT_TRUE(signed_message.ok()) << signed_message.status();
  const PublicKey pub = PublicKeyOf(key());
  const std::string refolded_header = absl::StrReplaceAll(
      *signed_message,
      {{"Subject: Quarterly   report\t\r\n", "Subject:  Quarterly\r\n report\r\n"}});
  EXPECT_EQ(Verify(refolded_header, pub).ok(), GetParam().header == DkimCanonicalization::kRelaxed);
  const std::string respaced_body = absl::StrReplaceAll(
      *signed_message, {{"trailing whitespace   \r\n", "trailing  whitespace\r\n"}});
  EXPECT_EQ(Verify(respaced_body, pub).ok(), GetParam().body == DkimCanonicalization::kRelaxed);
  // Empty lines added at the end never matter.
  EXPECT_TRUE(Verify(*signed_message + "\r\n\r\n", pub).ok());
}

INSTANTIATE_TEST_SUITE_P(
    AllModes, DkimRoundTripTest,
    ::testing::Values(Params{false, DkimCanonicalization::kRelaxed, DkimCanonicalization::kRelaxed},
                      Params{false, DkimCanonicalization::kSimple, DkimCanonicalization::kSimple},
                      Params{true, DkimCanonicalization::kRelaxed, DkimCanonicalization::kRelaxed},
                      Params{true, DkimCanonicalization::kSimple, DkimCanonicalization::kSimple},
                      Params{true, DkimCanonicalization::kRelaxed, DkimCanonicalization::kSimple},
                      Params{false, DkimCanonicalization::kSimple, DkimCanonicalization::kRelaxed}),
    [](const ::testing::TestParamInfo<Params>& info) {
      return absl::StrCat(info.param.ed25519 ? "Ed25519" : "Rsa",
                          DkimCanonicalizationName(info.param.header), "_",
                          DkimCanonicalizationName(info.param.body));
    });

TEST(DkimSignerTest, FieldLayout) {
  for (const DkimKey* key : {&RsaKey(), &Ed25519Key()}) {
    DkimSignOptions options = FixedOptions();
    options.expiry = absl::Hours(24 * 7);
    absl::StatusOr<std::string> field = DkimSign(*key, options, kMessage);
    ASSERT_TRUE(field.ok()) << field.status();
    EXPECT_THAT(*field, StartsWith("DKIM-Signature: v=1; a="));
    ASSERT_TRUE(absl::EndsWith(*field, "\r\n"));
    // Folded with CRLF HTAB, every line under 78 columns (HTAB counted as 8).
    std::vector<absl::string_view> lines =
        absl::StrSplit(absl::string_view(*field).substr(0, field->size() - 2), "\r\n");
    EXPECT_GT(lines.size(), 3u);
    for (size_t i = 0; i < lines.size(); ++i) {
      size_t columns = 0;
      for (char c : lines[i]) columns += c == '\t' ? 8 : 1;
      EXPECT_LT(columns, 78u) << lines[i];
      if (i > 0) {
        EXPECT_EQ(lines[i][0], '\t') << lines[i];
      }
      EXPECT_FALSE(absl::EndsWith(lines[i], " ")) << lines[i];
      EXPECT_EQ(lines[i].find('\n'), absl::string_view::npos);
    }
    std::map<std::string, std::string> tags = TagsOf(*field);
    EXPECT_EQ(tags["v"], "1");
    EXPECT_EQ(tags["a"], key == &RsaKey() ? "rsa-sha256" : "ed25519-sha256");
    EXPECT_EQ(tags["c"], "relaxed/relaxed");
    EXPECT_EQ(tags["d"], "example.com");
    EXPECT_EQ(tags["s"], key->selector);
    EXPECT_EQ(tags["t"], "1796112000");
    EXPECT_EQ(tags["x"], "1796716800");
    EXPECT_EQ(tags.count("l"), 0u);
    EXPECT_EQ(Unbase64(tags["b"]).size(), key == &RsaKey() ? 256u : 64u);
    EXPECT_EQ(Unbase64(tags["bh"]).size(), 32u);
    // b= is the last tag.
    EXPECT_EQ(field->rfind(';'), field->find(';', field->find("bh=")));
  }
}

TEST(DkimSignerTest, HeaderListSignsEveryInstanceAbsenceAndOversigns) {
  DkimSignOptions options = FixedOptions();
  absl::StatusOr<std::string> field = DkimSign(RsaKey(), options, kMessage);
  ASSERT_TRUE(field.ok()) << field.status();
  // Defaults: every default name (absent ones once), then from, to and subject once more
  // (in signed-list order).
  EXPECT_EQ(TagsOf(*field)["h"],
            "from:to:cc:subject:date:message-id:reply-to:in-reply-to:references:mime-version:"
            "content-type:content-transfer-encoding:list-unsubscribe:list-unsubscribe-post:"
            "from:to:subject");

  options.signed_headers = {"From", "Comments", "X-Absent"};
  options.oversigned_headers = {"from", "Date"};
  field = DkimSign(RsaKey(), options, kMessage);
  ASSERT_TRUE(field.ok()) << field.status();
  EXPECT_EQ(TagsOf(*field)["h"], "from:comments:comments:x-absent:date:from:date");
  const std::string signed_message = *field + std::string(kMessage);
  EXPECT_TRUE(Verify(signed_message, PublicKeyOf(RsaKey())).ok());
}

TEST(DkimSignerTest, TimeAndExpiry) {
  DkimSignOptions options;  // now unset: the current time
  const int64_t before = absl::ToUnixSeconds(absl::Now());
  absl::StatusOr<std::string> field = DkimSign(Ed25519Key(), options, kMessage);
  ASSERT_TRUE(field.ok()) << field.status();
  const int64_t t = std::stoll(TagsOf(*field)["t"]);
  EXPECT_GE(t, before);
  EXPECT_LE(t, before + 5);
  EXPECT_EQ(TagsOf(*field).count("x"), 0u);

  options = FixedOptions();
  options.expiry = absl::Milliseconds(1500);  // rounded up to whole seconds
  field = DkimSign(Ed25519Key(), options, kMessage);
  ASSERT_TRUE(field.ok()) << field.status();
  EXPECT_EQ(TagsOf(*field)["x"], "1796112002");
}

TEST(DkimSignerTest, DualSigningGivesIndependentSignatures) {
  std::vector<DkimKey> keys;
  for (const DkimKey* k : {&RsaKey(), &Ed25519Key()}) {
    keys.push_back(DkimKey{k->domain, k->selector, k->algorithm, bssl::UpRef(k->pkey)});
  }
  absl::StatusOr<std::string> fields = DkimSignAll(keys, FixedOptions(), kMessage);
  ASSERT_TRUE(fields.ok()) << fields.status();
  const std::string signed_message = *fields + std::string(kMessage);
  EXPECT_TRUE(Verify(signed_message, PublicKeyOf(RsaKey()), 0).ok());
  EXPECT_TRUE(Verify(signed_message, PublicKeyOf(Ed25519Key()), 1).ok());
  EXPECT_FALSE(Verify(signed_message, PublicKeyOf(Ed25519Key()), 0).ok());
  // Each equals the single-key signature for the same input: neither covers the other.
  absl::StatusOr<std::string> rsa_only = DkimSign(RsaKey(), FixedOptions(), kMessage);
  absl::StatusOr<std::string> ed_only = DkimSign(Ed25519Key(), FixedOptions(), kMessage);
  ASSERT_TRUE(rsa_only.ok() && ed_only.ok());
  EXPECT_EQ(*fields, *rsa_only + *ed_only);  // RSA PKCS#1 v1.5 and Ed25519 are deterministic
}

TEST(DkimSignerTest, SigningErrors) {
  const DkimSignOptions options = FixedOptions();
  absl::StatusOr<std::string> field = DkimSign(RsaKey(), options, "To: b@example.net\r\n\r\nx\r\n");
  EXPECT_EQ(field.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(field.status()), HasSubstr("no From header field"));

  field = DkimSign(RsaKey(), options, "From: a\nTo: b\r\n\r\n");
  EXPECT_EQ(field.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(field.status()), HasSubstr("bare LF"));

  DkimSignOptions no_from = options;
  no_from.signed_headers = {"to", "subject"};
  no_from.oversigned_headers = {};
  field = DkimSign(RsaKey(), no_from, kMessage);
  EXPECT_THAT(Msg(field.status()), HasSubstr("must include From"));

  DkimSignOptions bad_name = options;
  bad_name.signed_headers.push_back("bad name");
  field = DkimSign(RsaKey(), bad_name, kMessage);
  EXPECT_THAT(Msg(field.status()), HasSubstr("invalid header field name"));

  DkimSignOptions bad_expiry = options;
  bad_expiry.expiry = absl::ZeroDuration();
  field = DkimSign(RsaKey(), bad_expiry, kMessage);
  EXPECT_THAT(Msg(field.status()), HasSubstr("expiry must be positive"));

  DkimSignOptions old = options;
  old.now = absl::FromUnixSeconds(-10);
  field = DkimSign(RsaKey(), old, kMessage);
  EXPECT_THAT(Msg(field.status()), HasSubstr("before 1970"));

  for (absl::string_view selector : {"", "sel;x=1", "a b", "sel.", "a..b"}) {
    DkimKey key{"example.com", std::string(selector), DkimKey::Algorithm::kEd25519Sha256,
                bssl::UpRef(Ed25519Key().pkey)};
    field = DkimSign(key, options, kMessage);
    EXPECT_EQ(field.status().code(), absl::StatusCode::kInvalidArgument) << selector;
    EXPECT_THAT(Msg(field.status()), HasSubstr("DKIM selector")) << selector;
  }
  DkimKey mismatched{"example.com", "sel", DkimKey::Algorithm::kRsaSha256,
                     bssl::UpRef(Ed25519Key().pkey)};
  EXPECT_THAT(Msg(DkimSign(mismatched, options, kMessage).status()), HasSubstr("does not match"));
  EXPECT_THAT(Msg(DkimSignAll({}, options, kMessage).status()), HasSubstr("no DKIM key"));
}

// ---------------------------------------------------------------------------------------
// RFC 8463 Appendix A.

// A.1: the Ed25519 private key (the 32-byte seed).
constexpr absl::string_view kRfc8463Seed = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
// A.2: the public keys' records.
constexpr absl::string_view kRfc8463Ed25519Record =
    "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
constexpr absl::string_view kRfc8463RsaRecord =
    "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWR"
    "iGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutAC"
    "DfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3"
    "Ip3G+2kryOTIKT+l/K4w3QIDAQAB";
// A.3: the signed message, lines as published (continuation lines indented by one space).
constexpr absl::string_view kRfc8463Signatures =
    "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
    " d=football.example.com; i=@football.example.com;\r\n"
    " q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
    " subject : date : message-id : from : subject : date;\r\n"
    " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
    " b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n"
    " Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\n"
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\r\n"
    " d=football.example.com; i=@football.example.com;\r\n"
    " q=dns/txt; s=test; t=1528637909; h=from : to : subject :\r\n"
    " date : message-id : from : subject : date;\r\n"
    " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
    " b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3\r\n"
    " DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz\r\n"
    " dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=\r\n";
constexpr absl::string_view kRfc8463Message =
    "From: Joe SixPack <joe@football.example.com>\r\n"
    "To: Suzie Q <suzie@shopping.example.net>\r\n"
    "Subject: Is dinner ready?\r\n"
    "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    "\r\n"
    "Hi.\r\n"
    "\r\n"
    "We lost the game.  Are you hungry yet?\r\n"
    "\r\n"
    "Joe.\r\n"
    "\r\n";
constexpr absl::string_view kRfc8463Ed25519B =
    "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11BusFa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==";

// The seed as a PKCS#8 PEM file, as `openssl genpkey -algorithm ed25519` writes one.
std::string Rfc8463Pem() {
  const std::string der = absl::StrCat(absl::HexStringToBytes("302e020100300506032b657004220420"),
                                       Unbase64(kRfc8463Seed));
  std::string b64;
  absl::Base64Escape(der, &b64);
  return absl::StrCat("-----BEGIN PRIVATE KEY-----\n", b64, "\n-----END PRIVATE KEY-----\n");
}

DkimKey Rfc8463Key() {
  absl::StatusOr<DkimKey> key =
      LoadDkimKey("football.example.com", "brisbane", WriteFile("rfc8463.pem", Rfc8463Pem()));
  EXPECT_TRUE(key.ok()) << key.status();
  return std::move(key).value();
}

TEST(DkimRfc8463Test, PublicRecordMatchesAppendixA2) {
  const DkimKey key = Rfc8463Key();
  EXPECT_EQ(key.algorithm, DkimKey::Algorithm::kEd25519Sha256);
  absl::StatusOr<std::string> record = DkimPublicRecord(key);
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(*record, kRfc8463Ed25519Record);
}

TEST(DkimRfc8463Test, PublishedSignaturesVerifyWithOurCanonicalization) {
  const std::string message = absl::StrCat(kRfc8463Signatures, kRfc8463Message);
  EXPECT_TRUE(Verify(message, ParseRecord(kRfc8463Ed25519Record), 0).ok())
      << Verify(message, ParseRecord(kRfc8463Ed25519Record), 0);
  EXPECT_TRUE(Verify(message, ParseRecord(kRfc8463RsaRecord), 1).ok())
      << Verify(message, ParseRecord(kRfc8463RsaRecord), 1);
}

TEST(DkimRfc8463Test, ReproducesTheEd25519SignatureExactly) {
  // The canonical header data of A.3's first signature: the signed fields in h= order
  // (bottom-up; the last three listings select nothing), then the DKIM-Signature field
  // without its b= value, all relaxed.
  const DkimKey key = Rfc8463Key();
  absl::StatusOr<DkimMessageParts> parts = DkimSplitMessage(kRfc8463Message);
  ASSERT_TRUE(parts.ok());
  std::string data;
  for (const DkimHeaderField& field : parts->headers) {
    DkimCanonicalizeHeader(DkimCanonicalization::kRelaxed, field.raw, &data);
  }
  const absl::string_view ed_field =
      kRfc8463Signatures.substr(0, kRfc8463Signatures.find("DKIM-Signature", 1));
  DkimCanonicalizeHeader(DkimCanonicalization::kRelaxed, WithoutSignature(ed_field), &data);
  data.resize(data.size() - 2);
  EXPECT_EQ(data,
            "from:Joe SixPack <joe@football.example.com>\r\n"
            "to:Suzie Q <suzie@shopping.example.net>\r\n"
            "subject:Is dinner ready?\r\n"
            "date:Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
            "message-id:<20030712040037.46341.5F8J@football.example.com>\r\n"
            "dkim-signature:v=1; a=ed25519-sha256; c=relaxed/relaxed; d=football.example.com; "
            "i=@football.example.com; q=dns/txt; s=brisbane; t=1528637909; h=from : to : "
            "subject : date : message-id : from : subject : date; "
            "bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=; b=");
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(data.data()), data.size(), digest);
  absl::StatusOr<std::string> signature =
      DkimSignDigest(key, absl::string_view(reinterpret_cast<char*>(digest), sizeof(digest)));
  ASSERT_TRUE(signature.ok()) << signature.status();
  std::string b;
  absl::Base64Escape(*signature, &b);
  EXPECT_EQ(b, kRfc8463Ed25519B);
}

TEST(DkimRfc8463Test, OurSignatureOfTheExampleHasTheSameBodyHashAndHeaderList) {
  const DkimKey key = Rfc8463Key();
  DkimSignOptions options;
  options.now = absl::FromUnixSeconds(1528637909);
  options.signed_headers = {"from", "to", "subject", "date", "message-id"};
  options.oversigned_headers = {"from", "subject", "date"};
  absl::StatusOr<std::string> field = DkimSign(key, options, kRfc8463Message);
  ASSERT_TRUE(field.ok()) << field.status();
  std::map<std::string, std::string> tags = TagsOf(*field);
  EXPECT_EQ(tags["bh"], "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
  EXPECT_EQ(tags["h"], "from:to:subject:date:message-id:from:subject:date");
  EXPECT_EQ(tags["t"], "1528637909");
  EXPECT_TRUE(
      Verify(*field + std::string(kRfc8463Message), ParseRecord(kRfc8463Ed25519Record)).ok());
}

// ---------------------------------------------------------------------------------------
// Key loading.

TEST(DkimKeyTest, LoadsRsaPkcs1Pkcs8AndEd25519) {
  bssl::UniquePtr<EVP_PKEY> rsa = GenerateKey(EVP_PKEY_RSA, 2048);
  bssl::UniquePtr<EVP_PKEY> ed = GenerateKey(EVP_PKEY_ED25519);
  const std::string pkcs1 = ToPem(rsa.get(), PemFormat::kPkcs1);
  const std::string pkcs8 = ToPem(rsa.get(), PemFormat::kPkcs8);
  EXPECT_THAT(pkcs1, HasSubstr("BEGIN RSA PRIVATE KEY"));
  EXPECT_THAT(pkcs8, HasSubstr("BEGIN PRIVATE KEY"));
  for (const std::string& pem : {pkcs1, pkcs8}) {
    absl::StatusOr<DkimKey> key = LoadDkimKey("example.com", "s1", WriteFile("rsa.pem", pem));
    ASSERT_TRUE(key.ok()) << key.status();
    EXPECT_EQ(key->algorithm, DkimKey::Algorithm::kRsaSha256);
    EXPECT_EQ(key->domain, "example.com");
    EXPECT_EQ(key->selector, "s1");
    absl::StatusOr<std::string> record = DkimPublicRecord(*key);
    ASSERT_TRUE(record.ok());
    EXPECT_THAT(*record,
                StartsWith("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"));
  }
  absl::StatusOr<DkimKey> key =
      LoadDkimKey("example.com", "s2", WriteFile("ed.pem", ToPem(ed.get(), PemFormat::kPkcs8)));
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->algorithm, DkimKey::Algorithm::kEd25519Sha256);
  absl::StatusOr<std::string> record = DkimPublicRecord(*key);
  ASSERT_TRUE(record.ok());
  EXPECT_THAT(*record, StartsWith("v=DKIM1; k=ed25519; p="));
  EXPECT_EQ(ParseRecord(*record).p.size(), 32u);
}

TEST(DkimKeyTest, Rsa1024IsRejected) {
  bssl::UniquePtr<EVP_PKEY> rsa = GenerateKey(EVP_PKEY_RSA, 1024);
  const std::string path = WriteFile("rsa1024.pem", ToPem(rsa.get(), PemFormat::kPkcs8));
  absl::StatusOr<DkimKey> key = LoadDkimKey("example.com", "s1", path);
  EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(key.status()), HasSubstr(path));
  EXPECT_THAT(Msg(key.status()), HasSubstr("has 1024 bits; DKIM keys must have at least 2048"));
}

TEST(DkimKeyTest, BadFilesGiveClearErrors) {
  absl::StatusOr<DkimKey> key = LoadDkimKey("example.com", "s1", TempPath("does-not-exist.pem"));
  EXPECT_EQ(key.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(key.status()), HasSubstr("No such file or directory"));

  key = LoadDkimKey("example.com", "s1", TempPath(""));
  EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(key.status()), HasSubstr("not a regular file"));

  struct Case {
    std::string content;
    std::string error;
  };
  bssl::UniquePtr<EVP_PKEY> ec = GenerateKey(EVP_PKEY_EC);
  bssl::UniquePtr<EVP_PKEY> ed = GenerateKey(EVP_PKEY_ED25519);
  const Case cases[] = {
      {"", "no PEM block found"},
      {"just some text\n", "no PEM block found"},
      {"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
       "no usable PEM private key"},
      {"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
       "no usable PEM private key"},
      {ToPem(ec.get(), PemFormat::kPkcs8), "unsupported private key type"},
      {ToPem(ed.get(), PemFormat::kPkcs8Encrypted), "encrypted"},
  };
  int i = 0;
  for (const Case& c : cases) {
    const std::string path = WriteFile(absl::StrCat("bad", i++, ".pem"), c.content);
    key = LoadDkimKey("example.com", "s1", path);
    EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument) << c.error;
    EXPECT_THAT(Msg(key.status()), HasSubstr(c.error));
    EXPECT_THAT(Msg(key.status()), HasSubstr(path));
  }

  if (geteuid() != 0) {  // root reads any file
    const std::string path = WriteFile("unreadable.pem", ToPem(ed.get(), PemFormat::kPkcs8));
    chmod(path.c_str(), 0);
    key = LoadDkimKey("example.com", "s1", path);
    EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Msg(key.status()), HasSubstr("Permission denied"));
  }

  const std::string good = WriteFile("good.pem", ToPem(ed.get(), PemFormat::kPkcs8));
  key = LoadDkimKey("exa mple.com", "s1", good);
  EXPECT_THAT(Msg(key.status()), HasSubstr("DKIM domain"));
  key = LoadDkimKey("example.com", "", good);
  EXPECT_THAT(Msg(key.status()), HasSubstr("DKIM selector \"\" is empty"));
}

TEST(DkimKeyTest, ZoneLineSplitsLongRecords) {
  absl::StatusOr<std::string> line = DkimZoneLine(RsaKey());
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_THAT(*line, StartsWith("rsa2026._domainkey.example.com. IN TXT ( \"v=DKIM1; k=rsa; p="));
  std::string joined;
  std::vector<absl::string_view> pieces = absl::StrSplit(*line, '"');
  ASSERT_GE(pieces.size(), 5u);  // at least two strings
  for (size_t i = 1; i < pieces.size(); i += 2) {
    EXPECT_LE(pieces[i].size(), 255u);
    absl::StrAppend(&joined, pieces[i]);
  }
  EXPECT_EQ(joined, DkimPublicRecord(RsaKey()).value());
  EXPECT_EQ(DkimRecordName(Ed25519Key()), "ed2026._domainkey.example.com");
}

}  // namespace
}  // namespace mta::auth
