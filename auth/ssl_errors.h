// Turns BoringSSL's thread-local error queue into text for absl::Status messages.
#ifndef AUTH_SSL_ERRORS_H_
#define AUTH_SSL_ERRORS_H_

#include <string>

namespace mta::auth {

/**
 * Pops every entry from the calling thread's BoringSSL error queue and returns them
 * joined by "; ", each as ERR_error_string_n renders it, e.g.
 * "error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED".
 * Returns "" when the queue is empty. The queue is empty afterwards.
 */
std::string ConsumeSslErrors();

/** The name of an SSL_get_error() code, e.g. "SSL_ERROR_WANT_READ". */
const char* SslErrorCodeName(int code);

}  // namespace mta::auth

#endif  // AUTH_SSL_ERRORS_H_
