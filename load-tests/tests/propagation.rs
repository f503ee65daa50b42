//! Measures propagation between two greyrouter servers started in this process on one private
//! redis-server (from `greyrouter-test-support`; a missing `redis-server` fails the test).

mod support;

use std::time::Duration;

use greyrouter::config::Config;
use greyrouter_load::propagation::{PropagationConfig, propagation};
use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::router_client::RouterClient;
use greyrouter_test_support::RedisServer;
use support::Server;

/// Deadline for anything a test waits on.
const DEADLINE: Duration = Duration::from_secs(60);

/// A router on the Redis store, running in this process.
async fn replica(redis: &RedisServer) -> Server {
    Server::start(Config {
        store: redis.url(),
        ..Config::default()
    })
    .await
}

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .expect("deadline passed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_on_one_replica_reaches_a_watcher_of_the_other() {
    let redis = RedisServer::start();
    let writer = replica(&redis).await;
    let watcher = replica(&redis).await;
    let config = PropagationConfig {
        writer: writer.target.clone(),
        watcher: watcher.target.clone(),
        changes: 50,
        timeout: Duration::from_secs(10),
    };

    let report = within(propagation(&config)).await.expect("propagation");
    assert_eq!(report.changes, 50);
    assert_eq!(report.arrived, 50, "{report:?}");
    assert_eq!(report.missing, 0);
    assert_eq!(
        report.last_revision - report.first_revision,
        49,
        "one revision per change, nothing else committed"
    );
    assert_eq!(report.propagation_us.count, 50);
    assert_eq!(report.admin_us.count, 50);
    assert!(report.propagation_us.min > 0);
    assert!(report.propagation_us.p50 <= report.propagation_us.p99);
    assert!(report.propagation_us.p99 <= report.propagation_us.max);
    assert!(report.arrived_before_reply <= report.arrived);

    // 50 flips from the default v1 end on v1, on both replicas.
    for target in [&writer.target, &watcher.target] {
        let mut router = RouterClient::connect(target.clone())
            .await
            .expect("connect");
        let routed = router
            .route(pb::RouteRequest {
                tenant_id: report.tenant.clone(),
                service: report.service.clone(),
                ..Default::default()
            })
            .await
            .expect("route")
            .into_inner();
        assert_eq!(
            (routed.version.as_str(), routed.source.as_str()),
            ("v1", "pin")
        );
        assert!(routed.revision >= report.last_revision);
    }

    // A second measurement on the same store starts from where the first left the pin.
    let again = within(propagation(&PropagationConfig {
        changes: 3,
        ..config
    }))
    .await
    .expect("second propagation");
    assert_eq!((again.arrived, again.missing), (3, 0));
    assert!(again.first_revision > report.last_revision);

    writer.stop().await;
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_can_watch_its_own_changes() {
    let redis = RedisServer::start();
    let replica = replica(&redis).await;
    let config = PropagationConfig {
        writer: replica.target.clone(),
        watcher: replica.target.clone(),
        changes: 10,
        timeout: Duration::from_secs(10),
    };
    let report = within(propagation(&config)).await.expect("propagation");
    assert_eq!((report.arrived, report.missing), (10, 0));
    replica.stop().await;
}
