//! The rollout driver: judges each running rollout's current step and records the decision.
//!
//! Exactly one replica drives at a time: the holder of the `rollout-driver` lease in the store
//! (with Redis, a key with an expiry; the embedded store has one replica). The holder renews the
//! lease every tick; when it dies, the lease lapses and another replica takes over. Decisions are
//! ordinary changes ([`Mutation::ProgressRollout`]) naming the step they judged, so a decision
//! computed by a replica that lost the lease in the meantime is refused as stale.

use std::sync::Arc;
use std::time::Duration;

use routing_core::Mutation;
use routing_core::analysis::{Measurement, StepAction, next_step};
use routing_core::model::{RolloutDecision, RolloutEvent, RolloutPhase};

use crate::audit::{Actor, now_ms};
use crate::outcomes::Outcomes;
use crate::replica::Replica;
use crate::schema::Schemas;

/// Name of the lease held by the replica that drives rollouts.
pub const LEASE: &str = "rollout-driver";

/// Drives rollouts until the task is dropped.
pub async fn drive(
    replica: Arc<Replica>,
    outcomes: Arc<Outcomes>,
    schemas: Option<Arc<Schemas>>,
    holder: String,
    tick: Duration,
    lease_ttl: Duration,
) {
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = false;
    loop {
        ticker.tick().await;
        match replica.store().lease(LEASE, &holder, lease_ttl).await {
            Ok(held) => {
                if held != leading {
                    tracing::info!(%holder, leading = held, "rollout driver lease");
                    leading = held;
                }
            }
            Err(err) => {
                tracing::debug!(%err, "cannot renew the rollout driver lease");
                leading = false;
            }
        }
        if leading {
            step_all(&replica, &outcomes, schemas.as_ref(), &holder, now_ms()).await;
        }
    }
}

/// Judges every running rollout whose step has run its interval, and commits the decisions in
/// the name of `rollout-driver:<holder>`.
///
/// With schema migrations on, the tenants a step moves get the schema their new version needs
/// first; when some cannot, the step holds and says why.
pub async fn step_all(
    replica: &Replica,
    outcomes: &Outcomes,
    schemas: Option<&Arc<Schemas>>,
    holder: &str,
    now_ms: u64,
) {
    let state = replica.current();
    for service in state.services() {
        for rollout in service.rollouts() {
            let Some(plan) = &rollout.plan else { continue };
            if plan.phase != RolloutPhase::Running {
                continue;
            }
            let span = now_ms.saturating_sub(plan.step_started_ms).max(1);
            let name = &service.service.name;
            let canary = outcomes.version_stats(name, &rollout.to_version, now_ms, span);
            let baseline = outcomes.version_stats(name, &plan.from_version, now_ms, span);
            let action = next_step(
                &plan.steps,
                plan.step,
                plan.step_started_ms,
                plan.interval_ms,
                plan.failed_checks,
                now_ms,
                &plan.analysis,
                &canary,
                &baseline,
            );
            if action == StepAction::Wait {
                continue;
            }
            let mut action = action;
            if let Some(schemas) = schemas
                && matches!(action, StepAction::Advance { .. } | StepAction::Complete)
            {
                let probe = Mutation::ProgressRollout {
                    service: name.clone(),
                    rollout_id: rollout.id.clone(),
                    decision: RolloutDecision {
                        at_ms: now_ms,
                        step: plan.step,
                        basis_points: rollout.basis_points,
                        event: RolloutEvent::Step {
                            action: action.clone(),
                        },
                        canary: None,
                        baseline: None,
                        note: String::new(),
                    },
                };
                if let Ok((after, _)) = state.apply(&probe) {
                    let refused = schemas.prepare_moves(&state, &after, name).await;
                    if !refused.is_empty() {
                        action = StepAction::Hold {
                            reason: format!(
                                "{} tenant(s) lack the schema of {}: {}",
                                refused.len(),
                                rollout.to_version,
                                refused.join("; ")
                            ),
                        };
                    }
                }
            }
            let reason = format!(
                "{} (canary {}; baseline {})",
                describe(&action),
                figures(&canary),
                figures(&baseline)
            );
            let decision = RolloutDecision {
                at_ms: now_ms,
                step: plan.step,
                basis_points: rollout.basis_points,
                event: RolloutEvent::Step { action },
                canary: Some(Measurement::from(&canary)),
                baseline: Some(Measurement::from(&baseline)),
                note: String::new(),
            };
            let mutation = Mutation::ProgressRollout {
                service: name.clone(),
                rollout_id: rollout.id.clone(),
                decision,
            };
            let actor = Actor::system(&format!("{LEASE}:{holder}"), reason);
            match replica.commit(mutation, &actor).await {
                Ok(commit) => tracing::info!(
                    service = %name,
                    rollout = %rollout.id,
                    revision = commit.revision,
                    decision = %actor.reason,
                    "rollout decision"
                ),
                Err(err) => {
                    tracing::warn!(service = %name, rollout = %rollout.id, %err, "rollout decision not recorded")
                }
            }
        }
    }
}

/// One line saying what a step decision does.
pub fn describe(action: &StepAction) -> String {
    match action {
        StepAction::Wait => "waiting for the step's interval".to_owned(),
        StepAction::Advance { basis_points } => {
            format!("canary healthy: advance to {}", percent(*basis_points))
        }
        StepAction::Complete => "canary healthy at the last step: promote".to_owned(),
        StepAction::Hold { reason } => format!("inconclusive, holding: {reason}"),
        StepAction::FailCheck {
            failed_checks,
            reasons,
        } => format!("check {failed_checks} failed: {}", reasons.join("; ")),
        StepAction::Abort { reasons } => format!("aborted, rolling back: {}", reasons.join("; ")),
    }
}

/// Summarises outcome figures: "120 requests, 0.83% errors, p99 8 ms".
pub fn figures(stats: &routing_core::outcome::Stats) -> String {
    let p99 = stats
        .p99_ms()
        .map_or_else(|| "p99 n/a".to_owned(), |ms| format!("p99 {ms} ms"));
    format!(
        "{} requests, {:.2}% errors, {p99}",
        stats.requests,
        stats.error_rate() * 100.0
    )
}

/// Formats basis points as a percentage ("12.5%").
pub fn percent(basis_points: u32) -> String {
    let whole = basis_points / 100;
    match basis_points % 100 {
        0 => format!("{whole}%"),
        fraction if fraction % 10 == 0 => format!("{whole}.{}%", fraction / 10),
        fraction => format!("{whole}.{fraction:02}%"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_read_naturally() {
        assert_eq!(percent(100), "1%");
        assert_eq!(percent(1250), "12.5%");
        assert_eq!(percent(5), "0.05%");
        assert_eq!(percent(10_000), "100%");
    }
}
