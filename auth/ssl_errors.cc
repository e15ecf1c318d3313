// Turns BoringSSL's thread-local error queue into text for absl::Status messages.
#include "auth/ssl_errors.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

namespace mta::auth {

std::string ConsumeSslErrors() {
  std::string out;
  // Bound the loop: the queue holds at most ERR_NUM_ERRORS entries, but a bug elsewhere
  // must never turn this into an endless loop on a shard.
  for (int i = 0; i < 64; ++i) {
    const uint32_t packed = ERR_get_error();
    if (packed == 0) break;
    char buf[256];
    ERR_error_string_n(packed, buf, sizeof(buf));
    if (!out.empty()) out.append("; ");
    out.append(buf);
  }
  ERR_clear_error();
  return out;
}

const char* SslErrorCodeName(int code) {
  switch (code) {
    case SSL_ERROR_NONE:
      return "SSL_ERROR_NONE";
    case SSL_ERROR_SSL:
      return "SSL_ERROR_SSL";
    case SSL_ERROR_WANT_READ:
      return "SSL_ERROR_WANT_READ";
    case SSL_ERROR_WANT_WRITE:
      return "SSL_ERROR_WANT_WRITE";
    case SSL_ERROR_WANT_X509_LOOKUP:
      return "SSL_ERROR_WANT_X509_LOOKUP";
    case SSL_ERROR_SYSCALL:
      return "SSL_ERROR_SYSCALL";
    case SSL_ERROR_ZERO_RETURN:
      return "SSL_ERROR_ZERO_RETURN";
    case SSL_ERROR_WANT_CONNECT:
      return "SSL_ERROR_WANT_CONNECT";
    case SSL_ERROR_WANT_ACCEPT:
      return "SSL_ERROR_WANT_ACCEPT";
    default:
      return "SSL_ERROR_OTHER";
  }
}

}  // namespace mta::auth
