//! `WatchAssignments`: snapshot, changes, resume, OUT_OF_RANGE, filters, slow watchers.

mod support;

use greyrouter::config::Config;
use greyrouter_proto::v1 as pb;
use support::{TestServer, within};
use tonic::{Code, Streaming};

fn watch(tenants: &[&str], services: &[&str], from_revision: u64) -> pb::WatchAssignmentsRequest {
    pb::WatchAssignmentsRequest {
        tenant_ids: tenants.iter().map(|t| (*t).to_owned()).collect(),
        services: services.iter().map(|s| (*s).to_owned()).collect(),
        from_revision,
        history: String::new(),
        instances_by_version: false,
    }
}

async fn open(
    server: &mut TestServer,
    request: pb::WatchAssignmentsRequest,
) -> Streaming<pb::AssignmentUpdate> {
    within(server.router.watch_assignments(request))
        .await
        .expect("watch")
        .into_inner()
}

/// Reads one revision's update, joining messages marked `partial`.
async fn next(stream: &mut Streaming<pb::AssignmentUpdate>) -> pb::AssignmentUpdate {
    let mut joined: Option<pb::AssignmentUpdate> = None;
    loop {
        let message = within(stream.message())
            .await
            .expect("stream ok")
            .expect("stream open");
        let partial = message.partial;
        match &mut joined {
            None => joined = Some(message),
            Some(update) => {
                assert_eq!(update.revision, message.revision);
                update.upserts.extend(message.upserts);
                update.removals.extend(message.removals);
                update.versions.extend(message.versions);
            }
        }
        if !partial {
            let mut update = joined.unwrap_or_default();
            update.partial = false;
            return update;
        }
    }
}

/// Watches everything on a connection of its own with the smallest HTTP/2 windows, so that a
/// watcher that stops reading stops the server's sending within 64 KiB.
async fn slow_watch(server: &TestServer) -> Streaming<pb::AssignmentUpdate> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut router = greyrouter_proto::v1::router_client::RouterClient::new(channel);
    within(router.watch_assignments(watch(&[], &[], 0)))
        .await
        .expect("watch")
        .into_inner()
}

fn keys(update: &pb::AssignmentUpdate) -> Vec<(String, String, String, String)> {
    let mut keys: Vec<_> = update
        .upserts
        .iter()
        .map(|a| {
            (
                a.tenant_id.clone(),
                a.service.clone(),
                a.version.clone(),
                a.source.clone(),
            )
        })
        .collect();
    keys.sort();
    keys
}

fn entry(
    tenant: &str,
    service: &str,
    version: &str,
    source: &str,
) -> (String, String, String, String) {
    (tenant.into(), service.into(), version.into(), source.into())
}

/// `(service, version, instance ids)` of each version a by-version update lists.
fn listed_versions(update: &pb::AssignmentUpdate) -> Vec<(String, String, Vec<String>)> {
    let mut listed: Vec<_> = update
        .versions
        .iter()
        .map(|v| {
            let mut ids: Vec<String> = v.instances.iter().map(|i| i.instance_id.clone()).collect();
            ids.sort();
            (v.service.clone(), v.version.clone(), ids)
        })
        .collect();
    listed.sort();
    listed
}

#[tokio::test]
async fn instances_by_version_are_listed_once_a_message_not_with_each_tenant() {
    let mut server = TestServer::start().await;
    server.populate(3).await;
    server.pin("t2", "api", "v2").await;
    let by_version = |from_revision| pb::WatchAssignmentsRequest {
        instances_by_version: true,
        ..watch(&[], &["api"], from_revision)
    };
    let mut listed = open(&mut server, by_version(0)).await;
    let mut each = open(&mut server, watch(&[], &["api"], 0)).await;

    let (snapshot, full) = (next(&mut listed).await, next(&mut each).await);
    assert!(snapshot.snapshot);
    // The same assignments, without their instances ...
    assert_eq!(keys(&snapshot), keys(&full));
    assert_eq!(snapshot.upserts.len(), 3);
    assert!(snapshot.upserts.iter().all(|a| a.instances.is_empty()));
    // ... which come once per version: v1 (t0, t1) and v2 (t2).
    assert_eq!(
        listed_versions(&snapshot),
        [
            ("api".into(), "v1".into(), vec!["a1".to_owned()]),
            ("api".into(), "v2".into(), vec!["b1".to_owned()]),
        ]
    );
    for assignment in &full.upserts {
        let version = snapshot
            .versions
            .iter()
            .find(|v| v.service == assignment.service && v.version == assignment.version)
            .expect("its version is listed");
        assert_eq!(version.instances, assignment.instances);
    }
    assert!(
        full.versions.is_empty(),
        "not asked for: instances as before"
    );

    // A new instance of v1: the tenants on v1 again, v1's instances once.
    let revision = server.instance("api", "v1", "a2", "eu").await;
    let update = next(&mut listed).await;
    assert_eq!(update.revision, revision);
    assert_eq!(
        keys(&update),
        [
            entry("t0", "api", "v1", "default"),
            entry("t1", "api", "v1", "default")
        ]
    );
    assert_eq!(
        listed_versions(&update),
        [(
            "api".into(),
            "v1".into(),
            vec!["a1".to_owned(), "a2".to_owned()]
        )]
    );

    // A resume replays in the same layout.
    let mut resumed = open(&mut server, by_version(revision - 1)).await;
    let replay = next(&mut resumed).await;
    assert!(!replay.snapshot);
    assert_eq!(listed_versions(&replay), listed_versions(&update));
}

#[tokio::test]
async fn snapshot_then_every_change_that_matters() {
    let mut server = TestServer::start().await;
    server.populate(3).await;
    let mut stream = open(&mut server, watch(&["t0", "t1"], &[], 0)).await;

    let snapshot = next(&mut stream).await;
    assert!(snapshot.snapshot);
    assert_eq!(
        keys(&snapshot),
        [
            entry("t0", "api", "v1", "default"),
            entry("t1", "api", "v1", "default")
        ]
    );
    let addresses: Vec<&str> = snapshot.upserts[0]
        .instances
        .iter()
        .map(|i| i.address.as_str())
        .collect();
    assert_eq!(addresses, ["a1.internal:8080"]);

    // A change to a tenant not watched sends nothing; the next one watched arrives alone.
    server.pin("t2", "api", "v2").await;
    let revision = server.pin("t1", "api", "v2").await;
    let update = next(&mut stream).await;
    assert!(!update.snapshot);
    assert_eq!(update.revision, revision);
    assert_eq!(keys(&update), [entry("t1", "api", "v2", "pin")]);
    assert_eq!(update.upserts[0].instances[0].instance_id, "b1");
    assert_eq!(update.cause, "set_tenant_version by anonymous");

    // A new instance of v1 changes the instance set of t0 only (t1 is on v2).
    let revision = server.instance("api", "v1", "a2", "eu").await;
    let update = next(&mut stream).await;
    assert_eq!(update.revision, revision);
    assert_eq!(keys(&update), [entry("t0", "api", "v1", "default")]);
    assert_eq!(update.upserts[0].instances.len(), 2);

    // Deactivating a tenant removes its assignments.
    let mut t0 = support::tenant("t0", "eu");
    t0.active = false;
    server
        .admin
        .upsert_tenant(pb::UpsertTenantRequest { tenant: Some(t0) })
        .await
        .expect("deactivate");
    let update = next(&mut stream).await;
    assert!(update.upserts.is_empty());
    assert_eq!(
        update.removals,
        [pb::AssignmentKey {
            tenant_id: "t0".into(),
            service: "api".into()
        }]
    );
    server.stop().await;
}

#[tokio::test]
async fn resume_replays_what_was_missed() {
    let mut server = TestServer::start().await;
    server.populate(2).await;
    let mut stream = open(&mut server, watch(&[], &["api"], 0)).await;
    let snapshot = next(&mut stream).await;
    let seen = snapshot.revision;
    drop(stream);

    let first = server.pin("t0", "api", "v2").await;
    let second = server.pin("t1", "api", "v2").await;

    let mut resumed = open(&mut server, watch(&[], &["api"], seen)).await;
    let update = next(&mut resumed).await;
    assert!(!update.snapshot);
    assert_eq!(update.revision, first);
    assert_eq!(keys(&update), [entry("t0", "api", "v2", "pin")]);
    let update = next(&mut resumed).await;
    assert_eq!(update.revision, second);
    assert_eq!(keys(&update), [entry("t1", "api", "v2", "pin")]);

    // And then follows live changes.
    let third = server.pin("t0", "api", "v1").await;
    let update = next(&mut resumed).await;
    assert_eq!(update.revision, third);
    server.stop().await;
}

#[tokio::test]
async fn a_resume_from_another_history_gets_a_snapshot() {
    let mut server = TestServer::start().await;
    server.populate(2).await;
    let mut stream = open(&mut server, watch(&[], &["api"], 0)).await;
    let snapshot = next(&mut stream).await;
    assert_eq!(snapshot.history.len(), 16, "{snapshot:?}");
    drop(stream);
    let pinned = server.pin("t0", "api", "v2").await;

    // Same history: the missed change is replayed.
    let mut same = watch(&[], &["api"], snapshot.revision);
    same.history = snapshot.history.clone();
    let update = next(&mut open(&mut server, same).await).await;
    assert!(!update.snapshot);
    assert_eq!(update.revision, pinned);
    assert_eq!(update.history, snapshot.history);

    // Another history (a store that started over): its revision numbers mean nothing here.
    let mut other = watch(&[], &["api"], snapshot.revision);
    other.history = "0123456789abcdef".into();
    let update = next(&mut open(&mut server, other).await).await;
    assert!(update.snapshot);
    assert_eq!(update.revision, pinned);
    assert_eq!(update.upserts.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn resuming_from_lost_history_is_out_of_range() {
    let mut config = Config::default();
    config.watch.history = 2;
    let mut server = TestServer::with_config(config).await;
    server.populate(1).await;
    let old = server.pin("t0", "api", "v2").await;
    for _ in 0..3 {
        server.pin("t0", "api", "v1").await;
    }
    let status = within(server.router.watch_assignments(watch(&[], &[], old)))
        .await
        .expect_err("history gone");
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(
        status.message().contains("revision 0"),
        "{}",
        status.message()
    );

    let ahead = within(server.router.watch_assignments(watch(&[], &[], 1_000)))
        .await
        .expect_err("ahead");
    assert_eq!(ahead.code(), Code::OutOfRange);
    server.stop().await;
}

#[tokio::test]
async fn large_updates_are_split_into_partial_messages() {
    let mut config = Config::default();
    config.watch.max_assignments_per_message = 3;
    let mut server = TestServer::with_config(config).await;
    server.populate(8).await;
    let mut stream = open(&mut server, watch(&[], &[], 0)).await;
    let mut first = within(stream.message()).await.expect("ok").expect("open");
    assert!(first.snapshot && first.partial);
    assert_eq!(first.upserts.len(), 3);
    let mut count = first.upserts.len();
    while first.partial {
        first = within(stream.message()).await.expect("ok").expect("open");
        assert!(first.snapshot);
        count += first.upserts.len();
    }
    assert_eq!(count, 8);

    // Changing the default moves all eight tenants: one revision, split in three messages.
    let revision = server
        .admin
        .set_default_version(pb::SetDefaultVersionRequest {
            service: "api".into(),
            version: "v2".into(),
            force: false,
        })
        .await
        .expect("default")
        .into_inner()
        .revision;
    let update = next(&mut stream).await;
    assert_eq!(update.revision, revision);
    assert_eq!(update.upserts.len(), 8);
    assert!(update.upserts.iter().all(|a| a.version == "v2"));
    server.stop().await;
}

#[tokio::test]
async fn a_slow_watcher_does_not_hold_up_routing_or_other_watchers() {
    let mut config = Config::default();
    config.watch.buffer = 1;
    config.watch.history = 4;
    let mut server = TestServer::with_config(config).await;
    // 400 tenants make each change of the default version an update of ~30 KB, so a watcher
    // that stops reading fills its HTTP/2 window (64 KiB on its own connection) and its buffer
    // within a few changes.
    server.populate(400).await;
    let mut slow = slow_watch(&server).await;
    let slow_snapshot = next(&mut slow).await;
    let mut fast = open(&mut server, watch(&[], &[], 0)).await;
    next(&mut fast).await;

    let mut last = 0;
    for i in 0..30 {
        let version = if i % 2 == 0 { "v2" } else { "v1" };
        last = server
            .admin
            .set_default_version(pb::SetDefaultVersionRequest {
                service: "api".into(),
                version: version.into(),
                force: false,
            })
            .await
            .expect("set default")
            .into_inner()
            .revision;
        let routed = server
            .route("t7", "api")
            .await
            .expect("route while a watcher stalls");
        assert_eq!(routed.version, version);
        let update = next(&mut fast).await;
        assert_eq!(update.revision, last);
        assert_eq!(update.upserts.len(), 400);
    }
    // The slow watcher, once it reads, catches up: through what was buffered and, having
    // fallen behind the kept history, a fresh snapshot at the latest revision.
    let mut caught_up = slow_snapshot.revision;
    let mut resynced = false;
    while caught_up < last {
        let update = next(&mut slow).await;
        resynced |= update.snapshot;
        caught_up = update.revision;
    }
    assert!(
        resynced,
        "the slow watcher should have been resynchronised by a snapshot"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_watch_streams_with_unavailable() {
    let mut server = TestServer::start().await;
    server.populate(1).await;
    let mut stream = open(&mut server, watch(&[], &[], 0)).await;
    next(&mut stream).await;
    server.stop().await;
    let status = within(stream.message()).await.expect_err("stream ends");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // Said by the server, not made up by the client from a dropped connection.
    assert!(status.message().contains("shutting down"), "{status:?}");
    assert!(std::error::Error::source(&status).is_none(), "{status:?}");
}

#[tokio::test]
async fn shutdown_does_not_wait_forever_for_streams_it_does_not_own() {
    let config = Config {
        shutdown_grace_ms: 200,
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    // A health watch stays open until the client closes it; shutdown gives it the grace period.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    let mut statuses = within(health.watch(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    }))
    .await
    .expect("watch")
    .into_inner();
    within(statuses.message())
        .await
        .expect("ok")
        .expect("first status");
    within(server.stop()).await;
    // Before stopping, the server told the watcher it no longer serves.
    loop {
        let status = within(statuses.message())
            .await
            .expect("ok")
            .expect("status");
        if status.status
            == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
        {
            break;
        }
    }
}

#[tokio::test]
async fn a_slow_watcher_cut_off_by_shutdown_mid_update_ends_unavailable_never_ok() {
    let mut config = Config::default();
    config.watch.max_assignments_per_message = 20;
    let mut server = TestServer::with_config(config).await;
    // 400 tenants: each change of the default version is 20 partial messages of ~1.5 KB.
    server.populate(400).await;
    let mut slow = slow_watch(&server).await;
    next(&mut slow).await;
    // The watcher stops reading while changes pile up behind its window and its queue.
    for i in 0..10 {
        let version = if i % 2 == 0 { "v2" } else { "v1" };
        server
            .admin
            .set_default_version(pb::SetDefaultVersionRequest {
                service: "api".into(),
                version: version.into(),
                force: false,
            })
            .await
            .expect("set default");
    }
    let stopping = tokio::spawn(server.stop());
    // Whatever was on its way arrives; the stream then ends with UNAVAILABLE, never with OK.
    let end = loop {
        match within(slow.message()).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the watch stream ended with OK while updates were pending"),
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(end.message().contains("shutting down"), "{end:?}");
    within(stopping).await.expect("server stopped");
}
