#include "auth/password_file.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace mta::auth {
namespace {

// Cheap parameters keep the suite fast; one test uses the defaults.
constexpr ScryptParams kFast{.log2_n = 10, .r = 8, .p = 1};

std::string Hash(absl::string_view password) {
  absl::StatusOr<std::string> h = HashPassword(password, kFast);
  EXPECT_TRUE(h.ok()) << h.status();
  return h.ok() ? *h : "";
}

TEST(PasswordHashTest, ScryptRoundTripWithDefaults) {
  absl::StatusOr<std::string> h = HashPassword("correct horse battery staple");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(absl::StartsWith(*h, "scrypt$ln=15,r=8,p=1$")) << *h;
  std::vector<std::string> parts = absl::StrSplit(*h, '$');
  ASSERT_EQ(parts.size(), 4u);
  EXPECT_EQ(parts[2].size(), 22u);  // 16-byte salt, unpadded base64
  EXPECT_EQ(parts[3].size(), 43u);  // 32-byte key
  EXPECT_EQ(VerifyPasswordHash(*h, "correct horse battery staple").value_or(false), true);
  EXPECT_EQ(VerifyPasswordHash(*h, "correct horse battery stapl").value_or(true), false);
}

TEST(PasswordHashTest, SaltsDiffer) {
  std::string a = Hash("pw");
  std::string b = Hash("pw");
  EXPECT_NE(a, b);
  EXPECT_TRUE(VerifyPasswordHash(a, "pw").value_or(false));
  EXPECT_TRUE(VerifyPasswordHash(b, "pw").value_or(false));
}

TEST(PasswordHashTest, WrongPasswordsFail) {
  std::string h = Hash("s3cret");
  for (absl::string_view wrong : {"", "s3cre", "s3cret ", "S3cret", "s3cret\n"}) {
    absl::StatusOr<bool> r = VerifyPasswordHash(h, wrong);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_FALSE(*r) << wrong;
  }
  // Passwords may hold any byte, NUL included.
  std::string with_nul("a\0b", 3);
  std::string h2 = Hash(with_nul);
  EXPECT_TRUE(VerifyPasswordHash(h2, with_nul).value_or(false));
  EXPECT_FALSE(VerifyPasswordHash(h2, "a").value_or(true));
}

TEST(PasswordHashTest, Pbkdf2RoundTrip) {
  absl::StatusOr<std::string> h = HashPasswordPbkdf2("pw");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(absl::StartsWith(*h, "pbkdf2-sha256$i=600000$")) << *h;
  EXPECT_TRUE(VerifyPasswordHash(*h, "pw").value_or(false));
  EXPECT_FALSE(VerifyPasswordHash(*h, "pW").value_or(true));
  EXPECT_FALSE(HashPasswordPbkdf2("pw", 1000).ok());
}

// Known answers: the RFC 7914 section 12 scrypt vector ("pleaseletmein", "SodiumChloride",
// N=16384, r=8, p=1, 64 bytes) and a PBKDF2-HMAC-SHA256 value from Python's hashlib.
TEST(PasswordHashTest, KnownAnswers) {
  constexpr char kScryptVector[] =
      "scrypt$ln=14,r=8,p=1$U29kaXVtQ2hsb3JpZGU$cCO9yzr9c0hGHAbNgf046/2o+7qQT44+qbVD9lRdofLVQyl"
      "VYT8Pz2LUlwUkKpr55h6F3A1lHkDfzwF7RVdYhw";
  EXPECT_TRUE(VerifyPasswordHash(kScryptVector, "pleaseletmein").value_or(false));
  EXPECT_FALSE(VerifyPasswordHash(kScryptVector, "pleaseletmeIn").value_or(true));
  constexpr char kPbkdf2Vector[] =
      "pbkdf2-sha256$i=600000$c2FsdHNhbHRzYWx0$OWwjCvXOHEFE5sXxFX9ZWW9/K8R759nZ09TnmyIjUro";
  EXPECT_TRUE(VerifyPasswordHash(kPbkdf2Vector, "passw0rd").value_or(false));
  EXPECT_FALSE(VerifyPasswordHash(kPbkdf2Vector, "passw0rD").value_or(true));
  // The parameters are bound: the same salt and key under other parameters do not verify.
  std::string other = kScryptVector;
  other.replace(0, 12, "scrypt$ln=13");
  EXPECT_FALSE(VerifyPasswordHash(other, "pleaseletmein").value_or(true));
}

TEST(PasswordHashTest, TamperedKeyFailsWhicheverByteDiffers) {
  std::string h = Hash("pw");
  size_t key_start = h.rfind('$') + 1;
  // Flip the first and the last base64 digit of the key: a comparison that stopped early or
  // compared a prefix would accept one of them.
  for (size_t i : {key_start, h.size() - 2}) {
    std::string bad = h;
    bad[i] = bad[i] == 'A' ? 'B' : 'A';
    absl::StatusOr<bool> r = VerifyPasswordHash(bad, "pw");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_FALSE(*r) << i;
  }
}

TEST(PasswordHashTest, MalformedHashes) {
  std::string good = Hash("pw");
  std::vector<std::string> p = absl::StrSplit(good, '$');
  const std::string salt = p[2], key = p[3];
  for (const std::string& bad : std::vector<std::string>{
           "",
           "scrypt",
           absl::StrCat("scrypt$ln=10,r=8,p=1$", salt),
           absl::StrCat("md5$x$", salt, "$", key),
           absl::StrCat("scrypt$ln=10,r=8$", salt, "$", key),
           absl::StrCat("scrypt$ln=10,r=8,p=1,p=1$", salt, "$", key),
           absl::StrCat("scrypt$ln=9,r=8,p=1$", salt, "$", key),
           absl::StrCat("scrypt$ln=25,r=8,p=1$", salt, "$", key),
           absl::StrCat("scrypt$ln=22,r=32,p=1$", salt, "$", key),  // 512 MiB
           absl::StrCat("scrypt$ln=10,r=0,p=1$", salt, "$", key),
           absl::StrCat("scrypt$ln=x,r=8,p=1$", salt, "$", key),
           absl::StrCat("scrypt$ln=10,r=8,p=1$", salt, "=$", key),
           absl::StrCat("scrypt$ln=10,r=8,p=1$", salt, "$", key, "=="),
           absl::StrCat("scrypt$ln=10,r=8,p=1$AAAA$", key),  // 3-byte salt
           absl::StrCat("scrypt$ln=10,r=8,p=1$", salt, "$AAAA"),
           absl::StrCat("scrypt$ln=10,r=8,p=1$", salt, "$", key, "$x"),
           absl::StrCat("scrypt$ln=10,r=8,p=1$", salt, "$", key.substr(0, 10), " ", key.substr(10)),
           absl::StrCat("pbkdf2-sha256$i=599999$", salt, "$", key),
           absl::StrCat("pbkdf2-sha256$600000$", salt, "$", key),
       }) {
    EXPECT_FALSE(CheckPasswordHash(bad).ok()) << bad;
    absl::StatusOr<bool> r = VerifyPasswordHash(bad, "pw");
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(CheckPasswordHash(good).ok());
}

TEST(PasswordLineTest, ParseAndFormat) {
  std::string h = Hash("pw");
  absl::StatusOr<PasswordEntry> e =
      ParsePasswordLine(absl::StrCat("alice:", h, ":Example.COM,example.org:transactional"));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->user.name, "alice");
  EXPECT_EQ(e->hash, h);
  EXPECT_EQ(e->user.sender_domains, (std::vector<std::string>{"example.com", "example.org"}));
  EXPECT_FALSE(e->user.any_sender_domain);
  EXPECT_EQ(e->user.stream, "transactional");
  EXPECT_TRUE(e->user.MaySendFrom("example.org"));
  EXPECT_FALSE(e->user.MaySendFrom("sub.example.org"));
  EXPECT_FALSE(e->user.MaySendFrom(""));
  EXPECT_EQ(FormatPasswordLine(*e),
            absl::StrCat("alice:", h, ":example.com,example.org:transactional"));

  absl::StatusOr<PasswordEntry> any = ParsePasswordLine(absl::StrCat("bob:", h, ":*"));
  ASSERT_TRUE(any.ok()) << any.status();
  EXPECT_TRUE(any->user.any_sender_domain);
  EXPECT_TRUE(any->user.MaySendFrom("anything.example"));
  EXPECT_TRUE(any->user.MaySendFrom(""));
  EXPECT_EQ(any->user.stream, "");
  EXPECT_EQ(FormatPasswordLine(*any), absl::StrCat("bob:", h, ":*"));
  // An empty stream field is the same as none; surrounding blanks and a CR are ignored.
  absl::StatusOr<PasswordEntry> empty_stream =
      ParsePasswordLine(absl::StrCat("  bob:", h, ":*:\r"));
  ASSERT_TRUE(empty_stream.ok()) << empty_stream.status();
  EXPECT_EQ(*empty_stream, *any);
}

TEST(PasswordLineTest, Errors) {
  std::string h = Hash("pw");
  struct Case {
    std::string line;
    std::string error;
  };
  for (const Case& c : std::vector<Case>{
           {"alice", "expected user:hash:sender_domains[:stream], got 1 field"},
           {absl::StrCat("alice:", h), "got 2 fields"},
           {absl::StrCat("alice:", h, ":*:s:extra"), "got 5 fields"},
           {absl::StrCat(":", h, ":*"), "user: must not be empty"},
           {absl::StrCat("al ice:", h, ":*"), "user: must not contain spaces"},
           {absl::StrCat(std::string(256, 'u'), ":", h, ":*"), "user: longer than 255"},
           {"alice:plain:*", "password hash: must be scheme$params$salt$hash"},
           {absl::StrCat("alice:", h, ":"), "sender domains: must be '*' or a comma list"},
           {absl::StrCat("alice:", h, ":a.com,,b.com"), "sender domains"},
           {absl::StrCat("alice:", h, ":*,a.com"), "sender domains"},
           {absl::StrCat("alice:", h, ":a b.com"), "sender domains"},
           {absl::StrCat("alice:", h, ":.a.com"), "sender domains"},
           {absl::StrCat("alice:", h, ":*:bad stream"), "stream: must be letters"},
       }) {
    absl::StatusOr<PasswordEntry> e = ParsePasswordLine(c.line);
    ASSERT_FALSE(e.ok()) << c.line;
    EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(e.status().message(), c.error))
        << c.line << " -> " << e.status().message();
  }
}

TEST(PasswordFileTest, ParseWithCommentsAndBlankLines) {
  std::string text = absl::StrCat("# users\n\n   \nalice:", Hash("a"), ":example.com\r\n",
                                  "  # indented comment\n", "bob:", Hash("b"), ":*:bulk");
  auto file = PasswordFile::Parse(text, "users.pw");
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->entries().size(), 2u);
  ASSERT_NE((*file)->Find("alice"), nullptr);
  EXPECT_EQ((*file)->Find("bob")->user.stream, "bulk");
  EXPECT_EQ((*file)->Find("Alice"), nullptr);  // names compare exactly
  EXPECT_EQ((*file)->Find("alic"), nullptr);
}

TEST(PasswordFileTest, ErrorsNameTheLine) {
  std::string h = Hash("pw");
  auto bad = PasswordFile::Parse(absl::StrCat("# c\nalice:", h, ":*\n\nbob:", h, ":*:no way\n"),
                                 "users.pw");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "users.pw:4: stream: must be letters, digits, '_', '.' or '-'");
  auto dup = PasswordFile::Parse(absl::StrCat("alice:", h, ":*\nbob:", h, ":*\nalice:", h, ":*\n"),
                                 "users.pw");
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.status().message(), "users.pw:3: duplicate user 'alice' (first on line 1)");
  auto weak = PasswordFile::Parse("carol:pbkdf2-sha256$i=1000$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA:*",
                                  "users.pw");
  ASSERT_FALSE(weak.ok());
  EXPECT_TRUE(absl::StartsWith(weak.status().message(),
                               "users.pw:1: password hash: pbkdf2-sha256 needs at least 600000"))
      << weak.status().message();
}

TEST(PasswordFileTest, LoadMissingFile) {
  auto file = PasswordFile::Load("/nonexistent/users.pw");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(file.status().message(), "/nonexistent/users.pw"));
}

TEST(PasswordFileTest, VerifyUsersAndRunKdfForUnknownOnes) {
  auto file = PasswordFile::Parse(absl::StrCat("alice:", Hash("wonderland"), ":example.com:tx\n"),
                                  "users.pw");
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<AuthUser> ok = (*file)->Verify("alice", "wonderland");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->name, "alice");
  EXPECT_EQ(ok->stream, "tx");
  EXPECT_EQ(ok->sender_domains, std::vector<std::string>{"example.com"});

  uint64_t before = KdfEvaluations();
  absl::StatusOr<AuthUser> wrong = (*file)->Verify("alice", "wonderlan");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(KdfEvaluations(), before + 1);
  // An unknown user gets the same answer and still costs one KDF run (timing).
  absl::StatusOr<AuthUser> unknown = (*file)->Verify("mallory", "wonderland");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(unknown.status().message(), wrong.status().message());
  EXPECT_EQ(KdfEvaluations(), before + 2);
  EXPECT_EQ((*file)->Verify("ALICE", "wonderland").status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(UpsertPasswordLineTest, AddKeepsOtherLinesAndSetReplaces) {
  std::string h1 = Hash("one");
  std::string h2 = Hash("two");
  std::string text = absl::StrCat("# users\nalice:", h1, ":*\n\nbob:", h1, ":b.com");  // no \n
  PasswordEntry carol{.hash = h2, .user = {.name = "carol", .any_sender_domain = true}};
  auto added = UpsertPasswordLine(text, carol, /*must_exist=*/false);
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_EQ(*added, absl::StrCat(text, "\ncarol:", h2, ":*\n"));
  EXPECT_EQ(UpsertPasswordLine(*added, carol, false).status().code(),
            absl::StatusCode::kAlreadyExists);

  PasswordEntry alice{.hash = h2,
                      .user = {.name = "alice", .sender_domains = {"a.com"}, .stream = "tx"}};
  auto set = UpsertPasswordLine(*added, alice, /*must_exist=*/true);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(*set, absl::StrCat("# users\nalice:", h2, ":a.com:tx\n\nbob:", h1, ":b.com\ncarol:", h2,
                               ":*\n"));
  PasswordEntry dave{.hash = h2, .user = {.name = "dave", .any_sender_domain = true}};
  EXPECT_EQ(UpsertPasswordLine(*set, dave, true).status().code(), absl::StatusCode::kNotFound);
  // The result loads.
  EXPECT_TRUE(PasswordFile::Parse(*set, "x").ok());
  // Empty file.
  auto first = UpsertPasswordLine("", dave, false);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, absl::StrCat("dave:", h2, ":*\n"));
  // A broken line elsewhere is reported, not silently kept or dropped.
  auto broken = UpsertPasswordLine("x:y\n", dave, false);
  ASSERT_FALSE(broken.ok());
  EXPECT_TRUE(absl::StartsWith(broken.status().message(), "line 1: ")) << broken.status();
}

}  // namespace
}  // namespace mta::auth
