// The client session's transactions: MAIL, RCPT, DATA or BDAT, local refusals, content
// streaming and outcomes. (Connection set-up, replies and endings are in client_session.cc.)
#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "mta/smtp/client_session.h"
#include "mta/smtp/client_session_internal.h"
#include "mta/smtp/command.h"
#include "mta/smtp/content_scan.h"

namespace mta::smtp {
namespace {

// Content is dot-stuffed (or copied, for BDAT) into the output buffer this many source
// bytes at a time, and only while less than kOutputLowWater bytes are waiting to be
// sent: a 25 MB message costs a connection ~150 KB of buffer, not 25 MB.
constexpr size_t kContentChunk = 64 * 1024;
constexpr size_t kOutputLowWater = 64 * 1024;
}  // namespace

using client_internal::LocalReply;
using client_internal::Sanitize;
using client_internal::ValidAddress;

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

}  // namespace mta::smtp
