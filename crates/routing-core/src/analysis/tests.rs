use proptest::prelude::*;

use super::*;

/// `requests` requests, `errors` of them failed, every one at `latency_ms`.
fn stats(requests: u64, errors: u64, latency_ms: u32) -> Stats {
    let mut stats = Stats::default();
    for i in 0..requests {
        stats.record(i >= errors, latency_ms);
    }
    stats
}

fn policy() -> AnalysisPolicy {
    AnalysisPolicy::default()
}

fn reasons(verdict: Verdict) -> Vec<String> {
    match verdict {
        Verdict::Fail { reasons } => reasons,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn defaults_are_as_documented_and_valid() {
    let policy = policy();
    assert_eq!(policy.max_error_rate, 0.01);
    assert_eq!(policy.max_error_rate_increase, 0.5);
    assert_eq!(policy.max_p99_increase, 0.10);
    assert_eq!(policy.max_p99_ms, None);
    assert_eq!(policy.min_requests, 100);
    assert_eq!(policy.max_failed_checks, 3);
    assert_eq!(policy.validate(), Ok(()));
}

#[test]
fn partial_policies_parse_and_unknown_fields_do_not() {
    let parsed: AnalysisPolicy =
        serde_json::from_str(r#"{"max_p99_ms": 250, "min_requests": 50}"#).expect("partial");
    assert_eq!(
        parsed,
        AnalysisPolicy {
            max_p99_ms: Some(250),
            min_requests: 50,
            ..policy()
        }
    );
    assert_eq!(
        serde_json::from_str::<AnalysisPolicy>("{}").expect("empty"),
        policy()
    );
    assert!(serde_json::from_str::<AnalysisPolicy>(r#"{"max_p99": 250}"#).is_err());
}

#[test]
fn validate_reports_every_bad_value() {
    let bad = AnalysisPolicy {
        max_error_rate: 1.5,
        max_error_rate_increase: -1.0,
        max_p99_increase: f64::NAN,
        max_p99_ms: Some(0),
        min_requests: 0,
        max_failed_checks: 0,
    };
    let error = bad.validate().expect_err("invalid");
    for field in [
        "max_error_rate ",
        "max_error_rate_increase",
        "max_p99_increase",
        "max_p99_ms",
        "min_requests",
        "max_failed_checks",
    ] {
        assert!(error.contains(field), "{field} missing from {error}");
    }
}

#[test]
fn too_few_canary_requests_are_inconclusive() {
    let verdict = judge(&policy(), &stats(99, 50, 10), &stats(10_000, 0, 10));
    assert_eq!(
        verdict,
        Verdict::Inconclusive {
            reason: "canary has 99 requests, fewer than the 100 required".into()
        }
    );
}

#[test]
fn a_healthy_canary_passes() {
    assert_eq!(
        judge(&policy(), &stats(1_000, 5, 90), &stats(10_000, 40, 90)),
        Verdict::Pass
    );
    // At the limits exactly: 1.00% errors, p99 +50% with a +50% allowance.
    let lenient = AnalysisPolicy {
        max_p99_increase: 0.5,
        max_error_rate_increase: 1.0,
        ..policy()
    };
    assert_eq!(
        judge(&lenient, &stats(1_000, 10, 150), &stats(1_000, 8, 100)),
        Verdict::Pass
    );
}

#[test]
fn the_absolute_error_rate_is_a_limit() {
    let reasons = reasons(judge(&policy(), &stats(200, 5, 10), &Stats::default()));
    assert_eq!(reasons, ["error rate 2.50% above the limit 1.00%"]);
}

#[test]
fn the_error_rate_may_exceed_the_baseline_only_so_much() {
    let policy = AnalysisPolicy {
        max_error_rate: 0.2,
        ..policy()
    };
    // 2.5% against the baseline's 1%: +150%, the limit is +50%.
    let reasons = reasons(judge(&policy, &stats(1_000, 25, 10), &stats(1_000, 10, 10)));
    assert_eq!(
        reasons,
        ["error rate 2.50% is 150% above the baseline's 1.00% (limit +50%)"]
    );
    // 1.4% against 1%: within +50%.
    assert_eq!(
        judge(&policy, &stats(1_000, 14, 10), &stats(1_000, 10, 10)),
        Verdict::Pass
    );
}

#[test]
fn the_relative_error_rate_needs_a_baseline_with_errors_and_traffic() {
    let policy = AnalysisPolicy {
        max_error_rate: 0.2,
        ..policy()
    };
    let canary = stats(1_000, 25, 10);
    // A baseline without errors: any canary error would be an infinite increase; skipped.
    assert_eq!(judge(&policy, &canary, &stats(1_000, 0, 10)), Verdict::Pass);
    // Too little baseline traffic to compare with: skipped.
    assert_eq!(judge(&policy, &canary, &stats(99, 1, 10)), Verdict::Pass);
    assert_eq!(judge(&policy, &canary, &Stats::default()), Verdict::Pass);
}

#[test]
fn the_absolute_p99_is_a_limit_when_set() {
    let limited = AnalysisPolicy {
        max_p99_ms: Some(250),
        ..policy()
    };
    // 260 ms falls in the (200, 300] bucket: reported as 300 ms.
    let reasons = reasons(judge(&limited, &stats(500, 0, 260), &Stats::default()));
    assert_eq!(reasons, ["p99 300 ms above the limit 250 ms"]);
    assert_eq!(
        judge(&policy(), &stats(500, 0, 260), &Stats::default()),
        Verdict::Pass
    );
}

#[test]
fn the_p99_may_exceed_the_baseline_only_so_much() {
    let reasons = reasons(judge(&policy(), &stats(500, 0, 140), &stats(500, 0, 90)));
    assert_eq!(
        reasons,
        ["p99 150 ms is 50% above the baseline's 100 ms (limit +10%)"]
    );
    // Too little baseline traffic: only the absolute limits apply.
    assert_eq!(
        judge(&policy(), &stats(500, 0, 140), &stats(50, 0, 90)),
        Verdict::Pass
    );
    // Faster than the baseline is fine.
    assert_eq!(
        judge(&policy(), &stats(500, 0, 40), &stats(500, 0, 90)),
        Verdict::Pass
    );
}

#[test]
fn every_broken_limit_is_a_reason() {
    let policy = AnalysisPolicy {
        max_p99_ms: Some(100),
        ..policy()
    };
    let reasons = reasons(judge(
        &policy,
        &stats(1_000, 100, 400),
        &stats(1_000, 10, 90),
    ));
    assert_eq!(
        reasons,
        [
            "error rate 10.00% above the limit 1.00%",
            "error rate 10.00% is 900% above the baseline's 1.00% (limit +50%)",
            "p99 500 ms above the limit 100 ms",
            "p99 500 ms is 400% above the baseline's 100 ms (limit +10%)",
        ]
    );
}

#[test]
fn verdicts_and_actions_serialise_tagged() {
    let fail = Verdict::Fail {
        reasons: vec!["slow".into()],
    };
    let json = serde_json::to_value(&fail).expect("serialise");
    assert_eq!(
        json,
        serde_json::json!({"verdict": "fail", "reasons": ["slow"]})
    );
    assert_eq!(
        serde_json::from_value::<Verdict>(json).expect("parse"),
        fail
    );
    assert_eq!(
        serde_json::to_value(Verdict::Pass).expect("serialise"),
        serde_json::json!({"verdict": "pass"})
    );
    let actions = [
        StepAction::Wait,
        StepAction::Advance { basis_points: 500 },
        StepAction::Complete,
        StepAction::Hold {
            reason: "quiet".into(),
        },
        StepAction::FailCheck {
            failed_checks: 2,
            reasons: vec!["slow".into()],
        },
        StepAction::Abort {
            reasons: vec!["slow".into()],
        },
    ];
    for action in actions {
        let json = serde_json::to_string(&action).expect("serialise");
        assert_eq!(
            serde_json::from_str::<StepAction>(&json).expect("parse"),
            action
        );
    }
    assert_eq!(
        serde_json::to_value(StepAction::Advance { basis_points: 500 }).expect("serialise"),
        serde_json::json!({"kind": "advance", "basis_points": 500})
    );
}

#[test]
fn measurements_carry_the_figures() {
    let measurement = Measurement::from(&stats(200, 5, 140));
    assert_eq!(
        measurement,
        Measurement {
            requests: 200,
            errors: 5,
            error_rate: 0.025,
            p99_ms: Some(150),
        }
    );
    assert_eq!(Measurement::from(&Stats::default()).p99_ms, None);
    let json = serde_json::to_string(&measurement).expect("serialise");
    assert_eq!(
        serde_json::from_str::<Measurement>(&json).expect("parse"),
        measurement
    );
}

const STEPS: [u32; 4] = [100, 1_000, 5_000, 10_000];
const INTERVAL: u64 = 60_000;

#[test]
fn a_rollout_waits_holds_advances_fails_and_aborts() {
    let policy = policy();
    let baseline = stats(10_000, 50, 90);
    let healthy = stats(500, 1, 90);
    let quiet = stats(20, 0, 90);
    let failing = stats(500, 50, 90);
    // Step 0 started at 0: judged from 60 s on.
    assert_eq!(
        next_step(
            &STEPS, 0, 0, INTERVAL, 0, 59_999, &policy, &failing, &baseline
        ),
        StepAction::Wait
    );
    assert_eq!(
        next_step(
            &STEPS, 0, 0, INTERVAL, 0, 60_000, &policy, &quiet, &baseline
        ),
        StepAction::Hold {
            reason: "canary has 20 requests, fewer than the 100 required".into()
        }
    );
    // Held: the caller restarted the step at 60 s.
    assert_eq!(
        next_step(
            &STEPS, 0, 60_000, INTERVAL, 0, 120_000, &policy, &healthy, &baseline
        ),
        StepAction::Advance {
            basis_points: 1_000
        }
    );
    // Step 1 from 120 s: two failed checks, then the third aborts.
    let reasons = vec![
        "error rate 10.00% above the limit 1.00%".to_owned(),
        "error rate 10.00% is 1900% above the baseline's 0.50% (limit +50%)".to_owned(),
    ];
    assert_eq!(
        next_step(
            &STEPS, 1, 120_000, INTERVAL, 0, 180_000, &policy, &failing, &baseline
        ),
        StepAction::FailCheck {
            failed_checks: 1,
            reasons: reasons.clone()
        }
    );
    assert_eq!(
        next_step(
            &STEPS, 1, 180_000, INTERVAL, 1, 240_000, &policy, &failing, &baseline
        ),
        StepAction::FailCheck {
            failed_checks: 2,
            reasons: reasons.clone()
        }
    );
    assert_eq!(
        next_step(
            &STEPS, 1, 240_000, INTERVAL, 2, 300_000, &policy, &failing, &baseline
        ),
        StepAction::Abort { reasons }
    );
}

#[test]
fn a_healthy_rollout_completes() {
    let policy = policy();
    let baseline = stats(10_000, 50, 90);
    let canary = stats(1_000, 3, 90);
    let (mut step, mut started, mut now) = (0usize, 0u64, 0u64);
    let mut shares = vec![STEPS[0]];
    loop {
        now += 15_000;
        match next_step(
            &STEPS, step, started, INTERVAL, 0, now, &policy, &canary, &baseline,
        ) {
            StepAction::Wait => continue,
            StepAction::Advance { basis_points } => {
                step += 1;
                started = now;
                shares.push(basis_points);
            }
            StepAction::Complete => break,
            other => panic!("unexpected {other:?} at step {step}"),
        }
    }
    assert_eq!(shares, STEPS);
    assert_eq!((step, now), (3, 240_000));
}

#[test]
fn the_last_step_completes_even_below_full_share() {
    let healthy = stats(1_000, 0, 10);
    let steps = [500, 2_000];
    assert_eq!(
        next_step(
            &steps,
            1,
            0,
            10,
            0,
            10,
            &policy(),
            &healthy,
            &Stats::default()
        ),
        StepAction::Complete
    );
    // A step index past the end completes too, rather than panicking.
    assert_eq!(
        next_step(
            &steps,
            9,
            0,
            10,
            0,
            10,
            &policy(),
            &healthy,
            &Stats::default()
        ),
        StepAction::Complete
    );
    assert_eq!(
        next_step(
            &[],
            usize::MAX,
            0,
            10,
            0,
            10,
            &policy(),
            &healthy,
            &Stats::default()
        ),
        StepAction::Complete
    );
}

#[test]
fn one_allowed_failure_aborts_at_once() {
    let policy = AnalysisPolicy {
        max_failed_checks: 1,
        ..policy()
    };
    let failing = stats(500, 50, 90);
    assert!(matches!(
        next_step(
            &STEPS,
            0,
            0,
            10,
            0,
            10,
            &policy,
            &failing,
            &Stats::default()
        ),
        StepAction::Abort { .. }
    ));
}

#[test]
fn reason_figures_are_trimmed() {
    assert_eq!(hundredths(0.5), "50");
    assert_eq!(hundredths(0.1), "10");
    assert_eq!(hundredths(0.125), "12.5");
    assert_eq!(hundredths(1.0 / 3.0), "33.33");
    assert_eq!(hundredths(0.0), "0");
    assert_eq!(hundredths(-0.00001), "0");
    assert_eq!(percent(0.025), "2.50%");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A canary identical to a baseline within the absolute limits always passes.
    #[test]
    fn a_canary_like_its_baseline_passes(
        requests in 100u64..5_000,
        per_mille in 0u64..=10,
        latency in 0u32..20_000,
    ) {
        let same = stats(requests, requests * per_mille / 1_000, latency);
        prop_assert_eq!(judge(&policy(), &same, &same), Verdict::Pass);
    }

    /// More errors never turn a failing canary into a passing one.
    #[test]
    fn more_errors_never_help(
        requests in 100u64..2_000,
        errors in 0u64..100,
        more in 0u64..100,
        baseline_errors in 0u64..50,
    ) {
        let baseline = stats(1_000, baseline_errors, 50);
        let fewer = judge(&policy(), &stats(requests, errors, 50), &baseline);
        let worse = judge(&policy(), &stats(requests, (errors + more).min(requests), 50), &baseline);
        let (fewer_fails, worse_fails) = (
            matches!(fewer, Verdict::Fail { .. }),
            matches!(worse, Verdict::Fail { .. }),
        );
        prop_assert!(!fewer_fails || worse_fails, "{:?} then {:?}", fewer, worse);
    }
}
