// dkim.signing configuration, key loading, key choice by From: domain and the signer thread.
#include "mta/server/dkim_signing.h"

#include <openssl/curve25519.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "mta/server/config.h"

namespace mta::server {
namespace {

std::string WriteFile(absl::string_view name, absl::string_view content) {
  const char* dir = std::getenv("TEST_TMPDIR");
  const std::string path = absl::StrCat(dir != nullptr ? dir : "/tmp", "/", name);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
  return path;
}

// A fresh Ed25519 key as PKCS#8 PEM (as `openssl genpkey -algorithm ed25519` writes).
std::string Ed25519Pem() {
  uint8_t pub[32];
  uint8_t priv[64];
  ED25519_keypair(pub, priv);
  const std::string der = absl::StrCat(absl::HexStringToBytes("302e020100300506032b657004220420"),
                                       absl::string_view(reinterpret_cast<const char*>(priv), 32));
  std::string b64;
  absl::Base64Escape(der, &b64);
  return absl::StrCat("-----BEGIN PRIVATE KEY-----\n", b64, "\n-----END PRIVATE KEY-----\n");
}

void ExpectError(const std::string& yaml, absl::string_view fragment) {
  auto parsed = ParseConfig(yaml, "t.yaml");
  ASSERT_FALSE(parsed.ok()) << yaml;
  EXPECT_TRUE(absl::StrContains(parsed.status().message(), fragment))
      << parsed.status().message() << "\nexpected: " << fragment;
}

TEST(DkimConfigTest, DefaultsAreOff) {
  Config c;
  EXPECT_TRUE(c.dkim_signing.empty());
  EXPECT_EQ(c.dkim_on_key_error, "reject");
  EXPECT_EQ(c.dkim_on_sign_error, "tempfail");
  auto parsed = ParseConfig(DefaultConfigYaml(), "<defaults>");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, c);
  EXPECT_TRUE(absl::StrContains(DefaultConfigYaml(), "\ndkim:"));
}

TEST(DkimConfigTest, Parses) {
  auto parsed = ParseConfig(R"(
dkim:
  signing:
    - {domain: Example.COM, selector: rsa1, key_file: /k/rsa.pem}
    - domain: example.com
      selector: ed1
      key_file: /k/ed.pem
      headers: [from, to, subject]
      oversign: [from]
      canonicalization: simple/relaxed
      expire: 7d
  on_key_error: reject
  on_sign_error: tempfail
)",
                            "t.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->dkim_signing.size(), 2u);
  const DkimSigningConfig& a = parsed->dkim_signing[0];
  EXPECT_EQ(a.domain, "example.com");
  EXPECT_EQ(a.selector, "rsa1");
  EXPECT_EQ(a.key_file, "/k/rsa.pem");
  EXPECT_TRUE(a.headers.empty());
  EXPECT_EQ(a.canonicalization, "relaxed/relaxed");
  EXPECT_EQ(a.expire, "");
  const DkimSigningConfig& b = parsed->dkim_signing[1];
  EXPECT_EQ(b.headers, (std::vector<std::string>{"from", "to", "subject"}));
  EXPECT_EQ(b.oversign, (std::vector<std::string>{"from"}));
  EXPECT_EQ(b.canonicalization, "simple/relaxed");
  EXPECT_EQ(b.expire, "7d");
}

TEST(DkimConfigTest, Errors) {
  ExpectError("dkim: []\n", "t.yaml:1:7: dkim: must be a map");
  ExpectError("dkim: {signing: {}}\n", "dkim.signing: must be a list");
  ExpectError("dkim:\n  signing:\n    - {selector: s1, key_file: /k}\n",
              "t.yaml:3:7: dkim.signing[0].domain: must be a domain name");
  ExpectError("dkim:\n  signing:\n    - {domain: ex..com, selector: s1, key_file: /k}\n",
              "dkim.signing[0].domain: must be a domain name");
  ExpectError("dkim:\n  signing:\n    - {domain: example.com, key_file: /k}\n",
              "dkim.signing[0].selector");
  ExpectError("dkim:\n  signing:\n    - {domain: example.com, selector: s1}\n",
              "dkim.signing[0].key_file: must name a PEM private key file");
  ExpectError(
      "dkim:\n  signing:\n    - {domain: example.com, selector: s1, key_file: /k, "
      "canonicalization: relaxed}\n",
      "t.yaml:3:75: dkim.signing[0].canonicalization: must be relaxed/relaxed");
  ExpectError(
      "dkim:\n  signing:\n    - {domain: example.com, selector: s1, key_file: /k, "
      "expire: soon}\n",
      "dkim.signing[0].expire: must be one duration");
  ExpectError(
      "dkim:\n  signing:\n    - {domain: example.com, selector: s1, key_file: /k, "
      "headers: [to, subject]}\n",
      "dkim.signing[0].headers: must include From");
  ExpectError(
      "dkim:\n  signing:\n    - {domain: example.com, selector: s1, key_file: /k, "
      "oversign: [\"bad name\"]}\n",
      "dkim.signing[0].oversign: bad header name");
  ExpectError(
      "dkim:\n  signing:\n    - {domain: example.com, selector: s1, key_file: /k, "
      "color: red}\n",
      "dkim.signing[0].color: unknown key");
  ExpectError(
      "dkim:\n  signing:\n    - {domain: example.com, selector: s1, key_file: /a}\n"
      "    - {domain: EXAMPLE.com, selector: s1, key_file: /b}\n",
      "duplicate domain and selector 's1._domainkey.example.com'");
  ExpectError("dkim: {on_key_error: ignore}\n", "dkim.on_key_error: must be reject");
  ExpectError("dkim: {on_sign_error: send}\n", "dkim.on_sign_error: must be tempfail");
  ExpectError("dkim: {verify: true}\n", "dkim.verify: unknown key");
}

TEST(DkimSigningDomainTest, ChoosesTheFromDomain) {
  EXPECT_EQ(DkimSigningDomain("From: x@Example.COM\r\n\r\nbody\r\n", "b@bounce.net"),
            "example.com");
  EXPECT_EQ(DkimSigningDomain("Received: from a\r\nfrom: \"Doe, J\" <j@Mail.Example.com> "
                              "(work)\r\nTo: y@z\r\n\r\n",
                              ""),
            "mail.example.com");
  // Folded, with a comment holding an '@' and a display name with '<' in quotes.
  EXPECT_EQ(DkimSigningDomain("FROM:\r\n \"a <b@c>\" (x@y.z)\r\n\t<me@d.example>\r\n\r\n", ""),
            "d.example");
  // A bare list: the first address.
  EXPECT_EQ(DkimSigningDomain("From: a@one.example, b@two.example\r\n\r\n", ""), "one.example");
  // A From: in the body does not count.
  EXPECT_EQ(DkimSigningDomain("To: y@z\r\n\r\nFrom: x@example.com\r\n", "s@Env.Example"),
            "env.example");
  // Unparsable or missing From: the envelope sender's domain.
  EXPECT_EQ(DkimSigningDomain("From: undisclosed\r\n\r\n", "s@env.example"), "env.example");
  EXPECT_EQ(DkimSigningDomain("From: <broken@\r\n\r\n", "s@env.example"), "env.example");
  EXPECT_EQ(DkimSigningDomain("Subject: x\r\n\r\n", ""), "");
}

class DkimKeysTest : public ::testing::Test {
 protected:
  Config ConfigWith(const std::string& key_file) {
    Config c;
    c.dkim_signing.push_back({.domain = "example.com", .selector = "ed1", .key_file = key_file});
    c.dkim_signing.push_back({.domain = "example.com",
                              .selector = "ed2",
                              .key_file = key_file,
                              .canonicalization = "simple/simple",
                              .expire = "7d"});
    c.dkim_signing.push_back({.domain = "other.example", .selector = "s", .key_file = key_file});
    return c;
  }
};

TEST_F(DkimKeysTest, LoadsAndFindsExactDomains) {
  auto keys = LoadDkimKeys(ConfigWith(WriteFile("ed.pem", Ed25519Pem())));
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ((*keys)->key_count(), 3u);
  const DkimDomainKeys* example = (*keys)->Find("example.com");
  ASSERT_NE(example, nullptr);
  ASSERT_EQ(example->size(), 2u);  // dual signing, in configuration order
  EXPECT_EQ((*example)[0].key.selector, "ed1");
  EXPECT_EQ((*example)[1].key.selector, "ed2");
  EXPECT_EQ((*example)[1].options.body_canonicalization, auth::DkimCanonicalization::kSimple);
  EXPECT_EQ((*example)[1].options.expiry, absl::Hours(24 * 7));
  EXPECT_EQ((*keys)->Find("sub.example.com"), nullptr);  // no parent-domain match
  EXPECT_EQ((*keys)->Find("com"), nullptr);
  EXPECT_NE((*keys)->Find("other.example"), nullptr);
}

TEST_F(DkimKeysTest, BadKeyFileIsNamed) {
  auto missing = LoadDkimKeys(ConfigWith("/nonexistent/dkim.pem"));
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(
      absl::StrContains(missing.status().message(), "dkim.signing[0] (ed1._domainkey.example.com)"))
      << missing.status();
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "/nonexistent/dkim.pem"))
      << missing.status();
  auto garbage = LoadDkimKeys(ConfigWith(WriteFile("garbage.pem", "not a key\n")));
  ASSERT_FALSE(garbage.ok());
  EXPECT_TRUE(absl::StrContains(garbage.status().message(), "garbage.pem")) << garbage.status();
}

TEST_F(DkimKeysTest, SignRecordPrependsEverySignature) {
  auto keys = LoadDkimKeys(ConfigWith(WriteFile("ed.pem", Ed25519Pem())));
  ASSERT_TRUE(keys.ok()) << keys.status();
  const std::string message =
      "Received: from client by us\r\nFrom: x@example.com\r\nSubject: hi\r\n\r\nbody\r\n";
  queue::SpoolRecord record;
  record.content = message;
  record.envelope.content_bytes = message.size();
  ASSERT_TRUE(DkimSignRecord(*(*keys)->Find("example.com"), &record).ok());
  ASSERT_TRUE(absl::StartsWith(record.content, "DKIM-Signature: v=1; a=ed25519-sha256;"))
      << record.content;
  EXPECT_TRUE(absl::EndsWith(record.content, message));
  EXPECT_EQ(record.envelope.content_bytes, record.content.size());
  const std::string fields = record.content.substr(0, record.content.size() - message.size());
  EXPECT_TRUE(absl::StrContains(fields, "s=ed1;"));
  EXPECT_TRUE(absl::StrContains(fields, "s=ed2;"));
  EXPECT_TRUE(absl::StrContains(fields, "c=simple/simple;"));
  EXPECT_TRUE(absl::StrContains(fields, " x="));
}

TEST_F(DkimKeysTest, ServiceSignsOnItsThreadAndRefusesWhenFull) {
  auto loaded = LoadDkimKeys(ConfigWith(WriteFile("ed.pem", Ed25519Pem())));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  std::shared_ptr<const DkimKeySet> keys = *loaded;
  DkimSigningService service(keys, /*max_pending=*/0);
  EXPECT_EQ(service.keys(), keys);
  auto record = std::make_unique<queue::SpoolRecord>();
  record->content = "From: x@example.com\r\n\r\nbody\r\n";
  absl::Status status;
  std::unique_ptr<queue::SpoolRecord> back;
  service.Sign(std::move(record), keys, "example.com",
               [&](absl::Status s, std::unique_ptr<queue::SpoolRecord> r) {
                 status = s;
                 back = std::move(r);
               });
  // max_pending 0: refused at once, the record handed back unchanged.
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->content, "From: x@example.com\r\n\r\nbody\r\n");

  DkimSigningService roomy(keys);
  absl::Notification done;
  roomy.Sign(std::move(back), keys, "example.com",
             [&](absl::Status s, std::unique_ptr<queue::SpoolRecord> r) {
               status = s;
               back = std::move(r);
               done.Notify();
             });
  done.WaitForNotification();
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_TRUE(absl::StartsWith(back->content, "DKIM-Signature:"));

  // A message the keys cannot sign (no From: field) fails instead of going out unsigned.
  auto unsigned_record = std::make_unique<queue::SpoolRecord>();
  unsigned_record->content = "Subject: no from\r\n\r\nbody\r\n";
  absl::Notification failed;
  roomy.Sign(std::move(unsigned_record), keys, "example.com",
             [&](absl::Status s, std::unique_ptr<queue::SpoolRecord> r) {
               status = s;
               back = std::move(r);
               failed.Notify();
             });
  failed.WaitForNotification();
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(back->content, "Subject: no from\r\n\r\nbody\r\n");
}

}  // namespace
}  // namespace mta::server
