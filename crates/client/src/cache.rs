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
use routing_core::balance::{InstanceLoad, Member, PickRequest, Pool};
use routing_core::{Instance, Strategy};

use crate::ClientError;

/// One (tenant, service) pair as held locally.
#[derive(Debug)]
pub(crate) struct Assignment {
    pub(crate) tenant_id: String,
    pub(crate) service: String,
    pub(crate) version: String,
    pub(crate) source: String,
    pub(crate) strategy: Strategy,
    pub(crate) region: String,
    pub(crate) pool: Arc<Pool>,
}

/// A tenant's assignments, sorted by service.
#[derive(Debug, Clone, Default)]
pub(crate) struct TenantAssignments {
    services: Vec<Arc<Assignment>>,
}

impl TenantAssignments {
    fn get(&self, service: &str) -> Option<&Arc<Assignment>> {
        self.services
            .binary_search_by(|a| a.service.as_str().cmp(service))
            .ok()
            .map(|index| &self.services[index])
    }

    fn upsert(&mut self, assignment: Arc<Assignment>) {
        match self
            .services
            .binary_search_by(|a| a.service.as_str().cmp(&assignment.service))
        {
            Ok(index) => self.services[index] = assignment,
            Err(index) => self.services.insert(index, assignment),
        }
    }

    fn remove(&mut self, service: &str) -> bool {
        match self
            .services
            .binary_search_by(|a| a.service.as_str().cmp(service))
        {
            Ok(index) => {
                self.services.remove(index);
                true
            }
            Err(_) => false,
        }
    }
}

/// The assignments held at one revision.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cache {
    pub(crate) revision: u64,
    /// Whether a whole snapshot has arrived (before that the cache is empty).
    pub(crate) synced: bool,
    pub(crate) pairs: usize,
    tenants: imbl::HashMap<String, Arc<TenantAssignments>>,
}

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
    assignment: Arc<Assignment>,
    instance: Arc<Instance>,
    /// The live load of a locally picked instance (ends its in-flight request on report).
    load: Option<Arc<InstanceLoad>>,
    revision: u64,
    origin: Origin,
}

impl Decision {
    /// The tenant.
    pub fn tenant_id(&self) -> &str {
        &self.assignment.tenant_id
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
        &self.instance.id
    }

    /// The picked instance's `host:port`.
    pub fn address(&self) -> &str {
        &self.instance.address
    }

    /// The picked instance's region.
    pub fn region(&self) -> &str {
        &self.instance.region
    }

    /// The routing-state revision that decided.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Where the decision was made.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    pub(crate) fn load(&self) -> Option<&Arc<InstanceLoad>> {
        self.load.as_ref()
    }

    pub(crate) fn pool(&self) -> Option<&Arc<Pool>> {
        (self.origin == Origin::Local).then_some(&self.assignment.pool)
    }

    /// A decision a router made.
    pub(crate) fn from_server(request: &RouteRequest<'_>, response: pb::RouteResponse) -> Decision {
        let instance = Instance {
            id: response.instance_id,
            address: response.address,
            service: request.service.to_owned(),
            version: response.version.clone(),
            weight: 1,
            region: String::new(),
            zone: String::new(),
            metadata: Default::default(),
            healthy: true,
            health_score: 100,
        };
        let assignment = Assignment {
            tenant_id: request.tenant_id.to_owned(),
            service: request.service.to_owned(),
            version: response.version,
            source: response.source,
            strategy: request.strategy.unwrap_or_default(),
            region: request.region.to_owned(),
            pool: Arc::new(Pool::new([], None)),
        };
        Decision {
            assignment: Arc::new(assignment),
            instance: Arc::new(instance),
            load: None,
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
        let assignment = self
            .tenants
            .get(request.tenant_id)
            .and_then(|tenant| tenant.get(request.service))
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
        let picked = assignment.pool.pick(&pick).map(|member| {
            if avoid.is_empty() || !avoid.contains(&member.instance.id) {
                member
            } else {
                avoiding(&assignment.pool, member, avoid, now_ms)
            }
        });
        let Some(member) = picked else {
            return Err(ClientError::NoHealthyInstance {
                service: assignment.service.clone(),
                version: assignment.version.clone(),
            });
        };
        member.load.start();
        Ok(Decision {
            assignment: Arc::clone(assignment),
            instance: Arc::clone(&member.instance),
            load: Some(Arc::clone(&member.load)),
            revision: self.revision,
            origin: Origin::Local,
        })
    }

    /// Whether the pair is held locally.
    pub(crate) fn holds(&self, tenant_id: &str, service: &str) -> bool {
        self.tenants
            .get(tenant_id)
            .is_some_and(|tenant| tenant.get(service).is_some())
    }
}

/// The first eligible member after `picked` (in id order, wrapping) that is neither avoided nor
/// ejected; `picked` itself when there is none.
fn avoiding<'p>(pool: &'p Pool, picked: &'p Member, avoid: &[String], now_ms: u64) -> &'p Member {
    let members = pool.members();
    let start = members
        .iter()
        .position(|m| m.instance.id == picked.instance.id)
        .unwrap_or(0);
    (1..members.len())
        .map(|offset| &members[(start + offset) % members.len()])
        .find(|m| {
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
    /// Messages of a revision not yet complete (`partial`).
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    revision: u64,
    snapshot: bool,
    upserts: Vec<pb::Assignment>,
    removals: Vec<pb::AssignmentKey>,
    cause: String,
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
        builder.pending = None;
        builder.current.synced = false;
        builder
    }

    /// Forgets a revision left incomplete by a broken stream.
    pub(crate) fn drop_pending(&mut self) {
        self.pending = None;
    }

    /// Takes one message; returns what changed once its revision is complete.
    pub(crate) fn accept(&mut self, update: pb::AssignmentUpdate) -> Option<Applied> {
        let same = self
            .pending
            .as_ref()
            .is_some_and(|p| p.revision == update.revision && p.snapshot == update.snapshot);
        if !same {
            // A new revision starts (anything pending and incomplete was cut off).
            self.pending = Some(Pending {
                revision: update.revision,
                snapshot: update.snapshot,
                upserts: Vec::new(),
                removals: Vec::new(),
                cause: String::new(),
            });
        }
        let pending = self.pending.as_mut()?;
        pending.upserts.extend(update.upserts);
        pending.removals.extend(update.removals);
        if pending.cause.is_empty() {
            pending.cause = update.cause;
        }
        if update.partial {
            return None;
        }
        let pending = self.pending.take()?;
        Some(self.apply(pending))
    }

    fn apply(&mut self, pending: Pending) -> Applied {
        let applied = Applied {
            revision: pending.revision,
            snapshot: pending.snapshot,
            upserts: pending.upserts.len(),
            removals: pending.removals.len(),
            cause: pending.cause,
        };
        let mut tenants = if pending.snapshot {
            imbl::HashMap::new()
        } else {
            self.current.tenants.clone()
        };
        let mut pools = if pending.snapshot {
            HashMap::new()
        } else {
            self.pools.clone()
        };
        let mut pairs = if pending.snapshot {
            0
        } else {
            self.current.pairs
        };
        let mut touched: HashMap<String, TenantAssignments> = HashMap::new();
        for message in pending.upserts {
            let pool = self.pool_for(&mut pools, &message);
            let assignment = Arc::new(Assignment {
                strategy: strategy(message.strategy),
                pool,
                tenant_id: message.tenant_id,
                service: message.service,
                version: message.version,
                source: message.source,
                region: message.region,
            });
            let entry = touched
                .entry(assignment.tenant_id.clone())
                .or_insert_with(|| {
                    tenants
                        .get(&assignment.tenant_id)
                        .map(|t| TenantAssignments::clone(t))
                        .unwrap_or_default()
                });
            if entry.get(&assignment.service).is_none() {
                pairs += 1;
            }
            entry.upsert(assignment);
        }
        for key in pending.removals {
            let entry = touched.entry(key.tenant_id.clone()).or_insert_with(|| {
                tenants
                    .get(&key.tenant_id)
                    .map(|t| TenantAssignments::clone(t))
                    .unwrap_or_default()
            });
            if entry.remove(&key.service) {
                pairs -= 1;
            }
        }
        for (tenant_id, entry) in touched {
            if entry.services.is_empty() {
                tenants.remove(&tenant_id);
            } else {
                tenants.insert(tenant_id, Arc::new(entry));
            }
        }
        self.pools = pools;
        self.current = Cache {
            revision: applied.revision,
            synced: self.current.synced || applied.snapshot,
            pairs,
            tenants,
        };
        applied
    }

    /// Returns the shared pool of the assignment's (service, version) holding exactly its
    /// instances: the known one when unchanged, else a new one that keeps the live load of the
    /// instances it shares with the previous pool.
    fn pool_for(
        &self,
        pools: &mut HashMap<(String, String), Arc<Pool>>,
        message: &pb::Assignment,
    ) -> Arc<Pool> {
        let instances: Vec<Instance> = message
            .instances
            .iter()
            .map(|address| Instance {
                id: address.instance_id.clone(),
                address: address.address.clone(),
                service: message.service.clone(),
                version: message.version.clone(),
                weight: address.weight,
                region: address.region.clone(),
                zone: address.zone.clone(),
                metadata: Default::default(),
                healthy: address.healthy,
                health_score: u8::try_from(address.health_score.min(100)).unwrap_or(100),
            })
            .collect();
        let key = (message.service.clone(), message.version.clone());
        if let Some(pool) = pools.get(&key) {
            let members = pool.members();
            let mut sorted: Vec<&Instance> = instances.iter().collect();
            sorted.sort_by(|a, b| a.id.cmp(&b.id));
            if members.len() == sorted.len()
                && members
                    .iter()
                    .zip(&sorted)
                    .all(|(member, instance)| *member.instance == **instance)
            {
                return Arc::clone(pool);
            }
        }
        // Live load carries over from this revision's pool, or the last cache's.
        let previous = pools
            .get(&key)
            .cloned()
            .or_else(|| self.pools.get(&key).cloned());
        let pool = Arc::new(Pool::new(
            instances.into_iter().map(Arc::new),
            previous.as_deref(),
        ));
        pools.insert(key, Arc::clone(&pool));
        pool
    }
}

/// The routing-core strategy of a proto value; round robin for values this client does not know
/// (a newer router's strategy).
fn strategy(value: i32) -> Strategy {
    match pb::Strategy::try_from(value) {
        Ok(pb::Strategy::Random) => Strategy::Random,
        Ok(pb::Strategy::WeightedRoundRobin) => Strategy::WeightedRoundRobin,
        Ok(pb::Strategy::LeastConnections) => Strategy::LeastConnections,
        Ok(pb::Strategy::HealthAware) => Strategy::HealthAware,
        Ok(pb::Strategy::ConsistentHash) => Strategy::ConsistentHash,
        Ok(pb::Strategy::RoundRobin | pb::Strategy::Unspecified) | Err(_) => Strategy::RoundRobin,
    }
}

/// Returns the proto value of a strategy.
pub(crate) fn strategy_to_proto(strategy: Strategy) -> pb::Strategy {
    match strategy {
        Strategy::RoundRobin => pb::Strategy::RoundRobin,
        Strategy::Random => pb::Strategy::Random,
        Strategy::WeightedRoundRobin => pb::Strategy::WeightedRoundRobin,
        Strategy::LeastConnections => pb::Strategy::LeastConnections,
        Strategy::HealthAware => pb::Strategy::HealthAware,
        Strategy::ConsistentHash => pb::Strategy::ConsistentHash,
    }
}

#[cfg(test)]
mod tests;
