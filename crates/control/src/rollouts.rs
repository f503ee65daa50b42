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
use tracing::Instrument;

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
            let action_taken = action;
            let reason = format!(
                "{} (canary {}; baseline {})",
                describe(&action_taken),
                figures(&canary),
                figures(&baseline)
            );
            let decision = RolloutDecision {
                at_ms: now_ms,
                step: plan.step,
                basis_points: rollout.basis_points,
                event: RolloutEvent::Step {
                    action: action_taken.clone(),
                },
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
            let span = tracing::info_span!(
                "rollout.step",
                service = %name,
                rollout = %rollout.id,
                step = plan.step,
                action = action_name(&action_taken),
                revision = tracing::field::Empty,
            );
            crate::telemetry::rollout_decision(name, action_name(&action_taken));
            let committed = replica
                .commit(mutation, &actor)
                .instrument(span.clone())
                .await;
            if let Ok(commit) = &committed {
                span.record("revision", commit.revision);
            }
            match committed {
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

/// The name of a step decision, for spans and metrics.
pub fn action_name(action: &StepAction) -> &'static str {
    match action {
        StepAction::Wait => "wait",
        StepAction::Advance { .. } => "advance",
        StepAction::Complete => "promote",
        StepAction::Hold { .. } => "hold",
        StepAction::FailCheck { .. } => "fail_check",
        StepAction::Abort { .. } => "abort",
    }
}

/// One line saying what a step decision does.
pub fn describe(action: &StepAction) -> String {
    action.describe()
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

pub use routing_core::analysis::basis_points_percent as percent;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use greyrouter_store::{MemoryStore, Store, suite};
    use routing_core::analysis::AnalysisPolicy;
    use routing_core::ejection::EjectionPolicy;
    use routing_core::model::{RolloutPhase, RolloutPlan};
    use routing_core::outcome::WindowConfig;
    use routing_core::{Cohort, Rollout};

    use super::*;

    const START: u64 = 1_000_000;
    const INTERVAL: u64 = 60_000;

    /// A replica with service `api` (v1 default, one instance of each of v1 and v2), 40 tenants
    /// and a managed rollout `r1` to v2 started at [`START`] with `steps` (basis points).
    async fn rollout_world(steps: &[u32]) -> (Arc<Replica>, Outcomes) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let replica = Replica::load(store, 1024, 1 << 20).await.expect("load");
        tokio::spawn(Arc::clone(&replica).follow());
        let actor = Actor::system("test", "");
        let mut mutations = vec![
            suite::service(),
            suite::instance("a1", "v1"),
            suite::instance("b1", "v2"),
        ];
        mutations.extend((0..40).map(|i| suite::tenant(&format!("t{i}"))));
        mutations.push(Mutation::StartRollout {
            rollout: Rollout {
                id: "r1".into(),
                service: "api".into(),
                to_version: "v2".into(),
                basis_points: 0,
                salt: String::new(),
                cohort: Cohort::default(),
                plan: Some(RolloutPlan {
                    from_version: String::new(),
                    steps: steps.to_vec(),
                    interval_ms: INTERVAL,
                    analysis: AnalysisPolicy {
                        min_requests: 20,
                        max_failed_checks: 2,
                        ..AnalysisPolicy::default()
                    },
                    phase: RolloutPhase::Running,
                    step: 0,
                    step_started_ms: START,
                    failed_checks: 0,
                    decisions: Vec::new(),
                }),
            },
            force: false,
        });
        for mutation in mutations {
            replica.commit(mutation, &actor).await.expect("commit");
        }
        let outcomes = Outcomes::new(
            EjectionPolicy::default(),
            WindowConfig {
                span_ms: 10 * INTERVAL,
                slots: 60,
            },
        );
        (replica, outcomes)
    }

    /// Reports `count` outcomes of each instance at `at_ms`: v2's fail when `v2_fails`.
    fn traffic(replica: &Replica, outcomes: &Outcomes, at_ms: u64, count: usize, v2_fails: bool) {
        let state = replica.current();
        for (instance, version) in [("a1", "v1"), ("b1", "v2")] {
            for _ in 0..count {
                let report = crate::outcomes::OutcomeReport {
                    instance_id: instance.into(),
                    service: "api".into(),
                    version: version.into(),
                    success: !(v2_fails && version == "v2"),
                    latency_ms: 5,
                    ..Default::default()
                };
                outcomes.record(&state, &report, at_ms).expect("report");
            }
        }
    }

    fn events(replica: &Replica) -> Vec<String> {
        let state = replica.current();
        let plan = state.service("api").expect("api").rollouts()[0]
            .plan
            .clone()
            .expect("managed");
        plan.decisions
            .iter()
            .map(|d| match &d.event {
                RolloutEvent::Step { action } => describe(action)
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_healthy_canary_advances_step_by_step_on_the_clock_it_is_given() {
        let (replica, outcomes) = rollout_world(&[2_500, 5_000, 10_000]).await;
        // Before a step's interval has run, nothing is decided, however much traffic.
        traffic(&replica, &outcomes, START + INTERVAL / 2, 30, false);
        step_all(&replica, &outcomes, None, "test", START + INTERVAL - 1).await;
        assert_eq!(events(&replica), ["Started"]);
        for step in 1..=3 {
            let now = START + step * INTERVAL + step;
            traffic(&replica, &outcomes, now - 10, 30, false);
            step_all(&replica, &outcomes, None, "test", now).await;
        }
        assert_eq!(
            events(&replica),
            [
                "Started",
                "canary healthy",
                "canary healthy",
                "canary healthy at the last step"
            ]
        );
        let state = replica.current();
        let rollout = &state.service("api").expect("api").rollouts()[0];
        assert_eq!(
            rollout.plan.as_ref().map(|p| p.phase),
            Some(RolloutPhase::Promoted)
        );
        assert_eq!(
            state.service("api").expect("api").service.default_version,
            "v2"
        );
    }

    #[tokio::test]
    async fn a_decision_from_a_driver_that_lost_the_lease_is_refused_as_stale() {
        let (replica, outcomes) = rollout_world(&[2_500, 5_000, 10_000]).await;
        // A driver judged step 0 and then lost the lease before committing; the new holder
        // judged it meanwhile and the rollout moved on.
        let stale = Mutation::ProgressRollout {
            service: "api".into(),
            rollout_id: "r1".into(),
            decision: RolloutDecision {
                at_ms: START + INTERVAL,
                step: 0,
                basis_points: 2_500,
                event: RolloutEvent::Step {
                    action: StepAction::Advance {
                        basis_points: 5_000,
                    },
                },
                canary: None,
                baseline: None,
                note: String::new(),
            },
        };
        traffic(&replica, &outcomes, START + INTERVAL - 10, 30, false);
        step_all(&replica, &outcomes, None, "new-holder", START + INTERVAL).await;
        assert_eq!(events(&replica).len(), 2, "the new holder advanced");
        let refused = replica
            .commit(stale, &Actor::system("rollout-driver:old-holder", ""))
            .await
            .expect_err("a decision for a step already judged");
        assert!(
            matches!(
                refused,
                greyrouter_store::StoreError::Rejected(
                    routing_core::RoutingError::FailedPrecondition(_)
                )
            ),
            "{refused:?}"
        );
        assert_eq!(events(&replica).len(), 2, "nothing recorded twice");
    }

    #[tokio::test]
    async fn too_few_requests_hold_and_a_failing_canary_aborts_after_its_checks() {
        let (replica, outcomes) = rollout_world(&[5_000, 10_000]).await;
        // Fewer requests than the policy's minimum: inconclusive, the step holds.
        traffic(&replica, &outcomes, START + INTERVAL - 10, 5, false);
        step_all(&replica, &outcomes, None, "test", START + INTERVAL).await;
        assert_eq!(events(&replica), ["Started", "inconclusive, holding"]);
        // A failing canary fails one check, then aborts at the policy's second.
        for check in 2..=3 {
            let now = START + check * INTERVAL;
            traffic(&replica, &outcomes, now - 10, 30, true);
            step_all(&replica, &outcomes, None, "test", now).await;
        }
        assert_eq!(
            events(&replica),
            [
                "Started",
                "inconclusive, holding",
                "check 1 failed",
                "aborted, rolling back"
            ]
        );
        let state = replica.current();
        for i in 0..40 {
            let resolved = state.resolve(&format!("t{i}"), "api").expect("resolve");
            assert_eq!(resolved.version, "v1", "t{i} is back on v1");
        }
    }

    #[test]
    fn percentages_read_naturally() {
        assert_eq!(percent(100), "1%");
        assert_eq!(percent(1250), "12.5%");
        assert_eq!(percent(5), "0.05%");
        assert_eq!(percent(10_000), "100%");
    }
}
