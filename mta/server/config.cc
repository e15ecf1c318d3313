#include "mta/server/config.h"

#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "mta/base/net.h"
#include "queue/retry_schedule.h"
#include "yaml-cpp/yaml.h"

namespace mta::server {
namespace {

constexpr char kDefaultYaml[] =
    R"(# mtad configuration. Every key is optional; the values shown are the defaults.
server:
  hostname: ""                # name used in the greeting and Received: ("" = machine hostname)
  shards: 0                   # event-loop threads, each with its own io_uring (0 = one per CPU)
  log_level: info             # debug, info, warning or error
  local_domains: []           # domains this MTA receives for from anyone (bounces, feedback)
spool:
  path: ./var/spool           # RocksDB spool directory (created if missing)
  min_free_disk_mb: 100       # below this free space intake answers 421 instead of accepting
  max_batch: 512              # most messages in one fsynced group commit
  max_bodies_in_memory: 10000 # message bodies kept in RAM; others are read back from the spool
limits:
  max_message_bytes: 26214400 # largest message accepted (552 5.3.4 beyond), advertised in SIZE
  max_recipients: 1000        # recipients per message (452 4.5.3 beyond)
  max_errors: 20              # protocol errors before the session is closed with 421
  max_hops: 50                # Received: fields beyond which a message is a loop (554 5.4.6)
  max_connections: 10000      # concurrent inbound connections in total (421 beyond)
  max_connections_per_ip: 500 # concurrent inbound connections per client address (421 beyond)
  command_timeout_s: 300      # idle time allowed while waiting for a command
  data_timeout_s: 180         # idle time allowed while receiving message content
  shutdown_grace_s: 30        # on SIGTERM, time given to sessions in DATA to finish
http:
  enabled: true               # the HTTP control listener (GET /healthz)
  address: 127.0.0.1:8025     # keep it on loopback: it has no authentication yet
delivery:
  enabled: true               # false: accept and keep mail without delivering it
  helo_name: ""               # name sent in EHLO ("" = server.hostname)
  max_connections_per_destination: 10  # concurrent connections per recipient domain
  max_recipients_per_transaction: 100  # recipients of one message per SMTP transaction
  retry_intervals: "1m,5m,10m,30m,1h,2h,4h"  # waits between attempts; the last repeats
  retry_jitter_percent: 10    # spread of each wait, so deferred mail does not return at once
  queue_lifetime: 5d          # a recipient still deferred after this long bounces (expired)
  delay_warning: 4h           # NOTIFY=DELAY recipients get a delay DSN after this long
  smtp_port: 25               # port of MX hosts (routes name their own); tests use others
  connect_timeout_s: 30       # TCP connect timeout per address
  idle_timeout_s: 5           # an idle outbound connection is kept this long for reuse
  tls: opportunistic          # STARTTLS to MX hosts: none, opportunistic or require
  dns_servers: []             # resolvers as "ip:port"; [] = those in /etc/resolv.conf
  dns_timeout_ms: 3000        # per-query DNS timeout
  routes: []                  # e.g. [{domain: "*", host: 127.0.0.1, port: 2526, tls: none}]
listeners:                    # SMTP listeners; each key below applies per listener
  - name: default             # label used in logs and the spool
    address: 127.0.0.1:2525   # IP literal and port ([v6]:port for IPv6)
    relay_networks: [127.0.0.0/8, "::1/128"]  # clients allowed to relay to any domain
    stream: default           # traffic stream given to messages received here
    add_missing_headers: true # add Message-ID and Date when missing (submission role)
    greeting_delay_ms: 0      # wait before the greeting; clients that talk first are rejected
)";

// Walks one YAML map, remembering which keys were read so unknown ones can be reported.
class MapReader {
 public:
  MapReader(const YAML::Node& node, std::string path, absl::string_view source)
      : node_(node), path_(std::move(path)), source_(source) {}

  absl::Status Check() const {
    if (node_ && !node_.IsNull() && !node_.IsMap()) return Error(node_, "must be a map");
    return absl::OkStatus();
  }

  YAML::Node Get(const std::string& key) {
    seen_.insert(key);
    if (!node_ || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    const YAML::Node& map = node_;  // const lookup: never inserts the key
    return map[key];
  }

  absl::Status String(const std::string& key, std::string* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    if (!n.IsScalar()) return Error(n, key, "must be a string");
    *out = n.Scalar();
    return absl::OkStatus();
  }

  absl::Status Bool(const std::string& key, bool* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    bool v;
    if (!n.IsScalar() || !YAML::convert<bool>::decode(n, v))
      return Error(n, key, "must be true or false");
    *out = v;
    return absl::OkStatus();
  }

  template <typename T>
  absl::Status Int(const std::string& key, uint64_t min, uint64_t max, T* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    uint64_t v;
    const std::string& s = n.IsScalar() ? n.Scalar() : "";
    if (!n.IsScalar() || s.empty() || s[0] == '-' || !YAML::convert<uint64_t>::decode(n, v)) {
      return Error(n, key, absl::StrCat("must be an integer in [", min, ", ", max, "]"));
    }
    if (v < min || v > max) {
      return Error(n, key, absl::StrCat("must be in [", min, ", ", max, "], got ", v));
    }
    *out = static_cast<T>(v);
    return absl::OkStatus();
  }

  absl::Status StringList(const std::string& key, std::vector<std::string>* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    if (!n.IsSequence()) return Error(n, key, "must be a list");
    out->clear();
    for (const YAML::Node& item : n) {
      if (!item.IsScalar()) return Error(item, key, "list items must be strings");
      out->push_back(item.Scalar());
    }
    return absl::OkStatus();
  }

  absl::Status Finish() const {
    if (!node_ || !node_.IsMap()) return absl::OkStatus();
    for (const auto& kv : node_) {
      std::string key = kv.first.Scalar();
      if (!seen_.contains(key)) return Error(kv.first, key, "unknown key");
    }
    return absl::OkStatus();
  }

  absl::Status Error(const YAML::Node& n, absl::string_view key, absl::string_view why) const {
    return Error(n, absl::StrCat(path_.empty() ? "" : path_ + ".", key, ": ", why));
  }
  absl::Status Error(const YAML::Node& n, absl::string_view what) const {
    YAML::Mark m = n.Mark();
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ":", m.line + 1, ":", m.column + 1, ": ", what));
  }

 private:
  YAML::Node node_;
  std::string path_;
  absl::string_view source_;
  absl::flat_hash_set<std::string> seen_;
};

#define RETURN_IF_ERROR(expr) \
  do {                        \
    absl::Status s_ = (expr); \
    if (!s_.ok()) return s_;  \
  } while (0)

absl::Status ParseListener(const YAML::Node& node, size_t index, absl::string_view source,
                           ListenerConfig* l) {
  MapReader r(node, absl::StrCat("listeners[", index, "]"), source);
  if (!node.IsMap()) return r.Error(node, "each listener must be a map");
  RETURN_IF_ERROR(r.String("name", &l->name));
  RETURN_IF_ERROR(r.String("address", &l->address));
  RETURN_IF_ERROR(r.StringList("relay_networks", &l->relay_networks));
  RETURN_IF_ERROR(r.String("stream", &l->stream));
  RETURN_IF_ERROR(r.Bool("add_missing_headers", &l->add_missing_headers));
  RETURN_IF_ERROR(r.Int("greeting_delay_ms", 0, 30000, &l->greeting_delay_ms));
  RETURN_IF_ERROR(r.Finish());
  if (l->name.empty()) return r.Error(node, "name: must not be empty");
  if (auto hp = HostPort::Parse(l->address); !hp.ok()) {
    return r.Error(node["address"], "address", hp.status().message());
  }
  for (const std::string& net : l->relay_networks) {
    if (auto c = Cidr::Parse(net); !c.ok()) {
      return r.Error(node["relay_networks"], "relay_networks", c.status().message());
    }
  }
  if (l->stream.empty()) return r.Error(node, "stream: must not be empty");
  return absl::OkStatus();
}

absl::Status ParseRoute(const YAML::Node& node, size_t index, absl::string_view source,
                        RouteConfig* r) {
  MapReader m(node, absl::StrCat("delivery.routes[", index, "]"), source);
  if (!node.IsMap()) return m.Error(node, "each route must be a map");
  RETURN_IF_ERROR(m.String("domain", &r->domain));
  RETURN_IF_ERROR(m.String("host", &r->host));
  RETURN_IF_ERROR(m.Int("port", 1, 65535, &r->port));
  RETURN_IF_ERROR(m.String("tls", &r->tls));
  RETURN_IF_ERROR(m.Finish());
  if (r->domain.empty()) return m.Error(node, "domain: must be a domain or \"*\"");
  if (r->tls != "none" && r->tls != "opportunistic" && r->tls != "require") {
    return m.Error(node, "tls: must be none, opportunistic or require");
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view DefaultConfigYaml() { return kDefaultYaml; }

absl::StatusOr<Config> ParseConfig(absl::string_view yaml, absl::string_view source) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ":", e.mark.line + 1, ":", e.mark.column + 1, ": ", e.msg));
  }
  Config c;
  MapReader top(root, "", source);
  RETURN_IF_ERROR(top.Check());

  MapReader server(top.Get("server"), "server", source);
  RETURN_IF_ERROR(server.Check());
  RETURN_IF_ERROR(server.String("hostname", &c.hostname));
  RETURN_IF_ERROR(server.Int("shards", 0, 256, &c.shards));
  RETURN_IF_ERROR(server.String("log_level", &c.log_level));
  RETURN_IF_ERROR(server.StringList("local_domains", &c.local_domains));
  RETURN_IF_ERROR(server.Finish());
  if (c.log_level != "debug" && c.log_level != "info" && c.log_level != "warning" &&
      c.log_level != "error") {
    return server.Error(root["server"]["log_level"], "log_level",
                        "must be debug, info, warning or error");
  }

  MapReader spool(top.Get("spool"), "spool", source);
  RETURN_IF_ERROR(spool.Check());
  RETURN_IF_ERROR(spool.String("path", &c.spool_path));
  RETURN_IF_ERROR(spool.Int("min_free_disk_mb", 0, 1ull << 30, &c.spool_min_free_disk_mb));
  RETURN_IF_ERROR(spool.Int("max_batch", 1, 100000, &c.spool_max_batch));
  RETURN_IF_ERROR(spool.Int("max_bodies_in_memory", 0, 100000000, &c.spool_max_bodies_in_memory));
  RETURN_IF_ERROR(spool.Finish());
  if (c.spool_path.empty()) return spool.Error(root["spool"], "path", "must not be empty");

  MapReader limits(top.Get("limits"), "limits", source);
  RETURN_IF_ERROR(limits.Check());
  RETURN_IF_ERROR(limits.Int("max_message_bytes", 1024, 1ull << 31, &c.max_message_bytes));
  RETURN_IF_ERROR(limits.Int("max_recipients", 1, 100000, &c.max_recipients));
  RETURN_IF_ERROR(limits.Int("max_errors", 1, 1000, &c.max_errors));
  RETURN_IF_ERROR(limits.Int("max_hops", 2, 1000, &c.max_hops));
  RETURN_IF_ERROR(limits.Int("max_connections", 1, 1000000, &c.max_connections));
  RETURN_IF_ERROR(limits.Int("max_connections_per_ip", 1, 1000000, &c.max_connections_per_ip));
  RETURN_IF_ERROR(limits.Int("command_timeout_s", 1, 3600, &c.command_timeout_s));
  RETURN_IF_ERROR(limits.Int("data_timeout_s", 1, 3600, &c.data_timeout_s));
  RETURN_IF_ERROR(limits.Int("shutdown_grace_s", 0, 3600, &c.shutdown_grace_s));
  RETURN_IF_ERROR(limits.Finish());

  MapReader http(top.Get("http"), "http", source);
  RETURN_IF_ERROR(http.Check());
  RETURN_IF_ERROR(http.Bool("enabled", &c.http_enabled));
  RETURN_IF_ERROR(http.String("address", &c.http_address));
  RETURN_IF_ERROR(http.Finish());
  if (auto hp = HostPort::Parse(c.http_address); !hp.ok()) {
    return http.Error(root["http"]["address"], "address", hp.status().message());
  }

  MapReader delivery(top.Get("delivery"), "delivery", source);
  RETURN_IF_ERROR(delivery.Check());
  RETURN_IF_ERROR(delivery.Bool("enabled", &c.delivery_enabled));
  RETURN_IF_ERROR(delivery.String("helo_name", &c.helo_name));
  RETURN_IF_ERROR(delivery.Int("max_connections_per_destination", 1, 10000,
                               &c.max_connections_per_destination));
  RETURN_IF_ERROR(
      delivery.Int("max_recipients_per_transaction", 1, 100000, &c.max_recipients_per_transaction));
  RETURN_IF_ERROR(delivery.String("retry_intervals", &c.retry_intervals));
  RETURN_IF_ERROR(delivery.Int("retry_jitter_percent", 0, 50, &c.retry_jitter_percent));
  RETURN_IF_ERROR(delivery.String("queue_lifetime", &c.queue_lifetime));
  RETURN_IF_ERROR(delivery.String("delay_warning", &c.delay_warning));
  RETURN_IF_ERROR(delivery.Int("smtp_port", 1, 65535, &c.smtp_port));
  RETURN_IF_ERROR(delivery.Int("connect_timeout_s", 1, 600, &c.connect_timeout_s));
  RETURN_IF_ERROR(delivery.Int("idle_timeout_s", 0, 3600, &c.idle_timeout_s));
  RETURN_IF_ERROR(delivery.String("tls", &c.tls));
  RETURN_IF_ERROR(delivery.StringList("dns_servers", &c.dns_servers));
  RETURN_IF_ERROR(delivery.Int("dns_timeout_ms", 10, 60000, &c.dns_timeout_ms));
  YAML::Node routes = delivery.Get("routes");
  RETURN_IF_ERROR(delivery.Finish());
  if (auto iv = queue::RetryPolicy::ParseIntervals(c.retry_intervals); !iv.ok()) {
    return delivery.Error(root["delivery"]["retry_intervals"], "retry_intervals",
                          iv.status().message());
  }
  for (const char* key : {"queue_lifetime", "delay_warning"}) {
    const std::string& v =
        std::string(key) == "queue_lifetime" ? c.queue_lifetime : c.delay_warning;
    auto d = queue::RetryPolicy::ParseIntervals(v);
    if (!d.ok() || d->size() != 1) {
      return delivery.Error(root["delivery"][key], key,
                            "must be one duration such as 30s, 4h or 5d");
    }
  }
  if (c.tls != "none" && c.tls != "opportunistic" && c.tls != "require") {
    return delivery.Error(root["delivery"]["tls"], "tls", "must be none, opportunistic or require");
  }
  for (const std::string& server : c.dns_servers) {
    if (auto hp = HostPort::Parse(server); !hp.ok()) {
      return delivery.Error(root["delivery"]["dns_servers"], "dns_servers", hp.status().message());
    }
  }
  if (routes) {
    if (!routes.IsSequence()) return delivery.Error(routes, "routes", "must be a list");
    for (size_t i = 0; i < routes.size(); ++i) {
      RouteConfig r;
      RETURN_IF_ERROR(ParseRoute(routes[i], i, source, &r));
      c.routes.push_back(std::move(r));
    }
  }

  YAML::Node listeners = top.Get("listeners");
  if (listeners) {
    if (!listeners.IsSequence() || listeners.size() == 0) {
      return top.Error(listeners, "listeners", "must be a non-empty list");
    }
    c.listeners.clear();
    absl::flat_hash_set<std::string> names;
    for (size_t i = 0; i < listeners.size(); ++i) {
      ListenerConfig l;
      RETURN_IF_ERROR(ParseListener(listeners[i], i, source, &l));
      if (!names.insert(l.name).second) {
        return top.Error(listeners[i], "listeners", absl::StrCat("duplicate name '", l.name, "'"));
      }
      c.listeners.push_back(std::move(l));
    }
  }
  RETURN_IF_ERROR(top.Finish());
  return c;
}

absl::StatusOr<Config> LoadConfigFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open config file"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseConfig(ss.str(), path);
}

}  // namespace mta::server
