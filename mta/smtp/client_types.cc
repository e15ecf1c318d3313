// The client's value types: replies, EHLO capabilities, transaction results.
#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "mta/smtp/client_session.h"

namespace mta::smtp {

std::string ServerReply::ToString() const {
  std::string out = absl::StrCat(code);
  if (!enhanced.empty()) absl::StrAppend(&out, " ", enhanced);
  for (const std::string& line : lines) {
    if (!line.empty()) absl::StrAppend(&out, " ", line);
  }
  return out;
}

std::string ServerCapabilities::ToString() const {
  if (!esmtp) return "(HELO: no extensions)";
  std::vector<std::string> items;
  if (pipelining) items.push_back("PIPELINING");
  if (size) items.push_back(absl::StrCat("SIZE=", size_max));
  if (eight_bit_mime) items.push_back("8BITMIME");
  if (smtputf8) items.push_back("SMTPUTF8");
  if (chunking) items.push_back("CHUNKING");
  if (dsn) items.push_back("DSN");
  if (starttls) items.push_back("STARTTLS");
  if (enhanced_status_codes) items.push_back("ENHANCEDSTATUSCODES");
  return absl::StrJoin(items, " ");
}

size_t TransactionResult::CountDelivered() const {
  return static_cast<size_t>(std::count_if(recipients.begin(), recipients.end(),
                                           [](const ServerReply& r) { return r.positive(); }));
}

ServerCapabilities ServerCapabilities::FromEhloReply(const ServerReply& reply,
                                                     const std::string& previous_name) {
  ServerCapabilities caps;
  caps.esmtp = true;
  caps.server_name = previous_name;
  if (!reply.lines.empty()) {
    absl::string_view first = reply.lines[0];
    std::string ehlo_name(first.substr(0, first.find(' ')));
    if (!ehlo_name.empty()) caps.server_name = std::move(ehlo_name);
  }
  // RFC 5321 section 4.1.1.1: the first line is the server's name, each further line is
  // "keyword [params]"; keywords are case-insensitive.
  for (size_t i = 1; i < reply.lines.size(); ++i) {
    absl::string_view line = reply.lines[i];
    size_t sp = line.find(' ');
    std::string keyword = absl::AsciiStrToUpper(line.substr(0, sp));
    absl::string_view params =
        sp == absl::string_view::npos ? absl::string_view() : line.substr(sp + 1);
    if (keyword == "PIPELINING") {
      caps.pipelining = true;
    } else if (keyword == "SIZE") {
      caps.size = true;
      uint64_t n = 0;
      params = absl::StripAsciiWhitespace(params);
      // RFC 1870 section 4: no value or 0 means no fixed maximum. A malformed value is
      // treated the same way: the server will still enforce its limit with 552.
      caps.size_max = !params.empty() && absl::SimpleAtoi(params, &n) ? n : 0;
    } else if (keyword == "8BITMIME") {
      caps.eight_bit_mime = true;
    } else if (keyword == "SMTPUTF8") {
      caps.smtputf8 = true;
    } else if (keyword == "CHUNKING") {
      caps.chunking = true;
    } else if (keyword == "DSN") {
      caps.dsn = true;
    } else if (keyword == "STARTTLS") {
      caps.starttls = true;
    } else if (keyword == "ENHANCEDSTATUSCODES") {
      caps.enhanced_status_codes = true;
    }
  }
  return caps;
}

}  // namespace mta::smtp
