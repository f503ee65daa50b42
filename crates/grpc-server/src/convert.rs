//! Conversions between the `greyrouter.v1` messages and the domain, in one place.
//!
//! Requests become domain values with `TryFrom`-style functions whose errors name the bad field;
//! domain values become messages with `From`.

use std::collections::{BTreeMap, BTreeSet};

use greyrouter_proto::v1 as pb;
use routing_core::analysis::{AnalysisPolicy, Measurement, StepAction};
use routing_core::model::{RolloutDecision, RolloutEvent};
use routing_core::watch::EffectiveAssignment;
use routing_core::{
    Experiment, Instance, Override, Rollout, RoutingError, Service, Strategy, Tenant, Variant,
};

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
            strategy: strategy_to_proto(assignment.strategy).into(),
            region: assignment.region.clone(),
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
    for (key, value) in metadata {
        routing_core::validate::name("metadata.key", key)?;
        routing_core::validate::text("metadata.value", value)?;
    }
    Ok(())
}

/// Sorted copy of a proto map, for stable output.
pub fn sorted(map: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Converts a cohort, checking its names.
pub fn cohort(message: Option<pb::Cohort>) -> Result<routing_core::Cohort, RoutingError> {
    let message = message.unwrap_or_default();
    let labels: BTreeMap<String, String> = message.labels.into_iter().collect();
    routing_core::validate::entries("cohort.labels", &labels)?;
    Ok(routing_core::Cohort {
        tiers: names("cohort.tiers", message.tiers)?,
        labels,
        tenant_ids: names("cohort.tenant_ids", message.tenant_ids)?,
    })
}

/// Returns the message of a cohort.
pub fn cohort_message(cohort: &routing_core::Cohort) -> pb::Cohort {
    pb::Cohort {
        tiers: cohort.tiers.iter().cloned().collect(),
        labels: cohort.labels.clone().into_iter().collect(),
        tenant_ids: cohort.tenant_ids.iter().cloned().collect(),
    }
}

/// Converts an analysis policy; zero fields take the defaults.
pub fn analysis(message: Option<pb::AnalysisPolicy>) -> Result<AnalysisPolicy, RoutingError> {
    let defaults = AnalysisPolicy::default();
    let Some(message) = message else {
        return Ok(defaults);
    };
    let fraction = |field: &str, percent: f64, default: f64| {
        if !percent.is_finite() || percent < 0.0 {
            Err(RoutingError::invalid(
                field,
                "must be a positive percentage",
            ))
        } else if percent == 0.0 {
            Ok(default)
        } else {
            Ok(percent / 100.0)
        }
    };
    let policy = AnalysisPolicy {
        max_error_rate: fraction(
            "analysis.max_error_rate_percent",
            message.max_error_rate_percent,
            defaults.max_error_rate,
        )?,
        max_error_rate_increase: fraction(
            "analysis.max_error_rate_increase_percent",
            message.max_error_rate_increase_percent,
            defaults.max_error_rate_increase,
        )?,
        max_p99_increase: fraction(
            "analysis.max_p99_increase_percent",
            message.max_p99_increase_percent,
            defaults.max_p99_increase,
        )?,
        max_p99_ms: (message.max_p99_ms > 0).then_some(message.max_p99_ms),
        min_requests: if message.min_requests == 0 {
            defaults.min_requests
        } else {
            message.min_requests
        },
        max_failed_checks: if message.max_failed_checks == 0 {
            defaults.max_failed_checks
        } else {
            message.max_failed_checks
        },
    };
    policy
        .validate()
        .map_err(|reason| RoutingError::invalid("analysis", reason))?;
    Ok(policy)
}

/// Returns the message of an analysis policy.
pub fn analysis_message(policy: &AnalysisPolicy) -> pb::AnalysisPolicy {
    pb::AnalysisPolicy {
        max_error_rate_percent: policy.max_error_rate * 100.0,
        max_error_rate_increase_percent: policy.max_error_rate_increase * 100.0,
        max_p99_increase_percent: policy.max_p99_increase * 100.0,
        max_p99_ms: policy.max_p99_ms.unwrap_or(0),
        min_requests: policy.min_requests,
        max_failed_checks: policy.max_failed_checks,
    }
}

/// Converts rollout steps in percent to basis points.
pub fn steps(percents: &[f64]) -> Result<Vec<u32>, RoutingError> {
    if percents.is_empty() {
        return Err(RoutingError::invalid("steps", "must not be empty"));
    }
    percents
        .iter()
        .map(|&percent| {
            if percent.is_finite() && percent > 0.0 && percent <= 100.0 {
                Ok((percent * 100.0).round() as u32)
            } else {
                Err(RoutingError::invalid(
                    "steps",
                    format!("{percent} is not a share above 0 and at most 100 percent"),
                ))
            }
        })
        .collect()
}

fn measurement_message(measurement: &Measurement) -> pb::Measurement {
    pb::Measurement {
        requests: measurement.requests,
        errors: measurement.errors,
        error_rate: measurement.error_rate,
        p99_ms: measurement.p99_ms.unwrap_or(0),
    }
}

/// Returns the event name and detail of a rollout decision.
pub fn decision_event(decision: &RolloutDecision) -> (&'static str, String) {
    match &decision.event {
        RolloutEvent::Started => ("started", decision.note.clone()),
        RolloutEvent::Paused => ("paused", decision.note.clone()),
        RolloutEvent::Resumed => ("resumed", decision.note.clone()),
        RolloutEvent::Promoted => ("promoted", decision.note.clone()),
        RolloutEvent::Aborted => ("aborted", decision.note.clone()),
        RolloutEvent::Step { action } => {
            let name = match action {
                StepAction::Wait => "wait",
                StepAction::Advance { .. } => "advance",
                StepAction::Complete => "complete",
                StepAction::Hold { .. } => "hold",
                StepAction::FailCheck { .. } => "fail_check",
                StepAction::Abort { .. } => "abort",
            };
            (name, crate::rollouts::describe(action))
        }
    }
}

/// Returns the message of a rollout.
pub fn rollout_message(rollout: &Rollout) -> pb::Rollout {
    let percent = |bp: u32| f64::from(bp) / 100.0;
    let mut message = pb::Rollout {
        id: rollout.id.clone(),
        service: rollout.service.clone(),
        to_version: rollout.to_version.clone(),
        percent: percent(rollout.basis_points),
        cohort: Some(cohort_message(&rollout.cohort)),
        phase: "fixed".to_owned(),
        ..pb::Rollout::default()
    };
    if let Some(plan) = &rollout.plan {
        message.from_version = plan.from_version.clone();
        message.steps = plan.steps.iter().map(|&bp| percent(bp)).collect();
        message.step = plan.step as u32;
        message.interval_ms = plan.interval_ms;
        message.phase = plan.phase.as_str().to_owned();
        message.failed_checks = plan.failed_checks;
        message.step_started_ms = plan.step_started_ms;
        message.analysis = Some(analysis_message(&plan.analysis));
        message.decisions = plan
            .decisions
            .iter()
            .map(|decision| {
                let (event, detail) = decision_event(decision);
                pb::RolloutDecision {
                    at_ms: decision.at_ms,
                    step: decision.step as u32,
                    percent: percent(decision.basis_points),
                    event: event.to_owned(),
                    detail,
                    canary: decision.canary.as_ref().map(measurement_message),
                    baseline: decision.baseline.as_ref().map(measurement_message),
                }
            })
            .collect();
    }
    message
}

/// Converts experiment variants.
pub fn variants(messages: Vec<pb::Variant>) -> Vec<Variant> {
    messages
        .into_iter()
        .map(|v| Variant {
            name: v.name,
            version: v.version,
            weight: v.weight,
        })
        .collect()
}

/// Returns the message of an experiment, with how many active tenants each variant has now.
pub fn experiment_message(
    state: &routing_core::RoutingState,
    experiment: &Experiment,
) -> pb::Experiment {
    let mut tenants_per_variant: std::collections::HashMap<String, u64> = experiment
        .variants
        .iter()
        .map(|v| (v.name.clone(), 0))
        .collect();
    for entry in state.tenants_after(None).filter(|t| t.tenant.active) {
        if let Some(variant) = experiment.variant_for(&entry.tenant) {
            *tenants_per_variant.entry(variant.name.clone()).or_default() += 1;
        }
    }
    pb::Experiment {
        id: experiment.id.clone(),
        service: experiment.service.clone(),
        variants: experiment
            .variants
            .iter()
            .map(|v| pb::Variant {
                name: v.name.clone(),
                version: v.version.clone(),
                weight: v.weight,
            })
            .collect(),
        cohort: Some(cohort_message(&experiment.cohort)),
        sticky_tenants: experiment.sticky.len() as u64,
        tenants_per_variant,
    }
}
