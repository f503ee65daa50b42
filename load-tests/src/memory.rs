//! Resident memory of a running server under hostile input: `greyrouter-load memory`.
//!
//! The server's resident set (`VmRSS`) and its peak (`VmHWM`) are read from
//! `/proc/<pid>/status` while one of four scenarios loads it through its gRPC API:
//!
//! - [`Scenario::Instances`]: service `mem-svc` (version `v1`), then 6,000 instances registered
//!   into `v1` one at a time (`mem-svc-00001` at `10.0.0.1:8080` ...); resident memory at 0,
//!   1/6, 1/3, 2/3 and all of them, and the mean and p99 time of a registration in each band;
//! - [`Scenario::Reasons`]: a service with versions `v1` and `v2`, 50 tenants, a rollout to `v2`,
//!   then 20 actions alternating `PauseRollout` and `ResumeRollout`, each with the longest reason
//!   the server takes: 1,000,000 characters, or [`FALLBACK_REASON_CHARS`] when it answers
//!   `INVALID_ARGUMENT` (or `OUT_OF_RANGE`); memory before and after, and the encoded size of the
//!   `GetRollout` reply and of a `ListEvents` page of 100;
//! - [`Scenario::Watchers`]: 1,000 tenants x 5 services, then 400 `WatchAssignments` streams of
//!   those services that read their first message and then nothing (each on its own connection
//!   with 65,535-byte HTTP/2 windows, so the server soon cannot send more), then 20,000 changes
//!   each of which alters an assignment every watcher follows; memory before the watchers, with
//!   them open, after the changes and once they are dropped;
//! - [`Scenario::Changes`]: 100,000 pin flips over 1,000 tenants with no watcher; memory at
//!   every fifth of them, and the time per change in each band.
//!
//! Scenarios use names of their own (`mem-svc`, `mem-rollout-*`, `mem-watch-*`,
//! `mem-change-*`), so several can run against one server, but each measures the server's whole
//! process: `load-tests/memory.sh` gives each scenario a fresh server. The setup of a scenario
//! (services, instances, tenants) goes through [`seed`]; a failed setup call ends the
//! measurement. A failed *measured* call (a registration, an action, a change, a watch) is
//! counted by code and the scenario goes on: what a server refuses is part of the result.
//!
//! Points taken after something the server does in the background (watchers open, changes
//! fanned out, watchers dropped) wait until the resident set is steady: within 1 MiB or 0.5%
//! over 2 s ([`settle`]), at most the configured settle time.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::admin_client::AdminClient;
use greyrouter_proto::v1::router_client::RouterClient;
use prost::Message;
use serde::Serialize;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::connection::connect;
use crate::error::Error;
use crate::keyspace::KeyspaceSpec;
use crate::seed::{SeedConfig, seed};

/// Reason length tried after the server refused the configured one: the longest reason the
/// hardened server takes.
pub const FALLBACK_REASON_CHARS: usize = 256;

/// The smallest HTTP/2 window (RFC 9113 §6.9.2): what a watcher grants the server, so that a
/// watcher that stops reading soon stops the server from sending.
pub const WATCHER_WINDOW: u32 = 65_535;

/// The service of the instances scenario.
pub const INSTANCES_SERVICE: &str = "mem-svc";

/// How often [`settle`] reads the resident set.
const SETTLE_INTERVAL: Duration = Duration::from_millis(250);
/// Readings [`settle`] compares: 2 s of them.
const SETTLE_WINDOW: usize = 8;
/// How long opening one watcher's connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Characters of a refusal's message kept in the report.
const MESSAGE_CHARS: usize = 200;

/// One of the measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Thousands of instances registered one at a time into one version.
    Instances,
    /// Rollout actions with very long reasons.
    Reasons,
    /// Watchers that stop reading, while changes go on.
    Watchers,
    /// Many changes, no watcher.
    Changes,
}

impl Scenario {
    /// Every scenario, in the order `--scenario all` runs them.
    pub const ALL: [Scenario; 4] = [
        Scenario::Instances,
        Scenario::Reasons,
        Scenario::Watchers,
        Scenario::Changes,
    ];
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scenario::Instances => "instances",
            Scenario::Reasons => "reasons",
            Scenario::Watchers => "watchers",
            Scenario::Changes => "changes",
        })
    }
}

/// What to measure; the defaults are the sizes of the hostile-input review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Server URI, e.g. `http://127.0.0.1:50051`.
    pub target: String,
    /// The server's process id, whose `/proc/<pid>/status` is read.
    pub pid: u32,
    /// Scenarios, run one after another against the same server.
    pub scenarios: Vec<Scenario>,
    /// Instances registered by `instances`.
    pub instances: usize,
    /// Tenants of `reasons`.
    pub reason_tenants: usize,
    /// Pause and resume actions of `reasons`.
    pub actions: usize,
    /// Characters of each reason tried first.
    pub reason_chars: usize,
    /// Tenants of `watchers`.
    pub watch_tenants: usize,
    /// Services of `watchers`.
    pub watch_services: usize,
    /// Watch streams of `watchers`.
    pub watchers: usize,
    /// Changes made while the watchers are open.
    pub watch_changes: usize,
    /// Tenants of `changes`.
    pub change_tenants: usize,
    /// Changes of `changes`.
    pub changes: usize,
    /// Deadline of each call.
    pub timeout: Duration,
    /// Longest wait for the resident set to become steady.
    pub settle: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            target: "http://127.0.0.1:50051".to_owned(),
            pid: 0,
            scenarios: Scenario::ALL.to_vec(),
            instances: 6_000,
            reason_tenants: 50,
            actions: 20,
            reason_chars: 1_000_000,
            watch_tenants: 1_000,
            watch_services: 5,
            watchers: 400,
            watch_changes: 20_000,
            change_tenants: 1_000,
            changes: 100_000,
            timeout: Duration::from_secs(60),
            settle: Duration::from_secs(30),
        }
    }
}

impl MemoryConfig {
    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.pid == 0 {
            return invalid("--pid", "must name the server's process");
        }
        if self.scenarios.is_empty() {
            return invalid("--scenario", "must name at least one scenario");
        }
        if !(1..=65_535).contains(&self.instances) {
            return invalid("--instances", "must be 1 to 65535 (addresses are 10.0.x.y)");
        }
        for (field, value) in [
            ("--reason-tenants", self.reason_tenants),
            ("--actions", self.actions),
            ("--reason-chars", self.reason_chars),
            ("--watch-tenants", self.watch_tenants),
            ("--watch-services", self.watch_services),
            ("--watchers", self.watchers),
            ("--watch-changes", self.watch_changes),
            ("--change-tenants", self.change_tenants),
            ("--changes", self.changes),
        ] {
            if value == 0 {
                return invalid(field, "must be at least 1");
            }
        }
        if self.timeout.is_zero() {
            return invalid("--timeout", "must be longer than 0s");
        }
        Ok(())
    }
}

/// Resident memory of the server at one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rss {
    /// `VmRSS`: resident now, KiB.
    pub rss_kib: u64,
    /// `VmHWM`: the most it has been resident so far, KiB.
    pub peak_kib: u64,
}

impl Rss {
    /// KiB in MiB.
    pub fn mib(kib: u64) -> f64 {
        kib as f64 / 1024.0
    }
}

/// Reads the resident set of process `pid`.
pub fn read_rss(pid: u32) -> Result<Rss, Error> {
    let path = format!("/proc/{pid}/status");
    let unreadable = |reason: String| Error::Process { pid, reason };
    let status = std::fs::read_to_string(&path)
        .map_err(|err| unreadable(format!("cannot read {path} (has it ended?): {err}")))?;
    parse_status(&status).ok_or_else(|| unreadable(format!("no VmRSS and VmHWM in {path}")))
}

/// Returns `VmRSS` and `VmHWM` of a `/proc/<pid>/status` text (both in kB).
fn parse_status(status: &str) -> Option<Rss> {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?;
            value.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    Some(Rss {
        rss_kib: field("VmRSS")?,
        peak_kib: field("VmHWM")?,
    })
}

/// Reads the resident set every 250 ms until the last 2 s of readings lie within 1 MiB (or 0.5%)
/// of each other, or `limit` has passed; returns the last reading and the time waited.
pub async fn settle(pid: u32, limit: Duration) -> Result<(Rss, Duration), Error> {
    let started = Instant::now();
    let mut recent = VecDeque::with_capacity(SETTLE_WINDOW + 1);
    loop {
        let rss = read_rss(pid)?;
        recent.push_back(rss.rss_kib);
        if recent.len() > SETTLE_WINDOW {
            recent.pop_front();
        }
        if (recent.len() == SETTLE_WINDOW && is_steady(recent.iter().copied()))
            || started.elapsed() >= limit
        {
            return Ok((rss, started.elapsed()));
        }
        tokio::time::sleep(SETTLE_INTERVAL).await;
    }
}

/// Returns how many sockets process `pid` holds open (its `/proc/<pid>/fd` links to
/// `socket:[...]`): listeners and connections, so that a report shows whether connections were
/// closed.
pub fn count_sockets(pid: u32) -> Result<usize, Error> {
    let path = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&path).map_err(|err| Error::Process {
        pid,
        reason: format!("cannot list {path}: {err}"),
    })?;
    Ok(entries
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count())
}

/// Whether readings (KiB) lie within 1 MiB, or 0.5% of the largest, of each other.
fn is_steady(readings: impl Iterator<Item = u64>) -> bool {
    let (low, high) = readings.fold((u64::MAX, 0), |(low, high), kib| {
        (low.min(kib), high.max(kib))
    });
    high.saturating_sub(low) <= (high / 200).max(1024)
}

/// Failed measured calls, by gRPC code, with the first message of each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Errors {
    /// Failed calls.
    pub total: u64,
    /// Failed calls by code name (`INVALID_ARGUMENT` ...).
    pub codes: BTreeMap<String, u64>,
    /// The first message of each code, cut to 200 characters.
    pub samples: BTreeMap<String, String>,
}

impl Errors {
    fn record(&mut self, status: &tonic::Status) {
        let code = code_name(status.code());
        self.total += 1;
        *self.codes.entry(code.clone()).or_default() += 1;
        self.samples
            .entry(code)
            .or_insert_with(|| shorten(status.message()));
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.total == 0 {
            return f.write_str("none");
        }
        let mut first = true;
        for (code, count) in &self.codes {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{count} {code}")?;
            if let Some(sample) = self.samples.get(code) {
                write!(f, " (\"{sample}\")")?;
            }
        }
        Ok(())
    }
}

/// Returns the name of a gRPC code as the protocol spells it.
fn code_name(code: Code) -> String {
    crate::tally::code_name(crate::tally::code_index(code)).to_owned()
}

/// Returns `message`, cut to 200 characters.
fn shorten(message: &str) -> String {
    match message.char_indices().nth(MESSAGE_CHARS) {
        Some((at, _)) => format!("{}...", &message[..at]),
        None => message.to_owned(),
    }
}

/// Time per successful call over a band of calls, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Band {
    /// Successful calls of the band.
    pub ok: usize,
    /// Mean.
    pub mean_us: f64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
}

impl Band {
    /// Returns the figures of `micros`, the times of a band's successful calls.
    fn of(mut micros: Vec<u64>) -> Band {
        if micros.is_empty() {
            return Band::default();
        }
        micros.sort_unstable();
        let n = micros.len();
        // The p99 is the smallest time at least 99% of the calls did not exceed.
        let p99 = micros[(n * 99).div_ceil(100) - 1];
        Band {
            ok: n,
            mean_us: micros.iter().sum::<u64>() as f64 / n as f64,
            p99_us: p99,
            max_us: micros[n - 1],
        }
    }
}

/// Resident memory after a number of calls, and the calls since the previous point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Step {
    /// Calls made so far.
    pub done: usize,
    /// Memory then.
    pub rss: Rss,
    /// The calls since the previous point.
    pub band: Band,
}

/// Figures of a scenario made of many similar calls (`instances`, `changes`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepsReport {
    /// What the calls were.
    pub what: String,
    /// Calls made.
    pub calls: usize,
    /// Memory after the setup, before the first call.
    pub start: Rss,
    /// Memory at each point, with the calls before it.
    pub steps: Vec<Step>,
    /// Seconds from the first call to the last answer.
    pub elapsed_secs: f64,
    /// Calls that failed.
    pub errors: Errors,
}

/// A reason the server refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// Its length in characters.
    pub chars: usize,
    /// The code answered.
    pub code: String,
    /// The message, cut to 200 characters.
    pub message: String,
}

/// Figures of `reasons`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReasonsReport {
    /// The service.
    pub service: String,
    /// The rollout paused and resumed.
    pub rollout: String,
    /// Tenants of the service.
    pub tenants: usize,
    /// Actions made (pause, resume, pause ...).
    pub actions: usize,
    /// Characters of each reason the actions carried.
    pub reason_chars: usize,
    /// The longer reason refused first, if it was.
    pub refused: Option<Refusal>,
    /// Memory with the rollout started, before the actions.
    pub before: Rss,
    /// Memory after the actions.
    pub after: Rss,
    /// Memory after reading the two replies below.
    pub after_replies: Rss,
    /// Bytes of the encoded `GetRollout` reply.
    pub get_rollout_bytes: usize,
    /// Decisions the rollout holds.
    pub decisions: usize,
    /// Bytes of the encoded `ListEvents` reply (the service's events, limit 100).
    pub list_events_bytes: usize,
    /// Events in it.
    pub events: usize,
    /// Seconds the actions took.
    pub elapsed_secs: f64,
    /// Actions that failed.
    pub errors: Errors,
}

/// Figures of `watchers`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchersReport {
    /// Tenants.
    pub tenants: usize,
    /// Services, each followed by every watcher.
    pub services: usize,
    /// Watch streams asked for.
    pub watchers: usize,
    /// Watch streams that answered their first message.
    pub watchers_open: usize,
    /// Bytes of the first message of the first watcher.
    pub first_message_bytes: usize,
    /// Changes made with the watchers open.
    pub changes: usize,
    /// Seconds the changes took.
    pub changes_secs: f64,
    /// Memory after the setup.
    pub before: Rss,
    /// Memory with the watchers open.
    pub open: Rss,
    /// Memory after the changes.
    pub after_changes: Rss,
    /// Memory once the watchers were dropped.
    pub dropped: Rss,
    /// Seconds each of the last three points waited to be steady.
    pub settle_secs: [f64; 3],
    /// Sockets the server held at each of the four points (listeners and connections).
    pub server_sockets: [usize; 4],
    /// Watches that failed.
    pub watch_errors: Errors,
    /// Changes that failed.
    pub change_errors: Errors,
}

/// Figures of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "scenario", rename_all = "kebab-case")]
pub enum ScenarioReport {
    /// [`Scenario::Instances`].
    Instances(StepsReport),
    /// [`Scenario::Reasons`].
    Reasons(ReasonsReport),
    /// [`Scenario::Watchers`].
    Watchers(WatchersReport),
    /// [`Scenario::Changes`].
    Changes(StepsReport),
}

/// Figures of every scenario run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryReport {
    /// The server.
    pub target: String,
    /// Its process.
    pub pid: u32,
    /// The scenarios, in the order run.
    pub scenarios: Vec<ScenarioReport>,
}

impl MemoryReport {
    /// Returns the report as one line of JSON.
    pub fn to_json(&self) -> String {
        match serde_json::to_string(self) {
            Ok(json) => json,
            Err(err) => unreachable!("a memory report always serializes: {err}"),
        }
    }
}

/// Runs the configured scenarios against the server, one after another.
pub async fn memory(config: &MemoryConfig) -> Result<MemoryReport, Error> {
    config.validate()?;
    read_rss(config.pid)?;
    let channel = connect(&config.target, 1, config.timeout).await?.remove(0);
    let mut admin = AdminClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut scenarios = Vec::with_capacity(config.scenarios.len());
    for scenario in &config.scenarios {
        progress(*scenario, format_args!("starting"));
        scenarios.push(match scenario {
            Scenario::Instances => ScenarioReport::Instances(instances(config, &mut admin).await?),
            Scenario::Reasons => ScenarioReport::Reasons(reasons(config, &mut admin).await?),
            Scenario::Watchers => ScenarioReport::Watchers(watchers(config, &mut admin).await?),
            Scenario::Changes => ScenarioReport::Changes(changes(config, &mut admin).await?),
        });
    }
    Ok(MemoryReport {
        target: config.target.clone(),
        pid: config.pid,
        scenarios,
    })
}

/// Prints a line of progress on stderr, so that a long or failing run shows where it is.
fn progress(scenario: Scenario, what: fmt::Arguments<'_>) {
    eprintln!("greyrouter-load: memory: {scenario}: {what}");
}

fn call_failed(what: String) -> impl FnOnce(tonic::Status) -> Error {
    move |status| Error::Call {
        what,
        status: Box::new(status),
    }
}

/// Returns the calls after which resident memory is read: `count` split at 1/6, 1/3, 2/3 and
/// the end (6,000: 1,000, 2,000, 4,000, 6,000), without repeats.
fn instance_points(count: usize) -> Vec<usize> {
    let mut points: Vec<usize> = [count / 6, count / 3, count * 2 / 3, count]
        .into_iter()
        .filter(|&n| n > 0)
        .collect();
    points.dedup();
    points
}

/// Returns `count` split in five equal parts (100,000: every 20,000), without repeats.
fn fifths(count: usize) -> Vec<usize> {
    let mut points: Vec<usize> = (1..=5).map(|k| count * k / 5).filter(|&n| n > 0).collect();
    points.dedup();
    points
}

/// Makes calls `0..count` one at a time, reading resident memory after each call number in
/// `points` (ascending, the last = `count`); a failed call is counted and the next one made.
async fn measure_steps(
    scenario: Scenario,
    pid: u32,
    count: usize,
    points: &[usize],
    mut call: impl AsyncFnMut(usize) -> Result<(), tonic::Status>,
) -> Result<(Vec<Step>, Errors, Duration), Error> {
    let mut steps = Vec::with_capacity(points.len());
    let mut errors = Errors::default();
    let mut band = Vec::new();
    let mut points = points.iter().copied().peekable();
    let started = Instant::now();
    for i in 0..count {
        let sent = Instant::now();
        match call(i).await {
            Ok(()) => band.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX)),
            Err(status) => errors.record(&status),
        }
        if points.next_if_eq(&(i + 1)).is_some() {
            let rss = read_rss(pid)?;
            let band = Band::of(std::mem::take(&mut band));
            progress(
                scenario,
                format_args!(
                    "{} of {count} calls, RSS {:.1} MiB (peak {:.1}), mean {:.0} µs, {} failed so far",
                    i + 1,
                    Rss::mib(rss.rss_kib),
                    Rss::mib(rss.peak_kib),
                    band.mean_us,
                    errors.total
                ),
            );
            steps.push(Step {
                done: i + 1,
                rss,
                band,
            });
        }
    }
    Ok((steps, errors, started.elapsed()))
}

/// Returns the id of instance number `i` (from 1) of the instances scenario: `mem-svc-00001`.
fn instance_id(i: usize) -> String {
    format!("{INSTANCES_SERVICE}-{i:05}")
}

/// Returns the address of instance number `i` (1 to 65,535): `10.0.x.y:8080`.
fn instance_address(i: usize) -> String {
    format!("10.0.{}.{}:8080", i / 256, i % 256)
}

async fn instances(
    config: &MemoryConfig,
    admin: &mut AdminClient<Channel>,
) -> Result<StepsReport, Error> {
    admin
        .upsert_service(pb::UpsertServiceRequest {
            service: Some(pb::Service {
                name: INSTANCES_SERVICE.to_owned(),
                default_version: "v1".to_owned(),
                strategy: pb::Strategy::Unspecified.into(),
                versions: vec!["v1".to_owned()],
            }),
            // v1 has no instance yet.
            force: true,
        })
        .await
        .map_err(call_failed(format!("upsert service '{INSTANCES_SERVICE}'")))?;
    let start = read_rss(config.pid)?;
    let points = instance_points(config.instances);
    let (steps, errors, elapsed) = measure_steps(
        Scenario::Instances,
        config.pid,
        config.instances,
        &points,
        async |i| {
            let n = i + 1;
            let instance = pb::Instance {
                id: instance_id(n),
                address: instance_address(n),
                service: INSTANCES_SERVICE.to_owned(),
                version: "v1".to_owned(),
                weight: Some(1),
                healthy: Some(true),
                ..Default::default()
            };
            admin
                .register_instance(pb::RegisterInstanceRequest {
                    instance: Some(instance),
                    ttl_seconds: 0,
                })
                .await
                .map(drop)
        },
    )
    .await?;
    Ok(StepsReport {
        what: format!("instances registered into {INSTANCES_SERVICE} v1, one at a time"),
        calls: config.instances,
        start,
        steps,
        elapsed_secs: elapsed.as_secs_f64(),
        errors,
    })
}

/// Seeds `tenants` tenants and `services` services with versions `v1` (default) and `v2`, one
/// instance of each, named with `prefix`: tenants `{prefix}-tenant-N`, services `{prefix}-N`.
async fn seed_keyspace(
    config: &MemoryConfig,
    prefix: &str,
    tenants: usize,
    services: usize,
) -> Result<KeyspaceSpec, Error> {
    let keyspace = KeyspaceSpec {
        tenants,
        services,
        tenant_prefix: format!("{prefix}-tenant-"),
        service_prefix: format!("{prefix}-"),
    };
    seed(&SeedConfig {
        target: config.target.clone(),
        keyspace: keyspace.clone(),
        versions: vec!["v1".to_owned(), "v2".to_owned()],
        instances_per_version: 1,
        concurrency: 16,
        connections: 1,
        timeout: config.timeout,
    })
    .await?;
    Ok(keyspace)
}

/// Whether a refusal of a long reason means "too long" (rather than a failure to report).
fn refuses_length(code: Code) -> bool {
    matches!(code, Code::InvalidArgument | Code::OutOfRange)
}

async fn reasons(
    config: &MemoryConfig,
    admin: &mut AdminClient<Channel>,
) -> Result<ReasonsReport, Error> {
    let keyspace = seed_keyspace(config, "mem-rollout", config.reason_tenants, 1).await?;
    let service = keyspace.service_name(0);
    let rollout = "mem-rollout".to_owned();
    admin
        .start_rollout(pb::StartRolloutRequest {
            service: service.clone(),
            id: rollout.clone(),
            to_version: "v2".to_owned(),
            steps: vec![10.0, 50.0, 100.0],
            // A day per step, and no traffic to judge: the rollout stays at its first step.
            interval_seconds: 86_400,
            analysis: None,
            cohort: None,
            force: false,
        })
        .await
        .map_err(call_failed(format!(
            "start rollout '{rollout}' of '{service}'"
        )))?;
    let before = read_rss(config.pid)?;

    let mut reason_chars = config.reason_chars;
    let mut reason = "x".repeat(reason_chars);
    let mut refused = None;
    let mut errors = Errors::default();
    let started = Instant::now();
    let mut k = 0;
    while k < config.actions {
        let request = pb::RolloutActionRequest {
            service: service.clone(),
            id: rollout.clone(),
            reason: reason.clone(),
            force: false,
        };
        let answer = if k.is_multiple_of(2) {
            admin.pause_rollout(request).await
        } else {
            admin.resume_rollout(request).await
        };
        match answer {
            Ok(_) => {}
            Err(status)
                if refused.is_none()
                    && reason_chars > FALLBACK_REASON_CHARS
                    && refuses_length(status.code()) =>
            {
                progress(
                    Scenario::Reasons,
                    format_args!(
                        "a reason of {reason_chars} characters refused ({}), trying {FALLBACK_REASON_CHARS}",
                        code_name(status.code())
                    ),
                );
                refused = Some(Refusal {
                    chars: reason_chars,
                    code: code_name(status.code()),
                    message: shorten(status.message()),
                });
                reason_chars = FALLBACK_REASON_CHARS;
                reason = "x".repeat(reason_chars);
                continue;
            }
            Err(status) => errors.record(&status),
        }
        k += 1;
    }
    let elapsed = started.elapsed();
    let after = read_rss(config.pid)?;
    progress(
        Scenario::Reasons,
        format_args!(
            "{} actions with {reason_chars}-character reasons, RSS {:.1} MiB (peak {:.1})",
            config.actions,
            Rss::mib(after.rss_kib),
            Rss::mib(after.peak_kib)
        ),
    );

    let got = admin
        .get_rollout(pb::GetRolloutRequest {
            service: service.clone(),
            id: rollout.clone(),
        })
        .await
        .map_err(call_failed(format!(
            "get rollout '{rollout}' of '{service}'"
        )))?
        .into_inner();
    let events = admin
        .list_events(pb::ListEventsRequest {
            since_revision: 0,
            tenant_id: String::new(),
            service: service.clone(),
            limit: 100,
        })
        .await
        .map_err(call_failed(format!("list events of '{service}'")))?
        .into_inner();
    let after_replies = read_rss(config.pid)?;
    Ok(ReasonsReport {
        service,
        rollout,
        tenants: config.reason_tenants,
        actions: config.actions,
        reason_chars,
        refused,
        before,
        after,
        after_replies,
        get_rollout_bytes: got.encoded_len(),
        decisions: got.rollout.as_ref().map_or(0, |r| r.decisions.len()),
        list_events_bytes: events.encoded_len(),
        events: events.events.len(),
        elapsed_secs: elapsed.as_secs_f64(),
        errors,
    })
}

/// A watch stream the client does not read, and the connection it is on.
struct Watcher {
    _router: RouterClient<Channel>,
    _stream: tonic::Streaming<pb::AssignmentUpdate>,
}

/// Opens a watch of `services` (every tenant) on a connection of its own with the smallest
/// HTTP/2 windows, and reads its first message; returns the watcher and that message's size.
async fn open_watcher(
    config: &MemoryConfig,
    services: &[String],
) -> Result<Result<(Watcher, usize), tonic::Status>, Error> {
    let channel = Endpoint::from_shared(config.target.clone())
        .map_err(|source| Error::InvalidTarget {
            target: config.target.clone(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .initial_stream_window_size(WATCHER_WINDOW)
        .initial_connection_window_size(WATCHER_WINDOW)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|source| Error::Connect {
            target: config.target.clone(),
            source,
        })?;
    let mut router = RouterClient::new(channel).max_decoding_message_size(usize::MAX);
    let request = pb::WatchAssignmentsRequest {
        tenant_ids: Vec::new(),
        services: services.to_vec(),
        from_revision: 0,
        history: String::new(),
        instances_by_version: false,
    };
    let first = tokio::time::timeout(config.timeout, async {
        let mut stream = router.watch_assignments(request).await?.into_inner();
        match stream.message().await? {
            Some(update) => Ok((stream, update.encoded_len())),
            None => Err(tonic::Status::unavailable(
                "the watch ended before its first message",
            )),
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(tonic::Status::deadline_exceeded(
            "no first watch message within --timeout",
        ))
    });
    Ok(first.map(|(stream, bytes)| {
        (
            Watcher {
                _router: router,
                _stream: stream,
            },
            bytes,
        )
    }))
}

async fn watchers(
    config: &MemoryConfig,
    admin: &mut AdminClient<Channel>,
) -> Result<WatchersReport, Error> {
    let keyspace = seed_keyspace(
        config,
        "mem-watch",
        config.watch_tenants,
        config.watch_services,
    )
    .await?;
    let services: Vec<String> = (0..keyspace.services)
        .map(|j| keyspace.service_name(j))
        .collect();
    let before = read_rss(config.pid)?;
    let sockets_before = count_sockets(config.pid)?;

    let mut open = Vec::with_capacity(config.watchers);
    let mut watch_errors = Errors::default();
    let mut first_message_bytes = 0;
    for _ in 0..config.watchers {
        match open_watcher(config, &services).await? {
            Ok((watcher, bytes)) => {
                if open.is_empty() {
                    first_message_bytes = bytes;
                }
                open.push(watcher);
            }
            Err(status) => watch_errors.record(&status),
        }
    }
    let (opened, open_settle) = settle(config.pid, config.settle).await?;
    let sockets_open = count_sockets(config.pid)?;
    progress(
        Scenario::Watchers,
        format_args!(
            "{} of {} watchers open, RSS {:.1} MiB (peak {:.1}), {} refused",
            open.len(),
            config.watchers,
            Rss::mib(opened.rss_kib),
            Rss::mib(opened.peak_kib),
            watch_errors.total
        ),
    );

    // Change k alters the pair (k % tenants, k / tenants % services): pinned to v2 in even
    // rounds over all pairs, cleared (back to the default v1) in odd ones. Every watcher follows
    // every pair, so every change is an update for each of them.
    let pairs = keyspace.tenants * keyspace.services;
    let mut change_errors = Errors::default();
    let started = Instant::now();
    for k in 0..config.watch_changes {
        let pair = k % pairs;
        let tenant_id = keyspace.tenant_id(pair % keyspace.tenants);
        let service = services[pair / keyspace.tenants].clone();
        let answer = if (k / pairs).is_multiple_of(2) {
            admin
                .set_tenant_version(pb::SetTenantVersionRequest {
                    tenant_id,
                    service,
                    version: "v2".to_owned(),
                    expected_version: None,
                    force: false,
                    migrate: false,
                })
                .await
                .map(drop)
        } else {
            admin
                .clear_tenant_version(pb::ClearTenantVersionRequest { tenant_id, service })
                .await
                .map(drop)
        };
        if let Err(status) = answer {
            change_errors.record(&status);
        }
    }
    let changes_secs = started.elapsed().as_secs_f64();
    let (after_changes, changes_settle) = settle(config.pid, config.settle).await?;
    let sockets_after_changes = count_sockets(config.pid)?;
    progress(
        Scenario::Watchers,
        format_args!(
            "{} changes in {changes_secs:.1} s, RSS {:.1} MiB (peak {:.1}), {} failed",
            config.watch_changes,
            Rss::mib(after_changes.rss_kib),
            Rss::mib(after_changes.peak_kib),
            change_errors.total
        ),
    );

    let watchers_open = open.len();
    drop(open);
    let (dropped, dropped_settle) = settle(config.pid, config.settle).await?;
    let sockets_dropped = count_sockets(config.pid)?;
    Ok(WatchersReport {
        tenants: keyspace.tenants,
        services: keyspace.services,
        watchers: config.watchers,
        watchers_open,
        first_message_bytes,
        changes: config.watch_changes,
        changes_secs,
        before,
        open: opened,
        after_changes,
        dropped,
        settle_secs: [
            open_settle.as_secs_f64(),
            changes_settle.as_secs_f64(),
            dropped_settle.as_secs_f64(),
        ],
        server_sockets: [
            sockets_before,
            sockets_open,
            sockets_after_changes,
            sockets_dropped,
        ],
        watch_errors,
        change_errors,
    })
}

async fn changes(
    config: &MemoryConfig,
    admin: &mut AdminClient<Channel>,
) -> Result<StepsReport, Error> {
    let keyspace = seed_keyspace(config, "mem-change", config.change_tenants, 1).await?;
    let service = keyspace.service_name(0);
    let tenants: Vec<String> = (0..keyspace.tenants)
        .map(|i| keyspace.tenant_id(i))
        .collect();
    let start = read_rss(config.pid)?;
    let points = fifths(config.changes);
    // Change k pins tenant k % tenants to v2 in even rounds over the tenants, to v1 in odd ones:
    // every change moves the tenant.
    let (steps, errors, elapsed) = measure_steps(
        Scenario::Changes,
        config.pid,
        config.changes,
        &points,
        async |k| {
            let version = if (k / tenants.len()).is_multiple_of(2) {
                "v2"
            } else {
                "v1"
            };
            admin
                .set_tenant_version(pb::SetTenantVersionRequest {
                    tenant_id: tenants[k % tenants.len()].clone(),
                    service: service.clone(),
                    version: version.to_owned(),
                    expected_version: None,
                    force: false,
                    migrate: false,
                })
                .await
                .map(drop)
        },
    )
    .await?;
    Ok(StepsReport {
        what: format!(
            "pin flips over {} tenants of {service}, one at a time, no watcher",
            keyspace.tenants
        ),
        calls: config.changes,
        start,
        steps,
        elapsed_secs: elapsed.as_secs_f64(),
        errors,
    })
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "memory of pid {} ({})", self.pid, self.target)?;
        for scenario in &self.scenarios {
            writeln!(f)?;
            match scenario {
                ScenarioReport::Instances(report) => write_steps(f, "instances", report)?,
                ScenarioReport::Reasons(report) => write!(f, "{report}")?,
                ScenarioReport::Watchers(report) => write!(f, "{report}")?,
                ScenarioReport::Changes(report) => write_steps(f, "changes", report)?,
            }
        }
        Ok(())
    }
}

fn write_rss_row(f: &mut fmt::Formatter<'_>, point: &str, rss: &Rss) -> fmt::Result {
    write!(
        f,
        "  {point:<22} {:>10.1} {:>10.1}",
        Rss::mib(rss.rss_kib),
        Rss::mib(rss.peak_kib)
    )
}

fn write_steps(f: &mut fmt::Formatter<'_>, name: &str, report: &StepsReport) -> fmt::Result {
    writeln!(
        f,
        "{name}: {} {} in {:.1} s",
        report.calls, report.what, report.elapsed_secs
    )?;
    writeln!(
        f,
        "  {:<22} {:>10} {:>10}   {:<13} {:>9} {:>9} {:>9}",
        "calls", "RSS MiB", "peak MiB", "band", "mean ms", "p99 ms", "max ms"
    )?;
    write_rss_row(f, "0", &report.start)?;
    writeln!(f)?;
    let mut from = 0;
    for step in &report.steps {
        write_rss_row(f, &step.done.to_string(), &step.rss)?;
        let band = format!("{from}-{}", step.done);
        writeln!(
            f,
            "   {band:<13} {:>9.3} {:>9.3} {:>9.3}",
            step.band.mean_us / 1e3,
            step.band.p99_us as f64 / 1e3,
            step.band.max_us as f64 / 1e3
        )?;
        from = step.done;
    }
    writeln!(f, "  failed: {}", report.errors)
}

impl fmt::Display for ReasonsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "reasons: rollout {} of {} ({} tenants), {} pause/resume actions in {:.1} s",
            self.rollout, self.service, self.tenants, self.actions, self.elapsed_secs
        )?;
        write!(
            f,
            "  reason accepted        {} characters",
            self.reason_chars
        )?;
        match &self.refused {
            Some(refusal) => writeln!(
                f,
                " ({} refused: {} \"{}\")",
                refusal.chars, refusal.code, refusal.message
            )?,
            None => writeln!(f)?,
        }
        writeln!(f, "  {:<22} {:>10} {:>10}", "point", "RSS MiB", "peak MiB")?;
        write_rss_row(f, "before actions", &self.before)?;
        writeln!(f)?;
        write_rss_row(f, "after actions", &self.after)?;
        writeln!(f)?;
        write_rss_row(f, "after the replies", &self.after_replies)?;
        writeln!(f)?;
        writeln!(
            f,
            "  GetRollout reply       {} bytes ({} decisions)",
            self.get_rollout_bytes, self.decisions
        )?;
        writeln!(
            f,
            "  ListEvents reply       {} bytes ({} events, limit 100)",
            self.list_events_bytes, self.events
        )?;
        writeln!(f, "  failed: {}", self.errors)
    }
}

impl fmt::Display for WatchersReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "watchers: {} watchers not reading ({} open) of {} tenants x {} services, {} changes in {:.1} s",
            self.watchers,
            self.watchers_open,
            self.tenants,
            self.services,
            self.changes,
            self.changes_secs
        )?;
        writeln!(
            f,
            "  {:<22} {:>10} {:>10} {:>8}   settled",
            "point", "RSS MiB", "peak MiB", "sockets"
        )?;
        write_rss_row(f, "before watchers", &self.before)?;
        writeln!(f, " {:>8}", self.server_sockets[0])?;
        for (point, rss, sockets, settle) in [
            (
                "watchers open",
                &self.open,
                self.server_sockets[1],
                self.settle_secs[0],
            ),
            (
                "after changes",
                &self.after_changes,
                self.server_sockets[2],
                self.settle_secs[1],
            ),
            (
                "watchers dropped",
                &self.dropped,
                self.server_sockets[3],
                self.settle_secs[2],
            ),
        ] {
            write_rss_row(f, point, rss)?;
            writeln!(f, " {sockets:>8}   {settle:.1} s")?;
        }
        writeln!(
            f,
            "  first watch message    {} bytes",
            self.first_message_bytes
        )?;
        writeln!(f, "  failed watches: {}", self.watch_errors)?;
        writeln!(f, "  failed changes: {}", self.change_errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_peak_from_proc_status() {
        let status =
            "Name:\tgreyrouter\nVmPeak:\t  999 kB\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\n";
        assert_eq!(
            parse_status(status),
            Some(Rss {
                rss_kib: 1024,
                peak_kib: 2048
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
        let own = read_rss(std::process::id()).expect("own status");
        assert!(own.rss_kib > 0 && own.peak_kib >= own.rss_kib, "{own:?}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        // Other tests of this binary may open sockets meanwhile, but never close this one.
        assert!(count_sockets(std::process::id()).expect("own sockets") >= 1);
        drop(listener);
    }

    #[test]
    fn points_match_the_issue() {
        assert_eq!(instance_points(6_000), [1_000, 2_000, 4_000, 6_000]);
        assert_eq!(instance_points(3), [1, 2, 3]);
        assert_eq!(fifths(100_000), [20_000, 40_000, 60_000, 80_000, 100_000]);
        assert_eq!(fifths(2), [1, 2]);
    }

    #[test]
    fn instances_are_named_and_addressed_as_the_issue_says() {
        assert_eq!(instance_id(1), "mem-svc-00001");
        assert_eq!(instance_id(6_000), "mem-svc-06000");
        assert_eq!(instance_address(1), "10.0.0.1:8080");
        assert_eq!(instance_address(6_000), "10.0.23.112:8080");
        assert_eq!(instance_address(65_535), "10.0.255.255:8080");
    }

    #[test]
    fn band_p99_is_the_time_99_percent_did_not_exceed() {
        let band = Band::of((1..=1_000).rev().collect());
        assert_eq!((band.ok, band.p99_us, band.max_us), (1_000, 990, 1_000));
        assert!((band.mean_us - 500.5).abs() < 1e-9);
        assert_eq!(Band::of(vec![7]).p99_us, 7);
        assert_eq!(Band::of(Vec::new()), Band::default());
    }

    #[test]
    fn steady_means_within_a_mebibyte_or_half_a_percent() {
        assert!(is_steady([100_000, 100_500, 101_024].into_iter()));
        assert!(!is_steady([100_000, 101_025].into_iter()));
        assert!(is_steady([1_000_000, 1_004_000].into_iter()));
        assert!(!is_steady([1_000_000, 1_006_000].into_iter()));
    }

    #[test]
    fn errors_count_by_code_and_keep_the_first_message() {
        let mut errors = Errors::default();
        errors.record(&tonic::Status::invalid_argument("first"));
        errors.record(&tonic::Status::invalid_argument("second"));
        errors.record(&tonic::Status::resource_exhausted("y".repeat(300)));
        assert_eq!(errors.total, 3);
        assert_eq!(errors.codes["INVALID_ARGUMENT"], 2);
        assert_eq!(errors.samples["INVALID_ARGUMENT"], "first");
        assert_eq!(errors.samples["RESOURCE_EXHAUSTED"].chars().count(), 203);
        assert_eq!(Errors::default().to_string(), "none");
    }

    #[test]
    fn only_a_refused_length_falls_back() {
        assert!(refuses_length(Code::InvalidArgument));
        assert!(refuses_length(Code::OutOfRange));
        assert!(!refuses_length(Code::Unavailable));
    }

    #[test]
    fn defaults_are_the_issue_sizes_and_need_a_pid() {
        let config = MemoryConfig::default();
        assert_eq!(
            (config.instances, config.watchers, config.changes),
            (6_000, 400, 100_000)
        );
        assert!(matches!(
            config.validate(),
            Err(Error::InvalidConfig { field: "--pid", .. })
        ));
        MemoryConfig { pid: 1, ..config }
            .validate()
            .expect("valid with a pid");
    }
}
