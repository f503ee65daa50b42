//! Canary analysis: judging a new version's outcomes against the version it replaces, and the
//! progression of a rollout from step to step.
//!
//! [`judge`] compares the canary's [`Stats`] (the new version) with the baseline's (the version
//! tenants leave) under an [`AnalysisPolicy`] and returns a [`Verdict`]. [`next_step`] turns the
//! verdict on the current step of a rollout into a [`StepAction`]: wait, advance, complete, hold,
//! count a failed check or abort. Both are pure: the caller gathers the figures, passes the time,
//! and applies the action. `analysis/README.md` describes the algorithm and its limits.

use serde::{Deserialize, Serialize};

use crate::outcome::Stats;

/// The limits a canary must keep to.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalysisPolicy {
    /// Highest error rate (0.0-1.0) of the canary, whatever the baseline's.
    pub max_error_rate: f64,
    /// How much the canary's error rate may exceed the baseline's, relative: 0.5 allows 1.5×
    /// the baseline's. Checked only when the baseline has errors and at least `min_requests`
    /// requests.
    pub max_error_rate_increase: f64,
    /// How much the canary's p99 latency may exceed the baseline's, relative: 0.1 allows 1.1×
    /// the baseline's. Checked only when the baseline has at least `min_requests` requests.
    pub max_p99_increase: f64,
    /// Highest p99 latency of the canary in milliseconds, whatever the baseline's (none when
    /// absent).
    pub max_p99_ms: Option<u32>,
    /// Requests the canary needs before it is judged (and the baseline before it is compared
    /// with).
    pub min_requests: u64,
    /// Failed checks that abort the rollout.
    pub max_failed_checks: u32,
}

impl Default for AnalysisPolicy {
    fn default() -> Self {
        AnalysisPolicy {
            max_error_rate: 0.01,
            max_error_rate_increase: 0.5,
            max_p99_increase: 0.10,
            max_p99_ms: None,
            min_requests: 100,
            max_failed_checks: 3,
        }
    }
}

impl AnalysisPolicy {
    /// Checks the policy, reporting every bad value.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            problems.push(format!(
                "max_error_rate must be 0-1, got {}",
                self.max_error_rate
            ));
        }
        for (field, value) in [
            ("max_error_rate_increase", self.max_error_rate_increase),
            ("max_p99_increase", self.max_p99_increase),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                problems.push(format!("{field} must be 0 or more, got {value}"));
            }
        }
        if self.max_p99_ms == Some(0) {
            problems.push("max_p99_ms must be positive".to_owned());
        }
        if self.min_requests == 0 {
            problems.push("min_requests must be at least 1".to_owned());
        }
        if self.max_failed_checks == 0 {
            problems.push("max_failed_checks must be at least 1".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// The result of judging a canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case", deny_unknown_fields)]
pub enum Verdict {
    /// Every limit kept.
    Pass,
    /// Some limits broken.
    Fail {
        /// One human-readable reason per broken limit, with the figures.
        reasons: Vec<String>,
    },
    /// Too little traffic to judge.
    Inconclusive {
        /// Why, with the figures.
        reason: String,
    },
}

/// The figures of one version recorded with a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    /// Requests that finished.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// `errors / requests` (0.0 without requests).
    pub error_rate: f64,
    /// The 99th percentile latency in milliseconds, as a bucket bound (none without requests).
    #[serde(default)]
    pub p99_ms: Option<u32>,
}

impl From<&Stats> for Measurement {
    fn from(stats: &Stats) -> Self {
        Measurement {
            requests: stats.requests,
            errors: stats.errors,
            error_rate: stats.error_rate(),
            p99_ms: stats.p99_ms(),
        }
    }
}

/// What to do with a rollout at its current step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StepAction {
    /// The step has not run for its interval yet.
    Wait,
    /// The canary passed: move to the next step.
    Advance {
        /// The next step's share, in basis points.
        basis_points: u32,
    },
    /// The canary passed the last step: promote the version.
    Complete,
    /// Too little traffic to judge: stay, and judge again later.
    Hold {
        /// Why, with the figures.
        reason: String,
    },
    /// The canary failed a check, not yet `max_failed_checks` of them: stay, and judge again.
    FailCheck {
        /// Failed checks so far, this one included.
        failed_checks: u32,
        /// The broken limits.
        reasons: Vec<String>,
    },
    /// The canary failed its `max_failed_checks`th check: roll back.
    Abort {
        /// The broken limits of the last check.
        reasons: Vec<String>,
    },
}

/// Judges the canary's outcomes against the baseline's.
///
/// Inconclusive while the canary has fewer than `min_requests` requests. Otherwise it fails with
/// one reason per broken limit:
/// - the canary's error rate above `max_error_rate`;
/// - its error rate above the baseline's × (1 + `max_error_rate_increase`), when the baseline
///   has at least `min_requests` requests and some errors;
/// - its p99 above `max_p99_ms`, when set;
/// - its p99 above the baseline's × (1 + `max_p99_increase`), when the baseline has at least
///   `min_requests` requests.
///
/// Limits are inclusive: a figure at the limit passes. Without enough baseline traffic only the
/// absolute limits are checked. Latencies are bucket bounds (see [`Stats::percentile_ms`]).
pub fn judge(policy: &AnalysisPolicy, canary: &Stats, baseline: &Stats) -> Verdict {
    if canary.requests < policy.min_requests {
        return Verdict::Inconclusive {
            reason: format!(
                "canary has {} requests, fewer than the {} required",
                canary.requests, policy.min_requests
            ),
        };
    }
    let mut reasons = Vec::new();
    let comparable = baseline.requests >= policy.min_requests;
    let error_rate = canary.error_rate();
    if error_rate > policy.max_error_rate {
        reasons.push(format!(
            "error rate {} above the limit {}",
            percent(error_rate),
            percent(policy.max_error_rate)
        ));
    }
    let baseline_error_rate = baseline.error_rate();
    if comparable
        && baseline.errors > 0
        && error_rate > baseline_error_rate * (1.0 + policy.max_error_rate_increase)
    {
        reasons.push(format!(
            "error rate {} is {}% above the baseline's {} (limit +{}%)",
            percent(error_rate),
            hundredths(error_rate / baseline_error_rate - 1.0),
            percent(baseline_error_rate),
            hundredths(policy.max_error_rate_increase)
        ));
    }
    if let Some(p99) = canary.p99_ms() {
        if let Some(limit) = policy.max_p99_ms.filter(|&limit| p99 > limit) {
            reasons.push(format!("p99 {p99} ms above the limit {limit} ms"));
        }
        if let Some(baseline_p99) = baseline.p99_ms().filter(|_| comparable) {
            let (p99_f, baseline_f) = (f64::from(p99), f64::from(baseline_p99));
            if p99_f > baseline_f * (1.0 + policy.max_p99_increase) {
                reasons.push(format!(
                    "p99 {p99} ms is {}% above the baseline's {baseline_p99} ms (limit +{}%)",
                    hundredths(p99_f / baseline_f - 1.0),
                    hundredths(policy.max_p99_increase)
                ));
            }
        }
    }
    if reasons.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail { reasons }
    }
}

/// Decides what a rollout does at its current step.
///
/// - `steps`: the shares in basis points, strictly increasing (the last may be below 10,000:
///   completing promotes the version anyway);
/// - `step`: the index of the current step;
/// - `step_started_ms`: when the current step, or its current check, started;
/// - `interval_ms`: how long a step (or check) runs before it is judged;
/// - `failed_checks`: checks failed so far at this step.
///
/// [`StepAction::Wait`] until `now_ms ≥ step_started_ms + interval_ms`. Then the canary is
/// [judged](judge): a pass advances to the next step's share, or completes on the last step (or
/// a `step` past the end); an inconclusive verdict holds; a failure counts a failed check, or
/// aborts when `failed_checks + 1` reaches `max_failed_checks`.
///
/// The caller applies the action: on `Advance` it moves to the next step and resets
/// `failed_checks` and `step_started_ms`; on `Hold` and `FailCheck` it restarts
/// `step_started_ms` at `now_ms` so the next check judges fresh figures.
#[expect(
    clippy::too_many_arguments,
    reason = "the rollout's position, the time, the policy and the figures, all plain inputs"
)]
pub fn next_step(
    steps: &[u32],
    step: usize,
    step_started_ms: u64,
    interval_ms: u64,
    failed_checks: u32,
    now_ms: u64,
    policy: &AnalysisPolicy,
    canary: &Stats,
    baseline: &Stats,
) -> StepAction {
    if now_ms < step_started_ms.saturating_add(interval_ms) {
        return StepAction::Wait;
    }
    match judge(policy, canary, baseline) {
        Verdict::Pass => match steps.get(step.saturating_add(1)) {
            Some(&basis_points) => StepAction::Advance { basis_points },
            None => StepAction::Complete,
        },
        Verdict::Inconclusive { reason } => StepAction::Hold { reason },
        Verdict::Fail { reasons } => {
            let failed_checks = failed_checks.saturating_add(1);
            if failed_checks >= policy.max_failed_checks {
                StepAction::Abort { reasons }
            } else {
                StepAction::FailCheck {
                    failed_checks,
                    reasons,
                }
            }
        }
    }
}

/// Formats a rate (0.0-1.0) as a percentage with two decimals: `2.50%`.
fn percent(rate: f64) -> String {
    format!("{:.2}%", rate * 100.0)
}

/// Formats a ratio as a percentage number with at most two decimals, without trailing zeros:
/// 0.5 → `50`, 0.125 → `12.5`, 1/3 → `33.33`.
fn hundredths(ratio: f64) -> String {
    let text = format!("{:.2}", ratio * 100.0);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

impl StepAction {
    /// One line saying what the decision does.
    pub fn describe(&self) -> String {
        match self {
            StepAction::Wait => "waiting for the step's interval".to_owned(),
            StepAction::Advance { basis_points } => {
                format!(
                    "canary healthy: advance to {}",
                    basis_points_percent(*basis_points)
                )
            }
            StepAction::Complete => "canary healthy at the last step: promote".to_owned(),
            StepAction::Hold { reason } => format!("inconclusive, holding: {reason}"),
            StepAction::FailCheck {
                failed_checks,
                reasons,
            } => format!("check {failed_checks} failed: {}", reasons.join("; ")),
            StepAction::Abort { reasons } => {
                format!("aborted, rolling back: {}", reasons.join("; "))
            }
        }
    }
}

/// Formats basis points as a percentage ("12.5%").
pub fn basis_points_percent(basis_points: u32) -> String {
    let whole = basis_points / 100;
    match basis_points % 100 {
        0 => format!("{whole}%"),
        fraction if fraction % 10 == 0 => format!("{whole}.{}%", fraction / 10),
        fraction => format!("{whole}.{fraction:02}%"),
    }
}

#[cfg(test)]
mod tests;
