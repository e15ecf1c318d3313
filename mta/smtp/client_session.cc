// The SMTP client-side protocol state machine: reply parsing, EHLO capabilities, STARTTLS
// hand-off, pipelined and lockstep transactions, DATA dot-stuffing and BDAT.
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
#include "mta/smtp/command.h"
#include "mta/smtp/content_scan.h"
#include "mta/smtp/reply_line.h"

namespace mta::smtp {
namespace {

// Content is dot-stuffed (or copied, for BDAT) into the output buffer this many source
// bytes at a time, and only while less than kOutputLowWater bytes are waiting to be
// sent: a 25 MB message costs a connection ~150 KB of buffer, not 25 MB.
constexpr size_t kContentChunk = 64 * 1024;
constexpr size_t kOutputLowWater = 64 * 1024;
// Sent bytes are dropped from the front of the output buffer once this many accumulate.
constexpr size_t kCompactBytes = 64 * 1024;
constexpr size_t kMaxHeloName = 255;

ServerReply LocalReply(int code, absl::string_view enhanced, std::string text) {
  ServerReply r;
  r.code = code;
  r.enhanced = std::string(enhanced);
  r.lines.push_back(std::move(text));
  r.local = true;
  return r;
}

// Replaces control characters so that server text is safe in logs and bounce messages.
// Bytes >= 0x80 are kept: SMTPUTF8 servers may send UTF-8 text.
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

// Validates an outbound address with the intake's own parser; sets *non_ascii.
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

}  // namespace

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

// ---- Transactions ---------------------------------------------------------------------

absl::Status ClientSession::StartTransaction(OutboundMessage message) {
  if (phase() != Phase::kReady || quit_requested_) {
    return absl::FailedPreconditionError("the session is not ready for a transaction");
  }
  if (result_.has_value()) {
    return absl::FailedPreconditionError("the previous transaction's result was not taken");
  }
  if (message.recipients.empty()) return absl::InvalidArgumentError("no recipients");
  if (message.content == nullptr) return absl::InvalidArgumentError("no content");
  Transaction t;
  const size_t n = message.recipients.size();
  t.message = std::move(message);
  t.state.assign(n, RcptState::kWaiting);
  t.result.recipients.resize(n);
  t.pipelined = options_.use_pipelining && caps_.pipelining;
  t.bdat = options_.use_chunking && caps_.chunking;
  t.result.pipelined = t.pipelined;
  t.result.bdat = t.bdat;
  if (RefuseLocally(t)) {
    result_ = std::move(t.result);
    ++transactions_completed_;
    return absl::OkStatus();
  }
  txn_ = std::move(t);
  Transaction& tx = *txn_;
  SendMail();
  if (!tx.pipelined) return absl::OkStatus();  // lockstep: one command, then its reply
  // RFC 2920: MAIL, every RCPT and DATA (or a small BDAT) in one write.
  for (size_t i = 0; i < n; ++i) {
    if (tx.state[i] == RcptState::kWaiting) SendRcpt(i);
  }
  if (!tx.bdat) {
    Send("DATA");
    Await(Expect::kData);
  } else if (tx.size <= options_.bdat_pipelining_max_bytes) {
    tx.bdat_with_commands = true;
    SendBody();
  }
  return absl::OkStatus();
}

bool ClientSession::RefuseLocally(Transaction& t) {
  const OutboundMessage& m = t.message;
  auto refuse_rest = [&t](const ServerReply& reply) {
    for (size_t i = 0; i < t.state.size(); ++i) {
      if (t.state[i] == RcptState::kFinal) continue;
      t.result.recipients[i] = reply;
      t.state[i] = RcptState::kFinal;
    }
    return true;
  };
  bool needs_utf8 = false;
  if (!m.sender.empty() && !ValidAddress(m.sender, /*recipient=*/false, &needs_utf8)) {
    return refuse_rest(LocalReply(
        553, "5.1.7", absl::StrCat("invalid sender address <", Sanitize(m.sender), ">")));
  }
  const std::string& content = *m.content;
  ContentScan scan = ScanContent(content);
  t.add_crlf = !content.empty() && !absl::EndsWith(content, "\r\n");
  t.size = content.size() + (t.add_crlf ? 2 : 0);
  if (scan.bare_line_break) {
    // Sending it could let a lenient server see an early end of data ("SMTP smuggling").
    return refuse_rest(LocalReply(554, "5.6.0",
                                  "message content has a bare CR or LF; lines must end with "
                                  "CRLF (RFC 5321 section 2.3.8)"));
  }
  if (caps_.size && caps_.size_max > 0 && t.size > caps_.size_max) {
    return refuse_rest(
        LocalReply(552, "5.3.4",
                   absl::StrCat("message size ", t.size, " exceeds the fixed maximum message size ",
                                caps_.size_max, " of the server")));
  }
  if (scan.eight_bit && !caps_.eight_bit_mime) {
    // RFC 6152 section 3: 8-bit data may go only to a server that offers 8BITMIME, and we
    // do not downgrade MIME content.
    return refuse_rest(LocalReply(
        554, "5.6.3", "message has 8-bit content but the server does not support 8BITMIME"));
  }
  for (size_t i = 0; i < m.recipients.size(); ++i) {
    bool non_ascii = false;
    if (!ValidAddress(m.recipients[i].address, /*recipient=*/true, &non_ascii)) {
      t.result.recipients[i] = LocalReply(
          553, "5.1.3",
          absl::StrCat("invalid recipient address <", Sanitize(m.recipients[i].address), ">"));
      t.state[i] = RcptState::kFinal;
      continue;
    }
    needs_utf8 |= non_ascii;
  }
  // RFC 6531 section 3.2: SMTPUTF8 is needed for non-ASCII addresses, and for a message
  // received with SMTPUTF8 whose header section is not ASCII. A message that asked for it
  // but needs none of it can still go to an older server unchanged.
  needs_utf8 |= m.smtputf8 && scan.eight_bit_headers;
  if (needs_utf8 && !caps_.smtputf8) {
    return refuse_rest(
        LocalReply(553, "5.6.7",
                   "message needs SMTPUTF8 (non-ASCII address or header) but the server does not "
                   "support it (RFC 6531)"));
  }
  if (std::none_of(t.state.begin(), t.state.end(),
                   [](RcptState s) { return s == RcptState::kWaiting; })) {
    return true;
  }
  // BODY=8BITMIME when the content needs it (whatever was declared) or was declared so.
  t.body_8bitmime =
      caps_.eight_bit_mime && (scan.eight_bit || m.body_type == queue::BodyType::k8BitMime);
  // SMTPUTF8 when needed or when the sender asked for it and the server has it.
  t.param_smtputf8 = caps_.smtputf8 && (needs_utf8 || m.smtputf8);
  return false;
}

void ClientSession::SendMail() {
  Transaction& t = *txn_;
  const OutboundMessage& m = t.message;
  std::string cmd = absl::StrCat("MAIL FROM:<", m.sender, ">");
  if (caps_.size) absl::StrAppend(&cmd, " SIZE=", t.size);
  if (t.body_8bitmime) absl::StrAppend(&cmd, " BODY=8BITMIME");
  if (t.param_smtputf8) absl::StrAppend(&cmd, " SMTPUTF8");
  if (caps_.dsn) {
    if (m.ret == queue::DsnRet::kFull) absl::StrAppend(&cmd, " RET=FULL");
    if (m.ret == queue::DsnRet::kHeaders) absl::StrAppend(&cmd, " RET=HDRS");
    if (!m.envid.empty()) absl::StrAppend(&cmd, " ENVID=", EncodeXtext(m.envid));
  }
  Send(cmd);
  Await(Expect::kMail);
}

void ClientSession::SendRcpt(size_t index) {
  const OutboundRecipient& r = txn_->message.recipients[index];
  std::string cmd = absl::StrCat("RCPT TO:<", r.address, ">");
  if (caps_.dsn) {
    if (r.notify != 0) absl::StrAppend(&cmd, " NOTIFY=", NotifyValue(r.notify));
    std::string orcpt = OrcptValue(r.orcpt);
    if (!orcpt.empty()) absl::StrAppend(&cmd, " ORCPT=", orcpt);
  }
  Send(cmd);
  Await(Expect::kRcpt, static_cast<uint32_t>(index));
}

void ClientSession::HandleMail(ServerReply reply) {
  Transaction& t = *txn_;
  t.result.mail_reply = reply;
  if (reply.positive()) {
    if (!t.pipelined) AfterRcpts();  // lockstep: sends the first RCPT
    return;
  }
  if (!reply.transient() && !reply.permanent()) {
    return ProtocolError(absl::StrCat("unexpected reply to MAIL \"", reply.ToString(), "\""));
  }
  // Every recipient shares the sender's fate. Pipelined RCPT and DATA replies still to
  // come (503 "need MAIL") are read and ignored.
  t.mail_failed = true;
  SettlePending(reply, /*finish=*/false);
  if (pending_.empty()) FinishTransaction(/*rset=*/true);
}

void ClientSession::HandleRcpt(uint32_t index, ServerReply reply) {
  Transaction& t = *txn_;
  if (!reply.positive() && !reply.transient() && !reply.permanent()) {
    return ProtocolError(absl::StrCat("unexpected reply to RCPT \"", reply.ToString(), "\""));
  }
  if (!t.mail_failed) {
    t.result.recipients[index] = reply;
    if (reply.positive()) {
      t.state[index] = RcptState::kAccepted;
      ++t.accepted;
    } else {
      t.state[index] = RcptState::kFinal;
    }
  }
  // Nothing more outstanding: lockstep sends the next RCPT; a pipelined transaction whose
  // BDAT was held back decides now whether to send the content at all.
  if (pending_.empty()) AfterRcpts();
}

void ClientSession::AfterRcpts() {
  Transaction& t = *txn_;
  if (!t.pipelined && !t.mail_failed) {
    while (t.next_rcpt < t.state.size() && t.state[t.next_rcpt] != RcptState::kWaiting) {
      ++t.next_rcpt;
    }
    if (t.next_rcpt < t.state.size()) return SendRcpt(t.next_rcpt++);
  }
  if (t.mail_failed || t.accepted == 0) return FinishTransaction(/*rset=*/true);
  SendBody();
}

void ClientSession::SendBody() {
  Transaction& t = *txn_;
  if (!t.bdat) {
    Send("DATA");
    return Await(Expect::kData);
  }
  // RFC 3030: one chunk holding the whole message. The size is exact: the content has no
  // bare CR/LF (checked) and only the final CRLF may be added.
  Send(absl::StrCat("BDAT ", t.size, " LAST"));
  Await(Expect::kBdat);
  StartContent();
}

void ClientSession::HandleData(ServerReply reply) {
  Transaction& t = *txn_;
  t.result.data_reply = reply;
  if (reply.intermediate()) {
    Await(Expect::kDataEnd);
    if (!t.mail_failed && t.accepted > 0) return StartContent();
    // RFC 2920 section 3.1: the server accepted DATA although no recipient was accepted
    // (or even MAIL failed). It now reads message data, so the client must end it; a lone
    // "." does so without sending the message. Its reply changes no recipient's fate.
    t.dummy_dot = true;
    Send(".");
    return;
  }
  if (reply.transient() || reply.permanent()) {
    // Only recipients that were accepted are affected; refused ones keep their reply.
    for (size_t i = 0; i < t.state.size(); ++i) {
      if (t.state[i] != RcptState::kAccepted) continue;
      t.result.recipients[i] = reply;
      t.state[i] = RcptState::kFinal;
    }
    return FinishTransaction(/*rset=*/true);
  }
  ProtocolError(absl::StrCat("unexpected reply to DATA \"", reply.ToString(), "\""));
}

void ClientSession::StartContent() {
  txn_->content_started = true;
  FillContent();
}

void ClientSession::FillContent() {
  if (!txn_.has_value()) return;
  Transaction& t = *txn_;
  if (!t.content_started || t.content_generated) return;
  const std::string& c = *t.message.content;
  while (t.content_pos < c.size() && out_.size() - out_pos_ < kOutputLowWater) {
    const size_t end = std::min(c.size(), t.content_pos + kContentChunk);
    if (t.bdat) {
      out_.append(c, t.content_pos, end - t.content_pos);
    } else {
      // RFC 5321 section 4.5.2: a line starting with "." gets one more.
      size_t pos = t.content_pos;
      while (pos < end) {
        if (t.at_line_start && c[pos] == '.') out_.push_back('.');
        const void* lf = std::memchr(c.data() + pos, '\n', end - pos);
        size_t stop = lf == nullptr ? end : static_cast<const char*>(lf) - c.data() + 1;
        out_.append(c, pos, stop - pos);
        t.at_line_start = lf != nullptr;
        pos = stop;
      }
    }
    t.content_pos = end;
  }
  if (t.content_pos < c.size()) return;
  if (t.add_crlf) out_.append("\r\n");
  if (!t.bdat) out_.append(".\r\n");
  t.content_generated = true;
  t.content_end = out_base_ + out_.size();
}

bool ClientSession::ContentInFlight() const {
  if (!txn_.has_value() || !txn_->content_started) return false;
  return !txn_->content_generated || OutputOffset() < txn_->content_end;
}

void ClientSession::HandleEndOfContent(ServerReply reply) {
  Transaction& t = *txn_;
  const bool counts = !t.dummy_dot && !t.mail_failed && t.accepted > 0;
  if (ContentInFlight()) {
    // The server answered before it had the whole message. Whatever we kept sending would
    // be read as commands, so stop and drop the connection. A refusal is still the
    // server's verdict on this message; anything else is a broken server.
    if (counts && (reply.transient() || reply.permanent())) {
      t.result.final_reply = reply;
      for (size_t i = 0; i < t.state.size(); ++i) {
        if (t.state[i] != RcptState::kAccepted) continue;
        t.result.recipients[i] = reply;
        t.state[i] = RcptState::kFinal;
      }
    }
    return ProtocolError(absl::StrCat("reply \"", reply.ToString(),
                                      "\" received before the end of the message data"));
  }
  if (reply.intermediate()) {
    return ProtocolError(
        absl::StrCat("unexpected reply to end of data \"", reply.ToString(), "\""));
  }
  t.result.final_reply = reply;
  if (!t.dummy_dot) t.result.content_sent = true;
  if (counts) {
    // RFC 5321 section 4.1.1.4: one reply for the whole message, for every recipient that
    // RCPT accepted.
    for (size_t i = 0; i < t.state.size(); ++i) {
      if (t.state[i] != RcptState::kAccepted) continue;
      t.result.recipients[i] = reply;
      t.state[i] = RcptState::kFinal;
    }
  }
  FinishTransaction(/*rset=*/!(counts && reply.positive()));
}

void ClientSession::FinishTransaction(bool rset) {
  // Recipients are all final here; a local reply guards against a gap all the same.
  SettlePending(LocalReply(451, "4.3.0", "transaction ended without a reply for recipient"),
                /*finish=*/true);
  if (rset) {
    // The server may still hold part of the failed transaction (MAIL accepted, DATA
    // refused...): RSET clears it before the connection is used again.
    Send("RSET");
    return Await(Expect::kRset);
  }
  BecomeReady();
}

void ClientSession::SettlePending(const ServerReply& reply, bool finish) {
  if (!txn_.has_value()) return;
  Transaction& t = *txn_;
  for (size_t i = 0; i < t.state.size(); ++i) {
    if (t.state[i] == RcptState::kFinal) continue;
    t.result.recipients[i] = reply;
    t.state[i] = RcptState::kFinal;
  }
  if (!finish) return;
  if (t.content_started && t.content_generated && OutputOffset() >= t.content_end && !t.dummy_dot) {
    t.result.content_sent = true;
  }
  result_ = std::move(t.result);
  txn_.reset();
  ++transactions_completed_;
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
