//! A fleet of routers on one real Redis: changes made through one replica reach the others,
//! compare-and-set has one winner across replicas, and an outage of Redis never fails a route.

mod support;

use greyrouter::config::Config;
use greyrouter_proto::v1 as pb;
use greyrouter_test_support::RedisServer;
use support::{TestServer, within};
use tonic::Code;

/// A router on the Redis at `url`, with short timeouts so outages show quickly.
fn on_redis(url: String) -> Config {
    let mut config = Config {
        store: url,
        health_interval_ms: 50,
        ..Config::default()
    };
    config.redis.command_timeout_ms = 300;
    config.redis.reconnect_min_delay_ms = 20;
    config.redis.reconnect_max_delay_ms = 200;
    config
}

fn redis_config(server: &RedisServer) -> Config {
    on_redis(server.url())
}

async fn fleet(redis: &RedisServer, size: usize) -> Vec<TestServer> {
    let mut replicas = Vec::new();
    for _ in 0..size {
        replicas.push(TestServer::with_config(redis_config(redis)).await);
    }
    replicas
}

async fn watch_t0(server: &mut TestServer) -> tonic::Streaming<pb::AssignmentUpdate> {
    let mut stream = within(
        server
            .router
            .watch_assignments(pb::WatchAssignmentsRequest {
                tenant_ids: vec!["t0".into()],
                services: vec!["api".into()],
                from_revision: 0,
                history: String::new(),
                instances_by_version: false,
            }),
    )
    .await
    .expect("watch")
    .into_inner();
    let snapshot = within(stream.message())
        .await
        .expect("ok")
        .expect("snapshot");
    assert!(snapshot.snapshot);
    // This replica may not have received t0 yet: wait until it has.
    let mut has_t0 = !snapshot.upserts.is_empty();
    while !has_t0 {
        let update = within(stream.message()).await.expect("ok").expect("update");
        has_t0 = !update.upserts.is_empty();
    }
    stream
}

/// Waits for the next update of t0/api on a watch stream and returns its version.
async fn next_version(stream: &mut tonic::Streaming<pb::AssignmentUpdate>) -> (u64, String) {
    let update = within(stream.message()).await.expect("ok").expect("update");
    let version = update
        .upserts
        .first()
        .map(|a| a.version.clone())
        .unwrap_or_default();
    (update.revision, version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_reaches_the_others() {
    let redis = RedisServer::start();
    let mut replicas = fleet(&redis, 3).await;
    replicas[0].populate(2).await;
    // Replica C started before anything existed; B and C learn everything from the stream.
    let mut watch_b = watch_t0(&mut replicas[1]).await;
    let mut watch_c = watch_t0(&mut replicas[2]).await;

    let revision = replicas[0].pin("t0", "api", "v2").await;
    for watch in [&mut watch_b, &mut watch_c] {
        assert_eq!(next_version(watch).await, (revision, "v2".to_owned()));
    }
    for replica in &mut replicas[1..] {
        let routed = replica.route("t0", "api").await.expect("route");
        assert_eq!(
            (routed.version.as_str(), routed.source.as_str()),
            ("v2", "pin")
        );
        assert_eq!(routed.revision, revision);
        assert_eq!(
            replica.route("t1", "api").await.expect("route").version,
            "v1"
        );
    }
    // A replica started now loads the same state from Redis.
    let mut late = TestServer::with_config(redis_config(&redis)).await;
    assert_eq!(
        late.route("t0", "api").await.expect("route").revision,
        revision
    );
    for replica in replicas {
        replica.stop().await;
    }
    late.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_compare_and_set_on_two_replicas_has_one_winner() {
    let redis = RedisServer::start();
    let mut replicas = fleet(&redis, 2).await;
    replicas[0].populate(20).await;
    // Both replicas hold the tenants before they race: the race is over the pin, not over who
    // has heard of the tenant.
    let populated = replicas[0]
        .route("t19", "api")
        .await
        .expect("route")
        .revision;
    let b = &mut replicas[1];
    support::eventually("replica B to catch up", async || {
        let routed = b.route("t19", "api").await.ok()?;
        (routed.revision >= populated).then_some(())
    })
    .await;
    let set = |tenant: String| pb::SetTenantVersionRequest {
        tenant_id: tenant,
        service: "api".into(),
        version: "v2".into(),
        expected_version: Some("v1".into()),
        force: false,
        migrate: false,
    };
    for i in 0..20 {
        let tenant = format!("t{i}");
        let (mut a, mut b) = (replicas[0].admin.clone(), replicas[1].admin.clone());
        let (first, second) = tokio::join!(
            a.set_tenant_version(set(tenant.clone())),
            b.set_tenant_version(set(tenant.clone()))
        );
        let outcomes = [&first, &second];
        assert_eq!(
            outcomes.iter().filter(|r| r.is_ok()).count(),
            1,
            "{tenant}: {first:?} {second:?}"
        );
        let loser = outcomes
            .iter()
            .find_map(|r| r.as_ref().err())
            .expect("one loses");
        assert_eq!(loser.code(), Code::Aborted, "{loser:?}");
        assert!(loser.message().contains("'v2'"), "{}", loser.message());
    }
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_survives_a_redis_outage_and_replicas_converge_after() {
    let mut redis = RedisServer::start();
    let mut replicas = fleet(&redis, 2).await;
    replicas[0].populate(3).await;
    let mut watch_b = watch_t0(&mut replicas[1]).await;
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(replicas[0].channel.clone());
    let admin_health = || tonic_health::pb::HealthCheckRequest {
        service: "greyrouter.v1.Admin".into(),
    };

    redis.shutdown_saving();

    // Every route still answers, from each replica's snapshot.
    for replica in &mut replicas {
        for i in 0..50 {
            let routed = replica.route(&format!("t{}", i % 3), "api").await;
            assert!(routed.is_ok(), "route failed during the outage: {routed:?}");
        }
    }
    // Writes fail fast and say why.
    let refused = replicas[0]
        .admin
        .set_tenant_version(pb::SetTenantVersionRequest {
            tenant_id: "t0".into(),
            service: "api".into(),
            version: "v2".into(),
            expected_version: None,
            force: false,
            migrate: false,
        })
        .await
        .expect_err("redis is down");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(refused.message().contains("redis"), "{}", refused.message());
    // Health says writes are down, routing is up.
    let mut statuses = within(health.watch(admin_health()))
        .await
        .expect("watch health")
        .into_inner();
    loop {
        let status = within(statuses.message())
            .await
            .expect("ok")
            .expect("status")
            .status;
        if status == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32 {
            break;
        }
    }
    let router = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "greyrouter.v1.Router".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(
        router.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Redis comes back with its data: writes work again and replica B catches up by itself.
    redis.restart();
    loop {
        let status = within(statuses.message())
            .await
            .expect("ok")
            .expect("status")
            .status;
        if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            break;
        }
    }
    drop(statuses);
    let revision = replicas[0].pin("t0", "api", "v2").await;
    assert_eq!(
        next_version(&mut watch_b).await,
        (revision, "v2".to_owned())
    );
    assert_eq!(
        replicas[1].route("t0", "api").await.expect("route").version,
        "v2"
    );
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_redis_does_not_empty_the_routing_table() {
    let redis = RedisServer::start();
    let mut replicas = fleet(&redis, 1).await;
    replicas[0].populate(2).await;
    redis.command(&["FLUSHALL"]);
    // Once the replica has noticed (its Admin health says so) ...
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    support::eventually("the replica to notice the emptied store", async || {
        (admin_health(&replicas[0]).await == not_serving).then_some(())
    })
    .await;
    // ... it still routes from its last state rather than from the empty store.
    for _ in 0..20 {
        let routed = replicas[0].route("t1", "api").await;
        assert!(routed.is_ok(), "{routed:?}");
    }
    let refused = replicas[0]
        .admin
        .upsert_tenant(pb::UpsertTenantRequest {
            tenant: Some(support::tenant("t9", "eu")),
        })
        .await
        .expect_err("writes on top of an emptied store are refused");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_on_sentinel_keeps_working_through_a_failover() {
    let sentinel = greyrouter_test_support::RedisSentinel::start();
    let mut router = TestServer::with_config(on_redis(sentinel.url())).await;
    router.populate(2).await;

    sentinel.failover();
    // Routing never stopped; the first changes may still meet the old master and fail as
    // UNAVAILABLE until the client has followed the sentinel to the new one.
    for _ in 0..20 {
        assert!(router.route("t0", "api").await.is_ok());
    }
    let request = || pb::SetTenantVersionRequest {
        tenant_id: "t0".into(),
        service: "api".into(),
        version: "v2".into(),
        expected_version: None,
        force: false,
        migrate: false,
    };
    let revision = within(async {
        loop {
            match router.admin.set_tenant_version(request()).await {
                Ok(response) => break response.into_inner().revision,
                Err(status) if status.code() == Code::Unavailable => tokio::task::yield_now().await,
                Err(status) => panic!("unexpected {status:?}"),
            }
        }
    })
    .await;
    let routed = router.route("t0", "api").await.expect("route");
    assert_eq!((routed.version.as_str(), routed.revision), ("v2", revision));
    assert_eq!(sentinel.master_port(), Some(sentinel.replica.port()));
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_on_a_redis_cluster_agree() {
    let cluster = greyrouter_test_support::RedisCluster::start();
    let mut a = TestServer::with_config(on_redis(cluster.url())).await;
    let mut b = TestServer::with_config(on_redis(cluster.url())).await;
    a.populate(1).await;
    let mut watch_b = watch_t0(&mut b).await;
    let revision = a.pin("t0", "api", "v2").await;
    assert_eq!(
        next_version(&mut watch_b).await,
        (revision, "v2".to_owned())
    );
    assert_eq!(b.route("t0", "api").await.expect("route").version, "v2");
    a.stop().await;
    b.stop().await;
}

/// Opens a watch of t0/api and returns it with its first message (the snapshot, or the replay's
/// first update).
async fn watch_from(
    server: &mut TestServer,
    from_revision: u64,
    history: &str,
) -> (tonic::Streaming<pb::AssignmentUpdate>, pb::AssignmentUpdate) {
    let mut stream = within(
        server
            .router
            .watch_assignments(pb::WatchAssignmentsRequest {
                tenant_ids: vec!["t0".into()],
                services: vec!["api".into()],
                from_revision,
                history: history.to_owned(),
                instances_by_version: false,
            }),
    )
    .await
    .expect("watch")
    .into_inner();
    let first = within(stream.message())
        .await
        .expect("ok")
        .expect("first message");
    (stream, first)
}

/// Reads a watch until its next snapshot and returns it.
async fn next_snapshot(
    stream: &mut tonic::Streaming<pb::AssignmentUpdate>,
) -> pb::AssignmentUpdate {
    loop {
        let update = within(stream.message()).await.expect("ok").expect("update");
        if update.snapshot {
            return update;
        }
    }
}

/// Returns the ids of the tenants a router holds.
async fn tenant_ids(server: &mut TestServer) -> Vec<String> {
    let tenants = within(server.admin.list_tenants(pb::ListTenantsRequest {
        page_size: 1000,
        page_token: String::new(),
    }))
    .await
    .expect("list tenants")
    .into_inner()
    .tenants;
    tenants.into_iter().map(|t| t.id).collect()
}

fn version_of(update: &pb::AssignmentUpdate) -> &str {
    update.upserts.first().map_or("", |a| a.version.as_str())
}

/// Retries a change while it answers UNAVAILABLE (a router resynchronising, a failover).
async fn pin_eventually(server: &mut TestServer, version: &str) -> u64 {
    within(async {
        loop {
            let request = pb::SetTenantVersionRequest {
                tenant_id: "t0".into(),
                service: "api".into(),
                version: version.into(),
                expected_version: None,
                force: false,
                migrate: false,
            };
            match server.admin.set_tenant_version(request).await {
                Ok(response) => break response.into_inner().revision,
                Err(status) if status.code() == Code::Unavailable => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(status) => panic!("unexpected {status:?}"),
            }
        }
    })
    .await
}

fn admin_health(server: &TestServer) -> impl std::future::Future<Output = i32> + use<> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    async move {
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "greyrouter.v1.Admin".into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status
    }
}

/// Regression: the guard against a Redis that comes back empty covered only
/// revision 0; one write to the emptied Redis (a fresh router applying its seed) gave it a
/// revision, and the whole fleet adopted that near-empty state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_redis_written_to_again_is_adopted_only_when_an_operator_says_so() {
    let redis = RedisServer::start();
    let mut replicas = fleet(&redis, 2).await;
    replicas[0].populate(2).await;
    let mut watch_b = watch_t0(&mut replicas[1]).await;
    let (_, first) = watch_from(&mut replicas[0], 0, "").await;
    let history = first.history;
    assert!(!history.is_empty());

    redis.command(&["FLUSHALL"]);
    // A fresh router on the emptied Redis starts another history and commits to it.
    let mut fresh = TestServer::with_config(redis_config(&redis)).await;
    assert_eq!(fresh.tenant("newcomer", "eu").await, 1);
    let (_, first) = watch_from(&mut fresh, 0, "").await;
    let other = first.history;
    assert_ne!(other, history);

    // The old replicas keep routing from their state and refuse changes, naming both
    // histories and the operator's way out.
    for replica in &mut replicas {
        let refusal = within(async {
            loop {
                let refused = replica
                    .admin
                    .upsert_tenant(pb::UpsertTenantRequest {
                        tenant: Some(support::tenant("t9", "eu")),
                    })
                    .await
                    .expect_err("a change on top of another history must be refused");
                assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
                if refused.message().contains(&other) {
                    break refused;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        let message = refusal.message();
        assert!(
            message.contains(&history) && message.contains("greyrouter store adopt"),
            "{message}"
        );
        let routed = replica
            .route("t1", "api")
            .await
            .expect("route from the last state");
        assert_eq!(routed.version, "v1");
        assert_eq!(tenant_ids(replica).await, ["t0", "t1"]);
        let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
        within(async {
            while admin_health(replica).await != not_serving {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    // One operator action, through one router, and every router follows the store again.
    let adopted = within(
        replicas[0]
            .admin
            .adopt_store_history(pb::AdoptStoreHistoryRequest::default()),
    )
    .await
    .expect("adopt")
    .into_inner();
    assert_eq!(
        (adopted.retired_history.as_str(), adopted.history.as_str()),
        (history.as_str(), other.as_str())
    );
    assert_eq!(adopted.revision, 1);
    let snapshot = next_snapshot(&mut watch_b).await;
    assert_eq!(
        (snapshot.revision, snapshot.history.as_str()),
        (1, other.as_str())
    );
    for replica in &mut replicas {
        within(async {
            while tenant_ids(replica).await != ["newcomer"] {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        let gone = replica
            .route("t1", "api")
            .await
            .expect_err("the store's state");
        assert_eq!(gone.code(), Code::NotFound);
    }
    // Nothing to adopt any more; changes are accepted again.
    let again = replicas[1]
        .admin
        .adopt_store_history(pb::AdoptStoreHistoryRequest::default())
        .await
        .expect_err("nothing to adopt");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert_eq!(replicas[1].tenant("t9", "eu").await, 2);
    for replica in replicas {
        replica.stop().await;
    }
    fresh.stop().await;
}

/// Regression: after the store went back in time (a failover that lost
/// acknowledged changes, whose revisions are then reused), open watch streams got neither a
/// snapshot nor the replacing changes, and a client resuming with its old (history, revision)
/// could be replayed different changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_went_back_in_time_reaches_watchers_as_a_snapshot() {
    let mut redis = RedisServer::start();
    let mut replicas = fleet(&redis, 2).await;
    replicas[0].populate(2).await;
    let mut watch_b = watch_t0(&mut replicas[1]).await;
    let (_, first) = watch_from(&mut replicas[1], 0, "").await;
    let history = first.history;

    // The state a failover will go back to; then a change the store acknowledges and loses.
    redis.command(&["SAVE"]);
    let lost = replicas[0].pin("t0", "api", "v2").await;
    assert_eq!(next_version(&mut watch_b).await, (lost, "v2".to_owned()));
    redis.restart();

    // The open watch gets the store's state as a snapshot, under a new epoch of the history.
    let snapshot = next_snapshot(&mut watch_b).await;
    assert_eq!((snapshot.revision, version_of(&snapshot)), (lost - 1, "v1"));
    assert_eq!(snapshot.history, format!("{history}.1"));
    let stored = redis.command(&["GET", "{greyrouter}:history"]);
    assert!(stored.contains(&snapshot.history), "{stored}");

    // A client resuming with what it had before gets a snapshot, not a replay.
    let (_, resumed) = watch_from(&mut replicas[1], lost, &history).await;
    assert!(resumed.snapshot, "{resumed:?}");
    assert_eq!((resumed.revision, version_of(&resumed)), (lost - 1, "v1"));

    // The lost revision is reused by another change. While a watcher stands at a revision the
    // lost line also reached, it may hold either line's state, so it gets the new state whole
    // (a snapshot) rather than a replay.
    let reused = pin_eventually(&mut replicas[0], "v2").await;
    assert_eq!(reused, lost);
    let update = within(watch_b.message())
        .await
        .expect("ok")
        .expect("update");
    assert_eq!((update.revision, version_of(&update)), (lost, "v2"));
    assert_eq!(update.history, snapshot.history);
    let next = pin_eventually(&mut replicas[0], "v1").await;
    let update = within(watch_b.message())
        .await
        .expect("ok")
        .expect("update");
    assert_eq!((update.revision, version_of(&update)), (next, "v1"));
    // Past them, changes are replayed as usual.
    let next = pin_eventually(&mut replicas[0], "v2").await;
    let update = within(watch_b.message())
        .await
        .expect("ok")
        .expect("update");
    assert!(!update.snapshot, "{update:?}");
    assert_eq!((update.revision, version_of(&update)), (next, "v2"));
    for replica in replicas {
        replica.stop().await;
    }
}

/// The same through a real Sentinel failover: the replica is cut off, the master acknowledges
/// a change and dies, and the sentinel promotes the replica without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_that_lost_a_change_reaches_watchers_as_a_snapshot() {
    let sentinel = greyrouter_test_support::RedisSentinel::start();
    let mut router = TestServer::with_config(on_redis(sentinel.url())).await;
    router.populate(2).await;
    let (mut watch, first) = watch_from(&mut router, 0, "").await;
    assert_eq!((first.revision, version_of(&first)), (5, "v1"));
    let history = first.history;
    greyrouter_test_support::eventually("the replica has every change", support::DEADLINE, || {
        let revision = sentinel.replica.command(&["GET", "{greyrouter}:revision"]);
        revision.ends_with("\r\n5\r\n").then_some(())
    });

    sentinel.cut_replication();
    let lost = router.pin("t0", "api", "v2").await;
    assert_eq!(next_version(&mut watch).await, (lost, "v2".to_owned()));
    let sentinel = tokio::task::spawn_blocking(move || {
        let mut sentinel = sentinel;
        sentinel.fail_over_losing_changes();
        sentinel
    })
    .await
    .expect("failover");

    let snapshot = next_snapshot(&mut watch).await;
    assert_eq!((snapshot.revision, version_of(&snapshot)), (lost - 1, "v1"));
    assert_eq!(snapshot.history, format!("{history}.1"));
    let (_, resumed) = watch_from(&mut router, lost, &history).await;
    assert!(resumed.snapshot, "{resumed:?}");
    assert_eq!((resumed.revision, version_of(&resumed)), (lost - 1, "v1"));

    let reused = pin_eventually(&mut router, "v2").await;
    assert_eq!(reused, lost);
    let update = within(watch.message()).await.expect("ok").expect("update");
    assert_eq!((update.revision, version_of(&update)), (lost, "v2"));
    assert_eq!(sentinel.master_port(), Some(sentinel.replica.port()));
    router.stop().await;
}
