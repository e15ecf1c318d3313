// Socket address helpers: parsing host:port, CIDR networks and formatting peers.
#ifndef MTA_BASE_NET_H_
#define MTA_BASE_NET_H_

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mta {

/** An IPv4 or IPv6 address; IPv4-mapped IPv6 addresses are normalized to IPv4. */
struct IpAddress {
  int family = AF_INET;  // AF_INET or AF_INET6
  std::array<uint8_t, 16> bytes{};

  static absl::StatusOr<IpAddress> Parse(absl::string_view text);
  static IpAddress FromSockaddr(const sockaddr_storage& addr);
  std::string ToString() const;
  bool operator==(const IpAddress& other) const = default;
};

/** A network in CIDR notation ("127.0.0.0/8", "::1/128"; a bare address is a host). */
struct Cidr {
  IpAddress base;
  int prefix_len = 0;

  static absl::StatusOr<Cidr> Parse(absl::string_view text);
  bool Contains(const IpAddress& ip) const;
};

/** host:port or [v6]:port, for binding listeners. */
struct HostPort {
  std::string host;
  uint16_t port = 0;

  static absl::StatusOr<HostPort> Parse(absl::string_view text);
  /** Fills `out` for bind(2); returns its length. Host must be a literal address. */
  absl::StatusOr<socklen_t> ToSockaddr(sockaddr_storage* out) const;
};

}  // namespace mta

#endif  // MTA_BASE_NET_H_
