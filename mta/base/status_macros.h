// Propagation macros for absl::Status / absl::StatusOr, defined once for the project.
#ifndef MTA_BASE_STATUS_MACROS_H_
#define MTA_BASE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MTA_STATUS_CONCAT_INNER_(a, b) a##b
#define MTA_STATUS_CONCAT_(a, b) MTA_STATUS_CONCAT_INNER_(a, b)

#define MTA_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::absl::Status mta_status_ = (expr);       \
    if (!mta_status_.ok()) return mta_status_; \
  } while (0)

#define MTA_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

#define MTA_ASSIGN_OR_RETURN(lhs, expr) \
  MTA_ASSIGN_OR_RETURN_IMPL_(MTA_STATUS_CONCAT_(mta_statusor_, __LINE__), lhs, expr)

#endif  // MTA_BASE_STATUS_MACROS_H_
