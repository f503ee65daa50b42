//! Estimates of the memory a revision holds on its own.
//!
//! Revisions share everything a change did not touch (persistent maps, entries behind `Arc`), so
//! what keeping an old revision costs is only what the next one replaced: the replaced tenant or
//! service entry, its replaced pools (with the strategy structures built for them), its rules.
//! [`RoutingState::superseded_bytes`] estimates that, so a history of revisions can be bounded in
//! bytes. Estimates count heap allocations by their lengths plus a fixed overhead per record;
//! they are meant to bound memory within a small factor, not to account for every byte.

use std::sync::Arc;

use crate::model::{Cohort, Tenant};
use crate::state::{RoutingState, Scope, ServiceEntry, TenantEntry};

/// Overhead counted for every record and for the copied path of a persistent map.
const RECORD: usize = 64;
/// The nodes a change copies along the path of a persistent map.
const MAP_PATH: usize = 1024;

impl RoutingState {
    /// Estimates the heap bytes `before` holds that `after`, the state a change within `scope`
    /// produced from it, does not share: what keeping `before` alive beside `after` costs.
    pub fn superseded_bytes(before: &RoutingState, after: &RoutingState, scope: &Scope) -> usize {
        let service = |name: &str| match (before.service(name), after.service(name)) {
            (Some(old), new) => old.unshared_bytes(new.map(Arc::as_ref)),
            (None, _) => 0,
        };
        let tenant = |id: &str| match (before.tenant(id), after.tenant(id)) {
            (Some(old), Some(new)) if Arc::ptr_eq(old, new) => 0,
            (Some(old), _) => tenant_bytes(old),
            (None, _) => 0,
        };
        // A change that folded the index's recent tenants into a new table leaves the old
        // table to `before` alone.
        let index = if before.tenant_index.shares_base(&after.tenant_index) {
            0
        } else {
            before.tenant_index.base_bytes()
        };
        MAP_PATH
            + index
            + match scope {
                Scope::Everything => {
                    before
                        .services()
                        .map(|s| service(&s.service.name))
                        .sum::<usize>()
                        + before
                            .tenants_after(None)
                            .map(|t| tenant(&t.tenant.id))
                            .sum::<usize>()
                }
                Scope::Tenant(id) => tenant(id),
                Scope::Service(name) | Scope::ServiceVersion { service: name, .. } => service(name),
                Scope::Assignment { tenant_id, service } => {
                    tenant(tenant_id) + self::service_if_replaced(before, after, service)
                }
            }
    }
}

/// A pin changes only the tenant; the service entry is counted only if it was replaced too.
fn service_if_replaced(before: &RoutingState, after: &RoutingState, name: &str) -> usize {
    match (before.service(name), after.service(name)) {
        (Some(old), Some(new)) if Arc::ptr_eq(old, new) => 0,
        (Some(old), new) => old.unshared_bytes(new.map(Arc::as_ref)),
        (None, _) => 0,
    }
}

fn tenant_bytes(entry: &TenantEntry) -> usize {
    std::mem::size_of::<TenantEntry>()
        + record_bytes(&entry.tenant)
        + RECORD
        + entry.pin_count() * std::mem::size_of::<(u32, u32)>()
}

fn record_bytes(tenant: &Tenant) -> usize {
    RECORD
        + tenant.id.len()
        + tenant.name.len()
        + tenant.region.len()
        + tenant.tier.len()
        + tenant
            .labels
            .iter()
            .map(|(k, v)| RECORD + k.len() + v.len())
            .sum::<usize>()
}

fn cohort_bytes(cohort: &Cohort) -> usize {
    let set = |items: &mut dyn Iterator<Item = usize>| items.map(|len| RECORD + len).sum::<usize>();
    set(&mut cohort.tiers.iter().map(String::len))
        + set(&mut cohort.tenant_ids.iter().map(String::len))
        + set(&mut cohort.labels.iter().map(|(k, v)| k.len() + v.len()))
}

impl ServiceEntry {
    /// Estimates the heap bytes of this entry that `next` (the entry that replaced it, if any)
    /// does not share.
    fn unshared_bytes(&self, next: Option<&ServiceEntry>) -> usize {
        if next.is_some_and(|next| std::ptr::eq(self, next)) {
            return 0;
        }
        let pools: usize = self
            .pools
            .iter()
            .filter_map(|(version, pool)| {
                let next_pool = next.and_then(|n| n.pools.get(version));
                match next_pool {
                    Some(kept) if Arc::ptr_eq(pool, kept) => None,
                    _ => {
                        Some(RECORD + version.len() + pool.bytes_beside(next_pool.map(Arc::as_ref)))
                    }
                }
            })
            .sum();
        let overrides: usize = self
            .overrides
            .iter()
            .map(|o| {
                RECORD * 2
                    + o.id.len()
                    + o.tenant_ids.iter().map(|t| RECORD + t.len()).sum::<usize>()
            })
            .sum();
        let rollouts: usize = self
            .rollouts
            .iter()
            .map(|r| {
                RECORD * 2
                    + r.id.len()
                    + r.salt.len()
                    + cohort_bytes(&r.cohort)
                    + r.plan.as_ref().map_or(0, |plan| {
                        plan.steps.len() * 4
                            + plan
                                .decisions
                                .iter()
                                .map(|d| RECORD * 4 + d.note.len())
                                .sum::<usize>()
                    })
            })
            .sum();
        let experiments: usize = self
            .experiments
            .iter()
            .map(|e| {
                let sticky_shared = next.is_some_and(|n| {
                    n.experiments
                        .iter()
                        .any(|other| Arc::ptr_eq(&e.sticky, &other.sticky))
                });
                RECORD * 2
                    + e.salt.len()
                    + cohort_bytes(&e.cohort)
                    + e.variants.len() * RECORD * 2
                    + if sticky_shared {
                        0
                    } else {
                        e.sticky
                            .iter()
                            .map(|(k, v)| RECORD + k.len() + v.len())
                            .sum::<usize>()
                    }
            })
            .sum();
        std::mem::size_of::<ServiceEntry>()
            + MAP_PATH
            + self
                .service
                .versions
                .iter()
                .map(|v| RECORD + v.len())
                .sum::<usize>()
            + pools
            + overrides
            + rollouts
            + experiments
    }
}
