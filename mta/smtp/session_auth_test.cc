// SMTP AUTH (RFC 4954, PLAIN RFC 4616, LOGIN) in the server session: offering, the
// exchanges, the verdicts, and what an authenticated client may do.
#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "auth/auth_user.h"
#include "gtest/gtest.h"
#include "mta/smtp/session.h"
#include "queue/envelope.h"
#include "queue/spool.h"

namespace mta::smtp {
namespace {

using queue::SpoolRecord;
using Replies = std::vector<std::string>;

constexpr char kAuthOk[] = "235 2.7.0 Authentication successful";
constexpr char kAuthBad[] = "535 5.7.8 Authentication credentials invalid";
constexpr char kAuthTemp[] = "454 4.7.0 Temporary authentication failure";
constexpr char kNeedTls[] = "538 5.7.11 Encryption required for requested authentication mechanism";
constexpr char kBadBase64[] = "501 5.5.2 Error: invalid base64 data";
constexpr char kCancelled[] = "501 5.0.0 Authentication cancelled";
constexpr char kRelayDenied[] = "554 5.7.1 <u@remote.example>: Relay access denied";
constexpr char kSenderDenied[] = "553 5.7.1 Sender address not allowed for this user";
constexpr char kAuthLine[] = "250-AUTH PLAIN LOGIN";

class AuthDelegate : public SessionDelegate {
 public:
  std::string NewQueueId() override { return absl::StrFormat("Q%04d", ++ids_issued); }
  absl::Time Now() override { return absl::FromUnixSeconds(1700000000); }
  void Submit(std::unique_ptr<SpoolRecord> record) override {
    submitted.push_back(std::move(record));
  }
  bool KnownStream(absl::string_view stream) override { return known_streams.contains(stream); }
  // Deferred, as on a shard: the test answers through Session::OnCredentialsVerified.
  void VerifyCredentials(std::string user, std::string password) override {
    verifications.emplace_back(std::move(user), std::move(password));
  }

  int ids_issued = 0;
  std::vector<std::unique_ptr<SpoolRecord>> submitted;
  absl::flat_hash_set<std::string> known_streams = {"inbound", "bulk", "tx"};
  std::vector<std::pair<std::string, std::string>> verifications;  // user, password
};

std::vector<std::string> Lines(absl::string_view out) {
  std::vector<std::string> lines;
  if (out.empty()) return lines;
  EXPECT_TRUE(absl::EndsWith(out, "\r\n")) << absl::CHexEscape(out);
  out.remove_suffix(2);
  for (absl::string_view l : absl::StrSplit(out, "\r\n")) lines.emplace_back(l);
  return lines;
}

std::string B64(absl::string_view s) { return absl::Base64Escape(s); }
std::string Plain(absl::string_view user, absl::string_view password,
                  absl::string_view authzid = "") {
  return B64(absl::StrCat(authzid, std::string(1, '\0'), user, std::string(1, '\0'), password));
}

auth::AuthUser Alice() {
  return auth::AuthUser{.name = "alice", .sender_domains = {"example.com"}, .stream = ""};
}

class SessionAuthTest : public ::testing::Test {
 protected:
  SessionAuthTest() {
    config_.hostname = "mx.example.net";
    config_.listener_name = "submission";
    config_.stream = "inbound";
    config_.stream_header = "X-Stream";
    config_.max_errors = 100;
    config_.local_domains = {"local.example"};
    config_.auth_enabled = true;
    config_.auth_trusted = true;
  }

  void Start(bool tls = false, std::string network_stream = "") {
    ClientInfo client{.ip = "192.0.2.1", .relay_allowed = false};
    client.network_stream = std::move(network_stream);
    client.tls = tls;
    session_ = std::make_unique<Session>(config_, std::move(client), &delegate_);
    session_->Greet();
    EXPECT_EQ(Take(), Replies({"220 mx.example.net ESMTP mtad"}));
  }

  Replies Take() {
    Replies r = Lines(session_->output());
    session_->output().clear();
    return r;
  }

  Replies Send(absl::string_view bytes) {
    session_->OnInput(bytes);
    return Take();
  }

  Replies Ehlo() { return Send("EHLO client.example\r\n"); }

  // Sends `command`, expects the session to wait for a verification of user/password, and
  // answers it with `verdict`.
  Replies Verify(absl::string_view command, absl::string_view user, absl::string_view password,
                 absl::StatusOr<auth::AuthUser> verdict) {
    size_t before = delegate_.verifications.size();
    EXPECT_EQ(Send(command), Replies());
    EXPECT_EQ(session_->phase(), Session::Phase::kWaitingAuth);
    EXPECT_EQ(delegate_.verifications.size(), before + 1);
    if (delegate_.verifications.size() == before + 1) {
      EXPECT_EQ(delegate_.verifications.back().first, user);
      EXPECT_EQ(delegate_.verifications.back().second, password);
    }
    session_->OnCredentialsVerified(std::move(verdict));
    return Take();
  }

  void LogIn(auth::AuthUser user) {
    Ehlo();
    std::string name = user.name;
    EXPECT_EQ(
        Verify(absl::StrCat("AUTH PLAIN ", Plain(name, "pw"), "\r\n"), name, "pw", std::move(user)),
        Replies({kAuthOk}));
  }

  // MAIL + RCPT + DATA with `body`; returns the submitted record after a successful commit.
  const SpoolRecord* SendMessage(absl::string_view from, absl::string_view body) {
    EXPECT_EQ(Send(absl::StrCat("MAIL FROM:<", from, ">\r\nRCPT TO:<u@remote.example>\r\nDATA\r\n",
                                body, "\r\n.\r\n")),
              Replies({"250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"}));
    if (delegate_.submitted.empty()) {
      ADD_FAILURE() << "not submitted";
      return nullptr;
    }
    const SpoolRecord* rec = delegate_.submitted.back().get();
    session_->OnCommitDone(absl::OkStatus(), rec->envelope.id);
    Take();
    return rec;
  }

  SessionConfig config_;
  AuthDelegate delegate_;
  std::unique_ptr<Session> session_;
};

// ---------------------------------------------------------------------------------------
// Offering AUTH.

TEST_F(SessionAuthTest, OfferedOnTrustedListenerInPlainText) {
  Start();
  Replies r = Ehlo();
  EXPECT_NE(std::find(r.begin(), r.end(), kAuthLine), r.end()) << absl::StrJoin(r, "|");
  EXPECT_EQ(r.back(), "250 HELP");
}

TEST_F(SessionAuthTest, UntrustedListenerOffersItOnlyUnderTls) {
  config_.auth_trusted = false;
  Start();
  Replies r = Ehlo();
  EXPECT_EQ(std::find(r.begin(), r.end(), kAuthLine), r.end());
  // Refused before any credentials are looked at, with or without an initial response.
  EXPECT_EQ(Send(absl::StrCat("AUTH PLAIN ", Plain("alice", "pw"), "\r\n")), Replies({kNeedTls}));
  EXPECT_EQ(Send("AUTH LOGIN\r\n"), Replies({kNeedTls}));
  EXPECT_TRUE(delegate_.verifications.empty());
  EXPECT_EQ(Send("NOOP\r\n"), Replies({"250 2.0.0 Ok"}));

  Start(/*tls=*/true);
  r = Ehlo();
  EXPECT_NE(std::find(r.begin(), r.end(), kAuthLine), r.end());
  EXPECT_EQ(
      Verify(absl::StrCat("AUTH PLAIN ", Plain("alice", "pw"), "\r\n"), "alice", "pw", Alice()),
      Replies({kAuthOk}));
}

TEST_F(SessionAuthTest, DisabledListenerNeitherOffersNorTakesAuth) {
  config_.auth_enabled = false;
  Start(/*tls=*/true);
  Replies r = Ehlo();
  EXPECT_EQ(std::find(r.begin(), r.end(), kAuthLine), r.end());
  EXPECT_EQ(Send("AUTH PLAIN\r\n"), Replies({"502 5.5.1 Error: command not implemented"}));
  // Nor the MAIL parameter.
  EXPECT_EQ(Send("MAIL FROM:<a@example.com> AUTH=<>\r\n"),
            Replies({"555 5.5.4 Error: unsupported parameter AUTH"}));
}

// ---------------------------------------------------------------------------------------
// PLAIN and LOGIN exchanges.

TEST_F(SessionAuthTest, PlainWithInitialResponse) {
  Start();
  Ehlo();
  EXPECT_EQ(Verify(absl::StrCat("AUTH PLAIN ", Plain("alice", "s3cr3t pw"), "\r\n"), "alice",
                   "s3cr3t pw", Alice()),
            Replies({kAuthOk}));
  ASSERT_TRUE(session_->auth_user().has_value());
  EXPECT_EQ(session_->auth_user()->name, "alice");
  EXPECT_EQ(session_->phase(), Session::Phase::kCommand);
}

TEST_F(SessionAuthTest, PlainWithChallengeAndMechanismInAnyCase) {
  Start();
  Ehlo();
  EXPECT_EQ(Send("auth plain\r\n"), Replies({"334 "}));
  EXPECT_EQ(Verify(absl::StrCat(Plain("alice", "pw"), "\r\n"), "alice", "pw", Alice()),
            Replies({kAuthOk}));
}

TEST_F(SessionAuthTest, PlainAuthorizationIdentity) {
  Start();
  Ehlo();
  // Acting as someone else is refused without a verification.
  EXPECT_EQ(Send(absl::StrCat("AUTH PLAIN ", Plain("alice", "pw", "bob"), "\r\n")),
            Replies({kAuthBad}));
  EXPECT_TRUE(delegate_.verifications.empty());
  // Naming oneself is fine.
  EXPECT_EQ(Verify(absl::StrCat("AUTH PLAIN ", Plain("alice", "pw", "alice"), "\r\n"), "alice",
                   "pw", Alice()),
            Replies({kAuthOk}));
}

TEST_F(SessionAuthTest, MalformedPlainResponses) {
  Start();
  Ehlo();
  for (const std::string& bad :
       {B64("alice"), B64(std::string("alice\0pw", 8)), B64(std::string("\0\0pw", 4)),
        B64(std::string("\0alice\0", 7)), B64(std::string("\0a\0b\0c", 6))}) {
    EXPECT_EQ(Send(absl::StrCat("AUTH PLAIN ", bad, "\r\n")),
              Replies({"501 5.5.2 Error: malformed PLAIN response"}))
        << absl::CHexEscape(bad);
  }
  // "=" is an empty initial response: malformed for PLAIN.
  EXPECT_EQ(Send("AUTH PLAIN =\r\n"), Replies({"501 5.5.2 Error: malformed PLAIN response"}));
  EXPECT_TRUE(delegate_.verifications.empty());
}

TEST_F(SessionAuthTest, LoginWithChallenges) {
  Start();
  Ehlo();
  EXPECT_EQ(Send("AUTH LOGIN\r\n"), Replies({"334 VXNlcm5hbWU6"}));
  EXPECT_EQ(Send(absl::StrCat(B64("alice"), "\r\n")), Replies({"334 UGFzc3dvcmQ6"}));
  EXPECT_EQ(Verify(absl::StrCat(B64("pass word"), "\r\n"), "alice", "pass word", Alice()),
            Replies({kAuthOk}));
}

TEST_F(SessionAuthTest, LoginWithInitialResponseAndPipelinedAnswers) {
  Start();
  Ehlo();
  EXPECT_EQ(Send(absl::StrCat("AUTH LOGIN ", B64("alice"), "\r\n")), Replies({"334 UGFzc3dvcmQ6"}));
  EXPECT_EQ(Verify(absl::StrCat(B64("pw"), "\r\n"), "alice", "pw", Alice()), Replies({kAuthOk}));

  // The whole exchange in one write: the challenges come out together.
  Start();
  Ehlo();
  EXPECT_EQ(Send(absl::StrCat("AUTH LOGIN\r\n", B64("alice"), "\r\n", B64("pw"), "\r\n")),
            Replies({"334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"}));
  ASSERT_EQ(delegate_.verifications.size(), 2u);
  EXPECT_EQ(delegate_.verifications.back(),
            std::make_pair(std::string("alice"), std::string("pw")));
  EXPECT_EQ(session_->phase(), Session::Phase::kWaitingAuth);
}

TEST_F(SessionAuthTest, StarCancels) {
  Start();
  Ehlo();
  EXPECT_EQ(Send("AUTH PLAIN\r\n"), Replies({"334 "}));
  EXPECT_EQ(Send("*\r\n"), Replies({kCancelled}));
  EXPECT_EQ(Send("AUTH LOGIN\r\n*\r\n"), Replies({"334 VXNlcm5hbWU6", kCancelled}));
  EXPECT_EQ(Send(absl::StrCat("AUTH LOGIN\r\n", B64("alice"), "\r\n*\r\n")),
            Replies({"334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", kCancelled}));
  EXPECT_TRUE(delegate_.verifications.empty());
  // Commands work again, and so does a new AUTH.
  EXPECT_EQ(Send("NOOP\r\n"), Replies({"250 2.0.0 Ok"}));
  EXPECT_EQ(
      Verify(absl::StrCat("AUTH PLAIN ", Plain("alice", "pw"), "\r\n"), "alice", "pw", Alice()),
      Replies({kAuthOk}));
}

TEST_F(SessionAuthTest, Base64Errors) {
  Start();
  Ehlo();
  for (absl::string_view bad :
       {"!!!!", "YWJjZA", "YWJjZA=", "YW=j", "YWJj\tZA==", "====", "YWJjZA===", "Y"}) {
    EXPECT_EQ(Send(absl::StrCat("AUTH PLAIN ", bad, "\r\n")), Replies({kBadBase64})) << bad;
    EXPECT_EQ(Send(absl::StrCat("AUTH LOGIN\r\n", bad, "\r\n")),
              Replies({"334 VXNlcm5hbWU6", kBadBase64}))
        << bad;
  }
  // A space inside the initial response is a syntax error.
  EXPECT_EQ(Send("AUTH PLAIN YWJj ZA==\r\n"),
            Replies({"501 5.5.4 Syntax: AUTH mechanism [initial-response]"}));
  EXPECT_EQ(Send("AUTH\r\n"), Replies({"501 5.5.4 Syntax: AUTH mechanism [initial-response]"}));
  EXPECT_TRUE(delegate_.verifications.empty());
}

TEST_F(SessionAuthTest, UnknownMechanism) {
  Start();
  Ehlo();
  EXPECT_EQ(Send("AUTH CRAM-MD5\r\n"), Replies({"504 5.5.4 Unrecognized authentication type"}));
  EXPECT_EQ(Send("AUTH XOAUTH2 dG9rZW4=\r\n"),
            Replies({"504 5.5.4 Unrecognized authentication type"}));
}

TEST_F(SessionAuthTest, LongCredentialsFitAndLongerLinesEndTheExchange) {
  Start();
  Ehlo();
  std::string password(600, 'p');
  EXPECT_EQ(Verify(absl::StrCat("AUTH PLAIN ", Plain("alice", password), "\r\n"), "alice", password,
                   Alice()),
            Replies({kAuthOk}));
  Start();
  Ehlo();
  EXPECT_EQ(Send("AUTH PLAIN\r\n"), Replies({"334 "}));
  EXPECT_EQ(Send(absl::StrCat(B64(std::string(800, 'x')), "\r\n")),
            Replies({"500 5.5.2 Error: command line too long"}));
  // The next line is a command again.
  EXPECT_EQ(Send("NOOP\r\n"), Replies({"250 2.0.0 Ok"}));
}

// ---------------------------------------------------------------------------------------
// Verdicts and sequencing.

TEST_F(SessionAuthTest, FailureThenRetrySucceeds) {
  Start();
  Ehlo();
  EXPECT_EQ(Verify(absl::StrCat("AUTH PLAIN ", Plain("alice", "wrong"), "\r\n"), "alice", "wrong",
                   absl::PermissionDeniedError("invalid credentials")),
            Replies({kAuthBad}));
  EXPECT_FALSE(session_->auth_user().has_value());
  EXPECT_EQ(Send("MAIL FROM:<a@example.com>\r\nRCPT TO:<u@remote.example>\r\nRSET\r\n"),
            Replies({"250 2.1.0 Ok", kRelayDenied, "250 2.0.0 Ok"}));
  EXPECT_EQ(
      Verify(absl::StrCat("AUTH PLAIN ", Plain("alice", "pw"), "\r\n"), "alice", "pw", Alice()),
      Replies({kAuthOk}));
}

TEST_F(SessionAuthTest, TemporaryFailures) {
  Start();
  Ehlo();
  EXPECT_EQ(Verify(absl::StrCat("AUTH PLAIN ", Plain("alice", "pw"), "\r\n"), "alice", "pw",
                   absl::ResourceExhaustedError("too many failures")),
            Replies({kAuthTemp}));
  EXPECT_EQ(Verify(absl::StrCat("AUTH PLAIN ", Plain("alice", "pw"), "\r\n"), "alice", "pw",
                   absl::UnavailableError("busy")),
            Replies({kAuthTemp}));
  EXPECT_FALSE(session_->auth_user().has_value());
}

TEST_F(SessionAuthTest, FailuresCountTowardMaxErrors) {
  config_.max_errors = 3;
  Start();
  Ehlo();
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(Verify(absl::StrCat("AUTH PLAIN ", Plain("alice", "x"), "\r\n"), "alice", "x",
                     absl::PermissionDeniedError("no")),
              Replies({kAuthBad}));
  }
  EXPECT_EQ(Verify(absl::StrCat("AUTH PLAIN ", Plain("alice", "x"), "\r\n"), "alice", "x",
                   absl::PermissionDeniedError("no")),
            Replies({kAuthBad, "421 4.7.0 mx.example.net Error: too many errors"}));
  EXPECT_TRUE(session_->closing());
}

TEST_F(SessionAuthTest, SequencingErrors) {
  Start();
  EXPECT_EQ(Send("AUTH PLAIN\r\n"), Replies({"503 5.5.1 Error: send EHLO first"}));
  EXPECT_EQ(Send("HELO client.example\r\nAUTH PLAIN\r\n"),
            Replies({"250 mx.example.net", "503 5.5.1 Error: send EHLO first"}));
  Ehlo();
  EXPECT_EQ(
      Send("MAIL FROM:<a@example.com>\r\nAUTH PLAIN\r\nRSET\r\n"),
      Replies({"250 2.1.0 Ok", "503 5.5.1 Error: AUTH not permitted during a mail transaction",
               "250 2.0.0 Ok"}));
  EXPECT_EQ(
      Verify(absl::StrCat("AUTH PLAIN ", Plain("alice", "pw"), "\r\n"), "alice", "pw", Alice()),
      Replies({kAuthOk}));
  EXPECT_EQ(Send("AUTH LOGIN\r\n"), Replies({"503 5.5.1 Error: already authenticated"}));
  // Authentication outlives RSET and a new EHLO.
  Ehlo();
  Send("RSET\r\n");
  EXPECT_EQ(Send("AUTH PLAIN\r\n"), Replies({"503 5.5.1 Error: already authenticated"}));
  EXPECT_TRUE(session_->auth_user().has_value());
}

TEST_F(SessionAuthTest, PipelinedCommandsWaitForTheVerdict) {
  Start();
  Ehlo();
  std::string in = absl::StrCat("AUTH PLAIN ", Plain("alice", "pw"),
                                "\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<u@remote.example>\r\n");
  EXPECT_EQ(Send(in), Replies());
  EXPECT_EQ(session_->phase(), Session::Phase::kWaitingAuth);
  EXPECT_TRUE(session_->WantsInput());
  // More pipelined input is kept, not processed.
  EXPECT_EQ(Send("NOOP\r\n"), Replies());
  // Once verified, the RCPT is judged as the authenticated user's: relaying is allowed.
  session_->OnCredentialsVerified(Alice());
  EXPECT_EQ(Take(), Replies({kAuthOk, "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok"}));
}

TEST_F(SessionAuthTest, WantsNoMoreInputWhenTooMuchIsBufferedWhileVerifying) {
  Start();
  Ehlo();
  Send(absl::StrCat("AUTH PLAIN ", Plain("alice", "pw"), "\r\n"));
  std::string noops;
  while (noops.size() < 70 * 1024) noops += "NOOP\r\n";
  EXPECT_EQ(Send(noops), Replies());
  EXPECT_FALSE(session_->WantsInput());
  session_->OnCredentialsVerified(absl::PermissionDeniedError("no"));
  Replies r = Take();
  ASSERT_FALSE(r.empty());
  EXPECT_EQ(r.front(), kAuthBad);
  EXPECT_TRUE(session_->WantsInput());
}

TEST_F(SessionAuthTest, StrayVerdictIsIgnored) {
  Start();
  Ehlo();
  session_->OnCredentialsVerified(Alice());
  EXPECT_EQ(Take(), Replies());
  EXPECT_FALSE(session_->auth_user().has_value());
}

TEST_F(SessionAuthTest, ShutdownWhileVerifyingAnswersThenCloses) {
  Start();
  Ehlo();
  Send(absl::StrCat("AUTH PLAIN ", Plain("alice", "pw"), "\r\n"));
  session_->OnShutdown();
  EXPECT_FALSE(session_->closing());
  session_->OnCredentialsVerified(Alice());
  EXPECT_EQ(Take(), Replies({kAuthOk, "421 4.3.2 mx.example.net Service shutting down"}));
  EXPECT_TRUE(session_->closing());
}

TEST_F(SessionAuthTest, StartTlsForgetsAnEarlierLogin) {
  config_.starttls = true;
  Start();
  LogIn(Alice());
  EXPECT_EQ(Send("STARTTLS\r\n"), Replies({"220 2.0.0 Ready to start TLS"}));
  session_->OnTlsEstablished();
  EXPECT_FALSE(session_->auth_user().has_value());
  Ehlo();
  EXPECT_EQ(
      Verify(absl::StrCat("AUTH PLAIN ", Plain("alice", "pw"), "\r\n"), "alice", "pw", Alice()),
      Replies({kAuthOk}));
}

// ---------------------------------------------------------------------------------------
// What an authenticated client may do.

TEST_F(SessionAuthTest, RelayOnlyWhenAuthenticated) {
  Start();
  Ehlo();
  EXPECT_EQ(Send("MAIL FROM:<a@example.com>\r\nRCPT TO:<u@remote.example>\r\n"
                 "RCPT TO:<u@local.example>\r\nRSET\r\n"),
            Replies({"250 2.1.0 Ok", kRelayDenied, "250 2.1.5 Ok", "250 2.0.0 Ok"}));
  LogIn(Alice());
  EXPECT_EQ(Send("MAIL FROM:<a@example.com>\r\nRCPT TO:<u@remote.example>\r\n"),
            Replies({"250 2.1.0 Ok", "250 2.1.5 Ok"}));
}

TEST_F(SessionAuthTest, SenderDomainsAreEnforced) {
  Start();
  LogIn(auth::AuthUser{.name = "alice", .sender_domains = {"example.com", "example.org"}});
  EXPECT_EQ(Send("MAIL FROM:<a@example.com>\r\nRSET\r\nMAIL FROM:<b@Example.ORG>\r\nRSET\r\n"),
            Replies({"250 2.1.0 Ok", "250 2.0.0 Ok", "250 2.1.0 Ok", "250 2.0.0 Ok"}));
  for (absl::string_view from :
       {"<a@other.example>", "<a@sub.example.com>", "<>", "<a@[192.0.2.9]>"}) {
    EXPECT_EQ(Send(absl::StrCat("MAIL FROM:", from, "\r\n")), Replies({kSenderDenied})) << from;
  }
  // A '*' user may send from anywhere, the null sender included.
  Start();
  LogIn(auth::AuthUser{.name = "bob", .any_sender_domain = true});
  EXPECT_EQ(Send("MAIL FROM:<a@other.example>\r\nRSET\r\nMAIL FROM:<>\r\n"),
            Replies({"250 2.1.0 Ok", "250 2.0.0 Ok", "250 2.1.0 Ok"}));
  // Unauthenticated clients are not restricted this way (relay control applies instead).
  Start();
  Ehlo();
  EXPECT_EQ(Send("MAIL FROM:<a@other.example>\r\n"), Replies({"250 2.1.0 Ok"}));
}

TEST_F(SessionAuthTest, MailAuthParameterIsAcceptedButNotTrusted) {
  Start();
  Ehlo();
  EXPECT_EQ(Send("MAIL FROM:<a@example.com> AUTH=<>\r\nRSET\r\n"
                 "MAIL FROM:<a@example.com> AUTH=alice+40example.com\r\nRSET\r\n"),
            Replies({"250 2.1.0 Ok", "250 2.0.0 Ok", "250 2.1.0 Ok", "250 2.0.0 Ok"}));
  EXPECT_EQ(Send("MAIL FROM:<a@example.com> AUTH=bad+ZZ\r\n"),
            Replies({"501 5.5.4 Error: bad AUTH value"}));
  EXPECT_EQ(Send("MAIL FROM:<a@example.com> AUTH\r\n"),
            Replies({"501 5.5.4 Error: bad AUTH value"}));
  // Claiming an identity does not authenticate: relaying is still refused.
  EXPECT_EQ(Send("MAIL FROM:<a@example.com> AUTH=alice\r\nRCPT TO:<u@remote.example>\r\n"),
            Replies({"250 2.1.0 Ok", kRelayDenied}));
  EXPECT_FALSE(session_->auth_user().has_value());
}

TEST_F(SessionAuthTest, EnvelopeRecordsTheUser) {
  Start();
  LogIn(Alice());
  const SpoolRecord* rec = SendMessage("a@example.com", "Subject: x\r\n\r\nbody");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.auth_user, "alice");
  EXPECT_EQ(rec->envelope.stream, "inbound");  // the user has no stream: the listener's
  EXPECT_TRUE(absl::StrContains(rec->content, " with ESMTPA id "));  // RFC 3848
}

TEST_F(SessionAuthTest, UsersStreamBeatsHeaderAndListenerButNotNetwork) {
  auth::AuthUser user = Alice();
  user.stream = "tx";
  Start();
  LogIn(user);
  const SpoolRecord* rec = SendMessage("a@example.com", "X-Stream: bulk\r\nSubject: x\r\n\r\nb");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "tx");
  EXPECT_FALSE(absl::StrContains(rec->content, "X-Stream"));  // still removed

  // Without a user stream the header chooses.
  Start();
  LogIn(Alice());
  rec = SendMessage("a@example.com", "X-Stream: bulk\r\n\r\nb");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "bulk");

  // A stream network is the most specific choice of all.
  Start(/*tls=*/false, /*network_stream=*/"inbound");
  LogIn(user);
  rec = SendMessage("a@example.com", "Subject: x\r\n\r\nb");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "inbound");
}

TEST_F(SessionAuthTest, UsersStreamNoLongerConfiguredIsATemporaryFailure) {
  auth::AuthUser user = Alice();
  user.stream = "gone";
  Start();
  LogIn(user);
  size_t before = delegate_.submitted.size();
  EXPECT_EQ(Send("MAIL FROM:<a@example.com>\r\nRCPT TO:<u@remote.example>\r\nDATA\r\n"
                 "Subject: x\r\n\r\nb\r\n.\r\n"),
            Replies({"250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>",
                     "451 4.3.5 Stream \"gone\" of the authenticated user is not configured"}));
  EXPECT_EQ(delegate_.submitted.size(), before);
}

TEST_F(SessionAuthTest, UnauthenticatedEnvelopeHasNoUser) {
  Start();
  Ehlo();
  EXPECT_EQ(Send("MAIL FROM:<a@example.com>\r\nRCPT TO:<u@local.example>\r\nDATA\r\n"
                 "Subject: x\r\n\r\nb\r\n.\r\n"),
            Replies({"250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"}));
  ASSERT_EQ(delegate_.submitted.size(), 1u);
  EXPECT_EQ(delegate_.submitted[0]->envelope.auth_user, "");
}

}  // namespace
}  // namespace mta::smtp
