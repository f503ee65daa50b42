//! Runs every scenario of `memory`, small, against a greyrouter server started in this process
//! (so the measured pid is this test's own).

mod support;

use std::time::Duration;

use greyrouter::config::Config;
use greyrouter_load::memory::{
    FALLBACK_REASON_CHARS, MemoryConfig, Scenario, ScenarioReport, memory,
};
use support::Server;

/// Deadline for the whole measurement.
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_measures_a_live_server() {
    let server = Server::start(Config::default()).await;
    let config = MemoryConfig {
        target: server.target.clone(),
        pid: std::process::id(),
        scenarios: Scenario::ALL.to_vec(),
        instances: 60,
        reason_tenants: 5,
        actions: 4,
        reason_chars: 2_000,
        watch_tenants: 20,
        watch_services: 2,
        watchers: 5,
        watch_changes: 100,
        change_tenants: 20,
        changes: 200,
        timeout: Duration::from_secs(10),
        settle: Duration::from_secs(3),
    };
    let report = tokio::time::timeout(DEADLINE, memory(&config))
        .await
        .expect("deadline passed")
        .expect("memory");
    assert_eq!(report.scenarios.len(), 4);

    let ScenarioReport::Instances(instances) = &report.scenarios[0] else {
        panic!("instances first: {:?}", report.scenarios[0])
    };
    let done: Vec<usize> = instances.steps.iter().map(|s| s.done).collect();
    assert_eq!(done, [10, 20, 40, 60]);
    assert_eq!(instances.errors.total, 0, "{}", instances.errors);
    let bands: usize = instances.steps.iter().map(|s| s.band.ok).sum();
    assert_eq!(bands, 60);
    for step in &instances.steps {
        assert!(step.rss.rss_kib > 0 && step.rss.peak_kib >= step.rss.rss_kib);
        assert!(step.band.mean_us > 0.0 && step.band.p99_us <= step.band.max_us);
    }

    let ScenarioReport::Reasons(reasons) = &report.scenarios[1] else {
        panic!("reasons second: {:?}", report.scenarios[1])
    };
    assert_eq!(reasons.errors.total, 0, "{}", reasons.errors);
    // Every reason of the first length, or 256 after the server refused it as too long.
    match &reasons.refused {
        None => assert_eq!(reasons.reason_chars, 2_000),
        Some(refusal) => {
            assert_eq!(
                (refusal.chars, refusal.code.as_str()),
                (2_000, "INVALID_ARGUMENT")
            );
            assert_eq!(reasons.reason_chars, FALLBACK_REASON_CHARS);
        }
    }
    assert!(reasons.get_rollout_bytes > 0 && reasons.list_events_bytes > 0);
    // The service, its two instances, the rollout and the four actions.
    assert!(reasons.events >= 8, "{reasons:?}");

    let ScenarioReport::Watchers(watchers) = &report.scenarios[2] else {
        panic!("watchers third: {:?}", report.scenarios[2])
    };
    assert_eq!(watchers.watchers_open, 5, "{}", watchers.watch_errors);
    assert_eq!(
        watchers.change_errors.total, 0,
        "{}",
        watchers.change_errors
    );
    assert!(watchers.first_message_bytes > 0);

    let ScenarioReport::Changes(changes) = &report.scenarios[3] else {
        panic!("changes last: {:?}", report.scenarios[3])
    };
    let done: Vec<usize> = changes.steps.iter().map(|s| s.done).collect();
    assert_eq!(done, [40, 80, 120, 160, 200]);
    assert_eq!(changes.errors.total, 0, "{}", changes.errors);

    // The text and JSON forms name every scenario.
    let text = report.to_string();
    for name in ["instances:", "reasons:", "watchers:", "changes:"] {
        assert!(text.contains(name), "{text}");
    }
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
    assert_eq!(json["scenarios"][2]["scenario"], "watchers");

    server.stop().await;
}
