#include "mta/server/config.h"

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
#include "mta/server/config_internal.h"
#include "queue/retry_schedule.h"
#include "re2/re2.h"
#include "yaml-cpp/yaml.h"

namespace mta::server {

using config_internal::CheckLimits;
using config_internal::IsDnsName;
using config_internal::IsEhloName;
using config_internal::IsHeaderName;
using config_internal::IsLoopback;
using config_internal::IsMessageRate;
using config_internal::IsOneDuration;
using config_internal::IsStreamName;
using config_internal::kOneDuration;
using config_internal::MapReader;
using config_internal::NameSet;
using config_internal::ParseBackoff;
using config_internal::ParseBounceRule;
using config_internal::ParseDkimSigning;
using config_internal::ParseListener;
using config_internal::ParseRoute;
using config_internal::ParseShapingRule;
using config_internal::ParseStream;
using config_internal::Quoted;
using config_internal::ReadLimits;
using config_internal::ReadMapList;
using config_internal::UnknownStream;

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
  MTA_RETURN_IF_ERROR(top.Check());

  MapReader server(top.Get("server"), "server", source);
  MTA_RETURN_IF_ERROR(server.Check());
  MTA_RETURN_IF_ERROR(server.String("hostname", &c.hostname));
  MTA_RETURN_IF_ERROR(server.Int("shards", 0, 256, &c.shards));
  MTA_RETURN_IF_ERROR(server.String("log_level", &c.log_level));
  MTA_RETURN_IF_ERROR(server.StringList("local_domains", &c.local_domains));
  MTA_RETURN_IF_ERROR(server.Finish());
  if (c.log_level != "debug" && c.log_level != "info" && c.log_level != "warning" &&
      c.log_level != "error") {
    return server.Error(root["server"]["log_level"], "log_level",
                        "must be debug, info, warning or error");
  }

  MapReader spool(top.Get("spool"), "spool", source);
  MTA_RETURN_IF_ERROR(spool.Check());
  MTA_RETURN_IF_ERROR(spool.String("path", &c.spool_path));
  MTA_RETURN_IF_ERROR(spool.Int("min_free_disk_mb", 0, 1ull << 30, &c.spool_min_free_disk_mb));
  MTA_RETURN_IF_ERROR(spool.Int("max_batch", 1, 100000, &c.spool_max_batch));
  MTA_RETURN_IF_ERROR(
      spool.Int("max_bodies_in_memory", 0, 100000000, &c.spool_max_bodies_in_memory));
  MTA_RETURN_IF_ERROR(spool.Finish());
  if (c.spool_path.empty()) return spool.Error(root["spool"], "path", "must not be empty");

  MapReader limits(top.Get("limits"), "limits", source);
  MTA_RETURN_IF_ERROR(limits.Check());
  MTA_RETURN_IF_ERROR(limits.Int("max_message_bytes", 1024, 1ull << 31, &c.max_message_bytes));
  MTA_RETURN_IF_ERROR(limits.Int("max_recipients", 1, 100000, &c.max_recipients));
  MTA_RETURN_IF_ERROR(limits.Int("max_errors", 1, 1000, &c.max_errors));
  MTA_RETURN_IF_ERROR(limits.Int("max_hops", 2, 1000, &c.max_hops));
  MTA_RETURN_IF_ERROR(limits.Int("max_connections", 1, 1000000, &c.max_connections));
  MTA_RETURN_IF_ERROR(limits.Int("max_connections_per_ip", 1, 1000000, &c.max_connections_per_ip));
  MTA_RETURN_IF_ERROR(limits.Int("command_timeout_s", 1, 3600, &c.command_timeout_s));
  MTA_RETURN_IF_ERROR(limits.Int("data_timeout_s", 1, 3600, &c.data_timeout_s));
  MTA_RETURN_IF_ERROR(limits.Int("shutdown_grace_s", 0, 3600, &c.shutdown_grace_s));
  MTA_RETURN_IF_ERROR(limits.Finish());

  MapReader http(top.Get("http"), "http", source);
  MTA_RETURN_IF_ERROR(http.Check());
  MTA_RETURN_IF_ERROR(http.Bool("enabled", &c.http_enabled));
  MTA_RETURN_IF_ERROR(http.String("address", &c.http_address));
  MTA_RETURN_IF_ERROR(http.String("admin_token_file", &c.http_admin_token_file));
  MTA_RETURN_IF_ERROR(http.Finish());
  if (auto hp = HostPort::Parse(c.http_address); !hp.ok()) {
    return http.Error(root["http"]["address"], "address", hp.status().message());
  } else if (c.http_enabled && c.http_admin_token_file.empty() && !IsLoopback(*hp)) {
    return http.ErrorAt("admin_token_file",
                        "must be set when http.address is not a loopback address");
  }

  MapReader metrics(top.Get("metrics"), "metrics", source);
  MTA_RETURN_IF_ERROR(metrics.Check());
  MTA_RETURN_IF_ERROR(metrics.Int("top_destinations", 0, 100000, &c.metrics_top_destinations));
  MTA_RETURN_IF_ERROR(metrics.Finish());

  MapReader events(top.Get("events"), "events", source);
  MTA_RETURN_IF_ERROR(events.Check());
  MTA_RETURN_IF_ERROR(events.String("directory", &c.events_directory));
  MTA_RETURN_IF_ERROR(events.Int("max_file_mb", 1, 1ull << 20, &c.events_max_file_mb));
  MTA_RETURN_IF_ERROR(events.Int("max_files", 1, 100000, &c.events_max_files));
  MTA_RETURN_IF_ERROR(events.Bool("fsync", &c.events_fsync));
  MapReader webhook(events.Get("webhook"), "events.webhook", source);
  MTA_RETURN_IF_ERROR(webhook.Check());
  MTA_RETURN_IF_ERROR(webhook.String("url", &c.events_webhook_url));
  MTA_RETURN_IF_ERROR(webhook.String("token_file", &c.events_webhook_token_file));
  MTA_RETURN_IF_ERROR(webhook.Int("batch", 1, 100000, &c.events_webhook_batch));
  MTA_RETURN_IF_ERROR(
      webhook.Int("max_backlog_mb", 1, 1ull << 30, &c.events_webhook_max_backlog_mb));
  MTA_RETURN_IF_ERROR(webhook.Finish());
  MTA_RETURN_IF_ERROR(events.Finish());
  if (!c.events_webhook_url.empty()) {
    if (!absl::StartsWith(c.events_webhook_url, "http://") &&
        !absl::StartsWith(c.events_webhook_url, "https://")) {
      return webhook.ErrorAt("url", "must start with http:// or https://");
    }
    if (c.events_directory.empty()) {
      return webhook.ErrorAt("url", "needs events.directory (the files are its backlog)");
    }
  }

  MTA_RETURN_IF_ERROR(
      ReadMapList(top, "bounce_rules", &c.bounce_rules,
                  [&](const YAML::Node& node, const std::string& path, BounceRuleConfig* r) {
                    return ParseBounceRule(node, path, source, r);
                  }));

  MapReader delivery(top.Get("delivery"), "delivery", source);
  MTA_RETURN_IF_ERROR(delivery.Check());
  MTA_RETURN_IF_ERROR(delivery.Bool("enabled", &c.delivery_enabled));
  MTA_RETURN_IF_ERROR(delivery.String("helo_name", &c.helo_name));
  MTA_RETURN_IF_ERROR(delivery.String("retry_intervals", &c.retry_intervals));
  MTA_RETURN_IF_ERROR(delivery.Int("retry_jitter_percent", 0, 50, &c.retry_jitter_percent));
  MTA_RETURN_IF_ERROR(delivery.String("queue_lifetime", &c.queue_lifetime));
  MTA_RETURN_IF_ERROR(delivery.String("delay_warning", &c.delay_warning));
  MTA_RETURN_IF_ERROR(delivery.Int("smtp_port", 1, 65535, &c.smtp_port));
  MTA_RETURN_IF_ERROR(delivery.String("tls", &c.tls));
  MTA_RETURN_IF_ERROR(delivery.StringList("dns_servers", &c.dns_servers));
  MTA_RETURN_IF_ERROR(delivery.Int("dns_timeout_ms", 10, 60000, &c.dns_timeout_ms));
  YAML::Node routes = delivery.Get("routes");
  MTA_RETURN_IF_ERROR(delivery.Finish());
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
      MTA_RETURN_IF_ERROR(ParseRoute(routes[i], i, source, &r));
      c.routes.push_back(std::move(r));
    }
  }

  MapReader egress(top.Get("egress"), "egress", source);
  MTA_RETURN_IF_ERROR(egress.Check());
  NameSet source_names;
  MTA_RETURN_IF_ERROR(ReadMapList(
      egress, "sources", &c.sources,
      [&](const YAML::Node& item, const std::string& path, SourceConfig* src) {
        MapReader m(item, path, source);
        MTA_RETURN_IF_ERROR(m.String("name", &src->name));
        MTA_RETURN_IF_ERROR(m.String("address", &src->address));
        MTA_RETURN_IF_ERROR(m.String("ehlo", &src->ehlo));
        MTA_RETURN_IF_ERROR(m.Finish());
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
  MTA_RETURN_IF_ERROR(ReadMapList(
      egress, "pools", &c.pools,
      [&](const YAML::Node& item, const std::string& path, PoolConfig* pool) {
        MapReader m(item, path, source);
        MTA_RETURN_IF_ERROR(m.String("name", &pool->name));
        NameSet members;
        MTA_RETURN_IF_ERROR(ReadMapList(
            m, "sources", &pool->sources,
            [&](const YAML::Node& member_node, const std::string& member_path,
                PoolMemberConfig* member) {
              MapReader mm(member_node, member_path, source);
              MTA_RETURN_IF_ERROR(mm.String("source", &member->source));
              MTA_RETURN_IF_ERROR(mm.Int("weight", 1, 1000, &member->weight));
              MTA_RETURN_IF_ERROR(mm.Finish());
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
        MTA_RETURN_IF_ERROR(m.Finish());
        if (pool->name.empty()) return m.ErrorAt("name", "must not be empty");
        if (!pool_names.insert(pool->name).second) {
          return m.ErrorAt("name", absl::StrCat("duplicate pool name '", pool->name, "'"));
        }
        if (pool->sources.empty()) return m.ErrorAt("sources", "must list at least one source");
        return absl::OkStatus();
      }));
  MTA_RETURN_IF_ERROR(egress.Finish());

  YAML::Node streams = top.Get("streams");
  NameSet stream_names;
  if (streams) {
    if (!streams.IsSequence() || streams.size() == 0) {
      return top.Error(streams, "streams", "must be a non-empty list");
    }
    MTA_RETURN_IF_ERROR(
        ReadMapList(top, "streams", &c.streams,
                    [&](const YAML::Node& item, const std::string& path, StreamConfig* st) {
                      return ParseStream(item, path, source, pool_names, &stream_names, st);
                    }));
  } else {
    for (const StreamConfig& st : c.streams) stream_names.insert(st.name);
  }

  MapReader shaping(top.Get("shaping"), "shaping", source);
  MTA_RETURN_IF_ERROR(shaping.Check());
  {
    YAML::Node node = shaping.Get("default");
    MapReader d(node, "shaping.default", source);
    MTA_RETURN_IF_ERROR(d.Check());
    MTA_RETURN_IF_ERROR(ReadLimits(d, &c.shaping_default));
    MTA_RETURN_IF_ERROR(d.Finish());
    MTA_RETURN_IF_ERROR(CheckLimits(d, c.shaping_default));
  }
  NameSet rule_names;
  MTA_RETURN_IF_ERROR(ReadMapList(
      shaping, "rules", &c.shaping_rules,
      [&](const YAML::Node& item, const std::string& path, ShapingRuleConfig* rule) {
        return ParseShapingRule(item, path, source, &rule_names, rule);
      },
      // Keys a rule does not set keep shaping.default's values.
      ShapingRuleConfig{.limits = c.shaping_default}));
  MTA_RETURN_IF_ERROR(shaping.Finish());

  MapReader suspended(top.Get("suspended"), "suspended", source);
  MTA_RETURN_IF_ERROR(suspended.Check());
  MTA_RETURN_IF_ERROR(suspended.StringList("destinations", &c.suspended_destinations));
  MTA_RETURN_IF_ERROR(suspended.StringList("sources", &c.suspended_sources));
  MTA_RETURN_IF_ERROR(suspended.StringList("streams", &c.suspended_streams));
  MTA_RETURN_IF_ERROR(suspended.Finish());
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
  MTA_RETURN_IF_ERROR(auth.Check());
  MTA_RETURN_IF_ERROR(auth.String("password_file", &c.auth_password_file));
  MTA_RETURN_IF_ERROR(auth.Int("max_failures", 1, 1000, &c.auth_max_failures));
  MTA_RETURN_IF_ERROR(auth.String("failure_window", &c.auth_failure_window));
  MTA_RETURN_IF_ERROR(auth.Finish());
  if (!IsOneDuration(c.auth_failure_window)) return auth.ErrorAt("failure_window", kOneDuration);

  MapReader dkim(top.Get("dkim"), "dkim", source);
  MTA_RETURN_IF_ERROR(dkim.Check());
  MTA_RETURN_IF_ERROR(
      ReadMapList(dkim, "signing", &c.dkim_signing,
                  [&](const YAML::Node& node, const std::string& path, DkimSigningConfig* d) {
                    return ParseDkimSigning(node, path, source, d);
                  }));
  MTA_RETURN_IF_ERROR(dkim.String("on_key_error", &c.dkim_on_key_error));
  MTA_RETURN_IF_ERROR(dkim.String("on_sign_error", &c.dkim_on_sign_error));
  MTA_RETURN_IF_ERROR(dkim.Finish());
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
      MTA_RETURN_IF_ERROR(ParseListener(listeners[i], i, source, stream_names, &l));
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
  MTA_RETURN_IF_ERROR(top.Finish());
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
