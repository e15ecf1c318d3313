// The SMTP client-side protocol state machine used for outbound delivery. It does no I/O:
// the connection driver feeds received bytes to OnInput(), sends what output() holds, and
// collects each transaction's per-recipient outcome through TakeResult().
#ifndef MTA_SMTP_CLIENT_SESSION_H_
#define MTA_SMTP_CLIENT_SESSION_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "queue/envelope.h"

namespace mta::smtp {

/** One complete (possibly multi-line) SMTP reply, or a reply synthesized by the client. */
struct ServerReply {
  int code = 0;          // 200..559; 0 = no reply (the command was never sent or answered)
  std::string enhanced;  // RFC 3463 "x.y.z" when ENHANCEDSTATUSCODES is in effect, else ""
  // Text of each line after "NNN-"/"NNN " with the enhanced code removed. Control
  // characters are replaced by '?', so the text is safe to log and to quote in a bounce.
  std::vector<std::string> lines;
  // True when the client made this reply up (local refusal, timeout, protocol error):
  // the server never said it. Bounces say "x-local" rather than "smtp" for these.
  bool local = false;

  bool empty() const { return code == 0; }
  bool positive() const { return code >= 200 && code < 300; }
  bool intermediate() const { return code >= 300 && code < 400; }
  bool transient() const { return code >= 400 && code < 500; }
  bool permanent() const { return code >= 500 && code < 600; }
  /** "550 5.1.1 first line second line": one line for logs and Diagnostic-Code. */
  std::string ToString() const;
};

/** What the server announced in its EHLO reply. Reset by STARTTLS (RFC 3207 section 4.2). */
struct ServerCapabilities {
  bool esmtp = false;  // EHLO succeeded (false after a HELO fallback: no extensions)
  bool pipelining = false;
  bool size = false;      // SIZE advertised
  uint64_t size_max = 0;  // SIZE value; 0 = no fixed limit (RFC 1870 section 4)
  bool eight_bit_mime = false;
  bool smtputf8 = false;
  bool chunking = false;
  bool dsn = false;
  bool starttls = false;
  bool enhanced_status_codes = false;
  std::string server_name;  // first word of the first EHLO/HELO reply line

  /** "PIPELINING SIZE=10240000 8BITMIME ...": the negotiated set, for logs. */
  std::string ToString() const;
  /**
   * Reads an EHLO reply (RFC 5321 section 4.1.1.1: the server's name, then one
   * case-insensitive "keyword [params]" per line). `previous_name` stays the server name
   * when the reply's first line names none.
   */
  static ServerCapabilities FromEhloReply(const ServerReply& reply,
                                          const std::string& previous_name);
};

/** One recipient of an outbound transaction. */
struct OutboundRecipient {
  std::string address;  // "local@domain" without angle brackets, as spooled
  uint8_t notify = 0;   // queue::NotifyFlags; 0 = no NOTIFY. Sent only if the server has DSN
  std::string orcpt;    // decoded "addr-type;address" (e.g. "rfc822;u@x"), "" = none
};

/**
 * One message to send over a ready connection. Only `content` is borrowed: it must stay
 * alive and unchanged until the transaction's result has been taken (or the session is
 * destroyed).
 */
struct OutboundMessage {
  std::string sender;  // "" for the null reverse-path
  std::vector<OutboundRecipient> recipients;
  queue::DsnRet ret = queue::DsnRet::kUnspecified;  // sent only if the server has DSN
  std::string envid;                                // decoded ENVID, "" = none
  // k8BitMime asks for BODY=8BITMIME; 8-bit bytes in the content ask for it anyway.
  queue::BodyType body_type = queue::BodyType::kUnspecified;
  bool smtputf8 = false;  // the message was received with SMTPUTF8
  // RFC 5322 message: CRLF line endings, not dot-stuffed. A missing final CRLF is added.
  const std::string* content = nullptr;
};

/** The outcome of one transaction, taken with ClientSession::TakeResult(). */
struct TransactionResult {
  // One final reply per OutboundMessage::recipients entry, same order: 2xx delivered,
  // 4xx try again later, 5xx permanent failure.
  std::vector<ServerReply> recipients;
  ServerReply mail_reply;     // reply to MAIL (empty if MAIL was never sent)
  ServerReply data_reply;     // reply to DATA (354 or a refusal); empty on the BDAT path
  ServerReply final_reply;    // reply after the content or BDAT LAST; empty if none
  bool content_sent = false;  // the whole message content was handed to the transport
  bool pipelined = false;
  bool bdat = false;

  size_t CountDelivered() const;
};

/** How STARTTLS is used. */
enum class TlsPolicy {
  kNone,           // never send STARTTLS
  kOpportunistic,  // use STARTTLS when offered; continue in plain text if it is refused
  kRequire,        // fail the connection unless TLS is established
};

struct ClientSessionOptions {
  /** Our name for EHLO/HELO: a domain or an address literal. Required. */
  std::string helo_name;
  /** Default: kOpportunistic. */
  TlsPolicy tls = TlsPolicy::kOpportunistic;
  /** Pipeline MAIL/RCPT/DATA when the server offers PIPELINING. Default: true. */
  bool use_pipelining = true;
  /** Use "BDAT n LAST" instead of DATA when the server offers CHUNKING. Default: false. */
  bool use_chunking = false;
  /**
   * With PIPELINING and CHUNKING, a message up to this size goes in the same write as
   * MAIL and RCPT (one round trip); a larger one waits for the RCPT replies so that it is
   * not sent when every recipient is refused. Default: 256 KiB.
   */
  uint64_t bdat_pipelining_max_bytes = 256 * 1024;
  /**
   * Longest reply line accepted, CRLF included; longer is a protocol error. RFC 5321
   * section 4.5.3.1.5 says 512, real servers exceed it. Default: 2048.
   */
  size_t max_reply_line_bytes = 2048;
  /** Longest multi-line reply accepted (all lines). Default: 64 KiB. */
  size_t max_reply_bytes = 64 * 1024;
};

/** Why a connection ended unsuccessfully. */
enum class ClientErrorKind {
  kGreeting,        // the greeting was not 2xx (the reply says why)
  kHelo,            // EHLO and HELO were refused, or EHLO got a 4xx
  kTlsUnavailable,  // TlsPolicy::kRequire, but STARTTLS not offered or refused
  kTlsFailed,       // the driver reported a failed TLS handshake
  kServerClosing,   // the server sent 421 (RFC 5321 section 3.8)
  kProtocol,        // malformed, oversized, unexpected or out-of-order reply
  kTimeout,         // the driver reported a timeout
  kConnectionLost,  // the driver reported EOF or an I/O error
};

struct ClientError {
  ClientErrorKind kind;
  // The server's reply (greeting, 421, refused STARTTLS) or a local 4xx reply saying what
  // happened; this is also what pending recipients were given.
  ServerReply reply;
};

/**
 * Shard-local: not thread-safe; every call runs on the owning shard's thread.
 *
 * One SMTP client connection, from the greeting to QUIT. The driver owns the socket, TLS
 * and timers and, after every call into the session (and after sending bytes):
 *   1. takes the result, if any: TakeResult();
 *   2. sends output() and calls ConsumeOutput() as soon as bytes are handed to the
 *      transport (copied to its send buffer, or accepted by SSL_write), while always
 *      continuing to read (RFC 2920 section 3.5: never block writing on an unread peer).
 *      A reply to the message that arrives while part of it is still unconsumed is
 *      treated as the server aborting mid-message (see HandleEndOfContent);
 *   3. acts on phase(): kStartTls = run the TLS handshake now; kReady = StartTransaction()
 *      or Quit() (or keep the idle connection); kClosed = close the socket (error() says
 *      why, if it failed);
 *   4. re-arms its timer with a timeout for phase(), e.g. DefaultTimeout(phase()).
 *
 * Every failure ends in a result, never a crash: malformed server replies, timeouts and a
 * lost connection give every recipient without a final answer a 4xx reply.
 */
class ClientSession {
 public:
  enum class Phase {
    kGreeting,   // waiting for the server's greeting
    kCommand,    // waiting for the reply to EHLO, HELO, STARTTLS, MAIL, RCPT or RSET
    kStartTls,   // STARTTLS got 220: do the handshake, then OnTlsEstablished/OnTlsFailed
    kReady,      // idle and usable: StartTransaction() or Quit()
    kDataInit,   // waiting for the 354 to DATA
    kDataBlock,  // message content is being sent (output() holds part of it)
    kFinalDot,   // content sent, waiting for the reply to "." or BDAT LAST
    kQuit,       // QUIT sent, waiting for 221 (the driver may also just close)
    kClosed,     // finished: close the connection
  };

  /** @return InvalidArgument if the options are unusable (e.g. empty helo_name). */
  static absl::StatusOr<std::unique_ptr<ClientSession>> Create(ClientSessionOptions options);

  /**
   * RFC 5321 section 4.5.3.2 timeouts: greeting 5 min, EHLO/MAIL/RCPT 5 min, DATA
   * initiation 2 min, each data block 3 min, final dot 10 min. InfiniteDuration for
   * phases that wait for nothing from the server (kReady, kStartTls, kClosed), where the
   * driver applies its own idle or handshake limit.
   */
  static absl::Duration DefaultTimeout(Phase phase);

  ClientSession(const ClientSession&) = delete;
  ClientSession& operator=(const ClientSession&) = delete;

  // ---- Input from the driver ------------------------------------------------------------

  /** Bytes received from the server (after TLS decryption). Ignored once kClosed. */
  void OnInput(absl::string_view bytes);
  /**
   * The handshake after STARTTLS succeeded: capabilities are forgotten and EHLO is sent
   * again. REQUIRES: phase() == kStartTls (else FailedPrecondition).
   */
  absl::Status OnTlsEstablished();
  /**
   * The handshake failed: the connection is unusable (kClosed, kTlsFailed). The driver may
   * reconnect without TLS if its policy allows. REQUIRES: phase() == kStartTls.
   */
  absl::Status OnTlsFailed(absl::string_view reason);
  /** The timer for the current phase expired. Ends the session (kTimeout, unless quitting). */
  void OnTimeout();
  /** EOF or a transport error. Ends the session (kConnectionLost, unless quitting). */
  void OnConnectionLost(absl::string_view reason);

  // ---- Output to the driver -------------------------------------------------------------

  /** Bytes to send now. Valid until the next call into the session. */
  absl::string_view output() const;
  /** `n` bytes of output() were written. More content may then appear in output(). */
  void ConsumeOutput(size_t n);

  // ---- Commands -------------------------------------------------------------------------

  /**
   * Starts a transaction. A message this server cannot take unchanged is refused before
   * anything is sent, with a local 5xx reply for the affected recipients and the result
   * available at once (no RSET needed): bare CR or LF in the content (5.6.0), larger than
   * the server's SIZE (552 5.3.4), 8-bit content without 8BITMIME (5.6.3), a non-ASCII
   * address, or a non-ASCII header in an SMTPUTF8 message, without SMTPUTF8 (553 5.6.7),
   * an invalid sender (5.1.7). An invalid recipient address gets 553 5.1.3 alone; the
   * others proceed. BODY=8BITMIME is sent when declared or when the content has 8-bit
   * bytes; declared but 7-bit clean content also goes to a server without 8BITMIME.
   * @return FailedPrecondition unless phase() == kReady and no result is waiting to be
   *         taken; InvalidArgument if `message` has no recipients or no content.
   */
  absl::Status StartTransaction(OutboundMessage message);
  /**
   * Sends QUIT now if idle, or as soon as the current EHLO/STARTTLS/RSET exchange ends.
   * @return FailedPrecondition while a transaction is in progress.
   */
  absl::Status Quit();

  // ---- State ----------------------------------------------------------------------------

  Phase phase() const;
  /** The finished transaction's outcome, once; nullopt if none is waiting. */
  std::optional<TransactionResult> TakeResult();
  bool has_result() const { return result_.has_value(); }
  /** Set once the session failed; nullopt after a normal QUIT. */
  const std::optional<ClientError>& error() const { return error_; }

  const ServerReply& greeting() const { return greeting_; }
  /** The reply to the latest EHLO (or HELO after a fallback). */
  const ServerReply& ehlo_reply() const { return ehlo_reply_; }
  /** The non-220 reply to STARTTLS, if the server refused it. */
  const ServerReply& starttls_reply() const { return starttls_reply_; }
  const ServerReply& last_reply() const { return last_reply_; }
  const ServerCapabilities& capabilities() const { return caps_; }
  bool tls_active() const { return tls_active_; }
  /** Transactions that produced a result, including those refused before sending. */
  uint64_t transactions_completed() const { return transactions_completed_; }

 private:
  // A reply the session is waiting for, in the order the commands were sent.
  enum class Expect : uint8_t {
    kGreeting,
    kEhlo,
    kHelo,
    kStartTls,
    kRset,
    kMail,
    kRcpt,
    kData,     // the DATA command (354 expected)
    kDataEnd,  // the final "." (or the lone "." after a 354 nobody needs)
    kBdat,     // BDAT n LAST with the content
    kQuit,
  };
  struct Pending {
    Expect what;
    uint32_t index = 0;  // recipient index for kRcpt
  };

  enum class RcptState : uint8_t { kWaiting, kAccepted, kFinal };

  struct Transaction {
    OutboundMessage message;
    TransactionResult result;
    std::vector<RcptState> state;
    bool pipelined = false;
    bool bdat = false;
    bool bdat_with_commands = false;  // BDAT went in the same write as MAIL/RCPT
    bool body_8bitmime = false;       // send BODY=8BITMIME
    bool param_smtputf8 = false;      // send SMTPUTF8
    bool mail_failed = false;
    bool dummy_dot = false;  // "." sent after a 354 only to end DATA (RFC 2920 section 3.1)
    size_t next_rcpt = 0;    // lockstep: next recipient index to send
    size_t accepted = 0;
    uint64_t size = 0;  // content octets on the wire (final CRLF added, not dot-stuffed)
    bool add_crlf = false;
    // Content generation state.
    bool content_started = false;
    bool content_generated = false;  // the tail ("\r\n" and/or ".\r\n") is in out_
    size_t content_pos = 0;          // next source byte of *message.content
    bool at_line_start = true;
    uint64_t content_end = 0;  // absolute output offset just past the content
  };

  explicit ClientSession(ClientSessionOptions options);

  // Input processing.
  void Process();
  bool ParseLine(absl::string_view line);  // false after a protocol error
  void HandleReply(ServerReply reply);
  void HandleGreeting(ServerReply reply);
  void HandleEhlo(ServerReply reply);
  void HandleHelo(ServerReply reply);
  void HandleStartTls(ServerReply reply);
  void HandleRset(ServerReply reply);
  void HandleMail(ServerReply reply);
  void HandleRcpt(uint32_t index, ServerReply reply);
  void HandleData(ServerReply reply);
  void HandleEndOfContent(ServerReply reply);
  void AfterHello();

  // Transaction steps.
  bool RefuseLocally(Transaction& t);  // true if the whole message was refused
  void SendMail();
  void SendRcpt(size_t index);
  void AfterRcpts();
  void SendBody();
  void StartContent();
  void FillContent();
  bool ContentInFlight() const;
  void FinishTransaction(bool rset);
  void BecomeReady();

  // Output and endings.
  void Send(absl::string_view line);  // appends line + CRLF
  void Await(Expect what, uint32_t index = 0);
  void SendQuit();
  void FailAndQuit(ClientErrorKind kind, ServerReply reply);
  void Fail(ClientErrorKind kind, ServerReply reply);
  void ProtocolError(absl::string_view what);
  // Gives `reply` to every recipient without a final one; with `finish`, moves the
  // transaction's result to result_.
  void SettlePending(const ServerReply& reply, bool finish);
  void Close();
  uint64_t OutputOffset() const { return out_base_ + out_pos_; }

  const ClientSessionOptions options_;

  bool closed_ = false;
  bool tls_handshake_ = false;  // phase kStartTls
  bool tls_active_ = false;
  bool quit_requested_ = false;
  bool quit_sent_ = false;
  bool helo_fallback_done_ = false;
  std::deque<Pending> pending_;
  std::optional<Transaction> txn_;
  std::optional<TransactionResult> result_;
  std::optional<ClientError> error_;

  // Input: at most one partial reply line is kept between calls.
  std::string in_;
  ServerReply partial_;       // lines of the reply being received
  size_t partial_bytes_ = 0;  // its size on the wire

  // Output: out_[out_pos_..] is unsent; out_base_ counts bytes consumed before out_[0].
  std::string out_;
  size_t out_pos_ = 0;
  uint64_t out_base_ = 0;

  ServerCapabilities caps_;
  ServerReply greeting_;
  ServerReply ehlo_reply_;
  ServerReply starttls_reply_;
  ServerReply last_reply_;
  uint64_t transactions_completed_ = 0;
};

}  // namespace mta::smtp

#endif  // MTA_SMTP_CLIENT_SESSION_H_
