//! Server configuration: a typed struct layered defaults → file → environment → flags.
//!
//! The environment is passed in as a map, never read here, so tests build any layering they need.
//! [`Config::problems`] reports every bad value at once; the binary then exits with status 64
//! before binding any port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Exit status for a configuration error (`EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// Everything `greyrouter serve` needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the gRPC server listens on.
    pub grpc_addr: SocketAddr,
    /// Address of the HTTP listener (`/healthz`, `/readyz`); absent: no HTTP listener.
    pub http_addr: Option<SocketAddr>,
    /// Where routing state is kept: `durable` (the default: the embedded store with its log of
    /// changes and snapshots in `data_dir`; acknowledged changes survive restarts and crashes),
    /// `memory` (gone with the process: tests and throwaway runs), or a Redis URL
    /// (`redis://`, `redis-sentinel://`, `redis-cluster://`).
    pub store: String,
    /// The data directory of the `durable` store (locked while in use).
    pub data_dir: PathBuf,
    /// The durable store writes a snapshot (and starts a new log segment) after this many
    /// changes.
    pub snapshot_every: u64,
    /// Snapshots the durable store keeps, with the log after the oldest of them: how far back
    /// watchers resume and `state --at-revision` reaches.
    pub keep_snapshots: usize,
    /// A TOML or JSON file of tenants, services, instances and pins loaded at start.
    pub seed: Option<PathBuf>,
    /// With the embedded store: a file every change is appended to as a JSON line (the audit
    /// trail beyond the in-memory log). With Redis the change stream is the trail.
    pub audit_file: Option<PathBuf>,
    /// Logging.
    pub log: LogConfig,
    /// Prometheus metrics on the HTTP listener (`/metrics`).
    pub metrics: MetricsConfig,
    /// OpenTelemetry traces exported over OTLP.
    pub tracing: TracingConfig,
    /// Request limits.
    pub limits: Limits,
    /// Assignment watchers.
    pub watch: WatchConfig,
    /// The Redis store, when `store` is a Redis URL.
    pub redis: RedisSettings,
    /// How often the store is checked for health, in milliseconds.
    pub health_interval_ms: u64,
    /// On shutdown, how long open calls may take to finish, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Outcome windows, outlier ejection and the rollout driver.
    pub outcomes: OutcomeSettings,
    /// Per-tenant schema migrations.
    pub schema: SchemaSettings,
    /// The runtime and HTTP/2 settings of the gRPC server.
    pub server: ServerSettings,
    /// Service discovery: the sources instances come from.
    pub discovery: nacos_sync::DiscoverySettings,
    /// TLS for the gRPC listener; absent: plaintext.
    pub tls: Option<crate::security::TlsConfig>,
    /// Who may call (tokens, API keys, client certificates); absent: auth off.
    pub auth: Option<crate::security::AuthConfig>,
    /// The HTTP gateway: run in-process when `gateway.listen` is set, and read by
    /// `greyrouter gateway --config`.
    pub gateway: crate::gateway_config::GatewayConfig,
    /// The values of the environment variables `[discovery]` names for credentials; read from
    /// the environment only, never from the file, never printed.
    #[serde(skip)]
    pub secrets: Secrets,
}

/// Credentials read from the environment, by variable name; `Debug` shows the names only.
#[derive(Clone, Default, PartialEq)]
pub struct Secrets(pub BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The tokio runtime and the HTTP/2 connections of `greyrouter serve`.
///
/// The window defaults are hyper's server defaults (what tonic uses when none is set), so that
/// leaving them out and writing them down behave the same.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Runtime worker threads; 0: one per core.
    pub worker_threads: usize,
    /// HTTP/2 `SETTINGS_INITIAL_WINDOW_SIZE`: bytes a client may send on one call before the
    /// server acknowledges them.
    pub http2_initial_stream_window_bytes: u32,
    /// HTTP/2 connection-level flow-control window, in bytes.
    pub http2_initial_connection_window_bytes: u32,
    /// Sizes the windows from the measured bandwidth-delay product instead (BDP pings); the two
    /// window settings are then ignored.
    pub http2_adaptive_window: bool,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: most calls open at once on one connection
    /// (a client opening more waits for one to finish); 0: no limit.
    pub max_concurrent_streams: u32,
    /// HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`: largest block of request headers (metadata),
    /// in bytes; larger requests are refused before any handler runs.
    pub http2_max_header_list_bytes: u32,
    /// Interval of HTTP/2 keep-alive pings on idle connections, in milliseconds; 0: no pings.
    pub http2_keepalive_interval_ms: u64,
    /// How long a keep-alive ping may go unanswered before the connection is closed, in
    /// milliseconds.
    pub http2_keepalive_timeout_ms: u64,
}

/// Most runtime worker threads `server.worker_threads` may ask for.
pub const MAX_WORKER_THREADS: usize = 1024;

/// Calls one connection may have open at once, unless `[server] max_concurrent_streams` says
/// otherwise: enough for a gateway multiplexing a busy service, far below what would let one
/// client hold thousands of watch streams.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1_000;

/// Largest block of request headers by default (grpc-go and Envoy use 16 KiB too).
pub const DEFAULT_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Smallest HTTP/2 flow-control window (RFC 9113 §6.9.2, the initial value).
pub const MIN_HTTP2_WINDOW: u32 = 65_535;

/// Largest HTTP/2 flow-control window (RFC 9113 §6.9.1: 2^31 - 1).
pub const MAX_HTTP2_WINDOW: u32 = (1 << 31) - 1;

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            worker_threads: 0,
            http2_initial_stream_window_bytes: 1024 * 1024,
            http2_initial_connection_window_bytes: 1024 * 1024,
            http2_adaptive_window: false,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            http2_max_header_list_bytes: DEFAULT_MAX_HEADER_LIST_BYTES,
            http2_keepalive_interval_ms: 0,
            http2_keepalive_timeout_ms: 20_000,
        }
    }
}

impl ServerSettings {
    /// Returns one line per bad value.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.worker_threads > MAX_WORKER_THREADS {
            problems.push(format!(
                "server.worker_threads: {} is more than {MAX_WORKER_THREADS} (0: one per core)",
                self.worker_threads
            ));
        }
        for (key, bytes) in [
            (
                "http2_initial_stream_window_bytes",
                self.http2_initial_stream_window_bytes,
            ),
            (
                "http2_initial_connection_window_bytes",
                self.http2_initial_connection_window_bytes,
            ),
        ] {
            if !(MIN_HTTP2_WINDOW..=MAX_HTTP2_WINDOW).contains(&bytes) {
                problems.push(format!(
                    "server.{key}: {bytes} is outside the HTTP/2 window range \
                     {MIN_HTTP2_WINDOW} to {MAX_HTTP2_WINDOW} bytes"
                ));
            }
        }
        if !(1024..=1 << 24).contains(&self.http2_max_header_list_bytes) {
            problems.push(format!(
                "server.http2_max_header_list_bytes: {} is outside 1 KiB to 16 MiB",
                self.http2_max_header_list_bytes
            ));
        }
        if self.http2_keepalive_interval_ms > 0 && self.http2_keepalive_timeout_ms == 0 {
            problems.push(
                "server.http2_keepalive_timeout_ms: must be positive when keep-alive pings are on"
                    .to_owned(),
            );
        }
        problems
    }

    /// Returns the worker threads to start, or `None` for one per core.
    pub fn worker_threads(&self) -> Option<usize> {
        (self.worker_threads > 0).then_some(self.worker_threads)
    }
}

/// Settings of per-tenant schema migrations.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaSettings {
    /// The migration catalog: `<dir>/<service>/NNNN_name.up.sql` and `versions.toml`.
    pub migrations: PathBuf,
    /// A tenant's database, `{tenant}` replaced by its id, e.g.
    /// `postgres://app@db:5432/app` (a schema per tenant) or `postgres://app@db/tenant_{tenant}`.
    /// Empty: schema migrations are off.
    pub database_url: String,
    /// The tenant's schema in that database (a tenant label `schema` overrides it); on MySQL,
    /// the tenant's database.
    pub schema: String,
    /// The database engine: `postgres` or `mysql` (MySQL 8, MariaDB 10.11+); empty: the URL's
    /// scheme says (`postgres://`, `postgresql://`, `mysql://`, `mariadb://`).
    pub engine: String,
    /// Idle database connections kept for the next tenants, over all tenant databases.
    pub max_idle_connections: usize,
    /// MySQL: the command that runs the `ALTER TABLE` statements of migrations marked
    /// `-- greyrouter: online-schema-change` (`{alter}`, `{table}`, `{database}`, `{host}`,
    /// `{port}`, `{user}`, `{password}` are replaced; no shell). Empty: none.
    pub online_schema_change: String,
    /// Tenants migrated at once by one upgrade.
    pub max_concurrent_upgrades: usize,
    /// Longest a single migration may run, in milliseconds.
    pub migration_timeout_ms: u64,
    /// How long to wait for another migrator working on the same tenant, in milliseconds.
    pub lock_timeout_ms: u64,
}

impl std::fmt::Debug for SchemaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("SchemaSettings")
            .field("migrations", &self.migrations)
            .field(
                "database_url",
                &if self.database_url.is_empty() {
                    ""
                } else {
                    "<set>"
                },
            )
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl Default for SchemaSettings {
    fn default() -> Self {
        SchemaSettings {
            migrations: PathBuf::from("migrations"),
            database_url: String::new(),
            schema: "tenant_{tenant}".to_owned(),
            engine: String::new(),
            max_idle_connections: 16,
            online_schema_change: String::new(),
            max_concurrent_upgrades: 5,
            migration_timeout_ms: 60_000,
            lock_timeout_ms: 10_000,
        }
    }
}

pub use control::node::OutcomeSettings;

/// Settings of the Redis store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// Prefix (hash tag) of every key.
    pub prefix: String,
    /// How long a Redis command may take before the change fails as `UNAVAILABLE`.
    pub command_timeout_ms: u64,
    /// How long connecting may take.
    pub connect_timeout_ms: u64,
    /// First reconnection delay; it doubles up to the maximum.
    pub reconnect_min_delay_ms: u64,
    /// Longest reconnection delay.
    pub reconnect_max_delay_ms: u64,
    /// Changes kept in the change stream.
    pub stream_max_len: u64,
    /// Replicas that must acknowledge a change (Redis `WAIT`) before it is answered as
    /// committed; 0: answered once the master applied it.
    pub min_replicas_acked: u32,
    /// How long to wait for those acknowledgements before answering `UNAVAILABLE`, in
    /// milliseconds.
    pub replica_ack_timeout_ms: u64,
    /// Whether a load reads tenants over a connection of its own, parsing replies in place
    /// (standalone and Sentinel; a Cluster is always read through the client).
    pub bulk_load: bool,
}

impl Default for RedisSettings {
    fn default() -> Self {
        let defaults = redis_store::RedisConfig::new("");
        RedisSettings {
            prefix: defaults.prefix,
            command_timeout_ms: millis(defaults.command_timeout),
            connect_timeout_ms: millis(defaults.connect_timeout),
            reconnect_min_delay_ms: millis(defaults.reconnect_min_delay),
            reconnect_max_delay_ms: millis(defaults.reconnect_max_delay),
            stream_max_len: defaults.stream_max_len,
            min_replicas_acked: defaults.min_replicas_acked,
            replica_ack_timeout_ms: millis(defaults.replica_ack_timeout),
            bulk_load: defaults.bulk_load,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Config {
    /// The settings of the node.
    pub fn node_settings(&self) -> control::NodeSettings {
        control::NodeSettings {
            history: self.watch.history,
            history_bytes: self.watch.history_bytes,
            watch: control::watch::WatchLimits {
                max_queued_bytes: self.watch.max_queued_bytes,
                max_shared_bytes: self.watch.max_shared_bytes,
                max_assignments_per_message: self.watch.max_assignments_per_message,
                buffer: self.watch.buffer,
            },
            max_metadata_entries: self.limits.max_metadata_entries,
            max_metadata_bytes: self.limits.max_metadata_bytes,
            max_watch_filter: self.limits.max_watch_filter,
            outcomes: self.outcomes.clone(),
            limits: self.limits.settings(),
            metrics: control::telemetry::MetricsSettings {
                tenant_labels: self.metrics.tenant_labels,
                max_tenant_labels: self.metrics.max_tenant_labels,
            },
        }
    }

    /// The settings of the gRPC listener.
    pub fn grpc_settings(&self) -> grpc_server::GrpcSettings {
        let server = &self.server;
        grpc_server::GrpcSettings {
            initial_stream_window_bytes: server.http2_initial_stream_window_bytes,
            initial_connection_window_bytes: server.http2_initial_connection_window_bytes,
            adaptive_window: server.http2_adaptive_window,
            max_concurrent_streams: server.max_concurrent_streams,
            max_header_list_bytes: server.http2_max_header_list_bytes,
            keepalive_interval: (server.http2_keepalive_interval_ms > 0)
                .then(|| Duration::from_millis(server.http2_keepalive_interval_ms)),
            keepalive_timeout: Duration::from_millis(server.http2_keepalive_timeout_ms),
            max_request_bytes: self.limits.max_request_bytes,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            health_interval: Duration::from_millis(self.health_interval_ms),
            route_spans: self.tracing.route_spans,
        }
    }

    /// Whether the store is Redis.
    pub fn uses_redis(&self) -> bool {
        self.store.starts_with("redis")
    }

    /// Returns the Redis store settings for the configured URL.
    pub fn redis_config(&self) -> redis_store::RedisConfig {
        let mut config = redis_store::RedisConfig::new(self.store.clone());
        config.prefix = self.redis.prefix.clone();
        config.command_timeout = Duration::from_millis(self.redis.command_timeout_ms);
        config.connect_timeout = Duration::from_millis(self.redis.connect_timeout_ms);
        config.reconnect_min_delay = Duration::from_millis(self.redis.reconnect_min_delay_ms);
        config.reconnect_max_delay = Duration::from_millis(self.redis.reconnect_max_delay_ms);
        config.stream_max_len = self.redis.stream_max_len;
        config.min_replicas_acked = self.redis.min_replicas_acked;
        config.replica_ack_timeout = Duration::from_millis(self.redis.replica_ack_timeout_ms);
        config.bulk_load = self.redis.bulk_load;
        config
    }
}

/// Metrics settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Record metrics and serve them on `GET /metrics` of the HTTP listener.
    pub enabled: bool,
    /// Also count routing decisions per tenant (`grey_router_tenant_requests_total`).
    pub tenant_labels: bool,
    /// Most tenants with a series of their own; the others share `tenant="_other"`.
    pub max_tenant_labels: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            tenant_labels: false,
            max_tenant_labels: 100,
        }
    }
}

/// Most tenants with a series of their own, whatever the configuration says.
pub const MAX_TENANT_LABELS: usize = 10_000;

/// Trace export settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The OTLP/gRPC endpoint spans are exported to (`http://collector:4317`); empty: no export.
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` set it too.
    pub otlp_endpoint: String,
    /// The `service.name` of the exported spans (`OTEL_SERVICE_NAME`).
    pub service_name: String,
    /// Share of traces started here that are sampled, 0 to 1 (`OTEL_TRACES_SAMPLER_ARG`);
    /// a call that carries a `traceparent` follows its caller's sampling decision.
    pub sampling_ratio: f64,
    /// Spans for `Route` and `RouteBatch` calls too (off: they cost on the hot path).
    pub route_spans: bool,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: String::new(),
            service_name: "greyrouter".to_owned(),
            sampling_ratio: 1.0,
            route_spans: false,
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `greyrouter=debug`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

/// Limits on what a request may carry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest encoded request message, in bytes.
    pub max_request_bytes: usize,
    /// Most metadata entries on a `Route` request.
    pub max_metadata_entries: usize,
    /// Most metadata bytes (keys and values) on a `Route` request.
    pub max_metadata_bytes: usize,
    /// Most tenants or services named by one watch.
    pub max_watch_filter: usize,
    /// Router calls (Route, RouteBatch, WatchAssignments, outcome reports) per second per
    /// caller; 0: no limit. A caller is its verified identity, or its address with auth off.
    pub router_calls_per_second_per_caller: f64,
    /// Router calls per second per tenant (each decision of a batch counts); 0: no limit.
    pub router_calls_per_second_per_tenant: f64,
    /// Admin calls per second per caller; 0: no limit.
    pub admin_calls_per_second_per_caller: f64,
    /// Admin calls per second per tenant they name; 0: no limit.
    pub admin_calls_per_second_per_tenant: f64,
    /// Calls saved up for a burst, in seconds of each rate.
    pub burst_seconds: f64,
    /// Most calls in flight on the router; beyond, calls are refused at once; 0: no cap.
    pub max_in_flight: usize,
    /// Most open watch streams per caller; 0: no cap.
    pub max_watches_per_caller: usize,
    /// Most callers and tenants with a rate budget of their own (bounds the memory).
    pub max_tracked_keys: usize,
}

/// Settings of `WatchAssignments`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Changes kept for watchers to resume from.
    pub history: usize,
    /// Memory the kept changes may hold on their own (old revisions' replaced entries), in
    /// bytes; the oldest changes are dropped beyond it.
    pub history_bytes: usize,
    /// Memory the messages queued for one watcher may take, in bytes; a watcher that does not
    /// read waits for room, then catches up from the history or a fresh snapshot.
    pub max_queued_bytes: usize,
    /// Memory of the encoded messages shared by watchers of the same filter (a snapshot or a
    /// change encoded once for all of them), in bytes; past it, watchers encode their own.
    /// 0: nothing is shared.
    pub max_shared_bytes: usize,
    /// Most assignments in one streamed message; larger updates are split.
    pub max_assignments_per_message: usize,
    /// Messages buffered per watcher before it counts as slow.
    pub buffer: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_addr: None,
            store: "durable".to_owned(),
            data_dir: PathBuf::from("greyrouter-data"),
            snapshot_every: 20_000,
            keep_snapshots: 3,
            seed: None,
            audit_file: None,
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            tracing: TracingConfig::default(),
            limits: Limits::default(),
            watch: WatchConfig::default(),
            redis: RedisSettings::default(),
            health_interval_ms: 1000,
            shutdown_grace_ms: 10_000,
            outcomes: OutcomeSettings::default(),
            schema: SchemaSettings::default(),
            server: ServerSettings::default(),
            discovery: nacos_sync::DiscoverySettings::default(),
            tls: None,
            auth: None,
            gateway: crate::gateway_config::GatewayConfig::default(),
            secrets: Secrets::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: "text".to_owned(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 1024 * 1024,
            max_metadata_entries: 64,
            max_metadata_bytes: 8 * 1024,
            max_watch_filter: 10_000,
            router_calls_per_second_per_caller: 100_000.0,
            router_calls_per_second_per_tenant: 20_000.0,
            admin_calls_per_second_per_caller: 10_000.0,
            admin_calls_per_second_per_tenant: 1_000.0,
            burst_seconds: 1.0,
            max_in_flight: 4_096,
            max_watches_per_caller: 1_000,
            max_tracked_keys: 100_000,
        }
    }
}

impl Limits {
    /// The node's rate limits and caps.
    pub fn settings(&self) -> control::access::LimitSettings {
        let rate = |per_second: f64| routing_core::limits::Rate {
            per_second,
            burst: (per_second * self.burst_seconds).max(1.0),
        };
        control::access::LimitSettings {
            router_per_caller: rate(self.router_calls_per_second_per_caller),
            router_per_tenant: rate(self.router_calls_per_second_per_tenant),
            admin_per_caller: rate(self.admin_calls_per_second_per_caller),
            admin_per_tenant: rate(self.admin_calls_per_second_per_tenant),
            max_in_flight: self.max_in_flight,
            max_watches_per_caller: self.max_watches_per_caller,
            max_tracked_keys: self.max_tracked_keys,
        }
    }
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            history: 4096,
            history_bytes: 32 * 1024 * 1024,
            max_queued_bytes: 256 * 1024,
            max_shared_bytes: 256 * 1024 * 1024,
            max_assignments_per_message: 100,
            buffer: 16,
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--grpc-addr`.
    pub grpc_addr: Option<SocketAddr>,
    /// `--http-addr`.
    pub http_addr: Option<SocketAddr>,
    /// `--store`.
    pub store: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--seed`.
    pub seed: Option<PathBuf>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--worker-threads`.
    pub worker_threads: Option<usize>,
}

/// How an environment variable sets its key.
type Setter = fn(&mut Config, &str) -> Result<(), String>;

/// One environment variable: its name, the key it sets, and how.
#[derive(Clone, Copy)]
pub struct EnvVar {
    /// The variable, `GREYROUTER_...`.
    pub name: &'static str,
    /// The configuration key it sets (`section.key`).
    pub key: &'static str,
    set: Setter,
}

impl std::fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.name, self.key)
    }
}

fn parse<T: std::str::FromStr>(value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| e.to_string())
}

/// The one table of environment variables read by [`Config::load`]: what each sets and how.
pub const ENV_VARS: &[EnvVar] = &[
    EnvVar {
        name: "GREYROUTER_GRPC_ADDR",
        key: "grpc_addr",
        set: |c, v| {
            c.grpc_addr = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_HTTP_ADDR",
        key: "http_addr",
        set: |c, v| {
            c.http_addr = Some(parse(v)?);
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_METRICS",
        key: "metrics.enabled",
        set: |c, v| {
            c.metrics.enabled = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_METRICS_TENANT_LABELS",
        key: "metrics.tenant_labels",
        set: |c, v| {
            c.metrics.tenant_labels = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "OTEL_EXPORTER_OTLP_ENDPOINT",
        key: "tracing.otlp_endpoint",
        set: |c, v| {
            c.tracing.otlp_endpoint = v.to_owned();
            Ok(())
        },
    },
    // Read after the general endpoint: the traces endpoint wins when both are set.
    EnvVar {
        name: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        key: "tracing.otlp_endpoint",
        set: |c, v| {
            c.tracing.otlp_endpoint = v.to_owned();
            Ok(())
        },
    },
    EnvVar {
        name: "OTEL_SERVICE_NAME",
        key: "tracing.service_name",
        set: |c, v| {
            c.tracing.service_name = v.to_owned();
            Ok(())
        },
    },
    EnvVar {
        name: "OTEL_TRACES_SAMPLER_ARG",
        key: "tracing.sampling_ratio",
        set: |c, v| {
            c.tracing.sampling_ratio = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_STORE",
        key: "store",
        set: |c, v| {
            c.store = v.to_owned();
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_DATA_DIR",
        key: "data_dir",
        set: |c, v| {
            c.data_dir = PathBuf::from(v);
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_SNAPSHOT_EVERY",
        key: "snapshot_every",
        set: |c, v| {
            c.snapshot_every = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_KEEP_SNAPSHOTS",
        key: "keep_snapshots",
        set: |c, v| {
            c.keep_snapshots = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_SEED",
        key: "seed",
        set: |c, v| {
            c.seed = Some(PathBuf::from(v));
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_LOG_LEVEL",
        key: "log.level",
        set: |c, v| {
            c.log.level = v.to_owned();
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_LOG_FORMAT",
        key: "log.format",
        set: |c, v| {
            c.log.format = v.to_owned();
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_MAX_REQUEST_BYTES",
        key: "limits.max_request_bytes",
        set: |c, v| {
            c.limits.max_request_bytes = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_ROUTER_CALLS_PER_SECOND_PER_CALLER",
        key: "limits.router_calls_per_second_per_caller",
        set: |c, v| {
            c.limits.router_calls_per_second_per_caller = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_ROUTER_CALLS_PER_SECOND_PER_TENANT",
        key: "limits.router_calls_per_second_per_tenant",
        set: |c, v| {
            c.limits.router_calls_per_second_per_tenant = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_ADMIN_CALLS_PER_SECOND_PER_CALLER",
        key: "limits.admin_calls_per_second_per_caller",
        set: |c, v| {
            c.limits.admin_calls_per_second_per_caller = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_ADMIN_CALLS_PER_SECOND_PER_TENANT",
        key: "limits.admin_calls_per_second_per_tenant",
        set: |c, v| {
            c.limits.admin_calls_per_second_per_tenant = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_MAX_IN_FLIGHT",
        key: "limits.max_in_flight",
        set: |c, v| {
            c.limits.max_in_flight = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_WATCH_HISTORY",
        key: "watch.history",
        set: |c, v| {
            c.watch.history = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_WATCH_HISTORY_BYTES",
        key: "watch.history_bytes",
        set: |c, v| {
            c.watch.history_bytes = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_REDIS_PREFIX",
        key: "redis.prefix",
        set: |c, v| {
            c.redis.prefix = v.to_owned();
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_REDIS_COMMAND_TIMEOUT_MS",
        key: "redis.command_timeout_ms",
        set: |c, v| {
            c.redis.command_timeout_ms = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_REDIS_MIN_REPLICAS_ACKED",
        key: "redis.min_replicas_acked",
        set: |c, v| {
            c.redis.min_replicas_acked = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_REDIS_REPLICA_ACK_TIMEOUT_MS",
        key: "redis.replica_ack_timeout_ms",
        set: |c, v| {
            c.redis.replica_ack_timeout_ms = parse(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_SCHEMA_DATABASE_URL",
        key: "schema.database_url",
        set: |c, v| {
            c.schema.database_url = v.to_owned();
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_SCHEMA_MIGRATIONS",
        key: "schema.migrations",
        set: |c, v| {
            c.schema.migrations = PathBuf::from(v);
            Ok(())
        },
    },
    EnvVar {
        name: "GREYROUTER_WORKER_THREADS",
        key: "server.worker_threads",
        set: |c, v| {
            c.server.worker_threads = parse(v)?;
            Ok(())
        },
    },
];

/// A configuration that cannot be used; lists every problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .problems.join("\n  "))]
pub struct ConfigError {
    /// One line per problem.
    pub problems: Vec<String>,
}

impl Config {
    /// Layers defaults, the file (if any), the environment and the flags, then validates.
    pub fn load(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
        flags: Overrides,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut config = match file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => toml::from_str(&text).unwrap_or_else(|err| {
                    problems.push(format!("{}: {err}", path.display()));
                    Config::default()
                }),
                Err(err) => {
                    problems.push(format!("{}: {err}", path.display()));
                    Config::default()
                }
            },
            None => Config::default(),
        };
        for var in ENV_VARS {
            if let Some(value) = env.get(var.name)
                && let Err(problem) = (var.set)(&mut config, value)
            {
                problems.push(format!("{}={value:?}: {problem}", var.name));
            }
        }
        let token_env = &config.discovery.tenants.token_env;
        if !token_env.is_empty() {
            match env.get(token_env) {
                Some(value) => {
                    config.secrets.0.insert(token_env.clone(), value.clone());
                }
                None => problems.push(format!(
                    "discovery.tenants: environment variable {token_env} is not set"
                )),
            }
        }
        if let Some(name) = config
            .auth
            .as_ref()
            .map(|auth| auth.hs256_secret_env.clone())
            .filter(|name| !name.is_empty())
        {
            match env.get(&name) {
                Some(value) => {
                    config.secrets.0.insert(name, value.clone());
                }
                None => problems.push(format!("auth: environment variable {name} is not set")),
            }
        }
        for source in &config.discovery.sources {
            let nacos = &source.nacos;
            for name in [
                &nacos.username_env,
                &nacos.password_env,
                &nacos.access_token_env,
            ] {
                if name.is_empty() {
                    continue;
                }
                match env.get(name) {
                    Some(value) => {
                        config.secrets.0.insert(name.clone(), value.clone());
                    }
                    None => problems.push(format!(
                        "discovery.sources[{}]: environment variable {name} is not set",
                        source.name
                    )),
                }
            }
        }
        if let Some(addr) = flags.grpc_addr {
            config.grpc_addr = addr;
        }
        if let Some(addr) = flags.http_addr {
            config.http_addr = Some(addr);
        }
        if let Some(store) = flags.store {
            config.store = store;
        }
        if let Some(dir) = flags.data_dir {
            config.data_dir = dir;
        }
        if let Some(seed) = flags.seed {
            config.seed = Some(seed);
        }
        if let Some(level) = flags.log_level {
            config.log.level = level;
        }
        if let Some(threads) = flags.worker_threads {
            config.server.worker_threads = threads;
        }
        problems.extend(config.problems());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Checks every value; returns one line per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.gateway.problems();
        if self.gateway.listen.is_some() && (self.tls.is_some() || self.auth.is_some()) {
            problems.push(
                "gateway.listen: the gateway inside serve follows this server over plaintext without credentials; with [tls] or [auth] run `greyrouter gateway` with --token and --ca-file"
                    .to_owned(),
            );
        }
        if self.uses_redis() {
            problems.extend(self.redis_config().problems());
        } else if !["memory", "memory://", "durable"].contains(&self.store.as_str()) {
            problems.push(format!(
                "store: unsupported store '{}' (use memory, durable, redis://, redis-sentinel:// or redis-cluster://)",
                self.store
            ));
        }
        let window = routing_core::outcome::WindowConfig {
            span_ms: self.outcomes.window_seconds.saturating_mul(1000),
            slots: self.outcomes.window_slots,
        };
        if let Err(problem) = window.validate() {
            problems.push(format!("outcomes.window: {problem}"));
        }
        if let Err(problem) = self.outcomes.ejection.validate() {
            problems.push(format!("outcomes.ejection: {problem}"));
        }
        if self.outcomes.rollout_tick_ms == 0
            || self.outcomes.rollout_lease_ms <= self.outcomes.rollout_tick_ms
        {
            problems.push(
                "outcomes: rollout_tick_ms must be positive and below rollout_lease_ms".to_owned(),
            );
        }
        if !self.schema.database_url.is_empty() {
            if !self.schema.migrations.is_dir() {
                problems.push(format!(
                    "schema.migrations: {} is not a directory",
                    self.schema.migrations.display()
                ));
            }
            let scheme = self
                .schema
                .database_url
                .split_once("://")
                .map(|(scheme, _)| scheme.to_ascii_lowercase());
            if !matches!(
                scheme.as_deref(),
                Some("postgres" | "postgresql" | "mysql" | "mariadb")
            ) {
                problems.push(
                    "schema.database_url: must be a postgres://, postgresql://, mysql:// or \
                     mariadb:// URL"
                        .to_owned(),
                );
            } else {
                let by_url = schema_manager::EngineKind::from_url(&self.schema.database_url);
                match self.schema.engine.as_str() {
                    "" => {}
                    "postgres" | "mysql" if self.schema.engine == by_url.as_str() => {}
                    "postgres" | "mysql" => problems.push(format!(
                        "schema.engine: {} does not match the {} URL of schema.database_url",
                        self.schema.engine,
                        by_url.as_str()
                    )),
                    other => {
                        problems.push(format!("schema.engine: {other:?} is not postgres or mysql"))
                    }
                }
            }
            if self.schema.max_concurrent_upgrades == 0 || self.schema.migration_timeout_ms == 0 {
                problems.push(
                    "schema: max_concurrent_upgrades and migration_timeout_ms must be positive"
                        .to_owned(),
                );
            }
        }
        if self.health_interval_ms == 0 {
            problems.push("health_interval_ms: must be positive".to_owned());
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            problems.push(format!(
                "log.format: '{}' is not text or json",
                self.log.format
            ));
        }
        if self.metrics.max_tenant_labels > MAX_TENANT_LABELS {
            problems.push(format!(
                "metrics.max_tenant_labels: {} is more than {MAX_TENANT_LABELS}",
                self.metrics.max_tenant_labels
            ));
        }
        if !(0.0..=1.0).contains(&self.tracing.sampling_ratio) {
            problems.push(format!(
                "tracing.sampling_ratio: {} is outside 0 to 1",
                self.tracing.sampling_ratio
            ));
        }
        let endpoint = &self.tracing.otlp_endpoint;
        let http = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !endpoint.is_empty() && !http {
            problems.push(format!(
                "tracing.otlp_endpoint: {:?} is not an http:// or https:// URL",
                self.tracing.otlp_endpoint
            ));
        }
        if self.tracing.service_name.is_empty() {
            problems.push("tracing.service_name: must not be empty".to_owned());
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!("log.level: {err}"));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.limits.max_request_bytes) {
            problems.push("limits.max_request_bytes: must be 1 KiB to 64 MiB".to_owned());
        }
        if self.limits.max_metadata_entries == 0 || self.limits.max_metadata_bytes == 0 {
            problems.push("limits: metadata limits must be positive".to_owned());
        }
        if self.snapshot_every == 0 {
            problems.push("snapshot_every: must be positive".to_owned());
        }
        if self.keep_snapshots == 0 {
            problems.push("keep_snapshots: must be positive".to_owned());
        }
        let rates = [
            self.limits.router_calls_per_second_per_caller,
            self.limits.router_calls_per_second_per_tenant,
            self.limits.admin_calls_per_second_per_caller,
            self.limits.admin_calls_per_second_per_tenant,
        ];
        if rates.iter().any(|rate| !rate.is_finite() || *rate < 0.0) {
            problems.push("limits: call rates must be 0 (no limit) or positive".to_owned());
        }
        if !(self.limits.burst_seconds.is_finite() && self.limits.burst_seconds > 0.0) {
            problems.push("limits.burst_seconds: must be positive".to_owned());
        }
        if self.limits.max_tracked_keys == 0 {
            problems.push("limits.max_tracked_keys: must be positive".to_owned());
        }
        if let Some(tls) = &self.tls {
            problems.extend(tls.problems());
        }
        if let Some(auth) = &self.auth {
            problems.extend(auth.problems());
        }
        if self.limits.max_watch_filter == 0 {
            problems.push("limits.max_watch_filter: must be positive".to_owned());
        }
        if self.watch.history == 0 {
            problems.push("watch.history: must be positive".to_owned());
        }
        if !(64 * 1024..=1 << 40).contains(&self.watch.history_bytes) {
            problems.push("watch.history_bytes: must be 64 KiB to 1 TiB".to_owned());
        }
        if !(4 * 1024..=1 << 30).contains(&self.watch.max_queued_bytes) {
            problems.push("watch.max_queued_bytes: must be 4 KiB to 1 GiB".to_owned());
        }
        if self.watch.max_shared_bytes > 1 << 40 {
            problems.push("watch.max_shared_bytes: must be at most 1 TiB".to_owned());
        }
        if self.watch.max_assignments_per_message == 0 || self.watch.buffer == 0 {
            problems
                .push("watch: max_assignments_per_message and buffer must be positive".to_owned());
        }
        if let Some(seed) = &self.seed
            && !seed.is_file()
        {
            problems.push(format!("seed: {} is not a readable file", seed.display()));
        }
        problems.extend(self.server.problems());
        problems.extend(self.discovery.problems());
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Variables of the test harness and of the CLI client, not of the server.
    const NOT_CONFIG: &[&str] = &[
        "GREYROUTER_SKIP_MISSING",
        "GREYROUTER_SERVER",
        "GREYROUTER_GATEWAY_ADDR",
        "GREYROUTER_GATEWAY_THREADS",
        "GREYROUTER_SCREENSHOTS",
        "GREYROUTER_TOKEN",
        "GREYROUTER_CA_FILE",
        "GREYROUTER_CERT_FILE",
        "GREYROUTER_KEY_FILE",
    ];

    #[test]
    fn every_variable_the_docs_name_is_read() {
        let docs = [
            ("README.md", include_str!("../../../README.md")),
            (
                "deploy/greyrouter.toml",
                include_str!("../../../deploy/greyrouter.toml"),
            ),
        ];
        let mut named = 0;
        for (file, text) in docs {
            for (at, _) in text.match_indices("GREYROUTER_") {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if name == "GREYROUTER_" || NOT_CONFIG.contains(&name.as_str()) {
                    continue;
                }
                named += 1;
                let var = ENV_VARS
                    .iter()
                    .find(|var| var.name == name)
                    .unwrap_or_else(|| panic!("{file} names {name}, which is never read"));
                // Read, and it sets what it says: a bad value is reported under its name.
                let env = BTreeMap::from([(name.clone(), "\u{0}not a value".to_owned())]);
                let config = Config::load(None, &env, Overrides::default());
                let text_key = matches!(
                    var.key,
                    "store"
                        | "seed"
                        | "data_dir"
                        | "log.level"
                        | "log.format"
                        | "redis.prefix"
                        | "schema.database_url"
                        | "schema.migrations"
                );
                if !text_key {
                    let err = config.expect_err(&name);
                    assert!(
                        err.problems.iter().any(|p| p.starts_with(&name)),
                        "{name}: {:?}",
                        err.problems
                    );
                }
            }
        }
        assert!(named >= ENV_VARS.len(), "the docs name {named} variables");
    }

    #[test]
    fn every_variable_in_the_table_sets_its_key() {
        // Each variable, set alone, changes the configuration from the default.
        for var in ENV_VARS {
            let value = match var.key {
                "grpc_addr" | "http_addr" => "127.0.0.1:1",
                "log.format" => "json",
                "store" => "redis://127.0.0.1:1",
                "redis.prefix"
                | "log.level"
                | "schema.database_url"
                | "schema.migrations"
                | "seed" => "elsewhere",
                "keep_snapshots" => "7",
                "metrics.enabled" => "false",
                "metrics.tenant_labels" => "true",
                "tracing.otlp_endpoint" => "http://127.0.0.1:4317",
                "tracing.service_name" => "elsewhere",
                "tracing.sampling_ratio" => "0.5",
                _ => "3",
            };
            let env = BTreeMap::from([(var.name.to_owned(), value.to_owned())]);
            let mut config = Config::default();
            (var.set)(&mut config, &env[var.name]).expect(var.name);
            assert_ne!(config, Config::default(), "{} changes nothing", var.name);
        }
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("greyrouter.toml");
        std::fs::write(
            &file,
            "grpc_addr = \"127.0.0.1:6000\"\n[log]\nlevel = \"debug\"\n[watch]\nhistory = 10\n",
        )
        .expect("write");
        let env = BTreeMap::from([
            (
                "GREYROUTER_GRPC_ADDR".to_owned(),
                "127.0.0.1:7000".to_owned(),
            ),
            ("GREYROUTER_WATCH_HISTORY".to_owned(), "20".to_owned()),
        ]);
        let flags = Overrides {
            grpc_addr: Some(SocketAddr::from(([127, 0, 0, 1], 8000))),
            ..Overrides::default()
        };
        let config = Config::load(Some(&file), &env, flags).expect("valid");
        assert_eq!(config.grpc_addr.port(), 8000);
        assert_eq!(config.watch.history, 20);
        assert_eq!(config.log.level, "debug");
    }

    #[test]
    fn reports_every_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[log]\nformat = \"xml\"\n[watch]\nhistory = 0\n").expect("write");
        let env = BTreeMap::from([
            ("GREYROUTER_GRPC_ADDR".to_owned(), "nowhere".to_owned()),
            ("GREYROUTER_STORE".to_owned(), "etcd://x".to_owned()),
        ]);
        let err = Config::load(Some(&file), &env, Overrides::default()).expect_err("invalid");
        let text = err.to_string();
        for needle in [
            "GREYROUTER_GRPC_ADDR",
            "store:",
            "log.format",
            "watch.history",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn bad_metrics_and_tracing_settings_are_reported() {
        let env = BTreeMap::from([
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                "collector:4317".to_owned(),
            ),
            ("OTEL_TRACES_SAMPLER_ARG".to_owned(), "1.5".to_owned()),
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.toml");
        std::fs::write(
            &file,
            "[metrics]
max_tenant_labels = 1000000
",
        )
        .expect("write");
        let err = Config::load(Some(&file), &env, Overrides::default()).expect_err("invalid");
        let text = err.to_string();
        for needle in [
            "tracing.otlp_endpoint",
            "tracing.sampling_ratio",
            "metrics.max_tenant_labels",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        // The traces endpoint wins over the general one.
        let env = BTreeMap::from([
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                "http://a:4317".to_owned(),
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".to_owned(),
                "http://b:4317".to_owned(),
            ),
        ]);
        let config = Config::load(None, &env, Overrides::default()).expect("valid");
        assert_eq!(config.tracing.otlp_endpoint, "http://b:4317");
    }

    #[test]
    fn deployed_example_is_the_default() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/greyrouter.toml");
        let config = Config::load(Some(&file), &BTreeMap::new(), Overrides::default())
            .expect("deploy/greyrouter.toml is valid");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn server_settings_layer_like_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("greyrouter.toml");
        std::fs::write(
            &file,
            "[server]\nworker_threads = 4\nhttp2_adaptive_window = true\n\
             max_concurrent_streams = 256\nhttp2_initial_stream_window_bytes = 2097152\n",
        )
        .expect("write");
        let config =
            Config::load(Some(&file), &BTreeMap::new(), Overrides::default()).expect("valid");
        assert_eq!(config.server.worker_threads(), Some(4));
        assert!(config.server.http2_adaptive_window);
        assert_eq!(config.server.max_concurrent_streams, 256);
        assert_eq!(
            config.server.http2_initial_stream_window_bytes,
            2 * 1024 * 1024
        );
        assert_eq!(
            config.server.http2_initial_connection_window_bytes,
            ServerSettings::default().http2_initial_connection_window_bytes,
            "keys left out keep their default"
        );

        let env = BTreeMap::from([("GREYROUTER_WORKER_THREADS".to_owned(), "2".to_owned())]);
        let config = Config::load(Some(&file), &env, Overrides::default()).expect("valid");
        assert_eq!(config.server.worker_threads(), Some(2));
        let flags = Overrides {
            worker_threads: Some(1),
            ..Overrides::default()
        };
        let config = Config::load(Some(&file), &env, flags).expect("valid");
        assert_eq!(config.server.worker_threads(), Some(1));
        let flags = Overrides {
            worker_threads: Some(0),
            ..Overrides::default()
        };
        let config = Config::load(Some(&file), &env, flags).expect("valid");
        assert_eq!(config.server.worker_threads(), None, "0: one per core");
    }

    #[test]
    fn server_settings_out_of_range_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "[server]\nworker_threads = 1025\nhttp2_initial_stream_window_bytes = 65534\n\
             http2_initial_connection_window_bytes = 2147483648\n\
             http2_keepalive_interval_ms = 1000\nhttp2_keepalive_timeout_ms = 0\n",
        )
        .expect("write");
        let err =
            Config::load(Some(&file), &BTreeMap::new(), Overrides::default()).expect_err("invalid");
        assert_eq!(
            err.problems,
            [
                "server.worker_threads: 1025 is more than 1024 (0: one per core)",
                "server.http2_initial_stream_window_bytes: 65534 is outside the HTTP/2 window \
                 range 65535 to 2147483647 bytes",
                "server.http2_initial_connection_window_bytes: 2147483648 is outside the HTTP/2 \
                 window range 65535 to 2147483647 bytes",
                "server.http2_keepalive_timeout_ms: must be positive when keep-alive pings are on",
            ]
        );

        // The edges are accepted.
        let edges = ServerSettings {
            worker_threads: MAX_WORKER_THREADS,
            http2_initial_stream_window_bytes: MIN_HTTP2_WINDOW,
            http2_initial_connection_window_bytes: MAX_HTTP2_WINDOW,
            ..ServerSettings::default()
        };
        assert_eq!(edges.problems(), Vec::<String>::new());

        let env = BTreeMap::from([("GREYROUTER_WORKER_THREADS".to_owned(), "many".to_owned())]);
        let err = Config::load(None, &env, Overrides::default()).expect_err("not a number");
        assert!(
            err.to_string()
                .contains("GREYROUTER_WORKER_THREADS=\"many\""),
            "{err}"
        );
    }

    #[test]
    fn replica_acknowledgements_layer_and_are_validated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("acked.toml");
        std::fs::write(
            &file,
            "store = \"redis://127.0.0.1:6379/0\"\n[redis]\nmin_replicas_acked = 1\n",
        )
        .expect("write");
        let config =
            Config::load(Some(&file), &BTreeMap::new(), Overrides::default()).expect("valid");
        let redis = config.redis_config();
        assert_eq!(redis.min_replicas_acked, 1);
        assert_eq!(redis.replica_ack_timeout, Duration::from_secs(1));

        let env = BTreeMap::from([
            (
                "GREYROUTER_REDIS_MIN_REPLICAS_ACKED".to_owned(),
                "2".to_owned(),
            ),
            (
                "GREYROUTER_REDIS_REPLICA_ACK_TIMEOUT_MS".to_owned(),
                "250".to_owned(),
            ),
        ]);
        let redis = Config::load(Some(&file), &env, Overrides::default())
            .expect("valid")
            .redis_config();
        assert_eq!(redis.min_replicas_acked, 2);
        assert_eq!(redis.replica_ack_timeout, Duration::from_millis(250));

        let env = BTreeMap::from([(
            "GREYROUTER_REDIS_REPLICA_ACK_TIMEOUT_MS".to_owned(),
            "0".to_owned(),
        )]);
        let err = Config::load(Some(&file), &env, Overrides::default()).expect_err("invalid");
        assert!(
            err.to_string().contains("redis.replica_ack_timeout_ms"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("typo.toml");
        std::fs::write(&file, "grpc_adr = \"127.0.0.1:1\"\n").expect("write");
        let err =
            Config::load(Some(&file), &BTreeMap::new(), Overrides::default()).expect_err("typo");
        assert!(err.to_string().contains("grpc_adr"), "{err}");
    }

    #[test]
    fn gateway_settings_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("gateway.toml");
        std::fs::write(
            &file,
            "[gateway]\nlisten = \"127.0.0.1:8080\"\ntenant_from = [\"header\", \"cookie\"]\nretry_budget = 1.5\nmax_header_bytes = 10\ntenant_header = \"bad header\"\n[[gateway.routes]]\nprefix = \"shop\"\nservice = \"shop\"\n[auth]\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"https://id.example.com/jwks\"\n",
        )
        .expect("write");
        let err =
            Config::load(Some(&file), &BTreeMap::new(), Overrides::default()).expect_err("invalid");
        let text = err.to_string();
        for expected in [
            "gateway.tenant_from",
            "gateway.retry_budget",
            "gateway.max_header_bytes",
            "gateway.tenant_header",
            "gateway.routes",
            "gateway.listen",
        ] {
            assert!(text.contains(expected), "{expected} missing from: {text}");
        }
        let settings = Config::default()
            .gateway
            .settings(None)
            .expect("the defaults are valid");
        assert_eq!(
            settings.tenant_from,
            vec![
                gateway::TenantSource::Header,
                gateway::TenantSource::Token,
                gateway::TenantSource::Host
            ]
        );
    }
}
