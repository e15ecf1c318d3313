// Dates as RFC 5322 section 3.3 writes them, in UTC: "Fri, 04 Dec 2026 10:00:00 +0000".
#ifndef MTA_BASE_RFC5322_DATE_H_
#define MTA_BASE_RFC5322_DATE_H_

#include <string>

#include "absl/time/time.h"

namespace mta {

inline std::string Rfc5322Date(absl::Time t) {
  return absl::FormatTime("%a, %d %b %Y %H:%M:%S +0000", t, absl::UTCTimeZone());
}

}  // namespace mta

#endif  // MTA_BASE_RFC5322_DATE_H_
