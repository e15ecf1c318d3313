// TlsChannel against hostile or broken peers, closing and truncation, limits and argument checks.

#include <random>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "auth/tls_channel.h"
#include "auth/tls_channel_test_util.h"
#include "auth/tls_context.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mta::auth {
namespace {

using ::testing::HasSubstr;

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

}  // namespace
}  // namespace mta::auth
