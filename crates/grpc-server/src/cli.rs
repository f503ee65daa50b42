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

use crate::audit::{ACTOR_HEADER, REASON_HEADER};
use crate::config::{Config, ENV_VARS, EXIT_CONFIG, Overrides};
use crate::convert;
use crate::server::App;

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
}

#[derive(Debug, Args)]
struct SchemaTarget {
    #[arg(long)]
    service: String,
    /// Reach the schema this service version requires...
    #[arg(
        long,
        conflicts_with = "to_schema",
        required_unless_present = "to_schema"
    )]
    version: Option<String>,
    /// ...or this schema version (migration number).
    #[arg(long)]
    to_schema: Option<u32>,
    /// Only these tenants (repeatable); every active tenant (of the tiers) when absent.
    #[arg(long = "tenant")]
    tenants: Vec<String>,
    /// Only tenants of these tiers (repeatable).
    #[arg(long = "tier")]
    tiers: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Shows each tenant's migration steps, changing nothing.
    Plan(SchemaTarget),
    /// Upgrades tenants' schemas, with a progress bar.
    Upgrade(SchemaTarget),
    /// Rolls tenants' schemas back (down migrations) to --to-schema.
    Rollback(SchemaTarget),
    /// Shows a tenant's applied schema versions and history.
    Status {
        tenant: String,
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Starts a rollout of a new version, step by step.
    Start {
        service: String,
        /// The new version.
        #[arg(long)]
        to: String,
        /// Shares in percent, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,5,25,50,100")]
        steps: Vec<f64>,
        /// Seconds each step runs before it is judged.
        #[arg(long, default_value_t = 300)]
        interval: u64,
        /// Rollout id (generated when absent).
        #[arg(long, default_value = "")]
        id: String,
        /// Requests a step needs before it is judged.
        #[arg(long, default_value_t = 0)]
        min_requests: u64,
        /// Highest error rate of the new version, in percent.
        #[arg(long, default_value_t = 0.0)]
        max_error_rate: f64,
        /// How far p99 may exceed the previous version's, in percent.
        #[arg(long, default_value_t = 0.0)]
        max_p99_increase: f64,
        /// Only tenants of these tiers (repeatable).
        #[arg(long = "tier")]
        tiers: Vec<String>,
        /// Only tenants with this label, KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = key_value)]
        labels: Vec<(String, String)>,
        #[arg(long)]
        force: bool,
    },
    /// Shows a rollout with every decision and its figures.
    Show { service: String, id: String },
    /// Lists rollouts.
    List { service: Option<String> },
    /// Holds a rollout at its share.
    Pause { service: String, id: String },
    /// Lets a paused rollout go on.
    Resume { service: String, id: String },
    /// Moves everyone to the new version and makes it the default.
    Promote {
        service: String,
        id: String,
        #[arg(long)]
        force: bool,
    },
    /// Moves every tenant back to the previous version.
    Abort { service: String, id: String },
}

#[derive(Debug, Subcommand)]
enum ExperimentCommand {
    /// Creates an experiment: --variant NAME=VERSION:WEIGHT (repeatable).
    Create {
        service: String,
        id: String,
        #[arg(long = "variant", value_parser = variant, required = true)]
        variants: Vec<pb::Variant>,
        /// Only tenants of these tiers (repeatable).
        #[arg(long = "tier")]
        tiers: Vec<String>,
    },
    /// Changes the weights; tenants keep their variant unless --rebalance.
    Update {
        service: String,
        id: String,
        #[arg(long = "variant", value_parser = variant, required = true)]
        variants: Vec<pb::Variant>,
        #[arg(long)]
        rebalance: bool,
    },
    /// Shows an experiment and how many tenants each variant has.
    Show { service: String, id: String },
    /// Ends an experiment: its tenants return to the rollout or default version.
    Stop { service: String, id: String },
}

fn variant(text: &str) -> Result<pb::Variant, String> {
    let parse = || {
        let (name, rest) = text.split_once('=')?;
        let (version, weight) = rest.split_once(':')?;
        Some(pb::Variant {
            name: name.to_owned(),
            version: version.to_owned(),
            weight: weight.parse().ok()?,
        })
    };
    parse().ok_or_else(|| format!("expected NAME=VERSION:WEIGHT, got '{text}'"))
}

#[derive(Debug, Args)]
struct EventsArgs {
    /// Events after this revision.
    #[arg(long, default_value_t = 0)]
    since: u64,
    /// Only events about this tenant (and service-wide changes).
    #[arg(long, default_value = "")]
    tenant: String,
    /// Only events about this service.
    #[arg(long, default_value = "")]
    service: String,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long)]
    grpc_addr: Option<std::net::SocketAddr>,
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Store: `memory` [default], `redis://host:port/db`, `redis-sentinel://...` or
    /// `redis-cluster://...`.
    #[arg(long)]
    store: Option<String>,
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
enum TenantCommand {
    /// Lists every tenant.
    List,
    /// Shows a tenant and each service's effective version and source.
    Show { tenant: String },
    /// Creates or updates a tenant.
    Upsert {
        tenant: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        region: String,
        #[arg(long, default_value = "")]
        tier: String,
        /// Label, KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = key_value)]
        labels: Vec<(String, String)>,
        /// Creates the tenant inactive (not routed).
        #[arg(long)]
        inactive: bool,
    },
    /// Pins a tenant to a version of a service.
    SetVersion {
        tenant: String,
        service: String,
        version: String,
        /// Only if the tenant is currently on this version (compare-and-set).
        #[arg(long)]
        expect: Option<String>,
        /// Allows a version without a healthy instance.
        #[arg(long)]
        force: bool,
        /// Upgrades the tenant's schema first when the version needs it.
        #[arg(long)]
        migrate: bool,
    },
    /// Removes a tenant's pin.
    ClearVersion { tenant: String, service: String },
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Lists services.
    List,
    /// Creates or updates a service.
    Upsert {
        service: String,
        #[arg(long)]
        default_version: String,
        #[arg(long, default_value = "round_robin")]
        strategy: Strategy,
        /// Declares a version (repeatable).
        #[arg(long = "version")]
        versions: Vec<String>,
        #[arg(long)]
        force: bool,
    },
    /// Sets a service's default version.
    SetDefault {
        service: String,
        version: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum InstanceCommand {
    /// Registers an instance.
    Register {
        #[arg(long)]
        service: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        id: String,
        /// host:port
        #[arg(long)]
        address: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[arg(long, default_value = "")]
        region: String,
        #[arg(long, default_value = "")]
        zone: String,
        /// 0-100, for health_aware.
        #[arg(long, default_value_t = 100)]
        health_score: u32,
        /// Registers it as unhealthy.
        #[arg(long)]
        unhealthy: bool,
        /// Metadata, KEY=VALUE (repeatable).
        #[arg(long = "meta", value_parser = key_value)]
        metadata: Vec<(String, String)>,
    },
    /// Removes an instance.
    Deregister { service: String, instance: String },
    /// Lists a service's instances.
    List {
        service: String,
        #[arg(long, default_value = "")]
        version: String,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["service", "all_services_on_version"])))]
struct RollbackArgs {
    /// The service to roll back.
    service: Option<String>,
    /// The broken version (with a service).
    #[arg(long, requires = "service")]
    from: Option<String>,
    /// The version to go back to: required with a service; with --all-services-on-version,
    /// each service's default version when absent.
    #[arg(long)]
    to: Option<String>,
    /// Rolls back every service with tenants on this version.
    #[arg(long, conflicts_with_all = ["service", "from"])]
    all_services_on_version: Option<String>,
    /// Only these tenants (repeatable); every tenant on the version when absent.
    #[arg(long = "tenant")]
    tenants: Vec<String>,
    /// Does not ask for confirmation.
    #[arg(long, short = 'y')]
    yes: bool,
    /// Shows what would move, changing nothing.
    #[arg(long)]
    dry_run: bool,
    /// Allows a target without a healthy instance.
    #[arg(long)]
    force: bool,
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
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| ENV_VARS.iter().any(|(name, _)| name == k))
        .collect();
    let flags = Overrides {
        grpc_addr: args.grpc_addr,
        store: args.store,
        seed: args.seed,
        log_level: args.log_level,
        worker_threads: args.worker_threads,
    };
    Config::load(args.config.as_deref(), &env, flags)
}

async fn serve(config: Config) -> ExitCode {
    init_tracing(&config);
    let addr = config.grpc_addr;
    let app = match App::start(config).await {
        Ok(app) => app,
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
    if let Ok(local) = listener.local_addr() {
        // One line on stdout, so scripts that start on port 0 learn the address.
        println!("greyrouter listening on {local}");
    }
    match app.serve(listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// Adds who is calling (and why) to every admin call, for the audit trail.
#[derive(Debug, Clone)]
struct Identify {
    actor: MetadataValue<Ascii>,
    reason: Option<MetadataValue<Ascii>>,
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
        if let Some(reason) = &self.reason
            && !metadata.contains_key(REASON_HEADER)
        {
            metadata.insert(REASON_HEADER, reason.clone());
        }
        Ok(request)
    }
}

type Admin = AdminClient<InterceptedService<Channel, Identify>>;

async fn channel(server: &str) -> anyhow::Result<Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(server.to_owned())
        .map_err(|e| anyhow::anyhow!("invalid --server '{server}': {e}"))?;
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
    let channel = channel(&args.server).await?;
    let mut admin = AdminClient::with_interceptor(channel.clone(), Identify::new(args)?);
    let out = Printer(args.output);
    match command {
        Command::Serve(_) => unreachable!("handled by run"),
        Command::Route(route) => {
            let mut router = RouterClient::new(channel);
            let strategy = route
                .strategy
                .map_or(pb::Strategy::Unspecified, convert::strategy_to_proto);
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
            let mut router = RouterClient::new(channel);
            let mut stream = router
                .watch_assignments(pb::WatchAssignmentsRequest {
                    tenant_ids: watch.tenants,
                    services: watch.services,
                    from_revision: watch.from_revision,
                    history: watch.history,
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

async fn tenant(command: TenantCommand, admin: &mut Admin, out: Printer) -> anyhow::Result<()> {
    match command {
        TenantCommand::List => {
            let mut tenants = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = admin
                    .list_tenants(pb::ListTenantsRequest {
                        page_size: 1000,
                        page_token,
                    })
                    .await
                    .map_err(call_error)?
                    .into_inner();
                tenants.extend(page.tenants);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            let rows = tenants
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        t.region.clone(),
                        t.tier.clone(),
                        t.active.to_string(),
                        labels(&t.labels),
                    ]
                })
                .collect();
            let values = tenants.iter().map(tenant_json).collect();
            out.table(
                &["ID", "NAME", "REGION", "TIER", "ACTIVE", "LABELS"],
                rows,
                Value::Array(values),
            );
        }
        TenantCommand::Show { tenant } => {
            let response = admin
                .get_tenant_services(pb::GetTenantServicesRequest { tenant_id: tenant })
                .await
                .map_err(call_error)?
                .into_inner();
            let info = response.tenant.unwrap_or_default();
            let services: Vec<Value> = response
                .services
                .iter()
                .map(|s| {
                    json!({"service": s.service, "version": s.version, "source": s.source,
                           "pinned_version": s.pinned_version})
                })
                .collect();
            if out.0 == Output::Json {
                out.json(json!({"tenant": tenant_json(&info), "services": services,
                                "revision": response.revision}));
            } else {
                println!(
                    "tenant {} ({}) region={} tier={} active={} revision={}",
                    info.id, info.name, info.region, info.tier, info.active, response.revision
                );
                let rows = response
                    .services
                    .iter()
                    .map(|s| {
                        vec![
                            s.service.clone(),
                            s.version.clone(),
                            s.source.clone(),
                            s.pinned_version.clone(),
                        ]
                    })
                    .collect();
                out.table(
                    &["SERVICE", "VERSION", "SOURCE", "PINNED"],
                    rows,
                    Value::Null,
                );
            }
        }
        TenantCommand::Upsert {
            tenant,
            name,
            region,
            tier,
            labels,
            inactive,
        } => {
            let response = admin
                .upsert_tenant(pb::UpsertTenantRequest {
                    tenant: Some(pb::Tenant {
                        id: tenant.clone(),
                        name,
                        region,
                        tier,
                        labels: labels.into_iter().collect(),
                        active: !inactive,
                    }),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.revision(&format!("tenant {tenant} saved"), response.revision);
        }
        TenantCommand::SetVersion {
            tenant,
            service,
            version,
            expect,
            force,
            migrate,
        } => {
            let response = admin
                .set_tenant_version(pb::SetTenantVersionRequest {
                    tenant_id: tenant.clone(),
                    service: service.clone(),
                    version: version.clone(),
                    expected_version: expect,
                    force,
                    migrate,
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.message(
                format!(
                    "tenant {tenant} pinned to {service} {version} (was {}), revision {}",
                    response.previous_version, response.revision
                ),
                json!({"previous_version": response.previous_version, "revision": response.revision}),
            );
        }
        TenantCommand::ClearVersion { tenant, service } => {
            let response = admin
                .clear_tenant_version(pb::ClearTenantVersionRequest {
                    tenant_id: tenant.clone(),
                    service: service.clone(),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            let what = if response.cleared {
                "pin removed"
            } else {
                "no pin to remove"
            };
            out.message(
                format!(
                    "tenant {tenant} {service}: {what}, revision {}",
                    response.revision
                ),
                json!({"cleared": response.cleared, "revision": response.revision}),
            );
        }
    }
    Ok(())
}

async fn service(command: ServiceCommand, admin: &mut Admin, out: Printer) -> anyhow::Result<()> {
    match command {
        ServiceCommand::List => {
            let response = admin
                .list_services(pb::ListServicesRequest {})
                .await
                .map_err(call_error)?
                .into_inner();
            let strategy_name = |value: i32| {
                convert::strategy("strategy", value)
                    .ok()
                    .flatten()
                    .unwrap_or_default()
                    .to_string()
            };
            let rows = response
                .services
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.default_version.clone(),
                        strategy_name(s.strategy),
                        s.versions.join(","),
                    ]
                })
                .collect();
            let values = response
                .services
                .iter()
                .map(|s| {
                    json!({"name": s.name, "default_version": s.default_version,
                           "strategy": strategy_name(s.strategy), "versions": s.versions})
                })
                .collect();
            out.table(
                &["NAME", "DEFAULT", "STRATEGY", "VERSIONS"],
                rows,
                Value::Array(values),
            );
        }
        ServiceCommand::Upsert {
            service,
            default_version,
            strategy,
            versions,
            force,
        } => {
            let response = admin
                .upsert_service(pb::UpsertServiceRequest {
                    service: Some(pb::Service {
                        name: service.clone(),
                        default_version,
                        strategy: convert::strategy_to_proto(strategy).into(),
                        versions,
                    }),
                    force,
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.revision(&format!("service {service} saved"), response.revision);
        }
        ServiceCommand::SetDefault {
            service,
            version,
            force,
        } => {
            let response = admin
                .set_default_version(pb::SetDefaultVersionRequest {
                    service: service.clone(),
                    version: version.clone(),
                    force,
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.revision(
                &format!("service {service} defaults to {version}"),
                response.revision,
            );
        }
    }
    Ok(())
}

async fn instance(command: InstanceCommand, admin: &mut Admin, out: Printer) -> anyhow::Result<()> {
    match command {
        InstanceCommand::Register {
            service,
            version,
            id,
            address,
            weight,
            region,
            zone,
            health_score,
            unhealthy,
            metadata,
        } => {
            let response = admin
                .register_instance(pb::RegisterInstanceRequest {
                    instance: Some(pb::Instance {
                        id: id.clone(),
                        address,
                        service,
                        version,
                        weight: Some(weight),
                        region,
                        zone,
                        metadata: metadata.into_iter().collect(),
                        healthy: Some(!unhealthy),
                        health_score: Some(health_score),
                    }),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.revision(&format!("instance {id} registered"), response.revision);
        }
        InstanceCommand::Deregister { service, instance } => {
            let response = admin
                .deregister_instance(pb::DeregisterInstanceRequest {
                    service,
                    instance_id: instance.clone(),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.revision(
                &format!("instance {instance} deregistered"),
                response.revision,
            );
        }
        InstanceCommand::List { service, version } => {
            let response = admin
                .list_instances(pb::ListInstancesRequest { service, version })
                .await
                .map_err(call_error)?
                .into_inner();
            let rows = response
                .instances
                .iter()
                .map(|i| {
                    vec![
                        i.id.clone(),
                        i.address.clone(),
                        i.version.clone(),
                        i.weight.unwrap_or(1).to_string(),
                        i.region.clone(),
                        i.zone.clone(),
                        i.healthy.unwrap_or(true).to_string(),
                        i.health_score.unwrap_or(100).to_string(),
                    ]
                })
                .collect();
            let values = response
                .instances
                .iter()
                .map(|i| {
                    json!({"id": i.id, "address": i.address, "service": i.service,
                           "version": i.version, "weight": i.weight.unwrap_or(1),
                           "region": i.region, "zone": i.zone,
                           "healthy": i.healthy.unwrap_or(true),
                           "health_score": i.health_score.unwrap_or(100),
                           "metadata": convert::sorted(&i.metadata)})
                })
                .collect();
            out.table(
                &[
                    "ID", "ADDRESS", "VERSION", "WEIGHT", "REGION", "ZONE", "HEALTHY", "SCORE",
                ],
                rows,
                Value::Array(values),
            );
        }
    }
    Ok(())
}

/// One emergency rollback to make: service, versions, tenants that would move.
struct PlannedRollback {
    service: String,
    from: String,
    to: String,
    moving: u64,
}

async fn rollback_command(
    rollback: RollbackArgs,
    reason: &str,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    let request =
        |service: &str, from: &str, to: &str, dry_run: bool| pb::EmergencyRollbackRequest {
            service: service.to_owned(),
            from_version: from.to_owned(),
            to_version: to.to_owned(),
            tenant_ids: rollback.tenants.clone(),
            force: rollback.force,
            dry_run,
            reason: reason.to_owned(),
        };
    // What would move, service by service, changing nothing.
    let mut plan = Vec::new();
    if let Some(version) = &rollback.all_services_on_version {
        let services = admin
            .list_services(pb::ListServicesRequest {})
            .await
            .map_err(call_error)?
            .into_inner()
            .services;
        for service in services
            .into_iter()
            .filter(|s| s.versions.contains(version))
        {
            let to = rollback
                .to
                .clone()
                .unwrap_or_else(|| service.default_version.clone());
            if &to == version || !service.versions.contains(&to) {
                eprintln!(
                    "skipping {}: no version to go back to from {version} (use --to)",
                    service.name
                );
                continue;
            }
            let moving = admin
                .emergency_rollback(request(&service.name, version, &to, true))
                .await
                .map_err(call_error)?
                .into_inner()
                .moved_tenants;
            if moving > 0 {
                plan.push(PlannedRollback {
                    service: service.name,
                    from: version.clone(),
                    to,
                    moving,
                });
            }
        }
    } else {
        let (Some(service), Some(from), Some(to)) =
            (&rollback.service, &rollback.from, &rollback.to)
        else {
            anyhow::bail!("give a service with --from and --to, or --all-services-on-version");
        };
        let moving = admin
            .emergency_rollback(request(service, from, to, true))
            .await
            .map_err(call_error)?
            .into_inner()
            .moved_tenants;
        plan.push(PlannedRollback {
            service: service.clone(),
            from: from.clone(),
            to: to.clone(),
            moving,
        });
    }
    let total: u64 = plan.iter().map(|p| p.moving).sum();
    if out.0 == Output::Table {
        out.table(
            &["SERVICE", "FROM", "TO", "TENANTS MOVING"],
            plan.iter()
                .map(|p| {
                    vec![
                        p.service.clone(),
                        p.from.clone(),
                        p.to.clone(),
                        p.moving.to_string(),
                    ]
                })
                .collect(),
            Value::Null,
        );
    }
    if rollback.dry_run || plan.is_empty() {
        let plan_json: Vec<Value> = plan
            .iter()
            .map(|p| json!({"service": p.service, "from_version": p.from, "to_version": p.to, "moving_tenants": p.moving}))
            .collect();
        out.message(
            format!("dry run: {total} tenant(s) would move; nothing changed"),
            json!({"dry_run": true, "moving_tenants": total, "rollbacks": plan_json}),
        );
        return Ok(());
    }
    if !rollback.yes {
        eprint!(
            "Roll back {total} tenant(s) across {} service(s)? [y/N] ",
            plan.len()
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            anyhow::bail!("rollback cancelled; nothing changed");
        }
    }
    let mut done = Vec::new();
    for planned in &plan {
        let response = admin
            .emergency_rollback(request(&planned.service, &planned.from, &planned.to, false))
            .await
            .map_err(call_error)?
            .into_inner();
        if out.0 == Output::Table {
            println!(
                "moved {} tenant(s) of {} from {} to {} (override {}, revision {})",
                response.moved_tenants,
                planned.service,
                planned.from,
                planned.to,
                response.override_id,
                response.revision
            );
        }
        done.push(json!({
            "service": planned.service,
            "moved_tenants": response.moved_tenants,
            "override_id": response.override_id,
            "revision": response.revision,
        }));
    }
    if out.0 == Output::Json {
        out.json(Value::Array(done));
    }
    Ok(())
}

async fn events_command(events: EventsArgs, admin: &mut Admin, out: Printer) -> anyhow::Result<()> {
    let response = admin
        .list_events(pb::ListEventsRequest {
            since_revision: events.since,
            tenant_id: events.tenant,
            service: events.service,
            limit: events.limit,
        })
        .await
        .map_err(call_error)?
        .into_inner();
    let rows = response
        .events
        .iter()
        .map(|e| {
            vec![
                e.revision.to_string(),
                format_time(e.at_ms),
                e.actor.clone(),
                e.kind.clone(),
                e.tenant_id.clone(),
                e.service.clone(),
                e.reason.clone(),
            ]
        })
        .collect();
    let values = response
        .events
        .iter()
        .map(|e| {
            let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
            json!({"revision": e.revision, "at_ms": e.at_ms, "actor": e.actor, "reason": e.reason,
                   "kind": e.kind, "tenant_id": e.tenant_id, "service": e.service,
                   "before": parse(&e.before), "after": parse(&e.after)})
        })
        .collect();
    out.table(
        &[
            "REVISION",
            "TIME (UTC)",
            "ACTOR",
            "CHANGE",
            "TENANT",
            "SERVICE",
            "REASON",
        ],
        rows,
        Value::Array(values),
    );
    Ok(())
}

/// Formats milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
fn format_time(at_ms: u64) -> String {
    let seconds = at_ms / 1000;
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

async fn rollout_command(
    command: RolloutCommand,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    let action = |service: String, id: String, force: bool| pb::RolloutActionRequest {
        service,
        id,
        reason: String::new(),
        force,
    };
    let response = match command {
        RolloutCommand::Start {
            service,
            to,
            steps,
            interval,
            id,
            min_requests,
            max_error_rate,
            max_p99_increase,
            tiers,
            labels,
            force,
        } => {
            admin
                .start_rollout(pb::StartRolloutRequest {
                    service,
                    id,
                    to_version: to,
                    steps,
                    interval_seconds: interval,
                    analysis: Some(pb::AnalysisPolicy {
                        max_error_rate_percent: max_error_rate,
                        max_p99_increase_percent: max_p99_increase,
                        min_requests,
                        ..Default::default()
                    }),
                    cohort: Some(pb::Cohort {
                        tiers,
                        labels: labels.into_iter().collect(),
                        tenant_ids: Vec::new(),
                    }),
                    force,
                })
                .await
        }
        RolloutCommand::Show { service, id } => {
            admin
                .get_rollout(pb::GetRolloutRequest { service, id })
                .await
        }
        RolloutCommand::List { service } => {
            let listed = admin
                .list_rollouts(pb::ListRolloutsRequest {
                    service: service.unwrap_or_default(),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            let rows = listed
                .rollouts
                .iter()
                .map(|r| {
                    vec![
                        r.service.clone(),
                        r.id.clone(),
                        format!("{} -> {}", r.from_version, r.to_version),
                        r.phase.clone(),
                        format!("{}%", r.percent),
                    ]
                })
                .collect();
            let values = listed.rollouts.iter().map(rollout_json).collect();
            out.table(
                &["SERVICE", "ID", "VERSIONS", "PHASE", "SHARE"],
                rows,
                Value::Array(values),
            );
            return Ok(());
        }
        RolloutCommand::Pause { service, id } => {
            admin.pause_rollout(action(service, id, false)).await
        }
        RolloutCommand::Resume { service, id } => {
            admin.resume_rollout(action(service, id, false)).await
        }
        RolloutCommand::Promote { service, id, force } => {
            admin.promote_rollout(action(service, id, force)).await
        }
        RolloutCommand::Abort { service, id } => {
            admin.abort_rollout(action(service, id, false)).await
        }
    }
    .map_err(call_error)?
    .into_inner();
    let rollout = response.rollout.unwrap_or_default();
    if out.0 == Output::Json {
        out.json(rollout_json(&rollout));
        return Ok(());
    }
    println!(
        "rollout {} of {}: {} -> {}, {} at {}% (step {} of {}), revision {}",
        rollout.id,
        rollout.service,
        rollout.from_version,
        rollout.to_version,
        rollout.phase,
        rollout.percent,
        rollout.step + 1,
        rollout.steps.len(),
        response.revision
    );
    let rows = rollout
        .decisions
        .iter()
        .map(|d| {
            let figures = |m: &Option<pb::Measurement>| {
                m.as_ref().map_or_else(String::new, |m| {
                    format!(
                        "{} req, {:.2}% err, p99 {} ms",
                        m.requests,
                        m.error_rate * 100.0,
                        m.p99_ms
                    )
                })
            };
            vec![
                format_time(d.at_ms),
                d.event.clone(),
                format!("{}%", d.percent),
                figures(&d.canary),
                figures(&d.baseline),
                d.detail.clone(),
            ]
        })
        .collect();
    out.table(
        &[
            "TIME (UTC)",
            "DECISION",
            "SHARE",
            "CANARY",
            "BASELINE",
            "DETAIL",
        ],
        rows,
        Value::Null,
    );
    Ok(())
}

fn rollout_json(r: &pb::Rollout) -> Value {
    let measurement = |m: &Option<pb::Measurement>| {
        m.as_ref().map(|m| {
            json!({"requests": m.requests, "errors": m.errors, "error_rate": m.error_rate,
                   "p99_ms": m.p99_ms})
        })
    };
    json!({"id": r.id, "service": r.service, "from_version": r.from_version,
           "to_version": r.to_version, "phase": r.phase, "percent": r.percent,
           "steps": r.steps, "step": r.step, "failed_checks": r.failed_checks,
           "decisions": r.decisions.iter().map(|d| json!({
               "at_ms": d.at_ms, "event": d.event, "percent": d.percent, "detail": d.detail,
               "canary": measurement(&d.canary), "baseline": measurement(&d.baseline)})).collect::<Vec<_>>()})
}

async fn experiment_command(
    command: ExperimentCommand,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    let response = match command {
        ExperimentCommand::Create {
            service,
            id,
            variants,
            tiers,
        } => {
            admin
                .create_experiment(pb::CreateExperimentRequest {
                    id,
                    service,
                    variants,
                    cohort: Some(pb::Cohort {
                        tiers,
                        ..Default::default()
                    }),
                })
                .await
        }
        ExperimentCommand::Update {
            service,
            id,
            variants,
            rebalance,
        } => {
            admin
                .update_experiment(pb::UpdateExperimentRequest {
                    service,
                    id,
                    variants,
                    rebalance,
                })
                .await
        }
        ExperimentCommand::Show { service, id } => {
            admin
                .get_experiment(pb::GetExperimentRequest { service, id })
                .await
        }
        ExperimentCommand::Stop { service, id } => {
            let stopped = admin
                .stop_experiment(pb::StopExperimentRequest {
                    service,
                    id: id.clone(),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.revision(&format!("experiment {id} stopped"), stopped.revision);
            return Ok(());
        }
    }
    .map_err(call_error)?
    .into_inner();
    let experiment = response.experiment.unwrap_or_default();
    let rows = experiment
        .variants
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.version.clone(),
                v.weight.to_string(),
                experiment
                    .tenants_per_variant
                    .get(&v.name)
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
            ]
        })
        .collect();
    let json = json!({"id": experiment.id, "service": experiment.service,
        "sticky_tenants": experiment.sticky_tenants,
        "variants": experiment.variants.iter().map(|v| json!({"name": v.name, "version": v.version,
            "weight": v.weight, "tenants": experiment.tenants_per_variant.get(&v.name).copied().unwrap_or(0)})).collect::<Vec<_>>(),
        "revision": response.revision});
    out.table(&["VARIANT", "VERSION", "WEIGHT", "TENANTS"], rows, json);
    Ok(())
}

async fn schema_command(
    command: SchemaCommand,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    let request = |target: SchemaTarget, dry_run: bool| pb::UpgradeSchemaRequest {
        service: target.service,
        tenant_ids: target.tenants,
        cohort: Some(pb::Cohort {
            tiers: target.tiers,
            ..Default::default()
        }),
        target_version: target.version.unwrap_or_default(),
        target_schema: target.to_schema,
        dry_run,
    };
    match command {
        SchemaCommand::Plan(target) => {
            let response = admin
                .upgrade_schema(request(target, true))
                .await
                .map_err(call_error)?
                .into_inner();
            let rows = response
                .plans
                .iter()
                .map(|p| {
                    let steps: Vec<String> = p
                        .steps
                        .iter()
                        .map(|s| format!("{} {:04}_{}", s.direction, s.version, s.name))
                        .collect();
                    let steps = if !p.error.is_empty() {
                        format!("refused: {}", p.error)
                    } else if steps.is_empty() {
                        "up to date".to_owned()
                    } else {
                        steps.join(", ")
                    };
                    vec![
                        p.tenant_id.clone(),
                        p.from.to_string(),
                        p.to.to_string(),
                        steps,
                    ]
                })
                .collect();
            let values = response
                .plans
                .iter()
                .map(|p| {
                    json!({"tenant_id": p.tenant_id, "from": p.from, "to": p.to, "error": p.error,
                           "steps": p.steps.iter().map(|s| json!({"version": s.version, "name": s.name,
                               "direction": s.direction})).collect::<Vec<_>>()})
                })
                .collect();
            out.table(
                &["TENANT", "FROM", "TO", "STEPS"],
                rows,
                Value::Array(values),
            );
        }
        SchemaCommand::Upgrade(target) | SchemaCommand::Rollback(target) => {
            let started = admin
                .upgrade_schema(request(target, false))
                .await
                .map_err(call_error)?
                .into_inner();
            let mut progress = admin
                .watch_schema_upgrade(pb::GetSchemaUpgradeRequest {
                    upgrade_id: started.upgrade_id.clone(),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            let mut last = pb::SchemaUpgrade::default();
            while let Some(state) = progress.message().await.map_err(call_error)? {
                if out.0 == Output::Table {
                    let finished = state
                        .tenants
                        .iter()
                        .filter(|t| t.state == "done" || t.state == "failed")
                        .count();
                    eprint!(
                        "\r{} {finished}/{} tenants, {} failed",
                        progress_bar(finished, state.tenants.len(), 30),
                        state.tenants.len(),
                        state.tenants.iter().filter(|t| t.state == "failed").count()
                    );
                }
                last = state;
            }
            if out.0 == Output::Table {
                eprintln!();
            }
            let rows = last
                .tenants
                .iter()
                .map(|t| {
                    vec![
                        t.tenant_id.clone(),
                        t.state.clone(),
                        t.current.to_string(),
                        t.error.clone(),
                    ]
                })
                .collect();
            let values = last
                .tenants
                .iter()
                .map(|t| json!({"tenant_id": t.tenant_id, "state": t.state, "current": t.current, "error": t.error}))
                .collect();
            out.table(
                &["TENANT", "STATE", "SCHEMA", "ERROR"],
                rows,
                json!({
                "upgrade_id": started.upgrade_id, "target_schema": started.target_schema,
                "done": last.done, "failed": last.failed, "tenants": Value::Array(values)}),
            );
            if last.failed > 0 {
                anyhow::bail!(
                    "{} of {} tenant(s) failed (upgrade {})",
                    last.failed,
                    last.total,
                    started.upgrade_id
                );
            }
        }
        SchemaCommand::Status { tenant, service } => {
            let response = admin
                .get_tenant_schema(pb::GetTenantSchemaRequest {
                    tenant_id: tenant,
                    service,
                })
                .await
                .map_err(call_error)?
                .into_inner();
            let rows = response
                .services
                .iter()
                .map(|s| {
                    vec![
                        s.service.clone(),
                        s.current.to_string(),
                        s.required.to_string(),
                        s.latest.to_string(),
                        s.history.len().to_string(),
                    ]
                })
                .collect();
            let values = response
                .services
                .iter()
                .map(|s| {
                    json!({"service": s.service, "current": s.current, "required": s.required,
                           "latest": s.latest,
                           "history": s.history.iter().map(|h| json!({"version": h.version, "name": h.name,
                               "direction": h.direction, "success": h.success, "applied_at_ms": h.applied_at_ms,
                               "duration_ms": h.duration_ms, "applied_by": h.applied_by, "error": h.error}))
                               .collect::<Vec<_>>()})
                })
                .collect();
            out.table(
                &["SERVICE", "SCHEMA", "REQUIRED", "LATEST", "HISTORY ROWS"],
                rows,
                Value::Array(values),
            );
        }
    }
    Ok(())
}

/// Draws `[#####-----]`.
fn progress_bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

fn labels(labels: &HashMap<String, String>) -> String {
    convert::sorted(labels)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn tenant_json(t: &pb::Tenant) -> Value {
    json!({"id": t.id, "name": t.name, "region": t.region, "tier": t.tier,
           "labels": convert::sorted(&t.labels), "active": t.active})
}

/// Prints results as aligned tables or JSON.
#[derive(Debug, Clone, Copy)]
struct Printer(Output);

impl Printer {
    fn json(self, value: Value) {
        println!("{value}");
    }

    fn table(self, headers: &[&str], rows: Vec<Vec<String>>, json: Value) {
        if self.0 == Output::Json {
            return self.json(json);
        }
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let text: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            println!("{}", text.join("  ").trim_end());
        };
        line(headers.iter().map(|h| (*h).to_owned()).collect());
        for row in rows {
            line(row);
        }
    }

    fn message(self, text: String, json: Value) {
        if self.0 == Output::Json {
            self.json(json);
        } else {
            println!("{text}");
        }
    }

    fn revision(self, text: &str, revision: u64) {
        self.message(
            format!("{text} (revision {revision})"),
            json!({"revision": revision}),
        );
    }

    fn update(self, update: &pb::AssignmentUpdate) {
        if self.0 == Output::Json {
            let upserts: Vec<Value> = update
                .upserts
                .iter()
                .map(|a| {
                    json!({"tenant_id": a.tenant_id, "service": a.service, "version": a.version,
                           "source": a.source,
                           "instances": a.instances.iter().map(|i| json!({
                               "instance_id": i.instance_id, "address": i.address,
                               "healthy": i.healthy})).collect::<Vec<_>>()})
                })
                .collect();
            let removals: Vec<Value> = update
                .removals
                .iter()
                .map(|k| json!({"tenant_id": k.tenant_id, "service": k.service}))
                .collect();
            return self.json(
                json!({"revision": update.revision, "history": update.history,
                "snapshot": update.snapshot, "partial": update.partial, "upserts": upserts,
                "removals": removals}),
            );
        }
        let kind = if update.snapshot {
            "snapshot"
        } else {
            "change"
        };
        println!(
            "revision {} {kind}: {} upsert(s), {} removal(s) (history {})",
            update.revision,
            update.upserts.len(),
            update.removals.len(),
            update.history
        );
        for a in &update.upserts {
            let addresses: Vec<&str> = a.instances.iter().map(|i| i.address.as_str()).collect();
            println!(
                "  {} {} -> {} ({}) [{}]",
                a.tenant_id,
                a.service,
                a.version,
                a.source,
                addresses.join(" ")
            );
        }
        for k in &update.removals {
            println!("  {} {} removed", k.tenant_id, k.service);
        }
    }
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
