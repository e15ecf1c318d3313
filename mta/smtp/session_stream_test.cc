// The server session's stream selection: the client's network, then the stream header,
// then the listener's stream.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "mta/smtp/session.h"
#include "mta/smtp/session_test_util.h"
#include "queue/envelope.h"
#include "queue/spool.h"

namespace mta::smtp {
namespace {

// ---------------------------------------------------------------------------------------
// Stream selection: the client's network, then the stream header, then the listener's.

class SessionStreamTest : public SessionTest {
 protected:
  SessionStreamTest() {
    config_.stream_header = "X-Stream";
    delegate_.known_streams = {"inbound", "bulk", "transactional"};
  }

  // Sends `body` with DATA and expects `reply` and no submission; the session goes on.
  void ExpectRejected(absl::string_view body, absl::string_view reply) {
    size_t before = delegate_.submitted.size();
    EXPECT_EQ(Send("DATA\r\n"), Replies({kDataGo}));
    EXPECT_EQ(Send(absl::StrCat(body, ".\r\n")), Replies({std::string(reply)}));
    EXPECT_EQ(delegate_.submitted.size(), before);
    EXPECT_EQ(session_->phase(), Session::Phase::kCommand);
    // The transaction was reset.
    EXPECT_EQ(Send("RCPT TO:<u@local.example>\r\n"),
              Replies({"503 5.5.1 Error: need MAIL command"}));
  }
};

TEST_F(SessionStreamTest, NetworkStreamWinsOverHeaderWhichIsStillRemoved) {
  Start(false, "192.0.2.1", "transactional");
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const SpoolRecord* rec = SendMessage("X-Stream: bulk\r\nSubject: x\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "transactional");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0001", "ESMTP", "u@local.example") +
                              AddedHeaders("Q0001") + "Subject: x\r\n\r\nbody\r\n");

  // The header is not consulted at all: unknown or conflicting values do not matter.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  rec = SendMessage("X-Stream: nosuch\r\nSubject: y\r\nX-Stream: bulk\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "transactional");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0002", "ESMTP", "u@local.example") +
                              AddedHeaders("Q0002") + "Subject: y\r\n\r\nbody\r\n");
}

TEST_F(SessionStreamTest, HeaderChoosesKnownStreamAndIsRemoved) {
  config_.add_missing_headers = false;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  // Folded value, any case for the name; X-Stream-Id is another field, and a body line
  // that looks like the header stays. Everything else is kept byte for byte (dot-unstuffed).
  const SpoolRecord* rec = SendMessage(
      "Subject: x\r\n folded subject\r\nx-STREAM:\r\n\t bulk \r\nX-Stream-Id: 7\r\n"
      "To: <u@local.example>\r\n\r\nX-Stream: bulk\r\n..dot\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "bulk");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0001", "ESMTP", "u@local.example") +
                              "Subject: x\r\n folded subject\r\nX-Stream-Id: 7\r\n"
                              "To: <u@local.example>\r\n\r\nX-Stream: bulk\r\n.dot\r\n");
  EXPECT_EQ(rec->envelope.content_bytes, rec->content.size());

  // First field, blanks before the colon (obsolete syntax) and a repeated equal value.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  rec = SendMessage("X-Stream : inbound\r\nSubject: y\r\nX-Stream:inbound\r\n\r\nb\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "inbound");
  EXPECT_EQ(rec->content,
            ReceivedHeader("Q0002", "ESMTP", "u@local.example") + "Subject: y\r\n\r\nb\r\n");

  // The header as the last line of a message without a body.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  rec = SendMessage("Subject: z\r\nX-Stream: transactional\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "transactional");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0003", "ESMTP", "u@local.example") + "Subject: z\r\n");
}

TEST_F(SessionStreamTest, HeaderIsRemovedWhenAddingMissingHeaders) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const SpoolRecord* rec = SendMessage("X-Stream: bulk\r\nSubject: x\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "bulk");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0001", "ESMTP", "u@local.example") +
                              AddedHeaders("Q0001") + "Subject: x\r\n\r\nbody\r\n");
}

TEST_F(SessionStreamTest, UnknownStreamIsRejected) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  ExpectRejected("Subject: x\r\nX-Stream: nosuch\r\n\r\nbody\r\n",
                 "550 5.7.1 Unknown stream \"nosuch\" in X-Stream header");

  // Unfolding keeps the blank: "bu lk" is not "bulk".
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  ExpectRejected("X-Stream: bu\r\n lk\r\n\r\nbody\r\n",
                 "550 5.7.1 Unknown stream \"bu lk\" in X-Stream header");

  // Stream names are case-sensitive.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  ExpectRejected("X-Stream: Bulk\r\n\r\nbody\r\n",
                 "550 5.7.1 Unknown stream \"Bulk\" in X-Stream header");

  // The name is quoted safely: control characters dropped, quotes escaped, 8-bit bytes
  // replaced and at most 64 characters kept.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  ExpectRejected(
      absl::StrCat("X-Stream: a\x01\"b\xc3\xa9\t", std::string(100, 'c'), "\r\n\r\nbody\r\n"),
      absl::StrCat("550 5.7.1 Unknown stream \"a\\\"b??", std::string(59, 'c'),
                   "\" in X-Stream header"));

  // The session goes on and accepts a good message.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const SpoolRecord* rec = SendMessage("X-Stream: bulk\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "bulk");
}

TEST_F(SessionStreamTest, ConflictingHeadersAreRejected) {
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  ExpectRejected("X-Stream: bulk\r\nSubject: x\r\nX-Stream: inbound\r\n\r\nbody\r\n",
                 "550 5.7.1 Conflicting streams \"bulk\" and \"inbound\" in X-Stream headers");
  EXPECT_TRUE(delegate_.submitted.empty());
}

TEST_F(SessionStreamTest, EmptyValueFallsBackToListenerStream) {
  config_.add_missing_headers = false;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const SpoolRecord* rec = SendMessage("X-Stream:\r\nSubject: x\r\nX-Stream: \t\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "inbound");
  EXPECT_EQ(rec->content,
            ReceivedHeader("Q0001", "ESMTP", "u@local.example") + "Subject: x\r\n\r\nbody\r\n");

  // An empty occurrence names nothing: another one still decides.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  rec = SendMessage("X-Stream:\r\nX-Stream: bulk\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "bulk");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0002", "ESMTP", "u@local.example") + "\r\nbody\r\n");

  // No header at all.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  rec = SendMessage("Subject: x\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "inbound");
}

TEST_F(SessionStreamTest, AnyStreamAcceptedWhenNoneAreKnown) {
  delegate_.known_streams.clear();
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const SpoolRecord* rec = SendMessage("X-Stream: anything\r\n\r\nbody\r\n");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "anything");
}

TEST_F(SessionStreamTest, NoStreamHeaderConfiguredLeavesHeaderInPlace) {
  config_.stream_header.clear();
  config_.add_missing_headers = false;
  Start();
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  const std::string body = "X-Stream: bulk\r\nSubject: x\r\nX-Stream: nosuch\r\n\r\nbody\r\n";
  const SpoolRecord* rec = SendMessage(body);
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "inbound");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0001", "ESMTP", "u@local.example") + body);

  // The network still decides.
  Start(false, "192.0.2.1", "transactional");
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  rec = SendMessage(body);
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->envelope.stream, "transactional");
  EXPECT_EQ(rec->content, ReceivedHeader("Q0002", "ESMTP", "u@local.example") + body);
}

TEST_F(SessionStreamTest, Bdat) {
  config_.add_missing_headers = false;
  Start();
  auto bdat = [](absl::string_view chunk, bool last = false) {
    return absl::StrCat("BDAT ", chunk.size(), last ? " LAST" : "", "\r\n", chunk);
  };
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  // The header and its continuation line are split over chunks.
  EXPECT_EQ(Send(bdat("Subject: x\r\nX-Stre")), Replies({"250 2.0.0 18 octets received"}));
  EXPECT_EQ(Send(bdat("am:\r\n bulk")), Replies({"250 2.0.0 28 octets received"}));
  EXPECT_EQ(Send(bdat("\r\nTo: a\r\n\r\nX-Stream: x\r\n", true)), Replies());
  ASSERT_EQ(delegate_.submitted.size(), 1u);
  const SpoolRecord& rec = *delegate_.submitted[0];
  EXPECT_EQ(rec.envelope.stream, "bulk");
  EXPECT_EQ(rec.content, ReceivedHeader("Q0001", "ESMTP", "u@local.example") +
                             "Subject: x\r\nTo: a\r\n\r\nX-Stream: x\r\n");
  EXPECT_EQ(rec.envelope.content_bytes, rec.content.size());
  session_->OnCommitDone(absl::OkStatus(), "Q0001");
  EXPECT_EQ(Take(), Replies({"250 2.0.0 Ok: queued as Q0001"}));

  // Unknown stream over BDAT: rejected, nothing submitted, transaction reset.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send(bdat("X-Stream: nosuch\r\n")), Replies({"250 2.0.0 18 octets received"}));
  EXPECT_EQ(Send(bdat("\r\nb\r\n", true)),
            Replies({"550 5.7.1 Unknown stream \"nosuch\" in X-Stream header"}));
  EXPECT_EQ(delegate_.submitted.size(), 1u);
  EXPECT_EQ(Send("RCPT TO:<u@local.example>\r\n"), Replies({"503 5.5.1 Error: need MAIL command"}));

  // Conflicting values over BDAT.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send(bdat("X-Stream: bulk\r\nX-Stream: inbound\r\n\r\nb\r\n", true)),
            Replies({"550 5.7.1 Conflicting streams \"bulk\" and \"inbound\" in X-Stream "
                     "headers"}));
  EXPECT_EQ(delegate_.submitted.size(), 1u);

  // A message ending in the header without CRLF.
  BeginTransaction("<s@remote.example>", {"<u@local.example>"});
  EXPECT_EQ(Send(bdat("Subject: y\r\nX-Stream: bulk", true)), Replies());
  ASSERT_EQ(delegate_.submitted.size(), 2u);
  EXPECT_EQ(delegate_.submitted[1]->envelope.stream, "bulk");
  EXPECT_EQ(delegate_.submitted[1]->content,
            ReceivedHeader("Q0004", "ESMTP", "u@local.example") + "Subject: y\r\n");
}

}  // namespace
}  // namespace mta::smtp
