// Hand-written because no Debian library parses RFC 5321 envelope paths (mail-header
// parsers such as gmime follow RFC 5322, whose grammar differs: comments, groups, folding).
#include "mta/smtp/address.h"

#include <arpa/inet.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace mta::smtp {
namespace {

constexpr size_t kMaxLocalPart = 64;
constexpr size_t kMaxDomain = 255;
constexpr size_t kMaxPath = 256;

bool IsAtext(unsigned char c) {
  if (absl::ascii_isalnum(c)) return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '/':
    case '=':
    case '?':
    case '^':
    case '_':
    case '`':
    case '{':
    case '|':
    case '}':
    case '~':
      return true;
    default:
      return false;
  }
}

// Length of the UTF-8 sequence starting at s[i], or 0 if invalid.
size_t Utf8SequenceLength(absl::string_view s, size_t i) {
  unsigned char c = s[i];
  size_t n;
  uint32_t cp;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
    cp = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    cp = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    unsigned char cc = s[i + k];
    if ((cc & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3f);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff))) return 0;
  if (cp >= 0xd800 && cp <= 0xdfff) return 0;
  return n;
}

bool IsValidAddressLiteral(absl::string_view lit) {
  // lit excludes the brackets. inet_pton stops at a NUL, which would hide trailing bytes.
  if (lit.find('\0') != absl::string_view::npos) return false;
  std::string s(lit);
  unsigned char buf[16];
  if (absl::StartsWithIgnoreCase(lit, "IPv6:")) {
    return inet_pton(AF_INET6, s.c_str() + 5, buf) == 1;
  }
  return inet_pton(AF_INET, s.c_str(), buf) == 1;
}

}  // namespace

bool IsValidUtf8(absl::string_view s) {
  for (size_t i = 0; i < s.size();) {
    size_t n = Utf8SequenceLength(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

bool IsValidDomain(absl::string_view domain, bool allow_utf8) {
  if (domain.empty() || domain.size() > kMaxDomain) return false;
  size_t label_start = 0;
  for (size_t i = 0; i <= domain.size(); ++i) {
    if (i == domain.size() || domain[i] == '.') {
      absl::string_view label = domain.substr(label_start, i - label_start);
      if (label.empty() || label.size() > 63) return false;
      if (label.front() == '-' || label.back() == '-') return false;
      label_start = i + 1;
      continue;
    }
    unsigned char c = domain[i];
    if (absl::ascii_isalnum(c) || c == '-') continue;
    if (c >= 0x80 && allow_utf8) {
      size_t n = Utf8SequenceLength(domain, i);
      if (n == 0) return false;
      i += n - 1;
      continue;
    }
    return false;
  }
  return true;
}

std::string Mailbox::ToString() const {
  if (IsNull()) return "";
  if (domain.empty()) return local_part;
  return absl::StrCat(local_part, "@", domain);
}

bool Mailbox::HasRelayOperators() const {
  for (char c : local_part) {
    if (c == '%' || c == '!' || c == '@') return true;
  }
  return false;
}

absl::StatusOr<PathParseResult> ParsePath(absl::string_view input, const PathOptions& options) {
  auto fail = [](absl::string_view why) { return absl::InvalidArgumentError(why); };
  if (input.empty() || input[0] != '<') return fail("address must be enclosed in <>");
  size_t close = absl::string_view::npos;
  // Find the closing '>' outside of a quoted string.
  bool in_quote = false;
  for (size_t i = 1; i < input.size(); ++i) {
    char c = input[i];
    if (in_quote) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_quote = false;
      }
    } else if (c == '"') {
      in_quote = true;
    } else if (c == '>') {
      close = i;
      break;
    }
  }
  if (close == absl::string_view::npos) return fail("missing closing '>'");
  absl::string_view path = input.substr(1, close - 1);
  // RFC 5321 4.5.3.1.3: the 256 octets include the angle brackets.
  if (close + 1 > kMaxPath) return fail("path too long");
  PathParseResult result;
  result.consumed = close + 1;
  Mailbox& mb = result.mailbox;
  if (path.empty()) {
    if (!options.allow_null) return fail("null address not allowed here");
    return result;
  }
  // Source route: "@a,@b:mailbox". Accepted and ignored (RFC 5321 section 4.1.1.3);
  // the final mailbox alone is routed and relay-checked.
  if (path[0] == '@') {
    size_t colon = path.find(':');
    if (colon == absl::string_view::npos) return fail("bad source route");
    absl::string_view route = path.substr(0, colon);
    size_t pos = 0;
    while (pos < route.size()) {
      if (route[pos] != '@') return fail("bad source route");
      size_t comma = route.find(',', pos);
      absl::string_view hop = route.substr(
          pos + 1, comma == absl::string_view::npos ? absl::string_view::npos : comma - pos - 1);
      if (!IsValidDomain(hop, options.allow_utf8)) return fail("bad source route domain");
      if (comma == absl::string_view::npos) break;
      pos = comma + 1;
      if (pos == route.size()) return fail("bad source route");  // trailing comma
    }
    mb.had_source_route = true;
    path = path.substr(colon + 1);
  }
  // Local part.
  size_t at;
  if (!path.empty() && path[0] == '"') {
    size_t i = 1;
    bool closed = false;
    for (; i < path.size(); ++i) {
      unsigned char c = path[i];
      if (c == '\\') {
        if (i + 1 >= path.size()) return fail("bad quoted local part");
        unsigned char q = path[++i];
        if (q < 32 || q > 126) return fail("bad quoted-pair in local part");
      } else if (c == '"') {
        closed = true;
        break;
      } else if (c >= 0x80) {
        if (!options.allow_utf8) return fail("non-ASCII address requires SMTPUTF8");
        size_t n = Utf8SequenceLength(path, i);
        if (n == 0) return fail("invalid UTF-8 in address");
        i += n - 1;
        mb.non_ascii = true;
      } else if (c < 32 || c == 127) {
        return fail("control character in local part");
      }
    }
    if (!closed) return fail("unterminated quoted local part");
    at = i + 1;
    mb.quoted = true;
  } else {
    size_t i = 0;
    bool prev_dot = true;  // a leading dot is invalid
    for (; i < path.size() && path[i] != '@'; ++i) {
      unsigned char c = path[i];
      if (c == '.') {
        if (prev_dot) return fail("bad dot in local part");
        prev_dot = true;
        continue;
      }
      prev_dot = false;
      if (IsAtext(c)) continue;
      if (c >= 0x80) {
        if (!options.allow_utf8) return fail("non-ASCII address requires SMTPUTF8");
        size_t n = Utf8SequenceLength(path, i);
        if (n == 0) return fail("invalid UTF-8 in address");
        i += n - 1;
        mb.non_ascii = true;
        continue;
      }
      return fail("invalid character in local part");
    }
    if (i == 0) return fail("empty local part");
    if (prev_dot) return fail("bad dot in local part");
    at = i;
  }
  mb.local_part = std::string(path.substr(0, at));
  if (mb.local_part.size() > kMaxLocalPart) return fail("local part longer than 64 octets");
  if (at >= path.size()) {
    if (options.allow_postmaster && !mb.quoted &&
        absl::EqualsIgnoreCase(mb.local_part, "postmaster")) {
      mb.local_part = "postmaster";
      return result;
    }
    return fail("address needs a domain");
  }
  if (path[at] != '@') return fail("invalid character after local part");
  absl::string_view domain = path.substr(at + 1);
  if (!domain.empty() && domain[0] == '[') {
    if (domain.back() != ']' || !IsValidAddressLiteral(domain.substr(1, domain.size() - 2))) {
      return fail("bad address literal");
    }
    mb.domain_literal = true;
    mb.domain = std::string(domain);
    return result;
  }
  if (!IsValidDomain(domain, options.allow_utf8)) return fail("bad domain");
  mb.domain = absl::AsciiStrToLower(domain);
  for (unsigned char c : domain) {
    if (c >= 0x80) mb.non_ascii = true;
  }
  return result;
}

}  // namespace mta::smtp
