// TLS over caller-moved bytes: a BoringSSL connection that never touches a socket, so it
// can run inside a shard's io_uring loop (outbound delivery, inbound STARTTLS).
//
// Transport: one custom BIO serves as both the SSL's read and write BIO. It reads from
// ciphertext_in_ and appends to ciphertext_out_, two byte queues owned by the channel.
// A BIO pair (BIO_new_bio_pair) would bound memory by itself, but it accepts input only in
// pieces as its fixed buffer drains, so a caller would have to keep received bytes around
// (awkward with io_uring provided buffers that must go back to the kernel), and SSL_write
// would stall mid-record. BoringSSL's memory BIO moves its whole remaining content on every
// read, which is quadratic in the backlog. The queues here accept whole inputs up to
// explicit limits and consume in amortised O(1).
#include "auth/tls_channel.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <string.h>

#include <algorithm>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "auth/ssl_errors.h"
#include "mta/base/status_macros.h"

#ifndef OPENSSL_IS_BORINGSSL
#error "auth/ must be built against BoringSSL (//third_party:boringssl), not OpenSSL"
#endif

namespace mta::auth {
namespace {

// Largest plaintext of one TLS record; SSL_write is fed at most this much at a time, so
// ciphertext_out_ overshoots its limit by at most one record.
constexpr size_t kMaxRecordPlaintext = 16384;
// A drained queue keeps at most this much capacity, so idle connections stay small.
constexpr size_t kRetainedCapacity = 16 * 1024;
// Compacting a queue is only worth it once this much has been consumed at its front.
constexpr size_t kCompactMinBytes = 4096;
// Peer-controlled strings kept for logs are cut at this length.
constexpr size_t kMaxPeerStringBytes = 1024;

// RFC 1035 limits the presentation form of a name to 253 octets without the final dot.
constexpr size_t kMaxDnsNameBytes = 253;

bool IsIpLiteral(const std::string& name) {
  in_addr v4;
  in6_addr v6;
  return inet_pton(AF_INET, name.c_str(), &v4) == 1 || inet_pton(AF_INET6, name.c_str(), &v6) == 1;
}

// LDH labels (plus '_', which occurs in real host names), no empty label.
bool IsDnsName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxDnsNameBytes) return false;
  size_t label_length = 0;
  for (const char c : name) {
    if (c == '.') {
      if (label_length == 0) return false;
      label_length = 0;
      continue;
    }
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') {
      return false;
    }
    if (++label_length > 63) return false;
  }
  return label_length > 0;
}

// Keeps a peer-supplied string printable and bounded so it can go into logs and headers.
std::string Printable(absl::string_view text) {
  std::string out(text.substr(0, kMaxPeerStringBytes));
  for (char& c : out) {
    if (c < 0x20 || c > 0x7e) c = '?';
  }
  if (text.size() > kMaxPeerStringBytes) out.append("...");
  return out;
}

std::string NameToString(const X509_NAME* name) {
  bssl::UniquePtr<BIO> mem(BIO_new(BIO_s_mem()));
  if (mem == nullptr || name == nullptr) return "";
  // RFC 2253 flags escape control characters and bytes above 0x7e as \XX.
  if (X509_NAME_print_ex(mem.get(), name, 0, XN_FLAG_RFC2253) < 0) {
    ERR_clear_error();
    return "";
  }
  const uint8_t* contents = nullptr;
  size_t length = 0;
  if (!BIO_mem_contents(mem.get(), &contents, &length)) return "";
  return Printable(absl::string_view(reinterpret_cast<const char*>(contents), length));
}

}  // namespace

// TlsChannel::ByteQueue

void TlsChannel::ByteQueue::Consume(size_t n) {
  head_ += std::min(n, size());
  if (head_ == data_.size()) {
    data_.clear();
    head_ = 0;
    if (data_.capacity() > kRetainedCapacity) std::string().swap(data_);
  } else if (head_ >= kCompactMinBytes && head_ * 2 >= data_.size()) {
    // At most as many bytes move as were consumed since the last compaction.
    data_.erase(0, head_);
    head_ = 0;
  }
}

size_t TlsChannel::ByteQueue::Read(char* out, size_t max_bytes) {
  const size_t n = std::min(max_bytes, size());
  if (n == 0) return 0;
  memcpy(out, data_.data() + head_, n);
  Consume(n);
  return n;
}

// TlsChannel: creation

const bio_method_st* TlsChannel::TransportMethod() {
  // Created once and never freed, like BoringSSL's own built-in methods.
  static const BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "mta_tls_channel");
    if (m == nullptr) return static_cast<BIO_METHOD*>(nullptr);
    if (!BIO_meth_set_read(m, &TlsChannel::BioRead) ||
        !BIO_meth_set_write(m, &TlsChannel::BioWrite) ||
        !BIO_meth_set_ctrl(m, &TlsChannel::BioCtrl)) {
      BIO_meth_free(m);
      return static_cast<BIO_METHOD*>(nullptr);
    }
    return m;
  }();
  return method;
}

absl::StatusOr<std::unique_ptr<TlsChannel>> TlsChannel::CreateCommon(
    ssl_ctx_st* ctx, bool is_client, const TlsChannelLimits& limits) {
  if (limits.max_ciphertext_in_bytes < kMinCiphertextInBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TlsChannelLimits.max_ciphertext_in_bytes must be at least ", kMinCiphertextInBytes,
        " (one TLS record), got ", limits.max_ciphertext_in_bytes));
  }
  if (limits.max_plaintext_out_bytes == 0 || limits.max_ciphertext_out_bytes == 0) {
    return absl::InvalidArgumentError(
        "TlsChannelLimits.max_plaintext_out_bytes and max_ciphertext_out_bytes must be > 0");
  }
  const BIO_METHOD* method = TransportMethod();
  if (method == nullptr) return absl::ResourceExhaustedError("BIO_meth_new failed");
  ERR_clear_error();
  bssl::UniquePtr<SSL> ssl(SSL_new(ctx));
  if (ssl == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("SSL_new failed: ", ConsumeSslErrors()));
  }
  BIO* bio = BIO_new(method);
  if (bio == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("BIO_new failed: ", ConsumeSslErrors()));
  }
  // With the same BIO for reading and writing, SSL_set_bio takes over our one reference.
  SSL_set_bio(ssl.get(), bio, bio);
  std::unique_ptr<TlsChannel> channel(new TlsChannel(ssl.release(), is_client, limits));
  BIO_set_data(bio, channel.get());
  BIO_set_init(bio, 1);
  if (is_client) {
    SSL_set_connect_state(channel->ssl_);
  } else {
    SSL_set_accept_state(channel->ssl_);
  }
  return channel;
}

absl::StatusOr<std::unique_ptr<TlsChannel>> TlsChannel::CreateClient(
    const ClientTlsContext& context, absl::string_view server_name,
    const TlsChannelLimits& limits) {
  MTA_ASSIGN_OR_RETURN(std::unique_ptr<TlsChannel> channel,
                       CreateCommon(context.native_handle(), /*is_client=*/true, limits));
  channel->verify_required_ = context.verification() == CertificateVerification::kVerify;
  MTA_RETURN_IF_ERROR(channel->ConfigureClient(server_name));
  return channel;
}

absl::StatusOr<std::unique_ptr<TlsChannel>> TlsChannel::CreateServer(
    const ServerTlsContext& context, const TlsChannelLimits& limits) {
  return CreateCommon(context.native_handle(), /*is_client=*/false, limits);
}

TlsChannel::TlsChannel(ssl_st* ssl, bool is_client, const TlsChannelLimits& limits)
    : ssl_(ssl), is_client_(is_client), limits_(limits) {}

TlsChannel::~TlsChannel() {
  // Frees the transport BIO too. SSL_free never calls the BIO's read or write, which would
  // otherwise touch members being destroyed.
  SSL_free(ssl_);
}

absl::Status TlsChannel::ConfigureClient(absl::string_view server_name) {
  // DNS answers carry the root's trailing dot; neither SNI nor certificates do.
  if (!server_name.empty() && server_name.back() == '.') server_name.remove_suffix(1);
  std::string name(server_name);
  server_name_is_ip_ = IsIpLiteral(name);
  if (!server_name_is_ip_) {
    if (!IsDnsName(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("TLS server name is neither a host name nor an IP literal: '",
                       Printable(server_name), "'"));
    }
    name = absl::AsciiStrToLower(name);
  }
  server_name_ = name;

  ERR_clear_error();
  // RFC 6066 section 3: SNI carries host names only, never IP literals.
  if (!server_name_is_ip_ && SSL_set_tlsext_host_name(ssl_, server_name_.c_str()) != 1) {
    return absl::InternalError(absl::StrCat("setting SNI failed: ", ConsumeSslErrors()));
  }
  if (verify_required_) {
    // With SSL_VERIFY_PEER (set on the context) the handshake now fails unless the chain
    // verifies and the name matches. In opportunistic mode the name is deliberately not
    // part of verification: a mismatch would mask the chain result (X509_verify_cert stops
    // at the first error), and both are reported separately after the handshake.
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl_);
    const int ok = server_name_is_ip_ ? X509_VERIFY_PARAM_set1_ip_asc(param, server_name_.c_str())
                                      : X509_VERIFY_PARAM_set1_host(param, server_name_.data(),
                                                                    server_name_.size());
    if (ok != 1) {
      return absl::InternalError(
          absl::StrCat("setting the name to verify failed: ", ConsumeSslErrors()));
    }
  }
  return absl::OkStatus();
}

// TlsChannel: BIO callbacks

int TlsChannel::BioRead(bio_st* bio, char* out, int len) {
  auto* self = static_cast<TlsChannel*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (len <= 0) return 0;
  if (self->ciphertext_in_.empty()) {
    if (self->transport_eof_) return 0;  // EOF: SSL reports SSL_ERROR_SYSCALL or ZERO_RETURN
    BIO_set_retry_read(bio);             // SSL reports SSL_ERROR_WANT_READ
    return -1;
  }
  return static_cast<int>(self->ciphertext_in_.Read(out, static_cast<size_t>(len)));
}

int TlsChannel::BioWrite(bio_st* bio, const char* data, int len) {
  auto* self = static_cast<TlsChannel*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (len <= 0) return 0;
  // Always accepted: the SSL object writes only handshake messages and alerts (bounded by
  // the protocol) and the records of SSL_write calls, which Flush() meters.
  self->ciphertext_out_.Append(data, static_cast<size_t>(len));
  return len;
}

long TlsChannel::BioCtrl(bio_st* bio, int cmd, long larg, void* parg) {
  auto* self = static_cast<TlsChannel*>(BIO_get_data(bio));
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;  // SSL flushes after each flight; nothing is held back here
    case BIO_CTRL_PENDING:
      return static_cast<long>(self->ciphertext_in_.size());
    case BIO_CTRL_WPENDING:
      return static_cast<long>(self->ciphertext_out_.size());
    case BIO_CTRL_EOF:
      return self->transport_eof_ && self->ciphertext_in_.empty() ? 1 : 0;
    default:
      return 0;
  }
}

// TlsChannel: transport side

absl::Status TlsChannel::FeedCiphertext(absl::string_view data) {
  if (state_ == State::kFailed) return status_;
  if (transport_eof_) {
    return absl::FailedPreconditionError("TLS channel: ciphertext fed after end of stream");
  }
  // After close_notify the peer may send nothing more (RFC 8446 section 6.1); anything
  // that still arrives is ignored rather than buffered.
  if (close_notify_received_ || data.empty()) return absl::OkStatus();
  if (data.size() > ciphertext_in_capacity()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "TLS channel: ", data.size(), " bytes of ciphertext do not fit (", ciphertext_in_.size(),
        " pending, limit ", limits_.max_ciphertext_in_bytes, "); read plaintext first"));
  }
  ciphertext_in_.Append(data.data(), data.size());
  if (state_ == State::kHandshaking) return Handshake();
  return absl::OkStatus();
}

absl::Status TlsChannel::FeedEndOfStream() {
  if (state_ == State::kFailed) return status_;
  if (transport_eof_) return absl::OkStatus();
  transport_eof_ = true;
  if (state_ == State::kHandshaking) return Handshake();
  return absl::OkStatus();
}

size_t TlsChannel::ciphertext_in_capacity() const {
  if (state_ == State::kFailed || transport_eof_) return 0;
  const size_t used = ciphertext_in_.size();
  return used >= limits_.max_ciphertext_in_bytes ? 0 : limits_.max_ciphertext_in_bytes - used;
}

size_t TlsChannel::PendingCiphertext() const { return ciphertext_out_.size(); }

size_t TlsChannel::TakeCiphertext(char* out, size_t max_bytes) {
  const size_t n = ciphertext_out_.Read(out, max_bytes);
  if (state_ == State::kEstablished) {
    // A failure moves the channel to kFailed; the caller sees it from its next
    // Status-returning call or state().
    Flush().IgnoreError();
  }
  return n;
}

size_t TlsChannel::TakeCiphertext(std::string* out, size_t max_bytes) {
  const absl::string_view pending = ciphertext_out_.Peek();
  const size_t n = std::min(max_bytes, pending.size());
  out->append(pending.data(), n);
  ciphertext_out_.Consume(n);
  if (state_ == State::kEstablished) {
    Flush().IgnoreError();  // as above: a failure is recorded in state_ and status_
  }
  return n;
}

// TlsChannel: application side

absl::Status TlsChannel::Handshake() {
  if (state_ == State::kFailed) return status_;
  if (state_ == State::kEstablished) return Flush();
  ERR_clear_error();
  const int rc = SSL_do_handshake(ssl_);
  if (rc == 1) {
    state_ = State::kEstablished;
    OnHandshakeDone();
    return Flush();
  }
  const int code = SSL_get_error(ssl_, rc);
  if (code == SSL_ERROR_WANT_READ && !transport_eof_) return absl::OkStatus();
  if (transport_eof_ &&
      (code == SSL_ERROR_SYSCALL || code == SSL_ERROR_WANT_READ || code == SSL_ERROR_ZERO_RETURN)) {
    return Fail("connection closed by the peer during the TLS handshake", code);
  }
  return Fail("TLS handshake failed", code);
}

absl::Status TlsChannel::WritePlaintext(absl::string_view data) {
  if (state_ == State::kFailed) return status_;
  if (shutdown_requested_) {
    return absl::FailedPreconditionError("TLS channel: write after Shutdown");
  }
  if (data.size() > plaintext_out_capacity()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "TLS channel: ", data.size(), " bytes of plaintext do not fit (", plaintext_out_.size(),
        " buffered, limit ", limits_.max_plaintext_out_bytes, "); take ciphertext first"));
  }
  if (data.empty()) return absl::OkStatus();
  plaintext_out_.Append(data.data(), data.size());
  if (state_ == State::kEstablished) return Flush();
  return absl::OkStatus();
}

size_t TlsChannel::plaintext_out_capacity() const {
  if (state_ == State::kFailed || shutdown_requested_) return 0;
  const size_t used = plaintext_out_.size();
  return used >= limits_.max_plaintext_out_bytes ? 0 : limits_.max_plaintext_out_bytes - used;
}

absl::StatusOr<size_t> TlsChannel::ReadPlaintext(char* out, size_t max_bytes) {
  if (state_ == State::kFailed) return status_;
  if (state_ == State::kHandshaking) {
    MTA_RETURN_IF_ERROR(Handshake());
    if (state_ != State::kEstablished) return 0;
  }
  if (read_closed_ || max_bytes == 0) return 0;
  ERR_clear_error();
  const int rc =
      SSL_read(ssl_, out, static_cast<int>(std::min(max_bytes, static_cast<size_t>(INT_MAX))));
  if (rc > 0) return static_cast<size_t>(rc);
  const int code = SSL_get_error(ssl_, rc);
  switch (code) {
    case SSL_ERROR_WANT_READ:
      return 0;
    case SSL_ERROR_ZERO_RETURN:
      close_notify_received_ = true;
      read_closed_ = true;
      ciphertext_in_.Consume(ciphertext_in_.size());
      return 0;
    case SSL_ERROR_SYSCALL:
      // Our BIO returns 0 only at transport EOF, which BoringSSL reports as
      // SSL_ERROR_SYSCALL with an empty error queue, at a record boundary or inside a record
      // (whose partial content is never delivered). That is a truncation the application
      // protocol may or may not care about (SMTP servers often close right after "221"
      // without close_notify), so it ends the inbound stream rather than failing the
      // channel; writing remains possible.
      if (transport_eof_ && ERR_peek_error() == 0) {
        read_closed_ = true;
        return 0;
      }
      break;
    default:
      break;
  }
  return Fail("TLS read failed", code);
}

absl::Status TlsChannel::Shutdown() {
  if (state_ == State::kFailed) return status_;
  shutdown_requested_ = true;
  if (state_ == State::kEstablished) return Flush();
  return absl::OkStatus();  // Handshake() calls Flush() once established
}

// TlsChannel: internals

absl::Status TlsChannel::Flush() {
  if (state_ != State::kEstablished) return status_;
  while (!plaintext_out_.empty() && ciphertext_out_.size() < limits_.max_ciphertext_out_bytes) {
    const absl::string_view pending = plaintext_out_.Peek();
    const int n = static_cast<int>(std::min(pending.size(), kMaxRecordPlaintext));
    ERR_clear_error();
    const int rc = SSL_write(ssl_, pending.data(), n);
    if (rc > 0) {
      plaintext_out_.Consume(static_cast<size_t>(rc));
      continue;
    }
    const int code = SSL_get_error(ssl_, rc);
    // Only a post-handshake exchange that needs peer input could block a write; BoringSSL
    // refuses renegotiation, so this is defensive. Retry when more ciphertext arrives.
    if (code == SSL_ERROR_WANT_READ) return absl::OkStatus();
    return Fail("TLS write failed", code);
  }
  if (shutdown_requested_ && !close_notify_sent_ && plaintext_out_.empty()) {
    ERR_clear_error();
    // Returns 0 (close_notify sent, the peer's not yet seen) or 1 (both done); our BIO
    // never refuses a write, so it cannot need a retry.
    const int rc = SSL_shutdown(ssl_);
    if (rc < 0) return Fail("TLS shutdown failed", SSL_get_error(ssl_, rc));
    close_notify_sent_ = true;
  }
  return absl::OkStatus();
}

void TlsChannel::OnHandshakeDone() {
  info_.protocol_version = SSL_get_version(ssl_);
  if (const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl_); cipher != nullptr) {
    info_.cipher = SSL_CIPHER_get_name(cipher);
  }
  if (const uint16_t group = SSL_get_curve_id(ssl_); group != 0) {
    if (const char* name = SSL_get_curve_name(group); name != nullptr) {
      info_.key_exchange_group = name;
    }
  }
  if (is_client_) {
    info_.server_name = server_name_;
  } else if (const char* sni = SSL_get_servername(ssl_, TLSEXT_NAMETYPE_host_name);
             sni != nullptr) {
    info_.server_name = Printable(sni);
  }
  bssl::UniquePtr<X509> peer(SSL_get_peer_certificate(ssl_));
  if (peer == nullptr) return;
  info_.peer_certificate_present = true;
  const long verify_result = SSL_get_verify_result(ssl_);
  info_.peer_certificate_verified = verify_result == X509_V_OK;
  if (verify_result != X509_V_OK) {
    info_.verify_error = X509_verify_cert_error_string(verify_result);
  }
  info_.peer_subject = NameToString(X509_get_subject_name(peer.get()));
  if (is_client_) info_.peer_name_matched = PeerNameMatches(peer.get());
  ERR_clear_error();
}

bool TlsChannel::PeerNameMatches(x509_st* peer) const {
  // The same RFC 6125 matcher that X509_VERIFY_PARAM_set1_host drives in kVerify mode.
  if (server_name_is_ip_) return X509_check_ip_asc(peer, server_name_.c_str(), 0) == 1;
  return X509_check_host(peer, server_name_.data(), server_name_.size(), 0, nullptr) == 1;
}

absl::Status TlsChannel::Fail(absl::string_view what, int code) {
  std::string message(what);
  if (is_client_ && state_ == State::kHandshaking) {
    message = absl::StrCat(what, " (server ", server_name_, ")");
  }
  // The X.509 verifier does not use the error queue: its verdict is only in the verify
  // result, so add it when the handshake failed over the certificate.
  const auto is_verify_failure = [](uint32_t packed) {
    return ERR_GET_LIB(packed) == ERR_LIB_SSL &&
           ERR_GET_REASON(packed) == SSL_R_CERTIFICATE_VERIFY_FAILED;
  };
  const bool certificate_failed =
      is_verify_failure(ERR_peek_error()) || is_verify_failure(ERR_peek_last_error());
  const std::string errors = ConsumeSslErrors();
  if (!errors.empty()) absl::StrAppend(&message, ": ", errors);
  absl::StrAppend(&message, " [", SslErrorCodeName(code), "]");
  if (certificate_failed) {
    const long verify_result = SSL_get_verify_result(ssl_);
    if (verify_result != X509_V_OK) {
      absl::StrAppend(&message, "; certificate: ", X509_verify_cert_error_string(verify_result));
    }
  }
  state_ = State::kFailed;
  read_closed_ = true;
  status_ = absl::UnavailableError(message);
  return status_;
}

}  // namespace mta::auth
