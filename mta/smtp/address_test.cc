#include "mta/smtp/address.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace mta::smtp {
namespace {

constexpr PathOptions kDefault{};
constexpr PathOptions kNull{.allow_null = true};
constexpr PathOptions kUtf8{.allow_utf8 = true};
constexpr PathOptions kPostmaster{.allow_postmaster = true};

// Parses and expects success; returns the mailbox.
Mailbox MustParse(absl::string_view in, const PathOptions& opts = kDefault) {
  auto r = ParsePath(in, opts);
  EXPECT_TRUE(r.ok()) << "input: " << std::string(in) << " status: " << r.status();
  if (!r.ok()) return Mailbox();
  return r->mailbox;
}

void ExpectReject(absl::string_view in, const PathOptions& opts = kDefault) {
  auto r = ParsePath(in, opts);
  EXPECT_FALSE(r.ok()) << "accepted: " << std::string(in) << " as " << r->mailbox.ToString();
  if (!r.ok()) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_FALSE(r.status().message().empty());
  }
}

TEST(ParsePathTest, SimpleMailbox) {
  auto r = ParsePath("<user@example.com>", kDefault);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->mailbox.local_part, "user");
  EXPECT_EQ(r->mailbox.domain, "example.com");
  EXPECT_FALSE(r->mailbox.quoted);
  EXPECT_FALSE(r->mailbox.domain_literal);
  EXPECT_FALSE(r->mailbox.non_ascii);
  EXPECT_FALSE(r->mailbox.had_source_route);
  EXPECT_FALSE(r->mailbox.IsNull());
  EXPECT_EQ(r->mailbox.ToString(), "user@example.com");
  EXPECT_EQ(r->consumed, 18u);
}

TEST(ParsePathTest, ConsumedStopsAtClosingBracket) {
  absl::string_view in = "<a@b.c> SIZE=100 BODY=8BITMIME";
  auto r = ParsePath(in, kDefault);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->consumed, 7u);
  EXPECT_EQ(in.substr(r->consumed), " SIZE=100 BODY=8BITMIME");
}

TEST(ParsePathTest, DomainIsLowerCasedLocalPartIsNot) {
  Mailbox mb = MustParse("<John.Doe@Example.COM>");
  EXPECT_EQ(mb.local_part, "John.Doe");
  EXPECT_EQ(mb.domain, "example.com");
  EXPECT_EQ(mb.ToString(), "John.Doe@example.com");
}

TEST(ParsePathTest, AllAtextCharactersAccepted) {
  Mailbox mb = MustParse("<a!#$%&'*+-/=?^_`{|}~9@example.com>");
  EXPECT_EQ(mb.local_part, "a!#$%&'*+-/=?^_`{|}~9");
}

TEST(ParsePathTest, NullPath) {
  auto r = ParsePath("<>", kNull);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->mailbox.IsNull());
  EXPECT_EQ(r->mailbox.ToString(), "");
  EXPECT_EQ(r->consumed, 2u);
  auto with_params = ParsePath("<> BODY=7BIT", kNull);
  ASSERT_TRUE(with_params.ok());
  EXPECT_EQ(with_params->consumed, 2u);
}

TEST(ParsePathTest, NullPathRejectedUnlessAllowed) {
  ExpectReject("<>");
  ExpectReject("<>", kUtf8);
  ExpectReject("<>", kPostmaster);
}

TEST(ParsePathTest, MissingBrackets) {
  ExpectReject("");
  ExpectReject("user@example.com");
  ExpectReject(" <user@example.com>");
  ExpectReject("<user@example.com");
  ExpectReject("<", kNull);
  ExpectReject("<\"user>@example.com", kNull);  // '>' inside an unterminated quote
}

TEST(ParsePathTest, SourceRouteIsAcceptedAndIgnored) {
  auto r = ParsePath("<@a.com,@b.com:u@c.com>", kDefault);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->mailbox.had_source_route);
  EXPECT_EQ(r->mailbox.local_part, "u");
  EXPECT_EQ(r->mailbox.domain, "c.com");
  EXPECT_EQ(r->mailbox.ToString(), "u@c.com");
  EXPECT_EQ(r->consumed, 23u);

  Mailbox single = MustParse("<@relay.example:user@Final.Example>");
  EXPECT_TRUE(single.had_source_route);
  EXPECT_EQ(single.ToString(), "user@final.example");
}

TEST(ParsePathTest, BadSourceRoutes) {
  ExpectReject("<@a.com u@c.com>");        // no colon
  ExpectReject("<@a.com,b.com:u@c.com>");  // hop without '@'
  ExpectReject("<@:u@c.com>");             // empty hop
  ExpectReject("<@a.com,@:u@c.com>");      // empty second hop
  ExpectReject("<@a..com:u@c.com>");       // bad hop domain
  ExpectReject("<@-a.com:u@c.com>");       // bad hop domain
  ExpectReject("<@a.com,:u@c.com>");       // trailing comma
  ExpectReject("<@a.com,,@b.com:u@c.com>");
  ExpectReject("<@a.com:>");  // route without a mailbox
  ExpectReject("<@a.com:@b.com>");
  ExpectReject("<@a.com>");  // '@' at start but no route or local part
}

TEST(ParsePathTest, QuotedLocalPart) {
  Mailbox mb = MustParse("<\"john doe\"@example.com>");
  EXPECT_TRUE(mb.quoted);
  EXPECT_EQ(mb.local_part, "\"john doe\"");  // quotes are kept
  EXPECT_EQ(mb.domain, "example.com");
  EXPECT_EQ(mb.ToString(), "\"john doe\"@example.com");

  Mailbox escaped = MustParse("<\"a\\\"b\\\\c\"@example.com>");
  EXPECT_TRUE(escaped.quoted);
  EXPECT_EQ(escaped.local_part, "\"a\\\"b\\\\c\"");

  // '>' inside the quotes does not end the path.
  auto r = ParsePath("<\"a>b\"@example.com> rest", kDefault);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->mailbox.local_part, "\"a>b\"");
  EXPECT_EQ(r->consumed, 19u);

  // An escaped quote followed by '>' is still inside the quoted string.
  Mailbox tricky = MustParse("<\"a\\\">\"@example.com>");
  EXPECT_EQ(tricky.local_part, "\"a\\\">\"");
}

TEST(ParsePathTest, BadQuotedLocalParts) {
  ExpectReject("<\"abc@example.com>");       // unterminated (no closing quote before '>')
  ExpectReject("<\"abc\"def@example.com>");  // text after the closing quote
  ExpectReject("<\"abc\">");                 // no domain
  ExpectReject("<\"a\tb\"@example.com>");    // control character
  ExpectReject(absl::string_view("<\"a\0b\"@example.com>", 19));
  ExpectReject("<\"a\x7f\"@example.com>");
  ExpectReject("<\"a\\\x01\"@example.com>");  // quoted-pair of a control character
  ExpectReject("<\"abc\"@>");
}

TEST(ParsePathTest, RelayOperators) {
  Mailbox percent = MustParse("<user%other@host.example>");
  EXPECT_TRUE(percent.HasRelayOperators());
  EXPECT_EQ(percent.local_part, "user%other");

  Mailbox quoted_at = MustParse("<\"user@other\"@host.example>");
  EXPECT_TRUE(quoted_at.quoted);
  EXPECT_TRUE(quoted_at.HasRelayOperators());

  Mailbox bang = MustParse("<a!b@host.example>");
  EXPECT_TRUE(bang.HasRelayOperators());

  Mailbox quoted_percent = MustParse("<\"x%y\"@host.example>");
  EXPECT_TRUE(quoted_percent.HasRelayOperators());

  EXPECT_FALSE(MustParse("<plain.user+tag@host.example>").HasRelayOperators());
  EXPECT_FALSE(MustParse("<\"plain user\"@host.example>").HasRelayOperators());
  // Only the final mailbox counts; the '@' signs of a source route are not relay operators.
  EXPECT_FALSE(MustParse("<@a.example:u@host.example>").HasRelayOperators());
}

TEST(ParsePathTest, UnquotedAtInLocalPartRejected) { ExpectReject("<a@b@host.example>"); }

TEST(ParsePathTest, NonAsciiRequiresUtf8Option) {
  // "jösé" in UTF-8.
  const std::string local = "<j\xc3\xb6s\xc3\xa9@example.com>";
  ExpectReject(local);
  Mailbox mb = MustParse(local, kUtf8);
  EXPECT_TRUE(mb.non_ascii);
  EXPECT_EQ(mb.local_part, "j\xc3\xb6s\xc3\xa9");

  // U-label domain "bücher.example".
  const std::string domain =
      "<user@b\xc3\xbc"
      "cher.example>";
  ExpectReject(domain);
  Mailbox d = MustParse(domain, kUtf8);
  EXPECT_TRUE(d.non_ascii);
  EXPECT_EQ(d.domain,
            "b\xc3\xbc"
            "cher.example");

  // Non-ASCII inside a quoted local part.
  const std::string quoted = "<\"\xe2\x82\xac uro\"@example.com>";
  ExpectReject(quoted);
  Mailbox q = MustParse(quoted, kUtf8);
  EXPECT_TRUE(q.non_ascii);
  EXPECT_TRUE(q.quoted);

  // Plain ASCII addresses never set non_ascii, even when UTF-8 is allowed.
  EXPECT_FALSE(MustParse("<user@example.com>", kUtf8).non_ascii);
}

TEST(ParsePathTest, InvalidUtf8RejectedEvenWithSmtputf8) {
  ExpectReject("<a\xc0\xaf@example.com>", kUtf8);      // overlong '/'
  ExpectReject("<a\xed\xa0\x80@example.com>", kUtf8);  // surrogate
  ExpectReject("<a\xc3@example.com>", kUtf8);          // truncated sequence
  ExpectReject("<a\x80@example.com>", kUtf8);          // lone continuation byte
  ExpectReject("<a\xff@example.com>", kUtf8);
  ExpectReject("<user@ex\xc3(ample.com>", kUtf8);          // bad continuation in domain
  ExpectReject("<\"a\xe0\x80\x80\"@example.com>", kUtf8);  // overlong in quoted part
}

TEST(ParsePathTest, DomainLiterals) {
  Mailbox v4 = MustParse("<user@[1.2.3.4]>");
  EXPECT_TRUE(v4.domain_literal);
  EXPECT_EQ(v4.domain, "[1.2.3.4]");
  EXPECT_EQ(v4.ToString(), "user@[1.2.3.4]");
  EXPECT_FALSE(v4.HasRelayOperators());

  Mailbox v6 = MustParse("<user@[IPv6:::1]>");
  EXPECT_TRUE(v6.domain_literal);
  EXPECT_EQ(v6.domain, "[IPv6:::1]");

  Mailbox v6full = MustParse("<user@[IPv6:2001:db8::1]>");
  EXPECT_TRUE(v6full.domain_literal);
  // The "IPv6:" tag is case-insensitive like all ABNF literal strings; the literal is kept
  // as written.
  Mailbox v6lower = MustParse("<user@[ipv6:2001:DB8::1]>");
  EXPECT_EQ(v6lower.domain, "[ipv6:2001:DB8::1]");
}

TEST(ParsePathTest, BadDomainLiterals) {
  ExpectReject("<user@[1.2.3]>");
  ExpectReject("<user@[1.2.3.256]>");
  ExpectReject("<user@[1.2.3.4>");
  ExpectReject("<user@[]>");
  ExpectReject("<user@[>");
  ExpectReject("<user@[::1]>");           // IPv6 needs the tag
  ExpectReject("<user@[IPv6:1.2.3.4]>");  // not an IPv6 address
  ExpectReject("<user@[IPv6:::1::2]>");
  ExpectReject("<user@[IPv6:]>");
  ExpectReject("<user@[ 1.2.3.4]>");
  ExpectReject("<user@[1.2.3.4]x>");
  ExpectReject("<user@[example.com]>");
  // An embedded NUL must not hide trailing garbage from the address parser.
  ExpectReject(absl::string_view("<user@[1.2.3.4\0junk]>", 21));
  ExpectReject(absl::string_view("<user@[IPv6:::1\0junk]>", 22));
}

TEST(ParsePathTest, BadDots) {
  ExpectReject("<.user@example.com>");
  ExpectReject("<user.@example.com>");
  ExpectReject("<us..er@example.com>");
  ExpectReject("<.@example.com>");
  ExpectReject("<user@.example.com>");
  ExpectReject("<user@example.com.>");
  ExpectReject("<user@example..com>");
  EXPECT_EQ(MustParse("<a.b.c@x.y.z>").local_part, "a.b.c");
}

TEST(ParsePathTest, BadDomains) {
  ExpectReject("<user@>");
  ExpectReject("<user>");
  ExpectReject("<@>");
  ExpectReject("<user@-example.com>");
  ExpectReject("<user@example-.com>");
  ExpectReject("<user@exa_mple.com>");
  ExpectReject("<user@exa mple.com>");
  ExpectReject("<user@example.com >");
  ExpectReject("<us er@example.com>");
  ExpectReject("<user,x@example.com>");
  ExpectReject(absl::string_view("<user@exa\0mple.com>", 19));
  EXPECT_EQ(MustParse("<u@a-b.c-d.example>").domain, "a-b.c-d.example");
  EXPECT_EQ(MustParse("<u@123.example>").domain, "123.example");
}

TEST(ParsePathTest, LocalPartLengthLimit) {
  const std::string l64(64, 'a');
  Mailbox mb = MustParse("<" + l64 + "@example.com>");
  EXPECT_EQ(mb.local_part.size(), 64u);
  ExpectReject("<" + std::string(65, 'a') + "@example.com>");
  // The quotes count toward the 64 octets.
  MustParse("<\"" + std::string(62, 'a') + "\"@example.com>");
  ExpectReject("<\"" + std::string(63, 'a') + "\"@example.com>");
}

TEST(ParsePathTest, PathLengthLimit) {
  // RFC 5321 4.5.3.1.3: a path is at most 256 octets including the angle brackets.
  // "<" + 64 + "@" + domain + ">" with labels of at most 63 octets.
  auto make = [](size_t total) {
    std::string local(64, 'l');
    size_t domain_len = total - 2 - local.size() - 1;
    std::string domain;
    while (domain.size() < domain_len) {
      if (!domain.empty()) domain.push_back('.');
      size_t n = std::min<size_t>(50, domain_len - domain.size());
      if (n == 0) {
        domain.pop_back();
        domain.append("x");
        break;
      }
      domain.append(n, 'd');
    }
    std::string path = "<" + local + "@" + domain + ">";
    EXPECT_EQ(path.size(), total);
    return path;
  };
  MustParse(make(256));
  ExpectReject(make(257));
  ExpectReject(make(258));
  ExpectReject(make(300));
}

TEST(ParsePathTest, SourceRouteCountsTowardPathLength) {
  std::string route = "@" + std::string(60, 'r') + ".example,@" + std::string(60, 's') +
                      ".example,@" + std::string(60, 't') + ".example:";
  std::string path = "<" + route + "u@example.com>";
  ASSERT_GT(path.size(), 200u);
  ASSERT_LT(path.size(), 256u);
  MustParse(path);
  std::string longer = "<" + route + std::string(64, 'u') + "@example.com>";
  ASSERT_GT(longer.size(), 256u);
  ExpectReject(longer);
}

TEST(ParsePathTest, Postmaster) {
  auto r = ParsePath("<Postmaster>", kPostmaster);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->mailbox.local_part, "postmaster");
  EXPECT_TRUE(r->mailbox.domain.empty());
  EXPECT_FALSE(r->mailbox.IsNull());
  EXPECT_EQ(r->consumed, 12u);
  EXPECT_EQ(MustParse("<POSTMASTER>", kPostmaster).local_part, "postmaster");
  EXPECT_EQ(MustParse("<postmaster>", kPostmaster).local_part, "postmaster");
  // Postmaster with a domain is an ordinary mailbox.
  EXPECT_EQ(MustParse("<PostMaster@Example.com>", kPostmaster).ToString(),
            "PostMaster@example.com");

  ExpectReject("<Postmaster>");  // not allowed without the option (e.g. MAIL FROM)
  ExpectReject("<Postmaster>", kNull);
  ExpectReject("<\"Postmaster\">", kPostmaster);  // quoted is not the special form
  ExpectReject("<postmistress>", kPostmaster);
  ExpectReject("<postmaster2>", kPostmaster);
}

TEST(IsValidDomainTest, Lengths) {
  std::string label63(63, 'a');
  EXPECT_TRUE(IsValidDomain(label63 + ".com", false));
  EXPECT_FALSE(IsValidDomain(std::string(64, 'a') + ".com", false));
  // 4 labels of 63 + 3 dots = 255 octets.
  std::string d255 = label63 + "." + label63 + "." + label63 + "." + label63;
  ASSERT_EQ(d255.size(), 255u);
  EXPECT_TRUE(IsValidDomain(d255, false));
  std::string d256 = d255.substr(0, 253) + ".b" + "c";
  ASSERT_EQ(d256.size(), 256u);
  EXPECT_FALSE(IsValidDomain(d256, false));
  EXPECT_FALSE(IsValidDomain("", false));
  EXPECT_TRUE(IsValidDomain("a", false));
}

TEST(IsValidDomainTest, Syntax) {
  EXPECT_TRUE(IsValidDomain("example.com", false));
  EXPECT_TRUE(IsValidDomain("EXAMPLE.com", false));
  EXPECT_TRUE(IsValidDomain("a-b.example", false));
  EXPECT_FALSE(IsValidDomain("a..b", false));
  EXPECT_FALSE(IsValidDomain(".a", false));
  EXPECT_FALSE(IsValidDomain("a.", false));
  EXPECT_FALSE(IsValidDomain("-a.b", false));
  EXPECT_FALSE(IsValidDomain("a-.b", false));
  EXPECT_FALSE(IsValidDomain("a_b.c", false));
  EXPECT_FALSE(IsValidDomain("[1.2.3.4]", false));
  EXPECT_FALSE(
      IsValidDomain("b\xc3\xbc"
                    "cher.example",
                    false));
  EXPECT_TRUE(
      IsValidDomain("b\xc3\xbc"
                    "cher.example",
                    true));
  EXPECT_FALSE(
      IsValidDomain("b\xc3"
                    "cher.example",
                    true));
  EXPECT_FALSE(IsValidDomain("b\xed\xa0\x80.example", true));
}

TEST(IsValidUtf8Test, AcceptsWellFormed) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("\xc2\x80"));          // U+0080, smallest 2-byte
  EXPECT_TRUE(IsValidUtf8("\xdf\xbf"));          // U+07FF
  EXPECT_TRUE(IsValidUtf8("\xe0\xa0\x80"));      // U+0800, smallest 3-byte
  EXPECT_TRUE(IsValidUtf8("\xed\x9f\xbf"));      // U+D7FF, just below surrogates
  EXPECT_TRUE(IsValidUtf8("\xee\x80\x80"));      // U+E000, just above surrogates
  EXPECT_TRUE(IsValidUtf8("\xef\xbf\xbf"));      // U+FFFF
  EXPECT_TRUE(IsValidUtf8("\xf0\x90\x80\x80"));  // U+10000, smallest 4-byte
  EXPECT_TRUE(IsValidUtf8("\xf4\x8f\xbf\xbf"));  // U+10FFFF, largest
  EXPECT_TRUE(IsValidUtf8("\xe2\x82\xac \xf0\x9f\x98\x80"));
  EXPECT_TRUE(IsValidUtf8(absl::string_view("\0", 1)));
}

TEST(IsValidUtf8Test, RejectsOverlongs) {
  EXPECT_FALSE(IsValidUtf8("\xc0\x80"));  // overlong NUL
  EXPECT_FALSE(IsValidUtf8("\xc0\xaf"));  // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xc1\xbf"));
  EXPECT_FALSE(IsValidUtf8("\xe0\x80\x80"));
  EXPECT_FALSE(IsValidUtf8("\xe0\x9f\xbf"));  // U+07FF as 3 bytes
  EXPECT_FALSE(IsValidUtf8("\xf0\x80\x80\x80"));
  EXPECT_FALSE(IsValidUtf8("\xf0\x8f\xbf\xbf"));  // U+FFFF as 4 bytes
}

TEST(IsValidUtf8Test, RejectsSurrogatesAndOutOfRange) {
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));              // U+D800
  EXPECT_FALSE(IsValidUtf8("\xed\xbf\xbf"));              // U+DFFF
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\xbd\xed\xb8\x80"));  // CESU-8 pair
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));          // U+110000
  EXPECT_FALSE(IsValidUtf8("\xf5\x80\x80\x80"));
  EXPECT_FALSE(IsValidUtf8("\xf8\x88\x80\x80\x80"));
  EXPECT_FALSE(IsValidUtf8("\xfe"));
  EXPECT_FALSE(IsValidUtf8("\xff"));
}

TEST(IsValidUtf8Test, RejectsTruncatedAndBadContinuations) {
  EXPECT_FALSE(IsValidUtf8("\x80"));
  EXPECT_FALSE(IsValidUtf8("\xbf"));
  EXPECT_FALSE(IsValidUtf8("\xc3"));
  EXPECT_FALSE(IsValidUtf8("\xe2\x82"));
  EXPECT_FALSE(IsValidUtf8("\xf0\x9f\x98"));
  EXPECT_FALSE(IsValidUtf8("abc\xe2\x82"));
  EXPECT_FALSE(IsValidUtf8("\xc3\x28"));
  EXPECT_FALSE(IsValidUtf8("\xe2\x28\xa1"));
  EXPECT_FALSE(IsValidUtf8("\xe2\x82\x28"));
  EXPECT_FALSE(IsValidUtf8("\xf0\x9f\x98\x28"));
  EXPECT_FALSE(IsValidUtf8("\xc3\xa9\xc3"));
}

}  // namespace
}  // namespace mta::smtp
