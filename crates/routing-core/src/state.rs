//! The routing state: every tenant, service, instance and assignment rule at one revision, and
//! the pure function that applies a [`Mutation`] to it.
//!
//! The state is persistent: maps are `imbl` trees and entries sit behind `Arc`, so applying a
//! change copies only the path to what changed, old revisions stay valid for readers that hold
//! them, and a clone is O(1). The lookup of tenants by id, the first step of every route, is a
//! flat table shared by revisions with recent changes beside it (`index`). Applying is deterministic: every replica that applies the same
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
//! - `footprint`: estimates of the memory a revision holds on its own;
//! - `index`: tenants by id.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use smol_str::SmolStr;

use crate::balance::Pool;
use crate::{Experiment, Instance, Override, Revision, Rollout, RoutingError, Service, Tenant};

mod apply;
mod dump;
mod footprint;
mod index;
mod mutation;
pub mod plan;
mod queries;
mod rollout;

pub use self::dump::{Pin, StateDump, StateLoader};
pub use self::mutation::{Mutation, Outcome, Scope};
pub use self::queries::{RouteDecision, RouteQuery};

/// A tenant and its pins (service → version).
#[derive(Debug, Clone)]
pub struct TenantEntry {
    /// The tenant's id as the maps of tenants compare it: inline up to 23 bytes, so a lookup
    /// reads it from the entry it is about to use, not from another allocation.
    key: SmolStr,
    /// The tenant.
    pub tenant: Tenant,
    /// Versions pinned per service, by number (see [`ServiceEntry::pinned_version`]).
    pins: Pins,
}

impl TenantEntry {
    fn new(tenant: Tenant, pins: Pins) -> TenantEntry {
        TenantEntry {
            key: SmolStr::new(&tenant.id),
            tenant,
            pins,
        }
    }

    /// Returns how many services the tenant is pinned on.
    pub fn pin_count(&self) -> usize {
        self.pins.0.len()
    }
}

/// A tenant's pins as (service number, version number) pairs in service number order: eight
/// bytes a pin in one allocation a tenant, where a map of names took about 120. The numbers are
/// the state's own ([`ServiceEntry`] keeps both tables) and never leave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Pins(Box<[(u32, u32)]>);

impl Pins {
    /// Builds pins from pairs in any order; of two pins of one service the later wins.
    fn from_pairs(pairs: &mut [(u32, u32)]) -> Pins {
        // A stable sort keeps pins of one service in their given order: the last one is kept.
        pairs.sort_by_key(|&(service, _)| service);
        let mut kept = 0;
        for i in 0..pairs.len() {
            if kept > 0 && pairs[kept - 1].0 == pairs[i].0 {
                pairs[kept - 1] = pairs[i];
            } else {
                pairs[kept] = pairs[i];
                kept += 1;
            }
        }
        Pins(Box::from(&pairs[..kept]))
    }

    fn get(&self, service: u32) -> Option<u32> {
        self.0
            .binary_search_by_key(&service, |&(s, _)| s)
            .ok()
            .map(|i| self.0[i].1)
    }

    /// Returns these pins with `service` pinned to `version`.
    fn with(&self, service: u32, version: u32) -> Pins {
        let mut pairs = self.0.to_vec();
        match pairs.binary_search_by_key(&service, |&(s, _)| s) {
            Ok(i) => pairs[i].1 = version,
            Err(i) => pairs.insert(i, (service, version)),
        }
        Pins(pairs.into_boxed_slice())
    }

    /// Returns these pins without `service`'s, or `None` when it had none.
    fn without(&self, service: u32) -> Option<Pins> {
        let i = self.0.binary_search_by_key(&service, |&(s, _)| s).ok()?;
        let mut pairs = self.0.to_vec();
        pairs.remove(i);
        Some(Pins(pairs.into_boxed_slice()))
    }
}

/// A service's versions numbered in the order they became known. Versions are never forgotten,
/// so a number, once given, names the same version for the service's whole life.
#[derive(Debug, Clone, Default)]
struct VersionNumbers {
    names: Vec<String>,
    numbers: HashMap<String, u32, foldhash::fast::FixedState>,
}

impl VersionNumbers {
    fn number(&self, version: &str) -> Option<u32> {
        self.numbers.get(version).copied()
    }

    fn name(&self, number: u32) -> &str {
        self.names.get(number as usize).map_or("", String::as_str)
    }
}

/// A service, its instances by version, and its assignment rules.
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    /// The service.
    pub service: Service,
    /// The service's number in its state (what pins hold).
    number: u32,
    /// Its versions by number; shared by the entry's copies until a version is added.
    version_numbers: Arc<VersionNumbers>,
    pools: BTreeMap<String, Arc<Pool>>,
    /// Instance id -> version; persistent, so a registration copies a path, not the map.
    instance_versions: OrdMap<String, String>,
    overrides: Vec<Override>,
    rollouts: Vec<Rollout>,
    experiments: Vec<Experiment>,
}

impl ServiceEntry {
    fn new(service: Service, number: u32) -> Self {
        let mut entry = ServiceEntry {
            service: Service {
                versions: BTreeSet::new(),
                ..service.clone()
            },
            number,
            version_numbers: Arc::default(),
            pools: BTreeMap::new(),
            instance_versions: OrdMap::new(),
            overrides: Vec::new(),
            rollouts: Vec::new(),
            experiments: Vec::new(),
        };
        for version in &service.versions {
            entry.add_version(version);
        }
        entry
    }

    /// Makes a version known (numbered for pins); known versions are never forgotten.
    fn add_version(&mut self, version: &str) {
        if self.service.versions.contains(version) {
            return;
        }
        self.service.versions.insert(version.to_owned());
        let numbers = Arc::make_mut(&mut self.version_numbers);
        if !numbers.numbers.contains_key(version) {
            let number = numbers.names.len() as u32;
            numbers.names.push(version.to_owned());
            numbers.numbers.insert(version.to_owned(), number);
        }
    }

    /// Returns the version a tenant is pinned to on this service.
    pub fn pinned_version(&self, tenant: &TenantEntry) -> Option<&str> {
        tenant
            .pins
            .get(self.number)
            .map(|number| self.version_numbers.name(number))
    }

    /// Returns the number of a known version (what a pin holds).
    fn version_number(&self, version: &str) -> Option<u32> {
        self.version_numbers.number(version)
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

/// A tenant's entry as a key: ordered, compared and hashed by the tenant's id, and looked up
/// by it. The maps of tenants hold the entries themselves, not a copy of every id beside each.
#[derive(Debug, Clone)]
struct ById(Arc<TenantEntry>);

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.key
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for ById {}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ById {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.key.as_str().cmp(other.0.key.as_str())
    }
}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes: a lookup by `&str` must find it.
        self.0.key.as_str().hash(state);
    }
}

/// Every tenant, service and rule at one revision.
#[derive(Debug, Clone, Default)]
pub struct RoutingState {
    revision: Revision,
    /// Tenants in id order (listing, pagination).
    tenants: OrdSet<ById>,
    /// The same entries, hashed by id: the lookup on every route.
    tenant_index: self::index::TenantIndex,
    /// How many of the tenants are inactive (kept as tenants change, for metrics).
    inactive_tenants: usize,
    services: OrdMap<String, Arc<ServiceEntry>>,
    /// Service names by number, in the order the services were made (services are never
    /// removed, so numbers are never reused).
    service_names: imbl::Vector<String>,
}

impl RoutingState {
    /// Returns the revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Inserts or replaces a tenant in both the ordered set and the index.
    fn put_tenant(&mut self, entry: Arc<TenantEntry>) {
        let inactive = !entry.tenant.active;
        self.tenant_index.insert(Arc::clone(&entry));
        if let Some(previous) = self.tenants.insert(ById(entry))
            && !previous.0.tenant.active
        {
            self.inactive_tenants -= 1;
        }
        if inactive {
            self.inactive_tenants += 1;
        }
    }

    /// Returns a tenant's entry.
    fn tenant_entry(&self, id: &str) -> Option<&Arc<TenantEntry>> {
        self.tenant_index.get(id)
    }

    /// Returns every tenant's entry in id order.
    fn tenant_entries(&self) -> impl Iterator<Item = &Arc<TenantEntry>> {
        self.tenants.iter().map(|entry| &entry.0)
    }

    /// Returns a new service's entry, numbered after the last one.
    fn new_service_entry(&mut self, service: Service) -> Result<ServiceEntry, RoutingError> {
        let number = u32::try_from(self.service_names.len())
            .map_err(|_| RoutingError::FailedPrecondition("too many services".to_owned()))?;
        self.service_names.push_back(service.name.clone());
        Ok(ServiceEntry::new(service, number))
    }

    /// Returns a tenant's pins as (service, version) names, in service name order.
    pub fn pins_of<'s>(&'s self, tenant: &'s TenantEntry) -> Vec<(&'s str, &'s str)> {
        let mut pins: Vec<(&str, &str)> = tenant
            .pins
            .0
            .iter()
            .filter_map(|&(service, version)| {
                let name = self.service_names.get(service as usize)?;
                let entry = self.services.get(name)?;
                Some((name.as_str(), entry.version_numbers.name(version)))
            })
            .collect();
        pins.sort_unstable();
        pins
    }

    /// Returns a copy of a service's entry to modify.
    fn service_entry(&self, name: &str) -> Result<ServiceEntry, RoutingError> {
        self.find_service(name)
            .map(|entry| ServiceEntry::clone(entry))
    }
}

#[cfg(test)]
pub(crate) mod tests;
