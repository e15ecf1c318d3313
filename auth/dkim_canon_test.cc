// Tests for DKIM canonicalization (RFC 6376 section 3.4).
//
// Hand-written like the code under test: no Debian C/C++ DKIM signing library fits an
// io_uring shard design (libopendkim is milter-oriented, with its own DNS and threading).
#include "auth/dkim_canon.h"

#include <random>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mta::auth {
namespace {

using ::testing::HasSubstr;

constexpr DkimCanonicalization kSimple = DkimCanonicalization::kSimple;
constexpr DkimCanonicalization kRelaxed = DkimCanonicalization::kRelaxed;

// RFC 6376 section 3.4.5, byte for byte.
constexpr absl::string_view kRfcExample =
    "A: X\r\n"
    "B : Y\t\r\n"
    "\tZ  \r\n"
    "\r\n"
    " C \r\n"
    "D \t E\r\n"
    "\r\n"
    "\r\n";

std::string CanonicalHeaders(DkimCanonicalization c, absl::string_view message) {
  absl::StatusOr<DkimMessageParts> parts = DkimSplitMessage(message);
  EXPECT_TRUE(parts.ok()) << parts.status();
  std::string out;
  if (!parts.ok()) return out;
  for (const DkimHeaderField& field : parts->headers) DkimCanonicalizeHeader(c, field.raw, &out);
  return out;
}

std::string Header(DkimCanonicalization c, absl::string_view raw) {
  std::string out;
  DkimCanonicalizeHeader(c, raw, &out);
  return out;
}

TEST(DkimCanonTest, Rfc6376Example1Relaxed) {
  EXPECT_EQ(CanonicalHeaders(kRelaxed, kRfcExample), "a:X\r\nb:Y Z\r\n");
  const absl::string_view body = DkimSplitMessage(kRfcExample)->body;
  EXPECT_EQ(DkimCanonicalizeBody(kRelaxed, body), " C\r\nD E\r\n");
}

TEST(DkimCanonTest, Rfc6376Example2Simple) {
  EXPECT_EQ(CanonicalHeaders(kSimple, kRfcExample), "A: X\r\nB : Y\t\r\n\tZ  \r\n");
  const absl::string_view body = DkimSplitMessage(kRfcExample)->body;
  EXPECT_EQ(DkimCanonicalizeBody(kSimple, body), " C \r\nD \t E\r\n");
}

TEST(DkimCanonTest, SplitFindsFieldsFoldsAndBody) {
  constexpr absl::string_view kMessage =
      "From: a@example.com\r\n"
      "Subject: one\r\n"
      "  two\r\n"
      "\tthree\r\n"
      "X-Empty:\r\n"
      "Name  : value\r\n"
      "\r\n"
      "body\r\n";
  absl::StatusOr<DkimMessageParts> parts = DkimSplitMessage(kMessage);
  ASSERT_TRUE(parts.ok()) << parts.status();
  ASSERT_EQ(parts->headers.size(), 4u);
  EXPECT_EQ(parts->headers[0].name, "From");
  EXPECT_EQ(parts->headers[0].raw, "From: a@example.com\r\n");
  EXPECT_EQ(parts->headers[1].name, "Subject");
  EXPECT_EQ(parts->headers[1].raw, "Subject: one\r\n  two\r\n\tthree\r\n");
  EXPECT_EQ(parts->headers[2].name, "X-Empty");
  EXPECT_EQ(parts->headers[3].name, "Name");
  EXPECT_EQ(parts->headers[3].raw, "Name  : value\r\n");
  EXPECT_EQ(parts->body, "body\r\n");
}

TEST(DkimCanonTest, SplitWithoutBody) {
  absl::StatusOr<DkimMessageParts> parts = DkimSplitMessage("From: a\r\nTo: b\r\n");
  ASSERT_TRUE(parts.ok()) << parts.status();
  EXPECT_EQ(parts->headers.size(), 2u);
  EXPECT_EQ(parts->body, "");

  parts = DkimSplitMessage("From: a\r\n\r\n");
  ASSERT_TRUE(parts.ok()) << parts.status();
  EXPECT_EQ(parts->headers.size(), 1u);
  EXPECT_EQ(parts->body, "");
}

TEST(DkimCanonTest, SplitKeepsEightBitBytes) {
  const std::string message = "Subject: caf\xc3\xa9\r\n\r\n\xff\xfe body\r\n";
  absl::StatusOr<DkimMessageParts> parts = DkimSplitMessage(message);
  ASSERT_TRUE(parts.ok()) << parts.status();
  EXPECT_EQ(parts->headers[0].raw, "Subject: caf\xc3\xa9\r\n");
  EXPECT_EQ(parts->body, "\xff\xfe body\r\n");
}

TEST(DkimCanonTest, SplitRejectsMalformedHeaderSections) {
  struct Case {
    absl::string_view message;
    absl::string_view error;
  };
  const Case cases[] = {
      {"From: a\nTo: b\r\n\r\n", "bare LF"},
      {"From: a\rTo: b\r\n\r\n", "bare CR"},
      {" folded: first\r\n\r\n", "continuation line before the first header field"},
      {"no colon here\r\n\r\n", "not a header field"},
      {": empty\r\n\r\n", "empty field name"},
      {"Bad\x01Name: x\r\n\r\n", "not a header field"},
      {"From: a", "no CRLF at the end"},
      {"From: a\r\nTo: b", "line 2: no CRLF at the end"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<DkimMessageParts> parts = DkimSplitMessage(c.message);
    ASSERT_FALSE(parts.ok()) << c.message;
    EXPECT_EQ(parts.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(parts.status().message()), HasSubstr(std::string(c.error)))
        << c.message;
  }
}

TEST(DkimCanonTest, RelaxedHeaderUnfoldsAndCompressesWhitespace) {
  EXPECT_EQ(Header(kRelaxed, "SUBJECT :  a \t b\r\n\t c  \r\n   d\t\r\n"), "subject:a b c d\r\n");
  EXPECT_EQ(Header(kRelaxed, "X-Empty:\r\n"), "x-empty:\r\n");
  EXPECT_EQ(Header(kRelaxed, "X-Blank:   \t \r\n"), "x-blank:\r\n");
  EXPECT_EQ(Header(kRelaxed, "To:\r\n first@example.com,\r\n\tsecond@example.com\r\n"),
            "to:first@example.com, second@example.com\r\n");
  // Only the name is lowercased; 8-bit bytes in the value stay.
  EXPECT_EQ(Header(kRelaxed, "Subject: Caf\xc3\xa9 MIXED\r\n"), "subject:Caf\xc3\xa9 MIXED\r\n");
  // A field without its CRLF (the DKIM-Signature being signed) gets one.
  EXPECT_EQ(Header(kRelaxed, "DKIM-Signature: v=1;\r\n\tb="), "dkim-signature:v=1; b=\r\n");
}

TEST(DkimCanonTest, SimpleHeaderIsUnchanged) {
  EXPECT_EQ(Header(kSimple, "SUBJECT :  a \t b\r\n\t c  \r\n"), "SUBJECT :  a \t b\r\n\t c  \r\n");
  EXPECT_EQ(Header(kSimple, "DKIM-Signature: v=1;\r\n\tb="), "DKIM-Signature: v=1;\r\n\tb=\r\n");
}

TEST(DkimCanonTest, EmptyBodies) {
  EXPECT_EQ(DkimCanonicalizeBody(kSimple, ""), "\r\n");
  EXPECT_EQ(DkimCanonicalizeBody(kRelaxed, ""), "");
  EXPECT_EQ(DkimCanonicalizeBody(kSimple, "\r\n"), "\r\n");
  EXPECT_EQ(DkimCanonicalizeBody(kRelaxed, "\r\n"), "");
  EXPECT_EQ(DkimCanonicalizeBody(kSimple, "\r\n\r\n\r\n"), "\r\n");
  EXPECT_EQ(DkimCanonicalizeBody(kRelaxed, "\r\n\r\n\r\n"), "");
  // Lines of only whitespace are empty lines for relaxed, content for simple.
  EXPECT_EQ(DkimCanonicalizeBody(kRelaxed, "  \r\n\t\r\n \t \r\n"), "");
  EXPECT_EQ(DkimCanonicalizeBody(kSimple, "  \r\n\t\r\n"), "  \r\n\t\r\n");
}

TEST(DkimCanonTest, TrailingEmptyLinesAreRemoved) {
  EXPECT_EQ(DkimCanonicalizeBody(kSimple, "a\r\n\r\n\r\n"), "a\r\n");
  EXPECT_EQ(DkimCanonicalizeBody(kRelaxed, "a\r\n\r\n\r\n"), "a\r\n");
  EXPECT_EQ(DkimCanonicalizeBody(kRelaxed, "a\r\n \r\n\t\r\n"), "a\r\n");
  // Empty lines inside the body stay.
  EXPECT_EQ(DkimCanonicalizeBody(kSimple, "a\r\n\r\n\r\nb\r\n"), "a\r\n\r\n\r\nb\r\n");
  EXPECT_EQ(DkimCanonicalizeBody(kRelaxed, "a\r\n \r\n\r\nb\r\n"), "a\r\n\r\n\r\nb\r\n");
  // Leading empty lines stay too.
  EXPECT_EQ(DkimCanonicalizeBody(kSimple, "\r\n\r\nb\r\n"), "\r\n\r\nb\r\n");
}

TEST(DkimCanonTest, MissingFinalCrlfIsAdded) {
  EXPECT_EQ(DkimCanonicalizeBody(kSimple, "abc"), "abc\r\n");
  EXPECT_EQ(DkimCanonicalizeBody(kRelaxed, "abc  "), "abc\r\n");
  EXPECT_EQ(DkimCanonicalizeBody(kRelaxed, "a\r\nb \t"), "a\r\nb\r\n");
}

TEST(DkimCanonTest, RelaxedBodyWhitespace) {
  EXPECT_EQ(DkimCanonicalizeBody(kRelaxed, "  lead\t\ttab  mid   end \t\r\n"),
            " lead tab mid end\r\n");
  EXPECT_EQ(DkimCanonicalizeBody(kSimple, "  lead\t\ttab  mid   end \t\r\n"),
            "  lead\t\ttab  mid   end \t\r\n");
}

TEST(DkimCanonTest, BareCrAndLfAreOrdinaryBytes) {
  EXPECT_EQ(DkimCanonicalizeBody(kSimple, "a\rb\nc\r\n"), "a\rb\nc\r\n");
  EXPECT_EQ(DkimCanonicalizeBody(kRelaxed, "a \r b\n\r\n"), "a \r b\n\r\n");
  EXPECT_EQ(DkimCanonicalizeBody(kSimple, "a\r"), "a\r\r\n");
  EXPECT_EQ(DkimCanonicalizeBody(kRelaxed, "a \r"), "a \r\r\n");
  EXPECT_EQ(DkimCanonicalizeBody(kSimple, "\r\n\r"), "\r\n\r\r\n");
}

TEST(DkimCanonTest, CanonicalLengthCountsOutput) {
  DkimBodyCanonicalizer canonicalizer(kRelaxed);
  std::string out;
  canonicalizer.Update("a  b \r\n\r\n", &out);
  canonicalizer.Finish(&out);
  EXPECT_EQ(out, "a b\r\n");
  EXPECT_EQ(canonicalizer.canonical_length(), out.size());
}

// An independent, line-based reading of RFC 6376 3.4.3 and 3.4.4, for comparison.
std::string ReferenceBody(DkimCanonicalization c, const std::string& body) {
  std::vector<std::string> lines = absl::StrSplit(body, "\r\n");
  // The piece after the last CRLF is an unterminated last line (or empty).
  const bool unterminated = !lines.back().empty();
  if (!unterminated) lines.pop_back();
  if (c == kRelaxed) {
    for (std::string& line : lines) {
      std::string out;
      bool wsp = false;
      for (char ch : line) {
        if (ch == ' ' || ch == '\t') {
          wsp = true;
          continue;
        }
        if (wsp) out.push_back(' ');
        wsp = false;
        out.push_back(ch);
      }
      line = out;  // trailing WSP dropped
    }
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.empty()) return c == kSimple ? "\r\n" : "";
  return absl::StrJoin(lines, "\r\n") + "\r\n";
}

TEST(DkimCanonTest, StreamingMatchesReferenceForAnyChunking) {
  std::mt19937 rng(6376);
  const char alphabet[] = {'a', 'b', ' ', '\t', '\r', '\n', '\xe9'};
  for (int round = 0; round < 20000; ++round) {
    std::string body;
    const int len = std::uniform_int_distribution<int>(0, 40)(rng);
    for (int i = 0; i < len; ++i) {
      body.push_back(alphabet[std::uniform_int_distribution<int>(0, 6)(rng)]);
    }
    for (DkimCanonicalization c : {kSimple, kRelaxed}) {
      const std::string expected = ReferenceBody(c, body);
      ASSERT_EQ(DkimCanonicalizeBody(c, body), expected)
          << "mode " << DkimCanonicalizationName(c) << " body \"" << absl::CEscape(body) << "\"";
      // The same body in random chunks, empty ones included.
      DkimBodyCanonicalizer canonicalizer(c);
      std::string out;
      size_t pos = 0;
      while (pos < body.size()) {
        const size_t take = std::uniform_int_distribution<size_t>(0, 4)(rng);
        canonicalizer.Update(absl::string_view(body).substr(pos, take), &out);
        pos += take;
      }
      canonicalizer.Finish(&out);
      ASSERT_EQ(out, expected) << "chunked, mode " << DkimCanonicalizationName(c) << " body \""
                               << absl::CEscape(body) << "\"";
    }
  }
}

}  // namespace
}  // namespace mta::auth
