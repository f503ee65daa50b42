use proptest::prelude::*;

use super::*;

fn policy() -> EjectionPolicy {
    EjectionPolicy::default()
}

#[test]
fn defaults_are_as_documented_and_valid() {
    let policy = policy();
    assert_eq!(policy.consecutive_failures, 5);
    assert_eq!(policy.error_rate, 0.5);
    assert_eq!(policy.min_requests, 20);
    assert_eq!(policy.window_ms, 30_000);
    assert_eq!(policy.base_ejection_ms, 30_000);
    assert_eq!(policy.max_ejection_ms, 300_000);
    assert_eq!(policy.max_ejected_percent, 50);
    assert_eq!(policy.validate(), Ok(()));
}

#[test]
fn partial_policies_parse_and_unknown_fields_do_not() {
    let parsed: EjectionPolicy =
        serde_json::from_str(r#"{"consecutive_failures": 3}"#).expect("partial");
    assert_eq!(
        parsed,
        EjectionPolicy {
            consecutive_failures: 3,
            ..policy()
        }
    );
    assert!(serde_json::from_str::<EjectionPolicy>(r#"{"failures": 3}"#).is_err());
    let json = serde_json::to_string(&policy()).expect("serialise");
    assert_eq!(
        serde_json::from_str::<EjectionPolicy>(&json).expect("parse"),
        policy()
    );
}

#[test]
fn validate_reports_every_bad_value() {
    let bad = EjectionPolicy {
        consecutive_failures: 0,
        error_rate: 1.5,
        min_requests: 0,
        window_ms: 0,
        base_ejection_ms: 0,
        max_ejection_ms: 0,
        max_ejected_percent: 101,
    };
    let error = bad.validate().expect_err("invalid");
    for field in [
        "error_rate",
        "min_requests",
        "window_ms",
        "base_ejection_ms",
        "max_ejected_percent",
    ] {
        assert!(error.contains(field), "{field} missing from {error}");
    }
    let inverted = EjectionPolicy {
        max_ejection_ms: 1_000,
        ..policy()
    };
    assert!(
        inverted
            .validate()
            .expect_err("invalid")
            .contains("max_ejection_ms")
    );
    let nan = EjectionPolicy {
        error_rate: f64::NAN,
        ..policy()
    };
    assert!(nan.validate().is_err());
}

#[test]
fn consecutive_failures_eject() {
    let policy = policy();
    let mut health = InstanceHealth::new(&policy);
    for t in 0..4 {
        assert!(!health.record(&policy, t * 100, false, 10), "failure {t}");
    }
    assert_eq!(health.consecutive_failures(), 4);
    assert!(health.record(&policy, 500, false, 10));
    // Still due on the next outcome, success or not, until ejected.
    assert!(health.record(&policy, 600, false, 10));
}

#[test]
fn a_success_resets_the_failures_in_a_row() {
    let policy = EjectionPolicy {
        min_requests: 1_000,
        ..policy()
    };
    let mut health = InstanceHealth::new(&policy);
    for round in 0..10 {
        for t in 0..4 {
            assert!(!health.record(&policy, round * 1_000 + t, false, 10));
        }
        assert!(!health.record(&policy, round * 1_000 + 4, true, 10));
        assert_eq!(health.consecutive_failures(), 0);
    }
}

#[test]
fn zero_consecutive_failures_disables_that_trigger() {
    let policy = EjectionPolicy {
        consecutive_failures: 0,
        min_requests: 1_000,
        ..policy()
    };
    let mut health = InstanceHealth::new(&policy);
    for t in 0..100 {
        assert!(!health.record(&policy, t, false, 10));
    }
}

#[test]
fn error_rate_ejects_once_there_are_enough_requests() {
    let policy = policy();
    let mut health = InstanceHealth::new(&policy);
    // Alternating outcomes: 50% errors, never two failures in a row.
    for i in 0..19u64 {
        assert!(
            !health.record(&policy, i * 100, i % 2 == 1, 10),
            "request {i}"
        );
    }
    // 20 requests, 10 failed: 50% reaches the threshold.
    assert!(health.record(&policy, 1_900, false, 10));
}

#[test]
fn error_rate_below_the_threshold_does_not_eject() {
    let policy = policy();
    let mut health = InstanceHealth::new(&policy);
    // One failure in three: 33%.
    for i in 0..300u64 {
        assert!(!health.record(&policy, i * 50, i % 3 != 0, 10));
    }
    assert_eq!(health.health_score(15_000), 66);
}

#[test]
fn old_failures_leave_the_window() {
    let policy = EjectionPolicy {
        consecutive_failures: 0,
        ..policy()
    };
    let mut health = InstanceHealth::new(&policy);
    for i in 0..15u64 {
        assert!(!health.record(&policy, i, false, 10));
    }
    // 31 s later the failures are out of the 30 s window: 15 successes are 0% errors.
    for i in 0..15u64 {
        assert!(!health.record(&policy, 31_000 + i, true, 10));
    }
    assert_eq!(health.stats(31_014).errors, 0);
    assert_eq!(health.health_score(31_014), 100);
}

#[test]
fn ejections_grow_and_are_capped() {
    let policy = policy();
    let mut health = InstanceHealth::new(&policy);
    let mut now = 1_000;
    let mut durations = Vec::new();
    for _ in 0..7 {
        let until = health.eject(&policy, now);
        assert!(health.is_ejected(now));
        assert!(health.is_ejected(until - 1));
        assert!(!health.is_ejected(until));
        durations.push(until - now);
        now = until + 10_000;
    }
    assert_eq!(
        durations,
        [30_000, 60_000, 120_000, 240_000, 300_000, 300_000, 300_000]
    );
    assert_eq!(health.times_ejected(), 7);
}

#[test]
fn ejection_durations_never_overflow() {
    let policy = EjectionPolicy {
        max_ejection_ms: u64::MAX,
        ..policy()
    };
    assert_eq!(policy.ejection_ms(0), 30_000);
    assert_eq!(policy.ejection_ms(63), u64::MAX);
    assert_eq!(policy.ejection_ms(200), u64::MAX);
    let mut health = InstanceHealth::new(&policy);
    assert_eq!(health.eject(&policy, u64::MAX - 5), u64::MAX);
}

#[test]
fn an_ejected_instance_ignores_outcomes_and_comes_back_clean() {
    let policy = policy();
    let mut health = InstanceHealth::new(&policy);
    for t in 0..5 {
        health.record(&policy, t, false, 10);
    }
    let until = health.eject(&policy, 10);
    assert_eq!(until, 30_010);
    assert_eq!(health.ejected_until_ms(), 30_010);
    assert_eq!(health.consecutive_failures(), 0);
    // Ejecting again while ejected changes nothing.
    assert_eq!(health.eject(&policy, 20), 30_010);
    assert_eq!(health.times_ejected(), 1);
    // Requests in flight at the ejection fail afterwards: ignored.
    for t in 0..10 {
        assert!(!health.record(&policy, 100 + t, false, 10));
    }
    assert_eq!(health.consecutive_failures(), 0);
    assert_eq!(health.health_score(20_000), 0);
    // Back: a clean slate, and the ejection is cleared by the first outcome.
    assert!(!health.is_ejected(30_010));
    assert_eq!(health.health_score(30_010), 100);
    assert!(!health.record(&policy, 30_010, true, 10));
    assert_eq!(health.ejected_until_ms(), 0);
    assert_eq!(health.times_ejected(), 1);
}

#[test]
fn health_score_follows_the_error_rate() {
    let policy = policy();
    let mut health = InstanceHealth::new(&policy);
    assert_eq!(health.health_score(0), 100);
    for i in 0..4u64 {
        health.record(&policy, i, i != 0, 10);
    }
    assert_eq!(health.health_score(10), 75);
    health.record(&policy, 11, false, 10);
    // 3 of 5 succeeded.
    assert_eq!(health.health_score(11), 60);
    // The window forgets: no data is full health.
    assert_eq!(health.health_score(100_000), 100);
    health.eject(&policy, 100_000);
    assert_eq!(health.health_score(100_000), 0);
}

#[test]
fn a_changed_window_restarts_it() {
    let policy = EjectionPolicy {
        consecutive_failures: 0,
        ..policy()
    };
    let mut health = InstanceHealth::new(&policy);
    for t in 0..19 {
        assert!(!health.record(&policy, t, false, 10));
    }
    let wider = EjectionPolicy {
        window_ms: 60_000,
        ..policy
    };
    assert!(!health.record(&wider, 19, false, 10));
    assert_eq!(health.stats(19).requests, 1);
}

#[test]
fn may_eject_respects_the_percentage() {
    let half = policy();
    assert!(!may_eject(0, 0, &half));
    assert!(!may_eject(0, 1, &half));
    assert!(may_eject(0, 2, &half));
    assert!(!may_eject(1, 2, &half));
    assert!(may_eject(0, 3, &half));
    assert!(!may_eject(1, 3, &half));
    assert!(may_eject(4, 10, &half));
    assert!(!may_eject(5, 10, &half));
    let all = EjectionPolicy {
        max_ejected_percent: 100,
        ..policy()
    };
    assert!(may_eject(0, 1, &all));
    assert!(!may_eject(1, 1, &all));
    let none = EjectionPolicy {
        max_ejected_percent: 0,
        ..policy()
    };
    assert!(!may_eject(0, 1_000, &none));
    assert!(!may_eject(usize::MAX, usize::MAX, &all));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Ejecting while allowed never exceeds the percentage, and stops only at it.
    #[test]
    fn may_eject_never_exceeds_the_percentage(total in 0usize..500, percent in 0u32..=120) {
        let policy = EjectionPolicy { max_ejected_percent: percent, ..EjectionPolicy::default() };
        let mut ejected = 0usize;
        while ejected < total && may_eject(ejected, total, &policy) {
            ejected += 1;
        }
        let percent = u128::from(percent.min(100));
        prop_assert!(ejected as u128 * 100 <= total as u128 * percent);
        prop_assert_eq!(ejected as u128, total as u128 * percent / 100);
    }

    /// Ejection durations never shrink as ejections repeat, and stay within base..=max.
    #[test]
    fn ejection_durations_grow_within_bounds(
        base in 1u64..1_000_000,
        extra in 0u64..10_000_000,
        times in 0u32..100,
    ) {
        let policy = EjectionPolicy {
            base_ejection_ms: base,
            max_ejection_ms: base + extra,
            ..EjectionPolicy::default()
        };
        let (this, next) = (policy.ejection_ms(times), policy.ejection_ms(times + 1));
        prop_assert!(this <= next);
        prop_assert!((base..=base + extra).contains(&this));
    }

    /// The health score stays within 0-100 whatever the outcomes.
    #[test]
    fn health_score_stays_in_range(outcomes in prop::collection::vec((0u64..1_000, any::<bool>()), 0..200)) {
        let policy = EjectionPolicy::default();
        let mut health = InstanceHealth::new(&policy);
        let mut now = 0;
        for (delta, success) in outcomes {
            now += delta;
            if health.record(&policy, now, success, 5) {
                health.eject(&policy, now);
            }
            prop_assert!(health.health_score(now) <= 100);
        }
    }
}

// The book: every instance's health, applied to the pool's live load.

fn member_of(service: &str, id: &str) -> std::sync::Arc<crate::Instance> {
    std::sync::Arc::new(crate::Instance::new(
        id,
        format!("{id}.internal:8080"),
        service,
        "v1",
    ))
}

/// A pool of `ids` of service `api`.
fn pool(ids: &[&str]) -> Pool {
    Pool::new(ids.iter().map(|id| member_of("api", id)), None)
}

fn member<'p>(pool: &'p Pool, id: &str) -> &'p Member {
    pool.member(id).expect("a member")
}

/// Records `n` outcomes of `id`, returning the last one's ejection.
fn record_n(
    book: &mut EjectionBook,
    pool: &Pool,
    id: &str,
    n: usize,
    success: bool,
    now_ms: u64,
) -> Option<Ejection> {
    let mut last = None;
    for _ in 0..n {
        last = book.record(&policy(), pool, member(pool, id), success, 5, now_ms);
    }
    last
}

#[test]
fn the_book_ejects_an_instance_that_keeps_failing_and_applies_it_to_its_load() {
    let pool = pool(&["a", "b"]);
    let mut book = EjectionBook::new();
    assert!(book.is_empty());
    // Four failures in a row: not yet (the default ejects on the fifth).
    assert_eq!(record_n(&mut book, &pool, "a", 4, false, 1_000), None);
    let a = &member(&pool, "a").load;
    assert!(!a.is_ejected(1_000));
    assert_eq!(a.live_score(), 0, "four failures of four");
    let ejection = record_n(&mut book, &pool, "a", 1, false, 1_000);
    assert_eq!(
        ejection,
        Some(Ejection {
            until_ms: 31_000,
            times: 1
        })
    );
    assert!(a.is_ejected(30_999));
    assert_eq!(a.ejected_until_ms(), 31_000);
    assert_eq!(a.live_score(), 0);
    let health = book.health("api", "a").expect("known");
    assert_eq!(health.times_ejected(), 1);
    assert!(health.is_ejected(1_000));
    assert_eq!(book.len(), 1);
    // Outcomes reported while ejected are ignored: no second ejection.
    assert_eq!(record_n(&mut book, &pool, "a", 10, false, 2_000), None);
    assert_eq!(a.ejected_until_ms(), 31_000);
    // Back, with a clean slate: a success scores 100, five more failures eject for twice as
    // long.
    assert_eq!(record_n(&mut book, &pool, "a", 1, true, 31_000), None);
    assert_eq!(a.live_score(), 100);
    assert_eq!(
        record_n(&mut book, &pool, "a", 5, false, 32_000),
        Some(Ejection {
            until_ms: 92_000,
            times: 2
        })
    );
    // The other instance was never touched.
    assert!(!member(&pool, "b").load.is_ejected(32_000));
    assert_eq!(member(&pool, "b").load.live_score(), 100);
}

#[test]
fn the_book_never_ejects_more_than_the_policys_share_of_the_pool() {
    // 50% of two: one may go, the second stays however it fails.
    let pool = pool(&["a", "b"]);
    let mut book = EjectionBook::new();
    assert!(record_n(&mut book, &pool, "a", 5, false, 1_000).is_some());
    assert_eq!(record_n(&mut book, &pool, "b", 20, false, 1_000), None);
    let b = &member(&pool, "b").load;
    assert!(!b.is_ejected(1_000));
    // Its live score still says how it fares.
    assert_eq!(b.live_score(), 0);
    // Once `a` is back (its ejection ended), `b`'s next failure ejects it: it kept wanting to.
    let ejection = record_n(&mut book, &pool, "b", 1, false, 31_000);
    assert_eq!(
        ejection,
        Some(Ejection {
            until_ms: 61_000,
            times: 1
        })
    );
    // A pool of one never ejects at 50%.
    let alone = self::pool(&["solo"]);
    assert_eq!(record_n(&mut book, &alone, "solo", 50, false, 1_000), None);
}

#[test]
fn the_book_keeps_instances_of_different_services_apart() {
    let api = pool(&["x", "y"]);
    let billing = Pool::new([member_of("billing", "x"), member_of("billing", "y")], None);
    let mut book = EjectionBook::new();
    assert_eq!(record_n(&mut book, &api, "x", 4, false, 1_000), None);
    // The same id in another service starts from nothing: four failures there do not add up
    // to five.
    assert_eq!(record_n(&mut book, &billing, "x", 4, false, 1_000), None);
    assert_eq!(book.len(), 2);
    assert_eq!(
        book.health("api", "x")
            .map(InstanceHealth::consecutive_failures),
        Some(4)
    );
    assert_eq!(
        book.health("billing", "x")
            .map(InstanceHealth::consecutive_failures),
        Some(4)
    );
    assert!(book.health("api", "y").is_none());
    assert!(record_n(&mut book, &api, "x", 1, false, 1_000).is_some());
    assert!(!member(&billing, "x").load.is_ejected(1_000));
}

#[test]
fn the_book_sets_the_live_score_from_the_window() {
    let pool = pool(&["a", "b"]);
    let mut book = EjectionBook::new();
    for i in 0..4 {
        book.record(&policy(), &pool, member(&pool, "a"), i != 0, 5, 1_000);
    }
    // Three successes of four.
    assert_eq!(member(&pool, "a").load.live_score(), 75);
}

#[test]
fn the_book_leaves_in_flight_counts_alone() {
    let pool = pool(&["a", "b"]);
    let a = &member(&pool, "a").load;
    a.start(1_000);
    let mut book = EjectionBook::new();
    record_n(&mut book, &pool, "a", 5, false, 1_000);
    assert_eq!(a.in_flight(1_000), 1);
}
