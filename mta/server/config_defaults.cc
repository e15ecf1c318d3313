// The default configuration as YAML: the text --print-default-config prints (and the
// README reproduces), one comment per key. ParseConfig's defaults must agree with it
// (config_test checks that they do).
#include "mta/server/config.h"

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
  enabled: true               # /healthz, /metrics (Prometheus) and the admin API (/api/v1/)
  address: 127.0.0.1:8025     # not loopback: admin_token_file is required
  admin_token_file: ""        # file whose first line is the admin API's bearer token
metrics:
  top_destinations: 100       # recipient domains with their own label; later ones: "other"
events:
  directory: ./var/events     # JSON-lines event log (events.jsonl, rotated); "" = off
  max_file_mb: 256            # rotate the live file at this size
  max_files: 10               # rotated files kept (files the webhook still needs are kept)
  fsync: false                # true: fdatasync each batch (~5/s); a power cut loses at most 0.2 s
  webhook:
    url: ""                   # POST events in JSON batches here ("" = off); http:// or https://
    token_file: ""            # first line sent as "Authorization: Bearer <token>"
    batch: 500                # events per POST at most
    max_backlog_mb: 1024      # unshipped events kept on disk while the endpoint fails
bounce_rules: []              # [{class, code, enhanced, text}]: checked before the built-in rules
delivery:
  enabled: true               # false: accept and keep mail without delivering it
  helo_name: ""               # name sent in EHLO ("" = server.hostname)
  retry_intervals: "1m,5m,10m,30m,1h,2h,4h"  # waits between attempts; the last repeats
  retry_jitter_percent: 10    # spread of each wait, so deferred mail does not return at once
  queue_lifetime: 5d          # a recipient still deferred after this long bounces (expired)
  delay_warning: 4h           # NOTIFY=DELAY recipients get a delay DSN after this long
  smtp_port: 25               # port of MX hosts (routes name their own); tests use others
  tls: opportunistic          # STARTTLS to MX hosts: none, opportunistic or require
  dns_servers: []             # resolvers as "ip:port"; [] = those in /etc/resolv.conf
  dns_timeout_ms: 3000        # per-query DNS timeout
  routes: []                  # e.g. [{domain: "*", host: 127.0.0.1, port: 2526, tls: none}]
egress:
  sources: []                 # e.g. [{name: ip2, address: 127.0.0.2, ehlo: mta2.example.com}]
  pools: []                   # e.g. [{name: bulk, sources: [{source: ip2, weight: 3}]}]
streams:                      # traffic streams; each key below applies per stream
  - name: default             # named by listeners; letters, digits, '_', '.' and '-'
    pool: ""                  # egress pool to send from ("" = the kernel picks the address)
    priority: 0               # larger is served first where streams share a destination
    retry_intervals: ""       # waits between attempts ("" = delivery.retry_intervals)
    queue_lifetime: ""        # deferred recipients expire after this ("" = delivery.queue_lifetime)
shaping:                      # limits per egress source x destination
  default:                    # for destinations without a rule; rules inherit the keys they omit
    max_connections: 10       # concurrent connections
    max_messages_per_connection: 0  # messages per connection before it is closed (0 = unlimited)
    max_message_rate: ""      # e.g. 100/s, 3000/m or 20000/h ("" = unlimited)
    rate_burst: 0             # messages that may go at once (0 = one second's worth, at least 1)
    max_recipients_per_transaction: 100  # recipients of one message per SMTP transaction
    reserved_connections: 0   # of max_connections, kept for the highest-priority streams
    connect_timeout_s: 30     # TCP connect timeout per address
    idle_timeout_s: 5         # an idle outbound connection is kept this long for reuse
    backoff: []               # e.g. [{code: 421, text: "(?i)rate", action: slow, rate_factor: 0.5}]
    backoff_restore_interval: 1m  # each interval without a backoff reply doubles the rate back
  rules: []                   # e.g. [{name: gmail, mx_suffix: .google.com, max_connections: 20}]
suspended:                    # mail that waits in the queue instead of being delivered
  destinations: []            # recipient domains or shaping rule names
  sources: []                 # egress sources not sent from
  streams: []                 # streams whose mail is held
auth:                         # SMTP AUTH; each listener enables it with its own auth key
  password_file: ""           # user:hash:sender_domains[:stream] lines (see mtactl passwd)
  max_failures: 5             # failed AUTH attempts per client IP and per user ...
  failure_window: 5m          # ... within this window; later attempts get 454 until it passes
dkim:                         # DKIM signing of outgoing mail, once per message before spooling
  signing: []                 # e.g. [{domain: example.com, selector: s1, key_file: /etc/mta/s1.pem}]
                              #   optional per key: headers: [] (signed fields; [] = default),
                              #   oversign: [] ([] = from, subject, to), canonicalization:
                              #   relaxed/relaxed (or simple/simple, relaxed/simple,
                              #   simple/relaxed), expire: "" (e.g. 7d: x= that long after t=).
                              # The key is chosen by the From: domain (exact match, else the
                              # envelope sender's); several keys for one domain = dual signing.
  on_key_error: reject        # a missing or bad key file fails start-up (SIGHUP keeps old keys)
  on_sign_error: tempfail     # signing failure: 451 4.7.0 and nothing spooled (never unsigned)
listeners:                    # SMTP listeners; each key below applies per listener
  - name: default             # label used in logs and the spool
    address: 127.0.0.1:2525   # IP literal and port ([v6]:port for IPv6)
    relay_networks: [127.0.0.0/8, "::1/128"]  # clients allowed to relay to any domain
    auth: {enabled: false, trusted: false}  # AUTH PLAIN LOGIN under TLS; trusted: plain text too
    stream: default           # stream when neither stream_networks nor stream_header chooses one
    stream_networks: []       # e.g. [{network: 10.0.0.0/8, stream: transactional}]
    stream_header: ""         # header naming the message's stream, e.g. X-Stream ("" = none)
    add_missing_headers: true # add Message-ID and Date when missing (submission role)
    greeting_delay_ms: 0      # wait before the greeting; clients that talk first are rejected
    tls: none                 # none, starttls (offered in EHLO) or implicit (TLS first, as on 465)
    tls_cert_file: ""         # PEM certificate chain for starttls/implicit (re-read on SIGHUP)
    tls_key_file: ""          # PEM private key of that certificate
)";

}  // namespace

absl::string_view DefaultConfigYaml() { return kDefaultYaml; }

}  // namespace mta::server
