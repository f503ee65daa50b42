//! Conversions between the `greyrouter.v1` messages and the domain, in one place.
//!
//! Requests become domain values with `TryFrom`-style functions whose errors name the bad field;
//! domain values become messages with `From`.

use std::collections::{BTreeMap, BTreeSet};

use greyrouter_proto::v1 as pb;
use routing_core::watch::EffectiveAssignment;
use routing_core::{Instance, Override, RoutingError, Service, Strategy, Tenant};

/// Returns the domain strategy of a proto enum value; `None` for unspecified.
pub fn strategy(field: &str, value: i32) -> Result<Option<Strategy>, RoutingError> {
    let strategy = pb::Strategy::try_from(value)
        .map_err(|_| RoutingError::invalid(field, format!("unknown strategy {value}")))?;
    Ok(match strategy {
        pb::Strategy::Unspecified => None,
        pb::Strategy::RoundRobin => Some(Strategy::RoundRobin),
        pb::Strategy::Random => Some(Strategy::Random),
        pb::Strategy::WeightedRoundRobin => Some(Strategy::WeightedRoundRobin),
        pb::Strategy::LeastConnections => Some(Strategy::LeastConnections),
        pb::Strategy::HealthAware => Some(Strategy::HealthAware),
        pb::Strategy::ConsistentHash => Some(Strategy::ConsistentHash),
    })
}

/// Returns the proto enum value of a strategy.
pub fn strategy_to_proto(strategy: Strategy) -> pb::Strategy {
    match strategy {
        Strategy::RoundRobin => pb::Strategy::RoundRobin,
        Strategy::Random => pb::Strategy::Random,
        Strategy::WeightedRoundRobin => pb::Strategy::WeightedRoundRobin,
        Strategy::LeastConnections => pb::Strategy::LeastConnections,
        Strategy::HealthAware => pb::Strategy::HealthAware,
        Strategy::ConsistentHash => pb::Strategy::ConsistentHash,
    }
}

/// Returns a required sub-message or an error naming it.
pub fn required<T>(field: &str, value: Option<T>) -> Result<T, RoutingError> {
    value.ok_or_else(|| RoutingError::invalid(field, "is required"))
}

/// Converts a tenant message.
pub fn tenant(message: pb::Tenant) -> Tenant {
    Tenant {
        id: message.id,
        name: message.name,
        region: message.region,
        tier: message.tier,
        labels: message.labels.into_iter().collect(),
        active: message.active,
    }
}

/// Converts a service message.
pub fn service(message: pb::Service) -> Result<Service, RoutingError> {
    Ok(Service {
        strategy: strategy("service.strategy", message.strategy)?.unwrap_or_default(),
        name: message.name,
        default_version: message.default_version,
        versions: message.versions.into_iter().collect(),
    })
}

/// Converts an instance message, applying the documented defaults.
pub fn instance(message: pb::Instance) -> Result<Instance, RoutingError> {
    let health_score = match message.health_score {
        None => 100,
        Some(score) if score <= 100 => score as u8,
        Some(_) => {
            return Err(RoutingError::invalid(
                "instance.health_score",
                "must be 0-100",
            ));
        }
    };
    Ok(Instance {
        id: message.id,
        address: message.address,
        service: message.service,
        version: message.version,
        weight: message.weight.unwrap_or(1),
        region: message.region,
        zone: message.zone,
        metadata: message.metadata.into_iter().collect(),
        healthy: message.healthy.unwrap_or(true),
        health_score,
    })
}

/// Returns a set of names, each checked.
pub fn names(field: &str, values: Vec<String>) -> Result<BTreeSet<String>, RoutingError> {
    values
        .into_iter()
        .map(|value| routing_core::validate::name(field, &value).map(|()| value))
        .collect()
}

/// Returns the message of a tenant.
pub fn tenant_message(tenant: &Tenant) -> pb::Tenant {
    {
        pb::Tenant {
            id: tenant.id.clone(),
            name: tenant.name.clone(),
            region: tenant.region.clone(),
            tier: tenant.tier.clone(),
            labels: tenant.labels.clone().into_iter().collect(),
            active: tenant.active,
        }
    }
}

/// Returns the message of a service.
pub fn service_message(service: &Service) -> pb::Service {
    {
        pb::Service {
            name: service.name.clone(),
            default_version: service.default_version.clone(),
            strategy: strategy_to_proto(service.strategy).into(),
            versions: service.versions.iter().cloned().collect(),
        }
    }
}

/// Returns the message of an instance.
pub fn instance_message(instance: &Instance) -> pb::Instance {
    {
        pb::Instance {
            id: instance.id.clone(),
            address: instance.address.clone(),
            service: instance.service.clone(),
            version: instance.version.clone(),
            weight: Some(instance.weight),
            region: instance.region.clone(),
            zone: instance.zone.clone(),
            metadata: instance.metadata.clone().into_iter().collect(),
            healthy: Some(instance.healthy),
            health_score: Some(u32::from(instance.health_score)),
        }
    }
}

/// Returns the message of an override.
pub fn override_message(rule: &Override) -> pb::Override {
    {
        pb::Override {
            id: rule.id.clone(),
            service: rule.service.clone(),
            from_version: rule.from_version.clone(),
            to_version: rule.to_version.clone(),
            tenant_ids: rule.tenant_ids.iter().cloned().collect(),
            created_revision: rule.created_revision,
        }
    }
}

/// Returns the message of an effective assignment, with its instances.
pub fn assignment_message(assignment: &EffectiveAssignment) -> pb::Assignment {
    {
        let instances = assignment.pool.as_ref().map_or_else(Vec::new, |pool| {
            pool.members()
                .iter()
                .map(|member| {
                    let instance = &member.instance;
                    pb::InstanceAddress {
                        instance_id: instance.id.clone(),
                        address: instance.address.clone(),
                        weight: instance.weight,
                        region: instance.region.clone(),
                        zone: instance.zone.clone(),
                        healthy: instance.healthy,
                        health_score: u32::from(instance.health_score),
                    }
                })
                .collect()
        });
        pb::Assignment {
            tenant_id: assignment.tenant_id.clone(),
            service: assignment.service.clone(),
            version: assignment.resolution.version.clone(),
            source: assignment.resolution.source.to_string(),
            instances,
        }
    }
}

/// Checks a request's metadata against the configured limits.
pub fn metadata(
    metadata: &std::collections::HashMap<String, String>,
    max_entries: usize,
    max_bytes: usize,
) -> Result<(), RoutingError> {
    if metadata.len() > max_entries {
        return Err(RoutingError::invalid(
            "metadata",
            format!("more than {max_entries} entries"),
        ));
    }
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > max_bytes {
        return Err(RoutingError::invalid(
            "metadata",
            format!("more than {max_bytes} bytes"),
        ));
    }
    Ok(())
}

/// Sorted copy of a proto map, for stable output.
pub fn sorted(map: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
