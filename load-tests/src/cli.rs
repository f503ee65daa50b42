//! The command line: `greyrouter-load seed`, `run`, `propagation` and `memory`, turned into
//! [`SeedConfig`], [`RunConfig`], [`PropagationConfig`] and [`MemoryConfig`] and carried out on a
//! tokio runtime; and the reference servers `floor-server` and `seed-design-server`
//! ([`crate::servers`]).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::distribution::Distribution;
use crate::duration::parse_duration;
use crate::error::Error;
use crate::keyspace::KeyspaceSpec;
use crate::memory::{MemoryConfig, Scenario, memory};
use crate::propagation::{PropagationConfig, propagation};
use crate::run::{DEFAULT_BATCH_SIZE, Rpc, RunConfig, Stop, run};
use crate::seed::{SeedConfig, seed};
use crate::summary::Checks;

/// Exit status when a check (`--max-p99-ms`, `--fail-on-error`) fails, or a change of
/// `propagation` did not arrive.
pub const EXIT_CHECK_FAILED: u8 = 1;
/// Exit status for a bad setting (clap uses the same for bad flags).
pub const EXIT_USAGE: u8 = 2;
/// Exit status when the target cannot be reached, or a seeding or measuring call fails
/// (`EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: u8 = 69;

/// greyrouter-load: seeds a greyrouter server and measures it under load.
#[derive(Debug, Parser)]
#[command(name = "greyrouter-load", version, about, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sends requests and reports throughput, errors and latency percentiles.
    Run(RunArgs),
    /// Creates the services, instances and tenants a run asks for, through Admin (upserts).
    Seed(SeedArgs),
    /// Measures how long a change made on one router takes to reach a watcher of another.
    Propagation(PropagationArgs),
    /// Measures a server's resident memory (`--pid`) under hostile input.
    Memory(MemoryArgs),
    /// Measures many watchers of one service: snapshot time, memory per stream, and how long a
    /// change takes to reach all of them.
    Fanout(FanoutArgs),
    /// Measures how long a change in Nacos or etcd takes to reach a router's routing state.
    Discovery(DiscoveryArgs),
    /// Measures acknowledged changes per second with concurrent writers (prints JSON).
    Writes(WritesArgs),
    /// Writes a durable store's data directory of TENANTS x SERVICES pins (one snapshot).
    DurableFixture(FixtureArgs),
    /// Serves a no-op `Router/Route` with a fixed answer: the cost of gRPC itself.
    FloorServer(FloorServerArgs),
    /// Serves `Router/Route` with the original design's Redis Lua script, on data it seeds.
    SeedDesignServer(SeedDesignServerArgs),
}

/// Flags of `floor-server`.
#[derive(Debug, Clone, Args)]
pub struct FloorServerArgs {
    /// Address to listen on (port 0: any free port); printed as `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: String,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Flags of `seed-design-server`.
#[derive(Debug, Clone, Args)]
pub struct SeedDesignServerArgs {
    /// Redis to seed and route with (its data is overwritten), e.g. `redis://127.0.0.1:6390/0`.
    #[arg(long)]
    pub redis: String,
    /// Address to listen on (port 0: any free port); printed as `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: String,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Tenants seeded (`tenant-0` ...).
    #[arg(long, default_value_t = 10_000)]
    pub tenants: usize,
    /// Services seeded (`service-0` ...).
    #[arg(long, default_value_t = 20)]
    pub services: usize,
    /// Instances per service.
    #[arg(long, default_value_t = 4)]
    pub instances: usize,
}

/// The tenants and services, shared by `seed` and `run` so that they name the same keys.
#[derive(Debug, Clone, Args)]
pub struct KeyspaceArgs {
    /// Server to load.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// Number of tenants.
    #[arg(long, default_value_t = 10_000)]
    pub tenants: usize,
    /// Number of services.
    #[arg(long, default_value_t = 20)]
    pub services: usize,
    /// Tenant ids are this prefix and a number from 0.
    #[arg(long, default_value = "tenant-")]
    pub tenant_prefix: String,
    /// Service names are this prefix and a number from 0.
    #[arg(long, default_value = "service-")]
    pub service_prefix: String,
}

impl KeyspaceArgs {
    fn spec(&self) -> KeyspaceSpec {
        KeyspaceSpec {
            tenants: self.tenants,
            services: self.services,
            tenant_prefix: self.tenant_prefix.clone(),
            service_prefix: self.service_prefix.clone(),
        }
    }
}

/// How tenants are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DistributionKind {
    /// Every tenant equally often.
    Uniform,
    /// Tenant i (from 0) with probability proportional to 1/(i+1)^s.
    Zipf,
}

/// Flags of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Server and keys.
    #[command(flatten)]
    pub keyspace: KeyspaceArgs,
    /// Method to call.
    #[arg(long, value_enum, default_value_t = Rpc::Route)]
    pub rpc: Rpc,
    /// Requests per RouteBatch call, 1 to 1000 (with --rpc route-batch) [default: 100].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Workers, each with one call in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Separate HTTP/2 connections; workers are spread over them round-robin.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Stop after this many recorded calls.
    #[arg(long, conflicts_with = "duration")]
    pub requests: Option<u64>,
    /// Stop after this long (after the warm-up), e.g. 10s, 500ms, 2m [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Send unrecorded requests for this long first.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// How tenants are chosen (services are always uniform).
    #[arg(long, value_enum, default_value_t = DistributionKind::Uniform)]
    pub distribution: DistributionKind,
    /// Exponent of the Zipf distribution (0 is uniform; larger is more skewed).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,
    /// Deadline of each call.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Seed of the key choice: equal seeds replay the same keys.
    #[arg(long, default_value_t = 1)]
    pub rng_seed: u64,
    /// Runtime worker threads [default: one per available core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object instead of text (`--format json`).
    #[arg(long)]
    pub json: bool,
    /// What to print: `text`, `json` (greyrouter's summary), or `ghz-json` (the JSON layout
    /// of ghz's report, for tools that read ghz runs) [default: text].
    #[arg(long, value_enum, conflicts_with = "json")]
    pub format: Option<OutputFormat>,
    /// Exit with status 1 when the p99 latency exceeds this many milliseconds.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Exit with status 1 when any request failed.
    #[arg(long)]
    pub fail_on_error: bool,
    /// Bearer token (a JWT or an API key) sent with every call, for a router with auth on.
    #[arg(long, env = "GREYROUTER_LOAD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// How a run's summary is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Text for people.
    Text,
    /// greyrouter's summary as one JSON object.
    Json,
    /// The JSON layout of ghz's report (`count`, `total`, `average`, `fastest`, `slowest`,
    /// `rps`, `latencyDistribution`, `statusCodeDistribution`, ...; durations in nanoseconds).
    GhzJson,
}

impl RunArgs {
    /// How to print the summary.
    pub fn output(&self) -> OutputFormat {
        match (self.format, self.json) {
            (Some(format), _) => format,
            (None, true) => OutputFormat::Json,
            (None, false) => OutputFormat::Text,
        }
    }

    /// Returns the run these flags describe.
    pub fn config(&self) -> RunConfig {
        RunConfig {
            target: self.keyspace.target.clone(),
            rpc: self.rpc,
            batch_size: self.batch_size.unwrap_or(match self.rpc {
                Rpc::Route | Rpc::Sdk => 1,
                Rpc::RouteBatch => DEFAULT_BATCH_SIZE,
            }),
            concurrency: self.concurrency,
            connections: self.connections,
            stop: match (self.requests, self.duration) {
                (Some(requests), _) => Stop::Requests(requests),
                (None, Some(duration)) => Stop::Duration(duration),
                (None, None) => Stop::Duration(Duration::from_secs(10)),
            },
            warmup: self.warmup,
            keyspace: self.keyspace.spec(),
            distribution: match self.distribution {
                DistributionKind::Uniform => Distribution::Uniform,
                DistributionKind::Zipf => Distribution::Zipf { s: self.zipf_s },
            },
            timeout: self.timeout,
            rng_seed: self.rng_seed,
            token: self.token.clone(),
        }
    }

    /// Returns the checks these flags ask for, or why `--max-p99-ms` is unusable.
    pub fn checks(&self) -> Result<Checks, Error> {
        let max_p99 = self
            .max_p99_ms
            .map(|ms| {
                Duration::try_from_secs_f64(ms / 1e3).map_err(|_| Error::InvalidConfig {
                    field: "--max-p99-ms",
                    reason: format!("{ms} is not a number of milliseconds >= 0"),
                })
            })
            .transpose()?;
        Ok(Checks {
            max_p99,
            fail_on_error: self.fail_on_error,
        })
    }
}

/// Flags of `seed`.
#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    /// Server and keys.
    #[command(flatten)]
    pub keyspace: KeyspaceArgs,
    /// Versions of every service, comma-separated; the first is the default.
    #[arg(long, value_delimiter = ',', default_value = "v1")]
    pub versions: Vec<String>,
    /// Instances registered per version of each service.
    #[arg(long, default_value_t = 4)]
    pub instances: usize,
    /// Most Admin calls in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Separate HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Deadline of each call.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl SeedArgs {
    /// Returns the seed these flags describe.
    pub fn config(&self) -> SeedConfig {
        SeedConfig {
            target: self.keyspace.target.clone(),
            keyspace: self.keyspace.spec(),
            versions: self.versions.clone(),
            instances_per_version: self.instances,
            concurrency: self.concurrency,
            connections: self.connections,
            timeout: self.timeout,
        }
    }
}

/// Flags of `propagation`.
#[derive(Debug, Clone, Args)]
pub struct PropagationArgs {
    /// Router the changes are made on (`Admin/SetTenantVersion`).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub writer: String,
    /// Router the changes are watched on (`Router/WatchAssignments`) [default: the writer].
    #[arg(long)]
    pub watcher: Option<String>,
    /// Number of changes, made one after another.
    #[arg(long, default_value_t = 1_000)]
    pub changes: usize,
    /// Deadline of each call, and longest wait for one change to arrive.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl PropagationArgs {
    /// Returns the measurement these flags describe.
    pub fn config(&self) -> PropagationConfig {
        PropagationConfig {
            writer: self.writer.clone(),
            watcher: self.watcher.clone().unwrap_or_else(|| self.writer.clone()),
            changes: self.changes,
            timeout: self.timeout,
        }
    }
}

/// Flags of `fanout`.
#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Router to watch and change (seeded with `greyrouter-load seed`).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// The router's process id, to read its resident memory (0: not read).
    #[arg(long, default_value_t = 0)]
    pub pid: u32,
    /// Tenants seeded on the target.
    #[arg(long, default_value_t = 10_000)]
    pub tenants: usize,
    /// Services seeded on the target.
    #[arg(long, default_value_t = 20)]
    pub services: usize,
    /// The service every stream follows, by number.
    #[arg(long, default_value_t = 0)]
    pub service: usize,
    /// Watch streams.
    #[arg(long, default_value_t = 1_000)]
    pub watchers: usize,
    /// Connections the streams are spread over.
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Changes made once every stream has its snapshot.
    #[arg(long, default_value_t = 100)]
    pub changes: usize,
    /// Longest wait for the snapshots, or for one change to reach every stream.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl FanoutArgs {
    /// Returns the measurement these flags describe.
    pub fn config(&self) -> Result<crate::fanout::FanoutConfig, Error> {
        if self.watchers == 0 || self.connections == 0 || self.tenants == 0 {
            return Err(Error::InvalidConfig {
                field: "--watchers",
                reason: "watchers, connections and tenants must be positive".to_owned(),
            });
        }
        if self.service >= self.services {
            return Err(Error::InvalidConfig {
                field: "--service",
                reason: "must be below --services".to_owned(),
            });
        }
        Ok(crate::fanout::FanoutConfig {
            target: self.target.clone(),
            pid: self.pid,
            keyspace: KeyspaceSpec {
                tenants: self.tenants,
                services: self.services,
                ..KeyspaceSpec::default()
            },
            service: self.service,
            watchers: self.watchers,
            connections: self.connections,
            changes: self.changes,
            timeout: self.timeout,
        })
    }
}

/// Flags of `discovery`.
#[derive(Debug, Clone, Args)]
pub struct DiscoveryArgs {
    /// The router that syncs the registry.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// Which registry the changes are made in.
    #[arg(long, value_enum)]
    pub registry: crate::discovery::RegistryKind,
    /// The registry's URL (`http://127.0.0.1:8848/nacos`, `http://127.0.0.1:2379`).
    #[arg(long)]
    pub registry_url: String,
    /// The greyrouter service the router syncs from that registry.
    #[arg(long, default_value = "api")]
    pub service: String,
    /// Number of changes, one after another.
    #[arg(long, default_value_t = 200)]
    pub changes: usize,
    /// Longest wait for one change.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
}

/// Flags of `writes`.
#[derive(Debug, Clone, Args)]
pub struct WritesArgs {
    /// Server to write to.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// Concurrent writers, each one change at a time.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// How long to write.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Writes to etcd's v3 JSON gateway at this URL instead (`http://127.0.0.1:2379`).
    #[arg(long)]
    pub etcd: Option<String>,
}

/// Flags of `durable-fixture`.
#[derive(Debug, Clone, Args)]
pub struct FixtureArgs {
    /// The data directory to create.
    #[arg(long)]
    pub dir: std::path::PathBuf,
    /// Tenants, each pinned to v2 of every service.
    #[arg(long, default_value_t = 100_000)]
    pub tenants: usize,
    /// Services.
    #[arg(long, default_value_t = 20)]
    pub services: usize,
    /// Instances of each version of each service.
    #[arg(long, default_value_t = 4)]
    pub instances: usize,
}

/// Which scenarios `memory` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioArg {
    /// 6,000 instances registered one at a time into one version.
    Instances,
    /// 20 pause/resume actions of a rollout with the longest reasons the server takes.
    Reasons,
    /// 400 watchers that stop reading, then 20,000 changes they all follow.
    Watchers,
    /// 100,000 pin flips, no watcher.
    Changes,
    /// All four, one after another, on the same server.
    All,
}

/// Flags of `memory`.
#[derive(Debug, Clone, Args)]
pub struct MemoryArgs {
    /// Server to measure.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// The server's process id (its `/proc/<pid>/status` is read).
    #[arg(long)]
    pub pid: u32,
    /// Scenario to run.
    #[arg(long, value_enum, default_value_t = ScenarioArg::All)]
    pub scenario: ScenarioArg,
    /// Instances registered by `instances`.
    #[arg(long, default_value_t = 6_000)]
    pub instances: usize,
    /// Tenants of `reasons`.
    #[arg(long, default_value_t = 50)]
    pub reason_tenants: usize,
    /// Pause/resume actions of `reasons`.
    #[arg(long, default_value_t = 20)]
    pub actions: usize,
    /// Characters of the reason tried first (256 when the server refuses it).
    #[arg(long, default_value_t = 1_000_000)]
    pub reason_chars: usize,
    /// Tenants of `watchers`.
    #[arg(long, default_value_t = 1_000)]
    pub watch_tenants: usize,
    /// Services of `watchers`.
    #[arg(long, default_value_t = 5)]
    pub watch_services: usize,
    /// Watch streams of `watchers`, each on its own connection.
    #[arg(long, default_value_t = 400)]
    pub watchers: usize,
    /// Changes made while the watchers are open.
    #[arg(long, default_value_t = 20_000)]
    pub watch_changes: usize,
    /// Tenants of `changes`.
    #[arg(long, default_value_t = 1_000)]
    pub change_tenants: usize,
    /// Changes of `changes`.
    #[arg(long, default_value_t = 100_000)]
    pub changes: usize,
    /// Deadline of each call.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// Longest wait for the resident set to become steady after watchers open, after the
    /// changes and after they are dropped.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub settle: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl MemoryArgs {
    /// Returns the measurement these flags describe.
    pub fn config(&self) -> MemoryConfig {
        MemoryConfig {
            target: self.target.clone(),
            pid: self.pid,
            scenarios: match self.scenario {
                ScenarioArg::Instances => vec![Scenario::Instances],
                ScenarioArg::Reasons => vec![Scenario::Reasons],
                ScenarioArg::Watchers => vec![Scenario::Watchers],
                ScenarioArg::Changes => vec![Scenario::Changes],
                ScenarioArg::All => Scenario::ALL.to_vec(),
            },
            instances: self.instances,
            reason_tenants: self.reason_tenants,
            actions: self.actions,
            reason_chars: self.reason_chars,
            watch_tenants: self.watch_tenants,
            watch_services: self.watch_services,
            watchers: self.watchers,
            watch_changes: self.watch_changes,
            change_tenants: self.change_tenants,
            changes: self.changes,
            timeout: self.timeout,
            settle: self.settle,
        }
    }
}

/// Carries out a parsed command line; returns the process's exit status.
pub fn execute(cli: Cli) -> ExitCode {
    let threads = match &cli.command {
        Command::Run(args) => args.threads,
        Command::FloorServer(args) => Some(args.threads),
        Command::SeedDesignServer(args) => Some(args.threads),
        Command::Seed(_)
        | Command::Propagation(_)
        | Command::Memory(_)
        | Command::Fanout(_)
        | Command::Discovery(_)
        | Command::Writes(_)
        | Command::DurableFixture(_) => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("greyrouter-load: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        match &cli.command {
            Command::FloorServer(args) => Some(
                crate::servers::serve(&args.addr, crate::servers::FloorRouter::default()).await,
            ),
            Command::SeedDesignServer(args) => Some(
                crate::servers::run_seed_design_server(
                    &args.redis,
                    &args.addr,
                    args.tenants,
                    args.services,
                    args.instances,
                )
                .await,
            ),
            _ => None,
        }
    });
    match served {
        Some(Ok(())) => return ExitCode::SUCCESS,
        Some(Err(err)) => {
            eprintln!("greyrouter-load: {err}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
        None => {}
    }
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::FloorServer(_) | Command::SeedDesignServer(_) => {
                unreachable!("servers are run above")
            }
            Command::Run(args) => execute_run(&args).await,
            Command::Seed(args) => execute_seed(&args).await,
            Command::Propagation(args) => execute_propagation(&args).await,
            Command::Memory(args) => execute_memory(&args).await,
            Command::Fanout(args) => {
                let report = crate::fanout::fanout(&args.config()?).await?;
                if args.json {
                    println!("{}", report.to_json());
                } else {
                    print!("{report}");
                }
                // A change that did not reach every stream fails the run.
                Ok(if report.lost > 0 {
                    ExitCode::from(EXIT_CHECK_FAILED)
                } else {
                    ExitCode::SUCCESS
                })
            }
            Command::Discovery(args) => execute_discovery(&args).await,
            Command::DurableFixture(args) => {
                let revision =
                    crate::fixture::write(&args.dir, args.tenants, args.services, args.instances)?;
                println!("{}", serde_json::json!({ "revision": revision }));
                Ok(ExitCode::SUCCESS)
            }
            Command::Writes(args) => {
                let report = match &args.etcd {
                    Some(url) => {
                        crate::writes::measure_etcd(url, args.concurrency, args.duration).await?
                    }
                    None => {
                        crate::writes::measure(&args.target, args.concurrency, args.duration)
                            .await?
                    }
                };
                // A report of plain numbers always serializes.
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("greyrouter-load: {}", crate::error::chain(&err));
            ExitCode::from(match err {
                Error::InvalidConfig { .. } | Error::InvalidTarget { .. } => EXIT_USAGE,
                Error::Connect { .. }
                | Error::Seed { .. }
                | Error::Call { .. }
                | Error::Sdk(_)
                | Error::Process { .. }
                | Error::Discovery(_)
                | Error::Fanout(_) => EXIT_UNAVAILABLE,
                Error::Worker(_) => 1,
            })
        }
    }
}

async fn execute_seed(args: &SeedArgs) -> Result<ExitCode, Error> {
    let report = seed(&args.config()).await?;
    if args.json {
        match serde_json::to_string(&report) {
            Ok(json) => println!("{json}"),
            Err(err) => unreachable!("a seed report always serializes: {err}"),
        }
    } else {
        println!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn execute_discovery(args: &DiscoveryArgs) -> Result<ExitCode, Error> {
    let config = crate::discovery::DiscoveryConfig {
        target: args.target.clone(),
        kind: args.registry,
        registry: args.registry_url.clone(),
        service: args.service.clone(),
        changes: args.changes,
        timeout: args.timeout,
    };
    let report = crate::discovery::measure(&config).await?;
    println!(
        "{}",
        serde_json::to_string(&report).map_err(|e| Error::Discovery(e.to_string()))?
    );
    Ok(if report.missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn execute_propagation(args: &PropagationArgs) -> Result<ExitCode, Error> {
    let config = args.config();
    config.validate()?;
    eprintln!(
        "greyrouter-load: {} changes on {}, watched on {}",
        config.changes, config.writer, config.watcher
    );
    let report = propagation(&config).await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    if report.missing > 0 {
        eprintln!(
            "greyrouter-load: check failed: {} of {} changes did not arrive within --timeout {}",
            report.missing,
            report.changes,
            crate::duration::HumanDuration(config.timeout)
        );
        return Ok(ExitCode::from(EXIT_CHECK_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

async fn execute_memory(args: &MemoryArgs) -> Result<ExitCode, Error> {
    let config = args.config();
    config.validate()?;
    let report = memory(&config).await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn execute_run(args: &RunArgs) -> Result<ExitCode, Error> {
    let checks = args.checks()?;
    let config = args.config();
    config.validate()?;
    let stop = match config.stop {
        Stop::Requests(n) => format!("{n} requests"),
        Stop::Duration(d) => crate::duration::HumanDuration(d).to_string(),
    };
    eprintln!(
        "greyrouter-load: {}{} on {} for {stop} after a {} warm-up, {} workers over {} connections",
        config.rpc,
        match config.rpc {
            Rpc::Route | Rpc::Sdk => String::new(),
            Rpc::RouteBatch => format!(" ({} requests per call)", config.batch_size),
        },
        config.target,
        crate::duration::HumanDuration(config.warmup),
        config.concurrency,
        config.connections
    );
    let mut summary = run(&config).await?;
    summary.violations = checks.violations(&summary);
    match args.output() {
        OutputFormat::Text => print!("{summary}"),
        OutputFormat::Json => println!("{}", summary.to_json()),
        OutputFormat::GhzJson => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| {
                    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
                });
            println!("{}", summary.to_ghz_json(now_ms));
        }
    }
    for violation in &summary.violations {
        eprintln!("greyrouter-load: check failed: {violation}");
    }
    Ok(if summary.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CHECK_FAILED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("greyrouter-load").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_match_the_documentation() {
        let Command::Run(args) = parse(&["run"]).command else {
            panic!("run expected")
        };
        let config = args.config();
        assert_eq!(config, RunConfig::default());
        assert_eq!(args.checks().expect("checks"), Checks::default());
    }

    #[test]
    fn run_flags_reach_the_config() {
        let Command::Run(args) = parse(&[
            "run",
            "--target",
            "http://127.0.0.1:50061",
            "--requests",
            "2000",
            "--concurrency",
            "8",
            "--connections",
            "2",
            "--warmup",
            "500ms",
            "--distribution",
            "zipf",
            "--zipf-s",
            "1.2",
            "--tenants",
            "50",
            "--services",
            "3",
            "--tenant-prefix",
            "t",
            "--max-p99-ms",
            "2.5",
            "--fail-on-error",
            "--json",
        ])
        .command
        else {
            panic!("run expected")
        };
        let config = args.config();
        assert_eq!(config.target, "http://127.0.0.1:50061");
        assert_eq!(config.stop, Stop::Requests(2000));
        assert_eq!((config.concurrency, config.connections), (8, 2));
        assert_eq!(config.warmup, Duration::from_millis(500));
        assert_eq!(config.distribution, Distribution::Zipf { s: 1.2 });
        assert_eq!(config.keyspace.tenant_id(3), "t3");
        assert_eq!(config.keyspace.services, 3);
        let checks = args.checks().expect("checks");
        assert_eq!(checks.max_p99, Some(Duration::from_micros(2500)));
        assert!(checks.fail_on_error && args.json);
        assert_eq!(args.output(), OutputFormat::Json);
    }

    #[test]
    fn the_summary_prints_as_text_json_or_ghz_json() {
        let output = |extra: &[&str]| {
            let mut argv = vec!["run"];
            argv.extend_from_slice(extra);
            let Command::Run(args) = parse(&argv).command else {
                panic!("run expected")
            };
            args.output()
        };
        assert_eq!(output(&[]), OutputFormat::Text);
        assert_eq!(output(&["--format", "json"]), OutputFormat::Json);
        assert_eq!(output(&["--format", "ghz-json"]), OutputFormat::GhzJson);
        assert!(
            Cli::try_parse_from(["greyrouter-load", "run", "--json", "--format", "text"]).is_err(),
            "--json and --format are one choice"
        );
    }

    #[test]
    fn route_batch_asks_for_100_decisions_unless_told() {
        let Command::Run(args) = parse(&["run", "--rpc", "route-batch"]).command else {
            panic!("run expected")
        };
        let config = args.config();
        assert_eq!((config.rpc, config.batch_size), (Rpc::RouteBatch, 100));
        config.validate().expect("valid");

        let Command::Run(args) =
            parse(&["run", "--rpc", "route-batch", "--batch-size", "1000"]).command
        else {
            panic!("run expected")
        };
        assert_eq!(args.config().batch_size, 1000);
        args.config().validate().expect("1000 is the largest batch");

        for (flags, reason) in [
            (
                &["run", "--rpc", "route-batch", "--batch-size", "1001"][..],
                "must be 1 to 1000 (RouteBatch takes at most 1000 requests per call), not 1001",
            ),
            (
                &["run", "--rpc", "route-batch", "--batch-size", "0"][..],
                "must be 1 to 1000 (RouteBatch takes at most 1000 requests per call), not 0",
            ),
            (
                &["run", "--batch-size", "10"][..],
                "applies to --rpc route-batch only (route and sdk make one decision at a time)",
            ),
        ] {
            let Command::Run(args) = parse(flags).command else {
                panic!("run expected")
            };
            match args.config().validate() {
                Err(
                    err @ Error::InvalidConfig {
                        field: "--batch-size",
                        ..
                    },
                ) => assert_eq!(err.to_string(), format!("invalid --batch-size: {reason}")),
                other => panic!("{flags:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn requests_and_duration_exclude_each_other() {
        let err = Cli::try_parse_from([
            "greyrouter-load",
            "run",
            "--requests",
            "10",
            "--duration",
            "1s",
        ])
        .expect_err("conflict");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let err = Cli::try_parse_from(["greyrouter-load", "run", "--duration", "10"])
            .expect_err("no unit");
        assert!(err.to_string().contains("missing unit"), "{err}");
    }

    #[test]
    fn seed_defaults_match_the_documentation() {
        let Command::Seed(args) = parse(&["seed"]).command else {
            panic!("seed expected")
        };
        assert_eq!(args.config(), SeedConfig::default());
        let Command::Seed(args) =
            parse(&["seed", "--versions", "v1,v2", "--instances", "2"]).command
        else {
            panic!("seed expected")
        };
        assert_eq!(args.config().versions, ["v1", "v2"]);
        assert_eq!(args.config().instances_per_version, 2);
    }

    #[test]
    fn propagation_defaults_and_flags_reach_the_config() {
        let Command::Propagation(args) = parse(&["propagation"]).command else {
            panic!("propagation expected")
        };
        assert_eq!(args.config(), PropagationConfig::default());
        let Command::Propagation(args) = parse(&[
            "propagation",
            "--writer",
            "http://127.0.0.1:50061",
            "--watcher",
            "http://127.0.0.1:50062",
            "--changes",
            "50",
            "--timeout",
            "2s",
            "--json",
        ])
        .command
        else {
            panic!("propagation expected")
        };
        let config = args.config();
        assert_eq!(config.writer, "http://127.0.0.1:50061");
        assert_eq!(config.watcher, "http://127.0.0.1:50062");
        assert_eq!(config.changes, 50);
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert!(args.json);
        // Without --watcher, the writer watches its own changes.
        let Command::Propagation(args) =
            parse(&["propagation", "--writer", "http://127.0.0.1:50061"]).command
        else {
            panic!("propagation expected")
        };
        assert_eq!(args.config().watcher, "http://127.0.0.1:50061");
    }

    #[test]
    fn memory_defaults_are_the_issue_sizes_and_flags_reach_the_config() {
        let Command::Memory(args) = parse(&["memory", "--pid", "42"]).command else {
            panic!("memory expected")
        };
        assert_eq!(
            args.config(),
            MemoryConfig {
                pid: 42,
                ..MemoryConfig::default()
            }
        );
        let Command::Memory(args) = parse(&[
            "memory",
            "--pid",
            "7",
            "--target",
            "http://127.0.0.1:50061",
            "--scenario",
            "watchers",
            "--watchers",
            "10",
            "--settle",
            "5s",
        ])
        .command
        else {
            panic!("memory expected")
        };
        let config = args.config();
        assert_eq!(config.scenarios, [Scenario::Watchers]);
        assert_eq!((config.pid, config.watchers), (7, 10));
        assert_eq!(config.settle, Duration::from_secs(5));
        assert!(
            Cli::try_parse_from(["greyrouter-load", "memory"]).is_err(),
            "--pid is required"
        );
    }

    #[test]
    fn a_negative_p99_bound_is_refused() {
        let Command::Run(args) = parse(&["run", "--max-p99-ms=-1"]).command else {
            panic!("run expected")
        };
        assert!(matches!(
            args.checks(),
            Err(Error::InvalidConfig {
                field: "--max-p99-ms",
                ..
            })
        ));
    }
}
