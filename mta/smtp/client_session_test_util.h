// Shared helpers for the ClientSession tests: canned server replies, a reference dot-stuffer, and
// the parameterized ClientSessionTest fixture that plays the server in pieces of GetParam() bytes.
#ifndef MTA_SMTP_CLIENT_SESSION_TEST_UTIL_H_
#define MTA_SMTP_CLIENT_SESSION_TEST_UTIL_H_

#include <stddef.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"
#include "mta/smtp/client_session.h"
#include "queue/envelope.h"

namespace mta::smtp {

using Phase = ClientSession::Phase;

inline constexpr char kGreeting[] = "220 mx.example.net ESMTP ready\r\n";
inline constexpr char kEhloCmd[] = "EHLO client.example\r\n";
inline constexpr char kBody[] = "Subject: hi\r\n\r\nHello\r\n";

inline const std::vector<std::string> kAllCaps = {
    "PIPELINING",          "SIZE 10000000", "8BITMIME", "SMTPUTF8",
    "ENHANCEDSTATUSCODES", "CHUNKING",      "DSN",      "HELP"};

inline std::string EhloReply(const std::vector<std::string>& caps) {
  std::string out = "250";
  out += caps.empty() ? " " : "-";
  out += "mx.example.net Hello client.example\r\n";
  for (size_t i = 0; i < caps.size(); ++i) {
    absl::StrAppend(&out, i + 1 == caps.size() ? "250 " : "250-", caps[i], "\r\n");
  }
  return out;
}

inline std::vector<std::string> Without(std::vector<std::string> caps, absl::string_view drop) {
  std::vector<std::string> out;
  for (std::string& c : caps) {
    if (c.rfind(std::string(drop), 0) != 0) out.push_back(std::move(c));
  }
  return out;
}

// The DATA transformation, written the obvious way as a reference.
inline std::string DotStuffed(absl::string_view content) {
  std::string out;
  bool line_start = true;
  for (char c : content) {
    if (line_start && c == '.') out += '.';
    out += c;
    line_start = c == '\n';
  }
  if (!content.empty() &&
      content.substr(content.size() - std::min<size_t>(2, content.size())) != "\r\n") {
    out += "\r\n";
  }
  return out + ".\r\n";
}

inline std::vector<std::string> Replies(const TransactionResult& r) {
  std::vector<std::string> out;
  for (const ServerReply& reply : r.recipients) out.push_back(reply.ToString());
  return out;
}

class ClientSessionTest : public ::testing::TestWithParam<size_t> {
 protected:
  ClientSessionTest() {
    options_.helo_name = "client.example";
    options_.tls = TlsPolicy::kNone;
  }

  void Create() {
    auto s = ClientSession::Create(options_);
    ASSERT_TRUE(s.ok()) << s.status();
    cs_ = *std::move(s);
    EXPECT_EQ(cs_->phase(), Phase::kGreeting);
  }

  // Everything the client wants to send, drained in one go.
  std::string Drain() {
    std::string out;
    while (!cs_->output().empty()) {
      absl::string_view o = cs_->output();
      out.append(o.data(), o.size());
      cs_->ConsumeOutput(o.size());
    }
    return out;
  }

  // Plays the server: delivers `bytes` in pieces of GetParam() bytes (0 = all at once) and
  // returns what the client sent in answer.
  std::string Feed(absl::string_view bytes) {
    size_t piece = GetParam() == 0 ? bytes.size() : GetParam();
    while (!bytes.empty()) {
      size_t n = std::min(piece, bytes.size());
      cs_->OnInput(bytes.substr(0, n));
      bytes.remove_prefix(n);
    }
    return Drain();
  }

  // Greeting and EHLO with `caps`; leaves the session ready.
  void Connect(const std::vector<std::string>& caps = kAllCaps) {
    Create();
    ASSERT_EQ(Feed(kGreeting), kEhloCmd);
    EXPECT_EQ(cs_->phase(), Phase::kCommand);
    ASSERT_EQ(Feed(EhloReply(caps)), "");
    ASSERT_EQ(cs_->phase(), Phase::kReady);
  }

  OutboundMessage Message(const std::vector<std::string>& rcpts,
                          const std::string* content = nullptr) {
    OutboundMessage m;
    m.sender = "sender@example.org";
    for (const std::string& r : rcpts) m.recipients.push_back({r, 0, ""});
    m.content = content != nullptr ? content : &body_;
    return m;
  }

  // Starts `m` and returns the client's first write.
  std::string Start(OutboundMessage m) {
    absl::Status s = cs_->StartTransaction(std::move(m));
    EXPECT_TRUE(s.ok()) << s;
    return Drain();
  }

  TransactionResult Result() {
    std::optional<TransactionResult> r = cs_->TakeResult();
    if (!r.has_value()) {
      ADD_FAILURE() << "no transaction result";
      return TransactionResult();
    }
    EXPECT_FALSE(cs_->has_result());
    return *std::move(r);
  }

  std::string Mail(size_t size, absl::string_view extra = "") {
    return absl::StrCat("MAIL FROM:<sender@example.org> SIZE=", size, extra, "\r\n");
  }

  ClientSessionOptions options_;
  std::unique_ptr<ClientSession> cs_;
  std::string body_ = kBody;
};

// Names the Delivery instantiations by how the server's bytes are cut.
inline std::string DeliveryName(const ::testing::TestParamInfo<size_t>& info) {
  return info.param == 0 ? std::string("Whole") : absl::StrCat("Pieces", info.param);
}

}  // namespace mta::smtp

#endif  // MTA_SMTP_CLIENT_SESSION_TEST_UTIL_H_
