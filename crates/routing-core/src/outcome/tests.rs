use proptest::prelude::*;

use super::*;

fn stats_of(outcomes: &[(bool, u32)]) -> Stats {
    let mut stats = Stats::default();
    for &(success, latency) in outcomes {
        stats.record(success, latency);
    }
    stats
}

/// 60 s in 12 slots of 5 s.
fn window() -> Window {
    Window::new(WindowConfig::default())
}

#[test]
fn bounds_are_strictly_increasing() {
    assert!(LATENCY_BOUNDS_MS.windows(2).all(|pair| pair[0] < pair[1]));
    assert_eq!(LATENCY_BOUNDS_MS[BUCKET_COUNT - 1], u32::MAX);
}

#[test]
fn latencies_land_in_their_buckets() {
    assert_eq!(bucket_of(0), 0);
    assert_eq!(bucket_of(1), 0);
    assert_eq!(bucket_of(2), 1);
    assert_eq!(bucket_of(4), 3);
    assert_eq!(bucket_of(5), 3);
    assert_eq!(bucket_of(30_000), 22);
    assert_eq!(bucket_of(30_001), 23);
    assert_eq!(bucket_of(u32::MAX), 23);
}

#[test]
fn record_counts_requests_errors_and_latency() {
    let stats = stats_of(&[(true, 4), (false, 4), (true, 120)]);
    assert_eq!(stats.requests, 3);
    assert_eq!(stats.errors, 1);
    assert_eq!(stats.latency[3], 2);
    assert_eq!(stats.latency[11], 1);
    assert_eq!(stats.latency.iter().sum::<u64>(), 3);
}

#[test]
fn error_rate_is_zero_without_requests() {
    assert_eq!(Stats::default().error_rate(), 0.0);
    assert_eq!(stats_of(&[(false, 1), (true, 1)]).error_rate(), 0.5);
    assert_eq!(stats_of(&[(false, 1)]).error_rate(), 1.0);
}

#[test]
fn merge_adds_every_count() {
    let mut a = stats_of(&[(true, 10), (false, 200)]);
    let b = stats_of(&[(false, 10), (true, 40_000)]);
    a.merge(&b);
    assert_eq!(
        a,
        stats_of(&[(true, 10), (false, 200), (false, 10), (true, 40_000)])
    );
    let before = a.clone();
    a.merge(&Stats::default());
    assert_eq!(a, before);
}

#[test]
fn percentiles_report_bucket_bounds() {
    assert_eq!(Stats::default().percentile_ms(0.5), None);
    assert_eq!(Stats::default().p99_ms(), None);
    // 98 requests at 10 ms, 2 at 180 ms: the 99th is in the (150, 200] bucket.
    let mut stats = Stats::default();
    for _ in 0..98 {
        stats.record(true, 10);
    }
    stats.record(true, 180);
    stats.record(true, 180);
    assert_eq!(stats.percentile_ms(0.0), Some(12));
    assert_eq!(stats.percentile_ms(0.5), Some(12));
    assert_eq!(stats.percentile_ms(0.98), Some(12));
    assert_eq!(stats.p99_ms(), Some(200));
    assert_eq!(stats.percentile_ms(1.0), Some(200));
    assert_eq!(stats.percentile_ms(7.0), Some(200));
    assert_eq!(stats.percentile_ms(f64::NAN), Some(200));
    assert_eq!(stats.percentile_ms(-1.0), Some(12));
}

#[test]
fn the_open_ended_bucket_reports_twice_the_last_bound() {
    let stats = stats_of(&[(true, 45_000)]);
    assert_eq!(stats.p99_ms(), Some(60_000));
    let stats = stats_of(&[(true, u32::MAX)]);
    assert_eq!(stats.p99_ms(), Some(60_000));
}

#[test]
fn stats_serialise_as_json() {
    let stats = stats_of(&[(true, 3), (false, 900)]);
    let json = serde_json::to_string(&stats).expect("serialise");
    assert_eq!(serde_json::from_str::<Stats>(&json).expect("parse"), stats);
    let partial: Stats = serde_json::from_str(r#"{"requests": 2}"#).expect("partial");
    assert_eq!(partial.requests, 2);
    assert!(serde_json::from_str::<Stats>(r#"{"request": 2}"#).is_err());
}

#[test]
fn window_config_defaults_and_validation() {
    let config = WindowConfig::default();
    assert_eq!((config.span_ms, config.slots), (60_000, 12));
    assert_eq!(config.validate(), Ok(()));
    let parsed: WindowConfig = serde_json::from_str(r#"{"slots": 6}"#).expect("partial");
    assert_eq!((parsed.span_ms, parsed.slots), (60_000, 6));
    assert!(serde_json::from_str::<WindowConfig>(r#"{"span": 1}"#).is_err());
    let error = WindowConfig {
        span_ms: 0,
        slots: 0,
    }
    .validate()
    .expect_err("invalid");
    assert!(
        error.contains("slots") && error.contains("span_ms"),
        "{error}"
    );
}

#[test]
fn window_shape_follows_the_config() {
    let window = window();
    assert_eq!((window.slot_ms(), window.span_ms()), (5_000, 60_000));
    // Slots not dividing the span: the width rounds down.
    let window = Window::new(WindowConfig {
        span_ms: 1_000,
        slots: 3,
    });
    assert_eq!((window.slot_ms(), window.span_ms()), (333, 999));
    // Unusable configurations are made usable, not a panic.
    let window = Window::new(WindowConfig {
        span_ms: 0,
        slots: 0,
    });
    assert_eq!((window.slot_ms(), window.span_ms()), (1, 1));
}

#[test]
fn window_counts_recent_outcomes() {
    let mut window = window();
    window.record(1_000, true, 10);
    window.record(7_000, false, 10);
    window.record(12_000, true, 10);
    let stats = window.stats(12_000, 60_000);
    assert_eq!((stats.requests, stats.errors), (3, 1));
    // Only the slots overlapping the last 6 s: [5 s, 10 s) and [10 s, 15 s).
    let recent = window.stats(12_000, 6_000);
    assert_eq!((recent.requests, recent.errors), (2, 1));
    // The slot of now only.
    assert_eq!(window.stats(12_000, 1).requests, 1);
    assert_eq!(window.stats(12_000, 0), Stats::default());
}

#[test]
fn window_rotation_expires_old_slots() {
    let mut window = window();
    window.record(0, false, 10);
    window.record(4_999, false, 10);
    window.record(5_000, true, 10);
    // At 59.999 s the slot [0, 5 s) is still one of the 12.
    assert_eq!(window.stats(59_999, 60_000).requests, 3);
    // At 60 s its place in the ring belongs to [60 s, 65 s): expired even before being reused.
    let stats = window.stats(60_000, 60_000);
    assert_eq!((stats.requests, stats.errors), (1, 0));
    // Recording at 61 s reuses the slot and clears it.
    window.record(61_000, true, 10);
    assert_eq!(window.stats(61_000, 60_000).requests, 2);
    assert_eq!(window.stats(61_000, 120_000).requests, 2);
}

#[test]
fn an_idle_window_empties() {
    let mut window = window();
    for t in 0..100 {
        window.record(t * 500, t % 3 == 0, 20);
    }
    assert_eq!(window.stats(49_500, 60_000).requests, 100);
    assert_eq!(window.stats(200_000, 60_000), Stats::default());
    // A record after a long pause does not revive older slots.
    window.record(1_000_000, true, 5);
    assert_eq!(window.stats(1_000_000, 60_000).requests, 1);
}

#[test]
fn window_span_caps_the_query() {
    let mut window = window();
    window.record(0, true, 10);
    window.record(30_000, true, 10);
    assert_eq!(window.stats(62_000, u64::MAX).requests, 1);
}

#[test]
fn late_outcomes_count_while_their_slot_is_in_the_window() {
    let mut window = window();
    window.record(20_000, true, 10);
    window.record(19_000, false, 10);
    window.record(3_000, false, 10);
    let stats = window.stats(20_000, 60_000);
    assert_eq!((stats.requests, stats.errors), (3, 2));
    // The window moved on: outcomes of more than 60 s ago are dropped, not a panic.
    window.record(100_000, true, 10);
    window.record(30_000, false, 10);
    window.record(0, false, 10);
    let stats = window.stats(100_000, 60_000);
    assert_eq!((stats.requests, stats.errors), (1, 0));
    // A query in the past sees the slots still held up to then, none after.
    let past = window.stats(50_000, 60_000);
    assert_eq!((past.requests, past.errors), (3, 2));
}

#[test]
fn clear_forgets_everything() {
    let mut window = window();
    window.record(5_000, false, 10);
    window.record(90_000, false, 10);
    window.clear();
    assert_eq!(window.stats(90_000, 60_000), Stats::default());
    // Older times are accepted again after a clear.
    window.record(5_000, true, 10);
    assert_eq!(window.stats(5_000, 60_000).requests, 1);
}

#[test]
fn times_near_the_end_of_time_do_not_overflow() {
    let mut window = window();
    window.record(u64::MAX, true, 10);
    window.record(u64::MAX - 1, false, 10);
    assert_eq!(window.stats(u64::MAX, u64::MAX).requests, 2);
    assert_eq!(window.stats(u64::MAX, 1).requests, 2);
    window.record(u64::MAX - 60_000, false, 10);
    assert_eq!(window.stats(u64::MAX, u64::MAX).requests, 2);
}

/// The slot start of a time, for the model of the window.
fn align(t: u64, width: u64) -> u64 {
    t - t % width
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The percentile never decreases as `q` grows.
    #[test]
    fn percentile_is_monotonic_in_q(
        latencies in prop::collection::vec(0u32..100_000, 1..200),
        a in 0.0f64..=1.0,
        b in 0.0f64..=1.0,
    ) {
        let stats = stats_of(&latencies.iter().map(|&l| (true, l)).collect::<Vec<_>>());
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(stats.percentile_ms(low) <= stats.percentile_ms(high));
    }

    /// The reported bound is the bound of the quantile's bucket, never below the latency of the
    /// request at that rank (the open-ended bucket excepted, which reports 60 s).
    #[test]
    fn percentile_bounds_the_recorded_latency(
        mut latencies in prop::collection::vec(
            prop_oneof![9 => 0u32..40_000, 1 => any::<u32>()],
            1..200,
        ),
        q in 0.0f64..=1.0,
    ) {
        let stats = stats_of(&latencies.iter().map(|&l| (true, l)).collect::<Vec<_>>());
        latencies.sort_unstable();
        let n = latencies.len() as u64;
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let at_rank = latencies[(rank - 1) as usize];
        let reported = stats.percentile_ms(q).expect("requests");
        prop_assert_eq!(reported, reported_bound(bucket_of(at_rank)));
        prop_assert!(at_rank.min(OVERFLOW_REPORT_MS) <= reported);
        let max = latencies[latencies.len() - 1];
        prop_assert!(max.min(OVERFLOW_REPORT_MS) <= stats.percentile_ms(1.0).expect("requests"));
    }

    /// Merging equals recording everything into one.
    #[test]
    fn merge_equals_recording_together(
        a in prop::collection::vec((any::<bool>(), any::<u32>()), 0..50),
        b in prop::collection::vec((any::<bool>(), any::<u32>()), 0..50),
    ) {
        let mut merged = stats_of(&a);
        merged.merge(&stats_of(&b));
        let together: Vec<(bool, u32)> = a.iter().chain(b.iter()).copied().collect();
        prop_assert_eq!(merged, stats_of(&together));
    }

    /// For queries at or after the newest outcome, the window equals a brute-force count of the
    /// outcomes whose slot is in the window and overlaps the queried range.
    #[test]
    fn window_matches_a_brute_force_model(
        slots in 1u32..16,
        width in 1u64..2_000,
        steps in prop::collection::vec((-3_000i64..6_000, any::<bool>()), 1..120),
        after in 0u64..20_000,
        span in 0u64..40_000,
    ) {
        let mut window = Window::new(WindowConfig { span_ms: width * u64::from(slots), slots });
        let mut now = 50_000u64;
        let mut newest = 0u64;
        let mut events = Vec::new();
        for (delta, success) in steps {
            now = now.saturating_add_signed(delta);
            window.record(now, success, 7);
            events.push((now, success));
            newest = newest.max(now);
        }
        let query = newest + after;
        let ring = width * u64::from(slots);
        let span = span.min(ring);
        let low = (query + 1).saturating_sub(span);
        let expected = stats_of(
            &events
                .iter()
                .filter(|&&(t, _)| {
                    let start = align(t, width);
                    span > 0 && start + ring > query && start + width > low
                })
                .map(|&(_, success)| (success, 7))
                .collect::<Vec<_>>(),
        );
        prop_assert_eq!(window.counts(query, span), (expected.requests, expected.errors));
        prop_assert_eq!(window.stats(query, span), expected);
    }
}
