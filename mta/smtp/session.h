// The SMTP server-side protocol state machine. It does no I/O: bytes go in through
// OnInput(), replies come out through output(), and a finished message leaves through
// SessionDelegate::Submit(); the spool's verdict comes back through OnCommitDone().
#ifndef MTA_SMTP_SESSION_H_
#define MTA_SMTP_SESSION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "auth/auth_user.h"
#include "mta/smtp/data_framer.h"
#include "queue/envelope.h"
#include "queue/spool.h"

namespace mta::smtp {

/**
 * A Submit() failure answered with `reply` (a full reply line without CRLF, e.g.
 * "451 4.7.0 ...") instead of the default 451 4.3.0; for Session::OnCommitDone.
 */
absl::Status CommitRefused(absl::string_view reply);

/** Settings shared by every session of a listener. Immutable while sessions run. */
struct SessionConfig {
  std::string hostname = "localhost";
  std::string listener_name = "default";
  std::string stream = "default";  // stream when neither the network nor the header names one
  // Header naming the message's stream (e.g. "X-Stream"); "" = streams are not chosen by
  // header. Always removed from accepted messages when set.
  std::string stream_header;
  bool starttls = false;  // STARTTLS offered (the listener has a certificate)
  uint64_t max_message_bytes = 25 * 1024 * 1024;
  uint32_t max_recipients = 1000;
  uint32_t max_errors = 20;
  uint32_t max_hops = 50;           // Received: fields (ours included) beyond which a message loops
  bool add_missing_headers = true;  // submission role: add Message-ID and Date if missing
  // SMTP AUTH (RFC 4954: PLAIN, LOGIN), offered under TLS, or also in plain text when the
  // listener is trusted (e.g. loopback only). Authenticated clients may relay.
  bool auth_enabled = false;
  bool auth_trusted = false;
  absl::flat_hash_set<std::string> local_domains;  // lower-case; mail accepted from anyone
};

/** Per-connection facts the session needs from its transport. */
struct ClientInfo {
  std::string ip;              // textual peer address
  bool relay_allowed = false;  // peer is in the listener's relay networks
  std::string network_stream;  // stream of the first stream network holding the peer; "" = none
  bool tls = false;            // the connection is encrypted (implicit TLS, or after STARTTLS)
};

/** Shard-local services a session calls. */
class SessionDelegate {
 public:
  virtual ~SessionDelegate() = default;
  virtual std::string NewQueueId() = 0;
  virtual absl::Time Now() = 0;
  /** Hands a finished message to the spool; must later call OnCommitDone exactly once. */
  virtual void Submit(std::unique_ptr<queue::SpoolRecord> record) = 0;
  /** Whether a stream header may name `stream` (the configured streams; reloadable). */
  virtual bool KnownStream(absl::string_view stream) = 0;
  /**
   * Checks SMTP AUTH credentials without blocking the caller (the KDF runs elsewhere); must
   * later call Session::OnCredentialsVerified exactly once, never from within this call.
   * The result is the user, PermissionDenied (bad credentials), or any other error for a
   * temporary failure (e.g. ResourceExhausted while the client or user is rate-limited).
   */
  virtual void VerifyCredentials(std::string user, std::string password) = 0;
  /** Every reply the session sends (its code; once per reply, not per line). */
  virtual void OnReply(int code) {}
};

/**
 * Shard-local: every call runs on the owning shard's thread.
 *
 * Pipelining (RFC 2920): OnInput() processes every complete command it holds and batches
 * the replies into output(); the caller flushes output() whenever OnInput() returns.
 */
class Session {
 public:
  // kStartTls: "220 Ready to start TLS" was queued; the transport runs the handshake and
  // then calls OnTlsEstablished() (or OnTlsFailed()); no input is processed meanwhile.
  // kWaitingAuth: AUTH credentials are being verified (OnCredentialsVerified() ends it); like
  // kWaitingCommit, pipelined input is kept but not processed meanwhile.
  enum class Phase { kCommand, kContent, kWaitingCommit, kStartTls, kWaitingAuth, kClosed };

  Session(const SessionConfig& config, ClientInfo client, SessionDelegate* delegate);

  /** Queues the 220 greeting. */
  void Greet();
  /** Queues `reply` (a full reply line without CRLF) and closes, e.g. 421 at greeting. */
  void RejectAndClose(absl::string_view reply);
  /** Feeds received bytes. */
  void OnInput(absl::string_view bytes);
  /** The spool's verdict on the message last passed to Submit(). */
  void OnCommitDone(const absl::Status& status, const std::string& queue_id);
  /** The verdict on the credentials last passed to SessionDelegate::VerifyCredentials. */
  void OnCredentialsVerified(absl::StatusOr<auth::AuthUser> result);
  /** The phase's inactivity timer fired. */
  void OnTimeout();
  /** Graceful shutdown: closes now if idle, else after the current message is answered. */
  void OnShutdown();
  /**
   * The TLS handshake after STARTTLS completed: the session starts over (RFC 3207 section
   * 4.2: the client must EHLO again; nothing learnt before TLS is kept).
   */
  void OnTlsEstablished();
  /** The handshake failed: the session is closed (no reply can reach the client). */
  void OnTlsFailed();
  bool tls() const { return client_.tls; }
  /** Plain-text bytes a client pipelined after STARTTLS, discarded (CVE-2011-0411). */
  uint64_t discarded_after_starttls() const { return discarded_after_starttls_; }

  std::string& output() { return out_; }
  Phase phase() const { return phase_; }
  bool closing() const { return phase_ == Phase::kClosed; }
  /** False when more input would only pile up (waiting for the spool). */
  bool WantsInput() const;
  uint64_t messages_accepted() const { return messages_accepted_; }
  /** The user that passed AUTH, if any. */
  const std::optional<auth::AuthUser>& auth_user() const { return auth_user_; }

  /** Longest command line including CRLF (RFC 5321 section 4.5.3.1.4). */
  static constexpr size_t kMaxCommandLine = 512;
  /** Longest MAIL/RCPT line once DSN, SIZE and SMTPUTF8 parameters are allowed for. */
  static constexpr size_t kMaxExtendedCommandLine = kMaxCommandLine + 500;

 private:
  struct Transaction {
    std::optional<queue::Envelope> envelope;  // set by MAIL
    uint64_t declared_size = 0;
    // Content state, set by DATA or the first BDAT.
    std::string content;
    std::optional<DataFramer> framer;
    size_t header_offset = 0;  // where the client's content starts (after Received:)
    bool bdat = false;
    bool bdat_failed = false;  // BDAT without a valid transaction: chunks are discarded
  };

  void Process();
  bool ProcessCommandLine();  // false when more input is needed
  size_t MaxLineFor(absl::string_view line) const;
  void HandleCommand(absl::string_view line);
  void HandleEhlo(absl::string_view args, bool extended);
  void HandleStartTls(absl::string_view args);
  void HandleMail(absl::string_view args);
  void HandleRcpt(absl::string_view args);
  void HandleData(absl::string_view args);
  void HandleBdat(absl::string_view args);
  // SMTP AUTH (RFC 4954).
  bool AuthOffered() const;
  bool RelayAllowed() const { return client_.relay_allowed || auth_user_.has_value(); }
  void HandleAuth(absl::string_view args);
  void HandleAuthResponse(absl::string_view line);  // a line answering a 334 challenge
  void FinishPlain(absl::string_view decoded);
  void StartVerification(std::string user, std::string password);
  bool ConsumeContent();  // false when more input is needed
  void StartContent(bool bdat);
  void FinishContent();
  struct HeaderFacts {
    bool has_message_id = false;
    bool has_date = false;
    uint32_t received = 0;  // Received: fields the client sent
  };
  HeaderFacts ScanHeaders() const;
  /** Removes every config_.stream_header field; returns their unfolded, trimmed values. */
  std::vector<std::string> TakeStreamHeaders();
  /** Sets *stream, or *reject to a 550 reply when the header values cannot be used. */
  bool ChooseStream(const std::vector<std::string>& header_values, std::string* stream,
                    std::string* reject) const;
  void AddMissingHeaders(const HeaderFacts& facts);
  void ResetTransaction();
  void Reply(absl::string_view line);
  void ReplyError(absl::string_view line);  // counts toward max_errors
  void Close(absl::string_view line);

  const SessionConfig& config_;
  ClientInfo client_;
  SessionDelegate* const delegate_;

  Phase phase_ = Phase::kCommand;
  std::string in_;
  size_t in_pos_ = 0;
  std::string out_;
  bool discarding_long_line_ = false;
  bool shutting_down_ = false;
  uint32_t errors_ = 0;
  uint64_t discarded_after_starttls_ = 0;
  uint64_t messages_accepted_ = 0;

  std::string helo_;
  bool esmtp_ = false;
  Transaction txn_;
  uint64_t bdat_remaining_ = 0;
  bool bdat_last_ = false;

  // The 334 challenge a client response is expected for, if any.
  enum class AuthStep { kNone, kPlain, kLoginUser, kLoginPassword };
  AuthStep auth_step_ = AuthStep::kNone;
  std::string auth_login_user_;              // LOGIN: the user name, until the password comes
  std::optional<auth::AuthUser> auth_user_;  // set once AUTH succeeded
};

}  // namespace mta::smtp

#endif  // MTA_SMTP_SESSION_H_
