#include "mta/server/config.h"

#include <arpa/inet.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "mta/base/net.h"
#include "mta/delivery/bounce_class.h"
#include "queue/retry_schedule.h"
#include "re2/re2.h"
#include "yaml-cpp/yaml.h"

namespace mta::server {
namespace {

// Walks one YAML map, remembering which keys were read so unknown ones can be reported.
class MapReader {
 public:
  MapReader(const YAML::Node& node, std::string path, absl::string_view source)
      : node_(node), path_(std::move(path)), source_(source) {}

  absl::Status Check() const {
    if (node_ && !node_.IsNull() && !node_.IsMap()) {
      return Error(node_, path_.empty() ? "must be a map" : absl::StrCat(path_, ": must be a map"));
    }
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

  template <typename T>
  absl::Status SignedInt(const std::string& key, int64_t min, int64_t max, T* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    int64_t v;
    if (!n.IsScalar() || n.Scalar().empty() || !YAML::convert<int64_t>::decode(n, v)) {
      return Error(n, key, absl::StrCat("must be an integer in [", min, ", ", max, "]"));
    }
    if (v < min || v > max) {
      return Error(n, key, absl::StrCat("must be in [", min, ", ", max, "], got ", v));
    }
    *out = static_cast<T>(v);
    return absl::OkStatus();
  }

  absl::Status Double(const std::string& key, double* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    double v;
    if (!n.IsScalar() || !YAML::convert<double>::decode(n, v)) {
      return Error(n, key, "must be a number");
    }
    *out = v;
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
    return Error(n, absl::StrCat(Path(key), ": ", why));
  }
  absl::Status Error(const YAML::Node& n, absl::string_view what) const {
    // A key that is absent has no position: point at its map instead (or at nothing).
    YAML::Mark m = n.IsDefined()       ? n.Mark()
                   : node_.IsDefined() ? node_.Mark()
                                       : YAML::Mark::null_mark();
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ":", m.line + 1, ":", m.column + 1, ": ", what));
  }
  /** An error about `key`'s value, positioned at the value (at the map if it is absent). */
  absl::Status ErrorAt(const std::string& key, absl::string_view why) const {
    YAML::Node n = node_;
    if (node_.IsDefined() && node_.IsMap()) {
      const YAML::Node& map = node_;
      if (YAML::Node child = map[key]; child.IsDefined()) n = child;
    }
    return Error(n, key, why);
  }

  /** The full path of `key` in this map, e.g. "shaping.rules[2].domain". */
  std::string Path(absl::string_view key) const {
    return path_.empty() ? std::string(key) : absl::StrCat(path_, ".", key);
  }
  absl::string_view source() const { return source_; }

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

// Reads the optional list of maps at `key`: each item starts as `proto` and is filled by
// `parse(item_node, item_path, &item)`.
template <typename T, typename ParseItem>
absl::Status ReadMapList(MapReader& r, const std::string& key, std::vector<T>* out, ParseItem parse,
                         const T& proto = T()) {
  YAML::Node list = r.Get(key);
  if (!list) return absl::OkStatus();
  if (!list.IsSequence()) return r.Error(list, key, "must be a list");
  out->clear();
  for (size_t i = 0; i < list.size(); ++i) {
    const YAML::Node item = list[i];
    std::string path = absl::StrCat(r.Path(key), "[", i, "]");
    if (!item.IsMap()) return r.Error(item, absl::StrCat(path, ": must be a map"));
    T value = proto;
    RETURN_IF_ERROR(parse(item, path, &value));
    out->push_back(std::move(value));
  }
  return absl::OkStatus();
}

using NameSet = absl::flat_hash_set<std::string>;

std::string Quoted(absl::string_view s) { return absl::StrCat("\"", s, "\""); }

bool IsOneDuration(const std::string& text) {
  auto d = queue::RetryPolicy::ParseIntervals(text);
  return d.ok() && d->size() == 1;
}
constexpr char kOneDuration[] = "must be one duration such as 30s, 5m or 4h";

// "N/s", "N/m" or "N/h" with an integer N >= 1.
bool IsMessageRate(absl::string_view text) {
  size_t slash = text.find('/');
  if (slash == absl::string_view::npos || slash == 0 || slash + 2 != text.size()) return false;
  absl::string_view n = text.substr(0, slash);
  uint64_t v;
  if (!std::all_of(n.begin(), n.end(), absl::ascii_isdigit) || !absl::SimpleAtoi(n, &v) || v < 1) {
    return false;
  }
  char unit = text.back();
  return unit == 's' || unit == 'm' || unit == 'h';
}

// A header field name (RFC 5322: printable ASCII except ':').
bool IsHeaderName(absl::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(),
                                      [](char ch) { return ch > ' ' && ch < 127 && ch != ':'; });
}

// An EHLO name the SMTP client accepts: printable ASCII without spaces, 1..255 characters.
bool IsEhloName(absl::string_view name) {
  return !name.empty() && name.size() <= 255 &&
         std::all_of(name.begin(), name.end(), [](char ch) { return ch > ' ' && ch < 127; });
}

bool IsStreamName(absl::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char ch) {
    return absl::ascii_isalnum(ch) || ch == '_' || ch == '.' || ch == '-';
  });
}

std::string UnknownStream(absl::string_view name) {
  return absl::StrCat("unknown stream '", name, "' (not defined in streams)");
}

absl::Status ParseListener(const YAML::Node& node, size_t index, absl::string_view source,
                           const NameSet& streams, ListenerConfig* l) {
  MapReader r(node, absl::StrCat("listeners[", index, "]"), source);
  if (!node.IsMap()) return r.Error(node, "each listener must be a map");
  RETURN_IF_ERROR(r.String("name", &l->name));
  RETURN_IF_ERROR(r.String("address", &l->address));
  RETURN_IF_ERROR(r.StringList("relay_networks", &l->relay_networks));
  {
    MapReader a(r.Get("auth"), r.Path("auth"), source);
    RETURN_IF_ERROR(a.Check());
    RETURN_IF_ERROR(a.Bool("enabled", &l->auth_enabled));
    RETURN_IF_ERROR(a.Bool("trusted", &l->auth_trusted));
    RETURN_IF_ERROR(a.Finish());
  }
  RETURN_IF_ERROR(r.String("stream", &l->stream));
  RETURN_IF_ERROR(
      ReadMapList(r, "stream_networks", &l->stream_networks,
                  [&](const YAML::Node& item, const std::string& path, StreamNetworkConfig* sn) {
                    MapReader m(item, path, source);
                    RETURN_IF_ERROR(m.String("network", &sn->network));
                    RETURN_IF_ERROR(m.String("stream", &sn->stream));
                    RETURN_IF_ERROR(m.Finish());
                    if (auto c = Cidr::Parse(sn->network); !c.ok()) {
                      return m.ErrorAt("network", c.status().message());
                    }
                    if (!streams.contains(sn->stream))
                      return m.ErrorAt("stream", UnknownStream(sn->stream));
                    return absl::OkStatus();
                  }));
  RETURN_IF_ERROR(r.String("stream_header", &l->stream_header));
  RETURN_IF_ERROR(r.Bool("add_missing_headers", &l->add_missing_headers));
  RETURN_IF_ERROR(r.Int("greeting_delay_ms", 0, 30000, &l->greeting_delay_ms));
  RETURN_IF_ERROR(r.String("tls", &l->tls));
  RETURN_IF_ERROR(r.String("tls_cert_file", &l->tls_cert_file));
  RETURN_IF_ERROR(r.String("tls_key_file", &l->tls_key_file));
  RETURN_IF_ERROR(r.Finish());
  if (l->tls != "none" && l->tls != "starttls" && l->tls != "implicit") {
    return r.Error(node["tls"], "tls", "must be none, starttls or implicit");
  }
  if (l->tls != "none" && (l->tls_cert_file.empty() || l->tls_key_file.empty())) {
    return r.Error(node["tls"], "tls", "starttls and implicit need tls_cert_file and tls_key_file");
  }
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
  if (!streams.contains(l->stream)) return r.ErrorAt("stream", UnknownStream(l->stream));
  if (!l->stream_header.empty() && !IsHeaderName(l->stream_header)) {
    return r.ErrorAt("stream_header",
                     "must be a header field name (printable ASCII without ':' or spaces)");
  }
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

absl::Status ParseBackoff(const YAML::Node& node, const std::string& path, absl::string_view source,
                          BackoffConfig* b) {
  MapReader m(node, path, source);
  RETURN_IF_ERROR(m.Int("code", 0, 599, &b->code));
  RETURN_IF_ERROR(m.String("enhanced", &b->enhanced));
  RETURN_IF_ERROR(m.String("text", &b->text));
  RETURN_IF_ERROR(m.String("action", &b->action));
  RETURN_IF_ERROR(m.String("duration", &b->duration));
  RETURN_IF_ERROR(m.Double("rate_factor", &b->rate_factor));
  RETURN_IF_ERROR(m.Finish());
  if (!std::all_of(b->enhanced.begin(), b->enhanced.end(),
                   [](char ch) { return absl::ascii_isdigit(ch) || ch == '.'; })) {
    return m.ErrorAt("enhanced", "must be an enhanced status code or its prefix, e.g. \"4.7.\"");
  }
  if (!b->text.empty()) {
    RE2::Options options;
    options.set_log_errors(false);
    RE2 re(b->text, options);
    if (!re.ok()) {
      return m.ErrorAt("text", absl::StrCat("bad regular expression: ", re.error()));
    }
  }
  if (b->action != "suspend" && b->action != "slow") {
    return m.ErrorAt("action", "must be suspend or slow");
  }
  if (!IsOneDuration(b->duration)) return m.ErrorAt("duration", kOneDuration);
  if (!(b->rate_factor > 0 && b->rate_factor < 1)) {
    return m.ErrorAt("rate_factor",
                     absl::StrCat("must be greater than 0 and less than 1, got ", b->rate_factor));
  }
  return absl::OkStatus();
}

// Reads the limit keys of a shaping map; keys that are absent keep `l`'s values.
absl::Status ReadLimits(MapReader& r, ShapingLimitsConfig* l) {
  RETURN_IF_ERROR(r.Int("max_connections", 1, 10000, &l->max_connections));
  RETURN_IF_ERROR(
      r.Int("max_messages_per_connection", 0, 1000000, &l->max_messages_per_connection));
  RETURN_IF_ERROR(r.String("max_message_rate", &l->max_message_rate));
  RETURN_IF_ERROR(r.Int("rate_burst", 0, 1000000, &l->rate_burst));
  RETURN_IF_ERROR(
      r.Int("max_recipients_per_transaction", 1, 100000, &l->max_recipients_per_transaction));
  RETURN_IF_ERROR(r.Int("connect_timeout_s", 1, 600, &l->connect_timeout_s));
  RETURN_IF_ERROR(r.Int("idle_timeout_s", 0, 3600, &l->idle_timeout_s));
  RETURN_IF_ERROR(
      ReadMapList(r, "backoff", &l->backoff,
                  [&](const YAML::Node& item, const std::string& path, BackoffConfig* b) {
                    return ParseBackoff(item, path, r.source(), b);
                  }));
  RETURN_IF_ERROR(r.String("backoff_restore_interval", &l->backoff_restore_interval));
  return absl::OkStatus();
}

// Checks the values ReadLimits read (after the map's unknown keys were reported).
absl::Status CheckLimits(const MapReader& r, const ShapingLimitsConfig& l) {
  if (!l.max_message_rate.empty() && !IsMessageRate(l.max_message_rate)) {
    return r.ErrorAt("max_message_rate",
                     absl::StrCat("must be \"\" or N/s, N/m or N/h with an integer N >= 1, got ",
                                  Quoted(l.max_message_rate)));
  }
  if (!IsOneDuration(l.backoff_restore_interval)) {
    return r.ErrorAt("backoff_restore_interval", kOneDuration);
  }
  return absl::OkStatus();
}

absl::Status ParseShapingRule(const YAML::Node& node, const std::string& path,
                              absl::string_view source, NameSet* names, ShapingRuleConfig* rule) {
  MapReader m(node, path, source);
  RETURN_IF_ERROR(m.String("name", &rule->name));
  RETURN_IF_ERROR(m.String("domain", &rule->domain));
  RETURN_IF_ERROR(m.String("domain_suffix", &rule->domain_suffix));
  RETURN_IF_ERROR(m.String("mx_suffix", &rule->mx_suffix));
  RETURN_IF_ERROR(ReadLimits(m, &rule->limits));
  RETURN_IF_ERROR(m.Finish());
  if (rule->name.empty()) return m.ErrorAt("name", "must not be empty");
  if (rule->name == "default") {
    return m.ErrorAt("name", "\"default\" is reserved for shaping.default");
  }
  if (!names->insert(rule->name).second) {
    return m.ErrorAt("name", absl::StrCat("duplicate rule name '", rule->name, "'"));
  }
  int matches = !rule->domain.empty() + !rule->domain_suffix.empty() + !rule->mx_suffix.empty();
  if (matches != 1) {
    return m.Error(node, absl::StrCat(path,
                                      ": exactly one of domain, domain_suffix or mx_suffix must "
                                      "be set"));
  }
  absl::AsciiStrToLower(&rule->domain);
  absl::AsciiStrToLower(&rule->domain_suffix);
  absl::AsciiStrToLower(&rule->mx_suffix);
  if (absl::StartsWith(rule->domain, ".")) {
    return m.ErrorAt("domain", "must not start with '.' (use domain_suffix for subdomains)");
  }
  for (const char* key : {"domain_suffix", "mx_suffix"}) {
    const std::string& suffix =
        std::string(key) == "domain_suffix" ? rule->domain_suffix : rule->mx_suffix;
    if (!suffix.empty() && (suffix.size() < 2 || suffix[0] != '.')) {
      return m.ErrorAt(
          key, absl::StrCat("must start with '.' and name a domain, e.g. \".",
                            suffix == "." ? "example.com" : suffix, "\", got ", Quoted(suffix)));
    }
  }
  return CheckLimits(m, rule->limits);
}

bool IsDnsName(absl::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  for (absl::string_view label : absl::StrSplit(name, '.')) {
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return false;
    }
    for (char ch : label) {
      if (!absl::ascii_isalnum(ch) && ch != '-' && ch != '_') return false;
    }
  }
  return true;
}

// 127.0.0.0/8, ::1 or "localhost": only local clients reach the address.
bool IsLoopback(const HostPort& hp) {
  if (hp.host == "localhost") return true;
  in_addr v4;
  in6_addr v6;
  if (inet_pton(AF_INET, hp.host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  return inet_pton(AF_INET6, hp.host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

absl::Status ParseBounceRule(const YAML::Node& node, const std::string& path,
                             absl::string_view source, BounceRuleConfig* r) {
  MapReader m(node, path, source);
  RETURN_IF_ERROR(m.String("class", &r->bounce_class));
  RETURN_IF_ERROR(m.Int("code", 0, 599, &r->code));
  RETURN_IF_ERROR(m.String("enhanced", &r->enhanced));
  RETURN_IF_ERROR(m.String("text", &r->text));
  RETURN_IF_ERROR(m.Finish());
  if (auto c = delivery::ParseBounceClass(r->bounce_class); !c.ok()) {
    return m.ErrorAt("class", c.status().message());
  }
  if (r->code != 0 && r->code < 400) return m.ErrorAt("code", "must be 0 or a 4xx/5xx code");
  if (!r->text.empty()) {
    RE2::Options options;
    options.set_log_errors(false);
    RE2 re(r->text, options);
    if (!re.ok()) return m.ErrorAt("text", absl::StrCat("bad regular expression: ", re.error()));
  }
  return absl::OkStatus();
}

absl::Status ParseDkimSigning(const YAML::Node& node, const std::string& path,
                              absl::string_view source, DkimSigningConfig* d) {
  MapReader m(node, path, source);
  RETURN_IF_ERROR(m.String("domain", &d->domain));
  RETURN_IF_ERROR(m.String("selector", &d->selector));
  RETURN_IF_ERROR(m.String("key_file", &d->key_file));
  RETURN_IF_ERROR(m.StringList("headers", &d->headers));
  RETURN_IF_ERROR(m.StringList("oversign", &d->oversign));
  RETURN_IF_ERROR(m.String("canonicalization", &d->canonicalization));
  RETURN_IF_ERROR(m.String("expire", &d->expire));
  RETURN_IF_ERROR(m.Finish());
  d->domain = absl::AsciiStrToLower(d->domain);
  if (!IsDnsName(d->domain)) return m.ErrorAt("domain", "must be a domain name");
  if (!IsDnsName(d->selector)) return m.ErrorAt("selector", "must be a DNS label such as s1");
  if (d->key_file.empty()) return m.ErrorAt("key_file", "must name a PEM private key file");
  for (const std::string& h : d->headers) {
    if (!IsHeaderName(h)) return m.ErrorAt("headers", absl::StrCat("bad header name ", Quoted(h)));
  }
  if (!d->headers.empty() &&
      std::none_of(d->headers.begin(), d->headers.end(),
                   [](const std::string& h) { return absl::EqualsIgnoreCase(h, "from"); })) {
    return m.ErrorAt("headers", "must include From");
  }
  for (const std::string& h : d->oversign) {
    if (!IsHeaderName(h)) return m.ErrorAt("oversign", absl::StrCat("bad header name ", Quoted(h)));
  }
  static constexpr absl::string_view kCanon[] = {"relaxed/relaxed", "simple/simple",
                                                 "relaxed/simple", "simple/relaxed"};
  if (std::find(std::begin(kCanon), std::end(kCanon), d->canonicalization) == std::end(kCanon)) {
    return m.ErrorAt("canonicalization",
                     "must be relaxed/relaxed, simple/simple, relaxed/simple or simple/relaxed");
  }
  if (!d->expire.empty() && !IsOneDuration(d->expire)) return m.ErrorAt("expire", kOneDuration);
  return absl::OkStatus();
}

absl::Status ParseStream(const YAML::Node& node, const std::string& path, absl::string_view source,
                         const NameSet& pools, NameSet* names, StreamConfig* st) {
  MapReader m(node, path, source);
  RETURN_IF_ERROR(m.String("name", &st->name));
  RETURN_IF_ERROR(m.String("pool", &st->pool));
  RETURN_IF_ERROR(m.SignedInt("priority", -1000, 1000, &st->priority));
  RETURN_IF_ERROR(m.String("retry_intervals", &st->retry_intervals));
  RETURN_IF_ERROR(m.String("queue_lifetime", &st->queue_lifetime));
  RETURN_IF_ERROR(m.Finish());
  if (!IsStreamName(st->name)) {
    return m.ErrorAt("name", "must be non-empty letters, digits, '_', '.' or '-'");
  }
  if (!names->insert(st->name).second) {
    return m.ErrorAt("name", absl::StrCat("duplicate stream name '", st->name, "'"));
  }
  if (!st->pool.empty() && !pools.contains(st->pool)) {
    return m.ErrorAt("pool", absl::StrCat("unknown pool '", st->pool, "' (not in egress.pools)"));
  }
  if (!st->retry_intervals.empty()) {
    if (auto iv = queue::RetryPolicy::ParseIntervals(st->retry_intervals); !iv.ok()) {
      return m.ErrorAt("retry_intervals", iv.status().message());
    }
  }
  if (!st->queue_lifetime.empty() && !IsOneDuration(st->queue_lifetime)) {
    return m.ErrorAt("queue_lifetime", kOneDuration);
  }
  return absl::OkStatus();
}

}  // namespace

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
  RETURN_IF_ERROR(http.String("admin_token_file", &c.http_admin_token_file));
  RETURN_IF_ERROR(http.Finish());
  if (auto hp = HostPort::Parse(c.http_address); !hp.ok()) {
    return http.Error(root["http"]["address"], "address", hp.status().message());
  } else if (c.http_enabled && c.http_admin_token_file.empty() && !IsLoopback(*hp)) {
    return http.ErrorAt("admin_token_file",
                        "must be set when http.address is not a loopback address");
  }

  MapReader metrics(top.Get("metrics"), "metrics", source);
  RETURN_IF_ERROR(metrics.Check());
  RETURN_IF_ERROR(metrics.Int("top_destinations", 0, 100000, &c.metrics_top_destinations));
  RETURN_IF_ERROR(metrics.Finish());

  MapReader events(top.Get("events"), "events", source);
  RETURN_IF_ERROR(events.Check());
  RETURN_IF_ERROR(events.String("directory", &c.events_directory));
  RETURN_IF_ERROR(events.Int("max_file_mb", 1, 1ull << 20, &c.events_max_file_mb));
  RETURN_IF_ERROR(events.Int("max_files", 1, 100000, &c.events_max_files));
  RETURN_IF_ERROR(events.Bool("fsync", &c.events_fsync));
  MapReader webhook(events.Get("webhook"), "events.webhook", source);
  RETURN_IF_ERROR(webhook.Check());
  RETURN_IF_ERROR(webhook.String("url", &c.events_webhook_url));
  RETURN_IF_ERROR(webhook.String("token_file", &c.events_webhook_token_file));
  RETURN_IF_ERROR(webhook.Int("batch", 1, 100000, &c.events_webhook_batch));
  RETURN_IF_ERROR(webhook.Int("max_backlog_mb", 1, 1ull << 30, &c.events_webhook_max_backlog_mb));
  RETURN_IF_ERROR(webhook.Finish());
  RETURN_IF_ERROR(events.Finish());
  if (!c.events_webhook_url.empty()) {
    if (!absl::StartsWith(c.events_webhook_url, "http://") &&
        !absl::StartsWith(c.events_webhook_url, "https://")) {
      return webhook.ErrorAt("url", "must start with http:// or https://");
    }
    if (c.events_directory.empty()) {
      return webhook.ErrorAt("url", "needs events.directory (the files are its backlog)");
    }
  }

  RETURN_IF_ERROR(
      ReadMapList(top, "bounce_rules", &c.bounce_rules,
                  [&](const YAML::Node& node, const std::string& path, BounceRuleConfig* r) {
                    return ParseBounceRule(node, path, source, r);
                  }));

  MapReader delivery(top.Get("delivery"), "delivery", source);
  RETURN_IF_ERROR(delivery.Check());
  RETURN_IF_ERROR(delivery.Bool("enabled", &c.delivery_enabled));
  RETURN_IF_ERROR(delivery.String("helo_name", &c.helo_name));
  RETURN_IF_ERROR(delivery.String("retry_intervals", &c.retry_intervals));
  RETURN_IF_ERROR(delivery.Int("retry_jitter_percent", 0, 50, &c.retry_jitter_percent));
  RETURN_IF_ERROR(delivery.String("queue_lifetime", &c.queue_lifetime));
  RETURN_IF_ERROR(delivery.String("delay_warning", &c.delay_warning));
  RETURN_IF_ERROR(delivery.Int("smtp_port", 1, 65535, &c.smtp_port));
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

  MapReader egress(top.Get("egress"), "egress", source);
  RETURN_IF_ERROR(egress.Check());
  NameSet source_names;
  RETURN_IF_ERROR(ReadMapList(
      egress, "sources", &c.sources,
      [&](const YAML::Node& item, const std::string& path, SourceConfig* src) {
        MapReader m(item, path, source);
        RETURN_IF_ERROR(m.String("name", &src->name));
        RETURN_IF_ERROR(m.String("address", &src->address));
        RETURN_IF_ERROR(m.String("ehlo", &src->ehlo));
        RETURN_IF_ERROR(m.Finish());
        if (src->name.empty()) return m.ErrorAt("name", "must not be empty");
        if (!source_names.insert(src->name).second) {
          return m.ErrorAt("name", absl::StrCat("duplicate source name '", src->name, "'"));
        }
        if (auto ip = IpAddress::Parse(src->address); !ip.ok()) {
          return m.ErrorAt(
              "address", absl::StrCat("must be an IPv4 or IPv6 address: ", ip.status().message()));
        }
        if (!src->ehlo.empty() && !IsEhloName(src->ehlo)) {
          return m.ErrorAt("ehlo", "must be 1 to 255 printable ASCII characters without spaces");
        }
        return absl::OkStatus();
      }));
  NameSet pool_names;
  RETURN_IF_ERROR(ReadMapList(
      egress, "pools", &c.pools,
      [&](const YAML::Node& item, const std::string& path, PoolConfig* pool) {
        MapReader m(item, path, source);
        RETURN_IF_ERROR(m.String("name", &pool->name));
        NameSet members;
        RETURN_IF_ERROR(ReadMapList(
            m, "sources", &pool->sources,
            [&](const YAML::Node& member_node, const std::string& member_path,
                PoolMemberConfig* member) {
              MapReader mm(member_node, member_path, source);
              RETURN_IF_ERROR(mm.String("source", &member->source));
              RETURN_IF_ERROR(mm.Int("weight", 1, 1000, &member->weight));
              RETURN_IF_ERROR(mm.Finish());
              if (!source_names.contains(member->source)) {
                return mm.ErrorAt("source", absl::StrCat("unknown source '", member->source,
                                                         "' (not in egress.sources)"));
              }
              if (!members.insert(member->source).second) {
                return mm.ErrorAt("source",
                                  absl::StrCat("source '", member->source, "' is listed twice"));
              }
              return absl::OkStatus();
            }));
        RETURN_IF_ERROR(m.Finish());
        if (pool->name.empty()) return m.ErrorAt("name", "must not be empty");
        if (!pool_names.insert(pool->name).second) {
          return m.ErrorAt("name", absl::StrCat("duplicate pool name '", pool->name, "'"));
        }
        if (pool->sources.empty()) return m.ErrorAt("sources", "must list at least one source");
        return absl::OkStatus();
      }));
  RETURN_IF_ERROR(egress.Finish());

  YAML::Node streams = top.Get("streams");
  NameSet stream_names;
  if (streams) {
    if (!streams.IsSequence() || streams.size() == 0) {
      return top.Error(streams, "streams", "must be a non-empty list");
    }
    RETURN_IF_ERROR(
        ReadMapList(top, "streams", &c.streams,
                    [&](const YAML::Node& item, const std::string& path, StreamConfig* st) {
                      return ParseStream(item, path, source, pool_names, &stream_names, st);
                    }));
  } else {
    for (const StreamConfig& st : c.streams) stream_names.insert(st.name);
  }

  MapReader shaping(top.Get("shaping"), "shaping", source);
  RETURN_IF_ERROR(shaping.Check());
  {
    YAML::Node node = shaping.Get("default");
    MapReader d(node, "shaping.default", source);
    RETURN_IF_ERROR(d.Check());
    RETURN_IF_ERROR(ReadLimits(d, &c.shaping_default));
    RETURN_IF_ERROR(d.Finish());
    RETURN_IF_ERROR(CheckLimits(d, c.shaping_default));
  }
  NameSet rule_names;
  RETURN_IF_ERROR(ReadMapList(
      shaping, "rules", &c.shaping_rules,
      [&](const YAML::Node& item, const std::string& path, ShapingRuleConfig* rule) {
        return ParseShapingRule(item, path, source, &rule_names, rule);
      },
      // Keys a rule does not set keep shaping.default's values.
      ShapingRuleConfig{.limits = c.shaping_default}));
  RETURN_IF_ERROR(shaping.Finish());

  MapReader suspended(top.Get("suspended"), "suspended", source);
  RETURN_IF_ERROR(suspended.Check());
  RETURN_IF_ERROR(suspended.StringList("destinations", &c.suspended_destinations));
  RETURN_IF_ERROR(suspended.StringList("sources", &c.suspended_sources));
  RETURN_IF_ERROR(suspended.StringList("streams", &c.suspended_streams));
  RETURN_IF_ERROR(suspended.Finish());
  for (const std::string& name : c.suspended_sources) {
    if (!source_names.contains(name)) {
      return suspended.ErrorAt("sources",
                               absl::StrCat("unknown source '", name, "' (not in egress.sources)"));
    }
  }
  for (const std::string& name : c.suspended_streams) {
    if (!stream_names.contains(name)) return suspended.ErrorAt("streams", UnknownStream(name));
  }

  MapReader auth(top.Get("auth"), "auth", source);
  RETURN_IF_ERROR(auth.Check());
  RETURN_IF_ERROR(auth.String("password_file", &c.auth_password_file));
  RETURN_IF_ERROR(auth.Int("max_failures", 1, 1000, &c.auth_max_failures));
  RETURN_IF_ERROR(auth.String("failure_window", &c.auth_failure_window));
  RETURN_IF_ERROR(auth.Finish());
  if (!IsOneDuration(c.auth_failure_window)) return auth.ErrorAt("failure_window", kOneDuration);

  MapReader dkim(top.Get("dkim"), "dkim", source);
  RETURN_IF_ERROR(dkim.Check());
  RETURN_IF_ERROR(
      ReadMapList(dkim, "signing", &c.dkim_signing,
                  [&](const YAML::Node& node, const std::string& path, DkimSigningConfig* d) {
                    return ParseDkimSigning(node, path, source, d);
                  }));
  RETURN_IF_ERROR(dkim.String("on_key_error", &c.dkim_on_key_error));
  RETURN_IF_ERROR(dkim.String("on_sign_error", &c.dkim_on_sign_error));
  RETURN_IF_ERROR(dkim.Finish());
  if (c.dkim_on_key_error != "reject") {
    return dkim.ErrorAt("on_key_error", "must be reject");
  }
  if (c.dkim_on_sign_error != "tempfail") {
    return dkim.ErrorAt("on_sign_error", "must be tempfail");
  }
  {
    absl::flat_hash_set<std::string> keys;
    for (size_t i = 0; i < c.dkim_signing.size(); ++i) {
      const DkimSigningConfig& d = c.dkim_signing[i];
      if (!keys.insert(absl::StrCat(d.domain, "/", d.selector)).second) {
        return dkim.ErrorAt("signing", absl::StrCat("duplicate domain and selector '", d.selector,
                                                    "._domainkey.", d.domain, "'"));
      }
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
      RETURN_IF_ERROR(ParseListener(listeners[i], i, source, stream_names, &l));
      if (!names.insert(l.name).second) {
        return top.Error(listeners[i], "listeners", absl::StrCat("duplicate name '", l.name, "'"));
      }
      if (l.auth_enabled && c.auth_password_file.empty()) {
        return top.Error(listeners[i], absl::StrCat("listeners[", i, "].auth.enabled"),
                         "needs auth.password_file");
      }
      c.listeners.push_back(std::move(l));
    }
  } else {
    // The built-in listener's stream must exist too.
    for (size_t i = 0; i < c.listeners.size(); ++i) {
      if (!stream_names.contains(c.listeners[i].stream)) {
        return top.Error(streams, absl::StrCat("listeners[", i, "].stream"),
                         UnknownStream(c.listeners[i].stream));
      }
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
