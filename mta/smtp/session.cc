#include "mta/smtp/session.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "mta/base/rfc5322_date.h"
#include "mta/smtp/address.h"
#include "mta/smtp/command.h"

namespace mta::smtp {
namespace {

// Pipelined input kept while a message waits for its fsync; beyond this we stop reading.
constexpr size_t kMaxBufferedWhileWaiting = 64 * 1024;
constexpr size_t kMaxHeloLength = 255;
constexpr size_t kMaxEnvidLength = 100;

// Keeps a client-supplied token safe to place inside a header field.
std::string SanitizeForHeader(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    out.push_back((c > 32 && c < 127 && c != '(' && c != ')' && c != '\\') ? c : '?');
  }
  return out;
}

std::string IpLiteral(const std::string& ip) {
  return ip.find(':') == std::string::npos ? absl::StrCat("[", ip, "]")
                                           : absl::StrCat("[IPv6:", ip, "]");
}

// A client-supplied stream name made safe for a reply's quoted string: control characters
// (CR and LF included) are dropped, bytes above 127 become '?', '"' and '\\' are escaped,
// and at most kMaxQuotedName characters are kept.
constexpr size_t kMaxQuotedName = 64;
std::string QuoteForReply(absl::string_view s) {
  std::string out = "\"";
  size_t kept = 0;
  for (unsigned char c : s) {
    if (kept == kMaxQuotedName) break;
    if (c < 32 || c == 127) continue;
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c > 127 ? '?' : static_cast<char>(c));
    ++kept;
  }
  out.push_back('"');
  return out;
}

// If `line` (the first line of a header field) is a `name` field, returns the position just
// after its colon. The obsolete syntax (RFC 5322 section 4.5) allows blanks before the colon.
size_t FieldValueStart(absl::string_view line, absl::string_view name) {
  if (!absl::StartsWithIgnoreCase(line, name)) return absl::string_view::npos;
  size_t i = name.size();
  while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
  if (i == line.size() || line[i] != ':') return absl::string_view::npos;
  return i + 1;
}

// Strips "FROM:" / "TO:" (case-insensitive) and tolerates spaces before the path.
bool StripPrefix(absl::string_view* args, absl::string_view prefix) {
  if (!absl::StartsWithIgnoreCase(*args, prefix)) return false;
  args->remove_prefix(prefix.size());
  while (!args->empty() && args->front() == ' ') args->remove_prefix(1);
  return true;
}

// Strict base64 (RFC 4648 section 4, padded) for SASL responses: absl's decoder alone would
// also take whitespace and missing padding.
constexpr char kReplyPayload[] = "type.mta/smtp.CommitReply";

}  // namespace

absl::Status CommitRefused(absl::string_view reply) {
  absl::Status status = absl::UnavailableError(reply);
  status.SetPayload(kReplyPayload, absl::Cord(reply));
  return status;
}

Session::Session(const SessionConfig& config, ClientInfo client, SessionDelegate* delegate)
    : config_(config), client_(std::move(client)), delegate_(delegate) {}

void Session::Reply(absl::string_view line) {
  out_.append(line.data(), line.size());
  out_.append("\r\n");
  // The last line of a reply has a space (or nothing) after its code.
  if (line.size() >= 3 && (line.size() == 3 || line[3] == ' ')) {
    delegate_->OnReply((line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'));
  }
}

void Session::ReplyError(absl::string_view line) {
  Reply(line);
  // An error ends any AUTH exchange in progress: the next line is a command again.
  auth_step_ = AuthStep::kNone;
  auth_login_user_.clear();
  if (++errors_ >= config_.max_errors) {
    Close(absl::StrCat("421 4.7.0 ", config_.hostname, " Error: too many errors"));
  }
}

void Session::Close(absl::string_view line) {
  if (phase_ == Phase::kClosed) return;
  Reply(line);
  phase_ = Phase::kClosed;
}

void Session::Greet() { Reply(absl::StrCat("220 ", config_.hostname, " ESMTP mtad")); }

void Session::RejectAndClose(absl::string_view reply) { Close(reply); }

bool Session::WantsInput() const {
  if (phase_ == Phase::kClosed || phase_ == Phase::kStartTls) return false;
  if (phase_ == Phase::kWaitingCommit || phase_ == Phase::kWaitingAuth) {
    return in_.size() - in_pos_ < kMaxBufferedWhileWaiting;
  }
  return true;
}

void Session::OnInput(absl::string_view bytes) {
  if (phase_ == Phase::kClosed) return;
  if (phase_ == Phase::kStartTls) {
    discarded_after_starttls_ += bytes.size();  // plain text after STARTTLS: never a command
    return;
  }
  if (in_pos_ == in_.size()) {
    in_.clear();
    in_pos_ = 0;
  }
  in_.append(bytes.data(), bytes.size());
  Process();
}

void Session::Process() {
  while (true) {
    if (phase_ == Phase::kClosed || phase_ == Phase::kWaitingCommit || phase_ == Phase::kStartTls ||
        phase_ == Phase::kWaitingAuth) {
      break;
    }
    bool progressed = phase_ == Phase::kContent ? ConsumeContent() : ProcessCommandLine();
    if (!progressed) break;
  }
  // Compact: drop consumed input so the buffer holds at most one partial line or chunk.
  if (in_pos_ > 0 && (in_pos_ == in_.size() || in_pos_ > 16 * 1024)) {
    in_.erase(0, in_pos_);
    in_pos_ = 0;
  }
}

// RFC 5321 section 4.5.3.1.4 allows 512 octets; extensions add room for their parameters:
// SIZE (RFC 1870: 26), RET/ENVID (RFC 3461: 112) and SMTPUTF8 (RFC 6531: 10) on MAIL,
// NOTIFY/ORCPT (RFC 3461: 500) on RCPT.
size_t Session::MaxLineFor(absl::string_view line) const {
  // AUTH lines carry base64 credentials (RFC 4954 section 4 allows up to 12288 octets; this
  // leaves room for about 750 octets of user name and password).
  if (auth_step_ != AuthStep::kNone) return kMaxExtendedCommandLine;
  if (!esmtp_ || line.size() < 4) return kMaxCommandLine;
  Verb verb = ParseCommand(line.substr(0, 4)).verb;
  if (verb == Verb::kAuth) return kMaxExtendedCommandLine;
  if (verb == Verb::kMail) return kMaxCommandLine + 26 + 112 + 10;
  if (verb == Verb::kRcpt) return kMaxCommandLine + 500;
  return kMaxCommandLine;
}

bool Session::ProcessCommandLine() {
  // A chunked (BDAT) message in progress is allowed to finish before shutdown.
  if (shutting_down_ && !txn_.bdat) {
    Close(absl::StrCat("421 4.3.2 ", config_.hostname, " Service shutting down"));
    return false;
  }
  absl::string_view avail(in_.data() + in_pos_, in_.size() - in_pos_);
  size_t lf = avail.find('\n');
  if (discarding_long_line_) {
    if (lf == absl::string_view::npos) {
      in_pos_ = in_.size();
      return false;
    }
    in_pos_ += lf + 1;
    discarding_long_line_ = false;
    ReplyError("500 5.5.2 Error: command line too long");
    return true;
  }
  if (lf == absl::string_view::npos) {
    if (avail.size() > kMaxExtendedCommandLine) {
      discarding_long_line_ = true;
      in_pos_ = in_.size();
    }
    return false;
  }
  in_pos_ += lf + 1;
  if (lf + 1 > MaxLineFor(avail.substr(0, lf))) {
    ReplyError("500 5.5.2 Error: command line too long");
    return true;
  }
  if (lf == 0 || avail[lf - 1] != '\r') {
    ReplyError("500 5.5.2 Error: bare <LF> received; lines must end with <CR><LF>");
    return true;
  }
  absl::string_view line = avail.substr(0, lf - 1);
  if (line.find('\0') != absl::string_view::npos) {
    ReplyError("500 5.5.2 Error: NUL character in command");
    return true;
  }
  if (line.find('\r') != absl::string_view::npos) {
    ReplyError("500 5.5.2 Error: bare <CR> received");
    return true;
  }
  if (auth_step_ != AuthStep::kNone) {
    HandleAuthResponse(line);
  } else {
    HandleCommand(line);
  }
  return true;
}

void Session::HandleCommand(absl::string_view line) {
  Command cmd = ParseCommand(line);
  switch (cmd.verb) {
    case Verb::kEhlo:
      return HandleEhlo(cmd.args, /*extended=*/true);
    case Verb::kHelo:
      return HandleEhlo(cmd.args, /*extended=*/false);
    case Verb::kMail:
      return HandleMail(cmd.args);
    case Verb::kRcpt:
      return HandleRcpt(cmd.args);
    case Verb::kData:
      return HandleData(cmd.args);
    case Verb::kBdat:
      return HandleBdat(cmd.args);
    case Verb::kRset:
      ResetTransaction();
      return Reply("250 2.0.0 Ok");
    case Verb::kNoop:
      return Reply("250 2.0.0 Ok");
    case Verb::kQuit:
      return Close("221 2.0.0 Bye");
    case Verb::kVrfy:
      if (cmd.args.empty()) return ReplyError("501 5.5.4 Syntax: VRFY address");
      return Reply("252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery");
    case Verb::kExpn:
      return ReplyError("502 5.5.1 Error: EXPN not implemented");
    case Verb::kHelp:
      return Reply("214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP");
    case Verb::kStartTls:
      return HandleStartTls(cmd.args);
    case Verb::kAuth:
      return HandleAuth(cmd.args);
    case Verb::kUnknown:
      return ReplyError("500 5.5.2 Error: command not recognized");
  }
}

void Session::HandleEhlo(absl::string_view args, bool extended) {
  absl::string_view name = args.substr(0, args.find(' '));
  if (name.empty()) {
    return ReplyError(extended ? "501 5.5.4 Syntax: EHLO hostname"
                               : "501 5.5.4 Syntax: HELO hostname");
  }
  if (name.size() > kMaxHeloLength) return ReplyError("501 5.5.4 Error: hostname too long");
  ResetTransaction();
  helo_ = std::string(name);
  esmtp_ = extended;
  if (!extended) return Reply(absl::StrCat("250 ", config_.hostname));
  Reply(absl::StrCat("250-", config_.hostname, " Hello ", SanitizeForHeader(name), " [", client_.ip,
                     "]"));
  Reply("250-PIPELINING");
  Reply(absl::StrCat("250-SIZE ", config_.max_message_bytes));
  Reply("250-8BITMIME");
  Reply("250-SMTPUTF8");
  Reply("250-ENHANCEDSTATUSCODES");
  Reply("250-CHUNKING");
  Reply("250-DSN");
  if (config_.starttls && !client_.tls) Reply("250-STARTTLS");
  if (AuthOffered()) Reply("250-AUTH PLAIN LOGIN");
  Reply("250 HELP");
}

void Session::HandleStartTls(absl::string_view args) {
  if (client_.tls) return ReplyError("503 5.5.1 Error: TLS already active");
  if (!config_.starttls) return ReplyError("502 5.5.1 Error: command not implemented");
  if (!args.empty()) return ReplyError("501 5.5.4 Syntax: STARTTLS");
  if (txn_.envelope.has_value()) {
    return ReplyError("503 5.5.1 Error: MAIL transaction in progress");
  }
  Reply("220 2.0.0 Ready to start TLS");
  // Whatever the client pipelined after STARTTLS came in plain text and could have been
  // injected by a man in the middle: it is dropped, never read as if it came over TLS.
  discarded_after_starttls_ += in_.size() - in_pos_;
  in_pos_ = in_.size();
  phase_ = Phase::kStartTls;
}

void Session::OnTlsEstablished() {
  if (phase_ != Phase::kStartTls) return;
  client_.tls = true;
  helo_.clear();
  esmtp_ = false;
  ResetTransaction();
  auth_user_.reset();  // an AUTH from before TLS (trusted listener) is forgotten too
  in_.clear();
  in_pos_ = 0;
  phase_ = Phase::kCommand;
}

void Session::OnTlsFailed() { phase_ = Phase::kClosed; }

void Session::HandleMail(absl::string_view args) {
  if (helo_.empty()) return ReplyError("503 5.5.1 Error: send HELO/EHLO first");
  if (txn_.envelope.has_value()) return ReplyError("503 5.5.1 Error: nested MAIL command");
  if (!StripPrefix(&args, "FROM:")) return ReplyError("501 5.5.4 Syntax: MAIL FROM:<address>");
  auto path = ParsePath(args, {.allow_null = true, .allow_utf8 = true});
  if (!path.ok()) {
    return ReplyError(
        absl::StrCat("501 5.1.7 Bad sender address syntax: ", path.status().message()));
  }
  absl::string_view rest = args.substr(path->consumed);
  if (!rest.empty() && rest.front() != ' ')
    return ReplyError("501 5.5.4 Syntax: MAIL FROM:<address>");
  auto params = ParseEsmtpParams(rest);
  if (!params.ok()) return ReplyError(absl::StrCat("501 5.5.4 ", params.status().message()));
  if (!params->empty() && !esmtp_) {
    return ReplyError("555 5.5.4 Error: parameters require EHLO");
  }
  queue::Envelope env;
  uint64_t declared_size = 0;
  absl::flat_hash_set<std::string> seen;
  for (const EsmtpParam& p : *params) {
    if (!seen.insert(p.keyword).second) {
      return ReplyError(absl::StrCat("501 5.5.4 Error: duplicate ", p.keyword, " parameter"));
    }
    if (p.keyword == "SIZE") {
      if (!p.has_value || p.value.size() > 19 ||
          !std::all_of(p.value.begin(), p.value.end(), absl::ascii_isdigit) ||
          !absl::SimpleAtoi(p.value, &declared_size)) {
        return ReplyError("501 5.5.4 Error: bad SIZE value");
      }
      if (declared_size > config_.max_message_bytes) {
        return ReplyError("552 5.3.4 Message size exceeds fixed limit");
      }
    } else if (p.keyword == "BODY") {
      if (absl::EqualsIgnoreCase(p.value, "7BIT")) {
        env.body_type = queue::BodyType::k7Bit;
      } else if (absl::EqualsIgnoreCase(p.value, "8BITMIME")) {
        env.body_type = queue::BodyType::k8BitMime;
      } else {
        return ReplyError("501 5.5.4 Error: unsupported BODY type");
      }
    } else if (p.keyword == "SMTPUTF8") {
      if (p.has_value) return ReplyError("501 5.5.4 Error: SMTPUTF8 takes no value");
      env.smtputf8 = true;
    } else if (p.keyword == "RET") {
      if (absl::EqualsIgnoreCase(p.value, "FULL")) {
        env.ret = queue::DsnRet::kFull;
      } else if (absl::EqualsIgnoreCase(p.value, "HDRS")) {
        env.ret = queue::DsnRet::kHeaders;
      } else {
        return ReplyError("501 5.5.4 Error: bad RET value");
      }
    } else if (p.keyword == "ENVID") {
      auto envid = DecodeXtext(p.value);
      if (!p.has_value || !envid.ok() || p.value.size() > kMaxEnvidLength) {
        return ReplyError("501 5.5.4 Error: bad ENVID value");
      }
      env.envid = *std::move(envid);
    } else if (p.keyword == "AUTH" && config_.auth_enabled) {
      // RFC 4954 section 5: the identity a relaying MTA says authenticated the message. It
      // is checked for syntax and otherwise ignored: no client is trusted to assert it.
      if (!p.has_value || !DecodeXtext(p.value).ok()) {
        return ReplyError("501 5.5.4 Error: bad AUTH value");
      }
    } else {
      return ReplyError(absl::StrCat("555 5.5.4 Error: unsupported parameter ", p.keyword));
    }
  }
  if (path->mailbox.non_ascii && !env.smtputf8) {
    return ReplyError("553 5.6.7 Error: non-ASCII address requires SMTPUTF8");
  }
  if (auth_user_.has_value() && !auth_user_->MaySendFrom(path->mailbox.domain)) {
    return ReplyError("553 5.7.1 Sender address not allowed for this user");
  }
  env.sender = path->mailbox.ToString();
  txn_.envelope = std::move(env);
  txn_.declared_size = declared_size;
  Reply("250 2.1.0 Ok");
}

void Session::HandleRcpt(absl::string_view args) {
  if (!txn_.envelope.has_value()) return ReplyError("503 5.5.1 Error: need MAIL command");
  if (txn_.bdat) return ReplyError("503 5.5.1 Error: RCPT during BDAT transfer");
  if (!StripPrefix(&args, "TO:")) return ReplyError("501 5.5.4 Syntax: RCPT TO:<address>");
  queue::Envelope& env = *txn_.envelope;
  auto path = ParsePath(args, {.allow_utf8 = true, .allow_postmaster = true});
  if (!path.ok()) {
    return ReplyError(
        absl::StrCat("501 5.1.3 Bad recipient address syntax: ", path.status().message()));
  }
  const Mailbox& mb = path->mailbox;
  absl::string_view rest = args.substr(path->consumed);
  if (!rest.empty() && rest.front() != ' ')
    return ReplyError("501 5.5.4 Syntax: RCPT TO:<address>");
  auto params = ParseEsmtpParams(rest);
  if (!params.ok()) return ReplyError(absl::StrCat("501 5.5.4 ", params.status().message()));
  if (!params->empty() && !esmtp_) return ReplyError("555 5.5.4 Error: parameters require EHLO");
  queue::Recipient rcpt;
  absl::flat_hash_set<std::string> seen;
  for (const EsmtpParam& p : *params) {
    if (!seen.insert(p.keyword).second) {
      return ReplyError(absl::StrCat("501 5.5.4 Error: duplicate ", p.keyword, " parameter"));
    }
    if (p.keyword == "NOTIFY") {
      for (absl::string_view item : absl::StrSplit(p.value, ',')) {
        if (absl::EqualsIgnoreCase(item, "NEVER")) {
          rcpt.notify |= queue::kNotifyNever;
        } else if (absl::EqualsIgnoreCase(item, "SUCCESS")) {
          rcpt.notify |= queue::kNotifySuccess;
        } else if (absl::EqualsIgnoreCase(item, "FAILURE")) {
          rcpt.notify |= queue::kNotifyFailure;
        } else if (absl::EqualsIgnoreCase(item, "DELAY")) {
          rcpt.notify |= queue::kNotifyDelay;
        } else {
          return ReplyError("501 5.5.4 Error: bad NOTIFY value");
        }
      }
      if ((rcpt.notify & queue::kNotifyNever) && rcpt.notify != queue::kNotifyNever) {
        return ReplyError("501 5.5.4 Error: NOTIFY=NEVER cannot be combined");
      }
    } else if (p.keyword == "ORCPT") {
      size_t semi = p.value.find(';');
      auto addr = semi == std::string::npos
                      ? absl::StatusOr<std::string>(absl::InvalidArgumentError(""))
                      : DecodeXtext(absl::string_view(p.value).substr(semi + 1));
      if (!addr.ok() || semi == 0 || addr->empty()) {
        return ReplyError("501 5.5.4 Error: bad ORCPT value");
      }
      rcpt.orcpt = absl::StrCat(p.value.substr(0, semi), ";", *addr);
    } else {
      return ReplyError(absl::StrCat("555 5.5.4 Error: unsupported parameter ", p.keyword));
    }
  }
  if (mb.non_ascii && !env.smtputf8) {
    return ReplyError("553 5.6.7 Error: non-ASCII address requires SMTPUTF8");
  }
  bool postmaster = mb.domain.empty();  // RCPT TO:<Postmaster> (RFC 5321 section 4.5.1)
  if (postmaster) {
    rcpt.address = absl::StrCat("postmaster@", config_.hostname);
  } else {
    rcpt.address = mb.ToString();
    bool local = !mb.domain_literal && config_.local_domains.contains(mb.domain);
    if (!RelayAllowed() && (!local || mb.HasRelayOperators())) {
      return ReplyError(
          absl::StrCat("554 5.7.1 <", SanitizeForHeader(rcpt.address), ">: Relay access denied"));
    }
  }
  for (const queue::Recipient& r : env.recipients) {
    if (r.address == rcpt.address) return Reply("250 2.1.5 Ok");  // duplicate: stored once
  }
  if (env.recipients.size() >= config_.max_recipients) {
    return Reply("452 4.5.3 Error: too many recipients");
  }
  env.recipients.push_back(std::move(rcpt));
  Reply("250 2.1.5 Ok");
}

void Session::HandleData(absl::string_view args) {
  if (!args.empty()) return ReplyError("501 5.5.4 Syntax: DATA");
  if (txn_.bdat) return ReplyError("503 5.5.1 Error: DATA during BDAT transfer");
  if (!txn_.envelope.has_value()) return ReplyError("503 5.5.1 Error: need MAIL command");
  if (txn_.envelope->recipients.empty()) return ReplyError("554 5.5.1 Error: no valid recipients");
  StartContent(/*bdat=*/false);
  Reply("354 End data with <CR><LF>.<CR><LF>");
}

void Session::HandleBdat(absl::string_view args) {
  auto bdat = ParseBdatArgs(args);
  if (!bdat.ok()) {
    // Without a valid size the chunk boundary is unknown, so the stream cannot be resynced.
    return Close("501 5.5.4 Syntax: BDAT chunk-size [LAST]; closing connection");
  }
  if (!txn_.bdat) {
    bool valid = txn_.envelope.has_value() && !txn_.envelope->recipients.empty();
    StartContent(/*bdat=*/true);
    txn_.bdat_failed = !valid;
  }
  bdat_remaining_ = bdat->size;
  bdat_last_ = bdat->last;
  phase_ = Phase::kContent;
}

void Session::StartContent(bool bdat) {
  txn_.bdat = bdat;
  phase_ = Phase::kContent;
  if (!txn_.envelope.has_value()) return;  // BDAT without MAIL: content is discarded
  queue::Envelope& env = *txn_.envelope;
  env.id = delegate_->NewQueueId();
  std::string& c = txn_.content;
  c.reserve(std::min<uint64_t>(txn_.declared_size, config_.max_message_bytes) + 512);
  // RFC 3848 protocol types: S for TLS, A for an authenticated client (RFC 6531 for UTF8).
  std::string proto = env.smtputf8 ? "UTF8SMTP" : esmtp_ ? "ESMTP" : "SMTP";
  if (proto != "SMTP") {
    if (client_.tls) proto += "S";
    if (auth_user_.has_value()) proto += "A";
  }
  absl::StrAppend(&c, "Received: from ", SanitizeForHeader(helo_), " (", IpLiteral(client_.ip),
                  ")\r\n\tby ", config_.hostname, " (mtad) with ", proto, " id ", env.id);
  if (env.recipients.size() == 1) {
    absl::StrAppend(&c, "\r\n\tfor <", SanitizeForHeader(env.recipients[0].address), ">");
  }
  absl::StrAppend(&c, "; ", Rfc5322Date(delegate_->Now()), "\r\n");
  txn_.header_offset = c.size();
  txn_.framer.emplace(bdat ? DataFramer::Mode::kBdat : DataFramer::Mode::kData,
                      config_.max_message_bytes, &c);
}

bool Session::ConsumeContent() {
  absl::string_view avail(in_.data() + in_pos_, in_.size() - in_pos_);
  if (!txn_.bdat) {
    if (avail.empty()) return false;
    in_pos_ += txn_.framer->Feed(avail);
    if (!txn_.framer->done()) return false;
    FinishContent();
    return true;
  }
  // BDAT: exactly bdat_remaining_ octets belong to this chunk.
  size_t take = static_cast<size_t>(std::min<uint64_t>(bdat_remaining_, avail.size()));
  if (txn_.framer.has_value() && !txn_.bdat_failed) txn_.framer->Feed(avail.substr(0, take));
  in_pos_ += take;
  bdat_remaining_ -= take;
  if (bdat_remaining_ > 0) return false;
  phase_ = Phase::kCommand;
  if (txn_.bdat_failed) {
    bool had_mail = txn_.envelope.has_value();
    // Without MAIL there is no transaction to keep; later chunks fail on their own.
    if (bdat_last_ || !had_mail) ResetTransaction();
    ReplyError(had_mail ? "554 5.5.1 Error: no valid recipients"
                        : "503 5.5.1 Error: need MAIL command");
    return true;
  }
  if (!bdat_last_) {
    Reply(absl::StrCat("250 2.0.0 ", txn_.framer->content_bytes(), " octets received"));
    return true;
  }
  txn_.framer->Finish();
  FinishContent();
  return true;
}

void Session::FinishContent() {
  phase_ = Phase::kCommand;
  uint32_t v = txn_.framer->violations();
  absl::string_view error;
  if (v & DataFramer::kTooBig) {
    error = "552 5.3.4 Message size exceeds fixed limit";
  } else if (v & (DataFramer::kBareLf | DataFramer::kBareCr)) {
    error = "550 5.6.0 Message rejected: bare <CR> or <LF> in message text (RFC 5321 2.3.8)";
  } else if (v & DataFramer::kNul) {
    error = "550 5.6.0 Message rejected: NUL character in message text";
  } else if (v & DataFramer::kLineTooLong) {
    error = "550 5.6.0 Message rejected: text line longer than 1000 octets";
  }
  if (!error.empty()) {
    ResetTransaction();
    return Reply(error);
  }
  // The stream header is internal: it never reaches recipients, whatever decides the stream.
  std::vector<std::string> stream_values;
  if (!config_.stream_header.empty()) stream_values = TakeStreamHeaders();
  HeaderFacts facts = ScanHeaders();
  // RFC 5321 section 6.3: counting Received: fields catches mail loops (ours makes one more).
  if (facts.received + 1 > config_.max_hops) {
    ResetTransaction();
    return Reply("554 5.4.6 Message rejected: too many hops (mail loop?)");
  }
  std::string stream;
  std::string reject;
  if (!ChooseStream(stream_values, &stream, &reject)) {
    ResetTransaction();
    return Reply(reject);
  }
  if (config_.add_missing_headers) AddMissingHeaders(facts);
  auto record = std::make_unique<queue::SpoolRecord>();
  record->envelope = *std::move(txn_.envelope);
  record->content = std::move(txn_.content);
  queue::Envelope& env = record->envelope;
  env.stream = std::move(stream);
  env.listener = config_.listener_name;
  env.client_ip = client_.ip;
  env.helo = helo_;
  env.auth_user = auth_user_.has_value() ? auth_user_->name : "";
  env.received_ms = absl::ToUnixMillis(delegate_->Now());
  env.next_attempt_ms = env.received_ms;
  env.content_bytes = record->content.size();
  ResetTransaction();
  phase_ = Phase::kWaitingCommit;
  delegate_->Submit(std::move(record));
}

Session::HeaderFacts Session::ScanHeaders() const {
  const std::string& c = txn_.content;
  HeaderFacts facts;
  size_t pos = txn_.header_offset;
  while (pos < c.size()) {
    size_t eol = c.find("\r\n", pos);
    if (eol == std::string::npos) eol = c.size();
    absl::string_view line(c.data() + pos, eol - pos);
    if (line.empty()) break;  // end of the header section
    if (line[0] != ' ' && line[0] != '\t') {
      if (line.find(':') == absl::string_view::npos) break;  // not a header: body starts
      if (absl::StartsWithIgnoreCase(line, "Message-ID:")) facts.has_message_id = true;
      if (absl::StartsWithIgnoreCase(line, "Date:")) facts.has_date = true;
      if (absl::StartsWithIgnoreCase(line, "Received:")) ++facts.received;
    }
    pos = eol + 2;
  }
  return facts;
}

std::vector<std::string> Session::TakeStreamHeaders() {
  std::string& c = txn_.content;
  const absl::string_view name = config_.stream_header;
  std::vector<std::string> values;
  std::string kept;       // the header section without the stream fields, built only if needed
  bool removing = false;  // the current field (with its continuation lines) is a stream field
  size_t pos = txn_.header_offset;
  while (pos < c.size()) {
    size_t eol = c.find("\r\n", pos);
    size_t next = eol == std::string::npos ? c.size() : eol + 2;
    if (eol == std::string::npos) eol = c.size();
    absl::string_view line(c.data() + pos, eol - pos);
    if (line.empty()) break;  // end of the header section
    if (line[0] != ' ' && line[0] != '\t') {
      if (line.find(':') == absl::string_view::npos) break;  // not a header: body starts
      size_t value = FieldValueStart(line, name);
      if (value != absl::string_view::npos && values.empty()) {
        kept.assign(c, txn_.header_offset, pos - txn_.header_offset);  // first one: copy so far
      }
      removing = value != absl::string_view::npos;
      if (removing) values.emplace_back(line.substr(value));
    } else if (removing) {
      values.back().append(line.data(), line.size());  // unfolding drops only the CRLF
    }
    if (!removing && !values.empty()) kept.append(c, pos, next - pos);
    pos = next;
  }
  if (values.empty()) return values;
  // One replace: the body after the header section moves once, byte for byte.
  c.replace(txn_.header_offset, pos - txn_.header_offset, kept);
  for (std::string& v : values) v = std::string(absl::StripAsciiWhitespace(v));
  return values;
}

bool Session::ChooseStream(const std::vector<std::string>& header_values, std::string* stream,
                           std::string* reject) const {
  if (!client_.network_stream.empty()) {
    *stream = client_.network_stream;
    return true;
  }
  // An authenticated user's stream comes before the header and the listener's default.
  if (auth_user_.has_value() && !auth_user_->stream.empty()) {
    if (!delegate_->KnownStream(auth_user_->stream)) {
      // Removed from the configuration (reload) while the password file still names it.
      *reject = absl::StrCat("451 4.3.5 Stream ", QuoteForReply(auth_user_->stream),
                             " of the authenticated user is not configured");
      return false;
    }
    *stream = auth_user_->stream;
    return true;
  }
  const std::string* named = nullptr;
  for (const std::string& v : header_values) {
    if (v.empty()) continue;  // an empty value names nothing
    if (named == nullptr) {
      named = &v;
    } else if (v != *named) {
      *reject = absl::StrCat("550 5.7.1 Conflicting streams ", QuoteForReply(*named), " and ",
                             QuoteForReply(v), " in ", config_.stream_header, " headers");
      return false;
    }
  }
  if (named == nullptr) {
    *stream = config_.stream;
    return true;
  }
  if (!delegate_->KnownStream(*named)) {
    *reject = absl::StrCat("550 5.7.1 Unknown stream ", QuoteForReply(*named), " in ",
                           config_.stream_header, " header");
    return false;
  }
  *stream = *named;
  return true;
}

void Session::AddMissingHeaders(const HeaderFacts& facts) {
  std::string extra;
  if (!facts.has_message_id) {
    absl::StrAppend(&extra, "Message-ID: <", txn_.envelope->id, "@", config_.hostname, ">\r\n");
  }
  if (!facts.has_date) absl::StrAppend(&extra, "Date: ", Rfc5322Date(delegate_->Now()), "\r\n");
  if (!extra.empty()) txn_.content.insert(txn_.header_offset, extra);
}

void Session::OnCommitDone(const absl::Status& status, const std::string& queue_id) {
  if (phase_ != Phase::kWaitingCommit) return;
  phase_ = Phase::kCommand;
  if (status.ok()) {
    ++messages_accepted_;
    Reply(absl::StrCat("250 2.0.0 Ok: queued as ", queue_id));
  } else if (auto reply = status.GetPayload(kReplyPayload); reply.has_value()) {
    Reply(std::string(*reply));
  } else {
    Reply("451 4.3.0 Error: queue file write error, try again later");
  }
  Process();
}

void Session::OnTimeout() {
  Close(absl::StrCat("421 4.4.2 ", config_.hostname, " Error: timeout exceeded"));
}

void Session::OnShutdown() {
  shutting_down_ = true;
  if (phase_ == Phase::kCommand && !txn_.bdat) {
    Close(absl::StrCat("421 4.3.2 ", config_.hostname, " Service shutting down"));
  }
}

void Session::ResetTransaction() {
  txn_ = Transaction();
  bdat_remaining_ = 0;
  bdat_last_ = false;
}

}  // namespace mta::smtp
