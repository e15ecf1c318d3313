#include "mta/smtp/data_framer.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace mta::smtp {
namespace {

using Mode = DataFramer::Mode;

constexpr uint64_t kNoLimit = 1ull << 40;

struct Result {
  std::string out;
  uint32_t violations = 0;
  bool done = false;
  size_t consumed = 0;
  uint64_t content_bytes = 0;

  bool operator==(const Result&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Result& r) {
  return os << "{out=\"" << absl::CHexEscape(r.out) << "\" violations=" << r.violations
            << " done=" << r.done << " consumed=" << r.consumed
            << " content_bytes=" << r.content_bytes << "}";
}

// Feeds `in` in pieces of `chunk` bytes (0 = all at once), as a transport would: a piece
// that is not fully consumed means the framer is done and the rest belongs to the caller.
Result Frame(absl::string_view in, size_t chunk = 0, Mode mode = Mode::kData,
             uint64_t max = kNoLimit, bool finish = false) {
  Result r;
  DataFramer f(mode, max, &r.out);
  if (chunk == 0) chunk = in.size() == 0 ? 1 : in.size();
  size_t pos = 0;
  while (pos < in.size()) {
    absl::string_view piece = in.substr(pos, chunk);
    size_t n = f.Feed(piece);
    EXPECT_LE(n, piece.size());
    pos += n;
    if (n < piece.size()) {
      EXPECT_TRUE(f.done()) << "partial consumption without done";
      break;
    }
  }
  if (finish) f.Finish();
  r.violations = f.violations();
  r.done = f.done();
  r.consumed = pos;
  r.content_bytes = f.content_bytes();
  return r;
}

TEST(DataFramerTest, SimpleMessage) {
  const std::string in = "Subject: hi\r\n\r\nbody line\r\n.\r\n";
  Result r = Frame(in);
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.violations, DataFramer::kNone);
  EXPECT_EQ(r.out, "Subject: hi\r\n\r\nbody line\r\n");
  EXPECT_EQ(r.consumed, in.size());
  EXPECT_EQ(r.content_bytes, r.out.size());
}

TEST(DataFramerTest, EmptyMessage) {
  Result r = Frame(".\r\n");
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.consumed, 3u);
  EXPECT_EQ(r.violations, DataFramer::kNone);
  EXPECT_EQ(r.content_bytes, 0u);
}

TEST(DataFramerTest, NotDoneWithoutTerminator) {
  Result r = Frame("line one\r\nline two\r\n");
  EXPECT_FALSE(r.done);
  EXPECT_EQ(r.consumed, 20u);
  EXPECT_EQ(r.out, "line one\r\nline two\r\n");
  // A trailing "." line start or ".\r" is pending, not yet content.
  Result dot = Frame("a\r\n.");
  EXPECT_FALSE(dot.done);
  EXPECT_EQ(dot.consumed, 4u);
  Result dotcr = Frame("a\r\n.\r");
  EXPECT_FALSE(dotcr.done);
  EXPECT_EQ(dotcr.consumed, 5u);
  EXPECT_EQ(dotcr.violations, DataFramer::kNone);
}

TEST(DataFramerTest, DotUnstuffing) {
  Result r = Frame("..leading\r\n..\r\n...\r\nmid.dle.\r\n.\r\n");
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.violations, DataFramer::kNone);
  EXPECT_EQ(r.out, ".leading\r\n.\r\n..\r\nmid.dle.\r\n");
  // A leading dot that was not doubled is still removed (RFC 5321 4.5.2).
  Result single = Frame(".x\r\n. \r\n.\r\n");
  EXPECT_EQ(single.out, "x\r\n \r\n");
  EXPECT_TRUE(single.done);
}

TEST(DataFramerTest, BytesAfterTerminatorAreNotConsumed) {
  std::string out;
  DataFramer f(Mode::kData, kNoLimit, &out);
  const std::string in = "hello\r\n.\r\nQUIT\r\n";
  EXPECT_EQ(f.Feed(in), 10u);
  EXPECT_TRUE(f.done());
  EXPECT_EQ(out, "hello\r\n");
  EXPECT_EQ(f.Feed("more"), 0u);
  EXPECT_EQ(out, "hello\r\n");
  // Terminator immediately at the start.
  std::string out2;
  DataFramer g(Mode::kData, kNoLimit, &out2);
  EXPECT_EQ(g.Feed(".\r\n.\r\n"), 3u);
  EXPECT_TRUE(g.done());
  EXPECT_EQ(out2, "");
}

struct SmugglingCase {
  const char* name;
  std::string input;
  std::string expected_out;
  uint32_t violations;
};

TEST(DataFramerTest, SmugglingSequencesNeverEndTheMessage) {
  const SmugglingCase cases[] = {
      {"LF.LF", "a\n.\nMAIL FROM:<x>\r\n", "a\n.\nMAIL FROM:<x>\r\n", DataFramer::kBareLf},
      {"LF.CRLF", "a\n.\r\nMAIL FROM:<x>\r\n", "a\n.\r\nMAIL FROM:<x>\r\n", DataFramer::kBareLf},
      {"CR.CRLF", "a\r.\r\nMAIL FROM:<x>\r\n", "a\r.\r\nMAIL FROM:<x>\r\n", DataFramer::kBareCr},
      {"CRLF.LF", "a\r\n.\nMAIL FROM:<x>\r\n", "a\r\n\nMAIL FROM:<x>\r\n", DataFramer::kBareLf},
      {"CRLF.CR", "a\r\n.\rMAIL FROM:<x>\r\n", "a\r\n\rMAIL FROM:<x>\r\n", DataFramer::kBareCr},
      {"CR.CR", "a\r.\rMAIL\r\n", "a\r.\rMAIL\r\n", DataFramer::kBareCr},
      {"LF.CR", "a\n.\rMAIL\r\n", "a\n.\rMAIL\r\n", DataFramer::kBareLf | DataFramer::kBareCr},
      {"start .LF", ".\nMAIL\r\n", "\nMAIL\r\n", DataFramer::kBareLf},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    // Without a real terminator the framer keeps reading.
    Result open = Frame(c.input);
    EXPECT_FALSE(open.done);
    EXPECT_EQ(open.consumed, c.input.size());
    EXPECT_EQ(open.violations & c.violations, c.violations);
    // With a real terminator it ends exactly there, as one message holding everything.
    const std::string full = c.input + ".\r\nRSET\r\n";
    Result closed = Frame(full);
    EXPECT_TRUE(closed.done);
    EXPECT_EQ(closed.consumed, full.size() - 6);
    EXPECT_EQ(closed.out, c.expected_out);
    EXPECT_EQ(closed.violations, c.violations);
    EXPECT_EQ(Frame(full, 1), closed);
  }
}

TEST(DataFramerTest, CrLfDotCrLfEndsEvenAfterViolations) {
  const std::string in = "a\n.\nb\r\n.\r\nEXTRA";
  Result r = Frame(in);
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.consumed, in.size() - 5);
  EXPECT_EQ(r.out, "a\n.\nb\r\n");
  EXPECT_EQ(r.violations, DataFramer::kBareLf);
}

TEST(DataFramerTest, BareCrAndBareLf) {
  Result cr = Frame("a\rb\r\n.\r\n");
  EXPECT_TRUE(cr.done);
  EXPECT_EQ(cr.violations, DataFramer::kBareCr);
  EXPECT_EQ(cr.out, "a\rb\r\n");

  Result lf = Frame("a\nb\r\n.\r\n");
  EXPECT_TRUE(lf.done);
  EXPECT_EQ(lf.violations, DataFramer::kBareLf);
  EXPECT_EQ(lf.out, "a\nb\r\n");

  Result lfcr = Frame("a\n\rb\r\n.\r\n");
  EXPECT_EQ(lfcr.violations, DataFramer::kBareLf | DataFramer::kBareCr);

  Result clean = Frame("a\r\nb\r\n.\r\n");
  EXPECT_EQ(clean.violations, DataFramer::kNone);
}

TEST(DataFramerTest, Nul) {
  const std::string in("a\0b\r\n.\r\n", 8);
  Result r = Frame(in);
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.violations, DataFramer::kNul);
  EXPECT_EQ(r.out, std::string("a\0b\r\n", 5));
  Result lead = Frame(std::string(".\0\r\n.\r\n", 7));
  EXPECT_EQ(lead.violations, DataFramer::kNul);
  EXPECT_EQ(lead.out, std::string("\0\r\n", 3));
}

TEST(DataFramerTest, LineLengthLimit) {
  const std::string l998(998, 'x');
  const std::string l999(999, 'x');
  Result ok = Frame(l998 + "\r\n" + l998 + "\r\n.\r\n");
  EXPECT_TRUE(ok.done);
  EXPECT_EQ(ok.violations, DataFramer::kNone);
  EXPECT_EQ(ok.out, l998 + "\r\n" + l998 + "\r\n");

  Result too_long = Frame("short\r\n" + l999 + "\r\nshort\r\n.\r\n");
  EXPECT_TRUE(too_long.done);
  EXPECT_EQ(too_long.violations, DataFramer::kLineTooLong);
  EXPECT_EQ(too_long.out, "short\r\n" + l999 + "\r\nshort\r\n");

  // The dot added for transparency does not count (RFC 5321 4.5.3.1.6).
  Result stuffed = Frame("." + l998 + "\r\n.\r\n");
  EXPECT_EQ(stuffed.violations, DataFramer::kNone);
  EXPECT_EQ(stuffed.out, l998 + "\r\n");

  // Last line without CRLF before the terminator cannot exist; a long unterminated line is
  // flagged as it arrives.
  Result open = Frame(l999);
  EXPECT_FALSE(open.done);
  EXPECT_EQ(open.violations, DataFramer::kLineTooLong);

  // Bare CR / LF do not end a line, so they count toward its length.
  Result bare = Frame(std::string(500, 'x') + "\n" + std::string(498, 'y') + "\r\n.\r\n");
  EXPECT_EQ(bare.violations, DataFramer::kBareLf | DataFramer::kLineTooLong);

  Result long_bdat = Frame(l999 + "\r\n", 0, Mode::kBdat);
  EXPECT_EQ(long_bdat.violations, DataFramer::kLineTooLong);
  Result ok_bdat = Frame(l998 + "\r\n" + l998, 0, Mode::kBdat);
  EXPECT_EQ(ok_bdat.violations, DataFramer::kNone);
}

TEST(DataFramerTest, SizeLimit) {
  // Exactly at the limit.
  Result exact = Frame("01234567\r\n.\r\n", 0, Mode::kData, 10);
  EXPECT_TRUE(exact.done);
  EXPECT_EQ(exact.violations, DataFramer::kNone);
  EXPECT_EQ(exact.out, "01234567\r\n");
  EXPECT_EQ(exact.content_bytes, 10u);

  // One over: flagged, stored content capped, but the message is read to its end.
  const std::string in = "012345678\r\nmore text\r\n.\r\nNEXT";
  Result over = Frame(in, 0, Mode::kData, 10);
  EXPECT_TRUE(over.done);
  EXPECT_EQ(over.violations, DataFramer::kTooBig);
  EXPECT_EQ(over.out, "012345678\r");
  EXPECT_EQ(over.content_bytes, 22u);
  EXPECT_EQ(over.consumed, in.size() - 4);

  Result zero = Frame(".\r\n", 0, Mode::kData, 0);
  EXPECT_EQ(zero.violations, DataFramer::kNone);
  Result zero_over = Frame("a\r\n.\r\n", 0, Mode::kData, 0);
  EXPECT_EQ(zero_over.violations, DataFramer::kTooBig);
  EXPECT_EQ(zero_over.out, "");

  Result big = Frame(std::string(100000, 'a'), 0, Mode::kBdat, 1000);
  EXPECT_EQ(big.out.size(), 1000u);
  EXPECT_EQ(big.content_bytes, 100000u);
  EXPECT_TRUE(big.violations & DataFramer::kTooBig);
}

TEST(DataFramerTest, SizeLimitWithByteAtATimeFeeding) {
  const std::string in = "012345678\r\nmore text\r\n.\r\n";
  EXPECT_EQ(Frame(in, 1, Mode::kData, 10), Frame(in, 0, Mode::kData, 10));
  EXPECT_EQ(Frame(in, 1, Mode::kData, 10).out, "012345678\r");
}

TEST(DataFramerTest, ChunkedFeedingMatchesOneShot) {
  const std::vector<std::string> inputs = {
      "Subject: hi\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@b>\r\n",
      "..stuffed\r\n...\r\n.\r\n",
      "a\n.\nb\r\n.\r\nRSET\r\n",
      "a\n.\r\nb\r\n.\r\n",
      "a\r.\r\nb\r\n.\r\nX",
      "a\r\n.\rb\r\n.\r\n",
      "a\r\n.\nb\r\n.\r\n",
      std::string("nul\0here\r\n.\r\n", 14),
      std::string(1500, 'z') + "\r\n.\r\n",
      "no terminator at all\r\n.",
      "\r\r\n\n\r.\r\n.\r\r\n.\r\n.\r\nTAIL",
  };
  for (const std::string& in : inputs) {
    SCOPED_TRACE(absl::CHexEscape(in));
    Result whole = Frame(in);
    for (size_t chunk : {1, 2, 3, 4, 5, 7, 13}) {
      EXPECT_EQ(Frame(in, chunk), whole) << "chunk " << chunk;
      EXPECT_EQ(Frame(in, chunk, Mode::kData, 12), Frame(in, 0, Mode::kData, 12))
          << "chunk " << chunk;
      EXPECT_EQ(Frame(in, chunk, Mode::kBdat, kNoLimit, true),
                Frame(in, 0, Mode::kBdat, kNoLimit, true))
          << "bdat chunk " << chunk;
    }
  }
}

// A straightforward model of DATA framing for inputs that contain a terminator.
Result Model(const std::string& in) {
  Result r;
  const std::string framed = "\r\n" + in;
  size_t t = framed.find("\r\n.\r\n");
  if (t == std::string::npos) {
    ADD_FAILURE() << "model needs a terminator";
    return r;
  }
  r.done = true;
  r.consumed = t + 5 - 2;
  // Body as sent: everything up to and including the CRLF before the dot line.
  const std::string body = framed.substr(2, t);
  size_t line_start = 0;
  size_t line_len = 0;
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    bool at_line_start = i == line_start;
    if (at_line_start) line_len = 0;
    if (at_line_start && c == '.') continue;  // transparency dot removed
    if (c == '\r' && i + 1 < body.size() && body[i + 1] == '\n') {
      r.out.append("\r\n");
      ++i;
      line_start = i + 1;
      continue;
    }
    if (c == '\r') r.violations |= DataFramer::kBareCr;
    if (c == '\n') r.violations |= DataFramer::kBareLf;
    if (c == '\0') r.violations |= DataFramer::kNul;
    if (++line_len > 998) r.violations |= DataFramer::kLineTooLong;
    r.out.push_back(c);
  }
  r.content_bytes = r.out.size();
  return r;
}

TEST(DataFramerTest, RandomInputsMatchModelAndChunking) {
  std::mt19937 rng(12345);
  const char alphabet[] = {'a', '.', '.', '\r', '\r', '\n', '\n', '\0', 'M'};
  for (int iter = 0; iter < 3000; ++iter) {
    std::uniform_int_distribution<int> len_dist(0, 40);
    std::uniform_int_distribution<int> ch_dist(0, sizeof(alphabet) - 1);
    std::string in;
    int len = len_dist(rng);
    for (int i = 0; i < len; ++i) in.push_back(alphabet[ch_dist(rng)]);
    SCOPED_TRACE(absl::CHexEscape(in));
    Result open = Frame(in);
    // Feeding in random pieces always gives the same result as one shot.
    std::uniform_int_distribution<int> chunk_dist(1, 6);
    EXPECT_EQ(Frame(in, chunk_dist(rng)), open);
    EXPECT_EQ(Frame(in, 1), open);
    // A message ends exactly at the first CRLF.CRLF and nowhere else.
    const std::string terminated = in + "\r\n.\r\nTAIL";
    Result r = Frame(terminated);
    EXPECT_EQ(r, Model(terminated));
    EXPECT_EQ(Frame(terminated, 1), r);
    if (("\r\n" + in).find("\r\n.\r\n") == std::string::npos) {
      EXPECT_FALSE(open.done);
      EXPECT_EQ(open.consumed, in.size());
    } else {
      EXPECT_TRUE(open.done);
    }
    // BDAT never interprets anything and never ends before Finish().
    Result bdat = Frame(in, 0, Mode::kBdat);
    EXPECT_FALSE(bdat.done);
    EXPECT_EQ(bdat.consumed, in.size());
    EXPECT_EQ(Frame(in, 1, Mode::kBdat, kNoLimit, true), Frame(in, 0, Mode::kBdat, kNoLimit, true));
  }
}

TEST(DataFramerBdatTest, NoDotHandling) {
  const std::string in = "..x\r\n.\r\n.\r\nafter\r\n";
  Result r = Frame(in, 0, Mode::kBdat);
  EXPECT_FALSE(r.done);
  EXPECT_EQ(r.consumed, in.size());
  EXPECT_EQ(r.out, in);
  EXPECT_EQ(r.violations, DataFramer::kNone);
  Result finished = Frame(in, 0, Mode::kBdat, kNoLimit, true);
  EXPECT_TRUE(finished.done);
  EXPECT_EQ(finished.out, in);
}

TEST(DataFramerBdatTest, CrLfSplitAcrossChunks) {
  std::string out;
  DataFramer f(Mode::kBdat, kNoLimit, &out);
  EXPECT_EQ(f.Feed("line\r"), 5u);
  EXPECT_EQ(f.Feed("\nnext\r\n"), 7u);
  f.Finish();
  EXPECT_TRUE(f.done());
  EXPECT_EQ(f.violations(), DataFramer::kNone);
  EXPECT_EQ(out, "line\r\nnext\r\n");
  EXPECT_EQ(f.Feed("late"), 0u);
}

TEST(DataFramerBdatTest, Violations) {
  EXPECT_EQ(Frame("a\nb", 0, Mode::kBdat, kNoLimit, true).violations, DataFramer::kBareLf);
  EXPECT_EQ(Frame("a\rb", 0, Mode::kBdat, kNoLimit, true).violations, DataFramer::kBareCr);
  EXPECT_EQ(Frame(std::string("a\0b", 3), 0, Mode::kBdat, kNoLimit, true).violations,
            DataFramer::kNul);
  // A CR at the very end of the last chunk is bare.
  EXPECT_EQ(Frame("abc\r", 0, Mode::kBdat, kNoLimit, true).violations, DataFramer::kBareCr);
  EXPECT_EQ(Frame("abc\r", 0, Mode::kBdat, kNoLimit, false).violations, DataFramer::kNone);
  EXPECT_EQ(Frame("abc\r\n", 0, Mode::kBdat, kNoLimit, true).violations, DataFramer::kNone);
  EXPECT_EQ(Frame("", 0, Mode::kBdat, kNoLimit, true).violations, DataFramer::kNone);
  EXPECT_TRUE(Frame("", 0, Mode::kBdat, kNoLimit, true).done);
}

TEST(DataFramerBdatTest, SizeLimit) {
  Result exact = Frame("0123456789", 0, Mode::kBdat, 10, true);
  EXPECT_EQ(exact.violations, DataFramer::kNone);
  EXPECT_EQ(exact.out, "0123456789");
  Result over = Frame("0123456789A", 0, Mode::kBdat, 10, true);
  EXPECT_EQ(over.violations, DataFramer::kTooBig);
  EXPECT_EQ(over.out, "0123456789");
  EXPECT_EQ(over.content_bytes, 11u);
}

}  // namespace
}  // namespace mta::smtp
