// DKIM signing (RFC 6376) with RSA-SHA256 and Ed25519-SHA256 (RFC 8463) on BoringSSL.
//
// Hand-written: no Debian C/C++ DKIM signing library fits an io_uring shard design
// (libopendkim is milter-oriented, with its own DNS resolution and threading). Signing is
// a pure function of (key, options, message) here, so any shard can call it inline.
//
// Usage:
//   MTA_ASSIGN_OR_RETURN(DkimKey key, LoadDkimKey("example.com", "sel1", "/etc/mta/k.pem"));
//   DkimSignOptions options;
//   options.now = absl::Now();
//   MTA_ASSIGN_OR_RETURN(std::string field, DkimSign(key, options, message));
//   std::string signed_message = field + message;
#ifndef AUTH_DKIM_SIGNER_H_
#define AUTH_DKIM_SIGNER_H_

#include <openssl/evp.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "auth/dkim_canon.h"

namespace mta::auth {

/** A private signing key with the DNS name its public key is published under. */
struct DkimKey {
  enum class Algorithm { kRsaSha256, kEd25519Sha256 };

  std::string domain;    // d=, e.g. "example.com"
  std::string selector;  // s=; the record is at <selector>._domainkey.<domain>
  Algorithm algorithm = Algorithm::kRsaSha256;
  /** The owned BoringSSL key: EVP_PKEY_RSA (>= 2048 bits) or EVP_PKEY_ED25519. */
  bssl::UniquePtr<EVP_PKEY> pkey;
};

/** "rsa-sha256" or "ed25519-sha256", as in the a= tag. */
absl::string_view DkimAlgorithmName(DkimKey::Algorithm algorithm);

/**
 * Reads a PEM private key: RSA of at least 2048 bits (PKCS#1 "RSA PRIVATE KEY" or PKCS#8
 * "PRIVATE KEY", as `openssl genrsa` / `openssl genpkey -algorithm rsa` write), or Ed25519
 * in PKCS#8 (as `openssl genpkey -algorithm ed25519` writes). Encrypted keys are not
 * supported.
 *
 * NotFound when the file does not exist; InvalidArgument when it cannot be read, holds no
 * usable private key, the key is of another type, an RSA key is under 2048 bits, or the
 * domain or selector is not a valid DNS name.
 */
absl::StatusOr<DkimKey> LoadDkimKey(absl::string_view domain, absl::string_view selector,
                                    absl::string_view pem_path);

/** LoadDkimKey for PEM text already in memory. */
absl::StatusOr<DkimKey> ParseDkimKey(absl::string_view domain, absl::string_view selector,
                                     absl::string_view pem);

/**
 * The text of the DNS TXT record that publishes the public key, at
 * DkimRecordName(key):
 *   RSA:     "v=DKIM1; k=rsa; p=<base64 of the DER SubjectPublicKeyInfo>"
 *   Ed25519: "v=DKIM1; k=ed25519; p=<base64 of the raw 32-byte public key>"
 * A TXT character-string holds at most 255 bytes, so a zone file must cut a longer text
 * (any RSA key) into several quoted strings; verifiers concatenate them. DkimZoneLine does.
 */
absl::StatusOr<std::string> DkimPublicRecord(const DkimKey& key);

/** "<selector>._domainkey.<domain>" (no trailing dot). */
std::string DkimRecordName(const DkimKey& key);

/** A zone-file line: `<name>. IN TXT ( "..." "..." )` with strings of at most 255 bytes. */
absl::StatusOr<std::string> DkimZoneLine(const DkimKey& key);

/** The header fields signed by default, in h= order. */
std::vector<std::string> DefaultDkimSignedHeaders();

struct DkimSignOptions {
  DkimCanonicalization header_canonicalization = DkimCanonicalization::kRelaxed;
  DkimCanonicalization body_canonicalization = DkimCanonicalization::kRelaxed;
  /**
   * Header field names to sign (case-insensitive). Every instance present in the message
   * is signed (bottom-up, RFC 6376 5.4.2); a name absent from the message is still listed
   * once in h=, which signs its absence. Must include "from".
   */
  std::vector<std::string> signed_headers = DefaultDkimSignedHeaders();
  /**
   * Names listed in h= once more than they occur, so that a verifier rejects the message
   * if an instance is added later (RFC 6376 8.15). Names not in signed_headers are signed
   * as well.
   */
  std::vector<std::string> oversigned_headers = {"from", "subject", "to"};
  /** t= (always written). Unset: absl::Now() when signing. */
  std::optional<absl::Time> now;
  /** When set, x= = t= + expiry (whole seconds, rounded up); must be positive. */
  std::optional<absl::Duration> expiry;
};

/**
 * Signs `message` and returns the whole "DKIM-Signature: ...\r\n" header field, folded
 * with CRLF TAB into lines under 78 columns, to be prepended to the message unchanged.
 *
 * `message` is RFC 5322 text with CRLF line endings (see DkimSplitMessage; the body may
 * hold 8-bit bytes). No l= tag is written: the whole body is always signed.
 *
 * InvalidArgument for a malformed header section, a message without a From field, options
 * whose signed headers lack "from" or hold an invalid name, a non-positive expiry, a time
 * before 1970, or a key whose domain or selector is not a valid DNS name. Internal when
 * BoringSSL fails to sign.
 *
 * Thread-safe: a DkimKey may be used by several threads at once.
 */
absl::StatusOr<std::string> DkimSign(const DkimKey& key, const DkimSignOptions& options,
                                     absl::string_view message);

/**
 * Signs with every key (e.g. RSA and Ed25519 for dual signing, RFC 8463 section 5) and
 * returns all the DKIM-Signature fields, in key order, to be prepended together. Each
 * signature is independent: none covers another. The message is parsed and the body
 * hashed once for all keys.
 */
absl::StatusOr<std::string> DkimSignAll(absl::Span<const DkimKey> keys,
                                        const DkimSignOptions& options, absl::string_view message);

/**
 * The b= signature over a SHA-256 digest of the canonical header data (RFC 6376 3.7):
 * RSASSA-PKCS1-v1_5 over the digest for rsa-sha256; for ed25519-sha256, PureEdDSA over the
 * 32 digest bytes themselves (RFC 8463 section 3). Returns the raw signature bytes.
 */
absl::StatusOr<std::string> DkimSignDigest(const DkimKey& key, absl::string_view sha256_digest);

}  // namespace mta::auth

#endif  // AUTH_DKIM_SIGNER_H_
