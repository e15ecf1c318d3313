// Tests for TlsChannel and the TLS contexts: client and server channels pumped in memory
// over a PKI generated at test time with BoringSSL, and a client channel against a real
// Python ssl server on a loopback socket.
#include "auth/tls_channel.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "auth/tls_context.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

extern char** environ;

namespace mta::auth {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kServerName[] = "mx.test.example";

// Status messages as std::string, so that gMock prints them as text.
std::string Msg(const absl::Status& status) { return std::string(status.message()); }

#define ASSERT_OK(expr)                                       \
  do {                                                        \
    const ::absl::Status assert_ok_status_ = (expr);          \
    ASSERT_TRUE(assert_ok_status_.ok()) << assert_ok_status_; \
  } while (0)

// ---------------------------------------------------------------------------------------
// A throwaway PKI, generated once per test binary with BoringSSL.

bssl::UniquePtr<EVP_PKEY> NewKey(int type) {
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

bool AddExtension(X509* cert, X509* issuer, int nid, const char* value) {
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
bssl::UniquePtr<X509> NewCertificate(const CertSpec& spec, EVP_PKEY* key, X509* issuer,
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

bool WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  out.close();
  return out.good();
}

std::string CertificatePem(X509* cert) {
  bssl::UniquePtr<BIO> mem(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(mem.get(), cert);
  const uint8_t* data;
  size_t len;
  BIO_mem_contents(mem.get(), &data, &len);
  return std::string(reinterpret_cast<const char*>(data), len);
}

std::string KeyPem(EVP_PKEY* key) {
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
void CreateTestPki(TestPki* pki) {
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
size_t Transfer(TlsChannel& from, TlsChannel& to, size_t max_bytes = SIZE_MAX) {
  const size_t n = std::min({from.PendingCiphertext(), to.ciphertext_in_capacity(), max_bytes});
  if (n == 0) return 0;
  std::string bytes;
  from.TakeCiphertext(&bytes, n);
  // A failure moves `to` to kFailed, which the tests check through state().
  to.FeedCiphertext(bytes).IgnoreError();
  return bytes.size();
}

// Moves ciphertext both ways until neither side has anything the other accepts.
void Pump(TlsChannel& a, TlsChannel& b) {
  for (int round = 0; round < 10000; ++round) {
    if (Transfer(a, b) + Transfer(b, a) == 0) return;
  }
  FAIL() << "Pump did not settle";
}

std::string ReadAll(TlsChannel& channel) {
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

  static TestPki* pki_;
};

TestPki* TlsChannelTest::pki_ = nullptr;

// ---------------------------------------------------------------------------------------
// Handshake, versions, data.

TEST_F(TlsChannelTest, Tls13HandshakeReportsParametersAndCarriesData) {
  auto client_ctx = ClientContext(CertificateVerification::kOpportunistic);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  Pair p = Connect(*client_ctx, *server_ctx);
  ASSERT_TRUE(p.client && p.server);
  ASSERT_EQ(p.client->state(), TlsChannel::State::kEstablished) << p.client->status();
  ASSERT_EQ(p.server->state(), TlsChannel::State::kEstablished) << p.server->status();

  const TlsConnectionInfo& info = p.client->info();
  EXPECT_EQ(info.protocol_version, "TLSv1.3");
  EXPECT_THAT(info.cipher, StartsWith("TLS_"));
  EXPECT_FALSE(info.key_exchange_group.empty());
  EXPECT_EQ(info.server_name, kServerName);
  EXPECT_TRUE(info.peer_certificate_present);
  EXPECT_TRUE(info.peer_certificate_verified) << info.verify_error;
  EXPECT_TRUE(info.peer_name_matched);
  EXPECT_EQ(info.verify_error, "");
  EXPECT_THAT(info.peer_subject, HasSubstr("CN=mx.test.example"));
  EXPECT_THAT(info.peer_subject, HasSubstr("O=mtad test"));

  EXPECT_EQ(p.server->info().protocol_version, "TLSv1.3");
  EXPECT_EQ(p.server->info().cipher, info.cipher);
  EXPECT_EQ(p.server->info().server_name, kServerName) << "SNI as received by the server";
  EXPECT_FALSE(p.server->info().peer_certificate_present);

  ASSERT_OK(p.client->WritePlaintext("EHLO client.test.example\r\n"));
  Pump(*p.client, *p.server);
  EXPECT_EQ(ReadAll(*p.server), "EHLO client.test.example\r\n");
  ASSERT_OK(p.server->WritePlaintext("250 mx.test.example\r\n"));
  Pump(*p.client, *p.server);
  EXPECT_EQ(ReadAll(*p.client), "250 mx.test.example\r\n");
}

TEST_F(TlsChannelTest, Tls12WhenTheClientCapsItsMaxVersion) {
  auto client_ctx =
      ClientContext(CertificateVerification::kVerify, /*trust_test_ca=*/true, TlsVersion::kTls12);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  Pair p = Connect(*client_ctx, *server_ctx);
  ASSERT_TRUE(p.client && p.server);
  ASSERT_TRUE(p.client->established()) << p.client->status();
  ASSERT_TRUE(p.server->established()) << p.server->status();
  EXPECT_EQ(p.client->info().protocol_version, "TLSv1.2");
  EXPECT_EQ(p.server->info().protocol_version, "TLSv1.2");
  // ECDSA server key, forward secrecy, AEAD.
  EXPECT_THAT(p.client->info().cipher, StartsWith("ECDHE-ECDSA-"));
  EXPECT_TRUE(p.client->info().peer_certificate_verified);
  EXPECT_TRUE(p.client->info().peer_name_matched);

  ASSERT_OK(p.client->WritePlaintext("ping"));
  ASSERT_OK(p.server->WritePlaintext("pong"));
  Pump(*p.client, *p.server);
  EXPECT_EQ(ReadAll(*p.server), "ping");
  EXPECT_EQ(ReadAll(*p.client), "pong");
}

TEST_F(TlsChannelTest, ServerCappedAtTls12NegotiatesTls12) {
  auto client_ctx = ClientContext(CertificateVerification::kOpportunistic);
  ServerTlsOptions server_options;
  server_options.max_version = TlsVersion::kTls12;
  auto server_ctx = ServerContext(/*self_signed=*/false, server_options);
  ASSERT_TRUE(client_ctx && server_ctx);
  Pair p = Connect(*client_ctx, *server_ctx);
  ASSERT_TRUE(p.client && p.client->established()) << p.client->status();
  EXPECT_EQ(p.client->info().protocol_version, "TLSv1.2");
}

// Writes `total` random bytes each way at once, in random chunk sizes, moving ciphertext in
// random amounts and reading in random sizes, with small limits so that every bound is hit.
void ExchangeMegabyte(TlsChannel& client, TlsChannel& server, uint32_t seed) {
  constexpr size_t kTotal = 1 << 20;
  std::mt19937 rng(seed);
  auto random_bytes = [&](size_t n) {
    std::string s(n, '\0');
    for (char& c : s) c = static_cast<char>(rng());
    return s;
  };
  const std::string to_server = random_bytes(kTotal);
  const std::string to_client = random_bytes(kTotal);
  std::string got_by_server, got_by_client;
  size_t sent_to_server = 0, sent_to_client = 0;
  auto uniform = [&](size_t lo, size_t hi) {
    return std::uniform_int_distribution<size_t>(lo, hi)(rng);
  };

  auto write_some = [&](TlsChannel& ch, const std::string& data, size_t* sent) {
    const size_t n =
        std::min({data.size() - *sent, uniform(1, 70000), ch.plaintext_out_capacity()});
    if (n == 0) return;
    const absl::Status s = ch.WritePlaintext(absl::string_view(data).substr(*sent, n));
    ASSERT_TRUE(s.ok()) << s;
    *sent += n;
  };
  auto read_some = [&](TlsChannel& ch, std::string* got) {
    std::vector<char> buf(uniform(1, 40000));
    for (;;) {
      absl::StatusOr<size_t> n = ch.ReadPlaintext(buf.data(), buf.size());
      ASSERT_TRUE(n.ok()) << n.status();
      if (*n == 0) break;
      got->append(buf.data(), *n);
    }
  };

  for (int round = 0; round < 200000; ++round) {
    if (got_by_server.size() == kTotal && got_by_client.size() == kTotal) break;
    write_some(client, to_server, &sent_to_server);
    write_some(server, to_client, &sent_to_client);
    Transfer(client, server, uniform(1, 50000));
    Transfer(server, client, uniform(1, 50000));
    // Leave some ciphertext unread now and then, so that the inbound bound is reached.
    if (uniform(0, 3) != 0) read_some(server, &got_by_server);
    if (uniform(0, 3) != 0) read_some(client, &got_by_client);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    ASSERT_TRUE(client.established()) << client.status();
    ASSERT_TRUE(server.established()) << server.status();
  }
  ASSERT_EQ(got_by_server.size(), kTotal);
  ASSERT_EQ(got_by_client.size(), kTotal);
  EXPECT_TRUE(got_by_server == to_server) << "client-to-server data differs";
  EXPECT_TRUE(got_by_client == to_client) << "server-to-client data differs";
}

TEST_F(TlsChannelTest, OneMegabyteEachWayInRandomChunksTls13) {
  auto client_ctx = ClientContext(CertificateVerification::kOpportunistic);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  TlsChannelLimits small;
  small.max_ciphertext_in_bytes = TlsChannel::kMinCiphertextInBytes;
  small.max_plaintext_out_bytes = 48 * 1024;
  small.max_ciphertext_out_bytes = 24 * 1024;
  Pair p = Connect(*client_ctx, *server_ctx, kServerName, small, TlsChannelLimits());
  ASSERT_TRUE(p.client && p.client->established()) << p.client->status();
  ExchangeMegabyte(*p.client, *p.server, /*seed=*/13);
}

TEST_F(TlsChannelTest, OneMegabyteEachWayInRandomChunksTls12) {
  auto client_ctx =
      ClientContext(CertificateVerification::kOpportunistic, true, TlsVersion::kTls12);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  TlsChannelLimits small;
  small.max_ciphertext_in_bytes = 32 * 1024;
  small.max_plaintext_out_bytes = 20 * 1024;
  small.max_ciphertext_out_bytes = 1;
  Pair p = Connect(*client_ctx, *server_ctx, kServerName, TlsChannelLimits(), small);
  ASSERT_TRUE(p.client && p.client->established()) << p.client->status();
  EXPECT_EQ(p.client->info().protocol_version, "TLSv1.2");
  ExchangeMegabyte(*p.client, *p.server, /*seed=*/12);
}

TEST_F(TlsChannelTest, PlaintextWrittenDuringTheHandshakeIsSentAfterIt) {
  auto client_ctx = ClientContext(CertificateVerification::kOpportunistic);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  auto client = TlsChannel::CreateClient(*client_ctx, kServerName);
  auto server = TlsChannel::CreateServer(*server_ctx);
  ASSERT_TRUE(client.ok() && server.ok());
  ASSERT_OK((*client)->WritePlaintext("early "));
  ASSERT_OK((*client)->WritePlaintext("bird"));
  ASSERT_OK((*client)->Handshake());
  Pump(**client, **server);
  ASSERT_TRUE((*server)->established()) << (*server)->status();
  EXPECT_EQ(ReadAll(**server), "early bird");
}

TEST_F(TlsChannelTest, ChannelOutlivesItsContext) {
  auto client_ctx = ClientContext(CertificateVerification::kVerify);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  auto client = TlsChannel::CreateClient(*client_ctx, kServerName);
  auto server = TlsChannel::CreateServer(*server_ctx);
  ASSERT_TRUE(client.ok() && server.ok());
  client_ctx.reset();
  server_ctx.reset();
  ASSERT_OK((*client)->Handshake());
  Pump(**client, **server);
  EXPECT_TRUE((*client)->established()) << (*client)->status();
  EXPECT_TRUE((*client)->info().peer_certificate_verified);
}

// ---------------------------------------------------------------------------------------
// Certificate verification.

TEST_F(TlsChannelTest, OpportunisticAcceptsAnUntrustedSelfSignedCertificate) {
  // The default options: system trust store only, which does not know this certificate.
  auto client_ctx = ClientTlsContext::Create(ClientTlsOptions());
  ASSERT_TRUE(client_ctx.ok()) << client_ctx.status();
  auto server_ctx = ServerContext(/*self_signed=*/true);
  ASSERT_TRUE(server_ctx);
  Pair p = Connect(**client_ctx, *server_ctx);
  ASSERT_TRUE(p.client && p.client->established()) << p.client->status();
  ASSERT_TRUE(p.server->established()) << p.server->status();
  const TlsConnectionInfo& info = p.client->info();
  EXPECT_TRUE(info.peer_certificate_present);
  EXPECT_FALSE(info.peer_certificate_verified);
  EXPECT_THAT(info.verify_error, HasSubstr("self"));
  EXPECT_TRUE(info.peer_name_matched) << "the name is checked even when the chain is not";
  EXPECT_THAT(info.peer_subject, HasSubstr("CN=mx.test.example"));

  ASSERT_OK(p.client->WritePlaintext("still encrypted"));
  Pump(*p.client, *p.server);
  EXPECT_EQ(ReadAll(*p.server), "still encrypted");
}

TEST_F(TlsChannelTest, OpportunisticReportsANameMismatchSeparately) {
  auto client_ctx = ClientContext(CertificateVerification::kOpportunistic);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  Pair p = Connect(*client_ctx, *server_ctx, "mail.other.example");
  ASSERT_TRUE(p.client && p.client->established()) << p.client->status();
  EXPECT_TRUE(p.client->info().peer_certificate_verified) << p.client->info().verify_error;
  EXPECT_FALSE(p.client->info().peer_name_matched);
}

TEST_F(TlsChannelTest, VerifyModeRejectsAnUntrustedSelfSignedCertificate) {
  ClientTlsOptions options;
  options.verification = CertificateVerification::kVerify;
  auto client_ctx = ClientTlsContext::Create(options);
  if (!client_ctx.ok() && absl::IsInvalidArgument(client_ctx.status())) {
    GTEST_SKIP() << "no system trust store: " << client_ctx.status();
  }
  ASSERT_TRUE(client_ctx.ok()) << client_ctx.status();
  auto server_ctx = ServerContext(/*self_signed=*/true);
  ASSERT_TRUE(server_ctx);
  Pair p = Connect(**client_ctx, *server_ctx);
  ASSERT_TRUE(p.client && p.server);
  ASSERT_EQ(p.client->state(), TlsChannel::State::kFailed);
  const absl::Status& s = p.client->status();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_THAT(Msg(s), HasSubstr("TLS handshake failed (server mx.test.example)"));
  EXPECT_THAT(Msg(s), HasSubstr("CERTIFICATE_VERIFY_FAILED"));
  EXPECT_THAT(Msg(s), HasSubstr("certificate: self"));
  // The client told the server why; the server fails with that alert.
  EXPECT_EQ(p.server->state(), TlsChannel::State::kFailed);
  EXPECT_THAT(Msg(p.server->status()), HasSubstr("ALERT"));
  // Every later call reports the same failure; nothing aborts.
  EXPECT_EQ(p.client->WritePlaintext("x"), s);
  char buf[16];
  EXPECT_EQ(p.client->ReadPlaintext(buf, sizeof(buf)).status(), s);
  EXPECT_EQ(p.client->Shutdown(), s);
  EXPECT_EQ(p.client->plaintext_out_capacity(), 0u);
  EXPECT_TRUE(p.client->read_closed());
}

TEST_F(TlsChannelTest, VerifyModeAcceptsTheTrustedTestCaAndMatchingNames) {
  auto client_ctx = ClientContext(CertificateVerification::kVerify);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  // The DNS name of the MX as it comes out of DNS (case, final dot), a name covered by the
  // wildcard, and the IP literal (sent without SNI).
  for (const char* name :
       {"mx.test.example", "MX.Test.Example.", "smtp.wild.test.example", "127.0.0.1"}) {
    SCOPED_TRACE(name);
    Pair p = Connect(*client_ctx, *server_ctx, name);
    ASSERT_TRUE(p.client && p.client->established()) << p.client->status();
    EXPECT_TRUE(p.client->info().peer_certificate_verified);
    EXPECT_TRUE(p.client->info().peer_name_matched);
    EXPECT_EQ(p.client->info().verify_error, "");
    if (absl::string_view(name) == "127.0.0.1") {
      EXPECT_EQ(p.server->info().server_name, "") << "no SNI for an IP literal";
    } else {
      EXPECT_EQ(p.server->info().server_name, p.client->info().server_name);
    }
  }
}

TEST_F(TlsChannelTest, VerifyModeRejectsAWrongName) {
  auto client_ctx = ClientContext(CertificateVerification::kVerify);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  // Not covered: another domain, a wildcard two labels deep, another IP.
  for (const char* name : {"mx.other.example", "a.b.wild.test.example", "127.0.0.2"}) {
    SCOPED_TRACE(name);
    Pair p = Connect(*client_ctx, *server_ctx, name);
    ASSERT_TRUE(p.client);
    ASSERT_EQ(p.client->state(), TlsChannel::State::kFailed);
    EXPECT_TRUE(absl::IsUnavailable(p.client->status()));
    EXPECT_THAT(Msg(p.client->status()), HasSubstr("CERTIFICATE_VERIFY_FAILED"));
    EXPECT_THAT(Msg(p.client->status()), HasSubstr("mismatch"));
  }
}

// ---------------------------------------------------------------------------------------
// Hostile or broken peers.

TEST_F(TlsChannelTest, PlaintextSmtpBannerInsteadOfServerHelloFailsCleanly) {
  auto client_ctx = ClientContext(CertificateVerification::kOpportunistic);
  ASSERT_TRUE(client_ctx);
  auto client = TlsChannel::CreateClient(*client_ctx, kServerName);
  ASSERT_TRUE(client.ok());
  ASSERT_OK((*client)->Handshake());
  const absl::Status s = (*client)->FeedCiphertext("220 mx.test.example ESMTP ready\r\n");
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_EQ((*client)->state(), TlsChannel::State::kFailed);
  EXPECT_THAT(Msg(s), HasSubstr("TLS handshake failed"));
  EXPECT_THAT(Msg(s), HasSubstr("SSL_ERROR_SSL"));
  EXPECT_EQ((*client)->ciphertext_in_capacity(), 0u);
}

TEST_F(TlsChannelTest, RandomBytesFromThePeerNeverCrash) {
  auto client_ctx = ClientContext(CertificateVerification::kOpportunistic);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    SCOPED_TRACE(i);
    std::string garbage(std::uniform_int_distribution<size_t>(1, 6000)(rng), '\0');
    for (char& c : garbage) c = static_cast<char>(rng());
    // Mostly pure noise; sometimes a plausible record header, to get past the first checks.
    if (i % 4 == 1 && garbage.size() >= 5) garbage.replace(0, 3, "\x16\x03\x03", 3);
    if (i % 4 == 2 && garbage.size() >= 5) garbage.replace(0, 3, "\x15\x03\x01", 3);

    auto client = TlsChannel::CreateClient(*client_ctx, kServerName);
    auto server = TlsChannel::CreateServer(*server_ctx);
    ASSERT_TRUE(client.ok() && server.ok());
    ASSERT_OK((*client)->Handshake());
    for (TlsChannel* ch : {client->get(), server->get()}) {
      const size_t fit = std::min(garbage.size(), ch->ciphertext_in_capacity());
      (void)ch->FeedCiphertext(absl::string_view(garbage).substr(0, fit));
      (void)ch->FeedEndOfStream();
      EXPECT_EQ(ch->state(), TlsChannel::State::kFailed);
      EXPECT_FALSE(ch->status().ok());
      EXPECT_FALSE(ch->status().message().empty());
      std::string alert;
      ch->TakeCiphertext(&alert);  // a fatal alert may be pending; taking it must be fine
    }
  }
}

TEST_F(TlsChannelTest, ServerClosingMidHandshakeFailsTheClient) {
  auto client_ctx = ClientContext(CertificateVerification::kOpportunistic);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  auto client = TlsChannel::CreateClient(*client_ctx, kServerName);
  auto server = TlsChannel::CreateServer(*server_ctx);
  ASSERT_TRUE(client.ok() && server.ok());
  ASSERT_OK((*client)->Handshake());
  ASSERT_GT(Transfer(**client, **server), 0u);  // ClientHello
  const size_t flight = (*server)->PendingCiphertext();
  ASSERT_GT(flight, 10u);
  Transfer(**server, **client, flight / 2);  // half of ServerHello..Finished
  EXPECT_EQ((*client)->state(), TlsChannel::State::kHandshaking);
  const absl::Status s = (*client)->FeedEndOfStream();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_EQ((*client)->state(), TlsChannel::State::kFailed);
  EXPECT_THAT(Msg(s), HasSubstr("closed by the peer during the TLS handshake"));
}

TEST_F(TlsChannelTest, ClientClosingMidHandshakeFailsTheServer) {
  auto client_ctx = ClientContext(CertificateVerification::kOpportunistic);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  auto client = TlsChannel::CreateClient(*client_ctx, kServerName);
  auto server = TlsChannel::CreateServer(*server_ctx);
  ASSERT_TRUE(client.ok() && server.ok());
  ASSERT_OK((*client)->Handshake());
  Transfer(**client, **server, 20);  // a partial ClientHello
  EXPECT_EQ((*server)->state(), TlsChannel::State::kHandshaking);
  const absl::Status s = (*server)->FeedEndOfStream();
  EXPECT_EQ((*server)->state(), TlsChannel::State::kFailed);
  EXPECT_THAT(Msg(s), HasSubstr("closed by the peer during the TLS handshake"));
  EXPECT_FALSE((*client)->established());
}

// ---------------------------------------------------------------------------------------
// Closing.

TEST_F(TlsChannelTest, CloseNotifyEndsEachDirectionCleanly) {
  auto client_ctx = ClientContext(CertificateVerification::kVerify);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  Pair p = Connect(*client_ctx, *server_ctx);
  ASSERT_TRUE(p.client && p.client->established()) << p.client->status();

  ASSERT_OK(p.client->WritePlaintext("QUIT\r\n"));
  ASSERT_OK(p.client->Shutdown());
  EXPECT_TRUE(p.client->close_notify_sent());
  ASSERT_OK(p.client->Shutdown());  // idempotent
  const absl::Status late = p.client->WritePlaintext("more");
  EXPECT_TRUE(absl::IsFailedPrecondition(late)) << late;
  EXPECT_EQ(p.client->plaintext_out_capacity(), 0u);

  Pump(*p.client, *p.server);
  EXPECT_EQ(ReadAll(*p.server), "QUIT\r\n");
  EXPECT_TRUE(p.server->close_notify_received());
  EXPECT_TRUE(p.server->read_closed());
  EXPECT_TRUE(p.server->established());
  // Half-closed: the server still answers, then closes its side too.
  ASSERT_OK(p.server->WritePlaintext("221 2.0.0 Bye\r\n"));
  ASSERT_OK(p.server->Shutdown());
  EXPECT_TRUE(p.server->close_notify_sent());
  // Bytes after close_notify are ignored, not buffered.
  ASSERT_OK(p.server->FeedCiphertext("trailing junk"));
  EXPECT_TRUE(p.server->established());

  Pump(*p.client, *p.server);
  EXPECT_EQ(ReadAll(*p.client), "221 2.0.0 Bye\r\n");
  EXPECT_TRUE(p.client->close_notify_received());
  EXPECT_TRUE(p.client->read_closed());
  EXPECT_TRUE(p.client->status().ok());
}

TEST_F(TlsChannelTest, ShutdownDuringTheHandshakeIsSentAfterIt) {
  auto client_ctx = ClientContext(CertificateVerification::kOpportunistic);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  auto client = TlsChannel::CreateClient(*client_ctx, kServerName);
  auto server = TlsChannel::CreateServer(*server_ctx);
  ASSERT_TRUE(client.ok() && server.ok());
  ASSERT_OK((*client)->Handshake());
  ASSERT_OK((*client)->WritePlaintext("last words"));
  ASSERT_OK((*client)->Shutdown());
  EXPECT_FALSE((*client)->close_notify_sent());
  Pump(**client, **server);
  EXPECT_TRUE((*client)->close_notify_sent());
  EXPECT_EQ(ReadAll(**server), "last words");
  EXPECT_TRUE((*server)->close_notify_received());
}

TEST_F(TlsChannelTest, TransportEofWithoutCloseNotifyIsReportedAsTruncation) {
  auto client_ctx = ClientContext(CertificateVerification::kOpportunistic);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  Pair p = Connect(*client_ctx, *server_ctx);
  ASSERT_TRUE(p.client && p.client->established()) << p.client->status();
  ASSERT_OK(p.server->WritePlaintext("221 2.0.0 Bye\r\n"));
  Pump(*p.client, *p.server);
  ASSERT_OK(p.client->FeedEndOfStream());
  EXPECT_EQ(ReadAll(*p.client), "221 2.0.0 Bye\r\n") << "data before the EOF is delivered";
  EXPECT_TRUE(p.client->read_closed());
  EXPECT_FALSE(p.client->close_notify_received());
  EXPECT_TRUE(p.client->established()) << p.client->status();
  EXPECT_TRUE(absl::IsFailedPrecondition(p.client->FeedCiphertext("x")));
  // Our own side can still be closed properly.
  ASSERT_OK(p.client->Shutdown());
  EXPECT_TRUE(p.client->close_notify_sent());
  Pump(*p.client, *p.server);
  ReadAll(*p.server);
  EXPECT_TRUE(p.server->close_notify_received());
}

TEST_F(TlsChannelTest, RecordCutShortByEofIsTruncation) {
  auto client_ctx = ClientContext(CertificateVerification::kOpportunistic);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  Pair p = Connect(*client_ctx, *server_ctx);
  ASSERT_TRUE(p.client && p.client->established()) << p.client->status();
  ReadAll(*p.client);  // consume post-handshake messages (session tickets)
  ASSERT_OK(p.server->WritePlaintext(std::string(1000, 'a')));
  Transfer(*p.server, *p.client, p.server->PendingCiphertext() - 10);
  ASSERT_OK(p.client->FeedEndOfStream());
  char buf[2000];
  absl::StatusOr<size_t> n = p.client->ReadPlaintext(buf, sizeof(buf));
  // The partial record is never delivered; the stream just ends, as a truncation.
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 0u);
  EXPECT_TRUE(p.client->read_closed());
  EXPECT_TRUE(p.client->established());
  EXPECT_FALSE(p.client->close_notify_received());
}

// ---------------------------------------------------------------------------------------
// Limits and argument checking.

TEST_F(TlsChannelTest, BoundsAreEnforcedWithoutChangingState) {
  auto client_ctx = ClientContext(CertificateVerification::kOpportunistic);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  TlsChannelLimits limits;
  limits.max_plaintext_out_bytes = 1000;
  limits.max_ciphertext_in_bytes = TlsChannel::kMinCiphertextInBytes;
  Pair p = Connect(*client_ctx, *server_ctx, kServerName, limits, limits);
  ASSERT_TRUE(p.client && p.client->established()) << p.client->status();

  // Plaintext before the handshake stays buffered, so a fresh channel shows the bound.
  auto fresh = TlsChannel::CreateClient(*client_ctx, kServerName, limits);
  ASSERT_TRUE(fresh.ok());
  ASSERT_OK((*fresh)->WritePlaintext(std::string(600, 'x')));
  EXPECT_EQ((*fresh)->plaintext_out_capacity(), 400u);
  absl::Status s = (*fresh)->WritePlaintext(std::string(401, 'x'));
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_EQ((*fresh)->state(), TlsChannel::State::kHandshaking);
  ASSERT_OK((*fresh)->WritePlaintext(std::string(400, 'x')));

  // Inbound: the server does not read, so ciphertext accumulates up to the bound.
  for (int i = 0; i < 100 && p.client->plaintext_out_capacity() > 0; ++i) {
    ASSERT_OK(p.client->WritePlaintext(std::string(p.client->plaintext_out_capacity(), 'y')));
    if (Transfer(*p.client, *p.server) == 0) break;
  }
  ASSERT_GT(p.client->PendingCiphertext(), 0u);
  EXPECT_LT(p.server->ciphertext_in_capacity(), p.client->PendingCiphertext());
  std::string more;
  p.client->TakeCiphertext(&more);
  s = p.server->FeedCiphertext(more);
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_THAT(Msg(s), HasSubstr("read plaintext first"));
  EXPECT_TRUE(p.server->established());
  // Reading drains the inbound queue; the refused bytes can then be fed again.
  std::string got = ReadAll(*p.server);
  EXPECT_GT(got.size(), 0u);
  ASSERT_OK(p.server->FeedCiphertext(more));
  got += ReadAll(*p.server);
  EXPECT_EQ(got, std::string(got.size(), 'y'));
}

TEST_F(TlsChannelTest, InvalidArgumentsAreRejected) {
  auto client_ctx = ClientContext(CertificateVerification::kOpportunistic);
  auto server_ctx = ServerContext();
  ASSERT_TRUE(client_ctx && server_ctx);
  for (const char* bad : {"", ".", "bad name", "a..b", "mx.example.com\r\nRCPT", "-x_\xff"}) {
    SCOPED_TRACE(absl::CEscape(bad));
    auto ch = TlsChannel::CreateClient(*client_ctx, bad);
    EXPECT_TRUE(absl::IsInvalidArgument(ch.status())) << ch.status();
  }
  TlsChannelLimits limits;
  limits.max_ciphertext_in_bytes = 1000;
  EXPECT_TRUE(
      absl::IsInvalidArgument(TlsChannel::CreateClient(*client_ctx, kServerName, limits).status()));
  limits = TlsChannelLimits();
  limits.max_plaintext_out_bytes = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(TlsChannel::CreateServer(*server_ctx, limits).status()));
}

// ---------------------------------------------------------------------------------------
// Contexts.

TEST_F(TlsChannelTest, ClientContextOptions) {
  ClientTlsOptions options;
  options.verification = CertificateVerification::kVerify;
  options.system_ca_file = "";
  absl::StatusOr<std::unique_ptr<ClientTlsContext>> ctx = ClientTlsContext::Create(options);
  EXPECT_TRUE(absl::IsInvalidArgument(ctx.status())) << "kVerify without anchors";
  EXPECT_THAT(Msg(ctx.status()), HasSubstr("no trust anchor"));

  options.ca_files = {pki_->ca_cert};
  ctx = ClientTlsContext::Create(options);
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  EXPECT_EQ((*ctx)->trust_anchor_count(), 1u);
  EXPECT_EQ((*ctx)->verification(), CertificateVerification::kVerify);

  options.ca_files = {pki_->dir + "/missing.pem"};
  EXPECT_TRUE(absl::IsNotFound(ClientTlsContext::Create(options).status()));
  options.ca_files = {pki_->garbage_file};
  ctx = ClientTlsContext::Create(options);
  EXPECT_TRUE(absl::IsInvalidArgument(ctx.status())) << ctx.status();
  EXPECT_THAT(Msg(ctx.status()), HasSubstr(pki_->garbage_file));

  options = ClientTlsOptions();
  options.min_version = TlsVersion::kTls13;
  options.max_version = TlsVersion::kTls12;
  EXPECT_TRUE(absl::IsInvalidArgument(ClientTlsContext::Create(options).status()));

  // A missing system bundle is not an error for opportunistic TLS.
  options = ClientTlsOptions();
  options.system_ca_file = pki_->dir + "/no-such-bundle.crt";
  ctx = ClientTlsContext::Create(options);
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  EXPECT_EQ((*ctx)->trust_anchor_count(), 0u);
}

TEST_F(TlsChannelTest, ClientContextLoadsTheSystemTrustStore) {
  struct stat st;
  if (stat(kSystemCaBundlePath, &st) != 0) GTEST_SKIP() << "ca-certificates not installed";
  auto ctx = ClientTlsContext::Create(ClientTlsOptions());
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  EXPECT_GT((*ctx)->trust_anchor_count(), 50u);
}

TEST_F(TlsChannelTest, ServerContextErrors) {
  EXPECT_TRUE(absl::IsNotFound(
      ServerTlsContext::Create(pki_->dir + "/missing.pem", pki_->server_key).status()));
  EXPECT_TRUE(absl::IsNotFound(
      ServerTlsContext::Create(pki_->server_cert, pki_->dir + "/missing.key").status()));
  auto s = ServerTlsContext::Create(pki_->garbage_file, pki_->server_key).status();
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  s = ServerTlsContext::Create(pki_->server_cert, pki_->self_signed_key).status();
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  ServerTlsOptions options;
  options.min_version = TlsVersion::kTls13;
  options.max_version = TlsVersion::kTls12;
  EXPECT_TRUE(absl::IsInvalidArgument(
      ServerTlsContext::Create(pki_->server_cert, pki_->server_key, options).status()));
}

// ---------------------------------------------------------------------------------------
// A real, independent TLS implementation: Python's ssl module (OpenSSL 3) on loopback.

// Reads one line from the client, answers with what it negotiated and a digest of the
// payload, then closes with close_notify and waits for ours (unwrap).
constexpr char kPythonServer[] = R"py(
import hashlib, socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
seen = []
ctx.sni_callback = lambda sslobj, name, c: seen.append(name)
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.bind(("127.0.0.1", 0))
srv.listen(1)
srv.settimeout(30)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
conn.settimeout(30)
tls = ctx.wrap_socket(conn, server_side=True)
data = b""
while not data.endswith(b"\r\n.\r\n"):
    chunk = tls.recv(65536)
    if not chunk:
        sys.exit("client closed before the end of the payload")
    data += chunk
body = data[:-5]
reply = "250 %s %s sni=%s len=%d sha256=%s\r\n" % (
    tls.version(), tls.cipher()[0], seen[0] if seen else "-", len(body),
    hashlib.sha256(body).hexdigest())
tls.sendall(reply.encode())
tls.unwrap()
conn.close()
)py";

// Kills and reaps the child if the test ends early.
class Subprocess {
 public:
  explicit Subprocess(pid_t pid) : pid_(pid) {}
  ~Subprocess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  // Waits up to `timeout_ms` for the exit status; -1 on timeout or abnormal exit.
  int Wait(int timeout_ms) {
    for (int waited = 0; waited <= timeout_ms; waited += 10) {
      int status = 0;
      const pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      usleep(10 * 1000);
    }
    return -1;
  }

 private:
  pid_t pid_;
};

TEST_F(TlsChannelTest, RealPythonTlsServerOverLoopback) {
  constexpr char kPython[] = "/usr/bin/python3";
  ASSERT_EQ(access(kPython, X_OK), 0) << kPython << " is required (Debian package python3)";

  int out_pipe[2];
  ASSERT_EQ(pipe(out_pipe), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, out_pipe[0]);
  posix_spawn_file_actions_addclose(&actions, out_pipe[1]);
  std::vector<std::string> args = {kPython, "-c", kPythonServer, pki_->server_cert,
                                   pki_->server_key};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int spawn_error = posix_spawn(&pid, kPython, &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  ASSERT_EQ(spawn_error, 0) << strerror(spawn_error);
  Subprocess child(pid);

  // The server prints its port once it listens.
  std::string port_line;
  while (port_line.find('\n') == std::string::npos) {
    pollfd pfd = {.fd = out_pipe[0], .events = POLLIN, .revents = 0};
    ASSERT_EQ(poll(&pfd, 1, 20000), 1) << "the Python server did not start";
    char c[64];
    const ssize_t n = read(out_pipe[0], c, sizeof(c));
    ASSERT_GT(n, 0) << "the Python server exited before listening";
    port_line.append(c, n);
  }
  close(out_pipe[0]);
  const int port = std::atoi(port_line.c_str());
  ASSERT_GT(port, 0) << port_line;

  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  struct FdCloser {
    int fd;
    ~FdCloser() { close(fd); }
  } closer{fd};
  timeval tv = {.tv_sec = 20, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << strerror(errno);

  auto client_ctx = ClientContext(CertificateVerification::kVerify);
  ASSERT_TRUE(client_ctx);
  auto created = TlsChannel::CreateClient(*client_ctx, kServerName);
  ASSERT_TRUE(created.ok()) << created.status();
  TlsChannel& tls = **created;

  // The test does blocking socket I/O itself; the channel only transforms bytes.
  auto send_pending = [&]() -> bool {
    while (tls.PendingCiphertext() > 0) {
      std::string out;
      tls.TakeCiphertext(&out);
      size_t off = 0;
      while (off < out.size()) {
        const ssize_t n = send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL);
        if (n <= 0) return false;
        off += static_cast<size_t>(n);
      }
    }
    return true;
  };
  auto receive_some = [&]() -> absl::Status {
    char buf[16384];
    const size_t room = std::min(sizeof(buf), tls.ciphertext_in_capacity());
    if (room == 0) return absl::ResourceExhaustedError("inbound bound reached");
    const ssize_t n = recv(fd, buf, room, 0);
    if (n < 0) return absl::UnavailableError(absl::StrCat("recv: ", strerror(errno)));
    if (n == 0) return tls.FeedEndOfStream();
    return tls.FeedCiphertext(absl::string_view(buf, static_cast<size_t>(n)));
  };

  ASSERT_OK(tls.Handshake());
  ASSERT_TRUE(send_pending());
  while (tls.state() == TlsChannel::State::kHandshaking) {
    ASSERT_OK(receive_some());
    ASSERT_TRUE(send_pending());
  }
  ASSERT_TRUE(tls.established()) << tls.status();
  EXPECT_TRUE(tls.info().peer_certificate_verified);
  EXPECT_TRUE(tls.info().peer_name_matched);

  // 300 kB payload, larger than the default plaintext bound, then the terminator.
  std::mt19937 rng(42);
  std::string payload(300000, '\0');
  for (char& c : payload) c = static_cast<char>('a' + rng() % 26);
  const std::string message = payload + "\r\n.\r\n";
  size_t written = 0;
  while (written < message.size()) {
    const size_t n = std::min(message.size() - written, tls.plaintext_out_capacity());
    ASSERT_GT(n, 0u);
    ASSERT_OK(tls.WritePlaintext(absl::string_view(message).substr(written, n)));
    written += n;
    ASSERT_TRUE(send_pending());
  }

  std::string reply;
  while (!tls.read_closed()) {
    char buf[4096];
    absl::StatusOr<size_t> n = tls.ReadPlaintext(buf, sizeof(buf));
    ASSERT_TRUE(n.ok()) << n.status();
    if (*n > 0) {
      reply.append(buf, *n);
      continue;
    }
    if (tls.read_closed()) break;
    ASSERT_OK(receive_some());
    ASSERT_TRUE(send_pending());
  }
  EXPECT_TRUE(tls.close_notify_received()) << "Python's unwrap() sends close_notify";

  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(payload.data()), payload.size(), digest);
  const std::string hex =
      absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(digest), sizeof(digest)));
  EXPECT_EQ(reply,
            absl::StrCat("250 ", tls.info().protocol_version, " ", tls.info().cipher,
                         " sni=", kServerName, " len=", payload.size(), " sha256=", hex, "\r\n"));
  EXPECT_EQ(tls.info().protocol_version, "TLSv1.3");

  // unwrap() waits for our close_notify; the server exits 0 only if it arrives.
  ASSERT_OK(tls.Shutdown());
  ASSERT_TRUE(send_pending());
  shutdown(fd, SHUT_WR);
  EXPECT_EQ(child.Wait(20000), 0) << "the Python server failed (see its stderr above)";
}

}  // namespace
}  // namespace mta::auth
