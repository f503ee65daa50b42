//! The routing state: every tenant, service, instance and assignment rule at one revision, and
//! the pure function that applies a [`Mutation`] to it.
//!
//! The state is persistent: maps are `imbl` trees and entries sit behind `Arc`, so applying a
//! change copies only the path to what changed, old revisions stay valid for readers that hold
//! them, and a clone is O(1). Applying is deterministic: every replica that applies the same
//! mutations in the same order holds the same state.
//!
//! Layout (every public item is re-exported here):
//! - this module: [`RoutingState`], [`TenantEntry`], [`ServiceEntry`] and what keeps them
//!   consistent;
//! - `queries`: read-only lookups, version resolution and routing ([`RouteQuery`],
//!   [`RouteDecision`]);
//! - `mutation`: the [`Mutation`]s, their [`Scope`] and their [`Outcome`];
//! - `apply`: [`RoutingState::apply`], one function per mutation;
//! - `rollout`: the managed rollout state machine (start, progress, operator control);
//! - `dump`: the state as plain records ([`StateDump`], [`Pin`]) and back;
//! - `footprint`: estimates of the memory a revision holds on its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use imbl::OrdMap;

use crate::balance::Pool;
use crate::{Experiment, Instance, Override, Revision, Rollout, RoutingError, Service, Tenant};

mod apply;
mod dump;
mod footprint;
mod mutation;
pub mod plan;
mod queries;
mod rollout;

pub use self::dump::{Pin, StateDump};
pub use self::mutation::{Mutation, Outcome, Scope};
pub use self::queries::{RouteDecision, RouteQuery};

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
    /// How many of the tenants are inactive (kept as tenants change, for metrics).
    inactive_tenants: usize,
    services: OrdMap<String, Arc<ServiceEntry>>,
}

impl RoutingState {
    /// Returns the revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Inserts or replaces a tenant in both the ordered map and the index.
    fn put_tenant(&mut self, id: String, entry: Arc<TenantEntry>) {
        let inactive = !entry.tenant.active;
        self.tenant_index.insert(id.clone(), Arc::clone(&entry));
        if let Some(previous) = self.tenants.insert(id, entry)
            && !previous.tenant.active
        {
            self.inactive_tenants -= 1;
        }
        if inactive {
            self.inactive_tenants += 1;
        }
    }

    /// Returns a copy of a service's entry to modify.
    fn service_entry(&self, name: &str) -> Result<ServiceEntry, RoutingError> {
        self.find_service(name)
            .map(|entry| ServiceEntry::clone(entry))
    }
}

#[cfg(test)]
pub(crate) mod tests;
