// Shared helpers for the TlsChannel tests: a throwaway PKI generated with BoringSSL, in-memory
// channel pumping, and the TlsChannelTest fixture.
#ifndef AUTH_TLS_CHANNEL_TEST_UTIL_H_
#define AUTH_TLS_CHANNEL_TEST_UTIL_H_

#include <errno.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "auth/tls_channel.h"
#include "auth/tls_context.h"
#include "gtest/gtest.h"

namespace mta::auth {

inline constexpr char kServerName[] = "mx.test.example";

// Status messages as std::string, so that gMock prints them as text.
inline std::string Msg(const absl::Status& status) { return std::string(status.message()); }

#define ASSERT_OK(expr)                                       \
  do {                                                        \
    const ::absl::Status assert_ok_status_ = (expr);          \
    ASSERT_TRUE(assert_ok_status_.ok()) << assert_ok_status_; \
  } while (0)

// ---------------------------------------------------------------------------------------
// A throwaway PKI, generated once per test binary with BoringSSL.

inline bssl::UniquePtr<EVP_PKEY> NewKey(int type) {
  bssl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_id(type, nullptr));
  if (ctx == nullptr || EVP_PKEY_keygen_init(ctx.get()) != 1) return nullptr;
  if (type == EVP_PKEY_EC &&
      EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx.get(), NID_X9_62_prime256v1) != 1) {
    return nullptr;
  }
  if (type == EVP_PKEY_RSA && EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.get(), 2048) != 1) {
    return nullptr;
  }
  EVP_PKEY* key = nullptr;
  if (EVP_PKEY_keygen(ctx.get(), &key) != 1) return nullptr;
  return bssl::UniquePtr<EVP_PKEY>(key);
}

inline bool AddExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX v3;
  X509V3_set_ctx(&v3, issuer, cert, nullptr, nullptr, 0);
  bssl::UniquePtr<X509_EXTENSION> ext(X509V3_EXT_nconf_nid(nullptr, &v3, nid, value));
  return ext != nullptr && X509_add_ext(cert, ext.get(), -1) == 1;
}

struct CertSpec {
  std::string common_name;
  std::string subject_alt_names;  // e.g. "DNS:a.example,IP:127.0.0.1"; "" for none
  bool is_ca = false;
  // Like most self-signed "snakeoil" certificates, which verifiers then recognise as
  // self-signed (a keyUsage without keyCertSign would make it merely "issuer unknown").
  bool omit_key_usage = false;
  long serial = 1;
};

// Self-signed when `issuer` is null.
inline bssl::UniquePtr<X509> NewCertificate(const CertSpec& spec, EVP_PKEY* key, X509* issuer,
                                            EVP_PKEY* issuer_key) {
  bssl::UniquePtr<X509> cert(X509_new());
  if (cert == nullptr || !X509_set_version(cert.get(), X509_VERSION_3) ||
      !ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), spec.serial) ||
      !X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600) ||
      !X509_gmtime_adj(X509_getm_notAfter(cert.get()), 7 * 86400)) {
    return nullptr;
  }
  X509_NAME* subject = X509_get_subject_name(cert.get());
  if (!X509_NAME_add_entry_by_txt(subject, "O", MBSTRING_ASC,
                                  reinterpret_cast<const uint8_t*>("mtad test"), -1, -1, 0) ||
      !X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                                  reinterpret_cast<const uint8_t*>(spec.common_name.c_str()), -1,
                                  -1, 0) ||
      !X509_set_issuer_name(cert.get(),
                            issuer != nullptr ? X509_get_subject_name(issuer) : subject) ||
      !X509_set_pubkey(cert.get(), key)) {
    return nullptr;
  }
  X509* signer = issuer != nullptr ? issuer : cert.get();
  const bool rsa = EVP_PKEY_id(key) == EVP_PKEY_RSA;
  if (!AddExtension(cert.get(), signer, NID_basic_constraints,
                    spec.is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE") ||
      (!spec.omit_key_usage && !AddExtension(cert.get(), signer, NID_key_usage,
                                             spec.is_ca ? "critical,keyCertSign,cRLSign"
                                             : rsa ? "critical,digitalSignature,keyEncipherment"
                                                   : "critical,digitalSignature")) ||
      !AddExtension(cert.get(), signer, NID_subject_key_identifier, "hash") ||
      !AddExtension(cert.get(), signer, NID_authority_key_identifier, "keyid:always")) {
    return nullptr;
  }
  if (!spec.is_ca && (!AddExtension(cert.get(), signer, NID_ext_key_usage, "serverAuth"))) {
    return nullptr;
  }
  if (!spec.subject_alt_names.empty() &&
      !AddExtension(cert.get(), signer, NID_subject_alt_name, spec.subject_alt_names.c_str())) {
    return nullptr;
  }
  if (!X509_sign(cert.get(), issuer_key != nullptr ? issuer_key : key, EVP_sha256())) {
    return nullptr;
  }
  return cert;
}

inline bool WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  out.close();
  return out.good();
}

inline std::string CertificatePem(X509* cert) {
  bssl::UniquePtr<BIO> mem(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(mem.get(), cert);
  const uint8_t* data;
  size_t len;
  BIO_mem_contents(mem.get(), &data, &len);
  return std::string(reinterpret_cast<const char*>(data), len);
}

inline std::string KeyPem(EVP_PKEY* key) {
  bssl::UniquePtr<BIO> mem(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(mem.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  const uint8_t* data;
  size_t len;
  BIO_mem_contents(mem.get(), &data, &len);
  return std::string(reinterpret_cast<const char*>(data), len);
}

struct TestPki {
  std::string dir;
  std::string ca_cert;      // test CA, trusted via ClientTlsOptions::ca_files
  std::string server_cert;  // mx.test.example, *.wild.test.example, 127.0.0.1; by the CA
  std::string server_key;
  std::string self_signed_cert;  // mx.test.example, self-signed (RSA)
  std::string self_signed_key;
  std::string garbage_file;  // not PEM at all
};

// Builds the PKI under $TEST_TMPDIR; fails the calling test on any error.
inline void CreateTestPki(TestPki* pki) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  ASSERT_NE(tmp, nullptr) << "TEST_TMPDIR is not set (run under bazel test)";
  pki->dir = absl::StrCat(tmp, "/pki");
  ASSERT_TRUE(mkdir(pki->dir.c_str(), 0700) == 0 || errno == EEXIST) << strerror(errno);

  bssl::UniquePtr<EVP_PKEY> ca_key = NewKey(EVP_PKEY_EC);
  bssl::UniquePtr<EVP_PKEY> server_key = NewKey(EVP_PKEY_EC);
  bssl::UniquePtr<EVP_PKEY> self_key = NewKey(EVP_PKEY_RSA);
  ASSERT_TRUE(ca_key && server_key && self_key);

  bssl::UniquePtr<X509> ca = NewCertificate(
      {.common_name = "mtad Test CA", .is_ca = true, .serial = 1}, ca_key.get(), nullptr, nullptr);
  ASSERT_TRUE(ca);
  bssl::UniquePtr<X509> server = NewCertificate(
      {.common_name = kServerName,
       .subject_alt_names = "DNS:mx.test.example,DNS:*.wild.test.example,IP:127.0.0.1",
       .serial = 2},
      server_key.get(), ca.get(), ca_key.get());
  ASSERT_TRUE(server);
  bssl::UniquePtr<X509> self_signed = NewCertificate({.common_name = kServerName,
                                                      .subject_alt_names = "DNS:mx.test.example",
                                                      .omit_key_usage = true,
                                                      .serial = 3},
                                                     self_key.get(), nullptr, nullptr);
  ASSERT_TRUE(self_signed);

  pki->ca_cert = pki->dir + "/ca.pem";
  pki->server_cert = pki->dir + "/server.pem";
  pki->server_key = pki->dir + "/server.key";
  pki->self_signed_cert = pki->dir + "/self_signed.pem";
  pki->self_signed_key = pki->dir + "/self_signed.key";
  pki->garbage_file = pki->dir + "/garbage.pem";
  ASSERT_TRUE(WriteFile(pki->ca_cert, CertificatePem(ca.get())));
  ASSERT_TRUE(WriteFile(pki->server_cert, CertificatePem(server.get())));
  ASSERT_TRUE(WriteFile(pki->server_key, KeyPem(server_key.get())));
  ASSERT_TRUE(WriteFile(pki->self_signed_cert, CertificatePem(self_signed.get())));
  ASSERT_TRUE(WriteFile(pki->self_signed_key, KeyPem(self_key.get())));
  ASSERT_TRUE(WriteFile(pki->garbage_file, "this is not a certificate\n"));
}

// ---------------------------------------------------------------------------------------
// Helpers for channel pairs in memory.

// Moves up to `max_bytes` of pending ciphertext from `from` into `to`, as far as `to`
// accepts it. Returns the number of bytes moved.
inline size_t Transfer(TlsChannel& from, TlsChannel& to, size_t max_bytes = SIZE_MAX) {
  const size_t n = std::min({from.PendingCiphertext(), to.ciphertext_in_capacity(), max_bytes});
  if (n == 0) return 0;
  std::string bytes;
  from.TakeCiphertext(&bytes, n);
  // A failure moves `to` to kFailed, which the tests check through state().
  to.FeedCiphertext(bytes).IgnoreError();
  return bytes.size();
}

// Moves ciphertext both ways until neither side has anything the other accepts.
inline void Pump(TlsChannel& a, TlsChannel& b) {
  for (int round = 0; round < 10000; ++round) {
    if (Transfer(a, b) + Transfer(b, a) == 0) return;
  }
  FAIL() << "Pump did not settle";
}

inline std::string ReadAll(TlsChannel& channel) {
  std::string out;
  char buf[4096];
  for (;;) {
    absl::StatusOr<size_t> n = channel.ReadPlaintext(buf, sizeof(buf));
    if (!n.ok() || *n == 0) break;
    out.append(buf, *n);
  }
  return out;
}

class TlsChannelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pki_ = new TestPki;
    CreateTestPki(pki_);
  }
  static void TearDownTestSuite() {
    delete pki_;
    pki_ = nullptr;
  }
  void SetUp() override { ASSERT_FALSE(pki_->server_key.empty()) << "test PKI generation failed"; }

  static std::unique_ptr<ServerTlsContext> ServerContext(
      bool self_signed = false, ServerTlsOptions options = ServerTlsOptions()) {
    absl::StatusOr<std::unique_ptr<ServerTlsContext>> ctx =
        self_signed
            ? ServerTlsContext::Create(pki_->self_signed_cert, pki_->self_signed_key, options)
            : ServerTlsContext::Create(pki_->server_cert, pki_->server_key, options);
    EXPECT_TRUE(ctx.ok()) << ctx.status();
    return ctx.ok() ? std::move(*ctx) : nullptr;
  }

  // A client context that trusts the test CA (and the system bundle).
  static std::unique_ptr<ClientTlsContext> ClientContext(
      CertificateVerification verification, bool trust_test_ca = true,
      TlsVersion max_version = TlsVersion::kTls13) {
    ClientTlsOptions options;
    options.verification = verification;
    if (trust_test_ca) options.ca_files.push_back(pki_->ca_cert);
    options.max_version = max_version;
    absl::StatusOr<std::unique_ptr<ClientTlsContext>> ctx = ClientTlsContext::Create(options);
    EXPECT_TRUE(ctx.ok()) << ctx.status();
    return ctx.ok() ? std::move(*ctx) : nullptr;
  }

  struct Pair {
    std::unique_ptr<TlsChannel> client;
    std::unique_ptr<TlsChannel> server;
  };

  // Creates both channels and runs the handshake to its end (successful or not).
  static Pair Connect(const ClientTlsContext& client_ctx, const ServerTlsContext& server_ctx,
                      absl::string_view server_name = kServerName,
                      const TlsChannelLimits& client_limits = {},
                      const TlsChannelLimits& server_limits = {}) {
    Pair pair;
    absl::StatusOr<std::unique_ptr<TlsChannel>> client =
        TlsChannel::CreateClient(client_ctx, server_name, client_limits);
    absl::StatusOr<std::unique_ptr<TlsChannel>> server =
        TlsChannel::CreateServer(server_ctx, server_limits);
    EXPECT_TRUE(client.ok()) << client.status();
    EXPECT_TRUE(server.ok()) << server.status();
    if (!client.ok() || !server.ok()) return pair;
    pair.client = std::move(*client);
    pair.server = std::move(*server);
    EXPECT_EQ(pair.client->PendingCiphertext(), 0u) << "nothing is sent before Handshake()";
    EXPECT_TRUE(pair.client->Handshake().ok());
    EXPECT_GT(pair.client->PendingCiphertext(), 0u) << "Handshake() queues the ClientHello";
    Pump(*pair.client, *pair.server);
    return pair;
  }

  inline static TestPki* pki_ = nullptr;
};

}  // namespace mta::auth

#endif  // AUTH_TLS_CHANNEL_TEST_UTIL_H_
