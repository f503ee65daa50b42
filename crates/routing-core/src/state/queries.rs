//! Read-only lookups: tenants, services, version resolution and routing.

use std::ops::Bound;
use std::sync::Arc;

use crate::balance::{Member, PickRequest, Pool};
use crate::error::Entity;
use crate::state::{RoutingState, ServiceEntry, TenantEntry};
use crate::{Experiment, Override, Resolution, Revision, Rollout, RoutingError, Source, Strategy};

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
    /// The time, for ejections and in-flight counts (milliseconds since the Unix epoch).
    pub now_ms: u64,
}

/// A routing decision: the version, why, and the picked instance.
#[derive(Debug, Clone)]
pub struct RouteDecision<'a> {
    /// The version and its source.
    pub resolution: Resolution,
    /// The picked instance.
    pub member: &'a Member,
    /// The strategy that picked it: the query's, else the service's. Routing counts nothing in
    /// flight; a caller that reports outcomes calls [`InstanceLoad::start`] on the member when
    /// this is [`Strategy::LeastConnections`] (the only strategy that reads the count).
    ///
    /// [`InstanceLoad::start`]: crate::balance::InstanceLoad::start
    pub strategy: Strategy,
    /// The revision that decided.
    pub revision: Revision,
}

impl ServiceEntry {
    /// Resolves a tenant's version: override > pin > experiment > rollout > default.
    pub fn resolve(&self, tenant: &TenantEntry) -> Resolution {
        let mut resolution = if let Some(version) = self.pinned_version(tenant) {
            Resolution {
                version: version.to_owned(),
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

    pub(super) fn knows(&self, version: &str) -> bool {
        self.service.versions.contains(version)
    }

    fn servable(&self, version: &str) -> bool {
        self.pools
            .get(version)
            .is_some_and(|pool| pool.has_eligible())
    }

    /// Checks that `version` may be assigned: known, and servable unless forced.
    pub(super) fn check_assignable(&self, version: &str, force: bool) -> Result<(), RoutingError> {
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
}

impl RoutingState {
    /// Returns a tenant.
    pub fn tenant(&self, id: &str) -> Option<&Arc<TenantEntry>> {
        self.tenant_entry(id)
    }

    /// Returns the number of tenants.
    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// Returns the number of active tenants (those that are routed), without a walk.
    pub fn active_tenant_count(&self) -> usize {
        self.tenants.len() - self.inactive_tenants
    }

    /// Returns tenants in id order, starting after `after` (from the first when `None`).
    pub fn tenants_after<'s>(
        &'s self,
        after: Option<&str>,
    ) -> impl Iterator<Item = &'s Arc<TenantEntry>> + 's {
        let lower = match after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        self.tenants
            .range::<_, str>((lower, Bound::Unbounded))
            .map(|entry| &entry.0)
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
            strategy: pick.strategy,
            revision: self.revision,
        })
    }

    pub(super) fn find_tenant(&self, id: &str) -> Result<&Arc<TenantEntry>, RoutingError> {
        self.tenant_entry(id)
            .ok_or_else(|| RoutingError::not_found(Entity::Tenant, id))
    }

    pub(super) fn find_service(&self, name: &str) -> Result<&Arc<ServiceEntry>, RoutingError> {
        self.services
            .get(name)
            .ok_or_else(|| RoutingError::not_found(Entity::Service, name))
    }
}
