//! README promises held through a running server: the seed applies only to an empty store (TOML
//! or JSON), outlier ejection never ejects more than the policy's share of a pool, an ejected
//! instance's region fails over to another region, and panic mode routes when every instance
//! is ejected.

mod support;

use std::path::PathBuf;

use greyrouter::config::Config;
use greyrouter_proto::v1 as pb;
use greyrouter_test_support::RedisServer;
use support::TestServer;

fn example_seed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed.toml")
}

fn failures(instance: &str, count: usize) -> pb::ReportOutcomesRequest {
    pb::ReportOutcomesRequest {
        outcomes: (0..count)
            .map(|_| pb::Outcome {
                instance_id: instance.into(),
                service: "api".into(),
                success: false,
                latency_ms: 3,
                ..Default::default()
            })
            .collect(),
    }
}

async fn instances_routed(server: &mut TestServer, tenant: &str, routes: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..routes {
        let routed = server.route(tenant, "api").await.expect("route");
        if !seen.contains(&routed.instance_id) {
            seen.push(routed.instance_id);
        }
    }
    seen.sort();
    seen
}

#[tokio::test]
async fn the_seed_is_applied_to_an_empty_store_only() {
    let redis = RedisServer::start();
    let config = || Config {
        store: redis.url(),
        seed: Some(example_seed()),
        ..Config::default()
    };
    let mut first = TestServer::with_config(config()).await;
    // The seed pins acme-corp to v2.0; an operator moves it back to v1.0.
    let seeded = first
        .route("acme-corp", "user-service")
        .await
        .expect("seeded");
    assert_eq!(seeded.version, "v2.0");
    first.pin("acme-corp", "user-service", "v1.0").await;
    first.stop().await;
    // A second router on the same store finds it populated: the seed is not applied again, so
    // the operator's pin stays.
    let mut second = TestServer::with_config(config()).await;
    let routed = second
        .route("acme-corp", "user-service")
        .await
        .expect("route");
    assert_eq!(
        (routed.version.as_str(), routed.source.as_str()),
        ("v1.0", "pin")
    );
    second.stop().await;
}

#[tokio::test]
async fn a_json_seed_loads_the_same_state_as_its_toml() {
    let dump = greyrouter::server::read_seed(&example_seed()).expect("toml seed");
    let dir = tempfile::tempdir().expect("temporary directory");
    let json = dir.path().join("seed.json");
    std::fs::write(&json, serde_json::to_string(&dump).expect("json")).expect("write");
    let mut from_toml = TestServer::with_config(Config {
        seed: Some(example_seed()),
        ..Config::default()
    })
    .await;
    let mut from_json = TestServer::with_config(Config {
        seed: Some(json),
        ..Config::default()
    })
    .await;
    for (tenant, service) in [
        ("acme-corp", "user-service"),
        ("globex", "user-service"),
        ("initech", "order-service"),
    ] {
        let a = from_toml.route(tenant, service).await.expect("toml");
        let b = from_json.route(tenant, service).await.expect("json");
        assert_eq!(
            (a.version, a.source, a.revision),
            (b.version, b.source, b.revision),
            "{tenant}/{service}"
        );
    }
    from_toml.stop().await;
    from_json.stop().await;
}

#[tokio::test]
async fn ejection_stops_at_half_the_pool_and_an_ejected_region_fails_over() {
    let mut server = TestServer::start().await;
    server.populate(1).await;
    server.instance("api", "v1", "a2", "eu").await;
    server.instance("api", "v1", "a3", "us").await;
    server.instance("api", "v1", "a4", "us").await;
    // Every eu instance fails: both would be ejected, but at most half the pool (2 of 4) may be.
    for instance in ["a1", "a2"] {
        server
            .router
            .report_outcomes(failures(instance, 5))
            .await
            .expect("report");
    }
    // The eu tenant t0 no longer reaches eu: its region's instances are all ejected, so it fails
    // over to us instead of being sent to an ejected instance.
    assert_eq!(instances_routed(&mut server, "t0", 20).await, ["a3", "a4"]);
    // A third failing instance is not ejected: two of four are already.
    server
        .router
        .report_outcomes(failures("a3", 5))
        .await
        .expect("report");
    assert_eq!(instances_routed(&mut server, "t0", 20).await, ["a3", "a4"]);
    server.stop().await;
}

#[tokio::test]
async fn when_every_instance_is_ejected_routing_goes_on_in_panic_mode() {
    let mut config = Config::default();
    config.outcomes.ejection.max_ejected_percent = 100;
    let mut server = TestServer::with_config(config).await;
    server.populate(1).await;
    server.instance("api", "v1", "a2", "eu").await;
    for instance in ["a1", "a2"] {
        server
            .router
            .report_outcomes(failures(instance, 5))
            .await
            .expect("report");
    }
    // Both are ejected (the first route after the ejections would otherwise fail): ejections
    // are ignored rather than failing every request.
    assert_eq!(instances_routed(&mut server, "t0", 20).await, ["a1", "a2"]);
    // With one of them back (a re-registration does not lift an ejection, so check a new
    // instance), a healthy instance wins over the ejected ones.
    server.instance("api", "v1", "a9", "eu").await;
    assert_eq!(instances_routed(&mut server, "t0", 20).await, ["a9"]);
    server.stop().await;
}

#[tokio::test]
async fn a_managed_rollout_survives_a_restart_of_every_router() {
    let redis = RedisServer::start();
    let config = || Config {
        store: redis.url(),
        ..Config::default()
    };
    let mut first = TestServer::with_config(config()).await;
    first.populate(20).await;
    first
        .admin
        .start_rollout(pb::StartRolloutRequest {
            service: "api".into(),
            id: "r1".into(),
            to_version: "v2".into(),
            steps: vec![10.0, 50.0, 100.0],
            interval_seconds: 3600,
            ..Default::default()
        })
        .await
        .expect("start");
    first
        .admin
        .pause_rollout(pb::RolloutActionRequest {
            service: "api".into(),
            id: "r1".into(),
            reason: "hold for the weekend".into(),
            ..Default::default()
        })
        .await
        .expect("pause");
    let get = pb::GetRolloutRequest {
        service: "api".into(),
        id: "r1".into(),
    };
    let before = first
        .admin
        .get_rollout(get.clone())
        .await
        .expect("rollout")
        .into_inner()
        .rollout
        .expect("a rollout");
    let routed_before: Vec<String> = {
        let mut versions = Vec::new();
        for i in 0..20 {
            versions.push(
                first
                    .route(&format!("t{i}"), "api")
                    .await
                    .expect("route")
                    .version,
            );
        }
        versions
    };
    first.stop().await;
    // A router started afresh loads the rollout from a snapshot of the store: same plan, phase,
    // decisions and the same tenants on the new version.
    let mut second = TestServer::with_config(config()).await;
    let after = second
        .admin
        .get_rollout(get)
        .await
        .expect("rollout after a restart")
        .into_inner()
        .rollout
        .expect("a rollout");
    assert_eq!(after.phase, "paused");
    assert_eq!(after, before);
    for (i, version) in routed_before.iter().enumerate() {
        let routed = second.route(&format!("t{i}"), "api").await.expect("route");
        assert_eq!(&routed.version, version, "t{i}");
    }
    second.stop().await;
}

fn outcomes(
    instance_id: &str,
    address: &str,
    success: bool,
    count: usize,
) -> pb::ReportOutcomesRequest {
    pb::ReportOutcomesRequest {
        outcomes: (0..count)
            .map(|_| pb::Outcome {
                instance_id: instance_id.into(),
                address: address.into(),
                service: "api".into(),
                success,
                latency_ms: 3,
                ..Default::default()
            })
            .collect(),
    }
}

async fn report(server: &mut TestServer, request: pb::ReportOutcomesRequest) -> (u64, u64) {
    let answer = server
        .router
        .report_outcomes(request)
        .await
        .expect("report")
        .into_inner();
    (answer.accepted, answer.rejected)
}

#[tokio::test]
async fn outcomes_reported_by_address_are_counted_against_that_instance() {
    let mut server = TestServer::start().await;
    server.populate(1).await;
    server.instance("api", "v1", "a2", "eu").await;
    assert_eq!(instances_routed(&mut server, "t0", 4).await, ["a1", "a2"]);
    // Five failures naming a2 only by its address (a proxy that knows no instance ids): a2 is
    // ejected, not a1 (the first instance of the version).
    let by_address = outcomes("", "a2.internal:8080", false, 5);
    assert_eq!(report(&mut server, by_address).await, (5, 0));
    assert_eq!(instances_routed(&mut server, "t0", 20).await, ["a1"]);
    // An address no instance has is refused and counted against nobody.
    let unknown = outcomes("", "a9.internal:8080", false, 5);
    assert_eq!(report(&mut server, unknown).await, (0, 5));
    assert_eq!(instances_routed(&mut server, "t0", 20).await, ["a1"]);
    server.stop().await;
}

/// How many of `routes` `health_aware` decisions for t0 went to each instance.
async fn health_aware_picks(
    server: &mut TestServer,
    routes: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut picks = std::collections::BTreeMap::new();
    for _ in 0..routes {
        let routed = server
            .router
            .route(pb::RouteRequest {
                tenant_id: "t0".into(),
                service: "api".into(),
                strategy: pb::Strategy::HealthAware.into(),
                ..Default::default()
            })
            .await
            .expect("route")
            .into_inner();
        *picks.entry(routed.instance_id).or_default() += 1;
    }
    picks
}

#[tokio::test]
async fn live_health_scores_from_outcome_reports_change_health_aware_picks() {
    let mut config = Config::default();
    // No ejections: only the live score can keep a1 from being picked.
    config.outcomes.ejection.max_ejected_percent = 0;
    let mut server = TestServer::with_config(config).await;
    server.populate(1).await;
    server.instance("api", "v1", "a2", "eu").await;
    let before = health_aware_picks(&mut server, 200).await;
    assert!(before.get("a1").is_some_and(|&n| n > 50), "{before:?}");
    // Every request a1 served failed: live score 0, so health_aware never picks it ...
    assert_eq!(
        report(&mut server, outcomes("a1", "", false, 10)).await,
        (10, 0)
    );
    let failing = health_aware_picks(&mut server, 200).await;
    assert_eq!(failing.get("a2"), Some(&200), "{failing:?}");
    // ... though it is not ejected: round robin still sends it its turn.
    assert_eq!(instances_routed(&mut server, "t0", 4).await, ["a1", "a2"]);
    // Five successes: 5 of 15 (score 33), so a1 gets 33/133 of the picks, about 99 of 400
    // (the standard deviation is about 9; even shares would give 200).
    assert_eq!(
        report(&mut server, outcomes("a1", "", true, 5)).await,
        (5, 0)
    );
    let recovering = health_aware_picks(&mut server, 400).await;
    let a1 = recovering.get("a1").copied().unwrap_or(0);
    assert!((50..=150).contains(&a1), "{recovering:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_a_trimmed_stream_loads_a_snapshot() {
    use std::sync::Arc;

    use control::Actor;
    use control::replica::Replica;
    use greyrouter_store::Store;
    use redis_store::{RedisConfig, RedisStore};

    let redis = RedisServer::start();
    let mut config = RedisConfig::new(redis.url());
    config.stream_max_len = 100;
    let writer: Arc<dyn Store> =
        Arc::new(RedisStore::connect(config.clone()).await.expect("connect"));
    let writing = Replica::load(Arc::clone(&writer), 16, 1 << 20)
        .await
        .expect("load");
    tokio::spawn(Arc::clone(&writing).follow());
    // A replica that loaded the empty store and then did not follow while 600 changes were
    // made: the stream keeps only about the last 100.
    let lagging_store: Arc<dyn Store> =
        Arc::new(RedisStore::connect(config).await.expect("connect"));
    let lagging = Replica::load(lagging_store, 16, 1 << 20)
        .await
        .expect("load");
    let actor = Actor::system("test", "");
    for i in 0..600 {
        writing
            .commit(greyrouter_store::suite::tenant(&format!("t{i:03}")), &actor)
            .await
            .expect("commit");
    }
    let oldest = redis.command(&["XRANGE", "{greyrouter}:changes", "-", "+", "COUNT", "1"]);
    assert!(
        !oldest.contains("\n1-0\r"),
        "the stream was trimmed: {oldest}"
    );
    // Following now, it finds its next change gone and loads a snapshot instead.
    let mut revisions = lagging.subscribe();
    tokio::spawn(Arc::clone(&lagging).follow());
    support::within(revisions.wait_for(|&revision| revision >= 600))
        .await
        .expect("caught up");
    let state = lagging.current();
    assert_eq!(state.revision(), 600);
    assert_eq!(state.tenant_count(), 600);
    assert!(state.tenant("t000").is_some() && state.tenant("t599").is_some());
}
