//! The pure reconcile step: a registry's view and the routing state in, the changes out.
//!
//! Only the services a source is configured for are touched, and among their instances only
//! those this source registered (marked with metadata [`SOURCE_KEY`] = the source's name):
//! instances registered by hand, or by another source, are never changed or removed.
//!
//! The protection threshold: when one sync would remove more than `threshold` of the instances a
//! source holds for a service (and more than one), the removals are held, not applied, and the
//! result says so; registrations and updates still go through. A registry that suddenly answers
//! with most of a service gone (a bad deploy of the registry, a wrong namespace, an empty answer
//! during its own failover) is not trusted blindly; removing a single instance always proceeds.

use std::collections::{BTreeMap, BTreeSet};

use routing_core::{Instance, Mutation, RoutingState, validate};

use crate::registry::{DiscoveredInstance, RegistryView};

/// The metadata key marking an instance as registered by a discovery source (its value).
pub const SOURCE_KEY: &str = "greyrouter.source";

/// What one sync should do, and what it leaves out and why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reconciliation {
    /// Registrations, updates and removals, in service and instance order.
    pub mutations: Vec<Mutation>,
    /// Removals held by the protection threshold, one line per service.
    pub held: Vec<String>,
    /// Instances left out (no version, a bad field, an unknown service, an id held by another
    /// source or registered by hand), one line each.
    pub skipped: Vec<String>,
}

/// Computes the changes that make `state` hold what `view` says for `services`, as `source`.
pub fn reconcile(
    state: &RoutingState,
    view: &RegistryView,
    source: &str,
    services: &[String],
    threshold: f64,
) -> Reconciliation {
    let mut out = Reconciliation::default();
    let mut by_service: BTreeMap<&str, Vec<&DiscoveredInstance>> = BTreeMap::new();
    for instance in &view.instances {
        by_service
            .entry(instance.service.as_str())
            .or_default()
            .push(instance);
    }
    let services: BTreeSet<&str> = services.iter().map(String::as_str).collect();
    for service in services {
        let found = by_service.remove(service).unwrap_or_default();
        let Some(entry) = state.service(service) else {
            if !found.is_empty() {
                out.skipped.push(format!(
                    "service '{service}': {} instance(s) in the registry, but no such service in greyrouter (create it first)",
                    found.len()
                ));
            }
            continue;
        };
        // What greyrouter holds for this service: ours (by id), and every id in use.
        let mut ours: BTreeMap<&str, &Instance> = BTreeMap::new();
        let mut others: BTreeSet<&str> = BTreeSet::new();
        for (_, pool) in entry.pools() {
            for member in pool.members().iter() {
                let instance = member.instance.as_ref();
                if instance.metadata.get(SOURCE_KEY).map(String::as_str) == Some(source) {
                    ours.insert(&instance.id, instance);
                } else {
                    others.insert(&instance.id);
                }
            }
        }
        let mut wanted: BTreeSet<&str> = BTreeSet::new();
        for found in found {
            let Some(version) = &found.version else {
                out.skipped.push(format!(
                    "{service}/{}: no version in its metadata; not routed",
                    found.id
                ));
                continue;
            };
            if others.contains(found.id.as_str()) {
                out.skipped.push(format!(
                    "{service}/{}: the id is registered by hand or by another source; left as it is",
                    found.id
                ));
                continue;
            }
            let instance = to_instance(found, version, source);
            if let Err(err) = check(&instance) {
                out.skipped.push(format!("{service}/{}: {err}", found.id));
                continue;
            }
            wanted.insert(found.id.as_str());
            if ours.get(found.id.as_str()) != Some(&&instance) {
                out.mutations.push(Mutation::RegisterInstance { instance });
            }
        }
        let gone: Vec<&str> = ours
            .keys()
            .copied()
            .filter(|id| !wanted.contains(id))
            .collect();
        let share = gone.len() as f64 / ours.len().max(1) as f64;
        if gone.len() > 1 && share > threshold {
            out.held.push(format!(
                "service '{service}': the registry no longer lists {} of {} instance(s) ({:.0}%, over the protection threshold of {:.0}%); removals held",
                gone.len(),
                ours.len(),
                share * 100.0,
                threshold * 100.0
            ));
            continue;
        }
        for id in gone {
            out.mutations.push(Mutation::DeregisterInstance {
                service: service.to_owned(),
                instance_id: id.to_owned(),
            });
        }
    }
    out
}

fn to_instance(found: &DiscoveredInstance, version: &str, source: &str) -> Instance {
    let mut metadata = found.metadata.clone();
    metadata.insert(SOURCE_KEY.to_owned(), source.to_owned());
    Instance {
        id: found.id.clone(),
        address: found.address.clone(),
        service: found.service.clone(),
        version: version.to_owned(),
        weight: found.weight,
        region: found.region.clone(),
        zone: found.zone.clone(),
        metadata,
        healthy: found.healthy,
        health_score: 100,
    }
}

/// The field rules a registration must pass, checked here so that one bad instance is skipped
/// and reported instead of failing its commit.
fn check(instance: &Instance) -> Result<(), routing_core::RoutingError> {
    validate::name("instance.id", &instance.id)?;
    validate::name("instance.version", &instance.version)?;
    validate::optional_name("instance.region", &instance.region)?;
    validate::optional_name("instance.zone", &instance.zone)?;
    validate::entries("instance.metadata", &instance.metadata)?;
    validate::parse_address("instance.address", &instance.address).map(|_| ())
}

#[cfg(test)]
mod tests;
