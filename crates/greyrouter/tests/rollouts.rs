//! Managed operations against real servers: rollouts driven by outcome reports to completion or
//! abort, operator controls, sticky experiments, outlier ejection, the audit trail, and the
//! rollout driver's lease moving between two replicas on real Redis.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use greyrouter::config::Config;
use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::admin_client::AdminClient;
use greyrouter_proto::v1::router_client::RouterClient;
use support::{TestServer, within};
use tonic::Code;
use tonic::transport::Channel;

/// A server whose rollout driver looks at rollouts every 20 ms.
fn fast(config: Config) -> Config {
    let mut config = config;
    config.outcomes.rollout_tick_ms = 20;
    config.outcomes.rollout_lease_ms = 300;
    config
}

fn start_request(
    steps: &[f64],
    min_requests: u64,
    max_failed_checks: u32,
) -> pb::StartRolloutRequest {
    pb::StartRolloutRequest {
        service: "api".into(),
        id: "r1".into(),
        to_version: "v2".into(),
        steps: steps.to_vec(),
        interval_seconds: 1,
        analysis: Some(pb::AnalysisPolicy {
            min_requests,
            max_failed_checks,
            ..Default::default()
        }),
        cohort: None,
        force: false,
    }
}

/// Routes every tenant in turn and reports each outcome to every router: failures for
/// `failing_version`, successes otherwise. Runs until `stop` is set.
async fn report_traffic(
    routers: Vec<RouterClient<Channel>>,
    tenants: usize,
    failing_version: &'static str,
    stop: Arc<AtomicBool>,
) {
    let mut first = routers[0].clone();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let tenant = format!("t{}", i % tenants);
        i += 1;
        let Ok(routed) = first
            .route(pb::RouteRequest {
                tenant_id: tenant.clone(),
                service: "api".into(),
                ..Default::default()
            })
            .await
        else {
            continue;
        };
        let routed = routed.into_inner();
        let outcome = pb::Outcome {
            instance_id: routed.instance_id,
            tenant_id: tenant,
            service: "api".into(),
            version: routed.version.clone(),
            success: routed.version != failing_version,
            latency_ms: 5,
            ..Default::default()
        };
        for router in &routers {
            let _ = router
                .clone()
                .report_outcomes(pb::ReportOutcomesRequest {
                    outcomes: vec![outcome.clone()],
                })
                .await;
        }
    }
}

async fn rollout(admin: &mut AdminClient<Channel>) -> pb::Rollout {
    admin
        .get_rollout(pb::GetRolloutRequest {
            service: "api".into(),
            id: "r1".into(),
        })
        .await
        .expect("get rollout")
        .into_inner()
        .rollout
        .expect("rollout")
}

/// Polls the rollout until its phase is `phase` (the test deadline applies). A replica that has
/// not yet applied the rollout's start answers `NOT_FOUND` meanwhile.
async fn await_phase(admin: &mut AdminClient<Channel>, phase: &str) -> pb::Rollout {
    support::eventually(&format!("the rollout to be {phase}"), async || {
        let answer = admin
            .get_rollout(pb::GetRolloutRequest {
                service: "api".into(),
                id: "r1".into(),
            })
            .await;
        match answer {
            Ok(answer) => Some(answer.into_inner().rollout.expect("rollout"))
                .filter(|current| current.phase == phase),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
                None
            }
        }
    })
    .await
}

async fn versions(server: &mut TestServer, tenants: usize) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for i in 0..tenants {
        let tenant = format!("t{i}");
        let routed = server.route(&tenant, "api").await.expect("route");
        out.insert(tenant, (routed.version, routed.source));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_rollout_advances_to_completion() {
    let mut server = TestServer::with_config(fast(Config::default())).await;
    server.populate(40).await;
    server.pin("t0", "api", "v1").await;
    let started = server
        .admin
        .start_rollout(start_request(&[25.0, 50.0, 100.0], 20, 3))
        .await
        .expect("start")
        .into_inner()
        .rollout
        .expect("rollout");
    assert_eq!((started.phase.as_str(), started.percent), ("running", 25.0));
    assert_eq!(started.from_version, "v1");
    let on_v2 = versions(&mut server, 40)
        .await
        .values()
        .filter(|(v, s)| v == "v2" && s == "rollout:r1")
        .count();
    assert!(
        (3..=18).contains(&on_v2),
        "about 25% of 39 tenants: {on_v2}"
    );

    let mut watch = within(
        server
            .router
            .watch_assignments(pb::WatchAssignmentsRequest {
                services: vec!["api".into()],
                ..Default::default()
            }),
    )
    .await
    .expect("watch")
    .into_inner();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(report_traffic(
        vec![server.router.clone()],
        40,
        "none",
        Arc::clone(&stop),
    ));
    let done = await_phase(&mut server.admin, "promoted").await;
    // The watch stream says why tenants moved: the decision and its figures.
    let cause = within(async {
        loop {
            let update = watch.message().await.expect("ok").expect("update");
            if update.cause.contains("advance to 50%") {
                return update.cause;
            }
        }
    })
    .await;
    assert!(
        cause.starts_with("progress_rollout by rollout-driver:"),
        "{cause}"
    );
    assert!(cause.contains("requests, 0.00% errors"), "{cause}");
    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("traffic");

    // On a loaded machine a step may hold for want of reports inside its interval; the exact
    // sequence on a given clock is pinned by the driver's own tests (`rollouts::tests`).
    let events: Vec<&str> = done
        .decisions
        .iter()
        .map(|d| d.event.as_str())
        .filter(|e| *e != "hold")
        .collect();
    assert_eq!(
        events,
        ["started", "advance", "advance", "complete"],
        "{:?}",
        done.decisions
    );
    let advance = done
        .decisions
        .iter()
        .find(|d| d.event == "advance")
        .expect("an advance");
    assert!(
        advance
            .canary
            .as_ref()
            .is_some_and(|m| m.requests >= 20 && m.errors == 0)
    );
    assert!(advance.baseline.as_ref().is_some_and(|m| m.requests > 0));
    // Every tenant is on v2 as the default now, except the pinned one.
    let now = versions(&mut server, 40).await;
    assert_eq!(now["t0"], ("v1".to_owned(), "pin".to_owned()));
    for (tenant, (version, source)) in now.iter().filter(|(t, _)| *t != "t0") {
        assert_eq!(
            (version.as_str(), source.as_str()),
            ("v2", "default"),
            "{tenant}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_aborts_and_every_tenant_returns() {
    let mut server = TestServer::with_config(fast(Config::default())).await;
    server.populate(40).await;
    let before = versions(&mut server, 40).await;
    server
        .admin
        .start_rollout(start_request(&[50.0, 100.0], 10, 2))
        .await
        .expect("start");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(report_traffic(
        vec![server.router.clone()],
        40,
        "v2",
        Arc::clone(&stop),
    ));
    let aborted = await_phase(&mut server.admin, "aborted").await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("traffic");

    let events: Vec<&str> = aborted
        .decisions
        .iter()
        .map(|d| d.event.as_str())
        .filter(|e| *e != "hold")
        .collect();
    assert_eq!(
        events,
        ["started", "fail_check", "abort"],
        "{:?}",
        aborted.decisions
    );
    let abort = aborted.decisions.last().expect("the abort");
    assert!(abort.detail.contains("error rate"), "{}", abort.detail);
    assert!(abort.canary.as_ref().is_some_and(|m| m.error_rate > 0.99));
    assert_eq!(aborted.percent, 0.0);
    assert_eq!(
        versions(&mut server, 40).await,
        before,
        "every tenant is back where it was"
    );
    server.stop().await;
}

#[tokio::test]
async fn operators_pause_resume_promote_and_abort() {
    let mut server = TestServer::start().await;
    server.populate(10).await;
    let action = |reason: &str| pb::RolloutActionRequest {
        service: "api".into(),
        id: "r1".into(),
        reason: reason.into(),
        force: false,
    };
    server
        .admin
        .start_rollout(start_request(&[10.0, 100.0], 10, 3))
        .await
        .expect("start");
    let paused = server
        .admin
        .pause_rollout(action("investigating"))
        .await
        .expect("pause")
        .into_inner();
    assert_eq!(
        paused.rollout.as_ref().map(|r| r.phase.as_str()),
        Some("paused")
    );
    let again = server
        .admin
        .pause_rollout(action(""))
        .await
        .expect_err("already paused");
    assert_eq!(again.code(), Code::FailedPrecondition);
    server
        .admin
        .resume_rollout(action(""))
        .await
        .expect("resume");
    let promoted = server
        .admin
        .promote_rollout(action("looks good"))
        .await
        .expect("promote")
        .into_inner()
        .rollout
        .expect("rollout");
    assert_eq!(
        (promoted.phase.as_str(), promoted.percent),
        ("promoted", 100.0)
    );
    let last = promoted.decisions.last().expect("decision");
    assert_eq!(last.event, "promoted");
    assert!(last.detail.contains("looks good"), "{}", last.detail);
    let services = server
        .admin
        .list_services(pb::ListServicesRequest {})
        .await
        .expect("services")
        .into_inner();
    assert_eq!(services.services[0].default_version, "v2");
    let late = server
        .admin
        .abort_rollout(action(""))
        .await
        .expect_err("already promoted");
    assert_eq!(late.code(), Code::FailedPrecondition);

    // A second rollout back to v1, aborted by hand: tenants return at once.
    let mut back = start_request(&[100.0], 10, 3);
    back.id = "r2".into();
    back.to_version = "v1".into();
    server.admin.start_rollout(back).await.expect("start r2");
    assert_eq!(
        server.route("t3", "api").await.expect("route").version,
        "v1"
    );
    server
        .admin
        .abort_rollout(pb::RolloutActionRequest {
            id: "r2".into(),
            ..action("bad idea")
        })
        .await
        .expect("abort");
    assert_eq!(
        server.route("t3", "api").await.expect("route").version,
        "v2"
    );
    let listed = server
        .admin
        .list_rollouts(pb::ListRolloutsRequest {
            service: "api".into(),
        })
        .await
        .expect("list")
        .into_inner();
    let phases: Vec<(&str, &str)> = listed
        .rollouts
        .iter()
        .map(|r| (r.id.as_str(), r.phase.as_str()))
        .collect();
    assert_eq!(phases, [("r1", "promoted"), ("r2", "aborted")]);
    server.stop().await;
}

#[tokio::test]
async fn bad_rollouts_are_refused_clearly() {
    let mut server = TestServer::start().await;
    server.populate(1).await;
    let steps = server
        .admin
        .start_rollout(start_request(&[50.0, 10.0], 10, 3))
        .await
        .expect_err("decreasing steps");
    assert_eq!(steps.code(), Code::InvalidArgument);
    assert!(steps.message().contains("steps"), "{}", steps.message());
    let mut unknown = start_request(&[10.0], 10, 3);
    unknown.to_version = "v9".into();
    let unknown = server
        .admin
        .start_rollout(unknown)
        .await
        .expect_err("unknown version");
    assert_eq!(unknown.code(), Code::NotFound);
    server
        .admin
        .start_rollout(start_request(&[10.0], 10, 3))
        .await
        .expect("start");
    let mut second = start_request(&[10.0], 10, 3);
    second.id = "r2".into();
    let second = server
        .admin
        .start_rollout(second)
        .await
        .expect_err("one at a time");
    assert_eq!(second.code(), Code::FailedPrecondition);
    assert!(second.message().contains("r1"), "{}", second.message());
    server.stop().await;
}

#[tokio::test]
async fn experiment_variants_are_sticky_across_weight_changes() {
    let mut server = TestServer::start().await;
    server.populate(60).await;
    let variants = |a: u32, b: u32| {
        vec![
            pb::Variant {
                name: "control".into(),
                version: "v1".into(),
                weight: a,
            },
            pb::Variant {
                name: "treatment".into(),
                version: "v2".into(),
                weight: b,
            },
        ]
    };
    let created = server
        .admin
        .create_experiment(pb::CreateExperimentRequest {
            id: "e1".into(),
            service: "api".into(),
            variants: variants(50, 50),
            cohort: None,
        })
        .await
        .expect("create")
        .into_inner()
        .experiment
        .expect("experiment");
    let counts: HashMap<String, u64> = created.tenants_per_variant;
    assert_eq!(counts.values().sum::<u64>(), 60);
    assert!(
        counts["treatment"] > 10 && counts["control"] > 10,
        "{counts:?}"
    );
    let first = versions(&mut server, 60).await;
    assert!(first.values().all(|(_, s)| s.starts_with("experiment:e1:")));

    // All weight to treatment, without rebalancing: nobody moves; a new tenant follows the
    // new weights.
    server
        .admin
        .update_experiment(pb::UpdateExperimentRequest {
            service: "api".into(),
            id: "e1".into(),
            variants: variants(0, 100),
            rebalance: false,
        })
        .await
        .expect("update");
    assert_eq!(versions(&mut server, 60).await, first);
    server.tenant("newcomer", "eu").await;
    let newcomer = server.route("newcomer", "api").await.expect("route");
    assert_eq!(newcomer.source, "experiment:e1:treatment");

    // With a rebalance, everybody follows the weights.
    server
        .admin
        .update_experiment(pb::UpdateExperimentRequest {
            service: "api".into(),
            id: "e1".into(),
            variants: variants(0, 100),
            rebalance: true,
        })
        .await
        .expect("rebalance");
    assert!(
        versions(&mut server, 60)
            .await
            .values()
            .all(|(v, _)| v == "v2")
    );
    server
        .admin
        .stop_experiment(pb::StopExperimentRequest {
            service: "api".into(),
            id: "e1".into(),
        })
        .await
        .expect("stop");
    assert_eq!(
        server.route("t5", "api").await.expect("route").source,
        "default"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_failing_instance_is_ejected_and_its_share_moves() {
    let mut server = TestServer::start().await;
    server.populate(1).await;
    server.instance("api", "v1", "a2", "eu").await;
    server.instance("api", "v1", "a3", "eu").await;
    let report = |instance: &str, success: bool| pb::Outcome {
        instance_id: instance.into(),
        service: "api".into(),
        success,
        latency_ms: 3,
        ..Default::default()
    };
    // Five failures in a row (the default policy) eject a2.
    let response = server
        .router
        .report_outcomes(pb::ReportOutcomesRequest {
            outcomes: (0..5)
                .map(|_| report("a2", false))
                .chain([report("ghost", true)])
                .collect(),
        })
        .await
        .expect("report")
        .into_inner();
    assert_eq!((response.accepted, response.rejected), (5, 1));
    assert!(
        response.first_rejection.contains("ghost"),
        "{}",
        response.first_rejection
    );
    for _ in 0..30 {
        let routed = server.route("t0", "api").await.expect("route");
        assert_ne!(routed.instance_id, "a2", "an ejected instance was picked");
    }
    // The streaming form counts too.
    let stream = tokio_stream::iter((0..4).map(move |_| report("a1", true)));
    let streamed = server
        .router
        .report_outcome(stream)
        .await
        .expect("stream")
        .into_inner();
    assert_eq!(streamed.accepted, 4);
    server.stop().await;
}

#[tokio::test]
async fn the_audit_trail_records_who_when_why_before_and_after() {
    let mut server = TestServer::start().await;
    server.populate(2).await;
    let mut request = tonic::Request::new(pb::SetTenantVersionRequest {
        tenant_id: "t1".into(),
        service: "api".into(),
        version: "v2".into(),
        expected_version: None,
        force: false,
        migrate: false,
    });
    request
        .metadata_mut()
        .insert("x-greyrouter-actor", "alice".parse().expect("ascii"));
    request.metadata_mut().insert(
        "x-greyrouter-reason",
        "beta customer".parse().expect("ascii"),
    );
    let revision = server
        .admin
        .set_tenant_version(request)
        .await
        .expect("pin")
        .into_inner()
        .revision;

    let events = server
        .admin
        .list_events(pb::ListEventsRequest {
            since_revision: 0,
            tenant_id: "t1".into(),
            service: String::new(),
            limit: 100,
        })
        .await
        .expect("events")
        .into_inner()
        .events;
    // t1's own changes and the service-wide ones; nothing about t0 alone.
    assert!(events.iter().all(|e| e.tenant_id != "t0"));
    let pin = events
        .iter()
        .find(|e| e.revision == revision)
        .expect("the pin");
    assert_eq!(
        (pin.actor.as_str(), pin.reason.as_str(), pin.kind.as_str()),
        ("alice", "beta customer", "set_tenant_version")
    );
    assert!(pin.at_ms > 1_700_000_000_000);
    let before: serde_json::Value = serde_json::from_str(&pin.before).expect("json");
    let after: serde_json::Value = serde_json::from_str(&pin.after).expect("json");
    assert_eq!(
        (before["version"].as_str(), after["version"].as_str()),
        (Some("v1"), Some("v2"))
    );
    assert_eq!(after["source"], "pin");

    let later = server
        .admin
        .list_events(pb::ListEventsRequest {
            since_revision: revision,
            ..Default::default()
        })
        .await
        .expect("events")
        .into_inner();
    assert!(later.events.is_empty());
    assert_eq!(later.next_revision, revision);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_takes_over_a_rollout_when_its_driver_dies() {
    let redis = greyrouter_test_support::RedisServer::start();
    let on_redis = || {
        let mut config = fast(Config {
            store: redis.url(),
            ..Config::default()
        });
        config.redis.command_timeout_ms = 500;
        config
    };
    // A starts first and takes the driver's lease; B waits.
    let mut a = TestServer::with_config(Config {
        outcomes: greyrouter::config::OutcomeSettings {
            replica_id: "replica-a".into(),
            ..on_redis().outcomes
        },
        ..on_redis()
    })
    .await;
    a.populate(30).await;
    let mut b = TestServer::with_config(Config {
        outcomes: greyrouter::config::OutcomeSettings {
            replica_id: "replica-b".into(),
            ..on_redis().outcomes
        },
        ..on_redis()
    })
    .await;
    a.admin
        .start_rollout(start_request(&[50.0, 100.0], 10, 3))
        .await
        .expect("start");
    // A dies before the first step's interval has passed: it never judged anything.
    let started = rollout(&mut a.admin).await;
    assert_eq!(started.decisions.len(), 1);
    a.stop().await;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(report_traffic(
        vec![b.router.clone()],
        30,
        "none",
        Arc::clone(&stop),
    ));
    let done = await_phase(&mut b.admin, "promoted").await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("traffic");
    assert_eq!(
        done.decisions.last().map(|d| d.event.as_str()),
        Some("complete")
    );
    let events = b
        .admin
        .list_events(pb::ListEventsRequest {
            service: "api".into(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("events")
        .into_inner()
        .events;
    let drivers: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "progress_rollout")
        .map(|e| e.actor.as_str())
        .collect();
    assert!(!drivers.is_empty());
    assert!(
        drivers.iter().all(|d| *d == "rollout-driver:replica-b"),
        "{drivers:?}"
    );
    b.stop().await;
}
