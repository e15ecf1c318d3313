// mtad's configuration: one YAML file; every key optional with a default and a range.
#ifndef MTA_SERVER_CONFIG_H_
#define MTA_SERVER_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mta::server {

struct ListenerConfig {
  std::string name = "default";
  std::string address = "127.0.0.1:2525";
  std::vector<std::string> relay_networks = {"127.0.0.0/8", "::1/128"};
  std::string stream = "default";
  bool add_missing_headers = true;
  uint32_t greeting_delay_ms = 0;

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
  // delivery
  bool delivery_enabled = true;
  std::string helo_name;  // "" = hostname
  uint32_t max_connections_per_destination = 10;
  uint32_t max_recipients_per_transaction = 100;
  std::string retry_intervals = "1m,5m,10m,30m,1h,2h,4h";
  uint32_t retry_jitter_percent = 10;
  std::string queue_lifetime = "5d";
  std::string delay_warning = "4h";
  uint32_t smtp_port = 25;
  uint32_t connect_timeout_s = 30;
  uint32_t idle_timeout_s = 5;
  std::string tls = "opportunistic";
  std::vector<std::string> dns_servers;
  uint32_t dns_timeout_ms = 3000;
  std::vector<RouteConfig> routes;
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
