// BoringSSL TLS contexts: outbound SMTP client (delivery) and inbound STARTTLS server.
#include "auth/tls_context.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <string.h>
#include <sys/stat.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "auth/ssl_errors.h"
#include "mta/base/status_macros.h"

#ifndef OPENSSL_IS_BORINGSSL
#error "auth/ must be built against BoringSSL (//third_party:boringssl), not OpenSSL"
#endif

namespace mta::auth {
namespace {

uint16_t ToWireVersion(TlsVersion version) {
  return version == TlsVersion::kTls13 ? TLS1_3_VERSION : TLS1_2_VERSION;
}

// Owns an SSL_CTX until it is handed to a context object.
struct SslCtxDeleter {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxDeleter>;

// Distinguishes a missing file (NotFound) from one we may not read; the real parse happens
// in BoringSSL, whose errors say little about the file itself.
absl::Status CheckReadableFile(const std::string& path, absl::string_view what) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    const int err = errno;
    const std::string message = absl::StrCat(what, " ", path, ": ", strerror(err));
    return err == ENOENT ? absl::NotFoundError(message) : absl::InvalidArgumentError(message);
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": not a regular file"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SslCtxPtr> NewContext(TlsVersion min_version, TlsVersion max_version) {
  if (min_version == TlsVersion::kTls13 && max_version == TlsVersion::kTls12) {
    return absl::InvalidArgumentError("TLS min_version is above max_version");
  }
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_method()));
  if (ctx == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("SSL_CTX_new failed: ", ConsumeSslErrors()));
  }
  if (!SSL_CTX_set_min_proto_version(ctx.get(), ToWireVersion(min_version)) ||
      !SSL_CTX_set_max_proto_version(ctx.get(), ToWireVersion(max_version))) {
    return absl::InternalError(
        absl::StrCat("setting the TLS protocol versions failed: ", ConsumeSslErrors()));
  }
  // TlsChannel keeps unsent plaintext in a buffer that may move between SSL_write calls,
  // and accepts short writes.
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  return ctx;
}

size_t CountTrustAnchors(SSL_CTX* ctx) {
  const STACK_OF(X509_OBJECT)* objects = X509_STORE_get0_objects(SSL_CTX_get_cert_store(ctx));
  size_t count = 0;
  for (size_t i = 0; i < sk_X509_OBJECT_num(objects); ++i) {
    if (X509_OBJECT_get_type(sk_X509_OBJECT_value(objects, i)) == X509_LU_X509) ++count;
  }
  return count;
}

absl::Status LoadTrustAnchors(SSL_CTX* ctx, const std::string& path) {
  ERR_clear_error();
  if (SSL_CTX_load_verify_locations(ctx, path.c_str(), nullptr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("loading CA certificates from ", path, " failed: ", ConsumeSslErrors()));
  }
  return absl::OkStatus();
}

}  // namespace

// ClientTlsContext

absl::StatusOr<std::unique_ptr<ClientTlsContext>> ClientTlsContext::Create(
    const ClientTlsOptions& options) {
  MTA_ASSIGN_OR_RETURN(SslCtxPtr ctx, NewContext(options.min_version, options.max_version));

  // Opportunistic mode still runs full chain verification (BoringSSL verifies with
  // SSL_VERIFY_NONE too and records the result for SSL_get_verify_result); it just never
  // fails the handshake over it. The name is checked per channel, see TlsChannel.
  SSL_CTX_set_verify(
      ctx.get(),
      options.verification == CertificateVerification::kVerify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE,
      nullptr);
  // One SMTP connection per handshake; nothing to resume on the client side.
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);

  if (!options.system_ca_file.empty()) {
    const absl::Status readable = CheckReadableFile(options.system_ca_file, "system CA bundle");
    if (readable.ok()) {
      MTA_RETURN_IF_ERROR(LoadTrustAnchors(ctx.get(), options.system_ca_file));
    } else if (!absl::IsNotFound(readable)) {
      return readable;
    }
    // A missing bundle is fine: opportunistic TLS needs no anchors, and kVerify without
    // any anchor is rejected below.
  }
  for (const std::string& path : options.ca_files) {
    MTA_RETURN_IF_ERROR(CheckReadableFile(path, "CA file"));
    MTA_RETURN_IF_ERROR(LoadTrustAnchors(ctx.get(), path));
  }
  const size_t anchors = CountTrustAnchors(ctx.get());
  if (options.verification == CertificateVerification::kVerify && anchors == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "certificate verification is required but no trust anchor was loaded (system_ca_file '",
        options.system_ca_file, "' and ", options.ca_files.size(), " ca_files)"));
  }
  return std::unique_ptr<ClientTlsContext>(
      new ClientTlsContext(ctx.release(), options.verification, anchors));
}

ClientTlsContext::ClientTlsContext(ssl_ctx_st* ctx, CertificateVerification verification,
                                   size_t trust_anchor_count)
    : ctx_(ctx), verification_(verification), trust_anchor_count_(trust_anchor_count) {}

ClientTlsContext::~ClientTlsContext() { SSL_CTX_free(ctx_); }

// ServerTlsContext

absl::StatusOr<std::unique_ptr<ServerTlsContext>> ServerTlsContext::Create(
    absl::string_view cert_chain_file, absl::string_view key_file,
    const ServerTlsOptions& options) {
  const std::string cert_path(cert_chain_file);
  const std::string key_path(key_file);
  MTA_RETURN_IF_ERROR(CheckReadableFile(cert_path, "certificate chain file"));
  MTA_RETURN_IF_ERROR(CheckReadableFile(key_path, "private key file"));

  MTA_ASSIGN_OR_RETURN(SslCtxPtr ctx, NewContext(options.min_version, options.max_version));
  // Our preference order (BoringSSL's default: AEADs, forward secrecy first) beats whatever
  // a legacy client lists first.
  SSL_CTX_set_options(ctx.get(), SSL_OP_CIPHER_SERVER_PREFERENCE);
  // Resumption works through tickets (stateless, TLS 1.2 and 1.3). The server-side session
  // cache would be one more structure shared by all shards behind a lock, for clients that
  // resume by session ID only, which SMTP clients rarely do.
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);

  ERR_clear_error();
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), cert_path.c_str()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("loading the certificate chain from ", cert_path,
                                                   " failed: ", ConsumeSslErrors()));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), key_path.c_str(), SSL_FILETYPE_PEM) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("loading the private key from ", key_path, " failed: ", ConsumeSslErrors()));
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("the private key in ", key_path,
                                                   " does not match the certificate in ", cert_path,
                                                   ": ", ConsumeSslErrors()));
  }
  return std::unique_ptr<ServerTlsContext>(new ServerTlsContext(ctx.release()));
}

ServerTlsContext::ServerTlsContext(ssl_ctx_st* ctx) : ctx_(ctx) {}

ServerTlsContext::~ServerTlsContext() { SSL_CTX_free(ctx_); }

}  // namespace mta::auth
