//! Seeds and loads a real greyrouter server started in this process on 127.0.0.1:0.

mod support;

use std::time::Duration;

use greyrouter::config::Config;
use greyrouter_load::distribution::Distribution;
use greyrouter_load::keyspace::KeyspaceSpec;
use greyrouter_load::run::{Rpc, RunConfig, Stop, run};
use greyrouter_load::seed::{SeedConfig, seed};
use greyrouter_load::summary::Checks;
use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::router_client::RouterClient;
use support::Server;

/// Deadline for anything a test waits on.
const DEADLINE: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .expect("deadline passed")
}

fn keyspace() -> KeyspaceSpec {
    KeyspaceSpec {
        tenants: 50,
        services: 3,
        ..KeyspaceSpec::default()
    }
}

fn seed_config(target: &str) -> SeedConfig {
    SeedConfig {
        target: target.to_owned(),
        keyspace: keyspace(),
        instances_per_version: 2,
        concurrency: 8,
        connections: 2,
        ..SeedConfig::default()
    }
}

fn run_config(target: &str) -> RunConfig {
    RunConfig {
        target: target.to_owned(),
        concurrency: 8,
        connections: 2,
        stop: Stop::Requests(2_000),
        warmup: Duration::ZERO,
        keyspace: keyspace(),
        distribution: Distribution::Zipf { s: 1.0 },
        ..RunConfig::default()
    }
}

/// Routes every seeded tenant to every seeded service, returning each answer's version,
/// instance id, address and source. Consistent hashing on the tenant id picks the instance, so
/// that the answers do not depend on how often the service was routed before.
async fn every_answer(
    router: &mut RouterClient<tonic::transport::Channel>,
) -> Vec<(String, String, String, String)> {
    let mut answers = Vec::new();
    for tenant in 0..keyspace().tenants {
        for service in 0..keyspace().services {
            let routed = router
                .route(pb::RouteRequest {
                    tenant_id: format!("tenant-{tenant}"),
                    service: format!("service-{service}"),
                    strategy: pb::Strategy::ConsistentHash.into(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|status| panic!("tenant-{tenant}/service-{service}: {status}"))
                .into_inner();
            answers.push((
                routed.version,
                routed.instance_id,
                routed.address,
                routed.source,
            ));
        }
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_then_routes_every_request() {
    let server = Server::start(Config::default()).await;

    let report = within(seed(&seed_config(&server.target)))
        .await
        .expect("seed");
    assert_eq!(
        (report.services, report.instances, report.tenants),
        (3, 6, 50)
    );
    assert_eq!(report.calls, 59);
    assert!(report.revision >= 59, "one revision per upsert at least");

    // Seeding again upserts the same entities: it succeeds and changes nothing routed.
    let mut router = RouterClient::connect(server.target.clone())
        .await
        .expect("connect");
    let first = within(every_answer(&mut router)).await;
    assert_eq!(first.len(), 50 * 3);
    assert!(
        first
            .iter()
            .all(|(version, _, address, source)| version == "v1"
                && address.starts_with("10.")
                && source == "default"),
        "{first:?}"
    );
    within(seed(&seed_config(&server.target)))
        .await
        .expect("second seed");
    let second = within(every_answer(&mut router)).await;
    assert_eq!(second, first, "the second seed changed what is routed");

    // A seeded tenant routes to one of its service's seeded instances.
    let routed = router
        .route(pb::RouteRequest {
            tenant_id: "tenant-49".to_owned(),
            service: "service-2".to_owned(),
            ..Default::default()
        })
        .await
        .expect("route")
        .into_inner();
    assert_eq!(routed.version, "v1");
    assert!(routed.address == "10.0.0.4:8080", "{routed:?}");

    let summary = within(run(&run_config(&server.target))).await.expect("run");
    assert_eq!(summary.total, 2_000);
    assert_eq!(summary.errors, 0, "{:?}", summary.error_samples);
    assert_eq!(summary.ok, 2_000);
    assert_eq!(summary.ok + summary.errors, summary.total);
    assert!(summary.error_codes.is_empty());
    assert_eq!(summary.latency_us.count, summary.ok);
    assert!(summary.latency_us.p50 > 0);
    assert!(summary.latency_us.p50 <= summary.latency_us.p99);
    assert!(summary.latency_us.p99 <= summary.latency_us.max);
    assert_eq!(summary.warmup_requests, 0);
    assert!(summary.throughput_rps > 0.0);
    // A Route call is one decision.
    assert_eq!((summary.batch_size, summary.decisions), (1, 2_000));
    assert_eq!(summary.decisions_per_s, summary.throughput_rps);
    let checks = Checks {
        max_p99: None,
        fail_on_error: true,
    };
    assert!(checks.violations(&summary).is_empty());

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tenants_are_counted_by_code() {
    let server = Server::start(Config::default()).await;
    within(seed(&seed_config(&server.target)))
        .await
        .expect("seed");

    // Tenants 50 to 99 were never created.
    let config = RunConfig {
        keyspace: KeyspaceSpec {
            tenants: 100,
            ..keyspace()
        },
        distribution: Distribution::Uniform,
        stop: Stop::Requests(500),
        ..run_config(&server.target)
    };
    let summary = within(run(&config)).await.expect("run");
    assert_eq!(summary.total, 500);
    assert_eq!(summary.ok + summary.errors, 500);
    assert!(summary.ok > 0 && summary.errors > 0, "{summary:?}");
    assert_eq!(summary.error_codes.get("NOT_FOUND"), Some(&summary.errors));
    assert_eq!(summary.latency_us.count, summary.ok);
    let checks = Checks {
        max_p99: None,
        fail_on_error: true,
    };
    assert_eq!(checks.violations(&summary).len(), 1);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_batch_answers_every_decision_of_every_call() {
    let server = Server::start(Config::default()).await;
    within(seed(&seed_config(&server.target)))
        .await
        .expect("seed");

    let config = RunConfig {
        rpc: Rpc::RouteBatch,
        batch_size: 25,
        stop: Stop::Requests(200),
        ..run_config(&server.target)
    };
    let summary = within(run(&config)).await.expect("run");
    assert_eq!(summary.total, 200, "calls");
    assert_eq!(summary.batch_size, 25);
    assert_eq!(summary.decisions, 200 * 25);
    assert_eq!(summary.decisions, summary.total * summary.batch_size as u64);
    assert_eq!(summary.errors, 0, "{:?}", summary.error_samples);
    assert_eq!(
        summary.decision_errors, 0,
        "{:?}",
        summary.decision_error_samples
    );
    assert_eq!(summary.decisions_ok, summary.decisions);
    assert_eq!(summary.latency_us.count, 200, "one latency per call");
    let ratio = summary.decisions_per_s / summary.throughput_rps;
    assert!((ratio - 25.0).abs() < 1e-9, "{ratio}");
    let json: serde_json::Value = serde_json::from_str(&summary.to_json()).expect("JSON");
    assert_eq!(json["rpc"], "route-batch");
    assert_eq!(json["batch_size"], 25);
    assert!(json["decisions_per_s"].as_f64().is_some_and(|d| d > 0.0));
    let checks = Checks {
        max_p99: None,
        fail_on_error: true,
    };
    assert!(checks.violations(&summary).is_empty());

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tenants_in_a_batch_count_as_failed_decisions() {
    let server = Server::start(Config::default()).await;
    within(seed(&seed_config(&server.target)))
        .await
        .expect("seed");

    // Tenants 50 to 99 were never created: about half of each batch names one.
    let config = RunConfig {
        rpc: Rpc::RouteBatch,
        batch_size: 20,
        keyspace: KeyspaceSpec {
            tenants: 100,
            ..keyspace()
        },
        distribution: Distribution::Uniform,
        stop: Stop::Requests(50),
        ..run_config(&server.target)
    };
    let summary = within(run(&config)).await.expect("run");
    assert_eq!(summary.total, 50);
    assert_eq!(summary.errors, 0, "every call is answered");
    assert_eq!(summary.decisions, 1_000);
    assert_eq!(summary.decisions_ok + summary.decision_errors, 1_000);
    assert!(
        summary.decisions_ok > 0 && summary.decision_errors > 0,
        "{summary:?}"
    );
    assert_eq!(
        summary.decision_error_codes.get("NOT_FOUND"),
        Some(&summary.decision_errors)
    );
    assert!(
        summary.decision_error_samples["NOT_FOUND"].contains("tenant-"),
        "{:?}",
        summary.decision_error_samples
    );
    let checks = Checks {
        max_p99: None,
        fail_on_error: true,
    };
    assert_eq!(checks.violations(&summary).len(), 1);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_mode_decides_locally_and_counts_unknown_tenants() {
    let server = Server::start(Config::default()).await;
    within(seed(&seed_config(&server.target)))
        .await
        .expect("seed");

    let config = RunConfig {
        rpc: Rpc::Sdk,
        stop: Stop::Requests(3_000),
        ..run_config(&server.target)
    };
    let summary = within(run(&config)).await.expect("run");
    assert_eq!((summary.total, summary.decisions), (3_000, 3_000));
    assert_eq!(summary.errors, 0, "{:?}", summary.error_samples);
    assert_eq!(summary.decisions_ok, 3_000);
    assert_eq!(summary.latency_us.count, 3_000);
    assert_eq!(summary.decisions_per_s, summary.throughput_rps);
    let json: serde_json::Value = serde_json::from_str(&summary.to_json()).expect("JSON");
    assert_eq!(json["rpc"], "sdk");

    // Tenants 50 to 99 are not in the local copy: each is a NOT_FOUND decision.
    let config = RunConfig {
        rpc: Rpc::Sdk,
        keyspace: KeyspaceSpec {
            tenants: 100,
            ..keyspace()
        },
        distribution: Distribution::Uniform,
        stop: Stop::Requests(1_000),
        ..run_config(&server.target)
    };
    let summary = within(run(&config)).await.expect("run");
    assert_eq!(summary.ok + summary.errors, 1_000);
    assert!(summary.ok > 0 && summary.errors > 0, "{summary:?}");
    assert_eq!(summary.error_codes.get("NOT_FOUND"), Some(&summary.errors));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_run_leaves_out_its_warm_up() {
    let server = Server::start(Config::default()).await;
    within(seed(&seed_config(&server.target)))
        .await
        .expect("seed");

    let config = RunConfig {
        stop: Stop::Duration(Duration::from_millis(300)),
        warmup: Duration::from_millis(100),
        ..run_config(&server.target)
    };
    let summary = within(run(&config)).await.expect("run");
    assert!(summary.warmup_requests > 0);
    assert!(summary.total > 0);
    assert_eq!(summary.ok + summary.errors, summary.total);
    assert_eq!(summary.errors, 0, "{:?}", summary.error_samples);
    assert!(summary.elapsed_secs >= 0.3, "{}", summary.elapsed_secs);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_is_an_error() {
    // Bind a port, then free it, so that nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let config = RunConfig {
        stop: Stop::Requests(1),
        ..run_config(&format!("http://{addr}"))
    };
    let err = within(run(&config)).await.expect_err("nothing listens");
    assert!(
        matches!(err, greyrouter_load::Error::Connect { .. }),
        "{err}"
    );
    let message = greyrouter_load::error::chain(&err);
    assert!(
        message.starts_with(&format!("cannot connect to http://{addr}: ")),
        "the cause follows: {message}"
    );
}
