// mtad's configuration: one YAML file; every key optional with a default and a range.
#ifndef MTA_SERVER_CONFIG_H_
#define MTA_SERVER_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mta::server {

/** Messages from clients in `network` (a CIDR) get `stream`. */
struct StreamNetworkConfig {
  std::string network;
  std::string stream;

  bool operator==(const StreamNetworkConfig&) const = default;
};

struct ListenerConfig {
  std::string name = "default";
  std::string address = "127.0.0.1:2525";
  std::vector<std::string> relay_networks = {"127.0.0.0/8", "::1/128"};
  // SMTP AUTH (`auth: {enabled, trusted}`): offered under TLS; `trusted` also offers it in
  // plain text (listeners only loopback clients reach). Authenticated clients may relay.
  bool auth_enabled = false;
  bool auth_trusted = false;
  std::string stream = "default";  // stream when neither a network nor the header names one
  // Stream choice, most specific first: the client's network, then a header, then `stream`.
  std::vector<StreamNetworkConfig> stream_networks;
  std::string stream_header;  // e.g. "X-Stream"; "" = streams are not chosen by header
  bool add_missing_headers = true;
  uint32_t greeting_delay_ms = 0;
  // TLS: "none", "starttls" (offered after EHLO) or "implicit" (RFC 8314: TLS from the
  // first byte, port 465 style). The files are PEM and re-read on SIGHUP.
  std::string tls = "none";
  std::string tls_cert_file;  // certificate chain, server certificate first
  std::string tls_key_file;

  bool operator==(const ListenerConfig&) const = default;
};

/** A routing override (see delivery.routes). */
struct RouteConfig {
  std::string domain;  // "*" = every domain without its own route
  std::string host;    // "" = the domain's MX hosts (the route then only sets `tls`)
  uint32_t port = 25;
  std::string tls = "opportunistic";  // none, opportunistic or require

  bool operator==(const RouteConfig&) const = default;
};

/** A local address outbound connections bind to, and the EHLO name used from it. */
struct SourceConfig {
  std::string name;
  std::string address;  // IPv4 or IPv6 literal
  std::string ehlo;     // "" = delivery.helo_name

  bool operator==(const SourceConfig&) const = default;
};

struct PoolMemberConfig {
  std::string source;
  uint32_t weight = 1;

  bool operator==(const PoolMemberConfig&) const = default;
};

/** A weighted set of sources. */
struct PoolConfig {
  std::string name;
  std::vector<PoolMemberConfig> sources;

  bool operator==(const PoolConfig&) const = default;
};

/** A traffic stream: its pool, priority and retry policy. */
struct StreamConfig {
  std::string name;
  std::string pool;             // "" = no pool: the kernel picks the source address
  int32_t priority = 0;         // larger is served first at a shared destination
  std::string retry_intervals;  // "" = delivery.retry_intervals
  std::string queue_lifetime;   // "" = delivery.queue_lifetime

  bool operator==(const StreamConfig&) const = default;
};

/** When a reply matches, the source x destination is suspended or slowed. */
struct BackoffConfig {
  uint32_t code = 0;               // reply code, e.g. 421; 0 = any
  std::string enhanced;            // enhanced status prefix, e.g. "4.7."; "" = any
  std::string text;                // RE2 regex searched in the reply text; "" = any
  std::string action = "suspend";  // suspend or slow
  std::string duration = "5m";     // suspend: how long
  double rate_factor = 0.5;        // slow: the throttle is multiplied by this (0 < f < 1)

  bool operator==(const BackoffConfig&) const = default;
};

/** Limits per source x destination. In rules, unset keys take shaping.default's value. */
struct ShapingLimitsConfig {
  uint32_t max_connections = 10;
  uint32_t max_messages_per_connection = 0;  // 0 = unlimited
  std::string max_message_rate;              // "100/s", "3000/m", "20000/h"; "" = unlimited
  uint32_t rate_burst = 0;                   // 0 = one second's worth, at least 1
  uint32_t max_recipients_per_transaction = 100;
  uint32_t reserved_connections = 0;  // of max_connections, for the top-priority streams only
  uint32_t connect_timeout_s = 30;
  uint32_t idle_timeout_s = 5;
  std::vector<BackoffConfig> backoff;
  // Each interval without a backoff match doubles the throttle.
  std::string backoff_restore_interval = "1m";

  bool operator==(const ShapingLimitsConfig&) const = default;
};

/** A shaping rule: exactly one of domain, domain_suffix or mx_suffix is set. */
struct ShapingRuleConfig {
  std::string name;
  std::string domain;         // exact recipient domain
  std::string domain_suffix;  // e.g. ".example.com" (matches subdomains, not the bare name)
  std::string mx_suffix;      // e.g. ".google.com": every domain whose MX hosts end so shares
                              // this rule and one budget
  // ParseConfig starts from shaping_default and applies the rule's own keys (a rule's
  // `backoff` list replaces the default's list).
  ShapingLimitsConfig limits;

  bool operator==(const ShapingRuleConfig&) const = default;
};

/** One DKIM signing key (dkim.signing[]); several for one domain = dual signing. */
struct DkimSigningConfig {
  std::string domain;                 // d=, lower-cased; matched exactly against From:
  std::string selector;               // s=
  std::string key_file;               // PEM private key (RSA >= 2048 bits or Ed25519)
  std::vector<std::string> headers;   // signed header fields; [] = the library default
  std::vector<std::string> oversign;  // [] = from, subject, to
  std::string canonicalization = "relaxed/relaxed";  // header/body: relaxed or simple
  std::string expire;                                // "" = no x=; else one duration such as 7d
  bool operator==(const DkimSigningConfig&) const = default;
};

/** An operator's bounce classification rule (bounce_rules[]); every set key must match. */
struct BounceRuleConfig {
  std::string bounce_class;  // YAML key `class`: invalid_recipient, mailbox_full, ...
  uint32_t code = 0;         // reply code; 0 = any
  std::string enhanced;      // enhanced status prefix, e.g. "5.7"; "" = any
  std::string text;          // RE2 searched in the reply text; "" = any
  bool operator==(const BounceRuleConfig&) const = default;
};

struct Config {
  // server
  std::string hostname;  // "" = gethostname()
  uint32_t shards = 0;   // 0 = one per CPU
  std::string log_level = "info";
  std::vector<std::string> local_domains;
  // spool
  std::string spool_path = "./var/spool";
  uint64_t spool_min_free_disk_mb = 100;
  uint32_t spool_max_batch = 512;
  uint32_t spool_max_bodies_in_memory = 10000;
  // limits
  uint64_t max_message_bytes = 26214400;
  uint32_t max_recipients = 1000;
  uint32_t max_errors = 20;
  uint32_t max_hops = 50;
  uint32_t max_connections = 10000;
  uint32_t max_connections_per_ip = 500;
  uint32_t command_timeout_s = 300;
  uint32_t data_timeout_s = 180;
  uint32_t shutdown_grace_s = 30;
  // http
  bool http_enabled = true;
  std::string http_address = "127.0.0.1:8025";
  // Bearer token for /api/ (first line of the file); required when the address is not
  // loopback. "" = no token (loopback only).
  std::string http_admin_token_file;
  // metrics
  uint32_t metrics_top_destinations = 100;  // destinations with their own label; rest "other"
  // events (JSON lines; reloadable: no)
  std::string events_directory = "./var/events";  // "" = no event log
  uint64_t events_max_file_mb = 256;
  uint32_t events_max_files = 10;
  bool events_fsync = false;       // fdatasync each written batch (machine crashes lose none)
  std::string events_webhook_url;  // "" = no webhook
  std::string events_webhook_token_file;  // Authorization: Bearer <first line>; "" = none
  uint32_t events_webhook_batch = 500;
  uint64_t events_webhook_max_backlog_mb = 1024;
  // bounce classification (reloadable with SIGHUP)
  std::vector<BounceRuleConfig> bounce_rules;
  // delivery
  bool delivery_enabled = true;
  std::string helo_name;  // "" = hostname
  std::string retry_intervals = "1m,5m,10m,30m,1h,2h,4h";
  uint32_t retry_jitter_percent = 10;
  std::string queue_lifetime = "5d";
  std::string delay_warning = "4h";
  uint32_t smtp_port = 25;
  std::string tls = "opportunistic";
  std::vector<std::string> dns_servers;
  uint32_t dns_timeout_ms = 3000;
  std::vector<RouteConfig> routes;
  // egress
  std::vector<SourceConfig> sources;
  std::vector<PoolConfig> pools;
  // streams
  std::vector<StreamConfig> streams = {StreamConfig{.name = "default"}};
  // shaping
  ShapingLimitsConfig shaping_default;
  std::vector<ShapingRuleConfig> shaping_rules;
  // suspended (reloadable with SIGHUP)
  std::vector<std::string> suspended_destinations;  // recipient domains or rule names
  std::vector<std::string> suspended_sources;
  std::vector<std::string> suspended_streams;
  // auth (SMTP AUTH credentials and failure limits; listeners enable AUTH)
  std::string auth_password_file;          // "" = none (then no listener may enable AUTH)
  uint32_t auth_max_failures = 5;          // failed attempts per client IP and per user ...
  std::string auth_failure_window = "5m";  // ... within this; more get 454 until it passes
  // dkim (keys loaded at start-up and re-loaded on SIGHUP)
  std::vector<DkimSigningConfig> dkim_signing;
  std::string dkim_on_key_error = "reject";     // a missing or bad key fails start-up
  std::string dkim_on_sign_error = "tempfail";  // 451 4.7.0; never sent unsigned
  // listeners
  std::vector<ListenerConfig> listeners = {ListenerConfig()};

  bool operator==(const Config&) const = default;
};

/** The complete default configuration, one comment per key (for --print-default-config). */
absl::string_view DefaultConfigYaml();

/**
 * Parses and validates YAML text. Errors name `source_name`, the line and the reason,
 * e.g. "mtad.yaml:12:3: limits.max_recipients: must be in [1, 100000], got 0".
 * Unknown keys are errors (a typo must not silently fall back to a default).
 */
absl::StatusOr<Config> ParseConfig(absl::string_view yaml, absl::string_view source_name);

/** Reads and parses a file. */
absl::StatusOr<Config> LoadConfigFile(const std::string& path);

}  // namespace mta::server

#endif  // MTA_SERVER_CONFIG_H_
