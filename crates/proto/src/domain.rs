//! Conversions between the `greyrouter.v1` messages and the domain types of `routing-core`, in
//! one place for the server, the SDK and every other front door (feature `domain`).
//!
//! Requests become domain values with `TryFrom` (or a function, where the field name of the
//! error depends on where the message sits), whose errors name the bad field; domain values
//! become messages with `From`.

use std::collections::{BTreeMap, HashMap};

use routing_core::analysis::{AnalysisPolicy, Measurement, StepAction};
use routing_core::model::{RolloutDecision, RolloutEvent};
use routing_core::watch::EffectiveAssignment;
use routing_core::{
    Cohort, Experiment, Instance, Override, Pool, Rollout, RoutingError, Service, Strategy, Tenant,
    Variant, validate,
};

use crate::v1 as pb;

/// Returns the domain strategy of a proto enum value (`None` for unspecified); an unknown value
/// is refused, naming `field`.
pub fn strategy(field: &str, value: i32) -> Result<Option<Strategy>, RoutingError> {
    let strategy = pb::Strategy::try_from(value)
        .map_err(|_| RoutingError::invalid(field, format!("unknown strategy {value}")))?;
    Ok(Option::<Strategy>::from(strategy))
}

impl From<pb::Strategy> for Option<Strategy> {
    fn from(strategy: pb::Strategy) -> Self {
        match strategy {
            pb::Strategy::Unspecified => None,
            pb::Strategy::RoundRobin => Some(Strategy::RoundRobin),
            pb::Strategy::Random => Some(Strategy::Random),
            pb::Strategy::WeightedRoundRobin => Some(Strategy::WeightedRoundRobin),
            pb::Strategy::LeastConnections => Some(Strategy::LeastConnections),
            pb::Strategy::HealthAware => Some(Strategy::HealthAware),
            pb::Strategy::ConsistentHash => Some(Strategy::ConsistentHash),
        }
    }
}

impl From<Strategy> for pb::Strategy {
    fn from(strategy: Strategy) -> Self {
        match strategy {
            Strategy::RoundRobin => pb::Strategy::RoundRobin,
            Strategy::Random => pb::Strategy::Random,
            Strategy::WeightedRoundRobin => pb::Strategy::WeightedRoundRobin,
            Strategy::LeastConnections => pb::Strategy::LeastConnections,
            Strategy::HealthAware => pb::Strategy::HealthAware,
            Strategy::ConsistentHash => pb::Strategy::ConsistentHash,
        }
    }
}

/// Returns a required sub-message or an error naming it.
pub fn required<T>(field: &str, value: Option<T>) -> Result<T, RoutingError> {
    value.ok_or_else(|| RoutingError::invalid(field, "is required"))
}

impl From<pb::Tenant> for Tenant {
    fn from(message: pb::Tenant) -> Self {
        Tenant {
            id: message.id,
            name: message.name,
            region: message.region,
            tier: message.tier,
            labels: message.labels.into_iter().collect(),
            active: message.active,
        }
    }
}

impl From<&Tenant> for pb::Tenant {
    fn from(tenant: &Tenant) -> Self {
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

impl TryFrom<pb::Service> for Service {
    type Error = RoutingError;

    fn try_from(message: pb::Service) -> Result<Self, RoutingError> {
        Ok(Service {
            strategy: strategy("service.strategy", message.strategy)?.unwrap_or_default(),
            name: message.name,
            default_version: message.default_version,
            versions: message.versions.into_iter().collect(),
        })
    }
}

impl From<&Service> for pb::Service {
    fn from(service: &Service) -> Self {
        pb::Service {
            name: service.name.clone(),
            default_version: service.default_version.clone(),
            strategy: pb::Strategy::from(service.strategy).into(),
            versions: service.versions.iter().cloned().collect(),
        }
    }
}

impl TryFrom<pb::Instance> for Instance {
    type Error = RoutingError;

    /// Applies the documented defaults: weight 1, healthy, health score 100.
    fn try_from(message: pb::Instance) -> Result<Self, RoutingError> {
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
}

impl From<&Instance> for pb::Instance {
    fn from(instance: &Instance) -> Self {
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

impl From<&Override> for pb::Override {
    fn from(rule: &Override) -> Self {
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

impl From<&Instance> for pb::InstanceAddress {
    fn from(instance: &Instance) -> Self {
        pb::InstanceAddress {
            instance_id: instance.id.clone(),
            address: instance.address.clone(),
            weight: instance.weight,
            region: instance.region.clone(),
            zone: instance.zone.clone(),
            healthy: instance.healthy,
            health_score: u32::from(instance.health_score),
        }
    }
}

impl From<&EffectiveAssignment> for pb::Assignment {
    /// The assignment with its instances.
    fn from(assignment: &EffectiveAssignment) -> Self {
        let mut message = assignment_without_instances(assignment);
        message.instances = assignment
            .pool
            .as_deref()
            .map_or_else(Vec::new, instance_addresses);
        message
    }
}

/// The assignment with `instances` left empty (sent once per version instead, as
/// `AssignmentUpdate.versions`).
pub fn assignment_without_instances(assignment: &EffectiveAssignment) -> pb::Assignment {
    pb::Assignment {
        tenant_id: assignment.tenant_id.clone(),
        service: assignment.service.clone(),
        version: assignment.resolution.version.clone(),
        source: assignment.resolution.source.to_string(),
        instances: Vec::new(),
        strategy: pb::Strategy::from(assignment.strategy).into(),
        region: assignment.region.clone(),
    }
}

/// The instances of a version, as the watch sends them.
pub fn instance_addresses(pool: &Pool) -> Vec<pb::InstanceAddress> {
    pool.members()
        .iter()
        .map(|member| pb::InstanceAddress::from(member.instance.as_ref()))
        .collect()
}

/// Sorted copy of a proto map, for stable output.
pub fn sorted(map: &HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl TryFrom<pb::Cohort> for Cohort {
    type Error = RoutingError;

    /// Checks every name (fields `cohort.tiers`, `cohort.labels`, `cohort.tenant_ids`).
    fn try_from(message: pb::Cohort) -> Result<Self, RoutingError> {
        validate::cohort(
            message.tiers,
            message.labels.into_iter().collect(),
            message.tenant_ids,
        )
    }
}

/// Converts an optional cohort: none is every tenant.
pub fn cohort(message: Option<pb::Cohort>) -> Result<Cohort, RoutingError> {
    Cohort::try_from(message.unwrap_or_default())
}

impl From<&Cohort> for pb::Cohort {
    fn from(cohort: &Cohort) -> Self {
        pb::Cohort {
            tiers: cohort.tiers.iter().cloned().collect(),
            labels: cohort.labels.clone().into_iter().collect(),
            tenant_ids: cohort.tenant_ids.iter().cloned().collect(),
        }
    }
}

impl TryFrom<pb::AnalysisPolicy> for AnalysisPolicy {
    type Error = RoutingError;

    /// Zero fields take the defaults; percentages become fractions.
    fn try_from(message: pb::AnalysisPolicy) -> Result<Self, RoutingError> {
        let defaults = AnalysisPolicy::default();
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
}

/// Converts an optional analysis policy: none takes the defaults.
pub fn analysis(message: Option<pb::AnalysisPolicy>) -> Result<AnalysisPolicy, RoutingError> {
    message.map_or_else(|| Ok(AnalysisPolicy::default()), AnalysisPolicy::try_from)
}

impl From<&AnalysisPolicy> for pb::AnalysisPolicy {
    fn from(policy: &AnalysisPolicy) -> Self {
        pb::AnalysisPolicy {
            max_error_rate_percent: policy.max_error_rate * 100.0,
            max_error_rate_increase_percent: policy.max_error_rate_increase * 100.0,
            max_p99_increase_percent: policy.max_p99_increase * 100.0,
            max_p99_ms: policy.max_p99_ms.unwrap_or(0),
            min_requests: policy.min_requests,
            max_failed_checks: policy.max_failed_checks,
        }
    }
}

/// Converts rollout steps in percent to basis points.
pub fn steps(percents: &[f64]) -> Result<Vec<u32>, RoutingError> {
    validate::shares("steps", percents)
}

impl From<&Measurement> for pb::Measurement {
    fn from(measurement: &Measurement) -> Self {
        pb::Measurement {
            requests: measurement.requests,
            errors: measurement.errors,
            error_rate: measurement.error_rate,
            p99_ms: measurement.p99_ms.unwrap_or(0),
        }
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
            (name, action.describe())
        }
    }
}

impl From<&Rollout> for pb::Rollout {
    fn from(rollout: &Rollout) -> Self {
        let percent = |bp: u32| f64::from(bp) / 100.0;
        let mut message = pb::Rollout {
            id: rollout.id.clone(),
            service: rollout.service.clone(),
            to_version: rollout.to_version.clone(),
            percent: percent(rollout.basis_points),
            cohort: Some(pb::Cohort::from(&rollout.cohort)),
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
            message.analysis = Some(pb::AnalysisPolicy::from(&plan.analysis));
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
                        canary: decision.canary.as_ref().map(pb::Measurement::from),
                        baseline: decision.baseline.as_ref().map(pb::Measurement::from),
                    }
                })
                .collect();
        }
        message
    }
}

impl From<pb::Variant> for Variant {
    fn from(variant: pb::Variant) -> Self {
        Variant {
            name: variant.name,
            version: variant.version,
            weight: variant.weight,
        }
    }
}

impl From<&Variant> for pb::Variant {
    fn from(variant: &Variant) -> Self {
        pb::Variant {
            name: variant.name.clone(),
            version: variant.version.clone(),
            weight: variant.weight,
        }
    }
}

/// Returns the message of an experiment, with how many active tenants each variant has.
pub fn experiment_message(
    experiment: &Experiment,
    tenants_per_variant: HashMap<String, u64>,
) -> pb::Experiment {
    pb::Experiment {
        id: experiment.id.clone(),
        service: experiment.service.clone(),
        variants: experiment.variants.iter().map(pb::Variant::from).collect(),
        cohort: Some(pb::Cohort::from(&experiment.cohort)),
        sticky_tenants: experiment.sticky.len() as u64,
        tenants_per_variant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_strategy_goes_to_the_wire_and_back() {
        for each in Strategy::ALL {
            let wire: i32 = pb::Strategy::from(each).into();
            assert_eq!(strategy("strategy", wire), Ok(Some(each)));
        }
        assert_eq!(strategy("strategy", 0), Ok(None));
        let err = strategy("service.strategy", 99).expect_err("unknown");
        assert!(
            matches!(&err, RoutingError::InvalidArgument { field, .. } if field == "service.strategy"),
            "{err}"
        );
    }

    #[test]
    fn an_instance_without_optional_fields_takes_the_documented_defaults() {
        let instance = Instance::try_from(pb::Instance {
            id: "a1".into(),
            ..Default::default()
        })
        .expect("converts");
        assert_eq!(
            (instance.weight, instance.healthy, instance.health_score),
            (1, true, 100)
        );
        let back = pb::Instance::from(&instance);
        assert_eq!(Instance::try_from(back), Ok(instance));
        let err = Instance::try_from(pb::Instance {
            health_score: Some(101),
            ..Default::default()
        })
        .expect_err("out of range");
        assert!(err.to_string().contains("instance.health_score"), "{err}");
    }
}
