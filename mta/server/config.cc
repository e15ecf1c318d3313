#include "mta/server/config.h"

#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "mta/base/net.h"
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
  max_connections: 10000      # concurrent inbound connections in total (421 beyond)
  max_connections_per_ip: 500 # concurrent inbound connections per client address (421 beyond)
  command_timeout_s: 300      # idle time allowed while waiting for a command
  data_timeout_s: 180         # idle time allowed while receiving message content
  shutdown_grace_s: 30        # on SIGTERM, time given to sessions in DATA to finish
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
  RETURN_IF_ERROR(limits.Int("max_connections", 1, 1000000, &c.max_connections));
  RETURN_IF_ERROR(limits.Int("max_connections_per_ip", 1, 1000000, &c.max_connections_per_ip));
  RETURN_IF_ERROR(limits.Int("command_timeout_s", 1, 3600, &c.command_timeout_s));
  RETURN_IF_ERROR(limits.Int("data_timeout_s", 1, 3600, &c.data_timeout_s));
  RETURN_IF_ERROR(limits.Int("shutdown_grace_s", 0, 3600, &c.shutdown_grace_s));
  RETURN_IF_ERROR(limits.Finish());

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
