// TLS over caller-moved bytes: a BoringSSL connection that never touches a socket, so it
// can run inside a shard's io_uring loop (outbound delivery, inbound STARTTLS).
#ifndef AUTH_TLS_CHANNEL_H_
#define AUTH_TLS_CHANNEL_H_

#include <stddef.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "auth/tls_context.h"

// BoringSSL types, forward-declared so that this header needs no OpenSSL include path.
struct ssl_st;
struct bio_st;
struct bio_method_st;
struct x509_st;

namespace mta::auth {

/**
 * Memory bounds of one channel. Each bound is enforced by refusing the call that would
 * exceed it (ResourceExhausted), never by dropping bytes.
 */
struct TlsChannelLimits {
  // Ciphertext received from the socket and not yet decrypted (decryption happens in
  // ReadPlaintext). Must hold at least one full TLS record (kMinCiphertextInBytes).
  // Default: 256 KiB.
  size_t max_ciphertext_in_bytes = 256 * 1024;
  // Plaintext accepted by WritePlaintext and not yet encrypted (while handshaking, or while
  // the ciphertext below is at its bound). Default: 256 KiB.
  size_t max_plaintext_out_bytes = 256 * 1024;
  // Ciphertext waiting for TakeCiphertext. Application data is not encrypted while this much
  // is waiting, so the bound is soft: it can be exceeded by one TLS record (~16.5 KiB) and
  // by handshake messages, alerts and close_notify, whose size the protocol bounds.
  // Default: 256 KiB.
  size_t max_ciphertext_out_bytes = 256 * 1024;
};

/** The negotiated parameters of an established channel. */
struct TlsConnectionInfo {
  std::string protocol_version;    // "TLSv1.3" or "TLSv1.2"
  std::string cipher;              // e.g. "TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"
  std::string key_exchange_group;  // e.g. "X25519", or "" if none
  // Client: the name sent as SNI (or the IP literal checked, for which no SNI is sent).
  // Server: the SNI the client sent, or "".
  std::string server_name;
  bool peer_certificate_present = false;
  // The peer chain verified to a trust anchor of the context (chain, validity period,
  // extensions; the name is reported separately).
  bool peer_certificate_verified = false;
  // Client only: the server certificate is valid for server_name (RFC 6125: a DNS-ID in
  // subjectAltName, a wildcard only as the whole leftmost label, the subject CN only when
  // there is no DNS-ID; IP literals against iPAddress entries).
  bool peer_name_matched = false;
  // The peer certificate's subject in RFC 2253 form with control and non-ASCII characters
  // escaped, so it is safe to log; "" without a certificate.
  std::string peer_subject;
  // Why the chain did not verify (X509_verify_cert_error_string), "" when it did or when
  // there is no peer certificate.
  std::string verify_error;
};

/**
 * One TLS connection over one SSL object whose transport is two in-memory queues that the
 * caller fills and drains: the channel only transforms bytes and never does file or network
 * I/O, never blocks and never aborts on peer input.
 *
 * Transport side: bytes received from the socket go into FeedCiphertext (and a transport
 * EOF into FeedEndOfStream); after every call, bytes in PendingCiphertext() are to be sent
 * (TakeCiphertext). Application side: WritePlaintext (buffered until the handshake is
 * done), ReadPlaintext, Shutdown (close_notify).
 *
 * A typical client:
 *
 *   MTA_ASSIGN_OR_RETURN(auto tls, TlsChannel::CreateClient(ctx, mx_host));
 *   MTA_RETURN_IF_ERROR(tls->Handshake());      // queues the ClientHello
 *   send(tls->TakeCiphertext(...));
 *   on recv(bytes): tls->FeedCiphertext(bytes); // drives the handshake
 *                   while ReadPlaintext(...) > 0: handle it
 *                   send(tls->TakeCiphertext(...))
 *   on recv EOF:    tls->FeedEndOfStream()
 *
 * Errors: peer misbehaviour, certificate failures (kVerify) and transport EOF during the
 * handshake move the channel to kFailed; the call and every later Status-returning call
 * return Unavailable with the reason (BoringSSL's error queue, the SSL_get_error code and,
 * for certificates, the verification result). A fatal alert may then still be pending in
 * PendingCiphertext(); send it before closing the socket. Misuse (e.g. writing after
 * Shutdown) returns FailedPrecondition; a bound of TlsChannelLimits returns
 * ResourceExhausted; neither changes the channel's state.
 *
 * Thread-compatible: one channel is used by one thread (its shard) at a time. The channel
 * keeps a reference to its context's SSL_CTX, so the context object may be destroyed first.
 */
class TlsChannel {
 public:
  enum class State { kHandshaking, kEstablished, kFailed };

  /** Smallest max_ciphertext_in_bytes: one maximal TLS record (header + 2^14 + 2048). */
  static constexpr size_t kMinCiphertextInBytes = 5 + 16384 + 2048;

  /**
   * A client channel for the server `server_name`: a DNS name (the MX host; one trailing dot
   * is ignored), sent as SNI and matched against the certificate, or an IPv4/IPv6 literal
   * (no SNI; matched against iPAddress entries).
   * @return the channel in kHandshaking; call Handshake() to queue the ClientHello.
   *     InvalidArgument for a malformed server_name or limits.
   */
  static absl::StatusOr<std::unique_ptr<TlsChannel>> CreateClient(
      const ClientTlsContext& context, absl::string_view server_name,
      const TlsChannelLimits& limits = {});

  /** A server channel (inbound STARTTLS). @return the channel in kHandshaking. */
  static absl::StatusOr<std::unique_ptr<TlsChannel>> CreateServer(
      const ServerTlsContext& context, const TlsChannelLimits& limits = {});

  ~TlsChannel();
  TlsChannel(const TlsChannel&) = delete;
  TlsChannel& operator=(const TlsChannel&) = delete;

  // Transport side.

  /**
   * Appends ciphertext received from the socket and, while handshaking, drives the
   * handshake with it. Application data stays encrypted until ReadPlaintext.
   * Bytes arriving after the peer's close_notify are discarded.
   * @return ResourceExhausted (nothing consumed) if it would exceed
   *     max_ciphertext_in_bytes: read plaintext first; FailedPrecondition after
   *     FeedEndOfStream; the channel's error once kFailed.
   */
  absl::Status FeedCiphertext(absl::string_view data);

  /**
   * Records that the transport reached EOF. During the handshake the channel fails;
   * afterwards plaintext already received can still be read, then read_closed() turns true
   * (with close_notify_received() false if the peer did not send close_notify: truncation).
   */
  absl::Status FeedEndOfStream();

  /** Bytes FeedCiphertext accepts right now. */
  size_t ciphertext_in_capacity() const;

  /** Ciphertext waiting to be sent to the socket. */
  size_t PendingCiphertext() const;

  /**
   * Moves up to `max_bytes` of pending ciphertext into `out` and then encrypts more
   * buffered plaintext if that was waiting for room. Works in every state (a failed
   * channel may still have an alert to send).
   * @return the number of bytes written to `out`.
   */
  size_t TakeCiphertext(char* out, size_t max_bytes);
  /** As above, appending up to `max_bytes` to `out`. */
  size_t TakeCiphertext(std::string* out, size_t max_bytes = static_cast<size_t>(-1));

  // Application side.

  /**
   * Drives the handshake as far as the ciphertext fed so far allows, queueing whatever it
   * has to send. A client channel sends nothing until this is called once. Once established,
   * encrypts buffered plaintext (a no-op otherwise).
   * @return OK while handshaking or established, the failure otherwise.
   */
  absl::Status Handshake();

  /**
   * Queues `data` to be encrypted: at once when established and there is room, otherwise as
   * soon as the handshake completes or TakeCiphertext makes room. All or nothing.
   * @return ResourceExhausted (nothing queued) beyond max_plaintext_out_bytes;
   *     FailedPrecondition after Shutdown; the channel's error once kFailed.
   */
  absl::Status WritePlaintext(absl::string_view data);

  /** Bytes WritePlaintext accepts right now (0 once Shutdown was called or kFailed). */
  size_t plaintext_out_capacity() const;

  /**
   * Decrypts into `out`. Drives a pending handshake first.
   * @return the number of bytes (> 0), or 0 if nothing is available: more ciphertext is
   *     needed, or the inbound stream has ended (read_closed()). Unavailable on a protocol
   *     error (the channel fails).
   */
  absl::StatusOr<size_t> ReadPlaintext(char* out, size_t max_bytes);

  /**
   * Ends the outbound stream: after all buffered plaintext, a close_notify alert is queued.
   * If the handshake is still running that happens once it completes. Idempotent. Reading
   * may continue (the peer's close_notify is reported by close_notify_received()).
   * @return OK, or the channel's error once kFailed.
   */
  absl::Status Shutdown();

  // State.

  State state() const { return state_; }
  bool established() const { return state_ == State::kEstablished; }
  /** OK unless kFailed; then the reason, e.g. "TLS handshake with mx.example.com failed:
   *  error:...:CERTIFICATE_VERIFY_FAILED [SSL_ERROR_SSL]; certificate: Hostname mismatch". */
  const absl::Status& status() const { return status_; }

  /** No more plaintext will arrive: close_notify received, or transport EOF after the
   *  handshake and everything before it was read. */
  bool read_closed() const { return read_closed_; }
  bool close_notify_received() const { return close_notify_received_; }
  /** close_notify has been queued in the pending ciphertext. */
  bool close_notify_sent() const { return close_notify_sent_; }
  bool is_client() const { return is_client_; }

  /** REQUIRES: the handshake completed (the channel may have failed or closed since). */
  const TlsConnectionInfo& info() const { return info_; }

 private:
  // Append-at-the-back, consume-from-the-front byte queue with amortised O(1) operations
  // and no retained capacity beyond a small amount once drained.
  class ByteQueue {
   public:
    size_t size() const { return data_.size() - head_; }
    bool empty() const { return head_ == data_.size(); }
    absl::string_view Peek() const {
      return absl::string_view(data_.data() + head_, data_.size() - head_);
    }
    void Append(const char* data, size_t n) { data_.append(data, n); }
    void Consume(size_t n);
    size_t Read(char* out, size_t max_bytes);

   private:
    std::string data_;
    size_t head_ = 0;
  };

  TlsChannel(ssl_st* ssl, bool is_client, const TlsChannelLimits& limits);

  static absl::StatusOr<std::unique_ptr<TlsChannel>> CreateCommon(ssl_ctx_st* ctx, bool is_client,
                                                                  const TlsChannelLimits& limits);
  static const bio_method_st* TransportMethod();
  // BIO callbacks: the SSL object reads ciphertext_in_ and writes ciphertext_out_.
  static int BioRead(bio_st* bio, char* out, int len);
  static int BioWrite(bio_st* bio, const char* data, int len);
  static long BioCtrl(bio_st* bio, int cmd, long larg, void* parg);

  absl::Status ConfigureClient(absl::string_view server_name);
  // Encrypts buffered plaintext while ciphertext_out_ has room, then queues close_notify if
  // Shutdown was requested and everything was written.
  absl::Status Flush();
  void OnHandshakeDone();
  bool PeerNameMatches(x509_st* peer) const;
  // Moves to kFailed with `what` plus BoringSSL's diagnostics for SSL_get_error code `code`.
  absl::Status Fail(absl::string_view what, int code);

  ssl_st* const ssl_;  // owned; owns the transport BIO, whose data pointer is this
  const bool is_client_;
  const TlsChannelLimits limits_;
  bool verify_required_ = false;
  bool server_name_is_ip_ = false;
  std::string server_name_;  // client: the normalized name

  State state_ = State::kHandshaking;
  absl::Status status_;
  ByteQueue ciphertext_in_;
  ByteQueue ciphertext_out_;
  ByteQueue plaintext_out_;
  bool transport_eof_ = false;
  bool read_closed_ = false;
  bool close_notify_received_ = false;
  bool shutdown_requested_ = false;
  bool close_notify_sent_ = false;
  TlsConnectionInfo info_;
};

}  // namespace mta::auth

#endif  // AUTH_TLS_CHANNEL_H_
