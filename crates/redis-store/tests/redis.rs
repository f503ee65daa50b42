//! What only the Redis store has: its key layout, a trimmed or reset change stream, outages,
//! Redis Cluster and Sentinel failover. Real `redis-server` processes, each test its own.

use std::time::{Duration, Instant};

use greyrouter_store::suite::{instance, service, tenant, try_commit};
use greyrouter_store::{ChangeMeta, Store, StoreError};
use greyrouter_test_support::{RedisCluster, RedisSentinel, RedisServer};
use redis_store::{RedisConfig, RedisStore};
use routing_core::Mutation;

const DEADLINE: Duration = Duration::from_secs(30);

fn fast(url: String) -> RedisConfig {
    let mut config = RedisConfig::new(url);
    config.command_timeout = Duration::from_millis(500);
    config.reconnect_min_delay = Duration::from_millis(20);
    config.reconnect_max_delay = Duration::from_millis(200);
    config
}

fn pin(tenant_id: &str, version: &str) -> Mutation {
    Mutation::SetTenantVersion {
        tenant_id: tenant_id.into(),
        service: "api".into(),
        version: version.into(),
        expected_version: None,
        force: false,
    }
}

async fn populate(store: &dyn Store) {
    for mutation in [
        tenant("t0"),
        service(),
        instance("a1", "v1"),
        instance("b1", "v2"),
    ] {
        try_commit(store, mutation).await.expect("commit");
    }
}

/// Retries a commit until it succeeds (Redis coming back, a failover finishing).
async fn commit_eventually(store: &dyn Store, mutation: Mutation) -> u64 {
    let start = Instant::now();
    loop {
        match try_commit(store, mutation.clone()).await {
            Ok(commit) => return commit.revision,
            Err(StoreError::Unavailable(reason)) => {
                assert!(start.elapsed() < DEADLINE, "still unavailable: {reason}");
                // Writes fail at once while Redis is down: poll, do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
}

#[tokio::test]
async fn keys_are_readable_and_never_expire() {
    let server = RedisServer::start();
    let mut config = RedisConfig::new(server.url());
    config.prefix = "acme-prod".into();
    let store = RedisStore::connect(config).await.expect("connect");
    populate(&store).await;
    try_commit(&store, pin("t0", "v2")).await.expect("pin");

    let pinned = server.command(&["HGET", "{acme-prod}:tenant:t0:services", "api"]);
    assert!(pinned.contains("v2"), "{pinned}");
    let active = server.command(&["SISMEMBER", "{acme-prod}:active_tenants", "t0"]);
    assert_eq!(active, ":1\r\n");
    let instance = server.command(&["HGET", "{acme-prod}:service:api:version:v1:instances", "a1"]);
    assert!(instance.contains("a1.internal:8080"), "{instance}");
    let revision = server.command(&["GET", "{acme-prod}:revision"]);
    assert!(revision.ends_with("5\r\n"), "{revision}");
    for key in [
        "{acme-prod}:tenant:t0:services",
        "{acme-prod}:tenant:t0:metadata",
        "{acme-prod}:service:api",
        "{acme-prod}:revision",
        "{acme-prod}:changes",
    ] {
        assert_eq!(
            server.command(&["TTL", key]),
            ":-1\r\n",
            "{key} must not expire"
        );
    }
}

#[tokio::test]
async fn prefixes_keep_stores_apart() {
    let server = RedisServer::start();
    let mut first = RedisConfig::new(server.url());
    first.prefix = "one".into();
    let mut second = RedisConfig::new(server.url());
    second.prefix = "two".into();
    let one = RedisStore::connect(first).await.expect("connect");
    let two = RedisStore::connect(second).await.expect("connect");
    populate(&one).await;
    assert_eq!(one.load().await.expect("load").revision(), 4);
    assert_eq!(two.load().await.expect("load").revision(), 0);
}

#[tokio::test]
async fn handles_on_one_prefix_share_a_history_and_an_emptied_redis_starts_another() {
    let server = RedisServer::start();
    let mut first = RedisConfig::new(server.url());
    first.prefix = "one".into();
    let mut other = RedisConfig::new(server.url());
    other.prefix = "two".into();
    let one = RedisStore::connect(first.clone()).await.expect("connect");
    let again = RedisStore::connect(first).await.expect("connect");
    let two = RedisStore::connect(other).await.expect("connect");
    let history = one.history().await.expect("history");
    assert_eq!(again.history().await.expect("history"), history);
    assert_ne!(two.history().await.expect("history"), history);
    server.command(&["FLUSHALL"]);
    assert_ne!(one.history().await.expect("history"), history);
}

#[tokio::test]
async fn a_trimmed_stream_is_reported_as_compacted() {
    let server = RedisServer::start();
    let mut config = RedisConfig::new(server.url());
    config.stream_max_len = 100;
    let store = RedisStore::connect(config).await.expect("connect");
    for i in 0..400 {
        try_commit(&store, tenant(&format!("t{i}")))
            .await
            .expect("commit");
    }
    let err = store
        .changes_after(0, 10, Duration::ZERO)
        .await
        .expect_err("the first changes were trimmed");
    assert!(
        matches!(err, StoreError::Compacted { requested: 0, .. }),
        "{err:?}"
    );
    let recent = store
        .changes_after(395, 10, Duration::ZERO)
        .await
        .expect("recent changes are kept");
    assert_eq!(
        recent.iter().map(|c| c.revision).collect::<Vec<_>>(),
        [396, 397, 398, 399, 400]
    );
}

#[tokio::test]
async fn a_store_reset_to_an_older_state_is_detected() {
    let server = RedisServer::start();
    let store = RedisStore::connect(RedisConfig::new(server.url()))
        .await
        .expect("connect");
    populate(&store).await;
    server.command(&["FLUSHALL"]);
    let err = store
        .changes_after(4, 10, Duration::ZERO)
        .await
        .expect_err("revision 4 no longer exists");
    assert!(
        matches!(
            err,
            StoreError::Compacted {
                requested: 4,
                oldest: 0
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_outage_fails_fast_and_recovery_needs_no_restart() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(fast(server.url()))
        .await
        .expect("connect");
    populate(&store).await;
    let base = store.load().await.expect("load");

    server.kill();
    let started = Instant::now();
    let err = store
        .commit(&base, pin("t0", "v2"), ChangeMeta::default())
        .await
        .expect_err("redis is down");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string().starts_with("store unavailable: redis"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failing took {:?}",
        started.elapsed()
    );
    assert!(store.ping().await.is_err());

    server.restart();
    // The restarted server kept no data; the same client works again without being rebuilt.
    let revision = commit_eventually(&store, tenant("after-restart")).await;
    assert_eq!(revision, 1);
    store.ping().await.expect("ping after recovery");
}

/// Regression: while Redis was down, every write waited the whole command
/// timeout before failing, and writes issued while it restarted blocked, then succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_at_once_while_redis_is_known_to_be_down() {
    let server = RedisServer::start();
    // The default command timeout (2 s): a write that waits for it is easy to tell apart.
    let config = RedisConfig::new(server.url());
    let timeout = config.command_timeout;
    let store = RedisStore::connect(config).await.expect("connect");
    populate(&store).await;
    let base = store.load().await.expect("load");

    // A Redis that stops answering (the process is stopped: its port stays its own, so no
    // other test's server can take it over while the test runs).
    server.pause();
    // Once a first write has failed, the store knows Redis is down.
    let first = store
        .commit(&base, pin("t0", "v2"), ChangeMeta::default())
        .await
        .expect_err("redis is down");
    assert!(matches!(first, StoreError::Unavailable(_)), "{first:?}");
    for _ in 0..3 {
        let started = Instant::now();
        let err = store
            .commit(&base, pin("t0", "v2"), ChangeMeta::default())
            .await
            .expect_err("redis is still down");
        let took = started.elapsed();
        assert!(
            took < timeout,
            "a write took {took:?}, not failing before the command timeout ({timeout:?})"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("store unavailable: redis is unreachable since ")
                && text.ends_with("; reconnecting"),
            "{text}"
        );
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    }
    assert!(store.ping().await.is_err(), "health follows the link");

    server.resume();
    // The same client works again once Redis answers. The first write, sent before the outage
    // was known and answered UNAVAILABLE, may have been applied when Redis resumed (as the
    // README warns); the writes refused at once were never sent.
    let revision = commit_eventually(&store, tenant("after-restart")).await;
    assert!((5..=6).contains(&revision), "revision {revision}");
    store.ping().await.expect("ping after recovery");
}

/// With `min_replicas_acked`, a change is answered only once replicas acknowledged it; when
/// they do not in time, the caller learns that the change was committed on the master but may
/// be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_unacknowledged_by_replicas_answers_unavailable() {
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    // A replica that is up acknowledges within a generous timeout even on a loaded machine; the
    // short one is for the paused replica, so the test does not wait long for the refusal.
    let (patient, store) = acknowledged_stores(master.url()).await;
    // With the replica up, every change is acknowledged: on the replica as soon as answered.
    populate(&patient).await;
    assert!(
        replica
            .command(&["GET", "{greyrouter}:revision"])
            .ends_with("\r\n4\r\n"),
        "the replica holds revision 4"
    );

    replica.pause();
    let err = try_commit(&store, pin("t0", "v2"))
        .await
        .expect_err("no replica acknowledges");
    replica.resume();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        text.contains(
            "committed on the master but acknowledged by 0 of 1 replica(s) within 300 ms"
        ),
        "{text}"
    );
    assert!(
        text.contains("may be kept or lost: read back before retrying (compare-and-set)"),
        "{text}"
    );
    // The master kept it: reading back shows the change.
    let state = store.load().await.expect("load");
    assert_eq!(state.revision(), 5);
    assert_eq!(state.resolve("t0", "api").expect("resolve").version, "v2");
    // Acknowledged again once the replica is back.
    let revision = commit_eventually(&patient, pin("t0", "v1")).await;
    assert_eq!(revision, 6);
}

/// Two stores waiting for one replica's acknowledgement: within 10 s and within 300 ms.
async fn acknowledged_stores(url: String) -> (RedisStore, RedisStore) {
    let store = |timeout: Duration| {
        let mut config = RedisConfig::new(url.clone());
        config.min_replicas_acked = 1;
        config.replica_ack_timeout = timeout;
        RedisStore::connect(config)
    };
    (
        store(Duration::from_secs(10)).await.expect("connect"),
        store(Duration::from_millis(300)).await.expect("connect"),
    )
}

/// A base at the store's revision but after another last change (the store lost changes and
/// another router reused their revisions) is refused like a stale one; the history moves to a
/// new epoch only from the id it still has; an adoption is found by the retired origin.
#[tokio::test]
async fn the_lineage_of_changes_is_checked_and_histories_move_by_compare_and_set() {
    let server = RedisServer::start();
    let store = RedisStore::connect(RedisConfig::new(server.url()))
        .await
        .expect("connect");
    populate(&store).await;
    let snapshot = store.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.state.revision(), 4);
    let err = store
        .commit_after(
            &snapshot.state,
            "another-line",
            pin("t0", "v2"),
            ChangeMeta::default(),
        )
        .await
        .expect_err("another line of changes");
    assert!(
        matches!(err, StoreError::Conflict { current: 4 }),
        "{err:?}"
    );
    let commit = store
        .commit_after(
            &snapshot.state,
            &snapshot.head,
            pin("t0", "v2"),
            ChangeMeta::default(),
        )
        .await
        .expect("the same line");
    assert_eq!(commit.revision, 5);
    let change = store
        .changes_after(4, 1, Duration::ZERO)
        .await
        .expect("changes")
        .remove(0);
    assert_eq!(change.parent, snapshot.head);
    assert_eq!(store.snapshot().await.expect("snapshot").head, change.id);

    let history = store.history().await.expect("history");
    let next = format!("{history}.1");
    assert_eq!(
        store.rotate_history(&history, &next).await.expect("rotate"),
        next
    );
    // A second router finding the same loss does not move it again.
    assert_eq!(
        store
            .rotate_history(&history, &format!("{history}.2"))
            .await
            .expect("rotate"),
        next
    );
    assert_eq!(store.history().await.expect("history"), next);
    // Changes name the epoch they were committed under.
    try_commit(&store, pin("t0", "v1")).await.expect("commit");
    let change = store
        .changes_after(5, 1, Duration::ZERO)
        .await
        .expect("changes")
        .remove(0);
    assert_eq!(change.history, next);

    assert_eq!(store.adopted_history("retired").await.expect("read"), None);
    store.adopt_history("retired", &next).await.expect("adopt");
    assert_eq!(
        store.adopted_history("retired").await.expect("read"),
        Some(next)
    );
    server.command(&["FLUSHALL"]);
    assert_eq!(store.current_history().await.expect("read"), None);
    assert!(store.rotate_history("x", "x.1").await.is_err());
}

/// In a Cluster, `WAIT` must go to the master of the keys' slot (the connection that wrote):
/// sent to another master, it would count that master's replicas, which saw no write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_acknowledge_through_the_master_of_the_keys_slot_in_a_cluster() {
    let cluster = RedisCluster::start_with_replicas(1);
    let (patient, store) = acknowledged_stores(cluster.url()).await;
    populate(&patient).await;
    let replica = cluster.replica_of_key("{greyrouter}:revision");
    replica.pause();
    let err = try_commit(&store, pin("t0", "v2"))
        .await
        .expect_err("the slot's replica does not acknowledge");
    replica.resume();
    assert!(
        err.to_string()
            .contains("acknowledged by 0 of 1 replica(s) within 300 ms"),
        "{err}"
    );
    assert_eq!(commit_eventually(&patient, pin("t0", "v1")).await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_a_three_master_cluster() {
    let cluster = RedisCluster::start();
    let store = RedisStore::connect(RedisConfig::new(cluster.url()))
        .await
        .expect("connect to the cluster");
    populate(&store).await;
    let commit = try_commit(&store, pin("t0", "v2")).await.expect("pin");
    assert_eq!(commit.revision, 5);
    let state = store.load().await.expect("load");
    assert_eq!(state.resolve("t0", "api").expect("resolve").version, "v2");
    let changes = store
        .changes_after(0, 100, Duration::ZERO)
        .await
        .expect("changes");
    assert_eq!(changes.len(), 5);
    // Racing compare-and-set on the cluster: one winner.
    let race = |expected: &'static str| {
        try_commit(
            &store,
            Mutation::SetTenantVersion {
                tenant_id: "t0".into(),
                service: "api".into(),
                version: "v1".into(),
                expected_version: Some(expected.into()),
                force: false,
            },
        )
    };
    let (a, b) = tokio::join!(race("v2"), race("v2"));
    assert_eq!([a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_working_through_a_sentinel_failover() {
    let sentinel = RedisSentinel::start();
    let store = RedisStore::connect(fast(sentinel.url()))
        .await
        .expect("connect through the sentinel");
    populate(&store).await;
    let before = store.load().await.expect("load").revision();

    sentinel.failover();
    let revision = commit_eventually(&store, pin("t0", "v2")).await;
    assert_eq!(
        revision,
        before + 1,
        "the promoted replica had every change"
    );
    let state = store.load().await.expect("load");
    assert_eq!(state.resolve("t0", "api").expect("resolve").version, "v2");
    let port = sentinel.master_port().expect("master");
    assert_eq!(port, sentinel.replica.port());
}

/// Regression: a change committed between the follower's read of the stream and its read of the
/// revision was taken for a trimmed stream, and the router reloaded a full snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_landing_between_reads_is_not_a_gap() {
    let server = RedisServer::start();
    let writer = RedisStore::connect(RedisConfig::new(server.url()))
        .await
        .expect("connect");
    let follower = RedisStore::connect(RedisConfig::new(server.url()))
        .await
        .expect("connect");
    const CHANGES: u64 = 400;
    // The writer keeps its own copy, so commits follow each other as fast as Redis allows.
    let writing = async {
        let mut base = writer.load().await.expect("load");
        for i in 0..CHANGES {
            let mutation = tenant(&format!("t{i}"));
            writer
                .commit(&base, mutation.clone(), ChangeMeta::default())
                .await
                .expect("commit");
            base = base.apply(&mutation).expect("apply").0;
        }
    };
    let following = async {
        let mut at = 0;
        while at < CHANGES {
            let changes = follower
                .changes_after(at, 1, Duration::from_secs(5))
                .await
                .unwrap_or_else(|err| panic!("following from {at}: {err}"));
            if let Some(last) = changes.last() {
                at = last.revision;
            }
        }
    };
    tokio::join!(writing, following);
}

/// Commits a change on `base` (nobody else writes) and returns the state it made.
async fn commit_on(
    store: &RedisStore,
    base: &routing_core::RoutingState,
    mutation: Mutation,
) -> routing_core::RoutingState {
    let meta = ChangeMeta {
        actor: "test".to_owned(),
        reason: String::new(),
        at_ms: 0,
        before: String::new(),
        after: String::new(),
    };
    let (next, _) = base.apply(&mutation).expect("valid");
    store.commit(base, mutation, meta).await.expect("commit");
    next
}

/// A load reads tenants over a connection of its own (parsing replies in place) unless turned
/// off or in a Cluster: both ways read the same state, in a database other than 0 too, across
/// many pipelines.
#[tokio::test]
async fn a_load_over_its_own_connection_reads_what_the_client_reads() {
    let server = RedisServer::start();
    let url = format!("{}/3", server.url().trim_end_matches("/0"));
    let writer = RedisStore::connect(fast(url.clone()))
        .await
        .expect("connect");
    populate(&writer).await;
    let mut state = writer.load().await.expect("load");
    // Three pipelines' worth of tenants, with names, labels, an inactive one and pins.
    for i in 0..1_203 {
        let id = format!("tenant-{i:04}");
        let mutation = Mutation::UpsertTenant {
            tenant: routing_core::Tenant {
                id: id.clone(),
                name: format!("Tenant {i} «ü»"),
                region: if i % 2 == 0 {
                    "eu".into()
                } else {
                    String::new()
                },
                tier: "pro".into(),
                labels: [("team".to_owned(), format!("t{}", i % 7))].into(),
                active: i != 17,
            },
        };
        state = commit_on(&writer, &state, mutation).await;
        if i % 3 == 0 {
            state = commit_on(&writer, &state, pin(&id, "v2")).await;
        }
    }
    let through_client = RedisStore::connect(RedisConfig {
        bulk_load: false,
        ..fast(url.clone())
    })
    .await
    .expect("connect");
    let bulk = RedisStore::connect(fast(url)).await.expect("connect");
    let read = bulk.load().await.expect("bulk load").dump();
    assert_eq!(read, state.dump());
    assert_eq!(read.tenants.len(), 1_204);
    assert_eq!(read.pins.len(), 401);
    assert_eq!(through_client.load().await.expect("load").dump(), read);
    // Nothing of it is in database 0.
    let other = RedisStore::connect(fast(server.url()))
        .await
        .expect("connect");
    assert_eq!(other.load().await.expect("load").tenant_count(), 0);
}

/// A load while tenants' pins keep changing (steady traffic on a large fleet) does not start
/// over: it replays the changes made meanwhile over what it read and answers the exact state of
/// one revision. Before, every change during a load meant reading everything again, and a store
/// that never paused for a whole load could not be loaded at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_while_tenants_change_catches_up_with_them() {
    let server = RedisServer::start();
    let writer = RedisStore::connect(fast(server.url()))
        .await
        .expect("connect");
    populate(&writer).await;
    let mut state = writer.load().await.expect("load");
    let tenants = 2_000;
    for i in 0..tenants {
        state = commit_on(&writer, &state, tenant(&format!("tenant-{i:04}"))).await;
    }
    let seeded = state.revision();

    // One writer pins tenants one after another, as fast as it can, recording each pin.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let made = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, String, String)>::new()));
    let writing = {
        let (stop, made) = (stop.clone(), made.clone());
        tokio::spawn(async move {
            let mut i: usize = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("tenant-{:04}", (i * 7_919) % tenants);
                let version = if i.is_multiple_of(2) { "v2" } else { "v1" };
                state = commit_on(&writer, &state, pin(&id, version)).await;
                made.lock()
                    .expect("not poisoned")
                    .push((state.revision(), id, version.to_owned()));
                i += 1;
            }
            state
        })
    };
    let pins_made = || made.lock().expect("not poisoned").len();
    while pins_made() < 20 {
        tokio::task::yield_now().await;
    }

    let bulk = RedisStore::connect(fast(server.url()))
        .await
        .expect("connect");
    let through_client = RedisStore::connect(RedisConfig {
        bulk_load: false,
        ..fast(server.url())
    })
    .await
    .expect("connect");
    let mut snapshots = Vec::new();
    for store in [&bulk, &through_client, &bulk, &through_client] {
        let before = pins_made();
        let snapshot = store.snapshot().await.expect("a load while pins change");
        assert!(pins_made() > before, "the store moved during the load");
        snapshots.push(snapshot);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = writing.await.expect("writer");

    // Each load is the state of its revision exactly: every tenant's pin is the last one made
    // at or before it (none before `seeded`).
    let made = made.lock().expect("not poisoned").clone();
    for snapshot in &snapshots {
        let revision = snapshot.state.revision();
        assert!(revision > seeded);
        let mut expected = std::collections::BTreeMap::new();
        for (_, id, version) in made.iter().filter(|(at, _, _)| *at <= revision) {
            expected.insert(id.clone(), version.clone());
        }
        let read: std::collections::BTreeMap<String, String> = snapshot
            .state
            .dump()
            .pins
            .into_iter()
            .map(|pin| (pin.tenant_id, pin.version))
            .collect();
        assert_eq!(read, expected, "pins at revision {revision}");
        assert_eq!(snapshot.state.tenant_count(), tenants + 1);
    }
    // And once the writing stops, a load is the writer's state.
    assert_eq!(bulk.load().await.expect("load").dump(), last.dump());
}
