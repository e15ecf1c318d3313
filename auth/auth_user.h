// An SMTP AUTH identity and what it may do: the value a successful login hands the session.
#ifndef AUTH_AUTH_USER_H_
#define AUTH_AUTH_USER_H_

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace mta::auth {

/** A user that passed SMTP AUTH (RFC 4954), as its password file entry describes it. */
struct AuthUser {
  std::string name;
  // Domains the user may send from (MAIL FROM), lower-case; ignored when any_sender_domain.
  std::vector<std::string> sender_domains;
  bool any_sender_domain = false;  // the entry's domain list was '*'
  std::string stream;              // stream of the user's messages; "" = the listener chooses

  /** Whether MAIL FROM with this (already lower-cased) domain is allowed. */
  bool MaySendFrom(absl::string_view domain) const {
    if (any_sender_domain) return true;
    if (domain.empty()) return false;  // the null sender has no domain to check
    return std::find(sender_domains.begin(), sender_domains.end(), domain) != sender_domains.end();
  }

  bool operator==(const AuthUser&) const = default;
};

}  // namespace mta::auth

#endif  // AUTH_AUTH_USER_H_
