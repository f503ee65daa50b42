//! The load itself: `concurrency` workers, each with one call in flight (a closed loop),
//! spread round-robin over `connections` HTTP/2 connections.
//!
//! The hot path of a worker is: draw a tenant and a service from its own RNG (`batch_size`
//! pairs for `RouteBatch`), clone two prebuilt strings into each request, read the clock, await
//! the call, read the clock, record into its own histogram and count the decisions. The only
//! shared write is one relaxed `fetch_add` per call in `--requests` mode; there are no locks.
//! Tallies are merged after every worker has finished.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::router_client::RouterClient;
use serde::Serialize;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::connection::connect;
use crate::cpu;
use crate::distribution::{Distribution, Sampler};
use crate::error::Error;
use crate::keyspace::KeyspaceSpec;
use crate::rng::SplitMix64;
use crate::summary::{CpuUsage, Summary};
use crate::tally::Tally;

/// Most requests `RouteBatch` takes in one call.
pub const MAX_BATCH_SIZE: usize = 1_000;

/// Requests per `RouteBatch` call when `--batch-size` is not given.
pub const DEFAULT_BATCH_SIZE: usize = 100;

/// The method a run calls. A new method adds a variant here, one to the private `Call` and
/// `Answer` enums, and its arm in `Shared::prepare` and in the worker loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Rpc {
    /// `greyrouter.v1.Router/Route`: one decision per call.
    #[default]
    Route,
    /// `greyrouter.v1.Router/RouteBatch`: `batch_size` decisions per call.
    RouteBatch,
    /// The SDK (`greyrouter-client`): decisions from its local copy (`Client::route_local`),
    /// which it keeps with `WatchAssignments` from the target; no call per decision.
    Sdk,
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rpc::Route => f.write_str("route"),
            Rpc::RouteBatch => f.write_str("route-batch"),
            Rpc::Sdk => f.write_str("sdk"),
        }
    }
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this many recorded requests (warm-up requests not counted).
    Requests(u64),
    /// After this long from the end of the warm-up; calls in flight then still complete.
    Duration(Duration),
}

/// Everything a run needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// Server URI, e.g. `http://127.0.0.1:50051`.
    pub target: String,
    /// The method called.
    pub rpc: Rpc,
    /// Decisions asked for per call: 1 for `Route`, 1 to [`MAX_BATCH_SIZE`] for `RouteBatch`.
    pub batch_size: usize,
    /// Workers, each with one call in flight.
    pub concurrency: usize,
    /// Separate HTTP/2 connections; worker `w` uses connection `w % connections`.
    pub connections: usize,
    /// When the run ends.
    pub stop: Stop,
    /// Time spent sending requests that are not recorded, before the run proper.
    pub warmup: Duration,
    /// Tenants and services asked for.
    pub keyspace: KeyspaceSpec,
    /// How tenants are chosen (services are chosen uniformly).
    pub distribution: Distribution,
    /// Deadline of each call.
    pub timeout: Duration,
    /// Seed of the workers' generators: equal seeds ask for the same keys in the same order.
    pub rng_seed: u64,
    /// A bearer token sent with every call (a router with auth on).
    pub token: Option<String>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            target: "http://127.0.0.1:50051".to_owned(),
            rpc: Rpc::Route,
            batch_size: 1,
            concurrency: 32,
            connections: 4,
            stop: Stop::Duration(Duration::from_secs(10)),
            warmup: Duration::from_secs(2),
            keyspace: KeyspaceSpec::default(),
            distribution: Distribution::Uniform,
            timeout: Duration::from_secs(10),
            rng_seed: 1,
            token: None,
        }
    }
}

impl RunConfig {
    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.concurrency == 0 {
            return invalid("--concurrency", "must be at least 1");
        }
        match self.rpc {
            Rpc::Route | Rpc::Sdk if self.batch_size != 1 => {
                return invalid(
                    "--batch-size",
                    "applies to --rpc route-batch only (route and sdk make one decision at a time)",
                );
            }
            Rpc::RouteBatch if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) => {
                return Err(Error::InvalidConfig {
                    field: "--batch-size",
                    reason: format!(
                        "must be 1 to {MAX_BATCH_SIZE} (RouteBatch takes at most \
                         {MAX_BATCH_SIZE} requests per call), not {}",
                        self.batch_size
                    ),
                });
            }
            _ => {}
        }
        if self.connections == 0 {
            return invalid("--connections", "must be at least 1");
        }
        if self.connections > self.concurrency {
            return invalid(
                "--connections",
                "must not exceed --concurrency (a connection without a worker is idle)",
            );
        }
        if self.keyspace.tenants == 0 {
            return invalid("--tenants", "must be at least 1");
        }
        if self.keyspace.services == 0 {
            return invalid("--services", "must be at least 1");
        }
        if let Distribution::Zipf { s } = self.distribution
            && !(s.is_finite() && s >= 0.0)
        {
            return invalid("--zipf-s", "must be a finite number >= 0");
        }
        match self.stop {
            Stop::Requests(0) => return invalid("--requests", "must be at least 1"),
            Stop::Duration(d) if d.is_zero() => {
                return invalid("--duration", "must be longer than 0s");
            }
            _ => {}
        }
        if self.timeout.is_zero() {
            return invalid("--timeout", "must be longer than 0s");
        }
        Ok(())
    }
}

/// Runs the load described by `config` and returns what it measured. Failed calls are counted
/// in the summary; an error means the run could not take place (bad settings, no connection).
pub async fn run(config: &RunConfig) -> Result<Summary, Error> {
    config.validate()?;
    let keyspace = config.keyspace.build();
    let sdk = match config.rpc {
        Rpc::Sdk => Some(sdk_client(config).await?),
        Rpc::Route | Rpc::RouteBatch => None,
    };
    let channels = connect(&config.target, config.connections, config.timeout).await?;

    let start = Instant::now();
    let record_from = start + config.warmup;
    let shared = Arc::new(Shared {
        rpc: config.rpc,
        batch_size: config.batch_size,
        tenant_sampler: Sampler::new(config.distribution, keyspace.tenants.len()),
        service_sampler: Sampler::new(Distribution::Uniform, keyspace.services.len()),
        tenants: keyspace.tenants,
        services: keyspace.services,
        token: config
            .token
            .as_ref()
            .map(|token| format!("Bearer {token}").parse())
            .transpose()
            .map_err(|_| Error::InvalidConfig {
                field: "--token",
                reason: "must be printable ASCII".to_owned(),
            })?,
        record_from,
        end: match config.stop {
            Stop::Requests(limit) => End::Requests {
                limit,
                issued: AtomicU64::new(0),
            },
            Stop::Duration(duration) => End::Deadline(record_from + duration),
        },
    });

    let mut workers = JoinSet::new();
    for index in 0..config.concurrency {
        let channel = channels[index % channels.len()].clone();
        let rng = SplitMix64::for_stream(config.rng_seed, index as u64);
        match &sdk {
            Some(client) => workers.spawn(sdk_worker(Arc::clone(&shared), client.clone(), rng)),
            None => workers.spawn(worker(Arc::clone(&shared), channel, rng)),
        };
    }

    tokio::time::sleep_until(record_from.into()).await;
    let cpu_before = cpu::process_cpu_time();
    let mut tally = Tally::new();
    while let Some(done) = workers.join_next().await {
        tally.merge(done?);
    }
    let elapsed = record_from.elapsed();
    let cpu_after = cpu::process_cpu_time();
    if let Some(client) = sdk {
        client.close().await;
    }

    let generator_cpu = cpu_before.zip(cpu_after).map(|(before, after)| {
        let seconds = after.saturating_sub(before).as_secs_f64();
        CpuUsage {
            seconds,
            cores: seconds / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
            available_cores: std::thread::available_parallelism().map_or(1, usize::from),
        }
    });
    Ok(Summary::new(config, &tally, elapsed, generator_cpu))
}

/// State every worker reads; only `End::Requests::issued` is written.
struct Shared {
    rpc: Rpc,
    batch_size: usize,
    tenants: Vec<String>,
    services: Vec<String>,
    tenant_sampler: Sampler,
    service_sampler: Sampler,
    record_from: Instant,
    end: End,
    /// `Bearer <token>`, when the router wants one.
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

enum End {
    Requests { limit: u64, issued: AtomicU64 },
    Deadline(Instant),
}

/// A request ready to send.
enum Call {
    Route(pb::RouteRequest),
    RouteBatch(pb::RouteBatchRequest),
}

/// A successful answer, kept until the latency is recorded.
enum Answer {
    Route,
    RouteBatch(Vec<pb::RouteResult>),
}

impl Shared {
    /// Returns the next call, with keys drawn from `rng`.
    #[inline]
    fn prepare(&self, rng: &mut SplitMix64) -> Call {
        match self.rpc {
            Rpc::Route | Rpc::Sdk => Call::Route(self.route_request(rng)),
            Rpc::RouteBatch => Call::RouteBatch(pb::RouteBatchRequest {
                requests: (0..self.batch_size)
                    .map(|_| self.route_request(rng))
                    .collect(),
            }),
        }
    }

    /// Returns one `RouteRequest`: a tenant from the run's distribution, a uniform service.
    #[inline]
    fn route_request(&self, rng: &mut SplitMix64) -> pb::RouteRequest {
        let tenant = &self.tenants[self.tenant_sampler.sample(rng)];
        let service = &self.services[self.service_sampler.sample(rng)];
        pb::RouteRequest {
            tenant_id: tenant.clone(),
            service: service.clone(),
            ..Default::default()
        }
    }

    /// Returns how many of `wanted` recorded decisions starting at `now` may be made.
    #[inline]
    fn admit_many(&self, now: Instant, wanted: u64) -> u64 {
        match &self.end {
            End::Requests { limit, issued } => {
                let before = issued.fetch_add(wanted, Ordering::Relaxed);
                limit.saturating_sub(before).min(wanted)
            }
            End::Deadline(deadline) => {
                if now < *deadline {
                    wanted
                } else {
                    0
                }
            }
        }
    }

    /// Returns whether a recorded request starting at `now` may be sent.
    #[inline]
    fn admit(&self, now: Instant) -> bool {
        match &self.end {
            End::Requests { limit, issued } => issued.fetch_add(1, Ordering::Relaxed) < *limit,
            End::Deadline(deadline) => now < *deadline,
        }
    }
}

/// Connects the SDK to the target (following every tenant and service, reporting nothing) and
/// waits for its first snapshot.
async fn sdk_client(config: &RunConfig) -> Result<greyrouter_client::Client, Error> {
    let mut settings = greyrouter_client::ClientConfig::new(config.target.clone());
    settings.report_outcomes = false;
    settings.connect_timeout = config.timeout;
    let before = crate::memory::read_rss(std::process::id()).ok();
    let started = Instant::now();
    let client = greyrouter_client::Client::connect(settings)
        .await
        .map_err(|err| Error::Sdk(err.to_string()))?;
    client
        .ready(config.timeout)
        .await
        .map_err(|err| Error::Sdk(err.to_string()))?;
    eprintln!(
        "sdk local copy: synced in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // What the local copy costs this process: resident memory before connecting and once it
    // follows every tenant (the generator's own key space is in both).
    if let (Some(before), Ok(synced)) = (before, crate::memory::read_rss(std::process::id())) {
        eprintln!(
            "sdk local copy: resident {:.1} MiB before, {:.1} MiB once synced (+{:.1} MiB), peak {:.1} MiB",
            crate::memory::Rss::mib(before.rss_kib),
            crate::memory::Rss::mib(synced.rss_kib),
            crate::memory::Rss::mib(synced.rss_kib.saturating_sub(before.rss_kib)),
            crate::memory::Rss::mib(synced.peak_kib),
        );
    }
    Ok(client)
}

/// Decisions the SDK worker times together: a clock read costs about as much as a decision, so
/// the latency recorded is the mean of each group.
const SDK_GROUP: u32 = 64;

/// Makes local decisions one after another until the run ends, yielding to the other workers
/// after every group; returns what it recorded.
async fn sdk_worker(
    shared: Arc<Shared>,
    client: greyrouter_client::Client,
    mut rng: SplitMix64,
) -> Tally {
    let mut tally = Tally::new();
    loop {
        let started = Instant::now();
        let recorded = started >= shared.record_from;
        let group = if recorded {
            match u32::try_from(shared.admit_many(started, u64::from(SDK_GROUP))) {
                Ok(0) | Err(_) => break,
                Ok(admitted) => admitted,
            }
        } else {
            SDK_GROUP
        };
        let mut ok = 0u32;
        for _ in 0..group {
            let tenant = &shared.tenants[shared.tenant_sampler.sample(&mut rng)];
            let service = &shared.services[shared.service_sampler.sample(&mut rng)];
            let request = greyrouter_client::RouteRequest::new(tenant, service);
            match client.route_local(&request) {
                Ok(decision) => {
                    std::hint::black_box(decision);
                    ok += 1;
                }
                Err(err) if recorded => {
                    tally.record_error(&tonic::Status::new(err.code(), err.to_string()), 1);
                }
                Err(_) => {}
            }
        }
        if recorded {
            let mean = started.elapsed() / group;
            for _ in 0..ok {
                tally.record_ok(mean);
            }
            tally.record_decisions_ok(u64::from(ok));
        } else {
            tally.warmup += u64::from(SDK_GROUP);
        }
        tokio::task::yield_now().await;
    }
    tally
}

/// Sends calls one after another until the run ends; returns what it recorded.
async fn worker(shared: Arc<Shared>, channel: Channel, mut rng: SplitMix64) -> Tally {
    let token = shared.token.clone();
    let mut router =
        RouterClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            if let Some(token) = &token {
                request
                    .metadata_mut()
                    .insert("authorization", token.clone());
            }
            Ok(request)
        });
    let mut tally = Tally::new();
    let decisions = shared.batch_size as u64;
    loop {
        let call = shared.prepare(&mut rng);
        let started = Instant::now();
        let recorded = started >= shared.record_from;
        if recorded && !shared.admit(started) {
            break;
        }
        let result = match call {
            Call::Route(request) => router.route(request).await.map(|_| Answer::Route),
            Call::RouteBatch(request) => router
                .route_batch(request)
                .await
                .map(|response| Answer::RouteBatch(response.into_inner().results)),
        };
        if !recorded {
            tally.warmup += 1;
            continue;
        }
        match result {
            Ok(answer) => {
                tally.record_ok(started.elapsed());
                match answer {
                    Answer::Route => tally.record_decisions_ok(1),
                    Answer::RouteBatch(results) => {
                        tally.record_results(&results, shared.batch_size);
                    }
                }
            }
            Err(status) => {
                if status.code() == tonic::Code::ResourceExhausted {
                    tally.record_refused(started.elapsed());
                }
                tally.record_error(&status, decisions);
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        RunConfig::default().validate().expect("valid");
    }

    #[test]
    fn names_the_bad_setting() {
        let cases = [
            (
                RunConfig {
                    concurrency: 0,
                    ..RunConfig::default()
                },
                "--concurrency",
            ),
            (
                RunConfig {
                    concurrency: 2,
                    connections: 4,
                    ..RunConfig::default()
                },
                "--connections",
            ),
            (
                RunConfig {
                    batch_size: 10,
                    ..RunConfig::default()
                },
                "--batch-size",
            ),
            (
                RunConfig {
                    rpc: Rpc::RouteBatch,
                    batch_size: 0,
                    ..RunConfig::default()
                },
                "--batch-size",
            ),
            (
                RunConfig {
                    rpc: Rpc::RouteBatch,
                    batch_size: MAX_BATCH_SIZE + 1,
                    ..RunConfig::default()
                },
                "--batch-size",
            ),
            (
                RunConfig {
                    distribution: Distribution::Zipf { s: -1.0 },
                    ..RunConfig::default()
                },
                "--zipf-s",
            ),
            (
                RunConfig {
                    stop: Stop::Requests(0),
                    ..RunConfig::default()
                },
                "--requests",
            ),
            (
                RunConfig {
                    stop: Stop::Duration(Duration::ZERO),
                    ..RunConfig::default()
                },
                "--duration",
            ),
        ];
        for (config, flag) in cases {
            match config.validate() {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, flag),
                other => panic!("{flag}: {other:?}"),
            }
        }
    }

    #[test]
    fn requests_name_keys_of_the_keyspace() {
        let keyspace = KeyspaceSpec {
            tenants: 50,
            services: 3,
            ..KeyspaceSpec::default()
        }
        .build();
        let mut shared = Shared {
            rpc: Rpc::Route,
            batch_size: 1,
            tenant_sampler: Sampler::new(Distribution::Zipf { s: 1.0 }, 50),
            service_sampler: Sampler::new(Distribution::Uniform, 3),
            tenants: keyspace.tenants.clone(),
            services: keyspace.services.clone(),
            record_from: Instant::now(),
            end: End::Requests {
                limit: 2,
                issued: AtomicU64::new(0),
            },
            token: None,
        };
        let mut rng = SplitMix64::new(9);
        for _ in 0..100 {
            let Call::Route(request) = shared.prepare(&mut rng) else {
                panic!("a route call expected");
            };
            assert!(keyspace.tenants.contains(&request.tenant_id));
            assert!(keyspace.services.contains(&request.service));
        }
        let now = Instant::now();
        assert!(shared.admit(now));
        assert!(shared.admit(now));
        assert!(!shared.admit(now), "the third request is over the limit");

        shared.rpc = Rpc::RouteBatch;
        shared.batch_size = 7;
        let mut tenants_seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let Call::RouteBatch(batch) = shared.prepare(&mut rng) else {
                panic!("a batch call expected");
            };
            assert_eq!(batch.requests.len(), 7);
            for request in &batch.requests {
                assert!(keyspace.tenants.contains(&request.tenant_id));
                assert!(keyspace.services.contains(&request.service));
                tenants_seen.insert(request.tenant_id.clone());
            }
        }
        assert!(
            tenants_seen.len() > 7,
            "each request of a batch draws its own tenant: {tenants_seen:?}"
        );
    }

    #[test]
    fn rpc_names_match_the_flag() {
        assert_eq!(Rpc::RouteBatch.to_string(), "route-batch");
        assert_eq!(
            serde_json::to_value(Rpc::RouteBatch).expect("serializes"),
            "route-batch"
        );
        assert_eq!(
            serde_json::to_value(Rpc::Route).expect("serializes"),
            "route"
        );
        use clap::ValueEnum;
        assert_eq!(
            Rpc::from_str("route-batch", false).expect("a flag value"),
            Rpc::RouteBatch
        );
    }
}
