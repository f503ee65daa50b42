//! The node: one router's routing decisions and admin operations, on domain types.
//!
//! Reads answer from this replica's snapshot; changes go to the store, which applies them
//! atomically (compare-and-set on the revision), and are answered once this replica has
//! applied them. Every rule a front door might need lives here or in `routing-core`, so the
//! gRPC and HTTP front doors cannot drift apart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use greyrouter_store::{Commit, Store};
use routing_core::analysis::AnalysisPolicy;
use routing_core::model::{RolloutDecision, RolloutEvent, RolloutPhase, RolloutPlan};
use routing_core::outcome::WindowConfig;
use routing_core::state::{RouteDecision, ServiceEntry, TenantEntry};
use routing_core::watch::AssignmentFilter;
use routing_core::{
    Cohort, EjectionPolicy, Entity, Experiment, Instance, Mutation, Outcome, Override, Rollout,
    RouteQuery, RoutingError, RoutingState, Service, StateDump, Strategy, Tenant, Variant,
    validate,
};
use schema_manager::{AppliedMigration, Plan, SchemaError, ServiceCatalog, TenantSchema};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::access::{Admission, LimitSettings};
use crate::audit::{self, Actor};
use crate::discovery::{DiscoveryBoard, SourceStatus};
use crate::error::{Error, ErrorKind};
use crate::outcomes::{OutcomeReport, Outcomes};
use crate::replica::{Adoption, Replay, Replica};
use crate::rollouts;
use crate::schema::{Schemas, Upgrade};
use crate::telemetry::{MetricsSettings, RouteMetrics};
use crate::watch::{Frames, Queued, WatchLimits, Watcher};

/// Default and largest page of tenant and event listings.
pub const DEFAULT_PAGE: usize = 100;
/// Largest page of tenant and event listings.
pub const MAX_PAGE: usize = 1000;
/// Bytes of events after which an event page ends early (the next page goes on).
pub const MAX_EVENT_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most changes one event listing reads.
const MAX_EVENTS_SCANNED: usize = 20_000;
/// The metadata key holding an instance's TTL in milliseconds.
pub const TTL_KEY: &str = "greyrouter.ttl_ms";
/// Shortest TTL.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest TTL.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);
/// Most instances in one heartbeat.
pub const MAX_HEARTBEATS: usize = 1000;
/// The holder of heartbeat leases.
const ALIVE: &str = "alive";

/// The store lease a heartbeat renews.
fn heartbeat_lease(service: &str, id: &str) -> String {
    format!("heartbeat:{service}/{id}")
}

/// An instance's TTL, when it was registered with one.
fn ttl_of(instance: &Instance) -> Option<Duration> {
    instance
        .metadata
        .get(TTL_KEY)
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
}

/// What the expiry task needs.
struct ExpiryScope {
    replica: Arc<Replica>,
}

impl ExpiryScope {
    /// Counts the start of this node as a heartbeat of every instance with a TTL: heartbeat
    /// leases of the embedded store live in memory, so after a restart none is held, and the
    /// instances (heartbeating all along) would otherwise all expire at the first tick.
    async fn grace(&self) {
        let state = self.replica.current();
        for service in state.services() {
            for (_, pool) in service.pools() {
                for member in pool.members().iter() {
                    let instance = &member.instance;
                    if let Some(ttl) = ttl_of(instance) {
                        let lease = heartbeat_lease(&instance.service, &instance.id);
                        let _ = self.replica.store().lease(&lease, ALIVE, ttl).await;
                    }
                }
            }
        }
    }

    /// Removes every instance with a TTL whose heartbeat lease lapsed.
    async fn expire(&self) {
        let state = self.replica.current();
        let actor = Actor::system("instance-ttl", "no heartbeat within the instance's TTL");
        for service in state.services() {
            for (_, pool) in service.pools() {
                for member in pool.members().iter() {
                    let instance = &member.instance;
                    if ttl_of(instance).is_none() {
                        continue;
                    }
                    // Taking the lease for a moment succeeds only when no heartbeat holds it.
                    let lapsed = self
                        .replica
                        .store()
                        .lease(
                            &heartbeat_lease(&instance.service, &instance.id),
                            "expiry",
                            Duration::from_millis(1),
                        )
                        .await
                        .unwrap_or(false);
                    if !lapsed {
                        continue;
                    }
                    let mutation = Mutation::DeregisterInstance {
                        service: instance.service.clone(),
                        instance_id: instance.id.clone(),
                    };
                    match self.replica.commit(mutation, &actor).await {
                        Ok(commit) => {
                            tracing::info!(service = %instance.service, instance = %instance.id, revision = commit.revision, "instance expired: no heartbeat within its TTL")
                        }
                        Err(err) => tracing::debug!(%err, "instance expiry refused"),
                    }
                }
            }
        }
    }
}

/// Most decisions in one batch.
pub const MAX_BATCH: usize = 1000;

/// Settings of outcome reports, outlier ejection and rollouts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutcomeSettings {
    /// How far back outcome windows reach, in seconds; rollout steps are judged on at most this.
    pub window_seconds: u64,
    /// Slots of a window (its resolution).
    pub window_slots: u32,
    /// Outlier ejection of instances.
    pub ejection: EjectionPolicy,
    /// How often the rollout driver looks at running rollouts, in milliseconds.
    pub rollout_tick_ms: u64,
    /// How long the driver's lease lasts without renewal, in milliseconds.
    pub rollout_lease_ms: u64,
    /// This replica's name for the lease (a random one when empty).
    pub replica_id: String,
    /// How often instances with a TTL are checked for a lapsed heartbeat, in milliseconds.
    pub heartbeat_tick_ms: u64,
}

impl Default for OutcomeSettings {
    fn default() -> Self {
        OutcomeSettings {
            window_seconds: 600,
            window_slots: 60,
            ejection: EjectionPolicy::default(),
            rollout_tick_ms: 1000,
            rollout_lease_ms: 10_000,
            replica_id: String::new(),
            heartbeat_tick_ms: 1_000,
        }
    }
}

impl OutcomeSettings {
    /// The outcome window these settings describe.
    pub fn window(&self) -> WindowConfig {
        WindowConfig {
            span_ms: self.window_seconds.saturating_mul(1000),
            slots: self.window_slots,
        }
    }
}

/// What a node needs besides its store.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSettings {
    /// Changes kept for watchers to resume from.
    pub history: usize,
    /// Memory the kept changes may hold on their own, in bytes.
    pub history_bytes: usize,
    /// Watchers' queues and messages.
    pub watch: WatchLimits,
    /// Most metadata entries on a routing request.
    pub max_metadata_entries: usize,
    /// Most metadata bytes (keys and values) on a routing request.
    pub max_metadata_bytes: usize,
    /// Most tenants or services named by one watch.
    pub max_watch_filter: usize,
    /// Outcome windows, ejection and the rollout driver.
    pub outcomes: OutcomeSettings,
    /// Rate limits and caps of calls.
    pub limits: LimitSettings,
    /// Per-tenant metric series.
    pub metrics: MetricsSettings,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            history: 4096,
            history_bytes: 32 * 1024 * 1024,
            watch: WatchLimits {
                max_queued_bytes: 256 * 1024,
                max_shared_bytes: 256 * 1024 * 1024,
                max_assignments_per_message: 100,
                buffer: 16,
            },
            max_metadata_entries: 64,
            max_metadata_bytes: 8 * 1024,
            max_watch_filter: 10_000,
            outcomes: OutcomeSettings::default(),
            limits: LimitSettings::default(),
            metrics: MetricsSettings::default(),
        }
    }
}

/// One router: its replica of the routing state, outcome windows, rollout driver and schema
/// migrations, and every operation on them.
pub struct Node {
    replica: Arc<Replica>,
    outcomes: Arc<Outcomes>,
    schemas: Option<Arc<Schemas>>,
    settings: NodeSettings,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    discovery: DiscoveryBoard,
    admission: Arc<Admission>,
    route_metrics: RouteMetrics,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A listing and the revision it was read at.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Listed<T> {
    /// What was found.
    pub items: Vec<T>,
    /// The revision of the snapshot read.
    pub revision: u64,
}

/// A page of tenants.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TenantPage {
    /// Tenants in id order.
    pub tenants: Vec<Tenant>,
    /// The token of the next page; empty on the last page.
    pub next_page_token: String,
    /// The revision of the snapshot read.
    pub revision: u64,
}

/// A tenant's version of one service, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TenantService {
    /// The service.
    pub service: String,
    /// The version the tenant is routed to.
    pub version: String,
    /// Why (override, pin, experiment, rollout, default).
    pub source: String,
    /// The tenant's pin, empty when none.
    pub pinned_version: String,
}

/// A tenant and its version of every service.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TenantServices {
    /// The tenant.
    pub tenant: Tenant,
    /// Its version of every service, in service order.
    pub services: Vec<TenantService>,
    /// The revision of the snapshot read.
    pub revision: u64,
}

/// A request to move one tenant to a version of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetTenantVersion {
    /// The tenant.
    pub tenant_id: String,
    /// The service.
    pub service: String,
    /// The version to pin.
    pub version: String,
    /// Compare-and-set: the version the caller believes is pinned now (`None`: no check).
    pub expected_version: Option<String>,
    /// Pin even a version with no instance.
    pub force: bool,
    /// Migrate the tenant's schema first when the version needs it.
    pub migrate: bool,
}

/// What a version switch did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionSwitch {
    /// The revision of the change.
    pub revision: u64,
    /// The pin it replaced, empty when there was none.
    pub previous_version: String,
}

/// A request to roll a service back in one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmergencyRollback {
    /// The service.
    pub service: String,
    /// The version being left.
    pub from_version: String,
    /// The version to go to.
    pub to_version: String,
    /// Only these tenants; all when empty.
    pub tenant_ids: Vec<String>,
    /// Even to a version with no instance.
    pub force: bool,
    /// Say what would happen, change nothing.
    pub dry_run: bool,
    /// Why (when the actor's headers gave none).
    pub reason: String,
}

/// What an emergency rollback did (or would do).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RollbackResult {
    /// The revision of the change (of the snapshot read, for a dry run).
    pub revision: u64,
    /// Tenants moved.
    pub moved_tenants: u64,
    /// The override created; empty for a dry run.
    pub override_id: String,
}

/// A request to start a managed rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRollout {
    /// The service.
    pub service: String,
    /// The version rolled out.
    pub to_version: String,
    /// The rollout's id; one is made up when empty.
    pub id: String,
    /// How long each step runs before it is judged, in seconds.
    pub interval_seconds: u64,
    /// The share of tenants at each step, in basis points.
    pub steps: Vec<u32>,
    /// How each step is judged.
    pub analysis: AnalysisPolicy,
    /// The tenants that take part.
    pub cohort: Cohort,
    /// Even to a version with no instance.
    pub force: bool,
}

/// A rollout and the revision it was read at.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RolloutView {
    /// The rollout.
    pub rollout: Rollout,
    /// The revision.
    pub revision: u64,
}

/// An experiment, how many active tenants each variant has now, and the revision.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExperimentView {
    /// The experiment.
    pub experiment: Experiment,
    /// Active tenants per variant name.
    pub tenants_per_variant: HashMap<String, u64>,
    /// The revision.
    pub revision: u64,
}

/// Which changes an event listing returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Changes after this revision.
    pub since_revision: u64,
    /// Only changes of this tenant (and service-wide changes); all when empty.
    pub tenant_id: String,
    /// Only changes of this service; all when empty.
    pub service: String,
    /// Most events (0: the default page).
    pub limit: u32,
}

/// One change in the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    /// Its revision.
    pub revision: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// What kind of change.
    pub kind: String,
    /// The tenant it concerns, if one.
    pub tenant_id: String,
    /// The service it concerns, if one.
    pub service: String,
    /// The record before, as JSON.
    pub before: String,
    /// The record after, as JSON.
    pub after: String,
}

/// A page of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventPage {
    /// The events, in revision order.
    pub events: Vec<Event>,
    /// Where the next page starts.
    pub next_revision: u64,
}

/// A request to upgrade tenants' schemas.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpgradeSchema {
    /// The service whose migrations run.
    pub service: String,
    /// The schema to reach; or `None` to reach what `target_version` needs.
    pub target_schema: Option<u32>,
    /// The version whose schema to reach, when no schema number is given.
    pub target_version: String,
    /// The tenants; when empty, the active tenants of `cohort`.
    pub tenant_ids: Vec<String>,
    /// The tenants, when no ids are given.
    pub cohort: Cohort,
    /// Plan only.
    pub dry_run: bool,
}

/// One tenant's plan in a dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPlan {
    /// The tenant.
    pub tenant_id: String,
    /// The plan, or why there is none.
    pub plan: Result<Plan, String>,
}

/// What an upgrade request started, or would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeStarted {
    /// The upgrade's id; empty for a dry run.
    pub upgrade_id: String,
    /// The schema the tenants go to.
    pub target_schema: u32,
    /// For a dry run, each tenant's plan.
    pub plans: Vec<TenantPlan>,
}

/// A tenant's schema of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSchema {
    /// The service.
    pub service: String,
    /// The schema the tenant's database is at.
    pub current: u32,
    /// The schema the tenant's current version needs.
    pub required: u32,
    /// The newest schema in the catalog.
    pub latest: u32,
    /// The migrations applied, oldest first.
    pub history: Vec<AppliedMigration>,
    /// What an operator should do, when a migration was left half-applied.
    pub advice: Option<String>,
}

/// Returns a tenant's schema of one service, with what its version requires.
fn service_schema(
    state: &RoutingState,
    tenant: &TenantEntry,
    catalog: &ServiceCatalog,
    status: TenantSchema,
) -> ServiceSchema {
    let required = state
        .service(&catalog.service)
        .map(|service| service.resolve(tenant).version)
        .and_then(|version| catalog.required_for(&version))
        .unwrap_or(0);
    ServiceSchema {
        service: catalog.service.clone(),
        current: status.current,
        required,
        latest: catalog.latest(),
        advice: status.advice(&tenant.tenant.id),
        history: status.history,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn not_found(entity: Entity, name: impl Into<String>) -> Error {
    Error::Routing(RoutingError::not_found(entity, name))
}

impl Node {
    /// Loads the routing state from `store` and follows it. With `schemas`, version switches
    /// and rollouts wait for the schemas their versions need.
    pub async fn start(
        store: Arc<dyn Store>,
        schemas: Option<Schemas>,
        settings: NodeSettings,
    ) -> Result<Arc<Node>, Error> {
        let replica = Replica::load(store, settings.history, settings.history_bytes).await?;
        let follower = tokio::spawn(Arc::clone(&replica).follow());
        let outcomes = Arc::new(Outcomes::new(
            settings.outcomes.ejection.clone(),
            settings.outcomes.window(),
        ));
        let admission = Arc::new(Admission::new(settings.limits.clone()));
        Ok(Arc::new(Node {
            admission,
            route_metrics: RouteMetrics::new(&settings.metrics),
            replica,
            outcomes,
            schemas: schemas.map(Arc::new),
            settings,
            tasks: Mutex::new(vec![follower]),
            discovery: DiscoveryBoard::default(),
        }))
    }

    /// Spawns a background task of the node (a discovery syncer, say): aborted by [`Node::stop`].
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        lock(&self.tasks).push(tokio::spawn(task));
    }

    /// Records what a discovery source last did.
    pub fn report_discovery(&self, status: SourceStatus) {
        self.discovery.report(status);
    }

    pub(crate) fn route_metrics(&self) -> &RouteMetrics {
        &self.route_metrics
    }

    /// Schema upgrades running, and tenants failed in the upgrades kept (0, 0 without schema
    /// migrations).
    pub fn schema_counts(&self) -> (usize, usize) {
        self.schemas
            .as_ref()
            .map_or((0, 0), |schemas| schemas.counts())
    }

    /// What every discovery source last did on this router.
    pub fn discovery_status(&self) -> Vec<SourceStatus> {
        self.discovery.statuses()
    }

    /// Starts the rollout driver in the name of `holder` (a replica id for the lease).
    pub fn drive_rollouts(&self, holder: String) {
        let settings = &self.settings.outcomes;
        let driver = tokio::spawn(rollouts::drive(
            Arc::clone(&self.replica),
            Arc::clone(&self.outcomes),
            self.schemas.clone(),
            holder,
            Duration::from_millis(settings.rollout_tick_ms),
            Duration::from_millis(settings.rollout_lease_ms),
        ));
        lock(&self.tasks).push(driver);
    }

    /// Stops following the store and driving rollouts.
    pub fn stop(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }

    /// Rate limits and caps of calls to this node.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// The replica.
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// The store, as this node uses it.
    pub fn store(&self) -> &Arc<dyn Store> {
        self.replica.store()
    }

    /// The outcome windows.
    pub fn outcomes(&self) -> &Arc<Outcomes> {
        &self.outcomes
    }

    /// The settings.
    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// The current snapshot, cheaply (for the hot path).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<RoutingState>> {
        self.replica.snapshot()
    }

    /// The current snapshot.
    pub fn state(&self) -> Arc<RoutingState> {
        self.replica.current()
    }

    /// The store history this node follows.
    pub fn history_id(&self) -> String {
        self.replica.history_id()
    }

    fn schemas(&self) -> Result<&Arc<Schemas>, Error> {
        self.schemas.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::FailedPrecondition,
                "schema migrations are not configured on this router (set [schema] database_url)",
            )
        })
    }

    /// Commits one change as `actor`, with its audit record; answered once this replica
    /// applied it. Every named operation below goes through here; services inside the process
    /// (discovery) that derive their own mutations use it directly.
    pub async fn commit(&self, mutation: Mutation, actor: &Actor) -> Result<Commit, Error> {
        let kind = audit::kind(&mutation);
        let span = tracing::info_span!(
            "store.commit",
            mutation = kind,
            revision = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let result = self
            .replica
            .commit(mutation, actor)
            .instrument(span.clone())
            .await
            .map_err(Error::from);
        match &result {
            Ok(commit) => {
                span.record("revision", commit.revision);
                tracing::info!(
                    parent: &span,
                    mutation = kind,
                    revision = commit.revision,
                    actor = %actor.name,
                    "committed"
                );
            }
            Err(err) => {
                span.record("error", tracing::field::display(err));
                tracing::debug!(parent: &span, mutation = kind, %err, "refused");
            }
        }
        result
    }

    /// Applies a seed to an empty store; returns the changes applied (0 when the store already
    /// holds routing state).
    pub async fn seed(&self, dump: &StateDump, source: &str) -> Result<usize, Error> {
        if self.replica.current().revision() > 0 {
            return Ok(0);
        }
        let mutations = dump.mutations();
        let count = mutations.len();
        let actor = Actor::system("seed", source);
        for mutation in mutations {
            self.replica.commit(mutation, &actor).await?;
        }
        Ok(count)
    }

    // Routing.

    /// Checks a routing request (its fields, and its `metadata` against the configured
    /// limits) and decides it on `state` (one snapshot may serve a batch). Decisions by least
    /// connections count the instance's request as in flight until an outcome report ends it.
    pub fn route<'s>(
        &self,
        state: &'s RoutingState,
        query: &RouteQuery<'_>,
        metadata: &HashMap<String, String>,
    ) -> Result<RouteDecision<'s>, RoutingError> {
        let started = std::time::Instant::now();
        let decision = self
            .check_route(query, metadata)
            .and_then(|()| state.route(query));
        self.route_metrics
            .routed(state, query, decision.as_ref(), started.elapsed());
        let decision = decision?;
        if decision.strategy == Strategy::LeastConnections {
            decision.member.load.start(query.now_ms);
        }
        Ok(decision)
    }

    /// Checks a routing request's fields and metadata.
    fn check_route(
        &self,
        query: &RouteQuery<'_>,
        metadata: &HashMap<String, String>,
    ) -> Result<(), RoutingError> {
        validate::name("tenant_id", query.tenant_id)?;
        validate::name("service", query.service)?;
        validate::optional_name("region", query.region)?;
        validate::text("hash_key", query.hash_key)?;
        self.check_metadata(metadata)
    }

    /// Checks a request's metadata against the configured limits.
    fn check_metadata(&self, metadata: &HashMap<String, String>) -> Result<(), RoutingError> {
        let max_entries = self.settings.max_metadata_entries;
        let max_bytes = self.settings.max_metadata_bytes;
        if metadata.len() > max_entries {
            return Err(RoutingError::invalid(
                "metadata",
                format!("more than {max_entries} entries"),
            ));
        }
        let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > max_bytes {
            return Err(RoutingError::invalid(
                "metadata",
                format!("more than {max_bytes} bytes"),
            ));
        }
        for (key, value) in metadata {
            validate::name("metadata.key", key)?;
            validate::text("metadata.value", value)?;
        }
        Ok(())
    }

    /// Records one outcome report against `state`.
    pub fn report_outcome(
        &self,
        state: &RoutingState,
        report: &OutcomeReport,
        now_ms: u64,
    ) -> Result<(), RoutingError> {
        self.outcomes.record(state, report, now_ms)
    }

    /// Records `report` and one request of the same kind for each of `more_latencies_ms` (a
    /// reporter's requests sent as one message; at most
    /// [`outcomes::MAX_MORE_LATENCIES`](crate::outcomes::MAX_MORE_LATENCIES)).
    pub fn report_outcomes(
        &self,
        state: &RoutingState,
        report: &OutcomeReport,
        more_latencies_ms: &[u32],
        now_ms: u64,
    ) -> Result<(), RoutingError> {
        self.outcomes
            .record_many(state, report, more_latencies_ms, now_ms)
    }

    /// Checks a watch and starts its watcher: a snapshot when `from_revision` is 0 (or names a
    /// revision of another history), else a replay from there. Returns the queue of encoded
    /// messages; the watcher stops when `closing` turns true or the queue is dropped.
    pub fn watch<F: Frames>(
        &self,
        tenant_ids: Vec<String>,
        services: Vec<String>,
        from_revision: u64,
        history: &str,
        closing: tokio::sync::watch::Receiver<bool>,
        frames: F,
    ) -> Result<tokio::sync::mpsc::Receiver<Queued<F::Frame>>, Error> {
        let limit = self.settings.max_watch_filter;
        if tenant_ids.len() > limit || services.len() > limit {
            return Err(Error::invalid(
                "tenant_ids",
                format!("at most {limit} tenants and {limit} services"),
            ));
        }
        let filter = AssignmentFilter {
            tenant_ids: validate::names("tenant_ids", tenant_ids)?,
            services: validate::names("services", services)?,
        };
        validate::optional_name("history", history)?;
        // Revisions of another history name other states: send a snapshot instead.
        let from = if history.is_empty() || history == self.replica.history_id() {
            from_revision
        } else {
            0
        };
        // Check a resume before answering, so the client sees OUT_OF_RANGE as the call's status.
        if from > 0 {
            match self.replica.changes_after(from) {
                Replay::Changes(_) => {}
                Replay::Gone => {
                    return Err(Error::new(
                        ErrorKind::OutOfRange,
                        format!(
                            "revision {from_revision} is older than the kept history; watch from revision 0 for a snapshot"
                        ),
                    ));
                }
                Replay::Ahead => {
                    return Err(Error::new(
                        ErrorKind::OutOfRange,
                        format!(
                            "revision {from_revision} is ahead of this router (at {}); watch from revision 0 for a snapshot",
                            self.replica.current().revision()
                        ),
                    ));
                }
            }
        }
        let (watcher, queue) = Watcher::new(
            Arc::clone(&self.replica),
            filter,
            &self.settings.watch,
            closing,
            frames,
        );
        tokio::spawn(watcher.run(from));
        Ok(queue)
    }

    // Tenants, services, instances.

    /// Creates or replaces a tenant.
    #[tracing::instrument(name = "admin.upsert_tenant", skip_all, fields(tenant = %tenant.id))]
    pub async fn upsert_tenant(&self, tenant: Tenant, actor: &Actor) -> Result<Commit, Error> {
        self.commit(Mutation::UpsertTenant { tenant }, actor).await
    }

    /// Lists tenants in id order after `page_token` (the last id of the previous page).
    pub fn list_tenants(&self, page_token: &str, page_size: u32) -> Result<TenantPage, Error> {
        let page = match page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        validate::optional_name("page_token", page_token)?;
        let after = (!page_token.is_empty()).then_some(page_token);
        let state = self.replica.current();
        let mut tenants: Vec<Tenant> = state
            .tenants_after(after)
            .take(page + 1)
            .map(|entry| entry.tenant.clone())
            .collect();
        let next_page_token = if tenants.len() > page {
            tenants.truncate(page);
            tenants.last().map(|t| t.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(TenantPage {
            tenants,
            next_page_token,
            revision: state.revision(),
        })
    }

    /// Creates or replaces a service.
    #[tracing::instrument(name = "admin.upsert_service", skip_all, fields(service = %service.name))]
    pub async fn upsert_service(
        &self,
        service: Service,
        force: bool,
        actor: &Actor,
    ) -> Result<Commit, Error> {
        self.commit(Mutation::UpsertService { service, force }, actor)
            .await
    }

    /// Lists services in name order.
    pub fn list_services(&self) -> Listed<Service> {
        let state = self.replica.current();
        Listed {
            items: state.services().map(|s| s.service.clone()).collect(),
            revision: state.revision(),
        }
    }

    /// Registers (or replaces) an instance; with a `ttl`, it is removed unless heartbeats
    /// renew it within the TTL.
    #[tracing::instrument(name = "admin.register_instance", skip_all, fields(service = %instance.service, version = %instance.version, instance = %instance.id))]
    pub async fn register_instance(
        &self,
        mut instance: Instance,
        ttl: Option<Duration>,
        actor: &Actor,
    ) -> Result<Commit, Error> {
        match ttl {
            Some(ttl) => {
                if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
                    return Err(Error::invalid(
                        "ttl_seconds",
                        format!(
                            "must be {} to {} seconds",
                            MIN_TTL.as_secs(),
                            MAX_TTL.as_secs()
                        ),
                    ));
                }
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                instance.metadata.insert(TTL_KEY.to_owned(), ms.to_string());
                // The heartbeat lease first: the expiry task never sees the instance without it.
                self.store()
                    .lease(
                        &heartbeat_lease(&instance.service, &instance.id),
                        ALIVE,
                        ttl,
                    )
                    .await?;
            }
            None => {
                instance.metadata.remove(TTL_KEY);
            }
        }
        self.commit(Mutation::RegisterInstance { instance }, actor)
            .await
    }

    /// Renews the TTL of instances of `service`; returns how many were renewed and the ids it
    /// does not know (expired, never registered, or registered without a TTL).
    pub async fn heartbeat(
        &self,
        service: &str,
        instance_ids: &[String],
    ) -> Result<(u64, Vec<String>), Error> {
        validate::name("service", service)?;
        if instance_ids.len() > MAX_HEARTBEATS {
            return Err(Error::invalid(
                "instance_ids",
                format!("at most {MAX_HEARTBEATS} per call"),
            ));
        }
        for id in instance_ids {
            validate::name("instance_ids", id)?;
        }
        let state = self.replica.current();
        let entry = state
            .service(service)
            .ok_or_else(|| not_found(Entity::Service, service))?;
        let (mut renewed, mut unknown) = (0, Vec::new());
        for id in instance_ids {
            let ttl = entry
                .pools()
                .find_map(|(_, pool)| pool.member(id))
                .and_then(|member| ttl_of(&member.instance));
            match ttl {
                Some(ttl) => {
                    if self
                        .store()
                        .lease(&heartbeat_lease(service, id), ALIVE, ttl)
                        .await?
                    {
                        renewed += 1;
                    } else {
                        unknown.push(id.clone());
                    }
                }
                None => unknown.push(id.clone()),
            }
        }
        Ok((renewed, unknown))
    }

    /// Starts the task that removes instances whose TTL lapsed without a heartbeat (in a fleet,
    /// the holder of the `instance-expiry` lease does it), in the name of `holder`.
    pub fn expire_instances(&self, holder: String) {
        let node = ExpiryScope {
            replica: Arc::clone(&self.replica),
        };
        let tick = Duration::from_millis(self.settings.outcomes.heartbeat_tick_ms.max(1));
        let lease = Duration::from_millis(self.settings.outcomes.rollout_lease_ms);
        let task = tokio::spawn(async move {
            node.grace().await;
            let mut ticker = tokio::time::interval(tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let leading = node
                    .replica
                    .store()
                    .lease("instance-expiry", &holder, lease)
                    .await
                    .unwrap_or(false);
                if leading {
                    node.expire().await;
                }
            }
        });
        lock(&self.tasks).push(task);
    }

    /// Removes an instance.
    #[tracing::instrument(name = "admin.deregister_instance", skip_all, fields(service = %service, instance = %instance_id))]
    pub async fn deregister_instance(
        &self,
        service: String,
        instance_id: String,
        actor: &Actor,
    ) -> Result<Commit, Error> {
        self.commit(
            Mutation::DeregisterInstance {
                service,
                instance_id,
            },
            actor,
        )
        .await
    }

    /// Lists a service's instances, of one version when `version` is not empty.
    pub fn list_instances(
        &self,
        service: &str,
        version: &str,
    ) -> Result<Listed<Arc<Instance>>, Error> {
        validate::name("service", service)?;
        validate::optional_name("version", version)?;
        let state = self.replica.current();
        let entry = state
            .service(service)
            .ok_or_else(|| not_found(Entity::Service, service))?;
        let items = entry
            .pools()
            .filter(|(v, _)| version.is_empty() || **v == version)
            .flat_map(|(_, pool)| pool.members().iter())
            .map(|member| Arc::clone(&member.instance))
            .collect();
        Ok(Listed {
            items,
            revision: state.revision(),
        })
    }

    // Versions.

    /// Sets the version of tenants with no other source.
    #[tracing::instrument(name = "admin.set_default_version", skip_all, fields(service = %service, version = %version))]
    pub async fn set_default_version(
        &self,
        service: String,
        version: String,
        force: bool,
        actor: &Actor,
    ) -> Result<Commit, Error> {
        self.commit(
            Mutation::SetDefaultVersion {
                service,
                version,
                force,
            },
            actor,
        )
        .await
    }

    /// Pins a tenant to a version; with schema migrations on, only once its schema is ready
    /// (migrating first when asked).
    #[tracing::instrument(name = "admin.set_tenant_version", skip_all, fields(tenant = %request.tenant_id, service = %request.service, version = %request.version, previous_version = tracing::field::Empty, revision = tracing::field::Empty))]
    pub async fn set_tenant_version(
        &self,
        request: SetTenantVersion,
        actor: &Actor,
    ) -> Result<VersionSwitch, Error> {
        if request.migrate {
            // Asking for a migration on a router that cannot run one is refused, not ignored.
            self.schemas()?;
        }
        if let Some(schemas) = &self.schemas {
            let state = self.replica.current();
            if let Some(tenant) = state.tenant(&request.tenant_id)
                && state.service(&request.service).is_some()
            {
                schemas
                    .gate(
                        &tenant.tenant,
                        &request.service,
                        &request.version,
                        request.migrate,
                    )
                    .await?;
            }
        }
        let commit = self
            .commit(
                Mutation::SetTenantVersion {
                    tenant_id: request.tenant_id,
                    service: request.service,
                    version: request.version,
                    expected_version: request.expected_version,
                    force: request.force,
                },
                actor,
            )
            .await?;
        let previous_version = match commit.outcome {
            Outcome::Reassigned { previous_version } => previous_version,
            _ => String::new(),
        };
        let span = tracing::Span::current();
        span.record("revision", commit.revision);
        span.record("previous_version", previous_version.as_str());
        Ok(VersionSwitch {
            revision: commit.revision,
            previous_version,
        })
    }

    /// Removes a tenant's pin; returns the revision and whether there was one.
    #[tracing::instrument(name = "admin.clear_tenant_version", skip_all, fields(tenant = %tenant_id, service = %service))]
    pub async fn clear_tenant_version(
        &self,
        tenant_id: String,
        service: String,
        actor: &Actor,
    ) -> Result<(u64, bool), Error> {
        let commit = self
            .commit(Mutation::ClearTenantVersion { tenant_id, service }, actor)
            .await?;
        Ok((
            commit.revision,
            matches!(commit.outcome, Outcome::Cleared { existed: true }),
        ))
    }

    /// A tenant's version of every service, and why.
    pub fn tenant_services(&self, tenant_id: &str) -> Result<TenantServices, Error> {
        validate::name("tenant_id", tenant_id)?;
        let state = self.replica.current();
        let tenant = state
            .tenant(tenant_id)
            .ok_or_else(|| not_found(Entity::Tenant, tenant_id))?;
        let services = state
            .services()
            .map(|service| {
                let resolution = service.resolve(tenant);
                TenantService {
                    service: service.service.name.clone(),
                    version: resolution.version,
                    source: resolution.source.to_string(),
                    pinned_version: service
                        .pinned_version(tenant)
                        .unwrap_or_default()
                        .to_owned(),
                }
            })
            .collect();
        Ok(TenantServices {
            tenant: tenant.tenant.clone(),
            services,
            revision: state.revision(),
        })
    }

    /// Moves every tenant (or the named ones) of a version to another at once, with an
    /// override that outranks every other source.
    #[tracing::instrument(name = "admin.emergency_rollback", skip_all, fields(service = %request.service, from_version = %request.from_version, to_version = %request.to_version, tenants = request.tenant_ids.len(), dry_run = request.dry_run))]
    pub async fn emergency_rollback(
        &self,
        request: EmergencyRollback,
        actor: &Actor,
    ) -> Result<RollbackResult, Error> {
        let actor = actor.clone().with_reason(&request.reason)?;
        let tenant_ids = validate::names("tenant_ids", request.tenant_ids)?;
        let mutation = Mutation::EmergencyRollback {
            service: request.service,
            from_version: request.from_version,
            to_version: request.to_version,
            tenant_ids,
            force: request.force,
        };
        let (revision, outcome) = if request.dry_run {
            // What would happen now, without committing anything.
            let state = self.replica.current();
            let (_, outcome) = state.apply(&mutation)?;
            (state.revision(), outcome)
        } else {
            let commit = self.commit(mutation, &actor).await?;
            (commit.revision, commit.outcome)
        };
        let (override_id, moved_tenants) = match outcome {
            Outcome::RolledBack {
                override_id,
                moved_tenants,
            } => (override_id, moved_tenants),
            _ => (String::new(), 0),
        };
        if request.dry_run {
            return Ok(RollbackResult {
                revision,
                moved_tenants,
                override_id: String::new(),
            });
        }
        tracing::warn!(revision, %override_id, moved_tenants, actor = ?actor.name, reason = ?actor.reason, "emergency rollback");
        Ok(RollbackResult {
            revision,
            moved_tenants,
            override_id,
        })
    }

    /// Lists overrides, of one service when `service` is not empty.
    pub fn list_overrides(&self, service: &str) -> Result<Listed<Override>, Error> {
        self.per_service(service, |entry| entry.overrides())
    }

    /// Lists what `items` gives of every service, or of `service` when it is not empty.
    fn per_service<T: Clone>(
        &self,
        service: &str,
        items: impl Fn(&ServiceEntry) -> &[T],
    ) -> Result<Listed<T>, Error> {
        validate::optional_name("service", service)?;
        let state = self.replica.current();
        if !service.is_empty() && state.service(service).is_none() {
            return Err(not_found(Entity::Service, service));
        }
        let items = state
            .services()
            .filter(|entry| service.is_empty() || entry.service.name == service)
            .flat_map(|entry| items(entry).iter().cloned())
            .collect();
        Ok(Listed {
            items,
            revision: state.revision(),
        })
    }

    /// Removes an override.
    #[tracing::instrument(name = "admin.clear_override", skip_all, fields(service = %service, override_id = %override_id))]
    pub async fn clear_override(
        &self,
        service: String,
        override_id: String,
        actor: &Actor,
    ) -> Result<Commit, Error> {
        self.commit(
            Mutation::ClearOverride {
                service,
                override_id,
            },
            actor,
        )
        .await
    }

    // Rollouts.

    /// Starts a managed rollout; with schema migrations on, the first step's tenants get the
    /// schema of the new version before they move.
    #[tracing::instrument(name = "admin.start_rollout", skip_all, fields(service = %request.service, to_version = %request.to_version))]
    pub async fn start_rollout(
        &self,
        request: StartRollout,
        actor: &Actor,
    ) -> Result<RolloutView, Error> {
        validate::name("service", &request.service)?;
        validate::name("to_version", &request.to_version)?;
        validate::optional_name("id", &request.id)?;
        let now = audit::now_ms();
        let id = if request.id.is_empty() {
            format!(
                "{}-{}",
                request.to_version,
                self.replica.current().revision() + 1
            )
        } else {
            request.id
        };
        let rollout = Rollout {
            id: id.clone(),
            service: request.service.clone(),
            to_version: request.to_version.clone(),
            basis_points: 0,
            salt: String::new(),
            cohort: request.cohort,
            plan: Some(RolloutPlan {
                from_version: String::new(),
                steps: request.steps,
                interval_ms: request.interval_seconds.saturating_mul(1000),
                analysis: request.analysis,
                phase: RolloutPhase::Running,
                step: 0,
                step_started_ms: now,
                failed_checks: 0,
                decisions: Vec::new(),
            }),
        };
        let mutation = Mutation::StartRollout {
            rollout,
            force: request.force,
        };
        if let Some(schemas) = &self.schemas {
            let state = self.replica.current();
            let (after, _) = state.apply(&mutation)?;
            let refused = schemas
                .prepare_moves(&state, &after, &request.service)
                .await;
            if !refused.is_empty() {
                return Err(Error::new(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "{} tenant(s) of the first step cannot get the schema of {}: {}",
                        refused.len(),
                        request.to_version,
                        refused.join("; ")
                    ),
                ));
            }
        }
        let commit = self.commit(mutation, actor).await?;
        self.rollout_at(&request.service, &id, commit.revision)
    }

    /// A rollout.
    pub fn rollout(&self, service: &str, id: &str) -> Result<RolloutView, Error> {
        validate::name("service", service)?;
        validate::name("id", id)?;
        let revision = self.replica.current().revision();
        self.rollout_at(service, id, revision)
    }

    fn rollout_at(&self, service: &str, id: &str, revision: u64) -> Result<RolloutView, Error> {
        let state = self.replica.current();
        let rollout = state
            .service(service)
            .ok_or_else(|| not_found(Entity::Service, service))?
            .rollouts()
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| not_found(Entity::Rollout, format!("{service}/{id}")))?;
        Ok(RolloutView {
            rollout: rollout.clone(),
            revision,
        })
    }

    /// Lists rollouts, of one service when `service` is not empty.
    pub fn list_rollouts(&self, service: &str) -> Result<Listed<Rollout>, Error> {
        self.per_service(service, |entry| entry.rollouts())
    }

    /// Pauses, resumes, promotes or aborts a rollout, noting who and why.
    #[tracing::instrument(name = "admin.control_rollout", skip_all, fields(service = %service, rollout = %id))]
    pub async fn control_rollout(
        &self,
        service: String,
        id: String,
        event: RolloutEvent,
        force: bool,
        reason: &str,
        actor: &Actor,
    ) -> Result<RolloutView, Error> {
        let actor = actor.clone().with_reason(reason)?;
        validate::name("service", &service)?;
        validate::name("id", &id)?;
        let note = if actor.reason.is_empty() {
            format!("by {}", actor.name)
        } else {
            format!("by {}: {}", actor.name, actor.reason)
        };
        let decision = RolloutDecision {
            at_ms: audit::now_ms(),
            step: 0,
            basis_points: 0,
            event,
            canary: None,
            baseline: None,
            note,
        };
        let commit = self
            .commit(
                Mutation::ControlRollout {
                    service: service.clone(),
                    rollout_id: id.clone(),
                    decision,
                    force,
                },
                &actor,
            )
            .await?;
        self.rollout_at(&service, &id, commit.revision)
    }

    // Experiments.

    /// Creates an experiment; an id already in use is refused.
    #[tracing::instrument(name = "admin.create_experiment", skip_all, fields(service = %service, experiment = %id))]
    pub async fn create_experiment(
        &self,
        service: String,
        id: String,
        variants: Vec<Variant>,
        cohort: Cohort,
        actor: &Actor,
    ) -> Result<ExperimentView, Error> {
        validate::name("service", &service)?;
        validate::name("id", &id)?;
        let experiment = Experiment {
            id: id.clone(),
            service: service.clone(),
            salt: format!("{service}/{id}"),
            variants,
            cohort,
            sticky: Default::default(),
        };
        let mutation = Mutation::CreateExperiment { experiment };
        self.commit_experiment(&service, &id, mutation, actor).await
    }

    /// Changes an experiment's variants.
    #[tracing::instrument(name = "admin.update_experiment", skip_all, fields(service = %service, experiment = %id))]
    pub async fn update_experiment(
        &self,
        service: String,
        id: String,
        variants: Vec<Variant>,
        rebalance: bool,
        actor: &Actor,
    ) -> Result<ExperimentView, Error> {
        let mutation = Mutation::UpdateExperiment {
            service: service.clone(),
            experiment_id: id.clone(),
            variants,
            rebalance,
        };
        self.commit_experiment(&service, &id, mutation, actor).await
    }

    /// Commits a change of experiment `id` of `service`; answers it as it is after.
    async fn commit_experiment(
        &self,
        service: &str,
        id: &str,
        mutation: Mutation,
        actor: &Actor,
    ) -> Result<ExperimentView, Error> {
        let commit = self.commit(mutation, actor).await?;
        self.experiment_at(service, id, commit.revision)
    }

    /// An experiment.
    pub fn experiment(&self, service: &str, id: &str) -> Result<ExperimentView, Error> {
        validate::name("service", service)?;
        validate::name("id", id)?;
        let revision = self.replica.current().revision();
        self.experiment_at(service, id, revision)
    }

    fn experiment_at(
        &self,
        service: &str,
        id: &str,
        revision: u64,
    ) -> Result<ExperimentView, Error> {
        let state = self.replica.current();
        let experiment = state
            .service(service)
            .ok_or_else(|| not_found(Entity::Service, service))?
            .experiments()
            .iter()
            .find(|e| e.id == id)
            .ok_or_else(|| not_found(Entity::Experiment, format!("{service}/{id}")))?;
        let mut tenants_per_variant: HashMap<String, u64> = experiment
            .variants
            .iter()
            .map(|v| (v.name.clone(), 0))
            .collect();
        for entry in state.tenants_after(None).filter(|t| t.tenant.active) {
            if let Some(variant) = experiment.variant_for(&entry.tenant) {
                *tenants_per_variant.entry(variant.name.clone()).or_default() += 1;
            }
        }
        Ok(ExperimentView {
            experiment: experiment.clone(),
            tenants_per_variant,
            revision,
        })
    }

    /// Ends an experiment.
    #[tracing::instrument(name = "admin.stop_experiment", skip_all, fields(service = %service, experiment = %id))]
    pub async fn stop_experiment(
        &self,
        service: String,
        id: String,
        actor: &Actor,
    ) -> Result<Commit, Error> {
        self.commit(
            Mutation::RemoveExperiment {
                service,
                experiment_id: id,
            },
            actor,
        )
        .await
    }

    // The audit trail.

    /// Reads the audit trail in pages.
    pub async fn events(&self, query: &EventQuery) -> Result<EventPage, Error> {
        validate::optional_name("tenant_id", &query.tenant_id)?;
        validate::optional_name("service", &query.service)?;
        let limit = match query.limit as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let mut events = Vec::new();
        let mut reply_bytes = 0;
        let mut at = query.since_revision;
        // Reads the log in pages until the page is full or the log ends; at most this many
        // changes are scanned per call, so a narrow filter over a long log answers in parts.
        let mut scanned = 0;
        while events.len() < limit
            && scanned < MAX_EVENTS_SCANNED
            && reply_bytes < MAX_EVENT_PAGE_BYTES
        {
            let changes = self
                .replica
                .store()
                .changes_after(at, MAX_PAGE, Duration::ZERO)
                .await?;
            let Some(last) = changes.last() else { break };
            at = last.revision;
            scanned += changes.len();
            for change in changes {
                let (tenant_id, service) = audit::subject(&change.mutation);
                let kind = audit::kind(&change.mutation);
                let tenant_matches = query.tenant_id.is_empty()
                    || tenant_id == query.tenant_id
                    || (tenant_id.is_empty() && !service.is_empty());
                let service_matches = query.service.is_empty() || service == query.service;
                if !(tenant_matches && service_matches) {
                    continue;
                }
                // About the bytes the event takes on the wire.
                reply_bytes +=
                    32 + change.meta.text_bytes() + kind.len() + tenant_id.len() + service.len();
                let event = Event {
                    revision: change.revision,
                    at_ms: change.meta.at_ms,
                    actor: change.meta.actor,
                    reason: change.meta.reason,
                    kind: kind.to_owned(),
                    tenant_id,
                    service,
                    before: change.meta.before,
                    after: change.meta.after,
                };
                events.push(event);
                // A full page, or a reply as large as one reply may be: the rest is the next page.
                if events.len() == limit || reply_bytes >= MAX_EVENT_PAGE_BYTES {
                    at = change.revision;
                    break;
                }
            }
        }
        Ok(EventPage {
            events,
            next_revision: at,
        })
    }

    // Schema migrations.

    /// Starts upgrading tenants' schemas in the background, or plans it (dry run).
    #[tracing::instrument(name = "admin.upgrade_schema", skip_all, fields(service = %request.service, target_version = %request.target_version, dry_run = request.dry_run))]
    pub async fn upgrade_schema(&self, request: UpgradeSchema) -> Result<UpgradeStarted, Error> {
        let schemas = self.schemas()?;
        validate::name("service", &request.service)?;
        let catalog = schemas
            .migrator()
            .catalog()
            .service(&request.service)
            .ok_or_else(|| SchemaError::NoCatalog {
                service: request.service.clone(),
            })?;
        let target = match request.target_schema {
            Some(target) => target,
            None => {
                validate::name("target_version", &request.target_version)?;
                catalog
                    .required_for(&request.target_version)
                    .ok_or_else(|| {
                        not_found(
                            Entity::Version,
                            format!(
                                "{}/{} in the migration manifest",
                                request.service, request.target_version
                            ),
                        )
                    })?
            }
        };
        if target > catalog.latest() {
            return Err(SchemaError::UnknownSchemaVersion {
                service: request.service.clone(),
                version: target,
            }
            .into());
        }
        let state = self.replica.current();
        let tenants: Vec<Tenant> = if request.tenant_ids.is_empty() {
            state
                .tenants_after(None)
                .filter(|t| t.tenant.active && request.cohort.contains(&t.tenant))
                .map(|t| t.tenant.clone())
                .collect()
        } else {
            let ids = validate::names("tenant_ids", request.tenant_ids)?;
            ids.iter()
                .map(|id| {
                    state
                        .tenant(id)
                        .map(|t| t.tenant.clone())
                        .ok_or_else(|| not_found(Entity::Tenant, id))
                })
                .collect::<Result<_, _>>()?
        };
        if !request.dry_run {
            let upgrade_id = schemas.start(tenants, &request.service, target);
            return Ok(UpgradeStarted {
                upgrade_id,
                target_schema: target,
                plans: Vec::new(),
            });
        }
        let mut plans = Vec::with_capacity(tenants.len());
        for tenant in &tenants {
            let plan = schemas
                .migrator()
                .plan(tenant, &request.service, target)
                .await;
            plans.push(TenantPlan {
                tenant_id: tenant.id.clone(),
                plan: plan.map_err(|err| err.to_string()),
            });
        }
        Ok(UpgradeStarted {
            upgrade_id: String::new(),
            target_schema: target,
            plans,
        })
    }

    /// A schema upgrade started on this router.
    pub fn schema_upgrade(&self, id: &str) -> Result<Arc<Upgrade>, Error> {
        validate::name("upgrade_id", id)?;
        self.schemas()?.upgrade(id).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("schema upgrade '{id}' not found on this router"),
            )
        })
    }

    /// A tenant's schema of one service, or of every service with a catalog.
    pub async fn tenant_schema(
        &self,
        tenant_id: &str,
        service: &str,
    ) -> Result<Vec<ServiceSchema>, Error> {
        let schemas = self.schemas()?;
        validate::name("tenant_id", tenant_id)?;
        validate::optional_name("service", service)?;
        let state = self.replica.current();
        let tenant = state
            .tenant(tenant_id)
            .ok_or_else(|| not_found(Entity::Tenant, tenant_id))?;
        let catalogs: Vec<_> = schemas
            .migrator()
            .catalog()
            .services()
            .filter(|c| service.is_empty() || c.service == service)
            .collect();
        if !service.is_empty() && catalogs.is_empty() {
            return Err(SchemaError::NoCatalog {
                service: service.to_owned(),
            }
            .into());
        }
        let mut services = Vec::new();
        for catalog in catalogs {
            let status = schemas
                .migrator()
                .status(&tenant.tenant, &catalog.service)
                .await?;
            services.push(service_schema(&state, tenant, catalog, status));
        }
        Ok(services)
    }

    /// Acknowledges a tenant's schema of one service as it is: applied migrations edited since
    /// take the catalog's checksums, and a migration left half-applied (MySQL) resumes at the
    /// statement that did not complete on the next upgrade. Returns the history rows changed
    /// and the schema after.
    pub async fn repair_tenant_schema(
        &self,
        tenant_id: &str,
        service: &str,
        actor: &Actor,
    ) -> Result<(u32, ServiceSchema), Error> {
        let schemas = self.schemas()?;
        validate::name("tenant_id", tenant_id)?;
        validate::name("service", service)?;
        let state = self.replica.current();
        let tenant = state
            .tenant(tenant_id)
            .ok_or_else(|| not_found(Entity::Tenant, tenant_id))?;
        let catalog = schemas
            .migrator()
            .catalog()
            .service(service)
            .ok_or_else(|| SchemaError::NoCatalog {
                service: service.to_owned(),
            })?;
        let changed = schemas.migrator().repair(&tenant.tenant, service).await?;
        tracing::warn!(actor = ?actor.name, tenant = %tenant_id, %service, changed, "repaired a tenant's schema history");
        let status = schemas.migrator().status(&tenant.tenant, service).await?;
        Ok((changed, service_schema(&state, tenant, catalog, status)))
    }

    // The store.

    /// Follows the store's history after an operator's decision, giving up `retired`.
    pub async fn adopt_store_history(
        &self,
        retired: &str,
        actor: &Actor,
    ) -> Result<Adoption, Error> {
        validate::optional_name("retired_history", retired)?;
        tracing::warn!(actor = ?actor.name, %retired, "adopting the store's history");
        Ok(self.replica.adopt_store_history(retired).await?)
    }
}
