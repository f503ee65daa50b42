//! Effective assignments as watchers see them, and the difference a change made to them.
//!
//! A watcher follows a set of (tenant, service) pairs: the active tenants and the services it
//! names (all of either when it names none). The effective assignment of a pair is its resolved
//! version, the source, the instance pool of that version, the service's strategy and the
//! tenant's region: all a client needs to pick an instance itself. [`diff`] compares two states
//! within a change's [`Scope`], so its cost follows what the change touched and what the watcher
//! follows, never the whole state unless the change was global.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::balance::Pool;
use crate::state::{RoutingState, Scope, ServiceEntry, TenantEntry};
use crate::{Resolution, Strategy};

/// The pairs a watcher follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AssignmentFilter {
    /// Tenants; every tenant when empty.
    pub tenant_ids: BTreeSet<String>,
    /// Services; every service when empty.
    pub services: BTreeSet<String>,
}

impl AssignmentFilter {
    fn wants_tenant(&self, id: &str) -> bool {
        self.tenant_ids.is_empty() || self.tenant_ids.contains(id)
    }

    fn wants_service(&self, name: &str) -> bool {
        self.services.is_empty() || self.services.contains(name)
    }
}

/// A pair's effective assignment.
#[derive(Debug, Clone)]
pub struct EffectiveAssignment {
    /// The tenant.
    pub tenant_id: String,
    /// The service.
    pub service: String,
    /// The version and why.
    pub resolution: Resolution,
    /// The version's instances, if it has any.
    pub pool: Option<Arc<Pool>>,
    /// The service's strategy.
    pub strategy: Strategy,
    /// The tenant's region (preferred among the instances).
    pub region: String,
}

impl EffectiveAssignment {
    fn of(tenant: &TenantEntry, service: &ServiceEntry) -> Option<Self> {
        if !tenant.tenant.active {
            return None;
        }
        let resolution = service.resolve(tenant);
        let pool = service.pool(&resolution.version).cloned();
        Some(EffectiveAssignment {
            tenant_id: tenant.tenant.id.clone(),
            service: service.service.name.clone(),
            resolution,
            pool,
            strategy: service.service.strategy,
            region: tenant.tenant.region.clone(),
        })
    }

    /// Whether a watcher would see no difference: same version, source, instance pool, strategy
    /// and region.
    pub fn same_as(&self, other: &EffectiveAssignment) -> bool {
        self.resolution == other.resolution
            && self.strategy == other.strategy
            && self.region == other.region
            && match (&self.pool, &other.pool) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

/// What changed for a watcher.
#[derive(Debug, Clone, Default)]
pub struct AssignmentDiff {
    /// New or changed assignments.
    pub upserts: Vec<EffectiveAssignment>,
    /// Pairs that are no longer routed (tenant deactivated), as (tenant, service).
    pub removals: Vec<(String, String)>,
}

impl AssignmentDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// Returns every effective assignment the filter follows, tenant by tenant.
pub fn snapshot(state: &RoutingState, filter: &AssignmentFilter) -> Vec<EffectiveAssignment> {
    assignments(state, filter).collect()
}

/// Yields every effective assignment the filter follows, tenant by tenant, one at a time: a
/// large snapshot can be sent in parts without ever being held whole.
pub fn assignments<'s>(
    state: &'s RoutingState,
    filter: &'s AssignmentFilter,
) -> impl Iterator<Item = EffectiveAssignment> + Send + 's {
    let services: Arc<[&'s Arc<ServiceEntry>]> = state
        .services()
        .filter(|s| filter.wants_service(&s.service.name))
        .collect();
    tenants(state, filter).flat_map(move |tenant| {
        let services = Arc::clone(&services);
        (0..services.len()).filter_map(move |i| EffectiveAssignment::of(tenant, services[i]))
    })
}

fn tenants<'s>(
    state: &'s RoutingState,
    filter: &'s AssignmentFilter,
) -> Box<dyn Iterator<Item = &'s Arc<TenantEntry>> + Send + 's> {
    if filter.tenant_ids.is_empty() {
        Box::new(state.tenants_after(None))
    } else {
        Box::new(filter.tenant_ids.iter().filter_map(|id| state.tenant(id)))
    }
}

/// Returns what changed between two states for the filter, looking only within `scope`.
pub fn diff(
    before: &RoutingState,
    after: &RoutingState,
    scope: &Scope,
    filter: &AssignmentFilter,
) -> AssignmentDiff {
    let mut result = AssignmentDiff::default();
    let (tenant_ids, service_names): (Vec<String>, Vec<String>) = match scope {
        Scope::Everything => (
            all_tenants(after, filter),
            all_services(before, after, filter),
        ),
        Scope::Tenant(id) => (vec![id.clone()], all_services(before, after, filter)),
        Scope::Service(name) | Scope::ServiceVersion { service: name, .. } => {
            (all_tenants(after, filter), vec![name.clone()])
        }
        Scope::Assignment { tenant_id, service } => {
            (vec![tenant_id.clone()], vec![service.clone()])
        }
    };
    let service_names: Vec<&String> = service_names
        .iter()
        .filter(|s| filter.wants_service(s))
        .collect();
    for tenant_id in tenant_ids.iter().filter(|t| filter.wants_tenant(t)) {
        for service in &service_names {
            let old = assignment(before, tenant_id, service);
            let new = assignment(after, tenant_id, service);
            match (old, new) {
                (Some(_), None) => result
                    .removals
                    .push((tenant_id.clone(), (*service).clone())),
                (old, Some(new)) => {
                    if !old.is_some_and(|old| old.same_as(&new)) {
                        result.upserts.push(new);
                    }
                }
                (None, None) => {}
            }
        }
    }
    result
}

fn assignment(state: &RoutingState, tenant_id: &str, service: &str) -> Option<EffectiveAssignment> {
    EffectiveAssignment::of(state.tenant(tenant_id)?, state.service(service)?)
}

fn all_tenants(state: &RoutingState, filter: &AssignmentFilter) -> Vec<String> {
    tenants(state, filter)
        .map(|entry| entry.tenant.id.clone())
        .collect()
}

fn all_services(
    before: &RoutingState,
    after: &RoutingState,
    filter: &AssignmentFilter,
) -> Vec<String> {
    let mut names: BTreeSet<String> = before
        .services()
        .chain(after.services())
        .map(|s| s.service.name.clone())
        .collect();
    names.retain(|name| filter.wants_service(name));
    names.into_iter().collect()
}

#[cfg(test)]
mod tests;
