// The SMTP client-side protocol state machine: reply parsing, EHLO capabilities, STARTTLS
// hand-off, timeouts and endings. Transactions (pipelined and lockstep, DATA dot-stuffing
// and BDAT) are in client_session_transaction.cc.
#include "mta/smtp/client_session.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "mta/smtp/address.h"
#include "mta/smtp/client_session_internal.h"
#include "mta/smtp/command.h"
#include "mta/smtp/content_scan.h"
#include "mta/smtp/reply_line.h"

namespace mta::smtp {
namespace client_internal {

ServerReply LocalReply(int code, absl::string_view enhanced, std::string text) {
  ServerReply r;
  r.code = code;
  r.enhanced = std::string(enhanced);
  r.lines.push_back(std::move(text));
  r.local = true;
  return r;
}

std::string Sanitize(absl::string_view s) {
  std::string out(s.data(), s.size());
  for (char& c : out) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u == '\t') {
      c = ' ';
    } else if (u < 0x20 || u == 0x7f) {
      c = '?';
    }
  }
  return out;
}

bool ValidAddress(absl::string_view address, bool recipient, bool* non_ascii) {
  std::string path = absl::StrCat("<", address, ">");
  auto parsed =
      ParsePath(path, {.allow_null = false, .allow_utf8 = true, .allow_postmaster = recipient});
  if (!parsed.ok() || parsed->consumed != path.size() || parsed->mailbox.had_source_route) {
    return false;
  }
  *non_ascii = parsed->mailbox.non_ascii;
  return true;
}

}  // namespace client_internal

namespace {

// Sent bytes are dropped from the front of the output buffer once this many accumulate.
constexpr size_t kCompactBytes = 64 * 1024;
constexpr size_t kMaxHeloName = 255;

}  // namespace

using client_internal::LocalReply;
using client_internal::Sanitize;

// ---- Construction ---------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<ClientSession>> ClientSession::Create(ClientSessionOptions options) {
  const std::string& name = options.helo_name;
  if (name.empty() || name.size() > kMaxHeloName) {
    return absl::InvalidArgumentError("helo_name must have 1 to 255 characters");
  }
  for (unsigned char c : name) {
    if (c <= 32 || c >= 127) {
      return absl::InvalidArgumentError("helo_name must be printable ASCII without spaces");
    }
  }
  if (options.max_reply_line_bytes < 512) {
    return absl::InvalidArgumentError("max_reply_line_bytes must be at least 512 (RFC 5321)");
  }
  if (options.max_reply_bytes < options.max_reply_line_bytes) {
    return absl::InvalidArgumentError("max_reply_bytes must be at least max_reply_line_bytes");
  }
  return std::unique_ptr<ClientSession>(new ClientSession(std::move(options)));
}

ClientSession::ClientSession(ClientSessionOptions options) : options_(std::move(options)) {
  Await(Expect::kGreeting);
}

absl::Duration ClientSession::DefaultTimeout(Phase phase) {
  switch (phase) {
    case Phase::kGreeting:
    case Phase::kCommand:
    case Phase::kQuit:
      return absl::Minutes(5);
    case Phase::kDataInit:
      return absl::Minutes(2);
    case Phase::kDataBlock:
      return absl::Minutes(3);
    case Phase::kFinalDot:
      return absl::Minutes(10);
    case Phase::kStartTls:
    case Phase::kReady:
    case Phase::kClosed:
      break;
  }
  return absl::InfiniteDuration();
}

ClientSession::Phase ClientSession::phase() const {
  if (closed_) return Phase::kClosed;
  if (tls_handshake_) return Phase::kStartTls;
  if (ContentInFlight()) return Phase::kDataBlock;
  if (pending_.empty()) return Phase::kReady;
  switch (pending_.front().what) {
    case Expect::kGreeting:
      return Phase::kGreeting;
    case Expect::kData:
      return Phase::kDataInit;
    case Expect::kDataEnd:
    case Expect::kBdat:
      return Phase::kFinalDot;
    case Expect::kQuit:
      return Phase::kQuit;
    default:
      return Phase::kCommand;
  }
}

std::optional<TransactionResult> ClientSession::TakeResult() {
  std::optional<TransactionResult> r = std::move(result_);
  result_.reset();
  return r;
}

// ---- Output ---------------------------------------------------------------------------

absl::string_view ClientSession::output() const {
  return absl::string_view(out_.data() + out_pos_, out_.size() - out_pos_);
}

void ClientSession::ConsumeOutput(size_t n) {
  out_pos_ += std::min(n, out_.size() - out_pos_);
  if (out_pos_ == out_.size()) {
    out_base_ += out_.size();
    out_.clear();
    out_pos_ = 0;
  } else if (out_pos_ >= kCompactBytes) {
    out_.erase(0, out_pos_);
    out_base_ += out_pos_;
    out_pos_ = 0;
  }
  FillContent();
}

void ClientSession::Send(absl::string_view line) {
  out_.append(line.data(), line.size());
  out_.append("\r\n");
}

void ClientSession::Await(Expect what, uint32_t index) { pending_.push_back({what, index}); }

// ---- Input ----------------------------------------------------------------------------

void ClientSession::OnInput(absl::string_view bytes) {
  if (closed_ || bytes.empty()) return;
  if (tls_handshake_) {
    // The driver must route bytes to TLS now; plain text here would be an injection.
    return ProtocolError("plain-text data received where the TLS handshake should be");
  }
  in_.append(bytes.data(), bytes.size());
  Process();
}

void ClientSession::Process() {
  size_t pos = 0;
  while (!closed_) {
    if (tls_handshake_) {
      // Bytes after the 220 to STARTTLS arrived in plain text before the handshake. A
      // client that kept them would later read them as if the server had sent them over
      // TLS (the "response injection" of "NO STARTTLS", USENIX Security 2021).
      if (pos < in_.size()) {
        ProtocolError("data received after the 220 to STARTTLS, before the TLS handshake");
      }
      break;
    }
    size_t lf = in_.find('\n', pos);
    if (lf == std::string::npos) {
      // The line can no longer fit: fail now instead of buffering without bound.
      if (in_.size() - pos >= options_.max_reply_line_bytes) {
        ProtocolError("reply line too long");
      }
      break;
    }
    absl::string_view line(in_.data() + pos, lf - pos);
    pos = lf + 1;
    if (line.size() + 1 > options_.max_reply_line_bytes) {
      ProtocolError("reply line too long");
      break;
    }
    // CRLF is the rule; a bare LF ending is accepted, as every deployed client does.
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!ParseLine(line)) break;
  }
  if (closed_) {
    in_.clear();
  } else {
    in_.erase(0, pos);
  }
}

bool ClientSession::ParseLine(absl::string_view line) {
  std::optional<ReplyLine> parsed = ParseReplyLine(line);
  if (!parsed.has_value()) {
    ProtocolError(absl::StrCat("malformed reply line \"", Sanitize(line.substr(0, 100)), "\""));
    return false;
  }
  if (partial_.code != 0 && parsed->code != partial_.code) {
    ProtocolError(absl::StrCat("reply code changed from ", partial_.code, " to ", parsed->code,
                               " within a multi-line reply"));
    return false;
  }
  partial_bytes_ += line.size() + 2;
  if (partial_bytes_ > options_.max_reply_bytes) {
    ProtocolError("multi-line reply too long");
    return false;
  }
  partial_.code = parsed->code;
  absl::string_view text = parsed->text;
  if (caps_.enhanced_status_codes) {
    // RFC 2034 section 3: each line of the reply carries the enhanced code.
    size_t n = EnhancedCodeLength(text, line[0]);
    if (n > 0) {
      if (partial_.enhanced.empty()) partial_.enhanced = std::string(text.substr(0, n));
      text.remove_prefix(std::min(n + 1, text.size()));
    }
  }
  partial_.lines.push_back(Sanitize(text));
  if (!parsed->last) return true;
  ServerReply reply = std::move(partial_);
  partial_ = ServerReply();
  partial_bytes_ = 0;
  HandleReply(std::move(reply));
  return !closed_;
}

void ClientSession::HandleReply(ServerReply reply) {
  last_reply_ = reply;
  if (pending_.empty()) {
    // RFC 5321 section 3.8: a server may announce its shutdown at any time.
    if (reply.code == 421) return Fail(ClientErrorKind::kServerClosing, std::move(reply));
    return ProtocolError(
        absl::StrCat("unexpected reply \"", reply.ToString(), "\" with no command outstanding"));
  }
  Pending p = pending_.front();
  pending_.pop_front();
  if (p.what == Expect::kQuit) return Close();  // whatever it says, we are done
  if (reply.code == 421 && p.what != Expect::kGreeting) {
    return Fail(ClientErrorKind::kServerClosing, std::move(reply));
  }
  const bool in_transaction = p.what == Expect::kMail || p.what == Expect::kRcpt ||
                              p.what == Expect::kData || p.what == Expect::kDataEnd ||
                              p.what == Expect::kBdat;
  if (in_transaction && !txn_.has_value()) {
    return ProtocolError("internal: transaction reply without a transaction");
  }
  switch (p.what) {
    case Expect::kGreeting:
      return HandleGreeting(std::move(reply));
    case Expect::kEhlo:
      return HandleEhlo(std::move(reply));
    case Expect::kHelo:
      return HandleHelo(std::move(reply));
    case Expect::kStartTls:
      return HandleStartTls(std::move(reply));
    case Expect::kRset:
      return HandleRset(std::move(reply));
    case Expect::kMail:
      return HandleMail(std::move(reply));
    case Expect::kRcpt:
      return HandleRcpt(p.index, std::move(reply));
    case Expect::kData:
      return HandleData(std::move(reply));
    case Expect::kDataEnd:
    case Expect::kBdat:
      return HandleEndOfContent(std::move(reply));
    case Expect::kQuit:
      return Close();
  }
}

// ---- Connection setup -----------------------------------------------------------------

void ClientSession::HandleGreeting(ServerReply reply) {
  greeting_ = reply;
  if (reply.positive()) {
    if (!reply.lines.empty()) {
      absl::string_view first = reply.lines[0];
      caps_.server_name = std::string(first.substr(0, first.find(' ')));
    }
    if (quit_requested_) return SendQuit();
    Send(absl::StrCat("EHLO ", options_.helo_name));
    return Await(Expect::kEhlo);
  }
  if (reply.code == 421) return Fail(ClientErrorKind::kGreeting, std::move(reply));
  if (reply.transient() || reply.permanent()) {
    // RFC 5321 section 3.1: a server that greets with 554 still waits for QUIT.
    return FailAndQuit(ClientErrorKind::kGreeting, std::move(reply));
  }
  ProtocolError(absl::StrCat("unexpected greeting \"", reply.ToString(), "\""));
}

void ClientSession::HandleEhlo(ServerReply reply) {
  if (reply.positive()) {
    ehlo_reply_ = reply;
    caps_ = ServerCapabilities::FromEhloReply(reply, caps_.server_name);
    return AfterHello();
  }
  if (reply.permanent() && !helo_fallback_done_) {
    // RFC 5321 section 3.2: a server that does not know EHLO (500/502) gets HELO.
    helo_fallback_done_ = true;
    ehlo_reply_ = std::move(reply);
    Send(absl::StrCat("HELO ", options_.helo_name));
    return Await(Expect::kHelo);
  }
  if (reply.transient() || reply.permanent()) {
    return FailAndQuit(ClientErrorKind::kHelo, std::move(reply));
  }
  ProtocolError(absl::StrCat("unexpected reply to EHLO \"", reply.ToString(), "\""));
}

void ClientSession::HandleHelo(ServerReply reply) {
  if (reply.positive()) {
    std::string name = caps_.server_name;
    caps_ = ServerCapabilities();  // HELO: no extensions at all
    caps_.server_name = std::move(name);
    ehlo_reply_ = std::move(reply);
    return AfterHello();
  }
  if (reply.transient() || reply.permanent()) {
    return FailAndQuit(ClientErrorKind::kHelo, std::move(reply));
  }
  ProtocolError(absl::StrCat("unexpected reply to HELO \"", reply.ToString(), "\""));
}

void ClientSession::AfterHello() {
  if (quit_requested_) return SendQuit();
  if (!tls_active_ && options_.tls != TlsPolicy::kNone && caps_.starttls) {
    // RFC 2920 section 3.1: STARTTLS ends a pipelined group, so it goes alone.
    Send("STARTTLS");
    return Await(Expect::kStartTls);
  }
  if (!tls_active_ && options_.tls == TlsPolicy::kRequire) {
    return FailAndQuit(
        ClientErrorKind::kTlsUnavailable,
        LocalReply(451, "4.7.4", "TLS is required but the server does not offer STARTTLS"));
  }
  BecomeReady();
}

void ClientSession::HandleStartTls(ServerReply reply) {
  if (reply.positive()) {
    // Process() rejects any byte that followed this reply in the same read.
    tls_handshake_ = true;
    return;
  }
  if (reply.transient() || reply.permanent()) {
    starttls_reply_ = reply;
    if (options_.tls == TlsPolicy::kRequire) {
      return FailAndQuit(ClientErrorKind::kTlsUnavailable, std::move(reply));
    }
    // RFC 3207 section 4: the session continues as it was, with the same capabilities.
    return BecomeReady();
  }
  ProtocolError(absl::StrCat("unexpected reply to STARTTLS \"", reply.ToString(), "\""));
}

absl::Status ClientSession::OnTlsEstablished() {
  if (closed_ || !tls_handshake_) {
    return absl::FailedPreconditionError("OnTlsEstablished outside the kStartTls phase");
  }
  tls_handshake_ = false;
  tls_active_ = true;
  // RFC 3207 section 4.2: forget everything learnt before TLS and ask again.
  std::string name = caps_.server_name;
  caps_ = ServerCapabilities();
  caps_.server_name = std::move(name);
  ehlo_reply_ = ServerReply();
  if (quit_requested_) {
    SendQuit();
  } else {
    Send(absl::StrCat("EHLO ", options_.helo_name));
    Await(Expect::kEhlo);
  }
  return absl::OkStatus();
}

absl::Status ClientSession::OnTlsFailed(absl::string_view reason) {
  if (closed_ || !tls_handshake_) {
    return absl::FailedPreconditionError("OnTlsFailed outside the kStartTls phase");
  }
  tls_handshake_ = false;
  Fail(ClientErrorKind::kTlsFailed,
       LocalReply(451, "4.7.5", absl::StrCat("TLS handshake failed: ", Sanitize(reason))));
  return absl::OkStatus();
}

void ClientSession::HandleRset(ServerReply reply) {
  if (reply.positive()) return BecomeReady();
  if (reply.transient() || reply.permanent()) {
    return FailAndQuit(ClientErrorKind::kProtocol, std::move(reply));
  }
  ProtocolError(absl::StrCat("unexpected reply to RSET \"", reply.ToString(), "\""));
}

void ClientSession::BecomeReady() {
  if (quit_requested_) SendQuit();
}

absl::Status ClientSession::Quit() {
  if (closed_ || quit_sent_) return absl::OkStatus();
  if (txn_.has_value()) {
    return absl::FailedPreconditionError("cannot QUIT while a transaction is in progress");
  }
  quit_requested_ = true;
  if (phase() == Phase::kReady) SendQuit();
  return absl::OkStatus();
}

void ClientSession::SendQuit() {
  quit_sent_ = true;
  Send("QUIT");
  Await(Expect::kQuit);
}

// ---- Endings --------------------------------------------------------------------------

void ClientSession::OnTimeout() {
  if (closed_) return;
  if (quit_sent_) return Close();  // QUIT needs no answer
  std::string what;
  switch (phase()) {
    case Phase::kGreeting:
      what = "waiting for the greeting";
      break;
    case Phase::kDataInit:
      what = "waiting for the reply to DATA";
      break;
    case Phase::kDataBlock:
      what = "sending the message content";
      break;
    case Phase::kFinalDot:
      what = "waiting for the reply to the end of data";
      break;
    case Phase::kStartTls:
      what = "in the TLS handshake";
      break;
    case Phase::kReady:
      what = "while idle";
      break;
    default:
      what = "waiting for a reply";
      break;
  }
  Fail(ClientErrorKind::kTimeout,
       LocalReply(451, "4.4.2", absl::StrCat("conversation timed out ", what)));
}

void ClientSession::OnConnectionLost(absl::string_view reason) {
  if (closed_) return;
  if (quit_sent_) return Close();
  Fail(ClientErrorKind::kConnectionLost,
       LocalReply(451, "4.4.2", absl::StrCat("lost connection: ", Sanitize(reason))));
}

void ClientSession::ProtocolError(absl::string_view what) {
  Fail(ClientErrorKind::kProtocol,
       LocalReply(451, "4.5.0", absl::StrCat("SMTP protocol error: ", what)));
}

void ClientSession::Fail(ClientErrorKind kind, ServerReply reply) {
  if (closed_) return;
  SettlePending(reply, /*finish=*/true);
  if (!error_.has_value()) error_ = ClientError{kind, std::move(reply)};
  Close();
}

void ClientSession::FailAndQuit(ClientErrorKind kind, ServerReply reply) {
  SettlePending(reply, /*finish=*/true);
  error_ = ClientError{kind, std::move(reply)};
  pending_.clear();
  SendQuit();
}

void ClientSession::Close() {
  closed_ = true;
  tls_handshake_ = false;
  pending_.clear();
  out_base_ += out_.size();
  out_.clear();
  out_pos_ = 0;
}

}  // namespace mta::smtp
