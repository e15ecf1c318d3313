// A dns::Resolver on c-ares, driven by the shard's io_uring event loop, with a TTL cache.
#ifndef DNS_CARES_RESOLVER_H_
#define DNS_CARES_RESOLVER_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dns/resolver.h"
#include "mta/event/event_loop.h"

namespace mta::dns {

struct CaresResolverOptions {
  // Recursive resolvers to ask: "ip", "ip:port" or "[ipv6]:port" (IP literals only).
  // Empty: the nameservers of /etc/resolv.conf. Default: empty.
  std::vector<std::string> servers;
  // Time to wait for one answer from one server. c-ares doubles it after each round over
  // all servers, so with one server a name fails after about
  // query_timeout_ms * (2^tries - 1). Default: 2000.
  int query_timeout_ms = 2000;
  // Rounds over the server list before a query fails with Unavailable. Default: 2.
  int tries = 2;
  // Most answers kept in the cache, one per (name, record type), positive and negative
  // alike; the least recently used is evicted beyond it. 0 disables caching. Default: 10000.
  size_t cache_entries_max = 10000;
  // Bounds on how long a positive answer is cached, whatever its TTL says; ttl_min also
  // applies to negative answers. Default: 5 s and 1 day.
  absl::Duration ttl_min = absl::Seconds(5);
  absl::Duration ttl_max = absl::Hours(24);
  // How long an NXDOMAIN or NODATA answer is cached when it carries no SOA record to take
  // the negative TTL from (RFC 2308 section 5). Default: 5 minutes.
  absl::Duration negative_ttl_default = absl::Minutes(5);
  // Upper bound on negative caching, whatever the SOA says (RFC 2308 section 5 suggests
  // one to three hours). Default: 1 hour.
  absl::Duration negative_ttl_max = absl::Hours(1);
};

/**
 * Factory for the c-ares resolver.
 *
 * c-ares runs entirely on the shard's event loop: no c-ares thread and no blocking call.
 * Each socket c-ares watches gets an io_uring poll, and one loop timer follows
 * ares_timeout(). Concurrent look-ups of the same name and type share one query.
 * Answers are cached with their TTLs (clamped by the options), NXDOMAIN and NODATA
 * included; failures (SERVFAIL, timeouts, ...) are not cached.
 */
class CaresResolver {
 public:
  /**
   * Creates a resolver bound to `loop`. c-ares reads /etc/resolv.conf here (a blocking
   * file read: call this while the shard starts, not per message).
   * @return InvalidArgument for bad options or server addresses, Internal when c-ares
   *     cannot be initialized.
   * REQUIRES: called on the loop's thread (the ring is single-issuer), and every later
   *     call, including the destructor, is made there too while the loop still runs, so
   *     that the io_uring polls the destructor cancels complete and free their memory on
   *     the loop's next pass. `loop` outlives the resolver.
   */
  static absl::StatusOr<ResolverPtr> Create(event::EventLoop* loop,
                                            const CaresResolverOptions& options);

  CaresResolver() = delete;
};

}  // namespace mta::dns

#endif  // DNS_CARES_RESOLVER_H_
