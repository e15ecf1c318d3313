#include "mta/smtp/command.h"

#include <cctype>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace mta::smtp {
namespace {

TEST(ParseCommandTest, AllVerbsCaseInsensitive) {
  struct Case {
    const char* name;
    Verb verb;
  };
  const Case cases[] = {
      {"EHLO", Verb::kEhlo}, {"HELO", Verb::kHelo},         {"MAIL", Verb::kMail},
      {"RCPT", Verb::kRcpt}, {"DATA", Verb::kData},         {"BDAT", Verb::kBdat},
      {"RSET", Verb::kRset}, {"NOOP", Verb::kNoop},         {"QUIT", Verb::kQuit},
      {"VRFY", Verb::kVrfy}, {"EXPN", Verb::kExpn},         {"HELP", Verb::kHelp},
      {"AUTH", Verb::kAuth}, {"STARTTLS", Verb::kStartTls},
  };
  for (const Case& c : cases) {
    std::string upper = c.name;
    std::string lower;
    std::string mixed;
    for (size_t i = 0; i < upper.size(); ++i) {
      lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(upper[i]))));
      mixed.push_back(i % 2 ? lower.back() : upper[i]);
    }
    for (const std::string& s : {upper, lower, mixed}) {
      Command cmd = ParseCommand(s);
      EXPECT_EQ(cmd.verb, c.verb) << s;
      EXPECT_TRUE(cmd.args.empty()) << s;
    }
  }
}

TEST(ParseCommandTest, ArgumentsAfterOneSpace) {
  Command mail = ParseCommand("mail FROM:<a@b.c> SIZE=10");
  EXPECT_EQ(mail.verb, Verb::kMail);
  EXPECT_EQ(mail.args, "FROM:<a@b.c> SIZE=10");

  Command ehlo = ParseCommand("EhLo client.example");
  EXPECT_EQ(ehlo.verb, Verb::kEhlo);
  EXPECT_EQ(ehlo.args, "client.example");

  // Only one separating space is removed; the rest belongs to the arguments.
  Command two = ParseCommand("HELO  x");
  EXPECT_EQ(two.verb, Verb::kHelo);
  EXPECT_EQ(two.args, " x");

  Command trailing = ParseCommand("DATA ");
  EXPECT_EQ(trailing.verb, Verb::kData);
  EXPECT_EQ(trailing.args, "");

  Command bdat = ParseCommand("bdat 100 last");
  EXPECT_EQ(bdat.verb, Verb::kBdat);
  EXPECT_EQ(bdat.args, "100 last");
}

TEST(ParseCommandTest, UnknownVerbs) {
  EXPECT_EQ(ParseCommand("").verb, Verb::kUnknown);
  EXPECT_EQ(ParseCommand(" MAIL FROM:<>").verb, Verb::kUnknown);
  EXPECT_EQ(ParseCommand("MAILFROM:<>").verb, Verb::kUnknown);
  EXPECT_EQ(ParseCommand("MAI").verb, Verb::kUnknown);
  EXPECT_EQ(ParseCommand("DATAX").verb, Verb::kUnknown);
  EXPECT_EQ(ParseCommand("STARTTL").verb, Verb::kUnknown);
  EXPECT_EQ(ParseCommand("MAIL\tFROM:<>").verb, Verb::kUnknown);
  EXPECT_EQ(ParseCommand("GET / HTTP/1.1").verb, Verb::kUnknown);
  Command unknown = ParseCommand("XYZZY plugh");
  EXPECT_EQ(unknown.verb, Verb::kUnknown);
  EXPECT_EQ(unknown.args, "plugh");
}

TEST(ParseEsmtpParamsTest, Empty) {
  auto p = ParseEsmtpParams("");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->empty());
  auto spaces = ParseEsmtpParams("   ");
  ASSERT_TRUE(spaces.ok()) << spaces.status();
  EXPECT_TRUE(spaces->empty());
}

TEST(ParseEsmtpParamsTest, KeywordsAndValues) {
  auto p = ParseEsmtpParams(" size=1000  body=8BITMIME SMTPUTF8 x-custom-1=a+2Bb");
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), 4u);
  EXPECT_EQ((*p)[0].keyword, "SIZE");
  EXPECT_EQ((*p)[0].value, "1000");
  EXPECT_TRUE((*p)[0].has_value);
  EXPECT_EQ((*p)[1].keyword, "BODY");
  EXPECT_EQ((*p)[1].value, "8BITMIME");  // values keep their case
  EXPECT_TRUE((*p)[1].has_value);
  EXPECT_EQ((*p)[2].keyword, "SMTPUTF8");
  EXPECT_FALSE((*p)[2].has_value);
  EXPECT_EQ((*p)[2].value, "");
  EXPECT_EQ((*p)[3].keyword, "X-CUSTOM-1");
  EXPECT_EQ((*p)[3].value, "a+2Bb");
}

TEST(ParseEsmtpParamsTest, ValueCharacterRange) {
  // esmtp-value = 1*(%d33-60 / %d62-126): everything printable except '='.
  std::string value;
  for (int c = 33; c <= 126; ++c) {
    if (c != '=') value.push_back(static_cast<char>(c));
  }
  auto p = ParseEsmtpParams("K=" + value);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), 1u);
  EXPECT_EQ((*p)[0].value, value);
  // UTF-8 is allowed (RFC 6531).
  auto utf8 = ParseEsmtpParams("ORCPT=utf-8;j\xc3\xb6@example.com");
  ASSERT_TRUE(utf8.ok()) << utf8.status();
  EXPECT_EQ((*utf8)[0].value, "utf-8;j\xc3\xb6@example.com");
}

TEST(ParseEsmtpParamsTest, Malformed) {
  const std::vector<std::string> bad = {
      "=x",        // empty keyword
      "-SIZE=1",   // keyword must start with alnum
      "SI_ZE=1",   // bad keyword char
      "SI.ZE",     // bad keyword char
      "SIZE=",     // empty value
      "SIZE==1",   // '=' in value
      "SIZE=1=2",  // '=' in value
      "K=a\x7f",   // DEL
      "K=a\tb",    // control character
      std::string("K=a\0b", 5),
      "OK=1 =2",  // second param bad
      "OK=1 BAD!=2",
  };
  for (const std::string& s : bad) {
    auto p = ParseEsmtpParams(s);
    EXPECT_FALSE(p.ok()) << "accepted: " << s;
    if (!p.ok()) {
      EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(DecodeXtextTest, Plain) {
  auto d = DecodeXtext("rfc822;user@example.com");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, "rfc822;user@example.com");
  auto empty = DecodeXtext("");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, "");
}

TEST(DecodeXtextTest, HexEscapes) {
  auto d = DecodeXtext("a+2Bb+3Dc+20d");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, "a+b=c d");
  auto only = DecodeXtext("+41");
  ASSERT_TRUE(only.ok()) << only.status();
  EXPECT_EQ(*only, "A");
  auto end = DecodeXtext("x+7E");
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(*end, "x~");
  auto high = DecodeXtext("+FF+00");
  ASSERT_TRUE(high.ok()) << high.status();
  EXPECT_EQ(*high, std::string("\xff\0", 2));
  auto consecutive = DecodeXtext("+2B+2B");
  ASSERT_TRUE(consecutive.ok());
  EXPECT_EQ(*consecutive, "++");
}

TEST(DecodeXtextTest, TruncatedEscapes) {
  for (const char* s : {"+", "+4", "abc+", "abc+4", "+41+", "+41+4"}) {
    auto d = DecodeXtext(s);
    EXPECT_FALSE(d.ok()) << "accepted: " << s;
    if (!d.ok()) {
      EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(DecodeXtextTest, BadEscapesAndCharacters) {
  // RFC 3461: hexchar is "+" and two UPPER-case hex digits.
  for (const char* s : {"+2b", "+zz", "+G0", "+ 1", "a=b", "a b", "a\tb", "\x7f", "\x80"}) {
    auto d = DecodeXtext(s);
    EXPECT_FALSE(d.ok()) << "accepted: " << s;
  }
  EXPECT_FALSE(DecodeXtext(absl::string_view("a\0b", 3)).ok());
}

TEST(ParseBdatArgsTest, Valid) {
  auto a = ParseBdatArgs("100");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->size, 100u);
  EXPECT_FALSE(a->last);

  auto b = ParseBdatArgs("0 LAST");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->size, 0u);
  EXPECT_TRUE(b->last);

  auto c = ParseBdatArgs("42 last");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->size, 42u);
  EXPECT_TRUE(c->last);

  auto big = ParseBdatArgs("9999999999999999999");  // 19 digits fits in uint64
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(big->size, 9999999999999999999ull);

  auto zeros = ParseBdatArgs("007");
  ASSERT_TRUE(zeros.ok());
  EXPECT_EQ(zeros->size, 7u);
}

TEST(ParseBdatArgsTest, Invalid) {
  for (const char* s : {"", " ", "LAST", "-1", "+1", "1.5", "0x10", "12a", "10 LASTX", "10 FIRST",
                        "10 ", "10  LAST", "10 LAST ", " 10", "10 LAST extra",
                        "18446744073709551616", "99999999999999999999"}) {
    auto a = ParseBdatArgs(s);
    EXPECT_FALSE(a.ok()) << "accepted: '" << s << "'";
    if (!a.ok()) {
      EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

}  // namespace
}  // namespace mta::smtp
