#include "benchmarks/shaping/fast_sink_text.h"

#include <time.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mta_bench {

// ---- Times ---------------------------------------------------------------------------------

int64_t ClockNs(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return int64_t{ts.tv_sec} * kNsPerSecond + ts.tv_nsec;
}

// The double Python's time.time() returns for this instant (CPython's
// _PyTime_AsSecondsDouble), so a timestamp is the value capture_sink.py would have written.
double PySeconds(int64_t ns) {
  if (ns % kNsPerSecond == 0) return static_cast<double>(ns / kNsPerSecond);
  return static_cast<double>(ns) / 1e9;
}

// repr(float) as json.dumps writes it, for the values written here (Unix times, which
// Python writes in fixed notation): the shortest digits that read back as the same double,
// with ".0" when they have no fraction.
void AppendPyFloat(std::string* out, double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed);
  if (ec != std::errc()) {
    out->append("NaN");
    return;
  }
  std::string_view text(buf, end - buf);
  out->append(text);
  if (text.find('.') == std::string_view::npos) out->append(".0");
}

// capture_sink.py's "time": datetime.fromtimestamp(t, timezone.utc) (microseconds rounded
// half to even, as CPython does), formatted "%Y-%m-%dT%H:%M:%S.%f" cut to milliseconds + "Z".
std::string IsoTime(double t) {
  double whole;
  double us = std::nearbyint(std::modf(t, &whole) * 1e6);
  if (us >= 1e6) {
    us -= 1e6;
    whole += 1;
  }
  time_t secs = static_cast<time_t>(whole);
  tm parts;
  gmtime_r(&secs, &parts);
  char buf[64];
  size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &parts);
  snprintf(buf + n, sizeof(buf) - n, ".%03dZ", static_cast<int>(us) / 1000);
  return buf;
}

// ---- JSON as Python's json.dumps writes it -------------------------------------------------

void AppendInt(std::string* out, uint64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, end - buf);
}

namespace {

void AppendU16Escape(std::string* out, uint32_t unit) {
  static constexpr char kHex[] = "0123456789abcdef";
  char esc[6] = {'\\',
                 'u',
                 kHex[(unit >> 12) & 0xf],
                 kHex[(unit >> 8) & 0xf],
                 kHex[(unit >> 4) & 0xf],
                 kHex[unit & 0xf]};
  out->append(esc, sizeof(esc));
}

}  // namespace

namespace {

// Length of the well-formed UTF-8 sequence at p (as CPython's strict decoder accepts it: no
// overlong forms, no surrogates, nothing above U+10FFFF), 0 if there is none; *cp gets its
// code point.
size_t Utf8Sequence(const unsigned char* p, size_t n, uint32_t* cp) {
  auto cont = [](unsigned char c) { return (c & 0xC0) == 0x80; };
  const unsigned char c0 = p[0];
  if (c0 >= 0xC2 && c0 <= 0xDF) {
    if (n < 2 || !cont(p[1])) return 0;
    *cp = ((c0 & 0x1Fu) << 6) | (p[1] & 0x3Fu);
    return 2;
  }
  if (c0 >= 0xE0 && c0 <= 0xEF) {
    const unsigned char lo = c0 == 0xE0 ? 0xA0 : 0x80;
    const unsigned char hi = c0 == 0xED ? 0x9F : 0xBF;
    if (n < 3 || p[1] < lo || p[1] > hi || !cont(p[2])) return 0;
    *cp = ((c0 & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
    return 3;
  }
  if (c0 >= 0xF0 && c0 <= 0xF4) {
    const unsigned char lo = c0 == 0xF0 ? 0x90 : 0x80;
    const unsigned char hi = c0 == 0xF4 ? 0x8F : 0xBF;
    if (n < 4 || p[1] < lo || p[1] > hi || !cont(p[2]) || !cont(p[3])) return 0;
    *cp = ((c0 & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
    return 4;
  }
  return 0;
}

}  // namespace

// json.dumps (ensure_ascii) of the str capture_sink.py holds for these bytes. It decodes
// protocol text as UTF-8 with "surrogateescape": every byte that is not part of a well-formed
// sequence becomes the lone surrogate U+DC80..U+DCFF, which json.dumps writes as \udcXX.
// (CPython marks the maximal ill-formed prefix, but its bytes are a lead byte and
// continuation bytes, so escaping one byte at a time and retrying gives the same result.)
void AppendJsonString(std::string* out, std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  out->push_back('"');
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      switch (c) {
        case '"':
          out->append("\\\"");
          break;
        case '\\':
          out->append("\\\\");
          break;
        case '\n':
          out->append("\\n");
          break;
        case '\r':
          out->append("\\r");
          break;
        case '\t':
          out->append("\\t");
          break;
        case '\b':
          out->append("\\b");
          break;
        case '\f':
          out->append("\\f");
          break;
        default:
          if (c < 0x20 || c == 0x7F) {
            AppendU16Escape(out, c);
          } else {
            out->push_back(static_cast<char>(c));
          }
      }
      ++i;
      continue;
    }
    uint32_t cp = 0;
    const size_t len = Utf8Sequence(p + i, n - i, &cp);
    if (len == 0) {
      AppendU16Escape(out, 0xDC00u | c);
      ++i;
    } else if (cp < 0x10000) {
      AppendU16Escape(out, cp);
      i += len;
    } else {
      cp -= 0x10000;
      AppendU16Escape(out, 0xD800u | ((cp >> 10) & 0x3FF));
      AppendU16Escape(out, 0xDC00u | (cp & 0x3FF));
      i += len;
    }
  }
  out->push_back('"');
}

void AppendJsonOptString(std::string* out, const std::optional<std::string>& s) {
  if (s.has_value()) {
    AppendJsonString(out, *s);
  } else {
    out->append("null");
  }
}

namespace {

// A Python-like repr() of a parameter for error replies ('...' with escapes).
std::string PyRepr(std::string_view s) {
  const bool dq = s.find('\'') != std::string_view::npos && s.find('"') == std::string_view::npos;
  const char quote = dq ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    if (c == '\\' || c == static_cast<unsigned char>(quote)) {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\t') {
      out.append("\\t");
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      snprintf(buf, sizeof(buf), "\\x%02x", c);
      out.append(buf);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  out.push_back(quote);
  return out;
}

}  // namespace

// ---- SMTP syntax as capture_sink.py parses it -------------------------------------------------

namespace {

// ASCII characters for which Python's str.isspace() is true.
bool IsPySpace(char c) { return (c >= '\t' && c <= '\r') || (c >= 0x1C && c <= 0x20); }

std::string_view StripSpaces(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}

}  // namespace

std::string_view Strip(std::string_view s) {
  while (!s.empty() && IsPySpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsPySpace(s.back())) s.remove_suffix(1);
  return s;
}

std::string AsciiUpper(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return out;
}

bool IEquals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && AsciiUpper(a) == AsciiUpper(b);
}

bool IsDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool HasNonAscii(std::string_view s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
}

// Compares a string of ASCII digits with a number without overflowing.
bool DigitsGreaterThan(std::string_view digits, uint64_t limit) {
  while (digits.size() > 1 && digits.front() == '0') digits.remove_prefix(1);
  if (digits.size() > 19) return true;
  uint64_t v = 0;
  std::from_chars(digits.data(), digits.data() + digits.size(), v);
  return v > limit;
}

// capture_sink.py's split_path: "<a@b> PARAMS" -> ("a@b", "PARAMS"); nullopt without a path.
std::optional<std::pair<std::string_view, std::string_view>> SplitPath(std::string_view arg) {
  while (!arg.empty() && arg.front() == ' ') arg.remove_prefix(1);
  if (arg.empty() || arg.front() != '<') return std::nullopt;
  bool in_quote = false;
  size_t i = 1;
  while (i < arg.size()) {
    const char c = arg[i];
    if (in_quote && c == '\\') {
      i += 2;
      continue;
    }
    if (c == '"') {
      in_quote = !in_quote;
    } else if (c == '>' && !in_quote) {
      return std::make_pair(arg.substr(1, i - 1), StripSpaces(arg.substr(i + 1)));
    }
    ++i;
  }
  return std::nullopt;
}

const Param* FindParam(const Params& params, std::string_view key) {
  for (const Param& p : params) {
    if (p.key == key) return &p;
  }
  return nullptr;
}

// capture_sink.py's parse_params. Returns the error text, or nullopt on success.
std::optional<std::string> ParseParams(std::string_view text, Params* params) {
  size_t i = 0;
  while (true) {
    while (i < text.size() && IsPySpace(text[i])) ++i;
    if (i >= text.size()) return std::nullopt;
    size_t j = i;
    while (j < text.size() && !IsPySpace(text[j])) ++j;
    std::string_view item = text.substr(i, j - i);
    i = j;
    const size_t eq = item.find('=');
    std::string_view key = item.substr(0, eq);
    auto alnum = [](char c) {
      return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    };
    if (key.empty() || !alnum(key[0]) ||
        !std::all_of(key.begin(), key.end(), [&](char c) { return alnum(c) || c == '-'; })) {
      return "bad parameter " + PyRepr(item);
    }
    std::string upper = AsciiUpper(key);
    if (FindParam(*params, upper) != nullptr) return "duplicate parameter " + upper;
    Param p{std::move(upper), std::nullopt};
    if (eq != std::string_view::npos) p.value = std::string(item.substr(eq + 1));
    params->push_back(std::move(p));
  }
}

// {"KEY": "value" or null, ...} with the keys sorted, as json.dumps(sort_keys=True) writes it.
void AppendJsonParams(std::string* out, const Params& params) {
  std::vector<const Param*> sorted;
  sorted.reserve(params.size());
  for (const Param& p : params) sorted.push_back(&p);
  std::sort(sorted.begin(), sorted.end(),
            [](const Param* a, const Param* b) { return a->key < b->key; });
  out->push_back('{');
  for (size_t i = 0; i < sorted.size(); ++i) {
    if (i > 0) out->append(", ");
    AppendJsonString(out, sorted[i]->key);
    out->append(": ");
    AppendJsonOptString(out, sorted[i]->value);
  }
  out->push_back('}');
}

}  // namespace mta_bench
