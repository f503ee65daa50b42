//! The command line: `greyrouter serve` runs the server; every other command is an admin
//! client of a running server (`--server`), printing tables or, with `--output json`, JSON.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::admin_client::AdminClient;
use greyrouter_proto::v1::router_client::RouterClient;
use routing_core::Strategy;
use serde_json::{Value, json};
use tonic::codegen::InterceptedService;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::config::{Config, EXIT_CONFIG, Overrides};
use crate::server::App;
use control::audit::{ACTOR_HEADER, REASON_HEADER};
use greyrouter_proto::domain as convert;

mod discovery;
mod events;
mod printer;
mod rollback;
mod rollouts;
mod schema;
mod services;
mod state;
mod store;
mod tenants;

use discovery::{DiscoveryCommand, discovery_command};
use events::{EventsArgs, events_command};
use printer::Printer;
use rollback::{RollbackArgs, rollback_command};
use rollouts::{ExperimentCommand, RolloutCommand, experiment_command, rollout_command};
use schema::{SchemaCommand, schema_command};
use services::{InstanceCommand, ServiceCommand, instance, service};
use state::{
    ApplyArgs, BackupArgs, DiffArgs, Drift, RestoreArgs, StateArgs, apply_command, backup_command,
    diff_command, restore_command, state_command,
};
use store::{StoreCommand, store_command};
use tenants::{TenantCommand, tenant};

/// greyrouter: routes every tenant's requests to the right service version and instance.
#[derive(Debug, Parser)]
#[command(name = "greyrouter", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// Server to talk to (admin commands).
    #[arg(
        long,
        global = true,
        env = "GREYROUTER_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Who you are, for the audit trail ($USER when absent).
    #[arg(long, global = true, env = "GREYROUTER_ACTOR", default_value = "")]
    actor: String,
    /// Why you make this change, for the audit trail.
    #[arg(long = "why", global = true, default_value = "")]
    reason: String,
    /// Bearer token (a JWT or an API key) for a server with auth on.
    #[arg(long, global = true, env = "GREYROUTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA bundle (PEM) the server's certificate chains to, for an https:// server.
    #[arg(long, global = true, env = "GREYROUTER_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for a server that takes them; needs --key-file.
    #[arg(
        long,
        global = true,
        env = "GREYROUTER_CERT_FILE",
        requires = "key_file"
    )]
    cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "GREYROUTER_KEY_FILE",
        requires = "cert_file"
    )]
    key_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the server.
    Serve(ServeArgs),
    /// Runs the HTTP gateway: routes HTTP requests by tenant to the instances the routers
    /// (--server, --router) assign, deciding locally from a watch-fed copy.
    Gateway(Box<GatewayArgs>),
    /// Routes one request and prints the chosen instance.
    Route(RouteArgs),
    /// Tenants and their versions.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Services and their default versions.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Instances of service versions.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Moves tenants off a broken version at once (an emergency override).
    Rollback(RollbackArgs),
    /// Emergency overrides.
    #[command(subcommand)]
    Override(OverrideCommand),
    /// Streams changes of effective assignments.
    Watch(WatchArgs),
    /// Prints the audit trail: who changed what, when and why.
    Events(EventsArgs),
    /// Gradual rollouts driven by canary analysis.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// A/B experiments.
    #[command(subcommand)]
    Experiment(ExperimentCommand),
    /// Per-tenant database schema migrations.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// The store behind the routers.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Service discovery: where instances come from.
    #[command(subcommand)]
    Discovery(DiscoveryCommand),
    /// Writes the whole routing state at one revision to a file (the seed file format).
    Backup(BackupArgs),
    /// Restores a backup into an empty store (or, with --force, over another state).
    Restore(RestoreArgs),
    /// Makes the live state match a file: plans, prints, and applies it as one change.
    Apply(ApplyArgs),
    /// Shows how the live state differs from a file (exit status 2 when it does).
    Diff(DiffArgs),
    /// The routing state now or at a past revision; with --tenant, that tenant's versions.
    State(StateArgs),
}

#[derive(Debug, Args)]
struct GatewayArgs {
    /// Address to listen on for HTTP/1.1 and HTTP/2.
    #[arg(
        long,
        env = "GREYROUTER_GATEWAY_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    listen: std::net::SocketAddr,
    /// A configuration file: its [gateway] section (under these flags) and its [auth] JWT
    /// settings, which check the bearer tokens whose claim names the tenant.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// More routers to follow besides --server (repeatable): the copy fails over between them.
    #[arg(long = "router")]
    routers: Vec<String>,
    /// Where the tenant comes from, first found wins (comma-separated of header, token,
    /// host) [default: header,token,host].
    #[arg(long, value_delimiter = ',')]
    tenant_from: Option<Vec<String>>,
    /// The header naming the tenant [default: x-tenant-id].
    #[arg(long)]
    tenant_header: Option<String>,
    /// The JWT claim naming the tenant [default: tenant_id].
    #[arg(long)]
    tenant_claim: Option<String>,
    /// A domain whose subdomains name tenants (acme.example.com: tenant acme).
    #[arg(long)]
    tenant_domain: Option<String>,
    /// The header naming the service [default: x-service].
    #[arg(long)]
    service_header: Option<String>,
    /// A path prefix and its service, PREFIX=SERVICE (repeatable); the prefix is stripped
    /// before forwarding. Without a match the first path segment names the service.
    #[arg(long = "route", value_parser = key_value)]
    routes: Vec<(String, String)>,
    /// Longest wait for a connection to an instance, in milliseconds [default: 1000].
    #[arg(long)]
    connect_timeout_ms: Option<u64>,
    /// Longest wait for an instance's response headers, in milliseconds [default: 30000].
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// Share of requests that may be retries, 0 to 1 [default: 0.2].
    #[arg(long)]
    retry_budget: Option<f64>,
    /// Retry POST requests too (they may not be idempotent).
    #[arg(long)]
    retry_post: bool,
    /// Largest request body in bytes; 413 above it [default: 16 MiB].
    #[arg(long)]
    max_body_bytes: Option<u64>,
    /// Largest request head (request line and headers) in bytes; 431 above it
    /// [default: 65536].
    #[arg(long)]
    max_header_bytes: Option<usize>,
    /// Threads serving requests [default: the cores this process may run on].
    #[arg(long, env = "GREYROUTER_GATEWAY_THREADS")]
    threads: Option<usize>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long)]
    grpc_addr: Option<std::net::SocketAddr>,
    /// Address of the HTTP listener: /healthz and /readyz [default: none].
    #[arg(long)]
    http_addr: Option<std::net::SocketAddr>,
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Store: `durable` [default: the embedded store, kept in --data-dir], `memory` (gone with
    /// the process), `redis://host:port/db`, `redis-sentinel://...` or `redis-cluster://...`.
    #[arg(long)]
    store: Option<String>,
    /// Data directory of the durable store [default: greyrouter-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TOML or JSON file of tenants, services, instances and pins to load into an empty store.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Log filter such as `info` or `greyrouter=debug`.
    #[arg(long)]
    log_level: Option<String>,
    /// Runtime worker threads; 0: one per core [default: 0].
    #[arg(long)]
    worker_threads: Option<usize>,
}

#[derive(Debug, Args)]
struct RouteArgs {
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    service: String,
    /// Preferred region (the tenant's when absent).
    #[arg(long, default_value = "")]
    region: String,
    /// Key for consistent_hash (the tenant id when absent).
    #[arg(long, default_value = "")]
    hash_key: String,
    /// Strategy for this request (the service's when absent).
    #[arg(long)]
    strategy: Option<Strategy>,
    /// Request metadata, KEY=VALUE (repeatable).
    #[arg(long = "meta", value_parser = key_value)]
    metadata: Vec<(String, String)>,
}

#[derive(Debug, Subcommand)]
enum OverrideCommand {
    /// Lists overrides.
    List { service: Option<String> },
    /// Removes an override.
    Clear { service: String, id: String },
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// Tenants to watch (repeatable); all when absent.
    #[arg(long = "tenant")]
    tenants: Vec<String>,
    /// Services to watch (repeatable); all when absent.
    #[arg(long = "service")]
    services: Vec<String>,
    /// Resume after this revision instead of starting from a snapshot.
    #[arg(long, default_value_t = 0)]
    from_revision: u64,
    /// The history the revision belongs to (updates name it); a router of another history
    /// sends a snapshot.
    #[arg(long, default_value = "")]
    history: String,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got '{text}'"))
}

/// Runs a parsed command line; returns the process exit status.
///
/// `serve` reads its configuration before it starts the runtime, which is sized by
/// `server.worker_threads`; the admin commands run on a default runtime.
pub fn run(cli: Cli) -> ExitCode {
    let job = match cli.command {
        Command::Serve(args) => match serve_config(args) {
            Ok(config) => Job::Serve(Box::new(config)),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
        },
        Command::Gateway(args) => {
            let config = match gateway_config(&args) {
                Ok(config) => config,
                Err(problems) => {
                    for problem in problems {
                        eprintln!("error: {problem}");
                    }
                    return ExitCode::from(EXIT_CONFIG as u8);
                }
            };
            // One thread: no work stealing, no cross-thread wake-ups (what a gateway pinned to
            // one core wants); more: tokio's multi-thread scheduler.
            let threads = match config.gateway.threads {
                0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
                threads => threads,
            };
            let mut builder = if threads <= 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(threads);
                builder
            };
            let runtime = match builder.enable_all().build() {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("error: cannot start the runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            return runtime.block_on(gateway(*args, config, &cli.client));
        }
        Command::Store(store::StoreCommand::Check { data_dir }) => {
            return store::check_command(&data_dir, Printer(cli.client.output));
        }
        command => Job::Client(command),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Job::Serve(config) = &job
        && let Some(threads) = config.server.worker_threads()
    {
        builder.worker_threads(threads);
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match job {
        Job::Serve(config) => runtime.block_on(serve(*config)),
        Job::Client(command) => match runtime.block_on(client(command, &cli.client)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) if err.downcast_ref::<Drift>().is_some() => {
                eprintln!("{err}");
                ExitCode::from(2)
            }
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// What a command line runs once parsed.
enum Job {
    /// `serve`, with its configuration read and validated.
    Serve(Box<Config>),
    /// An admin command: a client of a running server.
    Client(Command),
}

/// Layers the configuration of `serve`: file, environment, flags.
fn serve_config(args: ServeArgs) -> Result<Config, crate::config::ConfigError> {
    // Config::load reads the GREYROUTER_* variables of its table, and the variables
    // `[discovery]` names for credentials.
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let flags = Overrides {
        grpc_addr: args.grpc_addr,
        http_addr: args.http_addr,
        store: args.store,
        data_dir: args.data_dir,
        seed: args.seed,
        log_level: args.log_level,
        worker_threads: args.worker_threads,
    };
    Config::load(args.config.as_deref(), &env, flags)
}

async fn serve(config: Config) -> ExitCode {
    let telemetry = crate::telemetry::init(&config);
    let addr = config.grpc_addr;
    let http_addr = config.http_addr;
    let gateway_config = config.gateway.clone();
    let app = match App::start(config).await {
        Ok(app) => app.with_metrics(telemetry.exporter.clone()),
        Err(err) => {
            tracing::error!("cannot start: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(%addr, "cannot listen: {err}");
            return ExitCode::FAILURE;
        }
    };
    let http = match http_addr {
        None => None,
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(err) => {
                tracing::error!(%addr, "cannot listen for HTTP: {err}");
                return ExitCode::FAILURE;
            }
        },
    };
    // Signals are caught from before the address is announced: a SIGINT sent as soon as the
    // server says it listens shuts it down cleanly, never by the signal's default action.
    let shutdown = shutdown_signal();
    if let Ok(local) = listener.local_addr() {
        // One line on stdout, so scripts that start on port 0 learn the address.
        println!("greyrouter listening on {local}");
    }
    if let Some(local) = http.as_ref().and_then(|http| http.local_addr().ok()) {
        println!("greyrouter http listening on {local}");
    }
    let gateway = match in_process_gateway(&gateway_config, &listener).await {
        Ok(gateway) => gateway,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = app.serve_with_http(listener, http, shutdown).await;
    if let Some(gateway) = gateway {
        gateway.abort();
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The gateway `serve` runs when `gateway.listen` is set: it follows this server over its own
/// gRPC listener (plaintext, no credentials: the configuration refuses it with TLS or auth).
async fn in_process_gateway(
    config: &crate::gateway_config::GatewayConfig,
    grpc: &tokio::net::TcpListener,
) -> Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>, String> {
    let Some(addr) = config.listen else {
        return Ok(None);
    };
    let settings = config
        .settings(None)
        .map_err(|problems| problems.join("; "))?;
    let mut local = grpc
        .local_addr()
        .map_err(|err| format!("gateway: no gRPC address to follow: {err}"))?;
    if local.ip().is_unspecified() {
        local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let router = greyrouter_client::Client::connect(greyrouter_client::ClientConfig::new(format!(
        "http://{local}"
    )))
    .await
    .map_err(|err| format!("gateway: {err}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| format!("gateway: cannot listen on {addr}: {err}"))?;
    if let Ok(local) = listener.local_addr() {
        println!("greyrouter gateway listening on {local}");
    }
    let gateway = gateway::Gateway::new(router, settings);
    Ok(Some(tokio::spawn(
        gateway.serve(listener, std::future::pending()),
    )))
}

/// Runs `greyrouter gateway` until SIGINT or SIGTERM.
async fn gateway(args: GatewayArgs, config: Config, client: &ClientArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GREYROUTER_LOG_LEVEL")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(crate::log::SafeLines::new(std::io::stderr))
        .try_init();
    let verifier = match crate::gateway_config::token_verifier(
        &config.gateway,
        config.auth.as_ref(),
        &config.secrets,
    )
    .await
    {
        Ok(verifier) => verifier,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let settings = match config.gateway.settings(verifier) {
        Ok(settings) => settings,
        Err(problems) => {
            for problem in problems {
                eprintln!("error: {problem}");
            }
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let mut sdk = greyrouter_client::ClientConfig::new(client.server.clone());
    for router in &args.routers {
        sdk = sdk.endpoint(router.clone());
    }
    if let Some(token) = &client.token {
        sdk = sdk.token(token.clone());
    }
    if let Some(ca_file) = &client.ca_file {
        sdk = sdk.ca_file(ca_file.clone());
    }
    if let (Some(cert), Some(key)) = (&client.cert_file, &client.key_file) {
        sdk = sdk.client_certificate(cert.clone(), key.clone());
    }
    let router = match greyrouter_client::Client::connect(sdk).await {
        Ok(router) => router,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("error: cannot listen on {}: {err}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let shutdown = shutdown_signal();
    if let Ok(local) = listener.local_addr() {
        println!("greyrouter gateway listening on {local}");
    }
    tracing::info!(routers = ?client.server, "gateway: following the routers");
    let gateway = gateway::Gateway::new(router, settings);
    match gateway.serve(listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration of `greyrouter gateway`: the file's (when given), then the flags.
fn gateway_config(args: &GatewayArgs) -> Result<Config, Vec<String>> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mut config = match &args.config {
        // Checks the whole file; `serve`'s listener flags are not the gateway's business.
        Some(path) => {
            Config::load(Some(path), &env, Overrides::default()).map_err(|err| err.problems)?
        }
        None => Config::default(),
    };
    let gateway = &mut config.gateway;
    if let Some(sources) = &args.tenant_from {
        gateway.tenant_from.clone_from(sources);
    }
    for (flag, value) in [
        (&mut gateway.tenant_header, &args.tenant_header),
        (&mut gateway.tenant_claim, &args.tenant_claim),
        (&mut gateway.tenant_domain, &args.tenant_domain),
        (&mut gateway.service_header, &args.service_header),
    ] {
        if let Some(value) = value {
            flag.clone_from(value);
        }
    }
    for (prefix, service) in &args.routes {
        gateway.routes.push(crate::gateway_config::GatewayRoute {
            prefix: prefix.clone(),
            service: service.clone(),
            strip_prefix: true,
        });
    }
    if let Some(ms) = args.connect_timeout_ms {
        gateway.connect_timeout_ms = ms;
    }
    if let Some(ms) = args.request_timeout_ms {
        gateway.request_timeout_ms = ms;
    }
    if let Some(share) = args.retry_budget {
        gateway.retry_budget = share;
    }
    gateway.retry_post |= args.retry_post;
    if let Some(bytes) = args.max_body_bytes {
        gateway.max_body_bytes = bytes;
    }
    if let Some(bytes) = args.max_header_bytes {
        gateway.max_header_bytes = bytes;
    }
    if let Some(threads) = args.threads {
        gateway.threads = threads;
    }
    let problems = gateway.problems();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

/// Catches SIGINT and SIGTERM from now on; the future completes on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        [
            ("SIGINT", signal(SignalKind::interrupt())),
            ("SIGTERM", signal(SignalKind::terminate())),
        ]
    };
    async move {
        #[cfg(unix)]
        {
            let [interrupt, terminate] = signals.map(|(name, registered)| async move {
                match registered {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(err) => {
                        tracing::warn!(%err, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            });
            tokio::select! {
                () = interrupt => {},
                () = terminate => {},
            }
        }
        #[cfg(not(unix))]
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down");
    }
}

/// Adds who is calling (and why) to every admin call, for the audit trail.
#[derive(Debug, Clone)]
struct Identify {
    actor: MetadataValue<Ascii>,
    reason: Option<MetadataValue<Ascii>>,
    token: Option<MetadataValue<Ascii>>,
}

impl Identify {
    fn new(args: &ClientArgs) -> anyhow::Result<Identify> {
        let actor = if args.actor.is_empty() {
            std::env::var("USER").unwrap_or_else(|_| "cli".to_owned())
        } else {
            args.actor.clone()
        };
        let ascii = |text: &str, what: &str| {
            MetadataValue::try_from(text)
                .map_err(|_| anyhow::anyhow!("{what} must be printable ASCII"))
        };
        Ok(Identify {
            actor: ascii(&actor, "--actor")?,
            reason: if args.reason.is_empty() {
                None
            } else {
                Some(ascii(&args.reason, "--reason")?)
            },
            token: args
                .token
                .as_ref()
                .map(|token| ascii(&format!("Bearer {token}"), "--token"))
                .transpose()?,
        })
    }
}

impl tonic::service::Interceptor for Identify {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        metadata.insert(ACTOR_HEADER, self.actor.clone());
        if let Some(token) = &self.token {
            metadata.insert("authorization", token.clone());
        }
        if let Some(reason) = &self.reason
            && !metadata.contains_key(REASON_HEADER)
        {
            metadata.insert(REASON_HEADER, reason.clone());
        }
        Ok(request)
    }
}

type Admin = AdminClient<InterceptedService<Channel, Identify>>;

async fn channel(args: &ClientArgs) -> anyhow::Result<Channel> {
    let server = &args.server;
    let mut endpoint = tonic::transport::Endpoint::from_shared(server.clone())
        .map_err(|e| anyhow::anyhow!("invalid --server '{server}': {e}"))?;
    if server.starts_with("https://") {
        let tls = greyrouter_client::TlsSettings {
            ca_file: args.ca_file.clone(),
            cert_file: args.cert_file.clone(),
            key_file: args.key_file.clone(),
            domain: None,
        }
        .client_config()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| anyhow::anyhow!("TLS for {server}: {e}"))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {server}: {e}"))
}

/// Formats a failed call as `CODE: message`.
fn call_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

async fn client(command: Command, args: &ClientArgs) -> anyhow::Result<()> {
    let channel = channel(args).await?;
    let mut admin = AdminClient::with_interceptor(channel.clone(), Identify::new(args)?);
    let out = Printer(args.output);
    match command {
        Command::Serve(_) | Command::Gateway(_) => unreachable!("handled by run"),
        Command::Route(route) => {
            let mut router = RouterClient::with_interceptor(channel, Identify::new(args)?);
            let strategy = route
                .strategy
                .map_or(pb::Strategy::Unspecified, pb::Strategy::from);
            let response = router
                .route(pb::RouteRequest {
                    tenant_id: route.tenant,
                    service: route.service,
                    metadata: route.metadata.into_iter().collect::<HashMap<_, _>>(),
                    hash_key: route.hash_key,
                    region: route.region,
                    strategy: strategy.into(),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.table(
                &["INSTANCE", "ADDRESS", "VERSION", "SOURCE", "REVISION"],
                vec![vec![
                    response.instance_id.clone(),
                    response.address.clone(),
                    response.version.clone(),
                    response.source.clone(),
                    response.revision.to_string(),
                ]],
                json!({
                    "instance_id": response.instance_id,
                    "address": response.address,
                    "version": response.version,
                    "source": response.source,
                    "revision": response.revision,
                }),
            );
        }
        Command::Tenant(command) => tenant(command, &mut admin, out).await?,
        Command::Service(command) => service(command, &mut admin, out).await?,
        Command::Instance(command) => instance(command, &mut admin, out).await?,
        Command::Rollback(rollback) => {
            rollback_command(rollback, &args.reason, &mut admin, out).await?;
        }
        Command::Events(events) => events_command(events, &mut admin, out).await?,
        Command::Rollout(command) => rollout_command(command, &mut admin, out).await?,
        Command::Experiment(command) => experiment_command(command, &mut admin, out).await?,
        Command::Schema(command) => schema_command(command, &mut admin, out).await?,
        Command::Store(command) => store_command(command, &mut admin, out).await?,
        Command::Discovery(command) => discovery_command(command, &mut admin, out).await?,
        Command::Backup(args) => backup_command(args, &mut admin, out).await?,
        Command::Restore(args) => restore_command(args, &mut admin, out).await?,
        Command::Apply(args) => apply_command(args, &mut admin, out).await?,
        Command::Diff(args) => diff_command(args, &mut admin, out).await?,
        Command::State(args) => state_command(args, &mut admin, out).await?,
        Command::Override(OverrideCommand::List { service }) => {
            let response = admin
                .list_overrides(pb::ListOverridesRequest {
                    service: service.unwrap_or_default(),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            let rows = response
                .overrides
                .iter()
                .map(|o| {
                    vec![
                        o.id.clone(),
                        o.service.clone(),
                        o.from_version.clone(),
                        o.to_version.clone(),
                        if o.tenant_ids.is_empty() {
                            "all".to_owned()
                        } else {
                            o.tenant_ids.join(",")
                        },
                    ]
                })
                .collect();
            let values: Vec<Value> = response
                .overrides
                .iter()
                .map(|o| {
                    json!({"id": o.id, "service": o.service, "from_version": o.from_version,
                           "to_version": o.to_version, "tenant_ids": o.tenant_ids,
                           "created_revision": o.created_revision})
                })
                .collect();
            out.table(
                &["ID", "SERVICE", "FROM", "TO", "TENANTS"],
                rows,
                Value::Array(values),
            );
        }
        Command::Override(OverrideCommand::Clear { service, id }) => {
            let response = admin
                .clear_override(pb::ClearOverrideRequest {
                    service,
                    override_id: id.clone(),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.revision(&format!("cleared override {id}"), response.revision);
        }
        Command::Watch(watch) => {
            let mut router = RouterClient::with_interceptor(channel, Identify::new(args)?);
            let mut stream = router
                .watch_assignments(pb::WatchAssignmentsRequest {
                    tenant_ids: watch.tenants,
                    services: watch.services,
                    from_revision: watch.from_revision,
                    history: watch.history,
                    // Each assignment printed with its instances.
                    instances_by_version: false,
                })
                .await
                .map_err(call_error)?
                .into_inner();
            while let Some(update) = stream.message().await.map_err(call_error)? {
                out.update(&update);
            }
        }
    }
    Ok(())
}

/// Formats milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
fn format_time(at_ms: u64) -> String {
    routing_core::utc::UtcTime::from_unix_ms(at_ms).to_plain()
}

fn labels(labels: &HashMap<String, String>) -> String {
    convert::sorted(labels)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn times_print_in_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_795_000_000_000), "2026-11-18 11:06:40");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00");
    }
}
