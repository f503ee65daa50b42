//! The local copy of the assignments a client follows, and decisions made from it.
//!
//! One task (the watch, see `follow.rs`) writes: it folds each revision's updates into a new
//! [`Cache`] and publishes it whole. Readers load the published cache and decide with
//! `routing-core`'s pools, exactly as the server does: the same strategies, region preference and
//! ejections. Pools are shared by every tenant on the same (service, version) and keep their live
//! load (in-flight counts, ejections) across revisions, as on the server.

use std::collections::HashMap;
use std::sync::Arc;

use greyrouter_proto::v1 as pb;
use routing_core::balance::{Member, Members, PickRequest, Pool};
use routing_core::{Instance, Strategy};

use crate::ClientError;

/// What a (tenant, service) pair is assigned, without the tenant: every tenant with the same
/// version, source and region of a service shares one, so decisions read a few hot objects
/// rather than one per pair.
#[derive(Debug)]
pub(crate) struct Assignment {
    pub(crate) service: String,
    pub(crate) version: String,
    pub(crate) source: String,
    pub(crate) strategy: Strategy,
    pub(crate) region: String,
    pub(crate) pool: Arc<Pool>,
}

/// A tenant's assignments, by service index (see [`Cache::service_index`]): one allocation, so
/// that a decision reads the tenant's slot without another pointer to follow.
type TenantAssignments = Arc<[Option<Arc<Assignment>>]>;

/// A tenant's assignments while a revision is applied.
#[derive(Debug, Default)]
struct Slots(Vec<Option<Arc<Assignment>>>);

impl Slots {
    fn of(tenant: Option<&TenantAssignments>) -> Slots {
        Slots(tenant.map(|t| t.to_vec()).unwrap_or_default())
    }

    /// Sets the service's assignment; returns whether the tenant had none for it.
    fn upsert(&mut self, index: usize, assignment: Arc<Assignment>) -> bool {
        if self.0.len() <= index {
            self.0.resize(index + 1, None);
        }
        self.0[index].replace(assignment).is_none()
    }

    /// Drops the service's assignment; returns whether there was one.
    fn remove(&mut self, index: usize) -> bool {
        self.0.get_mut(index).and_then(Option::take).is_some()
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

/// The assignments held at one revision.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cache {
    pub(crate) revision: u64,
    /// Whether a whole snapshot has arrived (before that the cache is empty).
    pub(crate) synced: bool,
    pub(crate) pairs: usize,
    /// Every service name seen, sorted, with its index into [`TenantAssignments`]: a short list
    /// every decision searches, so it stays in the CPU cache.
    services: Arc<Vec<(String, usize)>>,
    tenants: Tenants,
}

/// Tenants by id: a persistent map (a revision's copy shares all it did not change) with a fast
/// hasher, the lookup every decision starts with.
type Tenants = imbl::GenericHashMap<
    Arc<str>,
    TenantAssignments,
    foldhash::fast::RandomState,
    imbl::shared_ptr::DefaultSharedPtr,
>;

/// What a request asks of a routing decision.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// The tenant.
    pub tenant_id: &'a str,
    /// The service.
    pub service: &'a str,
    /// Preferred region; the tenant's when empty.
    pub region: &'a str,
    /// Key of the `consistent_hash` strategy; the tenant id when empty.
    pub hash_key: &'a str,
    /// Overrides the service's strategy.
    pub strategy: Option<Strategy>,
}

impl<'a> RouteRequest<'a> {
    /// A request for a tenant's instance of a service, with the service's settings.
    pub fn new(tenant_id: &'a str, service: &'a str) -> Self {
        RouteRequest {
            tenant_id,
            service,
            region: "",
            hash_key: "",
            strategy: None,
        }
    }

    /// Prefers instances of this region.
    pub fn region(mut self, region: &'a str) -> Self {
        self.region = region;
        self
    }

    /// Keys the `consistent_hash` strategy (a user or session id keeps its instance).
    pub fn hash_key(mut self, hash_key: &'a str) -> Self {
        self.hash_key = hash_key;
        self
    }

    /// Uses this strategy instead of the service's.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = Some(strategy);
        self
    }
}

/// Where a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From the local copy, without a network call.
    Local,
    /// By a router's `Route` (the pair is not held locally).
    Server,
}

/// A routing decision: the instance to call, its version and why.
#[derive(Debug, Clone)]
pub struct Decision {
    tenant_id: Arc<str>,
    assignment: Arc<Assignment>,
    /// The picked member's position in the assignment's pool.
    member: usize,
    /// Whether the pick counted an in-flight request (`least_connections`) that the report ends
    /// (a count that no report ends decays, see `routing_core::balance::InstanceLoad`).
    started: bool,
    revision: u64,
    origin: Origin,
}

impl Decision {
    fn instance(&self) -> &Instance {
        &member(&self.assignment.pool, self.member).instance
    }

    /// The tenant.
    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    /// The service.
    pub fn service(&self) -> &str {
        &self.assignment.service
    }

    /// The version the tenant is on.
    pub fn version(&self) -> &str {
        &self.assignment.version
    }

    /// Why that version: `pin`, `override:<id>`, `experiment:<id>:<variant>`, `rollout:<id>` or
    /// `default`.
    pub fn source(&self) -> &str {
        &self.assignment.source
    }

    /// The picked instance's id.
    pub fn instance_id(&self) -> &str {
        &self.instance().id
    }

    /// The picked instance's `host:port`.
    pub fn address(&self) -> &str {
        &self.instance().address
    }

    /// The picked instance's region (empty for a router's decision).
    pub fn region(&self) -> &str {
        &self.instance().region
    }

    /// The routing-state revision that decided.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Where the decision was made.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The locally picked member (instance and live load).
    pub(crate) fn member(&self) -> Option<&Member> {
        (self.origin == Origin::Local).then(|| member(&self.assignment.pool, self.member))
    }

    /// The live load of a locally picked instance.
    #[cfg(test)]
    pub(crate) fn load(&self) -> Option<&Arc<routing_core::balance::InstanceLoad>> {
        self.member().map(|member| &member.load)
    }

    /// Whether the pick counted an in-flight request.
    pub(crate) fn started(&self) -> bool {
        self.started
    }

    /// The pool a local decision picked from.
    pub(crate) fn pool(&self) -> Option<&Arc<Pool>> {
        (self.origin == Origin::Local).then_some(&self.assignment.pool)
    }

    /// A decision a router made.
    pub(crate) fn from_server(request: &RouteRequest<'_>, response: pb::RouteResponse) -> Decision {
        let instance = Instance::new(
            response.instance_id,
            response.address,
            request.service,
            response.version.clone(),
        );
        let assignment = Assignment {
            service: request.service.to_owned(),
            version: response.version,
            source: response.source,
            strategy: request.strategy.unwrap_or_default(),
            region: request.region.to_owned(),
            pool: Arc::new(Pool::new([Arc::new(instance)], None)),
        };
        Decision {
            tenant_id: Arc::from(request.tenant_id),
            assignment: Arc::new(assignment),
            member: 0,
            started: false,
            revision: response.revision,
            origin: Origin::Server,
        }
    }
}

impl Cache {
    /// Decides from the local copy. `avoid` names instances not to pick when another eligible
    /// one exists (instances that failed earlier attempts of the same call).
    pub(crate) fn route(
        &self,
        request: &RouteRequest<'_>,
        entropy: u64,
        now_ms: u64,
        avoid: &[String],
    ) -> Result<Decision, ClientError> {
        let (tenant_id, assignment) = self
            .service_index(request.service)
            .and_then(|index| {
                let (id, slots) = self.tenants.get_key_value(request.tenant_id)?;
                Some((id, slots.get(index)?.as_ref()?))
            })
            .ok_or_else(|| ClientError::NotCached {
                tenant_id: request.tenant_id.to_owned(),
                service: request.service.to_owned(),
            })?;
        let pick = PickRequest {
            strategy: request.strategy.unwrap_or(assignment.strategy),
            region: if request.region.is_empty() {
                &assignment.region
            } else {
                request.region
            },
            hash_key: if request.hash_key.is_empty() {
                request.tenant_id
            } else {
                request.hash_key
            },
            entropy,
            now_ms,
        };
        let members = assignment.pool.members();
        let picked = assignment.pool.pick_position(&pick).map(|position| {
            if avoid.is_empty() || !avoid.contains(&member(&assignment.pool, position).instance.id)
            {
                position
            } else {
                avoiding(members, position, avoid, now_ms)
            }
        });
        let Some(position) = picked else {
            return Err(ClientError::NoHealthyInstance {
                service: assignment.service.clone(),
                version: assignment.version.clone(),
            });
        };
        // Only least_connections reads in-flight counts: other picks skip the shared counter.
        // A start the caller never reports stops counting after IN_FLIGHT_TIMEOUT_MS to twice
        // that (see `InstanceLoad`).
        let started = pick.strategy == Strategy::LeastConnections;
        if started {
            member(&assignment.pool, position).load.start(now_ms);
        }
        Ok(Decision {
            tenant_id: Arc::clone(tenant_id),
            assignment: Arc::clone(assignment),
            member: position,
            started,
            revision: self.revision,
            origin: Origin::Local,
        })
    }

    /// Returns the index of a service in every tenant's assignments.
    fn service_index(&self, service: &str) -> Option<usize> {
        find_service(&self.services, service)
    }

    /// Whether the pair is held locally.
    pub(crate) fn holds(&self, tenant_id: &str, service: &str) -> bool {
        self.service_index(service)
            .and_then(|index| self.tenants.get(tenant_id)?.get(index)?.as_ref())
            .is_some()
    }
}

/// The member at a position a pick named (from the plain copy picks use).
fn member(pool: &Pool, position: usize) -> &Member {
    pool.member_at(position)
        .unwrap_or_else(|| &pool.members()[position])
}

/// The position of the first eligible member after `picked` (in id order, wrapping) that is
/// neither avoided nor ejected; `picked` itself when there is none.
fn avoiding(members: &Members, picked: usize, avoid: &[String], now_ms: u64) -> usize {
    (1..members.len())
        .map(|offset| (picked + offset) % members.len())
        .find(|&position| {
            let m = &members[position];
            m.instance.is_eligible()
                && !m.load.is_ejected(now_ms)
                && !avoid.contains(&m.instance.id)
        })
        .unwrap_or(picked)
}

/// Builds caches from watch updates: the writer's side.
#[derive(Debug, Default)]
pub(crate) struct CacheBuilder {
    current: Cache,
    /// Pools by (service, version), shared by every tenant on that version.
    pools: HashMap<(String, String), Arc<Pool>>,
    /// Assignments by (service, version, source, strategy, region), shared by every tenant
    /// they apply to; an entry is replaced when its pool changes.
    shared: HashMap<(String, String, String, Strategy, String), Arc<Assignment>>,
    /// Messages of a revision not yet complete (`partial`).
    pending: Option<Pending>,
    /// The history the revisions held belong to (sent back when resuming).
    history: String,
}

/// A revision being received: its upserts are folded in as each message arrives (a snapshot
/// of every tenant is never held as messages), its removals wait for the last message (a
/// revision's upserts come before its removals).
#[derive(Debug)]
struct Pending {
    revision: u64,
    snapshot: bool,
    cause: String,
    history: String,
    /// The tenant map the revision starts from (empty for a snapshot).
    tenants: Tenants,
    /// The tenants the revision changed so far, with their new assignments.
    touched: HashMap<String, Slots>,
    pairs: usize,
    services: Arc<Vec<(String, usize)>>,
    upserts: usize,
    removals: Vec<pb::AssignmentKey>,
    /// A snapshot's pools before it started: they lend their live load to the new ones, and
    /// come back if the snapshot is cut off.
    previous: HashMap<(String, String), Arc<Pool>>,
}

/// What a complete revision did to the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    pub(crate) revision: u64,
    pub(crate) snapshot: bool,
    pub(crate) upserts: usize,
    pub(crate) removals: usize,
    pub(crate) cause: String,
}

impl CacheBuilder {
    /// Returns the cache built so far.
    pub(crate) fn current(&self) -> &Cache {
        &self.current
    }

    /// Returns a builder that asks for a snapshot next, keeping the pools (and their live load)
    /// and the published cache until the snapshot replaces them.
    pub(crate) fn resync(mut builder: CacheBuilder) -> CacheBuilder {
        builder.discard_pending();
        builder.current.synced = false;
        builder
    }

    /// Returns the history of the revisions held.
    pub(crate) fn history(&self) -> &str {
        &self.history
    }

    /// Forgets a revision left incomplete by a broken stream.
    pub(crate) fn drop_pending(&mut self) {
        self.discard_pending();
    }

    /// Drops an incomplete revision; a cut-off snapshot gives its pools back.
    fn discard_pending(&mut self) {
        if let Some(pending) = self.pending.take()
            && pending.snapshot
        {
            self.pools = pending.previous;
        }
    }

    /// Takes one message; returns what changed once its revision is complete.
    pub(crate) fn accept(&mut self, update: pb::AssignmentUpdate) -> Option<Applied> {
        let same = self
            .pending
            .as_ref()
            .is_some_and(|p| p.revision == update.revision && p.snapshot == update.snapshot);
        if !same {
            // A new revision starts (anything pending and incomplete was cut off).
            self.discard_pending();
            self.pending = Some(self.start(update.revision, update.snapshot));
        }
        let mut pending = self.pending.take()?;
        if !update.history.is_empty() {
            pending.history = update.history;
        }
        if pending.cause.is_empty() {
            pending.cause = update.cause;
        }
        // Instances listed once per version (`instances_by_version`): one pool each, found or
        // built once for the whole message.
        let by_version: Vec<(String, String, Arc<Pool>)> = update
            .versions
            .into_iter()
            .map(|listed| {
                let pool = Self::pool_for(
                    &mut self.pools,
                    &pending.previous,
                    &listed.service,
                    &listed.version,
                    &listed.instances,
                );
                (listed.service, listed.version, pool)
            })
            .collect();
        for message in update.upserts {
            self.stage(&mut pending, message, &by_version);
        }
        pending.removals.extend(update.removals);
        if update.partial {
            self.pending = Some(pending);
            return None;
        }
        Some(self.finish(pending))
    }

    /// Starts receiving a revision.
    fn start(&mut self, revision: u64, snapshot: bool) -> Pending {
        // A snapshot starts the pools afresh; the last ones still lend their live load.
        let previous = if snapshot {
            self.shared.clear();
            std::mem::take(&mut self.pools)
        } else {
            HashMap::new()
        };
        Pending {
            revision,
            snapshot,
            cause: String::new(),
            history: String::new(),
            tenants: if snapshot {
                Tenants::default()
            } else {
                self.current.tenants.clone()
            },
            touched: HashMap::new(),
            pairs: if snapshot { 0 } else { self.current.pairs },
            services: Arc::clone(&self.current.services),
            upserts: 0,
            removals: Vec::new(),
            previous,
        }
    }

    /// Folds one upsert into the revision being received; `by_version` holds the pools of
    /// the versions its message listed apart.
    fn stage(
        &mut self,
        pending: &mut Pending,
        message: pb::Assignment,
        by_version: &[(String, String, Arc<Pool>)],
    ) {
        pending.upserts += 1;
        let listed = by_version
            .iter()
            .find(|(service, version, _)| {
                *service == message.service && *version == message.version
            })
            .filter(|_| message.instances.is_empty());
        let pool = match listed {
            Some((_, _, pool)) => Arc::clone(pool),
            None => Self::pool_for(
                &mut self.pools,
                &pending.previous,
                &message.service,
                &message.version,
                &message.instances,
            ),
        };
        let index = service_index_or_new(&mut pending.services, &message.service);
        let tenant_id = message.tenant_id;
        let assignment = self.share(Assignment {
            strategy: strategy(message.strategy),
            pool,
            service: message.service,
            version: message.version,
            source: message.source,
            region: message.region,
        });
        let tenants = &pending.tenants;
        let entry = pending
            .touched
            .entry(tenant_id)
            .or_insert_with_key(|id| Slots::of(tenants.get(id.as_str())));
        if entry.upsert(index, assignment) {
            pending.pairs += 1;
        }
    }

    /// Applies a complete revision's removals and publishes it.
    fn finish(&mut self, pending: Pending) -> Applied {
        let Pending {
            revision,
            snapshot,
            cause,
            history,
            mut tenants,
            mut touched,
            mut pairs,
            services,
            upserts,
            removals,
            previous: _,
        } = pending;
        let applied = Applied {
            revision,
            snapshot,
            upserts,
            removals: removals.len(),
            cause,
        };
        if !history.is_empty() {
            self.history = history;
        }
        for key in removals {
            let Some(index) = find_service(&services, &key.service) else {
                continue;
            };
            let entry = touched
                .entry(key.tenant_id.clone())
                .or_insert_with(|| Slots::of(tenants.get(key.tenant_id.as_str())));
            if entry.remove(index) {
                pairs -= 1;
            }
        }
        for (tenant_id, entry) in touched {
            if entry.is_empty() {
                tenants.remove(tenant_id.as_str());
            } else {
                tenants.insert(Arc::from(tenant_id), Arc::from(entry.0));
            }
        }
        self.current = Cache {
            revision: applied.revision,
            synced: self.current.synced || applied.snapshot,
            pairs,
            services,
            tenants,
        };
        applied
    }

    /// Returns the shared copy of an assignment (a new one when its pool or anything else
    /// differs).
    fn share(&mut self, assignment: Assignment) -> Arc<Assignment> {
        let key = (
            assignment.service.clone(),
            assignment.version.clone(),
            assignment.source.clone(),
            assignment.strategy,
            assignment.region.clone(),
        );
        match self.shared.get(&key) {
            Some(known) if Arc::ptr_eq(&known.pool, &assignment.pool) => Arc::clone(known),
            _ => {
                let shared = Arc::new(assignment);
                self.shared.insert(key, Arc::clone(&shared));
                shared
            }
        }
    }

    /// Returns the shared pool of the assignment's (service, version) holding exactly its
    /// instances: the one this revision or the last one built when unchanged, else a new one
    /// that keeps the live load of the instances it shares with the one it replaces.
    fn pool_for(
        pools: &mut HashMap<(String, String), Arc<Pool>>,
        previous: &HashMap<(String, String), Arc<Pool>>,
        service: &str,
        version: &str,
        instances: &[pb::InstanceAddress],
    ) -> Arc<Pool> {
        let key = (service.to_owned(), version.to_owned());
        let mut listed: Vec<&pb::InstanceAddress> = instances.iter().collect();
        listed.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        let known = pools.get(&key).or_else(|| previous.get(&key)).cloned();
        if let Some(pool) = known.as_ref().filter(|pool| holds_exactly(pool, &listed)) {
            pools.insert(key, Arc::clone(pool));
            return Arc::clone(pool);
        }
        let instances = listed.into_iter().map(|address| {
            Arc::new(Instance {
                id: address.instance_id.clone(),
                address: address.address.clone(),
                service: service.to_owned(),
                version: version.to_owned(),
                weight: address.weight,
                region: address.region.clone(),
                zone: address.zone.clone(),
                metadata: Default::default(),
                healthy: address.healthy,
                health_score: u8::try_from(address.health_score.min(100)).unwrap_or(100),
            })
        });
        let pool = Arc::new(Pool::new(instances, known.as_deref()));
        pools.insert(key, Arc::clone(&pool));
        pool
    }
}

/// Whether a pool holds exactly these instances (sorted by id), as the watch describes them.
fn holds_exactly(pool: &Pool, listed: &[&pb::InstanceAddress]) -> bool {
    let members = pool.members();
    members.len() == listed.len()
        && members.iter().zip(listed).all(|(member, address)| {
            let instance = &member.instance;
            instance.id == address.instance_id
                && instance.address == address.address
                && instance.weight == address.weight
                && instance.region == address.region
                && instance.zone == address.zone
                && instance.healthy == address.healthy
                && u32::from(instance.health_score) == address.health_score.min(100)
        })
}

/// Returns the index of a service in the sorted list.
fn find_service(services: &[(String, usize)], service: &str) -> Option<usize> {
    services
        .binary_search_by(|(name, _)| name.as_str().cmp(service))
        .ok()
        .map(|found| services[found].1)
}

/// Returns the index of a service, giving a new service the next index (indices never change, so
/// tenants' slots stay valid).
fn service_index_or_new(services: &mut Arc<Vec<(String, usize)>>, service: &str) -> usize {
    match services.binary_search_by(|(name, _)| name.as_str().cmp(service)) {
        Ok(found) => services[found].1,
        Err(at) => {
            let index = services.len();
            Arc::make_mut(services).insert(at, (service.to_owned(), index));
            index
        }
    }
}

/// The routing-core strategy of a proto value; round robin for values this client does not know
/// (a newer router's strategy).
fn strategy(value: i32) -> Strategy {
    greyrouter_proto::domain::strategy("strategy", value)
        .ok()
        .flatten()
        .unwrap_or(Strategy::RoundRobin)
}

/// A local copy of assignments built from `WatchAssignments` updates, without a connection: what
/// a [`Client`](crate::Client) keeps inside, for code that feeds updates itself (a test of a
/// service's routing with fixed assignments, a custom transport).
#[derive(Debug, Default)]
pub struct LocalCopy {
    builder: CacheBuilder,
}

impl LocalCopy {
    /// An empty copy (nothing held, revision 0).
    pub fn new() -> Self {
        LocalCopy::default()
    }

    /// Takes one message of the stream; returns true when it completed a revision (messages
    /// with `partial` set wait for the rest of their revision).
    pub fn apply(&mut self, update: pb::AssignmentUpdate) -> bool {
        self.builder.accept(update).is_some()
    }

    /// The revision held.
    pub fn revision(&self) -> u64 {
        self.builder.current().revision
    }

    /// The (tenant, service) pairs held.
    pub fn len(&self) -> usize {
        self.builder.current().pairs
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides as [`Client::route_local`](crate::Client::route_local) does; `entropy` feeds the
    /// random strategies and `now_ms` (milliseconds since the Unix epoch) the ejections.
    pub fn route(
        &self,
        request: &RouteRequest<'_>,
        entropy: u64,
        now_ms: u64,
    ) -> Result<Decision, ClientError> {
        self.builder.current().route(request, entropy, now_ms, &[])
    }
}

#[cfg(test)]
mod tests;
