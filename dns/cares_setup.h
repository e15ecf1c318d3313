// Checks that run before anything reaches c-ares: query names and resolver options.
#ifndef DNS_CARES_SETUP_H_
#define DNS_CARES_SETUP_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "dns/cares_resolver.h"

namespace mta::dns::internal {

/**
 * Lower-cases `name`, drops one trailing dot and checks RFC 1035 lengths and the
 * characters c-ares may be given (letters, digits, '-', '_'); InvalidArgument otherwise.
 */
absl::StatusOr<std::string> NormalizeName(absl::string_view name);

/** InvalidArgument for options out of range. */
absl::Status ValidateOptions(const CaresResolverOptions& options);

/** "ip", "ip:port" or "[v6]:port" to c-ares' CSV form ("ip:port" or "[v6]:port"). */
absl::StatusOr<std::string> ServerToCsvItem(const std::string& server);

}  // namespace mta::dns::internal

#endif  // DNS_CARES_SETUP_H_
