// mtad: the mail transfer agent daemon.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <future>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/hash/hash.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "auth/credential_verifier.h"
#include "auth/password_file.h"
#include "auth/tls_context.h"
#include "metrics/event_log.h"
#include "metrics/http_server.h"
#include "metrics/webhook.h"
#include "mta/base/log.h"
#include "mta/delivery/delivery_manager.h"
#include "mta/server/admin_api.h"
#include "mta/server/config.h"
#include "mta/server/connection_limiter.h"
#include "mta/server/dkim_signing.h"
#include "mta/server/policy_control.h"
#include "mta/server/shard.h"
#include "mta/server/telemetry.h"
#include "mta/server/traffic_policy_builder.h"
#include "queue/content_loader.h"
#include "queue/message_queue.h"
#include "queue/retry_schedule.h"
#include "queue/rocksdb_spool.h"

namespace mta::server {
namespace {

constexpr char kUsage[] =
    "usage: mtad [--config FILE] [--shards N]\n"
    "       mtad --check-config FILE\n"
    "       mtad --print-default-config\n"
    "With no --config, mtad runs on its embedded defaults (SMTP on 127.0.0.1:2525,\n"
    "spool in ./var/spool, relaying allowed from loopback only).\n";

int Fail(const std::string& message) {
  std::fprintf(stderr, "mtad: %s\n", message.c_str());
  return 1;
}

LogLevel ParseLevel(const std::string& s) {
  if (s == "debug") return LogLevel::kDebug;
  if (s == "warning") return LogLevel::kWarning;
  if (s == "error") return LogLevel::kError;
  return LogLevel::kInfo;
}

absl::StatusOr<std::vector<ListenerSpec>> BuildListeners(const Config& config) {
  std::vector<ListenerSpec> specs;
  for (const ListenerConfig& l : config.listeners) {
    ListenerSpec spec;
    auto hp = HostPort::Parse(l.address);
    if (!hp.ok()) return hp.status();
    spec.address = *hp;
    for (const std::string& n : l.relay_networks) {
      auto cidr = Cidr::Parse(n);
      if (!cidr.ok()) return cidr.status();
      spec.relay_networks.push_back(*cidr);
    }
    spec.greeting_delay_ms = l.greeting_delay_ms;
    spec.implicit_tls = l.tls == "implicit";
    smtp::SessionConfig& s = spec.session;
    s.hostname = config.hostname;
    s.listener_name = l.name;
    s.stream = l.stream;
    s.stream_header = l.stream_header;
    s.starttls = l.tls == "starttls";
    // ParseConfig has checked that these streams exist.
    for (const StreamNetworkConfig& sn : l.stream_networks) {
      auto cidr = Cidr::Parse(sn.network);
      if (!cidr.ok()) return cidr.status();
      spec.stream_networks.emplace_back(*cidr, sn.stream);
    }
    s.max_message_bytes = config.max_message_bytes;
    s.max_recipients = config.max_recipients;
    s.max_errors = config.max_errors;
    s.max_hops = config.max_hops;
    s.add_missing_headers = l.add_missing_headers;
    s.auth_enabled = l.auth_enabled;
    s.auth_trusted = l.auth_trusted;
    for (const std::string& d : config.local_domains)
      s.local_domains.insert(absl::AsciiStrToLower(d));
    specs.push_back(std::move(spec));
  }
  return specs;
}

// Reads each TLS listener's certificate and key (start-up and SIGHUP; never on a shard).
absl::StatusOr<std::vector<std::shared_ptr<const auth::ServerTlsContext>>> LoadServerTls(
    const Config& config) {
  std::vector<std::shared_ptr<const auth::ServerTlsContext>> out;
  for (const ListenerConfig& l : config.listeners) {
    if (l.tls == "none") {
      out.push_back(nullptr);
      continue;
    }
    auto context = auth::ServerTlsContext::Create(l.tls_cert_file, l.tls_key_file);
    if (!context.ok()) {
      return absl::Status(context.status().code(),
                          absl::StrCat("listener ", l.name, ": ", context.status().message()));
    }
    out.push_back(*std::move(context));
  }
  return out;
}

// SMTP AUTH: reads auth.password_file (null when none is configured) and checks that the
// streams it names exist. Blocking: start-up, SIGHUP and --check-config only.
absl::StatusOr<std::shared_ptr<const auth::PasswordFile>> LoadPasswordFile(const Config& config) {
  if (config.auth_password_file.empty()) return nullptr;
  auto file = auth::PasswordFile::Load(config.auth_password_file);
  if (!file.ok()) return file.status();
  for (const auth::PasswordEntry& e : (*file)->entries()) {
    if (e.user.stream.empty()) continue;
    bool known = false;
    for (const StreamConfig& st : config.streams) known = known || st.name == e.user.stream;
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(config.auth_password_file, ": user '",
                                                     e.user.name, "': unknown stream '",
                                                     e.user.stream, "' (not defined in streams)"));
    }
  }
  return std::shared_ptr<const auth::PasswordFile>(*std::move(file));
}

// SIGHUP: the password file is re-read (path changes need a restart). New AUTH attempts use
// it; sessions already authenticated keep their user. A bad file keeps the loaded one.
void ReloadPasswordFile(const Config& running, auth::CredentialVerifier* verifier) {
  if (verifier == nullptr) return;
  auto passwords = LoadPasswordFile(running);
  if (!passwords.ok()) {
    MTA_LOG_ERROR("SIGHUP: %s; keeping the loaded password file", passwords.status().message());
    return;
  }
  MTA_LOG_INFO("SIGHUP: password file %s reloaded: %d users", running.auth_password_file,
               (*passwords)->entries().size());
  verifier->SetPasswordFile(*std::move(passwords));
}

// SIGHUP: the dkim.signing keys are re-read (files renewed in place, entries added or
// removed). A missing or bad key keeps the loaded keys: mail is never signed with a
// half-loaded set.
void ReloadDkimKeys(const Config& running, DkimSigningService* dkim) {
  if (dkim == nullptr) return;
  auto keys = LoadDkimKeys(running);
  if (!keys.ok()) {
    MTA_LOG_ERROR("SIGHUP: %s; keeping the loaded DKIM keys", keys.status().message());
    return;
  }
  MTA_LOG_INFO("SIGHUP: DKIM keys reloaded: %d keys", (*keys)->key_count());
  dkim->SetKeys(*std::move(keys));
}

// SIGHUP: the traffic policy (egress sources and pools, streams, shaping rules,
// suspensions and bounce rules) is re-read and handed to every shard; queued mail stays queued.
// Other settings need a restart, which is logged when they changed.
void CopyReloadable(const Config& from, Config* to) {
  to->sources = from.sources;
  to->pools = from.pools;
  to->streams = from.streams;
  to->shaping_default = from.shaping_default;
  to->shaping_rules = from.shaping_rules;
  to->suspended_destinations = from.suspended_destinations;
  to->suspended_sources = from.suspended_sources;
  to->suspended_streams = from.suspended_streams;
  to->retry_intervals = from.retry_intervals;  // streams inherit these three
  to->retry_jitter_percent = from.retry_jitter_percent;
  to->queue_lifetime = from.queue_lifetime;
  to->dkim_signing = from.dkim_signing;  // keys re-read by ReloadDkimKeys
  to->bounce_rules = from.bounce_rules;  // part of the traffic policy
}

void Reload(const std::string& path, Config* running,
            const std::vector<std::unique_ptr<Shard>>& shards, PolicyControl* policy_control) {
  if (path.empty()) {
    MTA_LOG_WARNING("SIGHUP: running on the embedded defaults; there is no file to reload");
    return;
  }
  absl::StatusOr<Config> loaded = LoadConfigFile(path);
  if (!loaded.ok()) {
    MTA_LOG_ERROR("SIGHUP: %s; keeping the running configuration", loaded.status().message());
    return;
  }
  // The running config has its derived values filled in; so must the new one's copy.
  Config fresh = *std::move(loaded);
  fresh.hostname = running->hostname;
  fresh.shards = running->shards;
  auto policy = BuildTrafficPolicy(fresh);
  if (!policy.ok()) {
    MTA_LOG_ERROR("SIGHUP: %s; keeping the running configuration", policy.status().message());
    return;
  }
  policy_control->SetBase(*std::move(policy));  // admin suspensions stay
  // Certificates are re-read from the running listeners' files (renewed in place).
  auto tls = LoadServerTls(*running);
  if (!tls.ok()) {
    MTA_LOG_ERROR("SIGHUP: %s; keeping the loaded certificates", tls.status().message());
  } else {
    for (const auto& shard : shards) shard->ApplyServerTls(*tls);
  }
  Config rest = fresh;
  CopyReloadable(*running, &rest);
  bool others_changed = !(rest == *running);
  CopyReloadable(fresh, running);  // only the main thread reads these fields
  MTA_LOG_INFO("SIGHUP: reloaded egress, streams, shaping and suspensions from %s%s", path,
               others_changed ? "; other changed settings apply after a restart" : "");
}

smtp::TlsPolicy ParseTlsPolicy(const std::string& s) {
  if (s == "none") return smtp::TlsPolicy::kNone;
  if (s == "require") return smtp::TlsPolicy::kRequire;
  return smtp::TlsPolicy::kOpportunistic;
}

absl::Status ConfigureDelivery(const Config& config, ServerContext* context) {
  delivery::DeliveryOptions& d = context->delivery;
  d.hostname = config.hostname;
  auto warning = queue::RetryPolicy::ParseIntervals(config.delay_warning);
  if (!warning.ok()) return warning.status();
  d.delay_warning_after = warning->front();
  auto policy = BuildTrafficPolicy(config);
  if (!policy.ok()) return policy.status();
  context->policy = *std::move(policy);
  d.default_tls = ParseTlsPolicy(config.tls);
  d.smtp_port = static_cast<uint16_t>(config.smtp_port);
  delivery::OutboundContext& o = context->outbound;
  o.helo_name = config.helo_name.empty() ? config.hostname : config.helo_name;
  for (const RouteConfig& r : config.routes) {
    d.routes.push_back({.domain = absl::AsciiStrToLower(r.domain),
                        .host = r.host,
                        .port = static_cast<uint16_t>(r.port),
                        .tls = ParseTlsPolicy(r.tls)});
  }
  context->dns.servers = config.dns_servers;
  context->dns.query_timeout_ms = static_cast<int>(config.dns_timeout_ms);
  return absl::OkStatus();
}

// The first line of `path` (a secret such as the admin token), or an error naming the file.
absl::StatusOr<std::string> ReadFirstLine(const std::string& path, absl::string_view what) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) {
    return absl::NotFoundError(absl::StrCat(what, ": cannot read ", path));
  }
  line = std::string(absl::StripAsciiWhitespace(line));
  if (line.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": ", path, " is empty"));
  return line;
}

int Run(int argc, char** argv) {
  std::string config_path;
  int shards_override = -1;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (arg == "--print-default-config") {
      std::cout << DefaultConfigYaml();
      return 0;
    } else if (arg == "--check-config") {
      const char* path = next();
      if (path == nullptr) return Fail("--check-config needs a FILE");
      auto config = LoadConfigFile(path);
      if (!config.ok()) return Fail(std::string(config.status().message()));
      if (auto passwords = LoadPasswordFile(*config); !passwords.ok()) {
        return Fail(std::string(passwords.status().message()));
      }
      if (auto keys = LoadDkimKeys(*config); !keys.ok()) {
        return Fail(std::string(keys.status().message()));
      }
      std::printf("%s: ok\n", path);
      return 0;
    } else if (arg == "--config") {
      const char* path = next();
      if (path == nullptr) return Fail("--config needs a FILE");
      config_path = path;
    } else if (arg == "--shards") {
      const char* n = next();
      if (n == nullptr || !absl::SimpleAtoi(n, &shards_override) || shards_override < 1 ||
          shards_override > 256) {
        return Fail("--shards needs a number in [1, 256]");
      }
    } else if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return 0;
    } else {
      std::cerr << kUsage;
      return Fail(absl::StrCat("unknown argument '", arg, "'"));
    }
  }

  auto loaded = config_path.empty() ? ParseConfig(DefaultConfigYaml(), "<defaults>")
                                    : LoadConfigFile(config_path);
  if (!loaded.ok()) return Fail(std::string(loaded.status().message()));
  Config config = *std::move(loaded);
  SetLogLevel(ParseLevel(config.log_level));
  // dkim.on_key_error: reject. Every key must load before anything starts.
  auto dkim_keys = LoadDkimKeys(config);
  if (!dkim_keys.ok()) return Fail(std::string(dkim_keys.status().message()));
  if (shards_override > 0) config.shards = shards_override;
  if (config.shards == 0) config.shards = std::max(1u, std::thread::hardware_concurrency());
  if (config.hostname.empty()) {
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    config.hostname = host[0] ? host : "localhost";
  }

  // Signals are taken synchronously by the main thread; shard threads inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  signal(SIGXFSZ, SIG_IGN);  // a file-size limit must surface as a write error, not a kill

  queue::RocksDbSpoolOptions spool_options;
  spool_options.path = config.spool_path;
  spool_options.min_free_bytes = config.spool_min_free_disk_mb << 20;
  spool_options.max_batch_records = config.spool_max_batch;
  auto spool = queue::OpenRocksDbSpool(spool_options);
  if (!spool.ok()) return Fail(std::string(spool.status().message()));

  auto listeners = BuildListeners(config);
  if (!listeners.ok()) return Fail(std::string(listeners.status().message()));
  ConnectionLimiter limiter(config.max_connections, config.max_connections_per_ip);
  queue::BodyBudget body_budget(config.spool_max_bodies_in_memory);
  auto loader = std::make_unique<queue::ContentLoader>(spool->get());
  // The event log and the metrics outlive the shards that write them.
  std::unique_ptr<metrics::EventLog> events;
  std::unique_ptr<metrics::WebhookShipper> webhook;
  if (!config.events_directory.empty()) {
    metrics::EventLogOptions o;
    o.directory = config.events_directory;
    o.max_file_bytes = config.events_max_file_mb << 20;
    o.max_files = config.events_max_files;
    o.fsync = config.events_fsync;
    o.retain_for_webhook = !config.events_webhook_url.empty();
    o.webhook_backlog_max_bytes = config.events_webhook_max_backlog_mb << 20;
    auto log = metrics::EventLog::Open(o);
    if (!log.ok()) return Fail(absl::StrCat("events.directory: ", log.status().message()));
    events = *std::move(log);
  }
  if (!config.events_webhook_url.empty()) {
    metrics::WebhookOptions o;
    o.url = config.events_webhook_url;
    o.max_batch_events = config.events_webhook_batch;
    if (!config.events_webhook_token_file.empty()) {
      auto token = ReadFirstLine(config.events_webhook_token_file, "events.webhook.token_file");
      if (!token.ok()) return Fail(std::string(token.status().message()));
      o.headers.push_back({"Authorization", absl::StrCat("Bearer ", *token)});
    }
    auto shipper = metrics::WebhookShipper::Start(std::move(o), events.get());
    if (!shipper.ok()) return Fail(absl::StrCat("events.webhook: ", shipper.status().message()));
    webhook = *std::move(shipper);
  }
  Telemetry telemetry(config.metrics_top_destinations, events.get());
  telemetry.set_webhook(webhook.get());
  std::string admin_token;
  if (!config.http_admin_token_file.empty()) {
    auto token = ReadFirstLine(config.http_admin_token_file, "http.admin_token_file");
    if (!token.ok()) return Fail(std::string(token.status().message()));
    admin_token = *std::move(token);
  }

  ServerContext context;
  context.config = &config;
  context.telemetry = &telemetry;
  context.delivery_enabled = config.delivery_enabled;
  context.loader = loader.get();
  absl::Status ds = ConfigureDelivery(config, &context);
  if (!ds.ok()) return Fail(std::string(ds.message()));
  // Loaded once here (it reads the CA bundle); immutable and shared by every shard.
  std::unique_ptr<auth::ClientTlsContext> client_tls;
  if (config.delivery_enabled && config.tls != "none") {
    auto tls = auth::ClientTlsContext::Create(auth::ClientTlsOptions());
    if (!tls.ok()) return Fail(absl::StrCat("outbound TLS: ", tls.status().message()));
    client_tls = *std::move(tls);
    context.outbound.tls = client_tls.get();
  }
  context.listeners = *std::move(listeners);
  auto server_tls = LoadServerTls(config);
  if (!server_tls.ok()) return Fail(std::string(server_tls.status().message()));
  context.server_tls = *std::move(server_tls);
  context.spool = spool->get();
  context.limiter = &limiter;
  context.body_budget = &body_budget;
  context.auth_max_failures = config.auth_max_failures;
  auto auth_window = queue::RetryPolicy::ParseIntervals(config.auth_failure_window);
  if (!auth_window.ok()) return Fail(std::string(auth_window.status().message()));
  context.auth_failure_window = auth_window->front();

  std::vector<std::unique_ptr<Shard>> shards;
  for (uint32_t i = 0; i < config.shards; ++i) {
    shards.push_back(std::make_unique<Shard>(i, &context));
    context.shards.push_back(shards.back().get());
    absl::Status s = shards.back()->Init();
    if (!s.ok()) return Fail(std::string(s.message()));
  }
  // Admin suspensions (kept next to the spool) apply from the first moment: recovered mail
  // for a suspended destination must not go out while the shards start.
  std::string spool_dir = config.spool_path;
  while (spool_dir.size() > 1 && spool_dir.back() == '/') spool_dir.pop_back();
  PolicyControl policy_control(context.shards, spool_dir + "-admin-suspensions.json");
  if (!policy_control.status().ok()) return Fail(std::string(policy_control.status().message()));
  context.policy = policy_control.Adopt(context.policy);

  // SMTP AUTH. Declared after the shards so that it is destroyed first: its thread may still
  // post verdicts into their loops until then.
  std::unique_ptr<auth::CredentialVerifier> verifier;
  {
    auto passwords = LoadPasswordFile(config);
    if (!passwords.ok()) return Fail(std::string(passwords.status().message()));
    if (*passwords != nullptr) {
      verifier = std::make_unique<auth::CredentialVerifier>(*std::move(passwords));
      context.verifier = verifier.get();
    }
  }

  // DKIM signing; like the verifier, destroyed before the shards it posts into. Always
  // running, so that SIGHUP can add the first keys.
  auto dkim = std::make_unique<DkimSigningService>(*std::move(dkim_keys));
  context.dkim = dkim.get();
  if (!config.dkim_signing.empty()) {
    MTA_LOG_INFO("DKIM: %d signing keys loaded", config.dkim_signing.size());
  }

  absl::Time recover_start = absl::Now();
  uint64_t recovered = 0;
  absl::Status rs = (*spool)->Recover([&](queue::Envelope envelope) {
    size_t owner = delivery::DeliveryManager::HomeOf(envelope.id, shards.size());
    shards[owner]->AddRecovered(std::move(envelope));
    ++recovered;
  });
  if (!rs.ok()) return Fail(std::string(rs.message()));
  MTA_LOG_INFO("recovered %d messages from %s in %d ms", recovered, config.spool_path,
               absl::ToInt64Milliseconds(absl::Now() - recover_start));

  std::promise<void> all_started;
  context.all_started = all_started.get_future().share();
  for (size_t i = 0; i < shards.size(); ++i) {
    absl::Status s = shards[i]->Start();
    if (!s.ok()) {
      all_started.set_value();
      for (size_t j = 0; j < i; ++j) shards[j]->BeginShutdown();
      for (size_t j = 0; j < i; ++j) shards[j]->Join();
      loader.reset();
      (*spool)->Shutdown();
      return Fail(std::string(s.message()));
    }
  }
  all_started.set_value();
  AdminApiContext admin{.spool = spool->get(),
                        .shards = &shards,
                        .telemetry = &telemetry,
                        .policy = &policy_control,
                        .token = admin_token};
  std::unique_ptr<metrics::HttpServer> http;
  if (config.http_enabled) {
    auto address = HostPort::Parse(config.http_address);
    if (!address.ok()) return Fail(std::string(address.status().message()));
    auto server = metrics::HttpServer::Start(
        *address, [&admin](const metrics::HttpRequest& r) { return HandleAdminRequest(admin, r); });
    if (!server.ok()) {
      for (auto& shard : shards) shard->BeginShutdown();
      for (auto& shard : shards) shard->Join();
      loader.reset();
      (*spool)->Shutdown();
      return Fail(std::string(server.status().message()));
    }
    http = *std::move(server);
  }
  std::vector<std::string> addresses;
  for (const ListenerConfig& l : config.listeners) addresses.push_back(l.address);
  MTA_LOG_INFO("mtad ready: %d shards, SMTP on %s, HTTP on %s, hostname %s", shards.size(),
               absl::StrJoin(addresses, ", "), config.http_enabled ? config.http_address : "off",
               config.hostname);

  for (;;) {
    int sig = 0;
    if (sigwait(&signals, &sig) != 0) continue;
    if (sig == SIGHUP) {
      Reload(config_path, &config, shards, &policy_control);
      ReloadPasswordFile(config, verifier.get());
      ReloadDkimKeys(config, dkim.get());
      continue;
    }
    MTA_LOG_INFO("signal %d: shutting down (grace %d s)", sig, config.shutdown_grace_s);
    break;
  }
  http.reset();  // no more requests reading shard state
  for (auto& shard : shards) shard->BeginShutdown();
  for (auto& shard : shards) shard->Join();
  uint64_t queued = 0;
  for (auto& shard : shards) queued += shard->queued_messages();
  loader.reset();  // stops reading from the spool before it closes
  (*spool)->Shutdown();
  MTA_LOG_INFO("stopped cleanly; %d messages remain queued in the spool", queued);
  return 0;
}

}  // namespace
}  // namespace mta::server

int main(int argc, char** argv) { return mta::server::Run(argc, argv); }
