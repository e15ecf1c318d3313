// The configuration's sections below the top level (see config_internal.h) and the checks
// of single values.
#include <arpa/inet.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "mta/delivery/bounce_class.h"
#include "mta/server/config_internal.h"
#include "queue/retry_schedule.h"
#include "re2/re2.h"

namespace mta::server::config_internal {

std::string Quoted(absl::string_view s) { return absl::StrCat("\"", s, "\""); }

bool IsOneDuration(const std::string& text) {
  auto d = queue::RetryPolicy::ParseIntervals(text);
  return d.ok() && d->size() == 1;
}

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

absl::Status ParseListener(const YAML::Node& node, size_t index, absl::string_view source,
                           const NameSet& streams, ListenerConfig* l) {
  MapReader r(node, absl::StrCat("listeners[", index, "]"), source);
  if (!node.IsMap()) return r.Error(node, "each listener must be a map");
  MTA_RETURN_IF_ERROR(r.String("name", &l->name));
  MTA_RETURN_IF_ERROR(r.String("address", &l->address));
  MTA_RETURN_IF_ERROR(r.StringList("relay_networks", &l->relay_networks));
  {
    MapReader a(r.Get("auth"), r.Path("auth"), source);
    MTA_RETURN_IF_ERROR(a.Check());
    MTA_RETURN_IF_ERROR(a.Bool("enabled", &l->auth_enabled));
    MTA_RETURN_IF_ERROR(a.Bool("trusted", &l->auth_trusted));
    MTA_RETURN_IF_ERROR(a.Finish());
  }
  MTA_RETURN_IF_ERROR(r.String("stream", &l->stream));
  MTA_RETURN_IF_ERROR(
      ReadMapList(r, "stream_networks", &l->stream_networks,
                  [&](const YAML::Node& item, const std::string& path, StreamNetworkConfig* sn) {
                    MapReader m(item, path, source);
                    MTA_RETURN_IF_ERROR(m.String("network", &sn->network));
                    MTA_RETURN_IF_ERROR(m.String("stream", &sn->stream));
                    MTA_RETURN_IF_ERROR(m.Finish());
                    if (auto c = Cidr::Parse(sn->network); !c.ok()) {
                      return m.ErrorAt("network", c.status().message());
                    }
                    if (!streams.contains(sn->stream))
                      return m.ErrorAt("stream", UnknownStream(sn->stream));
                    return absl::OkStatus();
                  }));
  MTA_RETURN_IF_ERROR(r.String("stream_header", &l->stream_header));
  MTA_RETURN_IF_ERROR(r.Bool("add_missing_headers", &l->add_missing_headers));
  MTA_RETURN_IF_ERROR(r.Int("greeting_delay_ms", 0, 30000, &l->greeting_delay_ms));
  MTA_RETURN_IF_ERROR(r.String("tls", &l->tls));
  MTA_RETURN_IF_ERROR(r.String("tls_cert_file", &l->tls_cert_file));
  MTA_RETURN_IF_ERROR(r.String("tls_key_file", &l->tls_key_file));
  MTA_RETURN_IF_ERROR(r.Finish());
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
  MTA_RETURN_IF_ERROR(m.String("domain", &r->domain));
  MTA_RETURN_IF_ERROR(m.String("host", &r->host));
  MTA_RETURN_IF_ERROR(m.Int("port", 1, 65535, &r->port));
  MTA_RETURN_IF_ERROR(m.String("tls", &r->tls));
  MTA_RETURN_IF_ERROR(m.Finish());
  if (r->domain.empty()) return m.Error(node, "domain: must be a domain or \"*\"");
  if (r->tls != "none" && r->tls != "opportunistic" && r->tls != "require") {
    return m.Error(node, "tls: must be none, opportunistic or require");
  }
  return absl::OkStatus();
}

absl::Status ParseBackoff(const YAML::Node& node, const std::string& path, absl::string_view source,
                          BackoffConfig* b) {
  MapReader m(node, path, source);
  MTA_RETURN_IF_ERROR(m.Int("code", 0, 599, &b->code));
  MTA_RETURN_IF_ERROR(m.String("enhanced", &b->enhanced));
  MTA_RETURN_IF_ERROR(m.String("text", &b->text));
  MTA_RETURN_IF_ERROR(m.String("action", &b->action));
  MTA_RETURN_IF_ERROR(m.String("duration", &b->duration));
  MTA_RETURN_IF_ERROR(m.Double("rate_factor", &b->rate_factor));
  MTA_RETURN_IF_ERROR(m.Finish());
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
  MTA_RETURN_IF_ERROR(r.Int("max_connections", 1, 10000, &l->max_connections));
  MTA_RETURN_IF_ERROR(
      r.Int("max_messages_per_connection", 0, 1000000, &l->max_messages_per_connection));
  MTA_RETURN_IF_ERROR(r.String("max_message_rate", &l->max_message_rate));
  MTA_RETURN_IF_ERROR(r.Int("rate_burst", 0, 1000000, &l->rate_burst));
  MTA_RETURN_IF_ERROR(
      r.Int("max_recipients_per_transaction", 1, 100000, &l->max_recipients_per_transaction));
  MTA_RETURN_IF_ERROR(r.Int("reserved_connections", 0, 10000, &l->reserved_connections));
  MTA_RETURN_IF_ERROR(r.Int("connect_timeout_s", 1, 600, &l->connect_timeout_s));
  MTA_RETURN_IF_ERROR(r.Int("idle_timeout_s", 0, 3600, &l->idle_timeout_s));
  MTA_RETURN_IF_ERROR(
      ReadMapList(r, "backoff", &l->backoff,
                  [&](const YAML::Node& item, const std::string& path, BackoffConfig* b) {
                    return ParseBackoff(item, path, r.source(), b);
                  }));
  MTA_RETURN_IF_ERROR(r.String("backoff_restore_interval", &l->backoff_restore_interval));
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
  if (l.reserved_connections >= l.max_connections) {
    return r.ErrorAt("reserved_connections",
                     absl::StrCat("must be less than max_connections (", l.max_connections,
                                  "), got ", l.reserved_connections));
  }
  return absl::OkStatus();
}

absl::Status ParseShapingRule(const YAML::Node& node, const std::string& path,
                              absl::string_view source, NameSet* names, ShapingRuleConfig* rule) {
  MapReader m(node, path, source);
  MTA_RETURN_IF_ERROR(m.String("name", &rule->name));
  MTA_RETURN_IF_ERROR(m.String("domain", &rule->domain));
  MTA_RETURN_IF_ERROR(m.String("domain_suffix", &rule->domain_suffix));
  MTA_RETURN_IF_ERROR(m.String("mx_suffix", &rule->mx_suffix));
  MTA_RETURN_IF_ERROR(ReadLimits(m, &rule->limits));
  MTA_RETURN_IF_ERROR(m.Finish());
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

absl::Status ParseBounceRule(const YAML::Node& node, const std::string& path,
                             absl::string_view source, BounceRuleConfig* r) {
  MapReader m(node, path, source);
  MTA_RETURN_IF_ERROR(m.String("class", &r->bounce_class));
  MTA_RETURN_IF_ERROR(m.Int("code", 0, 599, &r->code));
  MTA_RETURN_IF_ERROR(m.String("enhanced", &r->enhanced));
  MTA_RETURN_IF_ERROR(m.String("text", &r->text));
  MTA_RETURN_IF_ERROR(m.Finish());
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
  MTA_RETURN_IF_ERROR(m.String("domain", &d->domain));
  MTA_RETURN_IF_ERROR(m.String("selector", &d->selector));
  MTA_RETURN_IF_ERROR(m.String("key_file", &d->key_file));
  MTA_RETURN_IF_ERROR(m.StringList("headers", &d->headers));
  MTA_RETURN_IF_ERROR(m.StringList("oversign", &d->oversign));
  MTA_RETURN_IF_ERROR(m.String("canonicalization", &d->canonicalization));
  MTA_RETURN_IF_ERROR(m.String("expire", &d->expire));
  MTA_RETURN_IF_ERROR(m.Finish());
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
  MTA_RETURN_IF_ERROR(m.String("name", &st->name));
  MTA_RETURN_IF_ERROR(m.String("pool", &st->pool));
  MTA_RETURN_IF_ERROR(m.SignedInt("priority", -1000, 1000, &st->priority));
  MTA_RETURN_IF_ERROR(m.String("retry_intervals", &st->retry_intervals));
  MTA_RETURN_IF_ERROR(m.String("queue_lifetime", &st->queue_lifetime));
  MTA_RETURN_IF_ERROR(m.Finish());
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

}  // namespace mta::server::config_internal
