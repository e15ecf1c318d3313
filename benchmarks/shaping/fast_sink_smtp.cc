// fast_sink's SMTP half: commands, message content and the records it writes (the server's
// sockets and event loop are in fast_sink.cc).
#include <openssl/base64.h>
#include <openssl/sha.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <string>
#include <string_view>

#include "benchmarks/shaping/fast_sink.h"

namespace mta_bench {

void Sink::Command(Conn& c, std::string_view line) {
  const size_t sp = line.find(' ');
  const std::string verb = AsciiUpper(line.substr(0, sp));
  const std::string_view arg =
      sp == std::string_view::npos ? std::string_view() : line.substr(sp + 1);
  if (verb == "EHLO") return Ehlo(c, arg);
  if (verb == "HELO") return Helo(c, arg);
  if (verb == "MAIL") return Mail(c, arg);
  if (verb == "RCPT") return Rcpt(c, arg);
  if (verb == "DATA") return Data(c, arg);
  if (verb == "BDAT") return Bdat(c, arg);
  if (verb == "RSET") {
    c.ResetTransaction();
    return Reply(c, "250 2.0.0 Ok");
  }
  if (verb == "NOOP") return Reply(c, "250 2.0.0 Ok");
  if (verb == "QUIT") {
    Reply(c, "221 2.0.0 Bye");
    c.closing = true;
    return;
  }
  if (verb == "STARTTLS") return Reply(c, "502 5.5.1 Error: command not implemented");
  if (verb == "VRFY") return Reply(c, "252 2.5.2 Cannot VRFY user");
  if (verb == "HELP") return Reply(c, "214 2.0.0 fast_sink: see the comment atop fast_sink.cc");
  Reply(c, "500 5.5.2 Error: command not recognized");
}

void Sink::Ehlo(Conn& c, std::string_view arg) {
  const std::string_view name = Strip(arg);
  if (name.empty()) return Reply(c, "501 5.5.4 Syntax: EHLO hostname");
  std::string r = "250-" + o_.hostname + " Hello " + std::string(name) + " [" + c.peer_ip + "]\r\n";
  r += "250-PIPELINING\r\n250-SIZE ";
  AppendInt(&r, o_.max_size);
  r += "\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 DSN\r\n";
  c.out += r;
  c.ResetTransaction();
  c.helo = std::string(name);
  c.esmtp = true;
}

void Sink::Helo(Conn& c, std::string_view arg) {
  const std::string_view name = Strip(arg);
  if (name.empty()) return Reply(c, "501 5.5.4 Syntax: HELO hostname");
  Reply(c, "250 " + o_.hostname);
  c.ResetTransaction();
  c.helo = std::string(name);
  c.esmtp = false;
}

void Sink::Mail(Conn& c, std::string_view arg) {
  if (!c.helo.has_value()) return Reply(c, "503 5.5.1 Error: send HELO/EHLO first");
  if (c.mail_from.has_value()) return Reply(c, "503 5.5.1 Error: nested MAIL command");
  auto path = IEquals(arg.substr(0, 5), "FROM:") ? SplitPath(arg.substr(5)) : std::nullopt;
  if (!path.has_value()) return Reply(c, "501 5.5.4 Syntax: MAIL FROM:<address>");
  const auto [address, rest] = *path;
  Params params;
  if (auto err = ParseParams(rest, &params)) return Reply(c, "501 5.5.4 Error: " + *err);
  if (!params.empty() && !c.esmtp) return Reply(c, "555 5.5.4 Error: parameters require EHLO");
  for (const Param& p : params) {
    const std::string value = p.value.value_or("");
    if (p.key == "SIZE") {
      if (!IsDigits(value)) return Reply(c, "501 5.5.4 Error: bad SIZE value");
      if (DigitsGreaterThan(value, o_.max_size)) {
        return Reply(c, "552 5.3.4 Message size exceeds fixed limit");
      }
    } else if (p.key == "BODY") {
      const std::string body = AsciiUpper(value);
      if (body != "7BIT" && body != "8BITMIME") {
        return Reply(c, "501 5.5.4 Error: unsupported BODY type");
      }
    } else if (p.key == "SMTPUTF8") {
      if (p.value.has_value()) return Reply(c, "501 5.5.4 Error: SMTPUTF8 takes no value");
    } else if (p.key == "RET") {
      const std::string ret = AsciiUpper(value);
      if (ret != "FULL" && ret != "HDRS") return Reply(c, "501 5.5.4 Error: bad RET value");
    } else if (p.key == "ENVID") {
      if (value.empty()) return Reply(c, "501 5.5.4 Error: bad ENVID value");
    } else {
      return Reply(c, "555 5.5.4 Error: unsupported parameter " + p.key);
    }
  }
  if (HasNonAscii(address) && FindParam(params, "SMTPUTF8") == nullptr) {
    return Reply(c, "553 5.6.7 Error: non-ASCII address requires SMTPUTF8");
  }
  Reply(c, "250 2.1.0 Ok");
  c.mail_from = std::string(address);
  c.mail_params = std::move(params);
}

void Sink::Rcpt(Conn& c, std::string_view arg) {
  if (!c.mail_from.has_value()) return Reply(c, "503 5.5.1 Error: need MAIL command");
  if (c.bdat_active) return Reply(c, "503 5.5.1 Error: RCPT during BDAT transfer");
  auto path = IEquals(arg.substr(0, 3), "TO:") ? SplitPath(arg.substr(3)) : std::nullopt;
  if (!path.has_value()) return Reply(c, "501 5.5.4 Syntax: RCPT TO:<address>");
  const auto [address, rest] = *path;
  if (address.empty()) return Reply(c, "501 5.1.3 Error: empty recipient");
  Params params;
  if (auto err = ParseParams(rest, &params)) return Reply(c, "501 5.5.4 Error: " + *err);
  if (!params.empty() && !c.esmtp) return Reply(c, "555 5.5.4 Error: parameters require EHLO");
  for (const Param& p : params) {
    const std::string value = p.value.value_or("");
    if (p.key == "NOTIFY") {
      const std::string upper = AsciiUpper(value);
      bool bad = value.empty();
      size_t items = 0;
      bool never = false;
      for (size_t start = 0; start <= upper.size();) {
        size_t comma = upper.find(',', start);
        if (comma == std::string::npos) comma = upper.size();
        const std::string_view item = std::string_view(upper).substr(start, comma - start);
        ++items;
        never |= item == "NEVER";
        if (item != "NEVER" && item != "SUCCESS" && item != "FAILURE" && item != "DELAY") {
          bad = true;
        }
        start = comma + 1;
      }
      if (bad || (never && items > 1)) return Reply(c, "501 5.5.4 Error: bad NOTIFY value");
    } else if (p.key == "ORCPT") {
      if (value.empty() || value.find(';') == std::string::npos) {
        return Reply(c, "501 5.5.4 Error: bad ORCPT value");
      }
    } else {
      return Reply(c, "555 5.5.4 Error: unsupported parameter " + p.key);
    }
  }
  if (HasNonAscii(address) && FindParam(c.mail_params, "SMTPUTF8") == nullptr) {
    return Reply(c, "553 5.6.7 Error: non-ASCII address requires SMTPUTF8");
  }
  if (c.rcpts.size() >= kMaxRecipients) return Reply(c, "452 4.5.3 Error: too many recipients");
  Reply(c, "250 2.1.5 Ok");
  c.rcpts.emplace_back(address);
  c.rcpt_params.push_back(std::move(params));
}

void Sink::Data(Conn& c, std::string_view arg) {
  if (!arg.empty()) return Reply(c, "501 5.5.4 Syntax: DATA");
  if (c.bdat_active) return Reply(c, "503 5.5.1 Error: DATA during BDAT transfer");
  if (!c.mail_from.has_value()) return Reply(c, "503 5.5.1 Error: need MAIL command");
  if (c.rcpts.empty()) return Reply(c, "554 5.5.1 Error: no valid recipients");
  Reply(c, "354 End data with <CR><LF>.<CR><LF>");
  c.mode = Conn::Mode::kData;
  c.data_prev_crlf = true;  // the 354's CRLF: the data starts at a line start
  c.data_too_big = false;
  StartContent(c);
}

void Sink::DataLine(Conn& c, std::string_view line) {
  if (c.data_prev_crlf && line == ".\r\n") {
    c.mode = Conn::Mode::kCommand;
    if (c.data_too_big) {
      c.ResetTransaction();
      return Reply(c, "552 5.3.4 Message size exceeds fixed limit");
    }
    return CompleteMessage(c, "DATA");
  }
  // Dot-stuffing applies at line starts, which only CRLF makes (RFC 5321 4.5.2).
  if (c.data_prev_crlf && line.front() == '.') line.remove_prefix(1);
  c.data_prev_crlf = line.size() >= 2 && line.substr(line.size() - 2) == "\r\n";
  if (c.content_size + line.size() > o_.max_size) c.data_too_big = true;
  if (!c.data_too_big) AddContent(c, line);
}

void Sink::Bdat(Conn& c, std::string_view arg) {
  // capture_sink.py: ([0-9]{1,19})( +LAST)?, case-insensitive, the whole argument.
  size_t digits = 0;
  while (digits < arg.size() && arg[digits] >= '0' && arg[digits] <= '9') ++digits;
  std::string_view tail = arg.substr(digits);
  bool last = false;
  bool ok = digits >= 1 && digits <= 19;
  if (ok && !tail.empty()) {
    size_t spaces = 0;
    while (spaces < tail.size() && tail[spaces] == ' ') ++spaces;
    ok = spaces > 0 && IEquals(tail.substr(spaces), "LAST");
    last = ok;
  }
  if (!ok) {
    // Without a size the chunk cannot be skipped: the stream is lost.
    Reply(c, "501 5.5.4 Syntax: BDAT chunk-size [LAST]; closing connection");
    c.closing = true;
    return;
  }
  uint64_t size = 0;
  std::from_chars(arg.data(), arg.data() + digits, size);
  if (!c.bdat_active) {
    c.bdat_active = true;
    StartContent(c);
    if (!c.mail_from.has_value()) {
      c.bdat_failed = "503 5.5.1 Error: need MAIL command";
    } else if (c.rcpts.empty()) {
      c.bdat_failed = "554 5.5.1 Error: no valid recipients";
    }
  }
  c.mode = Conn::Mode::kBdatChunk;
  c.chunk_remaining = size;
  c.chunk_last = last;
}

void Sink::EndOfChunk(Conn& c) {
  c.mode = Conn::Mode::kCommand;
  if (c.bdat_failed.has_value()) {
    const std::string failure = *c.bdat_failed;
    if (c.chunk_last || failure.compare(0, 3, "503") == 0) c.ResetTransaction();
    return Reply(c, failure);
  }
  if (!c.chunk_last) {
    std::string r = "250 2.0.0 ";
    AppendInt(&r, c.content_size);
    r += " octets received";
    return Reply(c, r);
  }
  CompleteMessage(c, "BDAT");
}

void Sink::StartContent(Conn& c) {
  SHA256_Init(&c.sha);
  c.content_size = 0;
  c.content.clear();
}

void Sink::AddContent(Conn& c, std::string_view bytes) {
  SHA256_Update(&c.sha, bytes.data(), bytes.size());
  c.content_size += bytes.size();
  if (!o_.no_content) c.content.append(bytes);
}

void Sink::CompleteMessage(Conn& c, std::string_view transfer) {
  if (o_.reply_delay_ns == 0) return FinishMessage(c, transfer);
  c.held = transfer;
  held_.emplace_back(ClockNs(CLOCK_MONOTONIC) + o_.reply_delay_ns, c.id);
}

void Sink::ReleaseHeld(int64_t now_mono) {
  while (!held_.empty() && held_.front().first <= now_mono) {
    const uint64_t id = held_.front().second;
    held_.pop_front();
    auto it = conns_.find(id);
    if (it == conns_.end()) continue;  // the client went away first: no 250, no record
    Conn& c = *it->second;
    FinishMessage(c, *c.held);
    c.held.reset();
    Process(c);  // what the client pipelined meanwhile
    AfterIo(c);
  }
  graveyard_.clear();
}

void Sink::FinishMessage(Conn& c, std::string_view transfer) {
  const int64_t now_ns = ClockNs(CLOCK_REALTIME);
  ++c.msg_index;
  std::string id;
  AppendInt(&id, c.id);
  id.push_back('.');
  AppendInt(&id, c.msg_index);
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256_Final(digest, &c.sha);

  // json.dumps(rec, sort_keys=True): the keys below are in sorted order.
  const double t = PySeconds(now_ns);
  std::string& r = records_;
  NoteRecord(ClockNs(CLOCK_MONOTONIC));
  r += "{\"conn_id\": ";
  AppendInt(&r, c.id);
  if (!o_.no_content) {
    r += ", \"data_b64\": \"";
    size_t encoded = 0;
    EVP_EncodedLength(&encoded, c.content.size());  // includes the NUL
    const size_t at = r.size();
    r.resize(at + encoded);
    const size_t written =
        EVP_EncodeBlock(reinterpret_cast<uint8_t*>(&r[at]),
                        reinterpret_cast<const uint8_t*>(c.content.data()), c.content.size());
    r.resize(at + written);
    r += '"';
  }
  r += ", \"esmtp\": ";
  r += c.esmtp ? "true" : "false";
  r += ", \"helo\": ";
  AppendJsonOptString(&r, c.helo);
  r += ", \"id\": ";
  AppendJsonString(&r, id);
  r += ", \"local_ip\": ";
  AppendJsonString(&r, c.local_ip);
  r += ", \"local_port\": ";
  AppendInt(&r, c.local_port);
  r += ", \"mail_from\": ";
  AppendJsonOptString(&r, c.mail_from);
  r += ", \"mail_params\": ";
  AppendJsonParams(&r, c.mail_params);
  r += ", \"msg_index\": ";
  AppendInt(&r, c.msg_index);
  r += ", \"peer_ip\": ";
  AppendJsonString(&r, c.peer_ip);
  r += ", \"peer_port\": ";
  AppendInt(&r, c.peer_port);
  r += ", \"rcpt_params\": [";
  for (size_t i = 0; i < c.rcpt_params.size(); ++i) {
    if (i > 0) r += ", ";
    AppendJsonParams(&r, c.rcpt_params[i]);
  }
  r += "], \"rcpt_to\": [";
  for (size_t i = 0; i < c.rcpts.size(); ++i) {
    if (i > 0) r += ", ";
    AppendJsonString(&r, c.rcpts[i]);
  }
  r += "], \"sha256\": \"";
  static constexpr char kHex[] = "0123456789abcdef";
  for (uint8_t b : digest) {
    r += kHex[b >> 4];
    r += kHex[b & 0xf];
  }
  r += "\", \"size\": ";
  AppendInt(&r, c.content_size);
  r += ", \"time\": ";
  AppendJsonString(&r, IsoTime(t));
  r += ", \"timestamp\": ";
  AppendPyFloat(&r, t);
  r += ", \"tls\": null, \"transfer\": ";
  AppendJsonString(&r, transfer);
  r += ", \"type\": \"message\"}\n";

  c.content.clear();
  c.ResetTransaction();
  Reply(c, "250 2.0.0 Ok: queued as " + id);
}

void Sink::WriteConnectionRecord(const Conn& c) {
  const double end = PySeconds(ClockNs(CLOCK_REALTIME));
  NoteRecord(ClockNs(CLOCK_MONOTONIC));
  std::string& r = records_;
  r += "{\"conn_id\": ";
  AppendInt(&r, c.id);
  r += ", \"end\": ";
  AppendPyFloat(&r, end);
  r += ", \"helo\": ";
  AppendJsonOptString(&r, c.helo);
  r += ", \"local_ip\": ";
  AppendJsonString(&r, c.local_ip);
  r += ", \"local_port\": ";
  AppendInt(&r, c.local_port);
  r += ", \"messages\": ";
  AppendInt(&r, c.msg_index);
  r += ", \"peer_ip\": ";
  AppendJsonString(&r, c.peer_ip);
  r += ", \"peer_port\": ";
  AppendInt(&r, c.peer_port);
  r += ", \"rejected\": ";
  AppendJsonOptString(&r, c.rejected);
  r += ", \"start\": ";
  AppendPyFloat(&r, c.start);
  r += ", \"starttls_discarded_bytes\": 0, \"tls\": null, \"type\": \"connection\"}\n";
}

void Sink::NoteRecord(int64_t now_mono) {
  if (records_.empty()) records_since_ns_ = now_mono;
}

void Sink::FlushRecords() {
  // A blocking write: the records go to tmpfs in the benchmarks.
  size_t pos = 0;
  while (pos < records_.size()) {
    ssize_t n = write(record_fd_, records_.data() + pos, records_.size() - pos);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Log("cannot write " + o_.out + ": " + strerror(errno));
      exit(1);
    }
    pos += static_cast<size_t>(n);
  }
  records_.clear();
}

}  // namespace mta_bench
