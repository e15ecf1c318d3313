#include "mta/server/admin_api.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <iterator>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "metrics/json.h"
#include "openssl/mem.h"

namespace mta::server {
namespace {

using metrics::HttpRequest;
using metrics::HttpResponse;
using metrics::JsonObject;

HttpResponse Json(int status, std::string body) {
  body.push_back('\n');
  return {.status = status, .content_type = "application/json", .body = std::move(body)};
}

HttpResponse Error(int status, absl::string_view message) {
  return Json(status, JsonObject().Str("error", message).Finish());
}

std::string Arg(const HttpRequest& r, const std::string& key) {
  auto it = r.query.find(key);
  return it == r.query.end() ? "" : it->second;
}

bool Authorized(const AdminApiContext& c, const HttpRequest& r) {
  if (c.token.empty()) return true;
  // RFC 7235: the scheme is case-insensitive; the token is compared in constant time.
  absl::string_view auth = r.authorization;
  if (auth.size() < 7 || !absl::EqualsIgnoreCase(auth.substr(0, 7), "Bearer ")) return false;
  auth.remove_prefix(7);
  return auth.size() == c.token.size() &&
         CRYPTO_memcmp(auth.data(), c.token.data(), c.token.size()) == 0;
}

delivery::DeliveryManager::JobFilter Filter(const HttpRequest& r) {
  std::string domain = Arg(r, "domain");
  std::transform(domain.begin(), domain.end(), domain.begin(),
                 [](unsigned char ch) { return std::tolower(ch); });
  return {.id = Arg(r, "id"), .domain = std::move(domain), .stream = Arg(r, "stream")};
}

std::string Time(int64_t unix_ms) { return EventTime(absl::FromUnixMillis(unix_ms)); }

HttpResponse Health(const AdminApiContext& c) {
  uint64_t queued = 0;
  for (const auto& shard : *c.shards) queued += shard->queued_messages();
  bool healthy = c.spool->Healthy();
  return Json(healthy ? 200 : 503, JsonObject()
                                       .Str("status", healthy ? "ok" : "unhealthy")
                                       .Str("spool_reason", healthy ? "" : c.spool->HealthReason())
                                       .Int("shards", static_cast<int64_t>(c.shards->size()))
                                       .Int("queued_messages", static_cast<int64_t>(queued))
                                       .Finish());
}

HttpResponse Queue(const AdminApiContext& c) {
  using Row = delivery::DeliveryManager::QueueRow;
  std::map<std::pair<std::string, std::string>, Row> rows;
  for (const auto& shard : *c.shards) {
    auto part = shard->Run<std::vector<Row>>([](delivery::DeliveryManager* m) {
      return m != nullptr ? m->QueueSummary() : std::vector<Row>();
    });
    for (Row& r : part) {
      auto [it, inserted] = rows.try_emplace({r.domain, r.stream}, r);
      if (inserted) continue;
      Row& sum = it->second;
      sum.ready += r.ready;
      sum.scheduled += r.scheduled;
      sum.suspended += r.suspended;
      sum.oldest_received_ms = std::min(sum.oldest_received_ms, r.oldest_received_ms);
    }
  }
  std::vector<Row> sorted;
  for (auto& [key, row] : rows) sorted.push_back(std::move(row));
  std::sort(sorted.begin(), sorted.end(), [](const Row& a, const Row& b) {
    return a.ready + a.scheduled + a.suspended > b.ready + b.scheduled + b.suspended;
  });
  int64_t now_ms = absl::ToUnixMillis(absl::Now());
  uint64_t ready = 0, scheduled = 0, suspended = 0;
  std::string list = "[";
  for (const Row& r : sorted) {
    ready += r.ready;
    scheduled += r.scheduled;
    suspended += r.suspended;
    if (list.size() > 1) list.push_back(',');
    list += JsonObject()
                .Str("destination", r.domain)
                .Str("stream", r.stream)
                .Int("ready", static_cast<int64_t>(r.ready))
                .Int("scheduled", static_cast<int64_t>(r.scheduled))
                .Int("suspended", static_cast<int64_t>(r.suspended))
                .Num("oldest_age_s", std::max<int64_t>(0, now_ms - r.oldest_received_ms) / 1000.0)
                .Finish();
  }
  list.push_back(']');
  return Json(200, JsonObject()
                       .Int("ready", static_cast<int64_t>(ready))
                       .Int("scheduled", static_cast<int64_t>(scheduled))
                       .Int("suspended", static_cast<int64_t>(suspended))
                       .Raw("destinations", list)
                       .Finish());
}

// One waiting recipient, as the shard that holds it sees it.
struct RecipientView {
  std::string id, sender, stream, address, domain, state, last_error, auth_user;
  int64_t received_ms = 0, due_ms = 0;
  uint64_t size = 0;
  uint32_t attempts = 0;
};

HttpResponse Messages(const AdminApiContext& c, const HttpRequest& r, bool one) {
  delivery::DeliveryManager::JobFilter filter = Filter(r);
  size_t limit = 100;
  if (std::string l = Arg(r, "limit"); !l.empty() && (!absl::SimpleAtoi(l, &limit) || limit == 0)) {
    return Error(400, "limit must be a positive number");
  }
  limit = std::min<size_t>(limit, 10000);
  // Grouped by message (its recipients may wait on several shards), in id (arrival) order.
  std::map<std::string, std::vector<RecipientView>> messages;
  for (const auto& shard : *c.shards) {
    auto part = shard->Run<std::vector<RecipientView>>([&](delivery::DeliveryManager* m) {
      std::vector<RecipientView> out;
      if (m == nullptr) return out;
      // The `limit` oldest messages (ids sort by arrival) that wait on this shard, then
      // all of their recipients here: the merged list is then exactly the oldest overall.
      std::set<std::string> ids;
      m->ForEachJob(filter, [&](const delivery::Job& job, absl::string_view, absl::Time) {
        const std::string& id = job.message->envelope.id;
        if (ids.size() == limit && id >= *ids.rbegin()) return;
        ids.insert(id);
        if (ids.size() > limit) ids.erase(std::prev(ids.end()));
      });
      m->ForEachJob(filter, [&](const delivery::Job& job, absl::string_view state, absl::Time due) {
        const queue::Envelope& env = job.message->envelope;
        if (!ids.contains(env.id)) return;
        for (uint32_t i : job.recipients) {
          out.push_back({.id = env.id,
                         .sender = env.sender,
                         .stream = env.stream,
                         .address = env.recipients[i].address,
                         .domain = job.domain,
                         .state = std::string(state),
                         .last_error = job.last_error,
                         .auth_user = env.auth_user,
                         .received_ms = env.received_ms,
                         .due_ms = due == absl::InfiniteFuture() ? 0 : absl::ToUnixMillis(due),
                         .size = env.content_bytes,
                         .attempts = job.attempts});
        }
      });
      return out;
    });
    for (RecipientView& v : part) messages[v.id].push_back(std::move(v));
  }
  if (one && messages.empty()) return Error(404, "no recipient of this message is waiting");
  std::string list = "[";
  size_t n = 0;
  for (const auto& [id, recipients] : messages) {
    if (n++ == limit) break;
    const RecipientView& first = recipients.front();
    std::string rcpts = "[";
    for (const RecipientView& v : recipients) {
      if (rcpts.size() > 1) rcpts.push_back(',');
      JsonObject o;
      o.Str("address", v.address).Str("destination", v.domain).Str("state", v.state);
      o.Int("attempts", v.attempts);
      if (v.due_ms != 0) o.Str("next_attempt", Time(v.due_ms));
      rcpts += o.StrIfSet("last_error", v.last_error).Finish();
    }
    rcpts.push_back(']');
    if (list.size() > 1) list.push_back(',');
    list += JsonObject()
                .Str("id", id)
                .Str("sender", first.sender)
                .Str("stream", first.stream)
                .StrIfSet("auth_user", first.auth_user)
                .Str("received", Time(first.received_ms))
                .Int("size", static_cast<int64_t>(first.size))
                .Raw("recipients", rcpts)
                .Finish();
  }
  list.push_back(']');
  if (one) return Json(200, list.substr(1, list.size() - 2));
  return Json(200, JsonObject().Raw("messages", list).Finish());
}

std::string SuspendedJson(const PolicyControl::Suspensions& s) {
  auto array = [](const std::vector<std::string>& v) {
    std::string out = "[";
    for (const std::string& x : v) {
      if (out.size() > 1) out.push_back(',');
      metrics::AppendJsonString(&out, x);
    }
    return out + "]";
  };
  return JsonObject()
      .Raw("destinations", array(s.destinations))
      .Raw("sources", array(s.sources))
      .Raw("streams", array(s.streams))
      .Finish();
}

HttpResponse Suspend(const AdminApiContext& c, const HttpRequest& r, bool suspend) {
  std::vector<std::pair<PolicyControl::Kind, std::string>> targets;
  for (auto [key, kind] : {std::pair{"destination", PolicyControl::Kind::kDestination},
                           std::pair{"source", PolicyControl::Kind::kSource},
                           std::pair{"stream", PolicyControl::Kind::kStream}}) {
    if (std::string v = Arg(r, key); !v.empty()) targets.push_back({kind, v});
  }
  if (targets.size() != 1) return Error(400, "name exactly one of destination, source or stream");
  absl::Status s = c.policy->Set(targets[0].first, targets[0].second, suspend);
  if (!s.ok()) {
    int status = absl::IsNotFound(s)             ? 404
                 : absl::IsInvalidArgument(s)    ? 400
                 : absl::IsFailedPrecondition(s) ? 409
                                                 : 500;
    return Error(status, s.message());
  }
  const char* kind = targets[0].first == PolicyControl::Kind::kDestination ? "destination"
                     : targets[0].first == PolicyControl::Kind::kSource    ? "source"
                                                                           : "stream";
  c.telemetry->AdminAction(suspend ? "suspend" : "resume",
                           absl::StrCat(kind, ":", targets[0].second), "", r.client_ip);
  return Json(200, SuspendedJson(c.policy->Current()));
}

HttpResponse RetryOrBounce(const AdminApiContext& c, const HttpRequest& r, bool bounce) {
  delivery::DeliveryManager::JobFilter filter = Filter(r);
  if (filter.id.empty() && filter.domain.empty() && (bounce || filter.stream.empty())) {
    return Error(400, bounce ? "name id or domain" : "name id, domain or stream");
  }
  std::string reason = Arg(r, "reason");
  if (bounce && reason.empty()) reason = "no reason given";
  size_t recipients = 0;
  for (const auto& shard : *c.shards) {
    recipients += shard->Run<size_t>([&](delivery::DeliveryManager* m) -> size_t {
      if (m == nullptr) return 0;
      return bounce ? m->Cancel(filter, reason) : m->RetryNow(filter);
    });
  }
  std::vector<std::string> parts;
  if (!filter.id.empty()) parts.push_back(absl::StrCat("id:", filter.id));
  if (!filter.domain.empty()) parts.push_back(absl::StrCat("domain:", filter.domain));
  if (!filter.stream.empty()) parts.push_back(absl::StrCat("stream:", filter.stream));
  std::string target = absl::StrJoin(parts, " ");
  c.telemetry->AdminAction(bounce ? "bounce" : "retry", target, bounce ? reason : "", r.client_ip);
  return Json(200, JsonObject().Int("recipients", static_cast<int64_t>(recipients)).Finish());
}

}  // namespace

HttpResponse HandleAdminRequest(const AdminApiContext& c, const HttpRequest& r) {
  bool get = r.method == "GET" || r.method == "HEAD";
  if (r.path == "/healthz") return get ? Health(c) : Error(405, "use GET");
  if (r.path == "/metrics") {
    if (!get) return Error(405, "use GET");
    return {.content_type = "text/plain; version=0.0.4; charset=utf-8",
            .body = c.telemetry->Render(c.spool->Stats().bytes)};
  }
  if (!absl::StartsWith(r.path, "/api/v1/")) return Error(404, "not found");
  if (!Authorized(c, r)) {
    HttpResponse denied = Error(401, "a valid 'Authorization: Bearer <token>' is required");
    return denied;
  }
  absl::string_view what = absl::string_view(r.path).substr(8);
  if (get) {
    if (what == "queue") return Queue(c);
    if (what == "messages") return Messages(c, r, false);
    if (absl::StartsWith(what, "messages/") && what.size() > 9) {
      HttpRequest one = r;
      one.query = {{"id", std::string(what.substr(9))}};
      return Messages(c, one, true);
    }
    if (what == "suspended") return Json(200, SuspendedJson(c.policy->Current()));
    return Error(404, "not found");
  }
  if (r.method != "POST") return Error(405, "use GET or POST");
  if (what == "suspend") return Suspend(c, r, true);
  if (what == "resume") return Suspend(c, r, false);
  if (what == "retry") return RetryOrBounce(c, r, false);
  if (what == "bounce") return RetryOrBounce(c, r, true);
  if (what == "reload") {
    c.telemetry->AdminAction("reload", "", "", r.client_ip);
    kill(getpid(), SIGHUP);  // the main thread reloads, exactly as for a signal
    return Json(202, JsonObject().Str("status", "reloading").Finish());
  }
  return Error(404, "not found");
}

}  // namespace mta::server
