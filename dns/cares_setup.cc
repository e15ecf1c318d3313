#include "dns/cares_setup.h"

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "mta/base/net.h"

namespace mta::dns::internal {
namespace {

// RFC 1035 section 2.3.4 (253 octets in text form without the trailing dot).
constexpr size_t kMaxNameLength = 253;
constexpr size_t kMaxLabelLength = 63;

}  // namespace

/**
 * Validates a domain name and returns its cache form: lower-case, no trailing dot.
 * Only letters, digits, '-' and '_' are allowed in labels, so the name can be handed to
 * c-ares as is (c-ares would interpret '\' escapes) and never smuggles odd bytes.
 */
absl::StatusOr<std::string> NormalizeName(absl::string_view name) {
  absl::string_view in = name;
  if (!in.empty() && in.back() == '.') in.remove_suffix(1);
  if (in.empty()) return absl::InvalidArgumentError("empty domain name");
  if (in.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("domain name longer than 253 octets: '", name.substr(0, 64), "...'"));
  }
  std::string out;
  out.reserve(in.size());
  size_t label = 0;
  for (char c : in) {
    if (c == '.') {
      if (label == 0) {
        return absl::InvalidArgumentError(absl::StrCat("empty label in domain name '", name, "'"));
      }
      label = 0;
      out.push_back('.');
      continue;
    }
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid character in domain name '", absl::CEscape(name), "'"));
    }
    if (++label > kMaxLabelLength) {
      return absl::InvalidArgumentError(
          absl::StrCat("label longer than 63 octets in domain name '", name, "'"));
    }
    out.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
  }
  if (label == 0) {
    return absl::InvalidArgumentError(absl::StrCat("empty label in domain name '", name, "'"));
  }
  return out;
}

absl::Status ValidateOptions(const CaresResolverOptions& o) {
  if (o.query_timeout_ms <= 0) {
    return absl::InvalidArgumentError("dns: query_timeout_ms must be positive");
  }
  if (o.tries < 1) return absl::InvalidArgumentError("dns: tries must be at least 1");
  if (o.ttl_min < absl::ZeroDuration() || o.ttl_min > o.ttl_max || o.ttl_min > o.negative_ttl_max) {
    return absl::InvalidArgumentError(
        "dns: need 0 <= ttl_min <= ttl_max and ttl_min <= negative_ttl_max");
  }
  if (o.negative_ttl_default < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("dns: negative_ttl_default must not be negative");
  }
  return absl::OkStatus();
}

/** "ip", "ip:port" or "[v6]:port" to c-ares' CSV form ("ip:port" or "[v6]:port"). */
absl::StatusOr<std::string> ServerToCsvItem(const std::string& server) {
  absl::StatusOr<IpAddress> bare = IpAddress::Parse(server);
  if (bare.ok()) {
    if (bare->family == AF_INET6) return absl::StrCat("[", bare->ToString(), "]:53");
    return absl::StrCat(bare->ToString(), ":53");
  }
  absl::StatusOr<HostPort> hp = HostPort::Parse(server);
  if (!hp.ok() || hp->port == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dns: bad server '", server, "', want ip, ip:port or [ipv6]:port"));
  }
  absl::StatusOr<IpAddress> ip = IpAddress::Parse(hp->host);
  if (!ip.ok()) return ip.status();
  if (ip->family == AF_INET6) return absl::StrCat("[", ip->ToString(), "]:", hp->port);
  return absl::StrCat(ip->ToString(), ":", hp->port);
}

}  // namespace mta::dns::internal
