//! What a node tells a metrics recorder (the `metrics` facade; the binary installs a Prometheus
//! recorder, tests and embedders may install none, which makes every record a no-op).
//!
//! Two kinds of figures:
//!
//! - **events**, recorded where they happen: routing decisions by outcome
//!   (`grey_router_requests_total{service,version,status}`), decision time
//!   (`grey_router_latency_seconds{stage="decision"}`), changes committed and refused
//!   (`grey_router_changes_total{mutation,result}`), replication delay, watch streams and
//!   messages, rollout decisions, tenant schema upgrades;
//! - **readings**, taken when metrics are scraped ([`Node::collect_metrics`]): revision, replica
//!   lag, store up, tenants, outcome windows, ejected instances, rollouts, schema upgrades,
//!   discovery sources, and the process (resident memory, CPU, open file descriptors).
//!
//! Label values come from the routing state, never from what a caller sent: a request for a
//! service that does not exist is counted under `service=""`, so callers cannot grow the series.
//! Per-tenant series (`grey_router_tenant_requests_total`) are off unless configured, and then
//! capped: the first `max_tenant_labels` tenants routed get their own series, the others share
//! `tenant="_other"`.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use routing_core::state::RouteDecision;
use routing_core::{RouteQuery, RoutingError, RoutingState};

use crate::Node;
use crate::error::ErrorKind;

/// Metric names, so that front doors, dashboards and tests agree.
pub mod names {
    /// Routing decisions by service, version and outcome (`ok` or an error kind).
    pub const REQUESTS: &str = "grey_router_requests_total";
    /// Routing decisions per tenant (opt-in, capped).
    pub const TENANT_REQUESTS: &str = "grey_router_tenant_requests_total";
    /// Decision time (`stage="decision"`) and `Route` handling time (`stage="route"`).
    pub const LATENCY: &str = "grey_router_latency_seconds";
    /// Active tenants in the routing state.
    pub const ACTIVE_TENANTS: &str = "grey_router_active_tenants";
    /// Tenants in the routing state.
    pub const TENANTS: &str = "grey_router_tenants";
    /// The revision this router routes from.
    pub const REVISION: &str = "grey_router_revision";
    /// Whether the store answered the last scrape's probe.
    pub const STORE_UP: &str = "grey_router_store_up";
    /// Changes committed in the store and not yet applied here.
    pub const LAG_REVISIONS: &str = "grey_router_replica_lag_revisions";
    /// Age of the oldest change committed in the store and not yet applied here.
    pub const LAG_SECONDS: &str = "grey_router_replica_lag_seconds";
    /// Time from a change's commit to its application by this router.
    pub const REPLICATION_DELAY: &str = "grey_router_replication_delay_seconds";
    /// Changes asked of the store, by mutation and result (`committed` or an error kind).
    pub const CHANGES: &str = "grey_router_changes_total";
    /// Watch streams open.
    pub const WATCH_STREAMS: &str = "grey_router_watch_streams";
    /// Watch messages sent.
    pub const WATCH_MESSAGES: &str = "grey_router_watch_messages_total";
    /// Snapshots and changes encoded once for every watcher of the same filter.
    pub const WATCH_SHARED_BUILDS: &str = "grey_router_watch_shared_builds_total";
    /// Snapshots sent to watchers because their revision was no longer kept, or they lagged.
    pub const WATCH_SNAPSHOTS: &str = "grey_router_watch_snapshots_total";
    /// Outcome reports in the window, per service version.
    pub const OUTCOME_REQUESTS: &str = "grey_router_outcome_requests";
    /// Share of failed outcome reports in the window, per service version.
    pub const OUTCOME_ERROR_RATIO: &str = "grey_router_outcome_error_ratio";
    /// 99th percentile of reported latency in the window, per service version.
    pub const OUTCOME_P99: &str = "grey_router_outcome_latency_p99_seconds";
    /// Instances registered, per service version.
    pub const INSTANCES: &str = "grey_router_instances";
    /// Instances ejected by outlier detection, per service version.
    pub const EJECTED: &str = "grey_router_ejected_instances";
    /// A rollout's share, in percent.
    pub const ROLLOUT_PERCENT: &str = "grey_router_rollout_percent";
    /// 1 for a rollout's phase (`running`, `paused`, `promoted`, `aborted`), 0 for the others.
    pub const ROLLOUT_PHASE: &str = "grey_router_rollout_phase";
    /// Decisions of the rollout driver (`advance`, `promote`, `abort`, ...).
    pub const ROLLOUT_DECISIONS: &str = "grey_router_rollout_decisions_total";
    /// Schema upgrades running on this router.
    pub const SCHEMA_UPGRADES_RUNNING: &str = "grey_router_schema_upgrades_running";
    /// Tenants whose schema upgrade failed, in the upgrades this router keeps.
    pub const SCHEMA_TENANTS_FAILED: &str = "grey_router_schema_upgrade_failed_tenants";
    /// Tenant schema upgrades finished, by result (`done`, `failed`).
    pub const SCHEMA_TENANT_UPGRADES: &str = "grey_router_schema_tenant_upgrades_total";
    /// Whether a discovery source's last sync succeeded.
    pub const DISCOVERY_UP: &str = "grey_router_discovery_source_up";
    /// Resident memory of the process.
    pub const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
    /// CPU time of the process.
    pub const CPU_SECONDS: &str = "process_cpu_seconds_total";
    /// Open file descriptors.
    pub const OPEN_FDS: &str = "process_open_fds";
    /// The file descriptor limit.
    pub const MAX_FDS: &str = "process_max_fds";

    /// Every metric a router exports (histograms add `_bucket`, `_sum` and `_count`).
    pub const ALL: &[&str] = &[
        REQUESTS,
        TENANT_REQUESTS,
        LATENCY,
        ACTIVE_TENANTS,
        TENANTS,
        REVISION,
        STORE_UP,
        LAG_REVISIONS,
        LAG_SECONDS,
        REPLICATION_DELAY,
        CHANGES,
        WATCH_STREAMS,
        WATCH_MESSAGES,
        WATCH_SHARED_BUILDS,
        WATCH_SNAPSHOTS,
        OUTCOME_REQUESTS,
        OUTCOME_ERROR_RATIO,
        OUTCOME_P99,
        INSTANCES,
        EJECTED,
        ROLLOUT_PERCENT,
        ROLLOUT_PHASE,
        ROLLOUT_DECISIONS,
        SCHEMA_UPGRADES_RUNNING,
        SCHEMA_TENANTS_FAILED,
        SCHEMA_TENANT_UPGRADES,
        DISCOVERY_UP,
        RESIDENT_MEMORY,
        CPU_SECONDS,
        OPEN_FDS,
        MAX_FDS,
    ];
}

/// Per-tenant series: off by default, capped when on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Whether routing decisions are also counted per tenant.
    pub tenant_labels: bool,
    /// Most tenants with a series of their own; the others share `tenant="_other"`.
    pub max_tenant_labels: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            tenant_labels: false,
            max_tenant_labels: 100,
        }
    }
}

/// The label of tenants beyond the cap (and of unknown tenants).
pub const OTHER_TENANTS: &str = "_other";

/// The histogram bounds of `grey_router_latency_seconds`: 5 µs to 1 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// The histogram bounds of `grey_router_replication_delay_seconds`: 1 ms to 60 s.
pub const DELAY_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 60.0,
];

/// Describes every metric to the installed recorder (its `# HELP` line and unit).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use names::*;
    describe_counter!(
        REQUESTS,
        "Routing decisions by service, version and status (ok or the error kind)"
    );
    describe_counter!(
        TENANT_REQUESTS,
        "Routing decisions per tenant (opt-in, capped; the rest under tenant=\"_other\")"
    );
    describe_histogram!(
        LATENCY,
        Unit::Seconds,
        "Routing decision time (stage=decision) and Route handling time (stage=route)"
    );
    describe_gauge!(
        ACTIVE_TENANTS,
        "Active tenants in the routing state this router routes from"
    );
    describe_gauge!(TENANTS, "Tenants in the routing state");
    describe_gauge!(REVISION, "The revision this router routes from");
    describe_gauge!(STORE_UP, "1 when the store answered the scrape's probe");
    describe_gauge!(
        LAG_REVISIONS,
        "Changes committed in the store and not yet applied by this router"
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest change committed and not yet applied by this router (0 when current)"
    );
    describe_histogram!(
        REPLICATION_DELAY,
        Unit::Seconds,
        "Time from a change's commit to its application by this router"
    );
    describe_counter!(
        CHANGES,
        "Changes asked of the store, by mutation and result (committed or the error kind)"
    );
    describe_gauge!(WATCH_STREAMS, "WatchAssignments streams open");
    describe_counter!(WATCH_MESSAGES, "WatchAssignments messages sent");
    describe_counter!(
        WATCH_SHARED_BUILDS,
        "Snapshots and changes encoded once for every watcher of the same filter"
    );
    describe_counter!(
        WATCH_SNAPSHOTS,
        "Snapshots sent to watchers whose revision was no longer kept or who lagged"
    );
    describe_gauge!(
        OUTCOME_REQUESTS,
        "Outcome reports in the window, per service version"
    );
    describe_gauge!(
        OUTCOME_ERROR_RATIO,
        "Share of failed outcome reports in the window, per service version"
    );
    describe_gauge!(
        OUTCOME_P99,
        Unit::Seconds,
        "99th percentile of reported latency in the window, per service version"
    );
    describe_gauge!(INSTANCES, "Instances registered, per service version");
    describe_gauge!(
        EJECTED,
        "Instances ejected by outlier detection, per service version"
    );
    describe_gauge!(
        ROLLOUT_PERCENT,
        "A rollout's share of its cohort, in percent"
    );
    describe_gauge!(ROLLOUT_PHASE, "1 for a rollout's current phase");
    describe_counter!(
        ROLLOUT_DECISIONS,
        "Decisions of the rollout driver on this router"
    );
    describe_gauge!(SCHEMA_UPGRADES_RUNNING, "Schema upgrades running");
    describe_gauge!(
        SCHEMA_TENANTS_FAILED,
        "Tenants whose schema upgrade failed, in the upgrades this router keeps"
    );
    describe_counter!(
        SCHEMA_TENANT_UPGRADES,
        "Tenant schema upgrades finished, by result"
    );
    describe_gauge!(
        DISCOVERY_UP,
        "1 when a discovery source's last sync succeeded"
    );
    describe_gauge!(RESIDENT_MEMORY, Unit::Bytes, "Resident memory");
    describe_counter!(
        CPU_SECONDS,
        Unit::Seconds,
        "CPU time, user and system, in whole seconds"
    );
    describe_gauge!(OPEN_FDS, "Open file descriptors");
    describe_gauge!(MAX_FDS, "The limit of open file descriptors");
}

/// Counts routing decisions.
///
/// The hot path does no registry lookup and no allocation once a label set was seen: the
/// handles of `grey_router_requests_total` are kept per service, version and status (names the
/// routing state holds, so the cache is as bounded as the state; it starts over beyond
/// [`MAX_CACHED_SERIES`]), and the latency histograms' handles are taken once. Handles come
/// from the recorder installed when the node starts.
pub(crate) struct RouteMetrics {
    requests: RwLock<HashMap<Box<str>, VersionCounters, SeriesHasher>>,
    cached: AtomicUsize,
    decision_time: metrics::Histogram,
    route_time: metrics::Histogram,
    tenants: Option<TenantLabels>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("cached", &self.cached.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Most `grey_router_requests_total` handles kept before the cache starts over.
pub const MAX_CACHED_SERIES: usize = 10_000;

/// The statuses a decision ends with: `ok`, then every error kind.
const STATUSES: usize = 1 + ErrorKind::ALL.len();

/// A counter handle per status of one service version, made on first use.
type StatusCounters = [Option<metrics::Counter>; STATUSES];

/// The counters of one service, per version.
type VersionCounters = HashMap<Box<str>, StatusCounters, SeriesHasher>;

/// Series are looked up on every decision by names the state holds (bounded, chosen by
/// operators): a fast hasher, seeded.
type SeriesHasher = foldhash::fast::RandomState;

/// Returns the status index and label of a decision's outcome.
fn status(kind: Option<ErrorKind>) -> (usize, &'static str) {
    match kind {
        None => (0, "ok"),
        Some(kind) => (
            1 + ErrorKind::ALL
                .iter()
                .position(|k| *k == kind)
                .unwrap_or_default(),
            kind.as_str(),
        ),
    }
}

/// The tenants that have a series of their own.
#[derive(Debug)]
struct TenantLabels {
    labelled: RwLock<HashSet<Box<str>>>,
    cap: usize,
}

impl TenantLabels {
    /// Returns the label of `tenant` (a tenant of the state): its id while under the cap.
    fn label(&self, tenant: &str) -> String {
        {
            let labelled = self
                .labelled
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if labelled.contains(tenant) {
                return tenant.to_owned();
            }
            if labelled.len() >= self.cap {
                return OTHER_TENANTS.to_owned();
            }
        }
        let mut labelled = self
            .labelled
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if labelled.len() < self.cap {
            labelled.insert(tenant.into());
            tenant.to_owned()
        } else if labelled.contains(tenant) {
            tenant.to_owned()
        } else {
            OTHER_TENANTS.to_owned()
        }
    }
}

impl RouteMetrics {
    pub(crate) fn new(settings: &MetricsSettings) -> Self {
        RouteMetrics {
            requests: RwLock::new(HashMap::default()),
            cached: AtomicUsize::new(0),
            decision_time: metrics::histogram!(names::LATENCY, "stage" => "decision"),
            route_time: metrics::histogram!(names::LATENCY, "stage" => "route"),
            tenants: settings.tenant_labels.then(|| TenantLabels {
                labelled: RwLock::new(HashSet::new()),
                cap: settings.max_tenant_labels,
            }),
        }
    }

    /// Counts one decision and its time.
    pub(crate) fn routed(
        &self,
        state: &RoutingState,
        query: &RouteQuery<'_>,
        result: Result<&RouteDecision<'_>, &RoutingError>,
        elapsed: Duration,
    ) {
        let (version, kind) = match result {
            Ok(decision) => (decision.resolution.version.as_str(), None),
            Err(err) => ("", Some(crate::error::routing_kind(err))),
        };
        // Only names the state holds become labels.
        let service = if result.is_ok() || state.service(query.service).is_some() {
            query.service
        } else {
            ""
        };
        let (index, status) = status(kind);
        self.count(service, version, index, status);
        self.decision_time.record(elapsed.as_secs_f64());
        if let Some(tenants) = &self.tenants {
            let tenant = if state.tenant(query.tenant_id).is_some() {
                tenants.label(query.tenant_id)
            } else {
                OTHER_TENANTS.to_owned()
            };
            metrics::counter!(
                names::TENANT_REQUESTS,
                "tenant" => tenant,
                "service" => service.to_owned(),
                "status" => status,
            )
            .increment(1);
        }
    }

    /// Records the handling time of one `Route` call.
    pub(crate) fn route_handled(&self, elapsed: Duration) {
        self.route_time.record(elapsed.as_secs_f64());
    }

    /// Adds one to the series of `service`, `version` and `status`.
    fn count(&self, service: &str, version: &str, index: usize, status: &'static str) {
        {
            let requests = self
                .requests
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(counter) = requests
                .get(service)
                .and_then(|versions| versions.get(version))
                .and_then(|counters| counters[index].as_ref())
            {
                counter.increment(1);
                return;
            }
        }
        let counter = metrics::counter!(
            names::REQUESTS,
            "service" => service.to_owned(),
            "version" => version.to_owned(),
            "status" => status,
        );
        counter.increment(1);
        let mut requests = self
            .requests
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.cached.load(Ordering::Relaxed) >= MAX_CACHED_SERIES {
            requests.clear();
            self.cached.store(0, Ordering::Relaxed);
        }
        let slot = &mut requests
            .entry(service.into())
            .or_default()
            .entry(version.into())
            .or_insert_with(|| std::array::from_fn(|_| None))[index];
        if slot.is_none() {
            *slot = Some(counter);
            self.cached.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counts one change asked of the store.
pub(crate) fn change(mutation: &'static str, result: Result<(), ErrorKind>) {
    let result = match result {
        Ok(()) => "committed",
        Err(kind) => kind.as_str(),
    };
    metrics::counter!(names::CHANGES, "mutation" => mutation, "result" => result).increment(1);
}

/// Counts one tenant's schema upgrade finished.
pub(crate) fn schema_tenant_upgraded(service: &str, done: bool) {
    let result = if done { "done" } else { "failed" };
    metrics::counter!(
        names::SCHEMA_TENANT_UPGRADES,
        "service" => service.to_owned(),
        "result" => result,
    )
    .increment(1);
}

/// Counts one decision of the rollout driver.
pub(crate) fn rollout_decision(service: &str, action: &'static str) {
    metrics::counter!(
        names::ROLLOUT_DECISIONS,
        "service" => service.to_owned(),
        "action" => action,
    )
    .increment(1);
}

/// Longest wait for the store's answers while collecting.
const PROBE_DEADLINE: Duration = Duration::from_secs(1);

impl Node {
    /// Records the handling time of one `Route` call (front doors call it).
    pub fn route_handled(&self, elapsed: Duration) {
        self.route_metrics().route_handled(elapsed);
    }

    /// Takes the readings (see the module docs) and sets them on the installed recorder; call
    /// it before rendering a scrape. Waits at most a second for the store.
    pub async fn collect_metrics(&self) {
        use metrics::gauge;
        use names::*;
        let state = self.state();
        let now_ms = crate::audit::now_ms();
        gauge!(REVISION).set(state.revision() as f64);
        gauge!(TENANTS).set(state.tenant_count() as f64);
        gauge!(ACTIVE_TENANTS).set(state.active_tenant_count() as f64);

        self.collect_store(state.revision(), now_ms).await;

        let span_ms = self.settings().outcomes.window().span_ms;
        for service in state.services() {
            let name = &service.service.name;
            for (version, pool) in service.pools() {
                let labels = [("service", name.clone()), ("version", version.clone())];
                let members = pool.members();
                let ejected = members
                    .iter()
                    .filter(|member| member.load.is_ejected(now_ms))
                    .count();
                gauge!(INSTANCES, &labels).set(members.len() as f64);
                gauge!(EJECTED, &labels).set(ejected as f64);
                let stats = self
                    .outcomes()
                    .version_stats(name, version, now_ms, span_ms);
                gauge!(OUTCOME_REQUESTS, &labels).set(stats.requests as f64);
                gauge!(OUTCOME_ERROR_RATIO, &labels).set(stats.error_rate());
                if let Some(p99) = stats.p99_ms() {
                    gauge!(OUTCOME_P99, &labels).set(f64::from(p99) / 1000.0);
                }
            }
            for rollout in service.rollouts() {
                let labels = [("service", name.clone()), ("rollout", rollout.id.clone())];
                gauge!(ROLLOUT_PERCENT, &labels).set(f64::from(rollout.basis_points) / 100.0);
                if let Some(plan) = &rollout.plan {
                    for phase in routing_core::model::RolloutPhase::ALL {
                        let labels = [
                            ("service", name.clone()),
                            ("rollout", rollout.id.clone()),
                            ("phase", phase.as_str().to_owned()),
                        ];
                        gauge!(ROLLOUT_PHASE, &labels).set(if plan.phase == phase {
                            1.0
                        } else {
                            0.0
                        });
                    }
                }
            }
        }

        gauge!(WATCH_STREAMS).set(crate::watch::open_streams() as f64);

        let (running, failed) = self.schema_counts();
        gauge!(SCHEMA_UPGRADES_RUNNING).set(running as f64);
        gauge!(SCHEMA_TENANTS_FAILED).set(failed as f64);

        for source in self.discovery_status() {
            gauge!(DISCOVERY_UP, "source" => source.source.clone()).set(if source.up {
                1.0
            } else {
                0.0
            });
        }

        process::collect();
    }

    /// Probes the store: up, and how far this router is behind it.
    async fn collect_store(&self, revision: routing_core::Revision, now_ms: u64) {
        use metrics::gauge;
        use names::*;
        let store = self.store();
        let head = tokio::time::timeout(PROBE_DEADLINE, async {
            store.ping().await?;
            store.head_revision().await
        })
        .await;
        let head = match head {
            Ok(Ok(head)) => head,
            _ => {
                gauge!(STORE_UP).set(0.0);
                return;
            }
        };
        gauge!(STORE_UP).set(1.0);
        let behind = head.saturating_sub(revision);
        gauge!(LAG_REVISIONS).set(behind as f64);
        let mut age = 0.0;
        if behind > 0 {
            // The oldest change not applied yet: its commit time says how long this router
            // has been behind.
            if let Ok(Ok(changes)) = tokio::time::timeout(
                PROBE_DEADLINE,
                store.changes_after(revision, 1, Duration::ZERO),
            )
            .await
                && let Some(change) = changes.first()
            {
                age = now_ms.saturating_sub(change.meta.at_ms) as f64 / 1000.0;
            }
        }
        gauge!(LAG_SECONDS).set(age);
    }
}

/// Process readings from `/proc` (Linux); elsewhere nothing is recorded.
mod process {
    use super::names;

    /// Clock ticks per second of `/proc/self/stat` (`USER_HZ`, 100 on every Linux platform
    /// the router is built for).
    const TICKS_PER_SECOND: f64 = 100.0;

    pub(super) fn collect() {
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some((cpu, rss_pages)) = parse_stat(&stat)
        {
            metrics::counter!(names::CPU_SECONDS).absolute((cpu as f64 / TICKS_PER_SECOND) as u64);
            metrics::gauge!(names::RESIDENT_MEMORY).set((rss_pages * page_size()) as f64);
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            metrics::gauge!(names::OPEN_FDS).set(entries.count() as f64);
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits")
            && let Some(max) = parse_max_fds(&limits)
        {
            metrics::gauge!(names::MAX_FDS).set(max as f64);
        }
    }

    /// Returns user + system CPU ticks and resident pages from `/proc/self/stat`.
    pub(super) fn parse_stat(stat: &str) -> Option<(u64, u64)> {
        // The command name (field 2) may hold spaces: fields are counted after its ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After ')': field 3 is index 0, so utime (14) is 11, stime (15) 12, rss (24) 21.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let rss: u64 = fields.get(21)?.parse().ok()?;
        Some((utime + stime, rss))
    }

    /// Returns the soft limit of open files from `/proc/self/limits`.
    pub(super) fn parse_max_fds(limits: &str) -> Option<u64> {
        let line = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// The page size of the platforms the router is built for.
    fn page_size() -> u64 {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_read_after_the_command_name() {
        let stat = "4242 (grey router) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 50 0 0 20 0 9 0 \
                    1000 123456789 2048 18446744073709551615";
        assert_eq!(process::parse_stat(stat), Some((200, 2048)));
        assert_eq!(process::parse_stat("garbage"), None);
    }

    #[test]
    fn the_open_files_limit_is_the_soft_one() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(process::parse_max_fds(limits), Some(1024));
    }

    #[test]
    fn tenants_beyond_the_cap_share_one_label() {
        let labels = TenantLabels {
            labelled: RwLock::new(HashSet::new()),
            cap: 2,
        };
        assert_eq!(labels.label("a"), "a");
        assert_eq!(labels.label("b"), "b");
        assert_eq!(labels.label("c"), OTHER_TENANTS);
        assert_eq!(labels.label("a"), "a");
    }
}
