#include "mta/base/net.h"

#include <arpa/inet.h>

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace mta {
namespace {
constexpr uint8_t kV4MappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
}  // namespace

absl::StatusOr<IpAddress> IpAddress::Parse(absl::string_view text) {
  std::string s(text);
  IpAddress ip;
  if (inet_pton(AF_INET, s.c_str(), ip.bytes.data()) == 1) {
    ip.family = AF_INET;
    return ip;
  }
  if (inet_pton(AF_INET6, s.c_str(), ip.bytes.data()) == 1) {
    ip.family = AF_INET6;
    if (std::memcmp(ip.bytes.data(), kV4MappedPrefix, 12) == 0) {
      std::memmove(ip.bytes.data(), ip.bytes.data() + 12, 4);
      std::memset(ip.bytes.data() + 4, 0, 12);
      ip.family = AF_INET;
    }
    return ip;
  }
  return absl::InvalidArgumentError(absl::StrCat("not an IP address: '", text, "'"));
}

IpAddress IpAddress::FromSockaddr(const sockaddr_storage& addr) {
  IpAddress ip;
  if (addr.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&addr);
    std::memcpy(ip.bytes.data(), &v4->sin_addr, 4);
    ip.family = AF_INET;
  } else if (addr.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&addr);
    if (std::memcmp(&v6->sin6_addr, kV4MappedPrefix, 12) == 0) {
      std::memcpy(ip.bytes.data(), reinterpret_cast<const uint8_t*>(&v6->sin6_addr) + 12, 4);
      ip.family = AF_INET;
    } else {
      std::memcpy(ip.bytes.data(), &v6->sin6_addr, 16);
      ip.family = AF_INET6;
    }
  }
  return ip;
}

std::string IpAddress::ToString() const {
  char buf[INET6_ADDRSTRLEN] = {0};
  inet_ntop(family, bytes.data(), buf, sizeof(buf));
  return buf;
}

absl::StatusOr<Cidr> Cidr::Parse(absl::string_view text) {
  Cidr cidr;
  size_t slash = text.find('/');
  auto ip = IpAddress::Parse(text.substr(0, slash));
  if (!ip.ok()) return absl::InvalidArgumentError(absl::StrCat("bad network '", text, "'"));
  cidr.base = *ip;
  int max_len = cidr.base.family == AF_INET ? 32 : 128;
  cidr.prefix_len = max_len;
  if (slash != absl::string_view::npos) {
    if (!absl::SimpleAtoi(text.substr(slash + 1), &cidr.prefix_len) || cidr.prefix_len < 0 ||
        cidr.prefix_len > max_len) {
      return absl::InvalidArgumentError(absl::StrCat("bad prefix length in '", text, "'"));
    }
  }
  return cidr;
}

bool Cidr::Contains(const IpAddress& ip) const {
  if (ip.family != base.family) return false;
  int full = prefix_len / 8;
  if (std::memcmp(ip.bytes.data(), base.bytes.data(), full) != 0) return false;
  int rest = prefix_len % 8;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (ip.bytes[full] & mask) == (base.bytes[full] & mask);
}

absl::StatusOr<HostPort> HostPort::Parse(absl::string_view text) {
  HostPort hp;
  absl::string_view port;
  if (!text.empty() && text[0] == '[') {
    size_t close = text.find(']');
    if (close == absl::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return absl::InvalidArgumentError(absl::StrCat("bad address '", text, "', want [v6]:port"));
    }
    hp.host = std::string(text.substr(1, close - 1));
    port = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("bad address '", text, "', want host:port"));
    }
    hp.host = std::string(text.substr(0, colon));
    port = text.substr(colon + 1);
  }
  uint32_t p = 0;
  if (!absl::SimpleAtoi(port, &p) || p > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad port in '", text, "'"));
  }
  hp.port = static_cast<uint16_t>(p);
  if (!IpAddress::Parse(hp.host).ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen host must be an IP literal, got '", hp.host, "'"));
  }
  return hp;
}

absl::StatusOr<socklen_t> HostPort::ToSockaddr(sockaddr_storage* out) const {
  std::memset(out, 0, sizeof(*out));
  auto ip = IpAddress::Parse(host);
  if (!ip.ok()) return ip.status();
  if (ip->family == AF_INET) {
    auto* v4 = reinterpret_cast<sockaddr_in*>(out);
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    std::memcpy(&v4->sin_addr, ip->bytes.data(), 4);
    return static_cast<socklen_t>(sizeof(sockaddr_in));
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(out);
  v6->sin6_family = AF_INET6;
  v6->sin6_port = htons(port);
  std::memcpy(&v6->sin6_addr, ip->bytes.data(), 16);
  return static_cast<socklen_t>(sizeof(sockaddr_in6));
}

}  // namespace mta
