// DKIM signing (RFC 6376, RFC 8463) on BoringSSL.
//
// Hand-written: no Debian C/C++ DKIM signing library fits an io_uring shard design
// (libopendkim is milter-oriented, with its own DNS resolution and threading).
#include "auth/dkim_signer.h"

#include <errno.h>
#include <openssl/base64.h>
#include <openssl/bio.h>
#include <openssl/bytestring.h>
#include <openssl/curve25519.h>
#include <openssl/digest.h>
#include <openssl/err.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/obj.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "auth/ssl_errors.h"
#include "mta/base/status_macros.h"

#ifndef OPENSSL_IS_BORINGSSL
#error "auth/ must be built against BoringSSL (//third_party:boringssl), not OpenSSL"
#endif

namespace mta::auth {
namespace {

// RFC 8301 section 3.1: signers MUST use at least 1024 bits and SHOULD use 2048; 1024-bit
// keys are factorable in practice, so we hold to the SHOULD.
constexpr unsigned kMinRsaBits = 2048;
constexpr size_t kMaxKeyFileBytes = 1 << 20;  // a PEM private key is a few KB
constexpr size_t kBodyChunk = 64 * 1024;      // canonicalize and hash the body in slices
// Columns per line of the DKIM-Signature field (CRLF excluded, HTAB counted as 8): under
// the 78 of RFC 5322 2.1.1 with a margin.
constexpr size_t kMaxColumns = 76;
constexpr size_t kTabColumns = 8;

// ---------------------------------------------------------------------------------------
// Small helpers.

std::string Base64(absl::string_view bytes) {
  size_t encoded_len = 0;
  if (!EVP_EncodedLength(&encoded_len, bytes.size())) return "";
  std::string out(encoded_len, '\0');
  const size_t written =
      EVP_EncodeBlock(reinterpret_cast<uint8_t*>(out.data()),
                      reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  out.resize(written);
  return out;
}

// A domain or selector: dot-separated labels of letters, digits, '-' and '_', each 1 to 63
// bytes, 253 in all. Keeps anything that could break the tag list (';', '=', WSP) out.
absl::Status ValidateDnsName(absl::string_view name, absl::string_view what) {
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("DKIM ", what, " \"", absl::CEscape(name), "\" ", why));
  };
  if (name.empty()) return invalid("is empty");
  if (name.size() > 253) return invalid("is longer than 253 bytes");
  size_t label = 0;
  for (const char c : name) {
    if (c == '.') {
      if (label == 0) return invalid("has an empty label");
      label = 0;
      continue;
    }
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_') {
      return invalid("holds a character other than letters, digits, '-', '_' and '.'");
    }
    if (++label > 63) return invalid("has a label longer than 63 bytes");
  }
  if (label == 0) return invalid("ends with a dot");
  return absl::OkStatus();
}

absl::Status ValidateKey(const DkimKey& key) {
  MTA_RETURN_IF_ERROR(ValidateDnsName(key.domain, "domain"));
  MTA_RETURN_IF_ERROR(ValidateDnsName(key.selector, "selector"));
  if (key.pkey == nullptr) return absl::InvalidArgumentError("DKIM key has no private key");
  const int type = EVP_PKEY_id(key.pkey.get());
  const bool matches = key.algorithm == DkimKey::Algorithm::kRsaSha256 ? type == EVP_PKEY_RSA
                                                                       : type == EVP_PKEY_ED25519;
  if (!matches) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DKIM key algorithm ", DkimAlgorithmName(key.algorithm), " does not match its key type"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadKeyFile(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    const int err = errno;
    const std::string message = absl::StrCat("DKIM key file ", path, ": ", strerror(err));
    return err == ENOENT ? absl::NotFoundError(message) : absl::InvalidArgumentError(message);
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("DKIM key file ", path, ": not a regular file"));
  }
  if (static_cast<uint64_t>(st.st_size) > kMaxKeyFileBytes) {
    return absl::InvalidArgumentError(absl::StrCat("DKIM key file ", path, ": larger than ",
                                                   kMaxKeyFileBytes, " bytes, not a key"));
  }
  std::unique_ptr<FILE, int (*)(FILE*)> file(fopen(path.c_str(), "rb"), &fclose);
  if (file == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("DKIM key file ", path, ": cannot open: ", strerror(errno)));
  }
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), file.get())) > 0) {
    text.append(buf, n);
    if (text.size() > kMaxKeyFileBytes) {
      return absl::InvalidArgumentError(absl::StrCat("DKIM key file ", path, ": too large"));
    }
  }
  if (ferror(file.get())) {
    return absl::InvalidArgumentError(
        absl::StrCat("DKIM key file ", path, ": read failed: ", strerror(errno)));
  }
  return text;
}

// Refuses to prompt for a passphrase: encrypted keys fail to load.
int NoPassword(char*, int, int, void*) { return 0; }

// ---------------------------------------------------------------------------------------
// Writes the DKIM-Signature field, folding with CRLF HTAB so that lines stay within
// kMaxColumns.

class FieldWriter {
 public:
  explicit FieldWriter(std::string* out) : out_(out) {
    out_->append("DKIM-Signature:");
    column_ = 15;
  }

  // A token that must stay on one line, after a space, or after a fold when the line has
  // no room for it plus `keep_room` more columns.
  void Token(absl::string_view text, size_t keep_room = 0) {
    if (column_ + 1 + text.size() + keep_room > kMaxColumns) {
      Fold();
    } else {
      out_->push_back(' ');
      ++column_;
    }
    Append(text);
  }

  // A token glued to the previous one, or after a fold (where FWS is allowed, e.g. between
  // the names of h=).
  void Glued(absl::string_view text) {
    if (column_ + text.size() > kMaxColumns) Fold();
    Append(text);
  }

  // Text that may be folded anywhere (base64 in b=, where FWS is allowed between any two
  // characters).
  void Breakable(absl::string_view text) {
    while (!text.empty()) {
      if (column_ >= kMaxColumns) Fold();
      const size_t take = std::min(text.size(), kMaxColumns - column_);
      Append(text.substr(0, take));
      text.remove_prefix(take);
    }
  }

 private:
  void Fold() {
    out_->append("\r\n\t");
    column_ = kTabColumns;
  }
  void Append(absl::string_view text) {
    out_->append(text.data(), text.size());
    column_ += text.size();
  }

  std::string* out_;
  size_t column_;
};

// ---------------------------------------------------------------------------------------
// Signing state shared by every key of one DkimSignAll call.

struct PreparedMessage {
  std::vector<std::string> h_names;  // h= in order, lowercase, with repeats
  std::string canonical_headers;     // the selected fields, canonicalized, in h= order
  std::string body_hash;             // bh=, base64
  int64_t t = 0;
  std::optional<int64_t> x;
};

bool IsFieldNameChar(char c) {
  const unsigned char u = static_cast<unsigned char>(c);
  return u >= 33 && u <= 126 && c != ':';
}

absl::Status ValidateFieldName(absl::string_view name) {
  if (name.empty() || !std::all_of(name.begin(), name.end(), IsFieldNameChar)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid header field name \"", absl::CEscape(name), "\" in DKIM options"));
  }
  return absl::OkStatus();
}

absl::StatusOr<PreparedMessage> Prepare(const DkimSignOptions& options, absl::string_view message) {
  PreparedMessage prepared;

  const absl::Time now = options.now.value_or(absl::Now());
  prepared.t = absl::ToUnixSeconds(now);
  if (now < absl::UnixEpoch()) {
    return absl::InvalidArgumentError("DKIM signing time is before 1970");
  }
  if (options.expiry.has_value()) {
    if (*options.expiry <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError("DKIM signature expiry must be positive");
    }
    prepared.x = prepared.t + absl::ToInt64Seconds(absl::Ceil(*options.expiry, absl::Seconds(1)));
  }

  // The names to sign: signed_headers, then any over-signed name not among them.
  struct Name {
    std::string name;
    bool oversigned = false;
    std::vector<const DkimHeaderField*> instances;  // top to bottom
  };
  std::vector<Name> names;
  names.reserve(options.signed_headers.size() + options.oversigned_headers.size());
  auto find = [&](absl::string_view lower) -> Name* {
    for (Name& n : names) {
      if (n.name == lower) return &n;
    }
    return nullptr;
  };
  for (const std::string& name : options.signed_headers) {
    MTA_RETURN_IF_ERROR(ValidateFieldName(name));
    const std::string lower = absl::AsciiStrToLower(name);
    if (find(lower) == nullptr) names.push_back({lower});
  }
  for (const std::string& name : options.oversigned_headers) {
    MTA_RETURN_IF_ERROR(ValidateFieldName(name));
    const std::string lower = absl::AsciiStrToLower(name);
    Name* n = find(lower);
    if (n == nullptr) {
      names.push_back({lower});
      n = &names.back();
    }
    n->oversigned = true;
  }
  Name* from = find("from");
  if (from == nullptr) {
    return absl::InvalidArgumentError("DKIM signed headers must include From (RFC 6376 5.4)");
  }

  MTA_ASSIGN_OR_RETURN(DkimMessageParts parts, DkimSplitMessage(message));
  for (const DkimHeaderField& field : parts.headers) {
    for (Name& n : names) {
      if (absl::EqualsIgnoreCase(field.name, n.name)) {
        n.instances.push_back(&field);
        break;
      }
    }
  }
  if (from->instances.empty()) {
    return absl::InvalidArgumentError("message has no From header field");
  }

  // h=: every instance of every name (an absent name once, signing its absence), then one
  // more of each over-signed name that is present. The k-th listing of a name selects its
  // k-th instance from the bottom (RFC 6376 5.4.2); listings past the instances select
  // nothing.
  for (const Name& n : names) {
    const size_t times = std::max<size_t>(n.instances.size(), 1);
    for (size_t i = 0; i < times; ++i) prepared.h_names.push_back(n.name);
  }
  for (const Name& n : names) {
    if (n.oversigned && !n.instances.empty()) prepared.h_names.push_back(n.name);
  }
  std::vector<size_t> used(names.size(), 0);
  prepared.canonical_headers.reserve(parts.body.data() - message.data());
  for (const std::string& h : prepared.h_names) {
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i].name != h) continue;
      const std::vector<const DkimHeaderField*>& instances = names[i].instances;
      if (used[i] < instances.size()) {
        const DkimHeaderField* field = instances[instances.size() - 1 - used[i]];
        DkimCanonicalizeHeader(options.header_canonicalization, field->raw,
                               &prepared.canonical_headers);
      }
      ++used[i];
      break;
    }
  }

  // bh=
  SHA256_CTX sha;
  SHA256_Init(&sha);
  DkimBodyCanonicalizer body(options.body_canonicalization);
  std::string canonical;
  canonical.reserve(kBodyChunk + 64);
  absl::string_view rest = parts.body;
  while (!rest.empty()) {
    const size_t take = std::min(rest.size(), kBodyChunk);
    body.Update(rest.substr(0, take), &canonical);
    rest.remove_prefix(take);
    SHA256_Update(&sha, canonical.data(), canonical.size());
    canonical.clear();
  }
  body.Finish(&canonical);
  SHA256_Update(&sha, canonical.data(), canonical.size());
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256_Final(digest, &sha);
  prepared.body_hash =
      Base64(absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
  return prepared;
}

absl::StatusOr<std::string> SignPrepared(const DkimKey& key, const DkimSignOptions& options,
                                         const PreparedMessage& prepared) {
  std::string field;
  FieldWriter writer(&field);
  writer.Token("v=1;");
  writer.Token(absl::StrCat("a=", DkimAlgorithmName(key.algorithm), ";"));
  writer.Token(absl::StrCat("c=", DkimCanonicalizationName(options.header_canonicalization), "/",
                            DkimCanonicalizationName(options.body_canonicalization), ";"));
  writer.Token(absl::StrCat("d=", key.domain, ";"));
  writer.Token(absl::StrCat("s=", key.selector, ";"));
  writer.Token(absl::StrCat("t=", prepared.t, ";"));
  if (prepared.x.has_value()) writer.Token(absl::StrCat("x=", *prepared.x, ";"));
  for (size_t i = 0; i < prepared.h_names.size(); ++i) {
    const bool last = i + 1 == prepared.h_names.size();
    const std::string name = absl::StrCat(prepared.h_names[i], last ? ";" : ":");
    if (i == 0) {
      writer.Token(absl::StrCat("h=", name));
    } else {
      writer.Glued(name);
    }
  }
  writer.Token(absl::StrCat("bh=", prepared.body_hash, ";"));
  // b= comes last, with room for some of its value on the same line. Everything up to and
  // including "b=" is what gets signed (RFC 6376 3.7: the b= value deleted, no final CRLF).
  writer.Token("b=", /*keep_room=*/8);

  std::string data = prepared.canonical_headers;
  DkimCanonicalizeHeader(options.header_canonicalization, field, &data);
  data.resize(data.size() - 2);  // the CRLF DkimCanonicalizeHeader ended it with
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(data.data()), data.size(), digest);
  MTA_ASSIGN_OR_RETURN(const std::string signature,
                       DkimSignDigest(key, absl::string_view(reinterpret_cast<const char*>(digest),
                                                             sizeof(digest))));

  writer.Breakable(Base64(signature));
  field.append("\r\n");
  return field;
}

}  // namespace

absl::string_view DkimAlgorithmName(DkimKey::Algorithm algorithm) {
  return algorithm == DkimKey::Algorithm::kRsaSha256 ? "rsa-sha256" : "ed25519-sha256";
}

absl::StatusOr<DkimKey> ParseDkimKey(absl::string_view domain, absl::string_view selector,
                                     absl::string_view pem) {
  MTA_RETURN_IF_ERROR(ValidateDnsName(domain, "domain"));
  MTA_RETURN_IF_ERROR(ValidateDnsName(selector, "selector"));
  if (!absl::StrContains(pem, "-----BEGIN ")) {
    return absl::InvalidArgumentError("no PEM block found (expected a PEM private key)");
  }
  if (absl::StrContains(pem, "ENCRYPTED")) {
    return absl::InvalidArgumentError("the private key is encrypted; DKIM keys must not be");
  }
  ERR_clear_error();
  bssl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), pem.size()));
  if (bio == nullptr) return absl::ResourceExhaustedError("BIO_new_mem_buf failed");
  bssl::UniquePtr<EVP_PKEY> pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, &NoPassword, nullptr));
  if (pkey == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no usable PEM private key (PKCS#1 RSA or PKCS#8 RSA/Ed25519): ", ConsumeSslErrors()));
  }
  DkimKey key;
  key.domain = std::string(domain);
  key.selector = std::string(selector);
  switch (EVP_PKEY_id(pkey.get())) {
    case EVP_PKEY_RSA: {
      const unsigned bits = EVP_PKEY_bits(pkey.get());
      if (bits < kMinRsaBits) {
        return absl::InvalidArgumentError(absl::StrCat(
            "the RSA key has ", bits, " bits; DKIM keys must have at least ", kMinRsaBits));
      }
      if (RSA_check_key(EVP_PKEY_get0_RSA(pkey.get())) != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("the RSA key is inconsistent: ", ConsumeSslErrors()));
      }
      key.algorithm = DkimKey::Algorithm::kRsaSha256;
      break;
    }
    case EVP_PKEY_ED25519:
      key.algorithm = DkimKey::Algorithm::kEd25519Sha256;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unsupported private key type (",
                                                     OBJ_nid2sn(EVP_PKEY_id(pkey.get())),
                                                     "); DKIM keys are RSA or Ed25519"));
  }
  key.pkey = std::move(pkey);
  return key;
}

absl::StatusOr<DkimKey> LoadDkimKey(absl::string_view domain, absl::string_view selector,
                                    absl::string_view pem_path) {
  const std::string path(pem_path);
  MTA_ASSIGN_OR_RETURN(const std::string pem, ReadKeyFile(path));
  absl::StatusOr<DkimKey> key = ParseDkimKey(domain, selector, pem);
  if (!key.ok()) {
    return absl::Status(key.status().code(),
                        absl::StrCat("DKIM key file ", path, ": ", key.status().message()));
  }
  return key;
}

absl::StatusOr<std::string> DkimPublicRecord(const DkimKey& key) {
  MTA_RETURN_IF_ERROR(ValidateKey(key));
  if (key.algorithm == DkimKey::Algorithm::kEd25519Sha256) {
    uint8_t raw[ED25519_PUBLIC_KEY_LEN];
    size_t len = sizeof(raw);
    if (!EVP_PKEY_get_raw_public_key(key.pkey.get(), raw, &len) || len != sizeof(raw)) {
      return absl::InternalError(
          absl::StrCat("reading the Ed25519 public key failed: ", ConsumeSslErrors()));
    }
    return absl::StrCat("v=DKIM1; k=ed25519; p=",
                        Base64(absl::string_view(reinterpret_cast<const char*>(raw), len)));
  }
  bssl::ScopedCBB cbb;
  uint8_t* der = nullptr;
  size_t der_len = 0;
  if (!CBB_init(cbb.get(), 512) || !EVP_marshal_public_key(cbb.get(), key.pkey.get()) ||
      !CBB_finish(cbb.get(), &der, &der_len)) {
    return absl::InternalError(
        absl::StrCat("encoding the RSA public key failed: ", ConsumeSslErrors()));
  }
  bssl::UniquePtr<uint8_t> owned(der);
  return absl::StrCat("v=DKIM1; k=rsa; p=",
                      Base64(absl::string_view(reinterpret_cast<const char*>(der), der_len)));
}

std::string DkimRecordName(const DkimKey& key) {
  return absl::StrCat(key.selector, "._domainkey.", key.domain);
}

absl::StatusOr<std::string> DkimZoneLine(const DkimKey& key) {
  MTA_ASSIGN_OR_RETURN(const std::string text, DkimPublicRecord(key));
  std::string line = absl::StrCat(DkimRecordName(key), ". IN TXT (");
  for (size_t pos = 0; pos < text.size(); pos += 255) {
    absl::StrAppend(&line, " \"", absl::string_view(text).substr(pos, 255), "\"");
  }
  absl::StrAppend(&line, " )");
  return line;
}

std::vector<std::string> DefaultDkimSignedHeaders() {
  return {"from",
          "to",
          "cc",
          "subject",
          "date",
          "message-id",
          "reply-to",
          "in-reply-to",
          "references",
          "mime-version",
          "content-type",
          "content-transfer-encoding",
          "list-unsubscribe",
          "list-unsubscribe-post"};
}

absl::StatusOr<std::string> DkimSignDigest(const DkimKey& key, absl::string_view sha256_digest) {
  if (sha256_digest.size() != SHA256_DIGEST_LENGTH) {
    return absl::InvalidArgumentError("DkimSignDigest needs a 32-byte SHA-256 digest");
  }
  MTA_RETURN_IF_ERROR(ValidateKey(key));
  const uint8_t* digest = reinterpret_cast<const uint8_t*>(sha256_digest.data());
  ERR_clear_error();
  if (key.algorithm == DkimKey::Algorithm::kRsaSha256) {
    RSA* rsa = EVP_PKEY_get0_RSA(key.pkey.get());
    std::string signature(RSA_size(rsa), '\0');
    unsigned len = 0;
    if (RSA_sign(NID_sha256, digest, SHA256_DIGEST_LENGTH,
                 reinterpret_cast<uint8_t*>(signature.data()), &len, rsa) != 1) {
      return absl::InternalError(absl::StrCat("RSA signing failed: ", ConsumeSslErrors()));
    }
    signature.resize(len);
    return signature;
  }
  // RFC 8463 section 3: PureEdDSA (no prehash mode) over the SHA-256 hash itself.
  bssl::ScopedEVP_MD_CTX ctx;
  std::string signature(ED25519_SIGNATURE_LEN, '\0');
  size_t len = signature.size();
  if (EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key.pkey.get()) != 1 ||
      EVP_DigestSign(ctx.get(), reinterpret_cast<uint8_t*>(signature.data()), &len, digest,
                     SHA256_DIGEST_LENGTH) != 1) {
    return absl::InternalError(absl::StrCat("Ed25519 signing failed: ", ConsumeSslErrors()));
  }
  signature.resize(len);
  return signature;
}

absl::StatusOr<std::string> DkimSign(const DkimKey& key, const DkimSignOptions& options,
                                     absl::string_view message) {
  return DkimSignAll(absl::MakeConstSpan(&key, 1), options, message);
}

absl::StatusOr<std::string> DkimSignAll(absl::Span<const DkimKey> keys,
                                        const DkimSignOptions& options, absl::string_view message) {
  if (keys.empty()) return absl::InvalidArgumentError("no DKIM key to sign with");
  for (const DkimKey& key : keys) MTA_RETURN_IF_ERROR(ValidateKey(key));
  MTA_ASSIGN_OR_RETURN(const PreparedMessage prepared, Prepare(options, message));
  std::string fields;
  for (const DkimKey& key : keys) {
    MTA_ASSIGN_OR_RETURN(const std::string field, SignPrepared(key, options, prepared));
    fields += field;
  }
  return fields;
}

}  // namespace mta::auth
