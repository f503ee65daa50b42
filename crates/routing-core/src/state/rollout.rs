//! The managed rollout state machine: starting a rollout from its plan, applying the analysis'
//! step decisions, and an operator's pause, resume, promotion or abort.
//!
//! This is the one place that checks a new rollout and its plan. Its errors name the fields of
//! the API that starts one (`StartRolloutRequest`): `id`, `to_version`, `steps`,
//! `interval_seconds` (the plan's `interval_ms`) and `analysis`. The salt and the plan itself,
//! which that request does not carry, keep their record names (`rollout.salt`, `rollout.plan`).

use crate::analysis::StepAction;
use crate::error::Entity;
use crate::model::{
    MAX_ROLLOUT_DECISIONS, RolloutDecision, RolloutEvent, RolloutPhase, RolloutPlan,
};
use crate::state::ServiceEntry;
use crate::{Rollout, RoutingError, validate};

/// Checks a new managed rollout and returns it at its first step.
pub(super) fn start(
    entry: &ServiceEntry,
    rollout: &Rollout,
    force: bool,
) -> Result<Rollout, RoutingError> {
    validate::name("id", &rollout.id)?;
    validate::name("to_version", &rollout.to_version)?;
    validate::text("rollout.salt", &rollout.salt)?;
    let Some(plan) = &rollout.plan else {
        return Err(RoutingError::invalid("rollout.plan", "is required"));
    };
    if plan.steps.is_empty() {
        return Err(RoutingError::invalid("steps", "must not be empty"));
    }
    if plan.steps.windows(2).any(|w| w[0] >= w[1])
        || plan
            .steps
            .iter()
            .any(|&s| s == 0 || s > crate::hash::BUCKETS)
    {
        return Err(RoutingError::invalid(
            "steps",
            "must be strictly increasing shares above 0% and at most 100%",
        ));
    }
    if plan.interval_ms == 0 {
        return Err(RoutingError::invalid(
            "interval_seconds",
            "must be positive",
        ));
    }
    plan.analysis
        .validate()
        .map_err(|reason| RoutingError::invalid("analysis", reason))?;
    let service = &entry.service.name;
    if entry.rollouts.iter().any(|r| r.id == rollout.id) {
        return Err(RoutingError::FailedPrecondition(format!(
            "rollout '{}' of service '{service}' already exists",
            rollout.id
        )));
    }
    if let Some(live) = entry.rollouts.iter().find(|r| r.is_live()) {
        return Err(RoutingError::FailedPrecondition(format!(
            "service '{service}' already has rollout '{}' in progress; promote or abort it first",
            live.id
        )));
    }
    if rollout.to_version == entry.service.default_version {
        return Err(RoutingError::invalid(
            "to_version",
            format!("'{}' is already the default version", rollout.to_version),
        ));
    }
    entry.check_assignable(&rollout.to_version, force)?;
    let mut started = rollout.clone();
    started.service = service.clone();
    if started.salt.is_empty() {
        started.salt = format!("{service}/{}", rollout.id);
    }
    started.basis_points = plan.steps[0];
    started.plan = Some(RolloutPlan {
        from_version: entry.service.default_version.clone(),
        steps: plan.steps.clone(),
        interval_ms: plan.interval_ms,
        analysis: plan.analysis.clone(),
        phase: RolloutPhase::Running,
        step: 0,
        step_started_ms: plan.step_started_ms,
        failed_checks: 0,
        decisions: vec![RolloutDecision {
            at_ms: plan.step_started_ms,
            step: 0,
            basis_points: plan.steps[0],
            event: RolloutEvent::Started,
            canary: None,
            baseline: None,
            note: String::new(),
        }],
    });
    Ok(started)
}

/// Returns the managed rollout `id` of a service and its plan, to modify.
fn managed_rollout<'e>(
    entry: &'e mut ServiceEntry,
    id: &str,
) -> Result<&'e mut Rollout, RoutingError> {
    let service = entry.service.name.clone();
    let rollout = entry
        .rollouts
        .iter_mut()
        .find(|r| r.id == id)
        .ok_or_else(|| RoutingError::not_found(Entity::Rollout, format!("{service}/{id}")))?;
    if rollout.plan.is_none() {
        return Err(RoutingError::FailedPrecondition(format!(
            "rollout '{id}' has a fixed share and no plan to drive"
        )));
    }
    Ok(rollout)
}

fn record(plan: &mut RolloutPlan, decision: RolloutDecision) {
    plan.decisions.push(decision);
    let excess = plan.decisions.len().saturating_sub(MAX_ROLLOUT_DECISIONS);
    plan.decisions.drain(..excess);
}

/// Applies the analysis' decision on the current step.
pub(super) fn progress(
    entry: &mut ServiceEntry,
    id: &str,
    decision: &RolloutDecision,
) -> Result<(), RoutingError> {
    let RolloutEvent::Step { action } = &decision.event else {
        return Err(RoutingError::invalid(
            "decision.event",
            "must be a step decision",
        ));
    };
    let rollout = managed_rollout(entry, id)?;
    let to_version = rollout.to_version.clone();
    let Some(plan) = rollout.plan.as_mut() else {
        return Ok(());
    };
    if plan.phase != RolloutPhase::Running {
        return Err(RoutingError::FailedPrecondition(format!(
            "rollout '{id}' is {}, not running",
            plan.phase.as_str()
        )));
    }
    if decision.step != plan.step {
        return Err(RoutingError::FailedPrecondition(format!(
            "decision for step {} of rollout '{id}', which is at step {}",
            decision.step, plan.step
        )));
    }
    let mut promote = false;
    match action {
        StepAction::Wait => {
            return Err(RoutingError::invalid(
                "decision",
                "waiting is not a decision",
            ));
        }
        StepAction::Hold { .. } => plan.step_started_ms = decision.at_ms,
        StepAction::Advance { basis_points } => {
            let next = plan.step + 1;
            if plan.steps.get(next) != Some(basis_points) {
                return Err(RoutingError::invalid(
                    "decision",
                    format!("step {next} of rollout '{id}' is not {basis_points} basis points"),
                ));
            }
            plan.step = next;
            plan.step_started_ms = decision.at_ms;
            plan.failed_checks = 0;
            rollout.basis_points = *basis_points;
        }
        StepAction::FailCheck { failed_checks, .. } => {
            plan.failed_checks = *failed_checks;
            plan.step_started_ms = decision.at_ms;
        }
        StepAction::Abort { .. } => {
            plan.phase = RolloutPhase::Aborted;
            rollout.basis_points = 0;
        }
        StepAction::Complete => {
            plan.phase = RolloutPhase::Promoted;
            rollout.basis_points = crate::hash::BUCKETS;
            promote = true;
        }
    }
    let mut decision = decision.clone();
    decision.basis_points = rollout.basis_points;
    record(plan, decision);
    if promote {
        entry.service.default_version = to_version;
    }
    Ok(())
}

/// Applies an operator's pause, resume, promotion or abort.
pub(super) fn control(
    entry: &mut ServiceEntry,
    id: &str,
    decision: &RolloutDecision,
    force: bool,
) -> Result<(), RoutingError> {
    let to_version = managed_rollout(entry, id)?.to_version.clone();
    if matches!(decision.event, RolloutEvent::Promoted) {
        entry.check_assignable(&to_version, force)?;
    }
    let rollout = managed_rollout(entry, id)?;
    let Some(plan) = rollout.plan.as_mut() else {
        return Ok(());
    };
    let phase = plan.phase;
    let refuse = |what: &str| {
        Err(RoutingError::FailedPrecondition(format!(
            "rollout '{id}' is {}; it cannot be {what}",
            phase.as_str()
        )))
    };
    match (&decision.event, phase) {
        (RolloutEvent::Paused, RolloutPhase::Running) => plan.phase = RolloutPhase::Paused,
        (RolloutEvent::Paused, _) => return refuse("paused"),
        (RolloutEvent::Resumed, RolloutPhase::Paused) => {
            plan.phase = RolloutPhase::Running;
            plan.step_started_ms = decision.at_ms;
        }
        (RolloutEvent::Resumed, _) => return refuse("resumed"),
        (RolloutEvent::Promoted, RolloutPhase::Running | RolloutPhase::Paused) => {
            plan.phase = RolloutPhase::Promoted;
            rollout.basis_points = crate::hash::BUCKETS;
        }
        (RolloutEvent::Promoted, _) => return refuse("promoted"),
        (RolloutEvent::Aborted, RolloutPhase::Running | RolloutPhase::Paused) => {
            plan.phase = RolloutPhase::Aborted;
            rollout.basis_points = 0;
        }
        (RolloutEvent::Aborted, _) => return refuse("aborted"),
        (RolloutEvent::Started | RolloutEvent::Step { .. }, _) => {
            return Err(RoutingError::invalid(
                "decision.event",
                "must be paused, resumed, promoted or aborted",
            ));
        }
    }
    let mut decision = decision.clone();
    decision.step = plan.step;
    decision.basis_points = rollout.basis_points;
    record(plan, decision);
    if phase != RolloutPhase::Promoted
        && rollout
            .plan
            .as_ref()
            .is_some_and(|p| p.phase == RolloutPhase::Promoted)
    {
        entry.service.default_version = to_version;
    }
    Ok(())
}
