// TlsChannel handshakes, negotiated versions, bulk data, certificate verification and TLS contexts.

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "auth/tls_channel.h"
#include "auth/tls_channel_test_util.h"
#include "auth/tls_context.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mta::auth {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

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

}  // namespace
}  // namespace mta::auth
