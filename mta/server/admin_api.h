// The HTTP control plane: /healthz, /metrics (Prometheus) and the JSON admin API.
#ifndef MTA_SERVER_ADMIN_API_H_
#define MTA_SERVER_ADMIN_API_H_

#include <memory>
#include <string>
#include <vector>

#include "metrics/http_server.h"
#include "mta/server/policy_control.h"
#include "mta/server/shard.h"
#include "mta/server/telemetry.h"
#include "queue/spool.h"

namespace mta::server {

struct AdminApiContext {
  queue::Spool* spool = nullptr;
  const std::vector<std::unique_ptr<Shard>>* shards = nullptr;
  Telemetry* telemetry = nullptr;
  PolicyControl* policy = nullptr;
  std::string token;  // bearer token for /api/; "" = none required
};

/**
 * Routes one request (on the HTTP server's thread):
 *   GET  /healthz                      200 while the spool can take mail, else 503
 *   GET  /metrics                      Prometheus text format 0.0.4
 *   GET  /api/v1/queue                 waiting recipients per destination and stream
 *   GET  /api/v1/messages[?id=&domain=&stream=&limit=]   waiting messages, per recipient
 *   GET  /api/v1/messages/<id>         one message (404 when nothing of it waits)
 *   GET  /api/v1/suspended             what is suspended (configuration and admin)
 *   POST /api/v1/suspend?destination=|source=|stream=    and /api/v1/resume?...
 *   POST /api/v1/retry?id=|domain=|stream=               scheduled retries run now
 *   POST /api/v1/bounce?id=|domain=[&stream=]&reason=    cancels with a bounce (DSN)
 *   POST /api/v1/reload                same as SIGHUP
 * /api/ requires "Authorization: Bearer <token>" when a token is configured.
 */
metrics::HttpResponse HandleAdminRequest(const AdminApiContext& context,
                                         const metrics::HttpRequest& request);

}  // namespace mta::server

#endif  // MTA_SERVER_ADMIN_API_H_
