//! What a mutation writes to the key layout, derived from the states before and after it.
//!
//! Each write sets or removes one field or member; the commit script applies them, bumps the
//! revision and appends the change in one atomic step. Records are written whole from the state
//! after the change, so the keys always hold exactly what [`RoutingState::dump`] would.

use routing_core::{Mutation, RoutingState, Tenant};

use crate::keys::Keys;

/// One field or member written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    /// `HSET key field value`.
    HSet {
        key: String,
        field: String,
        value: String,
    },
    /// `HDEL key field`.
    HDel { key: String, field: String },
    /// `SADD key member`.
    SAdd { key: String, member: String },
    /// `SREM key member`.
    SRem { key: String, member: String },
}

impl Write {
    /// Returns the script's op code, key, field or member, and value.
    pub(crate) fn parts(&self) -> (&'static str, &str, &str, &str) {
        match self {
            Write::HSet { key, field, value } => ("hset", key, field, value),
            Write::HDel { key, field } => ("hdel", key, field, ""),
            Write::SAdd { key, member } => ("sadd", key, member, ""),
            Write::SRem { key, member } => ("srem", key, member, ""),
        }
    }
}

fn hset(key: String, field: &str, value: impl Into<String>) -> Write {
    Write::HSet {
        key,
        field: field.to_owned(),
        value: value.into(),
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    // Serialising plain records with string keys cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// Returns the writes that bring the keys from `before` to `after`, which `mutation` produced.
pub(crate) fn writes(
    keys: &Keys,
    before: &RoutingState,
    after: &RoutingState,
    mutation: &Mutation,
) -> Vec<Write> {
    let mut out = Vec::new();
    match mutation {
        Mutation::UpsertTenant { tenant } => {
            if let Some(entry) = after.tenant(&tenant.id) {
                tenant_writes(keys, &entry.tenant, &mut out);
            }
        }
        Mutation::UpsertService { service, .. } => {
            service_writes(keys, after, &service.name, &mut out)
        }
        Mutation::SetDefaultVersion { service, .. } => {
            service_writes(keys, after, service, &mut out)
        }
        Mutation::RegisterInstance { instance } => {
            service_writes(keys, after, &instance.service, &mut out);
            if let Some(old) = instance_version(before, &instance.service, &instance.id)
                && old != instance.version
            {
                out.push(Write::HDel {
                    key: keys.instances(&instance.service, &old),
                    field: instance.id.clone(),
                });
            }
            let stored = after
                .service(&instance.service)
                .and_then(|s| s.pool(&instance.version))
                .and_then(|pool| pool.member(&instance.id))
                .map_or_else(|| json(instance), |m| json(m.instance.as_ref()));
            out.push(hset(
                keys.instances(&instance.service, &instance.version),
                &instance.id,
                stored,
            ));
        }
        Mutation::DeregisterInstance {
            service,
            instance_id,
        } => {
            if let Some(version) = instance_version(before, service, instance_id) {
                out.push(Write::HDel {
                    key: keys.instances(service, &version),
                    field: instance_id.clone(),
                });
            }
        }
        Mutation::SetTenantVersion {
            tenant_id,
            service,
            version,
            ..
        } => out.push(hset(
            keys.tenant_services(tenant_id),
            service,
            version.clone(),
        )),
        Mutation::ClearTenantVersion { tenant_id, service } => out.push(Write::HDel {
            key: keys.tenant_services(tenant_id),
            field: service.clone(),
        }),
        Mutation::EmergencyRollback { service, .. } => {
            let made = after
                .service(service)
                .and_then(|s| s.overrides().last().cloned());
            if let Some(rule) = made {
                out.push(hset(keys.overrides(service), &rule.id, json(&rule)));
            }
        }
        Mutation::ClearOverride {
            service,
            override_id,
        } => out.push(Write::HDel {
            key: keys.overrides(service),
            field: override_id.clone(),
        }),
        Mutation::UpsertRollout { rollout } => out.push(hset(
            keys.rollouts(&rollout.service),
            &rollout.id,
            json(rollout),
        )),
        Mutation::RemoveRollout {
            service,
            rollout_id,
        } => out.push(Write::HDel {
            key: keys.rollouts(service),
            field: rollout_id.clone(),
        }),
        // A creation writes what an upsert writes: the new experiment, whole.
        Mutation::UpsertExperiment { experiment } | Mutation::CreateExperiment { experiment } => {
            out.push(hset(
                keys.experiments(&experiment.service),
                &experiment.id,
                json(experiment),
            ))
        }
        Mutation::RemoveExperiment {
            service,
            experiment_id,
        } => out.push(Write::HDel {
            key: keys.experiments(service),
            field: experiment_id.clone(),
        }),
        Mutation::StartRollout { rollout, .. } => {
            rollout_writes(keys, after, &rollout.service, &rollout.id, &mut out);
        }
        Mutation::ProgressRollout {
            service,
            rollout_id,
            ..
        }
        | Mutation::ControlRollout {
            service,
            rollout_id,
            ..
        } => {
            // A completed or promoted rollout also changes the default version.
            service_writes(keys, after, service, &mut out);
            rollout_writes(keys, after, service, rollout_id, &mut out);
        }
        Mutation::ReplaceState { .. } => replace_writes(keys, before, after, &mut out),
        Mutation::UpdateExperiment {
            service,
            experiment_id,
            ..
        } => {
            let updated = after
                .service(service)
                .and_then(|s| s.experiments().iter().find(|e| &e.id == experiment_id));
            if let Some(experiment) = updated {
                out.push(hset(
                    keys.experiments(service),
                    experiment_id,
                    json(experiment),
                ));
            }
        }
    }
    out
}

/// The writes of a whole new state: every record that differs is written, every record that
/// went is removed.
fn replace_writes(keys: &Keys, before: &RoutingState, after: &RoutingState, out: &mut Vec<Write>) {
    use std::collections::BTreeMap;
    let (old, new) = (before.dump(), after.dump());
    // Tenants.
    let old_tenants: BTreeMap<&str, &Tenant> =
        old.tenants.iter().map(|t| (t.id.as_str(), t)).collect();
    let new_tenants: BTreeMap<&str, &Tenant> =
        new.tenants.iter().map(|t| (t.id.as_str(), t)).collect();
    for (id, tenant) in &new_tenants {
        if old_tenants.get(id) != Some(tenant) {
            tenant_writes(keys, tenant, out);
        }
    }
    for id in old_tenants
        .keys()
        .filter(|id| !new_tenants.contains_key(*id))
    {
        let key = keys.tenant_metadata(id);
        for field in ["name", "region", "tier", "active", "labels"] {
            out.push(Write::HDel {
                key: key.clone(),
                field: field.to_owned(),
            });
        }
        for set in [keys.tenants(), keys.active_tenants()] {
            out.push(Write::SRem {
                key: set,
                member: (*id).to_owned(),
            });
        }
    }
    // Pins.
    let pins = |dump: &routing_core::StateDump| -> BTreeMap<(String, String), String> {
        dump.pins
            .iter()
            .map(|p| ((p.tenant_id.clone(), p.service.clone()), p.version.clone()))
            .collect()
    };
    let (old_pins, new_pins) = (pins(&old), pins(&new));
    for ((tenant, service), version) in &new_pins {
        if old_pins.get(&(tenant.clone(), service.clone())) != Some(version) {
            out.push(hset(keys.tenant_services(tenant), service, version.clone()));
        }
    }
    for (tenant, service) in old_pins.keys().filter(|k| !new_pins.contains_key(*k)) {
        out.push(Write::HDel {
            key: keys.tenant_services(tenant),
            field: service.clone(),
        });
    }
    // Services.
    let old_services: BTreeMap<&str, _> =
        old.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let new_services: BTreeMap<&str, _> =
        new.services.iter().map(|s| (s.name.as_str(), s)).collect();
    for (name, service) in &new_services {
        if old_services.get(name) != Some(service) {
            service_writes(keys, after, name, out);
        }
    }
    for name in old_services
        .keys()
        .filter(|n| !new_services.contains_key(*n))
    {
        let key = keys.service(name);
        for field in ["default_version", "strategy", "versions"] {
            out.push(Write::HDel {
                key: key.clone(),
                field: field.to_owned(),
            });
        }
        out.push(Write::SRem {
            key: keys.services(),
            member: (*name).to_owned(),
        });
    }
    // Instances, overrides, rollouts and experiments: one hash field each.
    let mut fields = |before: BTreeMap<(String, String), String>,
                      after: BTreeMap<(String, String), String>| {
        for ((key, field), value) in &after {
            if before.get(&(key.clone(), field.clone())) != Some(value) {
                out.push(hset(key.clone(), field, value.clone()));
            }
        }
        for (key, field) in before.keys().filter(|k| !after.contains_key(*k)) {
            out.push(Write::HDel {
                key: key.clone(),
                field: field.clone(),
            });
        }
    };
    let instances = |dump: &routing_core::StateDump| {
        dump.instances
            .iter()
            .map(|i| {
                (
                    (keys.instances(&i.service, &i.version), i.id.clone()),
                    json(i),
                )
            })
            .collect()
    };
    fields(instances(&old), instances(&new));
    let overrides = |dump: &routing_core::StateDump| {
        dump.overrides
            .iter()
            .map(|o| ((keys.overrides(&o.service), o.id.clone()), json(o)))
            .collect()
    };
    fields(overrides(&old), overrides(&new));
    let rollouts = |dump: &routing_core::StateDump| {
        dump.rollouts
            .iter()
            .map(|r| ((keys.rollouts(&r.service), r.id.clone()), json(r)))
            .collect()
    };
    fields(rollouts(&old), rollouts(&new));
    let experiments = |dump: &routing_core::StateDump| {
        dump.experiments
            .iter()
            .map(|e| ((keys.experiments(&e.service), e.id.clone()), json(e)))
            .collect()
    };
    fields(experiments(&old), experiments(&new));
}

fn rollout_writes(
    keys: &Keys,
    after: &RoutingState,
    service: &str,
    id: &str,
    out: &mut Vec<Write>,
) {
    let rollout = after
        .service(service)
        .and_then(|s| s.rollouts().iter().find(|r| r.id == id));
    if let Some(rollout) = rollout {
        out.push(hset(keys.rollouts(service), id, json(rollout)));
    }
}

fn tenant_writes(keys: &Keys, tenant: &Tenant, out: &mut Vec<Write>) {
    let key = keys.tenant_metadata(&tenant.id);
    out.push(hset(key.clone(), "name", tenant.name.clone()));
    out.push(hset(key.clone(), "region", tenant.region.clone()));
    out.push(hset(key.clone(), "tier", tenant.tier.clone()));
    out.push(hset(
        key.clone(),
        "active",
        if tenant.active { "1" } else { "0" },
    ));
    out.push(hset(key, "labels", json(&tenant.labels)));
    out.push(Write::SAdd {
        key: keys.tenants(),
        member: tenant.id.clone(),
    });
    let active = if tenant.active {
        Write::SAdd {
            key: keys.active_tenants(),
            member: tenant.id.clone(),
        }
    } else {
        Write::SRem {
            key: keys.active_tenants(),
            member: tenant.id.clone(),
        }
    };
    out.push(active);
}

fn service_writes(keys: &Keys, after: &RoutingState, name: &str, out: &mut Vec<Write>) {
    let Some(entry) = after.service(name) else {
        return;
    };
    let service = &entry.service;
    let key = keys.service(name);
    out.push(hset(
        key.clone(),
        "default_version",
        service.default_version.clone(),
    ));
    out.push(hset(key.clone(), "strategy", service.strategy.as_str()));
    out.push(hset(key, "versions", json(&service.versions)));
    out.push(Write::SAdd {
        key: keys.services(),
        member: name.to_owned(),
    });
}

/// The version an instance is registered under, if any.
fn instance_version(state: &RoutingState, service: &str, instance_id: &str) -> Option<String> {
    state
        .service(service)?
        .pools()
        .find(|(_, pool)| pool.member(instance_id).is_some())
        .map(|(version, _)| version.clone())
}

#[cfg(test)]
mod tests {
    use routing_core::{Cohort, Experiment, Service, Strategy, Variant};

    use super::*;

    #[test]
    fn creating_an_experiment_writes_what_upserting_it_writes() {
        let keys = Keys::new("p");
        let (before, _) = RoutingState::default()
            .apply(&Mutation::UpsertService {
                service: Service {
                    name: "api".into(),
                    default_version: "v1".into(),
                    strategy: Strategy::RoundRobin,
                    versions: ["v1".to_owned(), "v2".to_owned()].into(),
                },
                force: true,
            })
            .expect("a service");
        let experiment = Experiment {
            id: "e1".into(),
            service: "api".into(),
            salt: "api/e1".into(),
            variants: vec![Variant {
                name: "a".into(),
                version: "v2".into(),
                weight: 1,
            }],
            cohort: Cohort::default(),
            sticky: Default::default(),
        };
        let upsert = Mutation::UpsertExperiment {
            experiment: experiment.clone(),
        };
        let create = Mutation::CreateExperiment {
            experiment: experiment.clone(),
        };
        let (upserted, _) = before.apply(&upsert).expect("upserted");
        let (created, _) = before.apply(&create).expect("created");
        let expected = vec![hset(keys.experiments("api"), "e1", json(&experiment))];
        assert_eq!(writes(&keys, &before, &upserted, &upsert), expected);
        assert_eq!(writes(&keys, &before, &created, &create), expected);
    }
}
