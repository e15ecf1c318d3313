// DKIM canonicalization (RFC 6376 section 3.4).
//
// Hand-written: no Debian C/C++ DKIM signing library fits an io_uring shard design
// (libopendkim is milter-oriented, with its own DNS resolution and threading).
#include "auth/dkim_canon.h"

#include <string.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace mta::auth {
namespace {

bool IsWsp(char c) { return c == ' ' || c == '\t'; }

// RFC 5322 ftext: printable US-ASCII except the colon.
bool IsFieldNameChar(char c) {
  const unsigned char u = static_cast<unsigned char>(c);
  return u >= 33 && u <= 126 && c != ':';
}

absl::Status HeaderError(size_t line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("header line ", line, ": ", what));
}

}  // namespace

absl::string_view DkimCanonicalizationName(DkimCanonicalization c) {
  return c == DkimCanonicalization::kSimple ? "simple" : "relaxed";
}

absl::StatusOr<DkimMessageParts> DkimSplitMessage(absl::string_view message) {
  DkimMessageParts parts;
  size_t pos = 0;
  size_t line_number = 0;
  while (pos < message.size()) {
    ++line_number;
    // Find this line's CRLF, rejecting bare CR and LF on the way.
    size_t eol = pos;
    while (true) {
      if (eol == message.size()) return HeaderError(line_number, "no CRLF at the end");
      const char c = message[eol];
      if (c == '\n') return HeaderError(line_number, "bare LF");
      if (c == '\r') {
        if (eol + 1 < message.size() && message[eol + 1] == '\n') break;
        return HeaderError(line_number, "bare CR");
      }
      ++eol;
    }
    const absl::string_view line = message.substr(pos, eol - pos);
    const size_t next = eol + 2;
    if (line.empty()) {
      parts.body = message.substr(next);
      return parts;
    }
    if (IsWsp(line[0])) {
      if (parts.headers.empty()) {
        return HeaderError(line_number, "continuation line before the first header field");
      }
      DkimHeaderField& field = parts.headers.back();
      field.raw = message.substr(field.raw.data() - message.data(),
                                 next - (field.raw.data() - message.data()));
    } else {
      size_t name_end = 0;
      while (name_end < line.size() && IsFieldNameChar(line[name_end])) ++name_end;
      size_t colon = name_end;
      while (colon < line.size() && IsWsp(line[colon])) ++colon;
      if (colon == line.size() || line[colon] != ':') {
        return HeaderError(line_number, "not a header field (expected \"name: value\")");
      }
      if (name_end == 0) return HeaderError(line_number, "empty field name");
      parts.headers.push_back({line.substr(0, name_end), message.substr(pos, next - pos)});
    }
    pos = next;
  }
  // No empty line: the message is all header fields and has no body.
  parts.body = message.substr(message.size());
  return parts;
}

void DkimCanonicalizeHeader(DkimCanonicalization c, absl::string_view raw_field, std::string* out) {
  if (c == DkimCanonicalization::kSimple) {
    out->append(raw_field.data(), raw_field.size());
    if (!absl::EndsWith(raw_field, "\r\n")) out->append("\r\n");
    return;
  }
  size_t colon = raw_field.find(':');
  if (colon == absl::string_view::npos) colon = raw_field.size();
  absl::string_view name = raw_field.substr(0, colon);
  while (!name.empty() && IsWsp(name.back())) name.remove_suffix(1);
  const size_t name_start = out->size();
  out->append(name.data(), name.size());
  for (size_t i = name_start; i < out->size(); ++i) (*out)[i] = absl::ascii_tolower((*out)[i]);
  out->push_back(':');

  bool wsp = false;
  bool started = false;
  for (size_t i = colon + 1; i < raw_field.size(); ++i) {
    const char ch = raw_field[i];
    if (ch == '\r' || ch == '\n') continue;  // unfolding: the WSP after the CRLF stays
    if (IsWsp(ch)) {
      wsp = true;
      continue;
    }
    if (wsp && started) out->push_back(' ');
    wsp = false;
    started = true;
    out->push_back(ch);
  }
  out->append("\r\n");
}

void DkimBodyCanonicalizer::FlushPendingLines(std::string* out) {
  for (; pending_crlfs_ > 0; --pending_crlfs_) out->append("\r\n");
}

void DkimBodyCanonicalizer::Update(absl::string_view chunk, std::string* out) {
  const size_t before = out->size();
  const bool relaxed = mode_ == DkimCanonicalization::kRelaxed;
  // Appends a run of ordinary bytes: the line ends and the WSP held back before it are
  // final now.
  auto emit = [&](absl::string_view run) {
    FlushPendingLines(out);
    if (pending_wsp_) {
      out->push_back(' ');
      pending_wsp_ = false;
    }
    out->append(run.data(), run.size());
    any_content_ = true;
  };
  auto line_end = [&] {
    pending_wsp_ = false;  // relaxed: WSP at the end of a line goes
    ++pending_crlfs_;
  };

  size_t i = 0;
  const size_t n = chunk.size();
  if (pending_cr_ && n > 0) {
    pending_cr_ = false;
    if (chunk[0] == '\n') {
      line_end();
      i = 1;
    } else {
      emit("\r");
    }
  }
  while (i < n) {
    const size_t start = i;
    if (relaxed) {
      // A single SP between two other bytes is already canonical: keep it in the run so
      // that ordinary prose goes out a line at a time. Runs start with a non-WSP byte.
      while (i < n && chunk[i] != '\r' && chunk[i] != '\t') {
        if (chunk[i] == ' ' &&
            (i == start || i + 1 == n || IsWsp(chunk[i + 1]) || chunk[i + 1] == '\r')) {
          break;
        }
        ++i;
      }
    } else {
      const void* cr = memchr(chunk.data() + i, '\r', n - i);
      i = cr == nullptr ? n : static_cast<const char*>(cr) - chunk.data();
    }
    if (i > start) emit(chunk.substr(start, i - start));
    if (i == n) break;
    if (chunk[i] == '\r') {
      if (i + 1 == n) {
        pending_cr_ = true;
        break;
      }
      if (chunk[i + 1] == '\n') {
        line_end();
        i += 2;
      } else {
        emit("\r");
        ++i;
      }
    } else {  // WSP, relaxed only
      pending_wsp_ = true;
      ++i;
    }
  }
  length_ += out->size() - before;
}

void DkimBodyCanonicalizer::Finish(std::string* out) {
  const size_t before = out->size();
  if (pending_cr_) {
    // A CR at the very end is content, not a line end.
    pending_cr_ = false;
    FlushPendingLines(out);
    if (pending_wsp_) out->push_back(' ');
    pending_wsp_ = false;
    out->push_back('\r');
    any_content_ = true;
  }
  // Empty lines at the end are dropped; the last line gets its CRLF (added if missing).
  // simple turns an empty body into CRLF, relaxed leaves it empty.
  pending_crlfs_ = 0;
  pending_wsp_ = false;
  if (mode_ == DkimCanonicalization::kSimple || any_content_) out->append("\r\n");
  length_ += out->size() - before;
}

std::string DkimCanonicalizeBody(DkimCanonicalization c, absl::string_view body) {
  std::string out;
  out.reserve(body.size() + 2);
  DkimBodyCanonicalizer canonicalizer(c);
  canonicalizer.Update(body, &out);
  canonicalizer.Finish(&out);
  return out;
}

}  // namespace mta::auth
