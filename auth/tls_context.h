// BoringSSL TLS contexts: outbound SMTP client (delivery) and inbound STARTTLS server.
#ifndef AUTH_TLS_CONTEXT_H_
#define AUTH_TLS_CONTEXT_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

// BoringSSL's SSL_CTX, forward-declared so that this header needs no OpenSSL include path.
struct ssl_ctx_st;

namespace mta::auth {

/** Debian 12's system trust store (package ca-certificates). */
inline constexpr char kSystemCaBundlePath[] = "/etc/ssl/certs/ca-certificates.crt";

/** Protocol versions a context may be limited to. TLS 1.2 is the floor everywhere. */
enum class TlsVersion { kTls12, kTls13 };

/** What a client does when the server's certificate does not check out. */
enum class CertificateVerification {
  // Never fail the handshake over the certificate (RFC 3207 opportunistic STARTTLS, the
  // default for MX delivery without MTA-STS or DANE). The chain is still verified against
  // the trust anchors and the name is still matched; both results are reported in
  // TlsConnectionInfo.
  kOpportunistic,
  // Fail the handshake unless the chain verifies to a trust anchor and the certificate is
  // valid for the server name (RFC 6125 matching, as required by MTA-STS, RFC 8461).
  kVerify,
};

struct ClientTlsOptions {
  // Default: kOpportunistic.
  CertificateVerification verification = CertificateVerification::kOpportunistic;
  // PEM bundle of system trust anchors, loaded when the file exists and silently skipped
  // when it does not; "" loads none. A file that exists but cannot be parsed is an error.
  // Default: kSystemCaBundlePath.
  std::string system_ca_file = kSystemCaBundlePath;
  // Additional PEM trust anchors (e.g. a private CA). Each must exist and parse.
  // Default: none.
  std::vector<std::string> ca_files;
  // Default: kTls12.
  TlsVersion min_version = TlsVersion::kTls12;
  // Default: kTls13.
  TlsVersion max_version = TlsVersion::kTls13;
};

/**
 * An SSL_CTX configured for outbound SMTP (the client side of STARTTLS).
 *
 * Create() reads certificate files, so call it at start-up or on a blocking thread, never on
 * a shard. Afterwards the context is immutable and thread-safe: channels may be created from
 * it on any shard concurrently (TlsChannel::CreateClient). Each channel holds its own
 * reference to the underlying SSL_CTX, so the context may be destroyed while channels made
 * from it are still alive.
 */
class ClientTlsContext {
 public:
  /**
   * @return the context, InvalidArgument for inconsistent options (e.g. min_version above
   *     max_version, or kVerify with no trust anchor at all), NotFound for a missing
   *     ca_files entry, or InvalidArgument naming the file that could not be loaded.
   */
  static absl::StatusOr<std::unique_ptr<ClientTlsContext>> Create(const ClientTlsOptions& options);

  ~ClientTlsContext();
  ClientTlsContext(const ClientTlsContext&) = delete;
  ClientTlsContext& operator=(const ClientTlsContext&) = delete;

  CertificateVerification verification() const { return verification_; }
  /** Number of trust anchors loaded from system_ca_file and ca_files. */
  size_t trust_anchor_count() const { return trust_anchor_count_; }

  /** The underlying SSL_CTX, for TlsChannel. The context keeps ownership. */
  ssl_ctx_st* native_handle() const { return ctx_; }

 private:
  ClientTlsContext(ssl_ctx_st* ctx, CertificateVerification verification,
                   size_t trust_anchor_count);

  ssl_ctx_st* const ctx_;  // owned; one reference
  const CertificateVerification verification_;
  const size_t trust_anchor_count_;
};

struct ServerTlsOptions {
  // Default: kTls12.
  TlsVersion min_version = TlsVersion::kTls12;
  // Default: kTls13.
  TlsVersion max_version = TlsVersion::kTls13;
};

/**
 * An SSL_CTX configured for inbound STARTTLS: one certificate chain and its private key,
 * TLS 1.2 or newer, no client certificates requested.
 *
 * Same threading and lifetime rules as ClientTlsContext: Create() reads files; afterwards
 * the context is thread-safe and may be shared by every shard.
 */
class ServerTlsContext {
 public:
  /**
   * @param cert_chain_file PEM: the server certificate first, then its intermediates.
   * @param key_file PEM private key (PKCS#8, or traditional RSA/EC) matching the
   *     certificate.
   * @return the context, NotFound for a missing file, InvalidArgument for a file that does
   *     not parse, a key that does not match the certificate, or inconsistent options.
   */
  static absl::StatusOr<std::unique_ptr<ServerTlsContext>> Create(
      absl::string_view cert_chain_file, absl::string_view key_file,
      const ServerTlsOptions& options = {});

  ~ServerTlsContext();
  ServerTlsContext(const ServerTlsContext&) = delete;
  ServerTlsContext& operator=(const ServerTlsContext&) = delete;

  /** The underlying SSL_CTX, for TlsChannel. The context keeps ownership. */
  ssl_ctx_st* native_handle() const { return ctx_; }

 private:
  explicit ServerTlsContext(ssl_ctx_st* ctx);

  ssl_ctx_st* const ctx_;  // owned; one reference
};

}  // namespace mta::auth

#endif  // AUTH_TLS_CONTEXT_H_
