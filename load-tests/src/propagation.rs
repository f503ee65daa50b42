//! How long a change made through one router takes to reach a watcher of another router of the
//! same fleet (both on one store): `SetTenantVersion` on the *writer*, `WatchAssignments` on the
//! *watcher*.
//!
//! 1. Seeds one tenant and one service with two versions (and one instance of each) through the
//!    writer's Admin API, with [`seed::seed`](crate::seed::seed).
//! 2. Waits until the watcher routes that tenant at the seed's revision or later, then opens
//!    `Router/WatchAssignments` on the watcher for that one (tenant, service) and reads the
//!    snapshot, which gives the current version.
//! 3. For each change, pins the tenant to the *other* version (so every change alters the
//!    watched assignment and produces exactly one update), reading the clock just before the
//!    Admin call, when its reply arrives, and when the watcher's update of the returned revision
//!    arrives. Changes are made one after another: the next starts once the previous arrived (or
//!    timed out), so no change queues behind another.
//!
//! The watcher may deliver an update before the writer's reply comes back (the writer answers
//! only once its own replica has applied the change): a separate task reads the watch stream and
//! stamps every update as it arrives, and [`Arrivals`] matches stamps to revisions in either
//! order.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::admin_client::AdminClient;
use greyrouter_proto::v1::router_client::RouterClient;
use serde::Serialize;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::connection::connect;
use crate::error::Error;
use crate::keyspace::KeyspaceSpec;
use crate::seed::{SeedConfig, seed};
use crate::summary::Latency;
use crate::tally::{new_histogram, record};

/// Prefix of the measured tenant's id: the tenant is `propagation-tenant-0`.
pub const TENANT_PREFIX: &str = "propagation-tenant-";
/// Prefix of the measured service's name: the service is `propagation-service-0`.
pub const SERVICE_PREFIX: &str = "propagation-service-";
/// The two versions the tenant is flipped between; the first is the service's default.
pub const VERSIONS: [&str; 2] = ["v1", "v2"];

/// How often the watcher is asked whether it has caught up with the seed.
const CATCH_UP_POLL: Duration = Duration::from_millis(10);

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropagationConfig {
    /// Router the changes are made on, e.g. `http://127.0.0.1:50061`.
    pub writer: String,
    /// Router the changes are watched on; the writer itself is allowed.
    pub watcher: String,
    /// Number of changes.
    pub changes: usize,
    /// Deadline of each call, and longest wait for one change to arrive.
    pub timeout: Duration,
}

impl Default for PropagationConfig {
    fn default() -> Self {
        PropagationConfig {
            writer: "http://127.0.0.1:50051".to_owned(),
            watcher: "http://127.0.0.1:50051".to_owned(),
            changes: 1_000,
            timeout: Duration::from_secs(10),
        }
    }
}

impl PropagationConfig {
    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.changes == 0 {
            return invalid("--changes", "must be at least 1");
        }
        if self.timeout.is_zero() {
            return invalid("--timeout", "must be longer than 0s");
        }
        Ok(())
    }

    /// Returns the one tenant and one service measured.
    pub fn keyspace() -> KeyspaceSpec {
        KeyspaceSpec {
            tenants: 1,
            services: 1,
            tenant_prefix: TENANT_PREFIX.to_owned(),
            service_prefix: SERVICE_PREFIX.to_owned(),
        }
    }

    /// Returns the seed that creates them on the writer: both versions declared, one instance
    /// of each.
    pub fn seed_config(&self) -> SeedConfig {
        SeedConfig {
            target: self.writer.clone(),
            keyspace: Self::keyspace(),
            versions: VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
            instances_per_version: 1,
            concurrency: 1,
            connections: 1,
            timeout: self.timeout,
        }
    }
}

/// Returns the version a change pins the tenant to: whichever of `versions` it is not on now.
pub fn other_version<'a>(versions: &[&'a str; 2], current: &str) -> &'a str {
    if current == versions[0] {
        versions[1]
    } else {
        versions[0]
    }
}

/// Returns the version `upserts` assign to (`tenant_id`, `service`), if they name the pair.
pub fn assigned_version<'a>(
    upserts: &'a [pb::Assignment],
    tenant_id: &str,
    service: &str,
) -> Option<&'a str> {
    upserts
        .iter()
        .find(|a| a.tenant_id == tenant_id && a.service == service)
        .map(|a| a.version.as_str())
}

/// When the watcher received each revision, matched to changes in whatever order stamps and
/// Admin replies come.
///
/// A change of revision `r` has arrived once an update of revision `r` or later has: a later
/// revision (a fresh snapshot after the watcher fell behind) contains it.
#[derive(Debug, Clone, Default)]
pub struct Arrivals {
    by_revision: BTreeMap<u64, Instant>,
}

impl Arrivals {
    /// Records that the update of `revision` arrived at `at` (the first stamp of a revision
    /// counts).
    pub fn record(&mut self, revision: u64, at: Instant) {
        self.by_revision.entry(revision).or_insert(at);
    }

    /// Returns when the change of `revision` arrived, if it has, and forgets every revision up
    /// to the one matched: changes are measured in order, so they will not be asked for again.
    pub fn take(&mut self, revision: u64) -> Option<Instant> {
        let (&matched, &at) = self.by_revision.range(revision..).next()?;
        self.by_revision = self.by_revision.split_off(&(matched + 1));
        Some(at)
    }

    /// Returns the number of stamps kept.
    pub fn len(&self) -> usize {
        self.by_revision.len()
    }

    /// Returns whether no stamp is kept.
    pub fn is_empty(&self) -> bool {
        self.by_revision.is_empty()
    }
}

/// What the reading task saw on the watch stream.
#[derive(Debug)]
enum Event {
    /// A complete update (the last message of its revision) arrived at `at`.
    Update { revision: u64, at: Instant },
    /// The stream ended: with the server's status, or `None` when it just closed.
    Ended(Option<tonic::Status>),
}

/// What the changes measured, accumulated as they are made.
#[derive(Debug, Clone)]
pub struct Measurements {
    /// From just before each Admin call to the update's arrival on the watcher, in µs.
    pub propagation_us: hdrhistogram::Histogram<u64>,
    /// From just before each Admin call to its reply, in µs.
    pub admin_us: hdrhistogram::Histogram<u64>,
    /// Changes whose update did not arrive within the timeout.
    pub missing: u64,
    /// Changes whose update arrived before the writer's reply.
    pub arrived_before_reply: u64,
    /// Revision of the first change.
    pub first_revision: u64,
    /// Revision of the last change.
    pub last_revision: u64,
}

impl Default for Measurements {
    fn default() -> Self {
        Measurements {
            propagation_us: new_histogram(),
            admin_us: new_histogram(),
            missing: 0,
            arrived_before_reply: 0,
            first_revision: 0,
            last_revision: 0,
        }
    }
}

impl Measurements {
    /// Records one change of `revision`: sent at `sent`, answered at `replied`, received by the
    /// watcher at `arrived` (`None`: not within the timeout).
    pub fn record(
        &mut self,
        revision: u64,
        sent: Instant,
        replied: Instant,
        arrived: Option<Instant>,
    ) {
        if self.first_revision == 0 {
            self.first_revision = revision;
        }
        self.last_revision = revision;
        record(&mut self.admin_us, replied.saturating_duration_since(sent));
        match arrived {
            Some(at) => {
                record(&mut self.propagation_us, at.saturating_duration_since(sent));
                if at < replied {
                    self.arrived_before_reply += 1;
                }
            }
            None => self.missing += 1,
        }
    }
}

/// Everything a propagation measurement found. Serialized as-is by `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PropagationReport {
    /// Router the changes were made on.
    pub writer: String,
    /// Router the changes were watched on.
    pub watcher: String,
    /// The tenant flipped.
    pub tenant: String,
    /// The service it was flipped on.
    pub service: String,
    /// Changes made.
    pub changes: u64,
    /// Changes whose update arrived on the watcher.
    pub arrived: u64,
    /// Changes whose update did not arrive within the timeout.
    pub missing: u64,
    /// Changes whose update arrived before the writer's Admin reply.
    pub arrived_before_reply: u64,
    /// Revision of the first change.
    pub first_revision: u64,
    /// Revision of the last change.
    pub last_revision: u64,
    /// Seconds from the first change to the last arrival (or timeout).
    pub elapsed_secs: f64,
    /// From just before the Admin call to the watcher's receipt of the update, of the changes
    /// that arrived, in microseconds.
    pub propagation_us: Latency,
    /// From just before the Admin call to its reply, in microseconds.
    pub admin_us: Latency,
}

impl PropagationReport {
    /// Returns the report of `config`'s changes on `tenant`/`service`, measured as
    /// `measurements` over `elapsed`.
    pub fn new(
        config: &PropagationConfig,
        tenant: &str,
        service: &str,
        measurements: &Measurements,
        elapsed: Duration,
    ) -> PropagationReport {
        let propagation_us = Latency::from_histogram(&measurements.propagation_us);
        PropagationReport {
            writer: config.writer.clone(),
            watcher: config.watcher.clone(),
            tenant: tenant.to_owned(),
            service: service.to_owned(),
            changes: measurements.admin_us.len(),
            arrived: propagation_us.count,
            missing: measurements.missing,
            arrived_before_reply: measurements.arrived_before_reply,
            first_revision: measurements.first_revision,
            last_revision: measurements.last_revision,
            elapsed_secs: elapsed.as_secs_f64(),
            propagation_us,
            admin_us: Latency::from_histogram(&measurements.admin_us),
        }
    }

    /// Returns the report as one line of JSON.
    pub fn to_json(&self) -> String {
        match serde_json::to_string(self) {
            Ok(json) => json,
            Err(err) => unreachable!("a propagation report always serializes: {err}"),
        }
    }
}

impl fmt::Display for PropagationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "propagation from {} to a watcher on {}",
            self.writer, self.watcher
        )?;
        writeln!(
            f,
            "{} on {}: {} changes (revisions {} to {})",
            self.tenant, self.service, self.changes, self.first_revision, self.last_revision
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "changes      {} made, {} arrived, {} missing",
            self.changes, self.arrived, self.missing
        )?;
        writeln!(f, "elapsed      {:.2} s", self.elapsed_secs)?;
        writeln!(
            f,
            "latency      µs, from just before the Admin call ({} arrived before its reply)",
            self.arrived_before_reply
        )?;
        writeln!(f, "  {:<10} {:>12} {:>12}", "", "propagation", "admin call")?;
        let (p, a) = (&self.propagation_us, &self.admin_us);
        for (name, mine, theirs) in [
            ("p50", p.p50, a.p50),
            ("p90", p.p90, a.p90),
            ("p99", p.p99, a.p99),
            ("max", p.max, a.max),
        ] {
            writeln!(f, "  {name:<10} {mine:>12} {theirs:>12}")?;
        }
        writeln!(f, "  {:<10} {:>12.1} {:>12.1}", "mean", p.mean, a.mean)
    }
}

/// Seeds the writer, opens the watch on the watcher and measures `config.changes` changes.
/// A change that does not arrive within the timeout is counted as missing; an error means the
/// measurement could not take place (bad settings, no connection, a failed call, a watch that
/// ended).
pub async fn propagation(config: &PropagationConfig) -> Result<PropagationReport, Error> {
    config.validate()?;
    let seeded = seed(&config.seed_config()).await?;
    let keyspace = PropagationConfig::keyspace();
    let (tenant, service) = (keyspace.tenant_id(0), keyspace.service_name(0));

    let writer = connect(&config.writer, 1, config.timeout).await?.remove(0);
    let watcher = connect(&config.watcher, 1, config.timeout).await?.remove(0);
    let mut admin = AdminClient::new(writer);
    let mut router = RouterClient::new(watcher);
    let watch_what = format!("WatchAssignments on {}", config.watcher);
    catch_up(config, &mut router, &tenant, &service, seeded.revision).await?;

    let mut stream = router
        .watch_assignments(pb::WatchAssignmentsRequest {
            tenant_ids: vec![tenant.clone()],
            services: vec![service.clone()],
            from_revision: 0,
            history: String::new(),
            instances_by_version: false,
        })
        .await
        .map_err(|status| call_failed(&watch_what, status))?
        .into_inner();
    let mut current = read_snapshot(&mut stream, &watch_what, &tenant, &service).await?;

    let (events, mut received) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_updates(stream, events));

    let admin_what = format!("SetTenantVersion on {}", config.writer);
    let mut arrivals = Arrivals::default();
    let mut measurements = Measurements::default();
    let started = Instant::now();
    for _ in 0..config.changes {
        let version = other_version(&VERSIONS, &current);
        let request = pb::SetTenantVersionRequest {
            tenant_id: tenant.clone(),
            service: service.clone(),
            version: version.to_owned(),
            expected_version: None,
            force: false,
            migrate: false,
        };
        let sent = Instant::now();
        let reply = admin.set_tenant_version(request).await;
        let replied = Instant::now();
        let revision = reply
            .map_err(|status| call_failed(&admin_what, status))?
            .into_inner()
            .revision;
        let deadline = tokio::time::Instant::from_std(sent + config.timeout);
        let arrived = loop {
            if let Some(at) = arrivals.take(revision) {
                break Some(at);
            }
            match tokio::time::timeout_at(deadline, received.recv()).await {
                Ok(Some(Event::Update { revision, at })) => arrivals.record(revision, at),
                Ok(Some(Event::Ended(status))) => {
                    let status = status
                        .unwrap_or_else(|| tonic::Status::unavailable("the watch stream ended"));
                    return Err(call_failed(&watch_what, status));
                }
                Ok(None) => {
                    let status = tonic::Status::unavailable("the watch stream reader stopped");
                    return Err(call_failed(&watch_what, status));
                }
                Err(_) => break None,
            }
        };
        measurements.record(revision, sent, replied, arrived);
        current = version.to_owned();
    }
    let elapsed = started.elapsed();
    reader.abort();
    Ok(PropagationReport::new(
        config,
        &tenant,
        &service,
        &measurements,
        elapsed,
    ))
}

fn call_failed(what: &str, status: tonic::Status) -> Error {
    Error::Call {
        what: what.to_owned(),
        status: Box::new(status),
    }
}

/// Waits until the watcher routes `tenant`/`service` at `revision` or later, so that its
/// snapshot holds what the seed created.
async fn catch_up(
    config: &PropagationConfig,
    router: &mut RouterClient<Channel>,
    tenant: &str,
    service: &str,
    revision: u64,
) -> Result<(), Error> {
    let what = format!("Route on {}", config.watcher);
    let deadline = Instant::now() + config.timeout;
    loop {
        let answer = router
            .route(pb::RouteRequest {
                tenant_id: tenant.to_owned(),
                service: service.to_owned(),
                ..Default::default()
            })
            .await;
        match answer {
            Ok(routed) if routed.get_ref().revision >= revision => return Ok(()),
            // Not there yet: the watcher has not applied the seed.
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => return Err(call_failed(&what, status)),
        }
        if Instant::now() >= deadline {
            let status = tonic::Status::deadline_exceeded(format!(
                "the watcher did not reach revision {revision} of the seed within {:?}",
                config.timeout
            ));
            return Err(call_failed(&what, status));
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
    }
}

/// Reads the snapshot at the head of a watch stream; returns the pair's version.
async fn read_snapshot(
    stream: &mut tonic::Streaming<pb::AssignmentUpdate>,
    what: &str,
    tenant: &str,
    service: &str,
) -> Result<String, Error> {
    let mut version = None;
    loop {
        let update = stream
            .message()
            .await
            .map_err(|status| call_failed(what, status))?
            .ok_or_else(|| {
                call_failed(
                    what,
                    tonic::Status::unavailable("the stream ended before its snapshot"),
                )
            })?;
        if let Some(found) = assigned_version(&update.upserts, tenant, service) {
            version = Some(found.to_owned());
        }
        if !update.partial {
            break;
        }
    }
    version.ok_or_else(|| {
        call_failed(
            what,
            tonic::Status::not_found(format!("the snapshot does not assign {tenant}/{service}")),
        )
    })
}

/// Stamps every complete update of the stream as it arrives and sends it to the measuring loop.
async fn read_updates(
    mut stream: tonic::Streaming<pb::AssignmentUpdate>,
    events: mpsc::UnboundedSender<Event>,
) {
    loop {
        let event = match stream.message().await {
            Ok(Some(update)) => {
                let at = Instant::now();
                if update.partial {
                    continue;
                }
                Event::Update {
                    revision: update.revision,
                    at,
                }
            }
            Ok(None) => Event::Ended(None),
            Err(status) => Event::Ended(Some(status)),
        };
        let ended = matches!(event, Event::Ended(_));
        if events.send(event).is_err() || ended {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn later(base: Instant, micros: u64) -> Instant {
        base + Duration::from_micros(micros)
    }

    #[test]
    fn defaults_are_valid() {
        PropagationConfig::default().validate().expect("valid");
        PropagationConfig::default()
            .seed_config()
            .validate()
            .expect("valid seed");
    }

    #[test]
    fn names_the_bad_setting() {
        for (config, flag) in [
            (
                PropagationConfig {
                    changes: 0,
                    ..PropagationConfig::default()
                },
                "--changes",
            ),
            (
                PropagationConfig {
                    timeout: Duration::ZERO,
                    ..PropagationConfig::default()
                },
                "--timeout",
            ),
        ] {
            match config.validate() {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, flag),
                other => panic!("{flag}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_seed_declares_both_versions_on_the_writer() {
        let config = PropagationConfig {
            writer: "http://127.0.0.1:1".to_owned(),
            watcher: "http://127.0.0.1:2".to_owned(),
            ..PropagationConfig::default()
        };
        let seed = config.seed_config();
        assert_eq!(seed.target, "http://127.0.0.1:1");
        assert_eq!(seed.versions, ["v1", "v2"]);
        assert_eq!(seed.keyspace.tenant_id(0), "propagation-tenant-0");
        assert_eq!(seed.keyspace.service_name(0), "propagation-service-0");
        assert_eq!((seed.keyspace.tenants, seed.keyspace.services), (1, 1));
    }

    #[test]
    fn every_change_flips_to_the_other_version() {
        assert_eq!(other_version(&VERSIONS, "v1"), "v2");
        assert_eq!(other_version(&VERSIONS, "v2"), "v1");
        // Pinned elsewhere by someone else: the first change still moves it.
        assert_eq!(other_version(&VERSIONS, "v9"), "v1");
    }

    #[test]
    fn the_snapshot_names_the_watched_pair() {
        let assignment = |tenant: &str, service: &str, version: &str| pb::Assignment {
            tenant_id: tenant.to_owned(),
            service: service.to_owned(),
            version: version.to_owned(),
            ..Default::default()
        };
        let upserts = [
            assignment("t", "other", "v7"),
            assignment("t", "s", "v2"),
            assignment("u", "s", "v1"),
        ];
        assert_eq!(assigned_version(&upserts, "t", "s"), Some("v2"));
        assert_eq!(assigned_version(&upserts, "x", "s"), None);
    }

    #[test]
    fn an_update_received_before_the_reply_is_matched() {
        let base = Instant::now();
        let mut arrivals = Arrivals::default();
        // The watcher got revision 7 before the writer's reply said 7.
        arrivals.record(7, later(base, 300));
        assert_eq!(arrivals.take(7), Some(later(base, 300)));
        assert!(arrivals.is_empty());
        // Nothing for 8 yet: the caller waits for more updates.
        assert_eq!(arrivals.take(8), None);
        arrivals.record(8, later(base, 900));
        assert_eq!(arrivals.take(8), Some(later(base, 900)));
    }

    #[test]
    fn the_first_stamp_of_a_revision_counts() {
        let base = Instant::now();
        let mut arrivals = Arrivals::default();
        arrivals.record(3, later(base, 10));
        arrivals.record(3, later(base, 20));
        assert_eq!(arrivals.take(3), Some(later(base, 10)));
    }

    #[test]
    fn a_later_revision_carries_an_earlier_change() {
        let base = Instant::now();
        let mut arrivals = Arrivals::default();
        // A stale stamp of an older change, then a snapshot at 12 that includes change 10.
        arrivals.record(4, later(base, 1));
        arrivals.record(12, later(base, 50));
        arrivals.record(13, later(base, 60));
        assert_eq!(arrivals.take(10), Some(later(base, 50)));
        assert_eq!(arrivals.len(), 1, "4 and 12 are forgotten, 13 is kept");
        assert_eq!(arrivals.take(13), Some(later(base, 60)));
    }

    #[test]
    fn measurements_split_arrivals_before_and_after_the_reply() {
        let base = Instant::now();
        let mut m = Measurements::default();
        // Arrived before the reply.
        m.record(5, base, later(base, 800), Some(later(base, 600)));
        // Arrived after the reply.
        m.record(
            6,
            later(base, 1_000),
            later(base, 1_500),
            Some(later(base, 1_700)),
        );
        // Never arrived.
        m.record(7, later(base, 2_000), later(base, 2_400), None);
        assert_eq!((m.first_revision, m.last_revision), (5, 7));
        assert_eq!(m.missing, 1);
        assert_eq!(m.arrived_before_reply, 1);
        assert_eq!(m.propagation_us.len(), 2);
        assert_eq!(m.admin_us.len(), 3);
        assert_eq!(m.propagation_us.min(), 600);
        assert_eq!(m.propagation_us.max(), 700);
        assert_eq!(m.admin_us.max(), 800);
    }

    fn report() -> PropagationReport {
        let base = Instant::now();
        let mut m = Measurements::default();
        for i in 0..100_u64 {
            let sent = later(base, i * 10_000);
            // Propagation 1..=100 µs; the Admin reply at 50 µs.
            m.record(100 + i, sent, later(sent, 50), Some(later(sent, i + 1)));
        }
        m.record(200, later(base, 2_000_000), later(base, 2_000_050), None);
        let config = PropagationConfig {
            writer: "http://a:1".to_owned(),
            watcher: "http://b:2".to_owned(),
            changes: 101,
            ..PropagationConfig::default()
        };
        PropagationReport::new(&config, "t", "s", &m, Duration::from_secs(2))
    }

    #[test]
    fn the_report_counts_changes_and_takes_percentiles() {
        let r = report();
        assert_eq!((r.changes, r.arrived, r.missing), (101, 100, 1));
        assert_eq!(
            r.arrived_before_reply, 49,
            "1..=49 µs is before the 50 µs reply"
        );
        assert_eq!((r.first_revision, r.last_revision), (100, 200));
        assert_eq!(r.propagation_us.p50, 50);
        assert_eq!(r.propagation_us.p99, 99);
        assert_eq!(r.propagation_us.max, 100);
        assert_eq!(r.admin_us.p50, 50);
        assert_eq!(r.admin_us.count, 101);
    }

    #[test]
    fn the_report_prints_both_latencies() {
        let text = report().to_string();
        for expected in [
            "propagation from http://a:1 to a watcher on http://b:2",
            "t on s: 101 changes (revisions 100 to 200)",
            "changes      101 made, 100 arrived, 1 missing",
            "elapsed      2.00 s",
            "(49 arrived before its reply)",
            "  p50                  50           50",
            "  max                 100           50",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        let json: serde_json::Value = serde_json::from_str(&report().to_json()).expect("JSON");
        assert_eq!(json["missing"], 1);
        assert_eq!(json["propagation_us"]["p99"], 99);
        assert_eq!(json["admin_us"]["count"], 101);
        assert_eq!(json["watcher"], "http://b:2");
    }
}
