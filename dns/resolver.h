// The DNS resolver contract the delivery engine sees: MX and address look-ups.
#ifndef DNS_RESOLVER_H_
#define DNS_RESOLVER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "mta/base/net.h"

namespace mta::dns {

/** One mail exchanger of a domain. */
struct MxHost {
  std::string host;  // lower-case, no trailing dot
  uint16_t preference = 0;

  bool operator==(const MxHost& other) const = default;
};

/** Where mail for a domain goes (RFC 5321 section 5.1). */
struct MxResult {
  enum class Kind {
    // The domain has MX records; `hosts` lists them.
    kMx,
    // The domain exists but has no MX records (NOERROR with no MX answer): RFC 5321
    // section 5.1 implicit MX, `hosts` is {{domain, 0}}. Whether the domain has an address
    // is for ResolveAddresses() to say.
    kImplicit,
    // RFC 7505 null MX (only "." as exchanger): the domain accepts no mail; `hosts` is
    // empty and the message should bounce with 5.1.10.
    kNullMx,
  };
  Kind kind = Kind::kMx;
  // Ordered by preference, lowest first. Hosts of equal preference come in a fresh random
  // order on every call (also when the answer comes from the cache), which spreads load
  // as RFC 5321 section 5.1 asks.
  std::vector<MxHost> hosts;
  // How long this answer may still be used; for kImplicit, the negative-caching TTL of
  // the empty MX answer.
  absl::Duration ttl = absl::ZeroDuration();
};

/**
 * Asynchronous DNS look-ups for delivery.
 *
 * Shard-local: every call and every callback runs on the thread of the event loop the
 * resolver was created for; a resolver is never shared between shards.
 *
 * Callbacks never run inside ResolveMx()/ResolveAddresses(), not even for cached answers
 * or invalid names: they run from a later pass of the event loop, so a caller never
 * re-enters itself. A callback may destroy the resolver.
 *
 * Destroying the resolver drops every callback that has not run yet, without running it
 * (its captures are destroyed); the owner of a resolver therefore shuts down its callers
 * first or does not need their answers any more.
 *
 * Errors (the delivery engine maps them to replies):
 *   - NotFound: the name does not exist (NXDOMAIN); permanent, bounce with 5.1.2. Also a
 *     host that exists but has no A or AAAA record (ResolveAddresses only).
 *   - Unavailable: SERVFAIL, REFUSED, timeouts, connection errors, malformed responses
 *     and any other failure of the DNS path; transient, defer and retry later.
 *   - InvalidArgument: a name that is not a valid domain name (empty, an empty label, a
 *     label over 63 octets, over 253 octets in total, or characters other than ASCII
 *     letters, digits, '-' and '_'; IDNs must be passed as A-labels); permanent.
 */
class Resolver {
 public:
  using MxCallback = absl::AnyInvocable<void(absl::StatusOr<MxResult>)>;
  using AddressCallback = absl::AnyInvocable<void(absl::StatusOr<std::vector<IpAddress>>)>;

  virtual ~Resolver() = default;

  /**
   * Looks up where mail for `domain` goes.
   * @param domain a domain name; one trailing dot is allowed, case does not matter.
   * @param done runs once with the MX hosts, an implicit MX, a null MX or an error.
   */
  virtual void ResolveMx(const std::string& domain, MxCallback done) = 0;

  /**
   * Looks up the A and AAAA records of `host` (both queries run in parallel).
   * @param done runs once with the addresses, IPv4 first, then IPv6, without duplicates.
   *     When one family fails transiently but the other has addresses, those addresses
   *     are returned. NotFound when neither family has an address.
   */
  virtual void ResolveAddresses(const std::string& host, AddressCallback done) = 0;
};

using ResolverPtr = std::unique_ptr<Resolver>;

}  // namespace mta::dns

#endif  // DNS_RESOLVER_H_
