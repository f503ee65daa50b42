//! The routing state as plain records ([`StateDump`]): a seed file, a backup, a store's
//! snapshot; and the state rebuilt from them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Entity;
use crate::state::apply::{validate_instance, validate_tenant};
use crate::state::{Mutation, Pins, RoutingState, ServiceEntry, TenantEntry};
use crate::{
    Experiment, Instance, Override, Revision, Rollout, RoutingError, Service, Tenant, validate,
};

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

impl RoutingState {
    /// Returns the whole state as plain records.
    pub fn dump(&self) -> StateDump {
        let mut dump = StateDump {
            revision: self.revision,
            ..StateDump::default()
        };
        for entry in self.tenant_entries() {
            dump.tenants.push(entry.tenant.clone());
            for (service, version) in self.pins_of(entry) {
                dump.pins.push(Pin {
                    tenant_id: entry.tenant.id.clone(),
                    service: service.to_owned(),
                    version: version.to_owned(),
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
        let mut loader = StateLoader::new(&dump.services, &dump.instances)?;
        // Pins are grouped per tenant by reference: no name is copied before it is numbered.
        let mut pins: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
        for pin in &dump.pins {
            pins.entry(pin.tenant_id.as_str())
                .or_default()
                .push((pin.service.as_str(), pin.version.as_str()));
        }
        for tenant in &dump.tenants {
            let tenant_pins = pins.remove(tenant.id.as_str()).unwrap_or_default();
            loader.tenant(tenant.clone(), tenant_pins)?;
        }
        if let Some(tenant_id) = pins.keys().next() {
            return Err(RoutingError::not_found(Entity::Tenant, *tenant_id));
        }
        loader.finish(
            dump.revision,
            &dump.overrides,
            &dump.rollouts,
            &dump.experiments,
        )
    }
}

/// Builds a state straight from records as a store reads them: services and instances first,
/// then tenants one at a time with their pins, then the rules. Every record is checked as in
/// [`RoutingState::from_dump`] (which is built on it), but nothing is held twice: a tenant's
/// pins go into the state as numbers as soon as they are read.
#[derive(Debug)]
pub struct StateLoader {
    state: RoutingState,
    /// Service name -> the entry pins are numbered against (a copy of the state's).
    services: HashMap<String, Arc<ServiceEntry>, foldhash::fast::FixedState>,
    /// Reused for each tenant's pins.
    scratch: Vec<(u32, u32)>,
}

impl StateLoader {
    /// Starts a state with these services and instances (and no tenants yet).
    pub fn new(services: &[Service], instances: &[Instance]) -> Result<StateLoader, RoutingError> {
        let mut state = RoutingState::default();
        for service in services {
            state.apply_in_place(&Mutation::UpsertService {
                service: service.clone(),
                force: true,
            })?;
        }
        // Each pool is built once from all its instances, not once per instance.
        let mut by_service: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
        for instance in instances {
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
                entry.add_version(version);
                entry.set_instances(version, list);
            }
            state.services.insert(name.to_owned(), Arc::new(entry));
        }
        let services = state
            .services
            .iter()
            .map(|(name, entry)| (name.clone(), Arc::clone(entry)))
            .collect();
        Ok(StateLoader {
            state,
            services,
            scratch: Vec::new(),
        })
    }

    /// Adds a tenant (or replaces one added before) with its pins as (service, version) names;
    /// of two pins of one service the later wins.
    pub fn tenant<'p>(
        &mut self,
        tenant: Tenant,
        pins: impl IntoIterator<Item = (&'p str, &'p str)>,
    ) -> Result<(), RoutingError> {
        validate_tenant(&tenant)?;
        self.scratch.clear();
        for (service, version) in pins {
            // Known names were checked when they became known; only unknown ones are checked
            // here, so that a malformed name is reported as such.
            let Some(entry) = self.services.get(service) else {
                validate::name("pin.service", service)?;
                return Err(RoutingError::not_found(Entity::Service, service));
            };
            let Some(number) = entry.version_number(version) else {
                validate::name("pin.version", version)?;
                return Err(RoutingError::not_found(
                    Entity::Version,
                    format!("{service}/{version}"),
                ));
            };
            self.scratch.push((entry.number, number));
        }
        let entry = TenantEntry::new(tenant, Pins::from_pairs(&mut self.scratch));
        self.state.put_tenant(Arc::new(entry));
        Ok(())
    }

    /// Applies a change to one tenant (its record, or one of its pins) made after its record
    /// may have been read: a pin is set without the change's compare-and-set and instance
    /// checks (they held when it was made), so the change writes the same value whatever the
    /// tenant held, as the store wrote it. Returns `false`, changing nothing, for any other
    /// change.
    pub fn replay_tenant_change(&mut self, mutation: &Mutation) -> Result<bool, RoutingError> {
        let unchecked = match mutation {
            Mutation::SetTenantVersion {
                tenant_id,
                service,
                version,
                ..
            } => Mutation::SetTenantVersion {
                tenant_id: tenant_id.clone(),
                service: service.clone(),
                version: version.clone(),
                expected_version: None,
                force: true,
            },
            Mutation::ClearTenantVersion { .. } | Mutation::UpsertTenant { .. } => mutation.clone(),
            _ => return Ok(false),
        };
        self.state.apply_in_place(&unchecked)?;
        Ok(true)
    }

    /// Adds the rules and returns the state at `revision`.
    pub fn finish(
        mut self,
        revision: Revision,
        overrides: &[Override],
        rollouts: &[Rollout],
        experiments: &[Experiment],
    ) -> Result<RoutingState, RoutingError> {
        let state = &mut self.state;
        let rollouts = rollouts.iter().map(|rollout| Mutation::UpsertRollout {
            rollout: rollout.clone(),
        });
        let experiments = experiments
            .iter()
            .map(|experiment| Mutation::UpsertExperiment {
                experiment: experiment.clone(),
            });
        for mutation in rollouts.chain(experiments) {
            state.apply_in_place(&mutation)?;
        }
        let mut overrides: Vec<&Override> = overrides.iter().collect();
        overrides.sort_by_key(|o| o.created_revision);
        for rule in overrides {
            let mut entry = state.service_entry(&rule.service)?;
            entry.overrides.push(rule.clone());
            state.services.insert(rule.service.clone(), Arc::new(entry));
        }
        state.revision = revision;
        Ok(self.state)
    }
}
