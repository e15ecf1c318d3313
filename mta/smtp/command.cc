#include "mta/smtp/command.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "queue/envelope.h"

namespace mta::smtp {
namespace {

struct VerbName {
  absl::string_view name;
  Verb verb;
};

constexpr VerbName kVerbs[] = {
    {"EHLO", Verb::kEhlo},         {"HELO", Verb::kHelo}, {"MAIL", Verb::kMail},
    {"RCPT", Verb::kRcpt},         {"DATA", Verb::kData}, {"BDAT", Verb::kBdat},
    {"RSET", Verb::kRset},         {"NOOP", Verb::kNoop}, {"QUIT", Verb::kQuit},
    {"VRFY", Verb::kVrfy},         {"EXPN", Verb::kExpn}, {"HELP", Verb::kHelp},
    {"STARTTLS", Verb::kStartTls}, {"AUTH", Verb::kAuth},
};

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;  // RFC 3461 xtext uses upper-case hex only
}

}  // namespace

Command ParseCommand(absl::string_view line) {
  Command cmd;
  size_t sp = line.find(' ');
  absl::string_view verb = line.substr(0, sp);
  for (const auto& v : kVerbs) {
    if (absl::EqualsIgnoreCase(verb, v.name)) {
      cmd.verb = v.verb;
      break;
    }
  }
  if (sp != absl::string_view::npos) cmd.args = line.substr(sp + 1);
  return cmd;
}

absl::StatusOr<std::vector<EsmtpParam>> ParseEsmtpParams(absl::string_view text) {
  std::vector<EsmtpParam> params;
  size_t pos = 0;
  while (pos < text.size()) {
    if (text[pos] == ' ') {
      ++pos;
      continue;
    }
    size_t end = text.find(' ', pos);
    if (end == absl::string_view::npos) end = text.size();
    absl::string_view item = text.substr(pos, end - pos);
    pos = end;
    EsmtpParam param;
    size_t eq = item.find('=');
    absl::string_view keyword = item.substr(0, eq);
    if (keyword.empty() || !absl::ascii_isalnum(keyword[0])) {
      return absl::InvalidArgumentError(absl::StrCat("bad parameter '", item, "'"));
    }
    for (char c : keyword) {
      if (!absl::ascii_isalnum(c) && c != '-') {
        return absl::InvalidArgumentError(absl::StrCat("bad parameter keyword '", keyword, "'"));
      }
    }
    param.keyword = absl::AsciiStrToUpper(keyword);
    if (eq != absl::string_view::npos) {
      absl::string_view value = item.substr(eq + 1);
      if (value.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("empty value for ", param.keyword));
      }
      for (unsigned char c : value) {
        // esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 under RFC 6531.
        if (c < 33 || c == '=' || c == 127) {
          return absl::InvalidArgumentError(absl::StrCat("bad value for ", param.keyword));
        }
      }
      param.value = std::string(value);
      param.has_value = true;
    }
    params.push_back(std::move(param));
  }
  return params;
}

absl::StatusOr<std::string> DecodeXtext(absl::string_view xtext) {
  std::string out;
  out.reserve(xtext.size());
  for (size_t i = 0; i < xtext.size(); ++i) {
    unsigned char c = xtext[i];
    if (c == '+') {
      if (i + 2 >= xtext.size()) {
        return absl::InvalidArgumentError("truncated xtext escape");
      }
      int hi = HexValue(xtext[i + 1]);
      int lo = HexValue(xtext[i + 2]);
      if (hi < 0 || lo < 0) return absl::InvalidArgumentError("bad xtext escape");
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c < 33 || c > 126 || c == '=') {
      return absl::InvalidArgumentError("bad xtext character");
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

std::string EncodeXtext(absl::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c >= 33 && c <= 126 && c != '+' && c != '=') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('+');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    }
  }
  return out;
}

std::string NotifyValue(uint8_t notify) {
  if (notify & queue::kNotifyNever) return "NEVER";
  std::vector<absl::string_view> items;
  if (notify & queue::kNotifySuccess) items.push_back("SUCCESS");
  if (notify & queue::kNotifyFailure) items.push_back("FAILURE");
  if (notify & queue::kNotifyDelay) items.push_back("DELAY");
  return absl::StrJoin(items, ",");
}

std::string OrcptValue(absl::string_view orcpt) {
  size_t semi = orcpt.find(';');
  if (semi == absl::string_view::npos || semi == 0 || semi + 1 == orcpt.size()) return "";
  absl::string_view type = orcpt.substr(0, semi);
  for (char c : type) {
    if (!absl::ascii_isalnum(c) && c != '-') return "";
  }
  return absl::StrCat(type, ";", EncodeXtext(orcpt.substr(semi + 1)));
}

absl::StatusOr<BdatArgs> ParseBdatArgs(absl::string_view args) {
  BdatArgs out;
  size_t sp = args.find(' ');
  absl::string_view size = args.substr(0, sp);
  if (size.empty() || size.size() > 19) return absl::InvalidArgumentError("bad BDAT size");
  for (char c : size) {
    if (!absl::ascii_isdigit(c)) return absl::InvalidArgumentError("bad BDAT size");
  }
  if (!absl::SimpleAtoi(size, &out.size)) return absl::InvalidArgumentError("bad BDAT size");
  if (sp != absl::string_view::npos) {
    absl::string_view rest = args.substr(sp + 1);
    if (!absl::EqualsIgnoreCase(rest, "LAST")) {
      return absl::InvalidArgumentError("bad BDAT argument");
    }
    out.last = true;
  }
  return out;
}

}  // namespace mta::smtp
