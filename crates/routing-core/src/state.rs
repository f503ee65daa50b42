//! The routing state: every tenant, service, instance and assignment rule at one revision, and
//! the pure function that applies a [`Mutation`] to it.
//!
//! The state is persistent: maps are `imbl` trees and entries sit behind `Arc`, so applying a
//! change copies only the path to what changed, old revisions stay valid for readers that hold
//! them, and a clone is O(1). Applying is deterministic: every replica that applies the same
//! mutations in the same order holds the same state.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use crate::analysis::StepAction;
use crate::balance::{Member, PickRequest, Pool};
use crate::error::Entity;
use crate::model::{
    MAX_ROLLOUT_DECISIONS, RolloutDecision, RolloutEvent, RolloutPhase, RolloutPlan,
};
use crate::{
    Experiment, Instance, Override, Resolution, Revision, Rollout, RoutingError, Service, Source,
    Strategy, Tenant, Variant, validate,
};

/// A tenant and its pins (service → version).
#[derive(Debug, Clone)]
pub struct TenantEntry {
    /// The tenant.
    pub tenant: Tenant,
    /// Versions pinned per service.
    pub pins: BTreeMap<String, String>,
}

/// A service, its instances by version, and its assignment rules.
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    /// The service.
    pub service: Service,
    pools: BTreeMap<String, Arc<Pool>>,
    /// Instance id -> version; persistent, so a registration copies a path, not the map.
    instance_versions: OrdMap<String, String>,
    overrides: Vec<Override>,
    rollouts: Vec<Rollout>,
    experiments: Vec<Experiment>,
}

impl ServiceEntry {
    fn new(service: Service) -> Self {
        ServiceEntry {
            service,
            pools: BTreeMap::new(),
            instance_versions: OrdMap::new(),
            overrides: Vec::new(),
            rollouts: Vec::new(),
            experiments: Vec::new(),
        }
    }

    /// Resolves a tenant's version: override > pin > experiment > rollout > default.
    pub fn resolve(&self, tenant: &TenantEntry) -> Resolution {
        let name = &self.service.name;
        let mut resolution = if let Some(version) = tenant.pins.get(name) {
            Resolution {
                version: version.clone(),
                source: Source::Pin,
            }
        } else if let Some((experiment, variant)) = self
            .experiments
            .iter()
            .find_map(|e| e.variant_for(&tenant.tenant).map(|v| (e, v)))
        {
            Resolution {
                version: variant.version.clone(),
                source: Source::Experiment {
                    id: experiment.id.clone(),
                    variant: variant.name.clone(),
                },
            }
        } else if let Some(rollout) = self.rollouts.iter().find(|r| r.includes(&tenant.tenant)) {
            Resolution {
                version: rollout.to_version.clone(),
                source: Source::Rollout {
                    id: rollout.id.clone(),
                },
            }
        } else {
            Resolution {
                version: self.service.default_version.clone(),
                source: Source::Default,
            }
        };
        // Overrides apply in the order they were made, so a later rollback of the version an
        // earlier one moved tenants to moves those tenants too.
        for rule in &self.overrides {
            if rule.applies(&tenant.tenant.id, &resolution.version) {
                resolution = Resolution {
                    version: rule.to_version.clone(),
                    source: Source::Override {
                        id: rule.id.clone(),
                    },
                };
            }
        }
        resolution
    }

    /// Returns the pool of a version, if it has instances.
    pub fn pool(&self, version: &str) -> Option<&Arc<Pool>> {
        self.pools.get(version)
    }

    /// Returns every version's pool.
    pub fn pools(&self) -> impl Iterator<Item = (&String, &Arc<Pool>)> {
        self.pools.iter()
    }

    /// Returns the overrides, oldest first.
    pub fn overrides(&self) -> &[Override] {
        &self.overrides
    }

    /// Returns the rollouts.
    pub fn rollouts(&self) -> &[Rollout] {
        &self.rollouts
    }

    /// Returns the experiments.
    pub fn experiments(&self) -> &[Experiment] {
        &self.experiments
    }

    fn knows(&self, version: &str) -> bool {
        self.service.versions.contains(version)
    }

    fn servable(&self, version: &str) -> bool {
        self.pools
            .get(version)
            .is_some_and(|pool| pool.has_eligible())
    }

    /// Checks that `version` may be assigned: known, and servable unless forced.
    fn check_assignable(&self, version: &str, force: bool) -> Result<(), RoutingError> {
        if !self.knows(version) {
            return Err(RoutingError::not_found(
                Entity::Version,
                format!("{}/{version}", self.service.name),
            ));
        }
        if !force && !self.servable(version) {
            return Err(RoutingError::VersionNotServable {
                service: self.service.name.clone(),
                version: version.to_owned(),
            });
        }
        Ok(())
    }

    fn set_instances(&mut self, version: &str, instances: Vec<Arc<Instance>>) {
        if instances.is_empty() {
            self.pools.remove(version);
        } else {
            let pool = Pool::new(instances, self.pools.get(version).map(|p| p.as_ref()));
            self.pools.insert(version.to_owned(), Arc::new(pool));
        }
    }

    /// Adds or replaces an instance in its version's pool (a path copied, not the pool).
    fn put_instance(&mut self, instance: Arc<Instance>) {
        let version = instance.version.clone();
        let pool = match self.pools.get(&version) {
            Some(pool) => pool.with_instance(instance),
            None => Pool::new([instance], None),
        };
        self.pools.insert(version, Arc::new(pool));
    }

    /// Removes an instance from a version's pool; an emptied pool goes.
    fn remove_instance(&mut self, version: &str, instance_id: &str) {
        if let Some(pool) = self.pools.get(version) {
            let rest = pool.without_instance(instance_id);
            if rest.members().is_empty() {
                self.pools.remove(version);
            } else {
                self.pools.insert(version.to_owned(), Arc::new(rest));
            }
        }
    }
}

/// A change of routing state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Mutation {
    /// Creates or replaces a tenant (its pins are kept).
    UpsertTenant {
        /// The tenant.
        tenant: Tenant,
    },
    /// Creates or updates a service; versions are added, never removed.
    UpsertService {
        /// The service.
        service: Service,
        /// Allows a new default version without a healthy instance.
        #[serde(default)]
        force: bool,
    },
    /// Registers (or re-registers) an instance.
    RegisterInstance {
        /// The instance.
        instance: Instance,
    },
    /// Removes an instance.
    DeregisterInstance {
        /// Its service.
        service: String,
        /// Its id.
        instance_id: String,
    },
    /// Changes a service's default version.
    SetDefaultVersion {
        /// The service.
        service: String,
        /// The new default.
        version: String,
        /// Allows a version without a healthy instance.
        #[serde(default)]
        force: bool,
    },
    /// Pins a tenant to a version of a service.
    SetTenantVersion {
        /// The tenant.
        tenant_id: String,
        /// The service.
        service: String,
        /// The version.
        version: String,
        /// Compare-and-set: apply only if the tenant's effective version is this one.
        #[serde(default)]
        expected_version: Option<String>,
        /// Allows a version without a healthy instance.
        #[serde(default)]
        force: bool,
    },
    /// Removes a tenant's pin.
    ClearTenantVersion {
        /// The tenant.
        tenant_id: String,
        /// The service.
        service: String,
    },
    /// Moves tenants off a version with an override (`rb-<revision>`).
    EmergencyRollback {
        /// The service.
        service: String,
        /// The version tenants leave.
        from_version: String,
        /// The version they go to.
        to_version: String,
        /// Only these tenants; all when empty.
        #[serde(default)]
        tenant_ids: BTreeSet<String>,
        /// Allows a target without a healthy instance.
        #[serde(default)]
        force: bool,
    },
    /// Removes an override.
    ClearOverride {
        /// The service.
        service: String,
        /// The override.
        override_id: String,
    },
    /// Creates or replaces a rollout.
    UpsertRollout {
        /// The rollout.
        rollout: Rollout,
    },
    /// Removes a rollout.
    RemoveRollout {
        /// The service.
        service: String,
        /// The rollout.
        rollout_id: String,
    },
    /// Creates or replaces an experiment.
    UpsertExperiment {
        /// The experiment.
        experiment: Experiment,
    },
    /// Removes an experiment.
    RemoveExperiment {
        /// The service.
        service: String,
        /// The experiment.
        experiment_id: String,
    },
    /// Starts a managed rollout at its first step; its plan's baseline is the current default.
    StartRollout {
        /// The rollout, with its plan.
        rollout: Rollout,
        /// Allows a version without a healthy instance.
        #[serde(default)]
        force: bool,
    },
    /// Records a decision of the rollout's analysis and applies it.
    ProgressRollout {
        /// The service.
        service: String,
        /// The rollout.
        rollout_id: String,
        /// The decision (its `event` is a step action).
        decision: RolloutDecision,
    },
    /// Pauses, resumes, promotes or aborts a managed rollout.
    ControlRollout {
        /// The service.
        service: String,
        /// The rollout.
        rollout_id: String,
        /// What to do, when and why (`event` is paused, resumed, promoted or aborted).
        decision: RolloutDecision,
        /// With a promotion: allows a version without a healthy instance.
        #[serde(default)]
        force: bool,
    },
    /// Changes an experiment's weights. Without `rebalance`, every tenant keeps its variant.
    UpdateExperiment {
        /// The service.
        service: String,
        /// The experiment.
        experiment_id: String,
        /// The variants with their new weights.
        variants: Vec<Variant>,
        /// Lets tenants move to follow the new weights.
        #[serde(default)]
        rebalance: bool,
    },
}

/// What applying a mutation reports besides the new state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Nothing to report.
    Done,
    /// A tenant's version changed; this was its effective version before.
    Reassigned {
        /// The effective version before the change.
        previous_version: String,
    },
    /// A pin was removed, or there was none.
    Cleared {
        /// Whether a pin existed.
        existed: bool,
    },
    /// An emergency rollback installed an override.
    RolledBack {
        /// The override's id.
        override_id: String,
        /// Active tenants that left the version.
        moved_tenants: u64,
    },
}

/// The (tenant, service) pairs a change may have altered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every pair.
    Everything,
    /// Every service of one tenant.
    Tenant(String),
    /// Every tenant of one service.
    Service(String),
    /// The tenants of one service on one version (its instances changed).
    ServiceVersion {
        /// The service.
        service: String,
        /// The version.
        version: String,
    },
    /// One pair.
    Assignment {
        /// The tenant.
        tenant_id: String,
        /// The service.
        service: String,
    },
}

impl Mutation {
    /// Returns the pairs this mutation may alter.
    pub fn scope(&self) -> Scope {
        match self {
            Mutation::UpsertTenant { tenant } => Scope::Tenant(tenant.id.clone()),
            Mutation::UpsertService { service, .. } => Scope::Service(service.name.clone()),
            Mutation::RegisterInstance { instance } => Scope::Service(instance.service.clone()),
            Mutation::DeregisterInstance { service, .. }
            | Mutation::SetDefaultVersion { service, .. }
            | Mutation::EmergencyRollback { service, .. }
            | Mutation::ClearOverride { service, .. }
            | Mutation::RemoveRollout { service, .. }
            | Mutation::RemoveExperiment { service, .. }
            | Mutation::ProgressRollout { service, .. }
            | Mutation::ControlRollout { service, .. }
            | Mutation::UpdateExperiment { service, .. } => Scope::Service(service.clone()),
            Mutation::StartRollout { rollout, .. } => Scope::Service(rollout.service.clone()),
            Mutation::UpsertRollout { rollout } => Scope::Service(rollout.service.clone()),
            Mutation::UpsertExperiment { experiment } => Scope::Service(experiment.service.clone()),
            Mutation::SetTenantVersion {
                tenant_id, service, ..
            }
            | Mutation::ClearTenantVersion { tenant_id, service } => Scope::Assignment {
                tenant_id: tenant_id.clone(),
                service: service.clone(),
            },
        }
    }
}

/// Where to route a request.
#[derive(Debug, Clone, Copy)]
pub struct RouteQuery<'a> {
    /// The tenant.
    pub tenant_id: &'a str,
    /// The service.
    pub service: &'a str,
    /// Preferred region; the tenant's region when empty.
    pub region: &'a str,
    /// Key of `consistent_hash`; the tenant id when empty.
    pub hash_key: &'a str,
    /// Overrides the service's strategy.
    pub strategy: Option<Strategy>,
    /// A random value for the random strategies.
    pub entropy: u64,
    /// The time, for ejections (milliseconds since the Unix epoch).
    pub now_ms: u64,
}

/// A routing decision: the version, why, and the picked instance.
#[derive(Debug, Clone)]
pub struct RouteDecision<'a> {
    /// The version and its source.
    pub resolution: Resolution,
    /// The picked instance.
    pub member: &'a Member,
    /// The revision that decided.
    pub revision: Revision,
}

/// Tenants by id with a fast hasher (tenant ids come from operators, not from requests' senders,
/// so the keyed hash of the standard library buys nothing here and costs a third of a lookup).
type TenantIndex = imbl::GenericHashMap<
    String,
    Arc<TenantEntry>,
    foldhash::fast::RandomState,
    imbl::shared_ptr::DefaultSharedPtr,
>;

/// Every tenant, service and rule at one revision.
#[derive(Debug, Clone, Default)]
pub struct RoutingState {
    revision: Revision,
    /// Tenants in id order (listing, pagination).
    tenants: OrdMap<String, Arc<TenantEntry>>,
    /// The same entries by id, hashed: the lookup on every route.
    tenant_index: TenantIndex,
    services: OrdMap<String, Arc<ServiceEntry>>,
}

impl RoutingState {
    /// Returns the revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Returns a tenant.
    pub fn tenant(&self, id: &str) -> Option<&Arc<TenantEntry>> {
        self.tenant_index.get(id)
    }

    /// Returns the number of tenants.
    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// Returns tenants in id order, starting after `after` (from the first when `None`).
    pub fn tenants_after<'s>(
        &'s self,
        after: Option<&str>,
    ) -> impl Iterator<Item = &'s Arc<TenantEntry>> + 's {
        let lower = match after {
            Some(id) => Bound::Excluded(id.to_owned()),
            None => Bound::Unbounded,
        };
        self.tenants
            .range((lower, Bound::Unbounded))
            .map(|(_, entry)| entry)
    }

    /// Returns a service.
    pub fn service(&self, name: &str) -> Option<&Arc<ServiceEntry>> {
        self.services.get(name)
    }

    /// Returns every service in name order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceEntry>> {
        self.services.values()
    }

    /// Resolves a tenant's version of a service.
    pub fn resolve(&self, tenant_id: &str, service: &str) -> Result<Resolution, RoutingError> {
        let tenant = self.find_tenant(tenant_id)?;
        let service = self.find_service(service)?;
        Ok(service.resolve(tenant))
    }

    /// Resolves the version and picks an instance of it.
    pub fn route(&self, query: &RouteQuery<'_>) -> Result<RouteDecision<'_>, RoutingError> {
        let tenant = self.find_tenant(query.tenant_id)?;
        if !tenant.tenant.active {
            return Err(RoutingError::InactiveTenant(tenant.tenant.id.clone()));
        }
        let service = self.find_service(query.service)?;
        let resolution = service.resolve(tenant);
        let pick = PickRequest {
            strategy: query.strategy.unwrap_or(service.service.strategy),
            region: if query.region.is_empty() {
                &tenant.tenant.region
            } else {
                query.region
            },
            hash_key: if query.hash_key.is_empty() {
                query.tenant_id
            } else {
                query.hash_key
            },
            entropy: query.entropy,
            now_ms: query.now_ms,
        };
        let member = service
            .pools
            .get(&resolution.version)
            .and_then(|pool| pool.pick(&pick))
            .ok_or_else(|| RoutingError::NoHealthyInstance {
                service: service.service.name.clone(),
                version: resolution.version.clone(),
            })?;
        Ok(RouteDecision {
            resolution,
            member,
            revision: self.revision,
        })
    }

    fn find_tenant(&self, id: &str) -> Result<&Arc<TenantEntry>, RoutingError> {
        self.tenant_index
            .get(id)
            .ok_or_else(|| RoutingError::not_found(Entity::Tenant, id))
    }

    fn find_service(&self, name: &str) -> Result<&Arc<ServiceEntry>, RoutingError> {
        self.services
            .get(name)
            .ok_or_else(|| RoutingError::not_found(Entity::Service, name))
    }

    /// Applies a mutation, returning the state at the next revision and what happened.
    ///
    /// On error the state is unchanged: nothing is half applied.
    pub fn apply(&self, mutation: &Mutation) -> Result<(RoutingState, Outcome), RoutingError> {
        let mut next = self.clone();
        next.revision = self.revision + 1;
        let outcome = next.apply_in_place(mutation)?;
        Ok((next, outcome))
    }

    fn apply_in_place(&mut self, mutation: &Mutation) -> Result<Outcome, RoutingError> {
        match mutation {
            Mutation::UpsertTenant { tenant } => {
                validate_tenant(tenant)?;
                let pins = self
                    .tenants
                    .get(&tenant.id)
                    .map(|entry| entry.pins.clone())
                    .unwrap_or_default();
                self.put_tenant(
                    tenant.id.clone(),
                    Arc::new(TenantEntry {
                        tenant: tenant.clone(),
                        pins,
                    }),
                );
                Ok(Outcome::Done)
            }
            Mutation::UpsertService { service, force } => {
                validate::name("service.name", &service.name)?;
                validate::name("service.default_version", &service.default_version)?;
                if service.versions.len() >= validate::MAX_VERSIONS_PER_SERVICE {
                    return Err(RoutingError::invalid(
                        "service.versions",
                        format!("at most {} versions", validate::MAX_VERSIONS_PER_SERVICE),
                    ));
                }
                for version in &service.versions {
                    validate::name("service.versions", version)?;
                }
                let entry = match self.services.get(&service.name) {
                    Some(existing) => {
                        let mut entry = ServiceEntry::clone(existing);
                        entry
                            .service
                            .versions
                            .extend(service.versions.iter().cloned());
                        entry
                            .service
                            .versions
                            .insert(service.default_version.clone());
                        if entry.service.default_version != service.default_version {
                            entry.check_assignable(&service.default_version, *force)?;
                        }
                        if entry.service.versions.len() > validate::MAX_VERSIONS_PER_SERVICE {
                            return Err(RoutingError::FailedPrecondition(format!(
                                "service {}: at most {} versions",
                                service.name,
                                validate::MAX_VERSIONS_PER_SERVICE
                            )));
                        }
                        entry.service.default_version = service.default_version.clone();
                        entry.service.strategy = service.strategy;
                        entry
                    }
                    None => {
                        let mut service = service.clone();
                        service.versions.insert(service.default_version.clone());
                        ServiceEntry::new(service)
                    }
                };
                self.services.insert(service.name.clone(), Arc::new(entry));
                Ok(Outcome::Done)
            }
            Mutation::RegisterInstance { instance } => {
                validate_instance(instance)?;
                let mut entry = self.service_entry(&instance.service)?;
                if !entry.instance_versions.contains_key(&instance.id) {
                    validate::room(
                        "instances of a service",
                        entry.instance_versions.len(),
                        validate::MAX_INSTANCES_PER_SERVICE,
                    )?;
                }
                if !entry.knows(&instance.version) {
                    validate::room(
                        "versions of a service",
                        entry.service.versions.len(),
                        validate::MAX_VERSIONS_PER_SERVICE,
                    )?;
                }
                if let Some(old_version) = entry.instance_versions.get(&instance.id).cloned()
                    && old_version != instance.version
                {
                    entry.remove_instance(&old_version, &instance.id);
                }
                // Replaced within its version's pool, so it keeps its live load.
                entry.put_instance(Arc::new(instance.clone()));
                entry
                    .instance_versions
                    .insert(instance.id.clone(), instance.version.clone());
                entry.service.versions.insert(instance.version.clone());
                self.services
                    .insert(instance.service.clone(), Arc::new(entry));
                Ok(Outcome::Done)
            }
            Mutation::DeregisterInstance {
                service,
                instance_id,
            } => {
                validate::name("service", service)?;
                validate::name("instance_id", instance_id)?;
                let mut entry = self.service_entry(service)?;
                let version = entry.instance_versions.remove(instance_id).ok_or_else(|| {
                    RoutingError::not_found(Entity::Instance, format!("{service}/{instance_id}"))
                })?;
                entry.remove_instance(&version, instance_id);
                self.services.insert(service.clone(), Arc::new(entry));
                Ok(Outcome::Done)
            }
            Mutation::SetDefaultVersion {
                service,
                version,
                force,
            } => {
                validate::name("service", service)?;
                validate::name("version", version)?;
                let mut entry = self.service_entry(service)?;
                entry.check_assignable(version, *force)?;
                entry.service.default_version = version.clone();
                self.services.insert(service.clone(), Arc::new(entry));
                Ok(Outcome::Done)
            }
            Mutation::SetTenantVersion {
                tenant_id,
                service,
                version,
                expected_version,
                force,
            } => {
                validate::name("tenant_id", tenant_id)?;
                validate::name("service", service)?;
                validate::name("version", version)?;
                if let Some(expected) = expected_version {
                    validate::name("expected_version", expected)?;
                }
                let tenant = self.find_tenant(tenant_id)?;
                let entry = self.find_service(service)?;
                let current = entry.resolve(tenant).version;
                if let Some(expected) = expected_version
                    && *expected != current
                {
                    return Err(RoutingError::VersionMismatch {
                        tenant_id: tenant_id.clone(),
                        service: service.clone(),
                        expected: expected.clone(),
                        current,
                    });
                }
                entry.check_assignable(version, *force)?;
                let mut tenant = TenantEntry::clone(tenant);
                tenant.pins.insert(service.clone(), version.clone());
                self.put_tenant(tenant_id.clone(), Arc::new(tenant));
                Ok(Outcome::Reassigned {
                    previous_version: current,
                })
            }
            Mutation::ClearTenantVersion { tenant_id, service } => {
                validate::name("tenant_id", tenant_id)?;
                validate::name("service", service)?;
                let mut tenant = TenantEntry::clone(self.find_tenant(tenant_id)?);
                let existed = tenant.pins.remove(service).is_some();
                if existed {
                    self.put_tenant(tenant_id.clone(), Arc::new(tenant));
                }
                Ok(Outcome::Cleared { existed })
            }
            Mutation::EmergencyRollback {
                service,
                from_version,
                to_version,
                tenant_ids,
                force,
            } => {
                validate::name("service", service)?;
                validate::name("from_version", from_version)?;
                validate::name("to_version", to_version)?;
                if from_version == to_version {
                    return Err(RoutingError::invalid(
                        "to_version",
                        "must differ from from_version",
                    ));
                }
                let before = Arc::clone(self.find_service(service)?);
                if !before.knows(from_version) {
                    return Err(RoutingError::not_found(
                        Entity::Version,
                        format!("{service}/{from_version}"),
                    ));
                }
                before.check_assignable(to_version, *force)?;
                for id in tenant_ids {
                    validate::name("tenant_ids", id)?;
                    self.find_tenant(id)?;
                }
                validate::room(
                    "overrides of a service",
                    before.overrides.len(),
                    validate::MAX_OVERRIDES_PER_SERVICE,
                )?;
                let id = format!("rb-{}", self.revision);
                let mut after = ServiceEntry::clone(&before);
                after.overrides.push(Override {
                    id: id.clone(),
                    service: service.clone(),
                    from_version: from_version.clone(),
                    to_version: to_version.clone(),
                    tenant_ids: tenant_ids.clone(),
                    created_revision: self.revision,
                });
                let moved = |entry: &TenantEntry| {
                    entry.tenant.active
                        && before.resolve(entry).version == *from_version
                        && after.resolve(entry).version != *from_version
                };
                let moved_tenants = if tenant_ids.is_empty() {
                    self.tenants.values().filter(|e| moved(e)).count()
                } else {
                    tenant_ids
                        .iter()
                        .filter_map(|t| self.tenant_index.get(t))
                        .filter(|e| moved(e))
                        .count()
                } as u64;
                self.services.insert(service.clone(), Arc::new(after));
                Ok(Outcome::RolledBack {
                    override_id: id,
                    moved_tenants,
                })
            }
            Mutation::ClearOverride {
                service,
                override_id,
            } => {
                validate::name("service", service)?;
                validate::name("override_id", override_id)?;
                let mut entry = self.service_entry(service)?;
                let before = entry.overrides.len();
                entry.overrides.retain(|o| &o.id != override_id);
                if entry.overrides.len() == before {
                    return Err(RoutingError::not_found(
                        Entity::Override,
                        format!("{service}/{override_id}"),
                    ));
                }
                self.services.insert(service.clone(), Arc::new(entry));
                Ok(Outcome::Done)
            }
            Mutation::UpsertRollout { rollout } => {
                validate::name("rollout.id", &rollout.id)?;
                validate::name("rollout.service", &rollout.service)?;
                validate::name("rollout.to_version", &rollout.to_version)?;
                validate::text("rollout.salt", &rollout.salt)?;
                if rollout.basis_points > crate::hash::BUCKETS {
                    return Err(RoutingError::invalid(
                        "rollout.basis_points",
                        "must be at most 10000",
                    ));
                }
                let mut entry = self.service_entry(&rollout.service)?;
                if !entry.knows(&rollout.to_version) {
                    return Err(RoutingError::not_found(
                        Entity::Version,
                        format!("{}/{}", rollout.service, rollout.to_version),
                    ));
                }
                entry.rollouts.retain(|r| r.id != rollout.id);
                validate::room(
                    "rollouts of a service",
                    entry.rollouts.len(),
                    validate::MAX_ROLLOUTS_PER_SERVICE,
                )?;
                entry.rollouts.push(rollout.clone());
                self.services
                    .insert(rollout.service.clone(), Arc::new(entry));
                Ok(Outcome::Done)
            }
            Mutation::UpsertExperiment { experiment } => {
                validate::name("experiment.id", &experiment.id)?;
                validate::name("experiment.service", &experiment.service)?;
                validate::text("experiment.salt", &experiment.salt)?;
                let mut entry = self.service_entry(&experiment.service)?;
                validate_variants(&entry, &experiment.variants)?;
                entry.experiments.retain(|e| e.id != experiment.id);
                validate::room(
                    "experiments of a service",
                    entry.experiments.len(),
                    validate::MAX_EXPERIMENTS_PER_SERVICE,
                )?;
                entry.experiments.push(experiment.clone());
                self.services
                    .insert(experiment.service.clone(), Arc::new(entry));
                Ok(Outcome::Done)
            }
            Mutation::RemoveRollout {
                service,
                rollout_id,
            } => {
                validate::name("service", service)?;
                validate::name("rollout_id", rollout_id)?;
                let mut entry = self.service_entry(service)?;
                let before = entry.rollouts.len();
                entry.rollouts.retain(|r| &r.id != rollout_id);
                if entry.rollouts.len() == before {
                    return Err(RoutingError::not_found(
                        Entity::Rollout,
                        format!("{service}/{rollout_id}"),
                    ));
                }
                self.services.insert(service.clone(), Arc::new(entry));
                Ok(Outcome::Done)
            }
            Mutation::RemoveExperiment {
                service,
                experiment_id,
            } => {
                validate::name("service", service)?;
                validate::name("experiment_id", experiment_id)?;
                let mut entry = self.service_entry(service)?;
                let before = entry.experiments.len();
                entry.experiments.retain(|e| &e.id != experiment_id);
                if entry.experiments.len() == before {
                    return Err(RoutingError::not_found(
                        Entity::Experiment,
                        format!("{service}/{experiment_id}"),
                    ));
                }
                self.services.insert(service.clone(), Arc::new(entry));
                Ok(Outcome::Done)
            }
            Mutation::StartRollout { rollout, force } => {
                let mut entry = self.service_entry(&rollout.service)?;
                let rollout = start_rollout(&entry, rollout, *force)?;
                validate::room(
                    "rollouts of a service",
                    entry.rollouts.len(),
                    validate::MAX_ROLLOUTS_PER_SERVICE,
                )?;
                entry.rollouts.push(rollout);
                self.services
                    .insert(entry.service.name.clone(), Arc::new(entry));
                Ok(Outcome::Done)
            }
            Mutation::ProgressRollout {
                service,
                rollout_id,
                decision,
            } => {
                validate::name("service", service)?;
                validate::name("rollout_id", rollout_id)?;
                validate::note("decision.note", &decision.note)?;
                let mut entry = self.service_entry(service)?;
                progress_rollout(&mut entry, rollout_id, decision)?;
                self.services.insert(service.clone(), Arc::new(entry));
                Ok(Outcome::Done)
            }
            Mutation::ControlRollout {
                service,
                rollout_id,
                decision,
                force,
            } => {
                validate::name("service", service)?;
                validate::name("rollout_id", rollout_id)?;
                validate::note("decision.note", &decision.note)?;
                let mut entry = self.service_entry(service)?;
                control_rollout(&mut entry, rollout_id, decision, *force)?;
                self.services.insert(service.clone(), Arc::new(entry));
                Ok(Outcome::Done)
            }
            Mutation::UpdateExperiment {
                service,
                experiment_id,
                variants,
                rebalance,
            } => {
                validate::name("service", service)?;
                validate::name("experiment_id", experiment_id)?;
                let mut entry = self.service_entry(service)?;
                let position = entry
                    .experiments
                    .iter()
                    .position(|e| &e.id == experiment_id)
                    .ok_or_else(|| {
                        RoutingError::not_found(
                            Entity::Experiment,
                            format!("{service}/{experiment_id}"),
                        )
                    })?;
                validate_variants(&entry, variants)?;
                let mut experiment = entry.experiments[position].clone();
                if *rebalance {
                    experiment.sticky = Arc::default();
                } else {
                    // Every tenant in the experiment keeps the variant it has now.
                    let kept: Vec<(String, String)> = self
                        .tenants
                        .values()
                        .filter(|t| {
                            t.tenant.active && !experiment.sticky.contains_key(&t.tenant.id)
                        })
                        .filter_map(|t| {
                            experiment
                                .variant_for(&t.tenant)
                                .map(|variant| (t.tenant.id.clone(), variant.name.clone()))
                        })
                        .collect();
                    if !kept.is_empty() {
                        Arc::make_mut(&mut experiment.sticky).extend(kept);
                    }
                }
                experiment.variants = variants.clone();
                entry.experiments[position] = experiment;
                self.services.insert(service.clone(), Arc::new(entry));
                Ok(Outcome::Done)
            }
        }
    }

    /// Inserts or replaces a tenant in both the ordered map and the index.
    fn put_tenant(&mut self, id: String, entry: Arc<TenantEntry>) {
        self.tenant_index.insert(id.clone(), Arc::clone(&entry));
        self.tenants.insert(id, entry);
    }

    /// Returns a copy of a service's entry to modify.
    fn service_entry(&self, name: &str) -> Result<ServiceEntry, RoutingError> {
        self.find_service(name)
            .map(|entry| ServiceEntry::clone(entry))
    }

    /// Returns the whole state as plain records.
    pub fn dump(&self) -> StateDump {
        let mut dump = StateDump {
            revision: self.revision,
            ..StateDump::default()
        };
        for entry in self.tenants.values() {
            dump.tenants.push(entry.tenant.clone());
            for (service, version) in &entry.pins {
                dump.pins.push(Pin {
                    tenant_id: entry.tenant.id.clone(),
                    service: service.clone(),
                    version: version.clone(),
                });
            }
        }
        for entry in self.services.values() {
            dump.services.push(entry.service.clone());
            for pool in entry.pools.values() {
                dump.instances
                    .extend(pool.members().iter().map(|m| Instance::clone(&m.instance)));
            }
            dump.overrides.extend(entry.overrides.iter().cloned());
            dump.rollouts.extend(entry.rollouts.iter().cloned());
            dump.experiments.extend(entry.experiments.iter().cloned());
        }
        dump
    }

    /// Rebuilds a state from plain records, checking every record.
    pub fn from_dump(dump: &StateDump) -> Result<RoutingState, RoutingError> {
        let mut state = RoutingState::default();
        for service in &dump.services {
            state.apply_in_place(&Mutation::UpsertService {
                service: service.clone(),
                force: true,
            })?;
        }
        // Each pool is built once from all its instances, not once per instance.
        let mut by_service: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
        for instance in &dump.instances {
            validate_instance(instance)?;
            by_service
                .entry(instance.service.as_str())
                .or_default()
                .push(instance);
        }
        for (name, instances) in by_service {
            let mut entry = state.service_entry(name)?;
            let mut versions: BTreeMap<&str, Vec<Arc<Instance>>> = BTreeMap::new();
            for instance in instances {
                // A later record of the same instance wins, as a later registration would.
                if let Some(old) = entry
                    .instance_versions
                    .insert(instance.id.clone(), instance.version.clone())
                    && let Some(list) = versions.get_mut(old.as_str())
                {
                    list.retain(|i| i.id != instance.id);
                }
                versions
                    .entry(instance.version.as_str())
                    .or_default()
                    .push(Arc::new(instance.clone()));
            }
            if entry.instance_versions.len() > validate::MAX_INSTANCES_PER_SERVICE {
                return Err(RoutingError::FailedPrecondition(format!(
                    "service {name}: at most {} instances",
                    validate::MAX_INSTANCES_PER_SERVICE
                )));
            }
            for (version, list) in versions {
                entry.service.versions.insert(version.to_owned());
                entry.set_instances(version, list);
            }
            state.services.insert(name.to_owned(), Arc::new(entry));
        }
        // Tenants go in with all their pins at once: one insert per tenant, not one per pin.
        let mut pins: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
        for pin in &dump.pins {
            validate::name("pin.service", &pin.service)?;
            validate::name("pin.version", &pin.version)?;
            let service = state.find_service(&pin.service)?;
            if !service.knows(&pin.version) {
                return Err(RoutingError::not_found(
                    Entity::Version,
                    format!("{}/{}", pin.service, pin.version),
                ));
            }
            pins.entry(pin.tenant_id.as_str())
                .or_default()
                .insert(pin.service.clone(), pin.version.clone());
        }
        for tenant in &dump.tenants {
            validate_tenant(tenant)?;
            let entry = TenantEntry {
                tenant: tenant.clone(),
                pins: pins.remove(tenant.id.as_str()).unwrap_or_default(),
            };
            state.put_tenant(tenant.id.clone(), Arc::new(entry));
        }
        if let Some(tenant_id) = pins.keys().next() {
            return Err(RoutingError::not_found(Entity::Tenant, *tenant_id));
        }
        let rollouts = dump.rollouts.iter().map(|rollout| Mutation::UpsertRollout {
            rollout: rollout.clone(),
        });
        let experiments = dump
            .experiments
            .iter()
            .map(|experiment| Mutation::UpsertExperiment {
                experiment: experiment.clone(),
            });
        for mutation in rollouts.chain(experiments) {
            state.apply_in_place(&mutation)?;
        }
        let mut overrides: Vec<&Override> = dump.overrides.iter().collect();
        overrides.sort_by_key(|o| o.created_revision);
        for rule in overrides {
            let mut entry = state.service_entry(&rule.service)?;
            entry.overrides.push(rule.clone());
            state.services.insert(rule.service.clone(), Arc::new(entry));
        }
        state.revision = dump.revision;
        Ok(state)
    }
}

/// Checks a new managed rollout and returns it at its first step.
fn start_rollout(
    entry: &ServiceEntry,
    rollout: &Rollout,
    force: bool,
) -> Result<Rollout, RoutingError> {
    validate::name("rollout.id", &rollout.id)?;
    validate::name("rollout.to_version", &rollout.to_version)?;
    validate::text("rollout.salt", &rollout.salt)?;
    let Some(plan) = &rollout.plan else {
        return Err(RoutingError::invalid("rollout.plan", "is required"));
    };
    if plan.steps.is_empty() {
        return Err(RoutingError::invalid("steps", "must not be empty"));
    }
    if plan.steps.windows(2).any(|w| w[0] >= w[1])
        || plan
            .steps
            .iter()
            .any(|&s| s == 0 || s > crate::hash::BUCKETS)
    {
        return Err(RoutingError::invalid(
            "steps",
            "must be strictly increasing shares above 0% and at most 100%",
        ));
    }
    if plan.interval_ms == 0 {
        return Err(RoutingError::invalid("interval", "must be positive"));
    }
    plan.analysis
        .validate()
        .map_err(|reason| RoutingError::invalid("analysis", reason))?;
    let service = &entry.service.name;
    if entry.rollouts.iter().any(|r| r.id == rollout.id) {
        return Err(RoutingError::FailedPrecondition(format!(
            "rollout '{}' of service '{service}' already exists",
            rollout.id
        )));
    }
    if let Some(live) = entry.rollouts.iter().find(|r| r.is_live()) {
        return Err(RoutingError::FailedPrecondition(format!(
            "service '{service}' already has rollout '{}' in progress; promote or abort it first",
            live.id
        )));
    }
    if rollout.to_version == entry.service.default_version {
        return Err(RoutingError::invalid(
            "to_version",
            format!("'{}' is already the default version", rollout.to_version),
        ));
    }
    entry.check_assignable(&rollout.to_version, force)?;
    let mut started = rollout.clone();
    started.service = service.clone();
    if started.salt.is_empty() {
        started.salt = format!("{service}/{}", rollout.id);
    }
    started.basis_points = plan.steps[0];
    started.plan = Some(RolloutPlan {
        from_version: entry.service.default_version.clone(),
        steps: plan.steps.clone(),
        interval_ms: plan.interval_ms,
        analysis: plan.analysis.clone(),
        phase: RolloutPhase::Running,
        step: 0,
        step_started_ms: plan.step_started_ms,
        failed_checks: 0,
        decisions: vec![RolloutDecision {
            at_ms: plan.step_started_ms,
            step: 0,
            basis_points: plan.steps[0],
            event: RolloutEvent::Started,
            canary: None,
            baseline: None,
            note: String::new(),
        }],
    });
    Ok(started)
}

/// Returns the managed rollout `id` of a service and its plan, to modify.
fn managed_rollout<'e>(
    entry: &'e mut ServiceEntry,
    id: &str,
) -> Result<&'e mut Rollout, RoutingError> {
    let service = entry.service.name.clone();
    let rollout = entry
        .rollouts
        .iter_mut()
        .find(|r| r.id == id)
        .ok_or_else(|| RoutingError::not_found(Entity::Rollout, format!("{service}/{id}")))?;
    if rollout.plan.is_none() {
        return Err(RoutingError::FailedPrecondition(format!(
            "rollout '{id}' has a fixed share and no plan to drive"
        )));
    }
    Ok(rollout)
}

fn record(plan: &mut RolloutPlan, decision: RolloutDecision) {
    plan.decisions.push(decision);
    let excess = plan.decisions.len().saturating_sub(MAX_ROLLOUT_DECISIONS);
    plan.decisions.drain(..excess);
}

/// Applies the analysis' decision on the current step.
fn progress_rollout(
    entry: &mut ServiceEntry,
    id: &str,
    decision: &RolloutDecision,
) -> Result<(), RoutingError> {
    let RolloutEvent::Step { action } = &decision.event else {
        return Err(RoutingError::invalid(
            "decision.event",
            "must be a step decision",
        ));
    };
    let rollout = managed_rollout(entry, id)?;
    let to_version = rollout.to_version.clone();
    let Some(plan) = rollout.plan.as_mut() else {
        return Ok(());
    };
    if plan.phase != RolloutPhase::Running {
        return Err(RoutingError::FailedPrecondition(format!(
            "rollout '{id}' is {}, not running",
            plan.phase.as_str()
        )));
    }
    if decision.step != plan.step {
        return Err(RoutingError::FailedPrecondition(format!(
            "decision for step {} of rollout '{id}', which is at step {}",
            decision.step, plan.step
        )));
    }
    let mut promote = false;
    match action {
        StepAction::Wait => {
            return Err(RoutingError::invalid(
                "decision",
                "waiting is not a decision",
            ));
        }
        StepAction::Hold { .. } => plan.step_started_ms = decision.at_ms,
        StepAction::Advance { basis_points } => {
            let next = plan.step + 1;
            if plan.steps.get(next) != Some(basis_points) {
                return Err(RoutingError::invalid(
                    "decision",
                    format!("step {next} of rollout '{id}' is not {basis_points} basis points"),
                ));
            }
            plan.step = next;
            plan.step_started_ms = decision.at_ms;
            plan.failed_checks = 0;
            rollout.basis_points = *basis_points;
        }
        StepAction::FailCheck { failed_checks, .. } => {
            plan.failed_checks = *failed_checks;
            plan.step_started_ms = decision.at_ms;
        }
        StepAction::Abort { .. } => {
            plan.phase = RolloutPhase::Aborted;
            rollout.basis_points = 0;
        }
        StepAction::Complete => {
            plan.phase = RolloutPhase::Promoted;
            rollout.basis_points = crate::hash::BUCKETS;
            promote = true;
        }
    }
    let mut decision = decision.clone();
    decision.basis_points = rollout.basis_points;
    record(plan, decision);
    if promote {
        entry.service.default_version = to_version;
    }
    Ok(())
}

/// Applies an operator's pause, resume, promotion or abort.
fn control_rollout(
    entry: &mut ServiceEntry,
    id: &str,
    decision: &RolloutDecision,
    force: bool,
) -> Result<(), RoutingError> {
    let to_version = managed_rollout(entry, id)?.to_version.clone();
    if matches!(decision.event, RolloutEvent::Promoted) {
        entry.check_assignable(&to_version, force)?;
    }
    let rollout = managed_rollout(entry, id)?;
    let Some(plan) = rollout.plan.as_mut() else {
        return Ok(());
    };
    let phase = plan.phase;
    let refuse = |what: &str| {
        Err(RoutingError::FailedPrecondition(format!(
            "rollout '{id}' is {}; it cannot be {what}",
            phase.as_str()
        )))
    };
    match (&decision.event, phase) {
        (RolloutEvent::Paused, RolloutPhase::Running) => plan.phase = RolloutPhase::Paused,
        (RolloutEvent::Paused, _) => return refuse("paused"),
        (RolloutEvent::Resumed, RolloutPhase::Paused) => {
            plan.phase = RolloutPhase::Running;
            plan.step_started_ms = decision.at_ms;
        }
        (RolloutEvent::Resumed, _) => return refuse("resumed"),
        (RolloutEvent::Promoted, RolloutPhase::Running | RolloutPhase::Paused) => {
            plan.phase = RolloutPhase::Promoted;
            rollout.basis_points = crate::hash::BUCKETS;
        }
        (RolloutEvent::Promoted, _) => return refuse("promoted"),
        (RolloutEvent::Aborted, RolloutPhase::Running | RolloutPhase::Paused) => {
            plan.phase = RolloutPhase::Aborted;
            rollout.basis_points = 0;
        }
        (RolloutEvent::Aborted, _) => return refuse("aborted"),
        (RolloutEvent::Started | RolloutEvent::Step { .. }, _) => {
            return Err(RoutingError::invalid(
                "decision.event",
                "must be paused, resumed, promoted or aborted",
            ));
        }
    }
    let mut decision = decision.clone();
    decision.step = plan.step;
    decision.basis_points = rollout.basis_points;
    record(plan, decision);
    if phase != RolloutPhase::Promoted
        && rollout
            .plan
            .as_ref()
            .is_some_and(|p| p.phase == RolloutPhase::Promoted)
    {
        entry.service.default_version = to_version;
    }
    Ok(())
}

/// Checks an experiment's variants against the service.
fn validate_variants(entry: &ServiceEntry, variants: &[Variant]) -> Result<(), RoutingError> {
    if variants.is_empty() || variants.len() > validate::MAX_VARIANTS {
        return Err(RoutingError::invalid(
            "experiment.variants",
            format!("must hold 1 to {} variants", validate::MAX_VARIANTS),
        ));
    }
    for variant in variants {
        validate::name("experiment.variants.name", &variant.name)?;
        validate::name("experiment.variants.version", &variant.version)?;
        if !entry.knows(&variant.version) {
            return Err(RoutingError::not_found(
                Entity::Version,
                format!("{}/{}", entry.service.name, variant.version),
            ));
        }
    }
    let mut names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(RoutingError::invalid(
            "experiment.variants.name",
            "names must be unique",
        ));
    }
    if variants.iter().all(|v| v.weight == 0) {
        return Err(RoutingError::invalid(
            "experiment.variants.weight",
            "at least one variant needs a weight",
        ));
    }
    Ok(())
}

fn validate_tenant(tenant: &Tenant) -> Result<(), RoutingError> {
    validate::name("tenant.id", &tenant.id)?;
    validate::text("tenant.name", &tenant.name)?;
    validate::optional_name("tenant.region", &tenant.region)?;
    validate::optional_name("tenant.tier", &tenant.tier)?;
    validate::entries("tenant.labels", &tenant.labels)
}

fn validate_instance(instance: &Instance) -> Result<(), RoutingError> {
    validate::name("instance.id", &instance.id)?;
    validate::address("instance.address", &instance.address)?;
    validate::name("instance.service", &instance.service)?;
    validate::name("instance.version", &instance.version)?;
    validate::optional_name("instance.region", &instance.region)?;
    validate::optional_name("instance.zone", &instance.zone)?;
    validate::entries("instance.metadata", &instance.metadata)?;
    if instance.health_score > 100 {
        return Err(RoutingError::invalid(
            "instance.health_score",
            "must be 0-100",
        ));
    }
    Ok(())
}

/// A tenant's pinned version of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// The tenant.
    pub tenant_id: String,
    /// The service.
    pub service: String,
    /// The pinned version.
    pub version: String,
}

/// The routing state as plain records: a seed file, a backup, a store's snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDump {
    /// The revision (ignored when seeding).
    #[serde(default)]
    pub revision: Revision,
    /// Tenants.
    #[serde(default)]
    pub tenants: Vec<Tenant>,
    /// Services.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Instances.
    #[serde(default)]
    pub instances: Vec<Instance>,
    /// Pins.
    #[serde(default)]
    pub pins: Vec<Pin>,
    /// Emergency overrides.
    #[serde(default)]
    pub overrides: Vec<Override>,
    /// Rollouts.
    #[serde(default)]
    pub rollouts: Vec<Rollout>,
    /// Experiments.
    #[serde(default)]
    pub experiments: Vec<Experiment>,
}

impl StateDump {
    /// Returns the mutations that recreate these records (overrides excepted: they carry
    /// identities and revisions of their own).
    pub fn mutations(&self) -> Vec<Mutation> {
        let tenants = self.tenants.iter().map(|tenant| Mutation::UpsertTenant {
            tenant: tenant.clone(),
        });
        let services = self.services.iter().map(|service| Mutation::UpsertService {
            service: service.clone(),
            force: true,
        });
        let instances = self
            .instances
            .iter()
            .map(|instance| Mutation::RegisterInstance {
                instance: instance.clone(),
            });
        let pins = self.pins.iter().map(|pin| Mutation::SetTenantVersion {
            tenant_id: pin.tenant_id.clone(),
            service: pin.service.clone(),
            version: pin.version.clone(),
            expected_version: None,
            force: true,
        });
        let rollouts = self.rollouts.iter().map(|rollout| Mutation::UpsertRollout {
            rollout: rollout.clone(),
        });
        let experiments = self
            .experiments
            .iter()
            .map(|experiment| Mutation::UpsertExperiment {
                experiment: experiment.clone(),
            });
        tenants
            .chain(services)
            .chain(instances)
            .chain(pins)
            .chain(rollouts)
            .chain(experiments)
            .collect()
    }
}

mod footprint;

#[cfg(test)]
pub(crate) mod tests;
