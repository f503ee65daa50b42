//! The routing state as plain records ([`StateDump`]): a seed file, a backup, a store's
//! snapshot; and the state rebuilt from them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Entity;
use crate::state::apply::{validate_instance, validate_tenant};
use crate::state::{Mutation, RoutingState, TenantEntry};
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
