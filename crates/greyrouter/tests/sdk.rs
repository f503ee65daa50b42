//! The client SDK (`greyrouter-client`) against real routers: local decisions that follow every
//! change, the server fallback, outcome reports in batches, retries on another instance and local
//! ejection, and the watch through a router killed and restarted, a fleet failover that resumes
//! by revision, and an embedded router restarted afresh.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use greyrouter::config::Config;
use greyrouter_client::{
    CallError, Client, ClientConfig, ClientError, Origin, Report, RouteRequest, Status, Strategy,
};
use greyrouter_proto::v1 as pb;
use greyrouter_test_support::RedisServer;
use support::{Api, DEADLINE, ServerProcess, TestServer, within};

/// A client of `url` that reconnects quickly.
fn config(url: &str) -> ClientConfig {
    let mut config = ClientConfig::new(url);
    config.reconnect_min_delay = Duration::from_millis(20);
    config.reconnect_max_delay = Duration::from_millis(200);
    config.keep_alive_interval = Duration::from_secs(1);
    config
}

async fn ready(config: ClientConfig) -> Client {
    let client = Client::connect(config).await.expect("valid settings");
    client.ready(DEADLINE).await.expect("first snapshot");
    client
}

/// Waits until the client's status satisfies `check`.
async fn status_until(client: &Client, what: &str, check: impl Fn(&Status) -> bool) -> Status {
    client
        .wait_for_status(DEADLINE, what, check)
        .await
        .unwrap_or_else(|err| panic!("{err}: {:?}", client.status()))
}

fn local(client: &Client, tenant: &str, service: &str) -> greyrouter_client::Decision {
    let decision = client
        .route_local(&RouteRequest::new(tenant, service))
        .unwrap_or_else(|err| panic!("{tenant}/{service} held locally: {err}"));
    assert_eq!(decision.origin(), Origin::Local);
    decision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_decisions_agree_with_the_router_and_follow_every_change() {
    let mut server = TestServer::start().await;
    server.populate(2).await;
    let client = ready(config(&format!("http://{}", server.addr))).await;

    let decision = local(&client, "t0", "api");
    let routed = server.route("t0", "api").await.expect("route");
    assert_eq!(
        (
            decision.version(),
            decision.source(),
            decision.instance_id()
        ),
        (routed.version.as_str(), routed.source.as_str(), "a1")
    );
    assert_eq!(decision.address(), "a1.internal:8080");
    assert_eq!(client.status().assignments, 2);

    let revision = server.pin("t0", "api", "v2").await;
    client
        .wait_for_revision(revision, DEADLINE)
        .await
        .expect("pin arrives");
    let pinned = local(&client, "t0", "api");
    assert_eq!(
        (pinned.version(), pinned.source(), pinned.instance_id()),
        ("v2", "pin", "b1")
    );
    assert!(pinned.revision() >= revision);

    // A new instance of v1: t1 (on the default) goes round robin over both.
    let revision = server.instance("api", "v1", "a2", "eu").await;
    client
        .wait_for_revision(revision, DEADLINE)
        .await
        .expect("instance arrives");
    let seen: BTreeSet<String> = (0..4)
        .map(|_| local(&client, "t1", "api").instance_id().to_owned())
        .collect();
    assert_eq!(seen, BTreeSet::from(["a1".to_owned(), "a2".to_owned()]));

    // The service's strategy changes: one hash key keeps one instance.
    let revision = server
        .service("api", "v1", pb::Strategy::ConsistentHash)
        .await;
    client
        .wait_for_revision(revision, DEADLINE)
        .await
        .expect("strategy arrives");
    let keyed: BTreeSet<String> = (0..8)
        .map(|_| {
            client
                .route_local(&RouteRequest::new("t1", "api").hash_key("user-42"))
                .expect("held")
                .instance_id()
                .to_owned()
        })
        .collect();
    assert_eq!(keyed.len(), 1, "{keyed:?}");

    // A deactivated tenant is removed from the copy; the router then answers for it.
    let mut inactive = support::tenant("t1", "eu");
    inactive.active = false;
    let revision = server
        .admin
        .upsert_tenant(pb::UpsertTenantRequest {
            tenant: Some(inactive),
        })
        .await
        .expect("deactivate")
        .into_inner()
        .revision;
    client
        .wait_for_revision(revision, DEADLINE)
        .await
        .expect("removal arrives");
    assert!(!client.holds("t1", "api"));
    let refused = client
        .route(&RouteRequest::new("t1", "api"))
        .await
        .expect_err("inactive tenant");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    client.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_and_changes_sent_in_parts_are_applied_whole() {
    let mut settings = Config::default();
    settings.watch.max_assignments_per_message = 3;
    let mut server = TestServer::with_config(settings).await;
    server.populate(8).await;
    let client = ready(config(&format!("http://{}", server.addr))).await;
    // 8 tenants x 1 service came in three messages of one revision.
    assert_eq!(client.status().assignments, 8);
    // A new default moves all 8: again three messages, applied as one revision.
    let revision = server
        .admin
        .set_default_version(pb::SetDefaultVersionRequest {
            service: "api".into(),
            version: "v2".into(),
            ..Default::default()
        })
        .await
        .expect("new default")
        .into_inner()
        .revision;
    client
        .wait_for_revision(revision, DEADLINE)
        .await
        .expect("change arrives");
    for tenant in 0..8 {
        assert_eq!(local(&client, &format!("t{tenant}"), "api").version(), "v2");
    }
    client.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_not_held_locally_are_routed_by_the_router() {
    let mut server = TestServer::start().await;
    server.populate(2).await;
    let client = ready(config(&format!("http://{}", server.addr)).tenants(["t0"])).await;
    assert!(client.holds("t0", "api"));
    assert!(!client.holds("t1", "api"));
    let err = client
        .route_local(&RouteRequest::new("t1", "api"))
        .expect_err("t1 is not followed");
    assert!(matches!(err, ClientError::NotCached { .. }), "{err}");

    let remote = client
        .route(&RouteRequest::new("t1", "api"))
        .await
        .expect("the router answers");
    assert_eq!(remote.origin(), Origin::Server);
    assert_eq!(
        (remote.version(), remote.source(), remote.instance_id()),
        ("v1", "default", "a1")
    );
    let local = client
        .route(&RouteRequest::new("t0", "api"))
        .await
        .expect("held");
    assert_eq!(local.origin(), Origin::Local);

    let missing = client
        .route(&RouteRequest::new("nobody", "api"))
        .await
        .expect_err("unknown tenant");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing}");
    assert_eq!(client.status().server_decisions, 1);
    client.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_reports_reach_the_router_in_batches() {
    let mut server = TestServer::start().await;
    server.populate(1).await;
    let mut settings = config(&format!("http://{}", server.addr));
    settings.report_batch_size = 10;
    // Only a full batch or a flush sends: the interval never comes within the test.
    settings.report_interval = Duration::from_secs(3_600);
    let client = ready(settings).await;
    for _ in 0..20 {
        let decision = local(&client, "t0", "api");
        client.report(&decision, Report::success(Duration::from_millis(3)));
    }
    // Two full batches go without a flush.
    let sent = status_until(&client, "two batches", |s| s.reports_accepted == 20).await;
    assert_eq!((sent.reports_rejected, sent.reports_dropped), (0, 0));
    assert_eq!(sent.report_calls, 2, "20 reports in batches of 10");
    for _ in 0..5 {
        let decision = local(&client, "t0", "api");
        client.report(
            &decision,
            Report::failure(Duration::from_millis(40)).with_status_code(503),
        );
    }
    within(client.flush()).await.expect("flushed");
    let status = client.status();
    assert_eq!((status.reports_accepted, status.reports_failed), (25, 0));
    assert_eq!(
        status.report_calls, 3,
        "the flush sent the last five in one call"
    );
    client.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_instance_is_retried_elsewhere_and_ejected_locally() {
    let mut server = TestServer::start().await;
    server.populate(1).await;
    let revision = server.instance("api", "v1", "a2", "eu").await;
    let client = ready(config(&format!("http://{}", server.addr))).await;
    client
        .wait_for_revision(revision, DEADLINE)
        .await
        .expect("a2 arrives");

    // a1 fails every call; an idempotent call still succeeds, on a2, never trying one twice.
    let mut tried_a1 = false;
    // Every failed attempt on a1 is reported by call_idempotent: count them all.
    let mut failures = 0;
    for _ in 0..2 {
        let tried = std::sync::Mutex::new(Vec::new());
        let answer = client
            .call_idempotent(&RouteRequest::new("t0", "api"), 3, |decision| {
                tried
                    .lock()
                    .expect("lock")
                    .push(decision.instance_id().to_owned());
                async move {
                    if decision.instance_id() == "a1" {
                        Err("connection refused")
                    } else {
                        Ok(decision.instance_id().to_owned())
                    }
                }
            })
            .await
            .expect("a2 answers");
        assert_eq!(answer, "a2");
        let tried = tried.into_inner().expect("lock");
        assert!(tried.len() <= 2, "{tried:?}");
        tried_a1 |= tried.first().is_some_and(|first| first == "a1");
        failures += tried.iter().filter(|id| *id == "a1").count();
    }
    assert!(tried_a1, "round robin offers a1 first in one of two calls");

    // Three failures in a row (the client's policy; the calls above count) eject a1 here: a2
    // takes everything.
    while client.status().ejections == 0 {
        let decision = local(&client, "t0", "api");
        if decision.instance_id() == "a1" {
            client.report(&decision, Report::failure(Duration::from_millis(1)));
            failures += 1;
            assert!(
                failures <= 3,
                "a1 failed {failures} times and is still picked"
            );
        } else {
            client.report(&decision, Report::success(Duration::from_millis(1)));
        }
    }
    // Exactly the third failure ejected it: not the second, not the fourth.
    assert_eq!(failures, 3, "a1 was ejected after {failures} failures");
    for _ in 0..10 {
        assert_eq!(local(&client, "t0", "api").instance_id(), "a2");
    }

    // When every attempt fails, the last error comes back.
    let failed = client
        .call_idempotent(&RouteRequest::new("t0", "api"), 2, |_| async {
            Err::<(), _>("503")
        })
        .await
        .expect_err("every attempt fails");
    assert!(
        matches!(
            failed,
            CallError::Exhausted {
                attempts: 2,
                last: "503"
            }
        ),
        "{failed:?}"
    );
    client.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_routes_through_a_router_kill_and_catches_up_after_its_restart() {
    let redis = RedisServer::start();
    let mut router = ServerProcess::start(&["--store", &redis.url()]);
    Api::connect(&router.url()).await.populate(2).await;
    let client = ready(config(&router.url())).await;
    assert_eq!(local(&client, "t0", "api").version(), "v1");

    router.kill();
    status_until(&client, "the watch to notice", |s| !s.connected).await;
    // The copy it holds keeps answering while no router is up; reports that cannot be
    // delivered are counted, not retried forever.
    let decision = local(&client, "t0", "api");
    assert_eq!(decision.version(), "v1");
    client.report(&decision, Report::success(Duration::from_millis(2)));
    within(client.flush()).await.expect("flushed");
    assert_eq!(client.status().reports_failed, 1);

    // A change made meanwhile through another router of the fleet...
    let mut other = TestServer::with_config(Config {
        store: redis.url(),
        ..Config::default()
    })
    .await;
    let revision = other.pin("t0", "api", "v2").await;
    // ... reaches the client once its router is back.
    router.restart();
    client
        .wait_for_revision(revision, DEADLINE)
        .await
        .expect("caught up");
    let pinned = local(&client, "t0", "api");
    assert_eq!((pinned.version(), pinned.source()), ("v2", "pin"));
    let status = status_until(&client, "reconnected", |s| s.connected).await;
    assert!(status.reconnects >= 1, "{status:?}");
    client.close().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_fails_over_to_another_router_and_resumes_by_revision() {
    let redis = RedisServer::start();
    // Both routers start before any change, so either can replay every revision.
    let mut first = ServerProcess::start(&["--store", &redis.url()]);
    let second = ServerProcess::start(&["--store", &redis.url()]);
    let mut api = Api::connect(&first.url()).await;
    api.populate(2).await;
    let client = ready(config(&first.url()).endpoint(second.url())).await;
    let revision = api.pin("t1", "api", "v2").await;
    client
        .wait_for_revision(revision, DEADLINE)
        .await
        .expect("pin arrives");

    first.kill();
    let mut api = Api::connect(&second.url()).await;
    let revision = api.pin("t0", "api", "v2").await;
    client
        .wait_for_revision(revision, DEADLINE)
        .await
        .expect("the change made after the failover arrives");
    assert_eq!(local(&client, "t0", "api").version(), "v2");
    assert_eq!(local(&client, "t1", "api").version(), "v2");
    let status = client.status();
    assert_eq!(status.endpoint, second.url());
    assert_eq!(
        status.snapshots, 1,
        "resumed, not re-snapshotted: {status:?}"
    );
    assert!(status.resumes >= 1, "{status:?}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_router_restarted_afresh_is_followed_from_a_new_snapshot() {
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/seed.toml");
    let mut router = ServerProcess::start(&["--seed", seed]);
    let client = ready(config(&router.url())).await;
    let seeded = local(&client, "globex", "user-service");
    assert_eq!(seeded.version(), "v1.0");

    let mut api = Api::connect(&router.url()).await;
    let revision = api.pin("globex", "user-service", "v2.0").await;
    client
        .wait_for_revision(revision, DEADLINE)
        .await
        .expect("pin arrives");
    assert_eq!(local(&client, "globex", "user-service").version(), "v2.0");

    // The embedded store starts empty again: only the seed, at a revision behind the client's.
    router.restart();
    let status = status_until(&client, "a second snapshot", |s| s.snapshots == 2).await;
    assert!(status.revision < revision, "{status:?}");
    let fresh = local(&client, "globex", "user-service");
    assert_eq!((fresh.version(), fresh.source()), ("v1.0", "default"));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_of_another_history_is_followed_from_a_snapshot_not_a_replay() {
    // The client follows a router at revision 5...
    let mut first = ServerProcess::start(&[]);
    Api::connect(&first.url()).await.populate(2).await;
    let client = ready(config(&first.url())).await;
    assert_eq!(client.status().revision, 5);
    // ... which is replaced on the same address by a fresh one whose seed reaches revision 12:
    // replaying its revisions 6-12 onto the old copy would mix two unrelated states.
    first.kill();
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/seed.toml");
    let _second = ServerProcess::start_at(first.addr, &["--seed", seed]);
    let status = status_until(&client, "a second snapshot", |s| s.snapshots == 2).await;
    assert_eq!(status.revision, 12);
    assert!(
        !client.holds("t0", "api"),
        "the old router's tenants are gone"
    );
    assert_eq!(status.assignments, 6, "3 tenants x 2 services: {status:?}");
    assert_eq!(local(&client, "globex", "user-service").version(), "v1.0");
    client.close().await;
}

#[tokio::test]
async fn bad_settings_are_refused_with_the_setting_named() {
    let err = Client::connect(ClientConfig::new("127.0.0.1:50051"))
        .await
        .expect_err("no scheme");
    assert!(
        matches!(
            err,
            ClientError::InvalidConfig {
                field: "endpoints",
                ..
            }
        ),
        "{err}"
    );
    let mut half = ClientConfig::new("https://router:50051");
    half.tls.cert_file = Some("client.pem".into());
    let err = Client::connect(half)
        .await
        .expect_err("a certificate without its key");
    assert!(err.to_string().contains("tls.cert_file"), "{err}");
    let err = Client::connect(ClientConfig::new("https://router:50051").ca_file("/no/such/ca.pem"))
        .await
        .expect_err("an unreadable CA file");
    assert!(err.to_string().contains("tls.ca_file"), "{err}");
    let err = Client::connect(ClientConfig::new("http://127.0.0.1:1").token("line\nbreak"))
        .await
        .expect_err("a token that cannot be a header");
    assert!(err.to_string().contains("token"), "{err}");
    let mut settings = ClientConfig::new("http://127.0.0.1:1");
    settings.report_batch_size = 0;
    let err = Client::connect(settings).await.expect_err("batch of 0");
    assert!(err.to_string().contains("report_batch_size"), "{err}");
    let mut settings = ClientConfig::new("http://127.0.0.1:1");
    settings.ejection.error_rate = 2.0;
    let err = Client::connect(settings).await.expect_err("bad policy");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // A router that is not there: connecting succeeds, waiting for a snapshot times out.
    let client = Client::connect(config("http://127.0.0.1:1"))
        .await
        .expect("valid settings");
    let waited = client
        .ready(Duration::from_millis(200))
        .await
        .expect_err("nobody answers");
    assert_eq!(waited.code(), tonic::Code::DeadlineExceeded);
}

/// The README's example (`examples/rust/route_locally.rs`), compiled into this test: its `main`
/// reads the command line, its `run` is what the example does.
#[allow(dead_code)]
#[path = "../../../examples/rust/route_locally.rs"]
mod route_locally;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_example_runs_against_the_quickstart_server() {
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/seed.toml");
    let mut server = TestServer::with_config(Config {
        seed: Some(seed.into()),
        ..Config::default()
    })
    .await;
    let url = format!("http://{}", server.addr);
    let status = within(route_locally::run(&url, "globex", "user-service"))
        .await
        .unwrap_or_else(|err| panic!("the example failed: {err}"));
    // The whole seed held locally; every decision local; four reports and the idempotent
    // call's two attempts (the first instance refuses, the retry on the other answers)
    // delivered.
    assert!(status.synced, "{status:?}");
    assert_eq!((status.revision, status.assignments), (12, 6), "{status:?}");
    assert_eq!(status.server_decisions, 0, "{status:?}");
    assert_eq!(
        (
            status.reports_accepted,
            status.reports_rejected,
            status.reports_failed,
            status.reports_dropped
        ),
        (6, 0, 0, 0),
        "{status:?}"
    );
    // The router answers the version the example decided locally.
    let routed = server.route("globex", "user-service").await.expect("route");
    assert_eq!(routed.version, "v1.0");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_ends_the_in_flight_request_least_connections_counted() {
    let mut server = TestServer::start().await;
    server.populate(1).await;
    let revision = server.instance("api", "v1", "a2", "eu").await;
    let client = ready(config(&format!("http://{}", server.addr))).await;
    client
        .wait_for_revision(revision, DEADLINE)
        .await
        .expect("a2 arrives");
    let request = RouteRequest::new("t0", "api").strategy(Strategy::LeastConnections);
    let pick = || client.route_local(&request).expect("held");
    // One request in flight on each instance: the second pick goes to the idle one.
    let first = pick();
    let other = pick();
    assert_ne!(first.instance_id(), other.instance_id());
    // Reporting the first request ends it: its instance is now the less loaded and takes
    // every pick that is reported in turn. Were it still counted, the two would tie and
    // then alternate.
    client.report(&first, Report::success(Duration::from_millis(2)));
    for _ in 0..20 {
        let next = pick();
        assert_eq!(next.instance_id(), first.instance_id());
        client.report(&next, Report::success(Duration::from_millis(2)));
    }
    // Reporting the other one too: both idle, picks go either way again.
    client.report(&other, Report::success(Duration::from_millis(2)));
    let seen: BTreeSet<String> = (0..64)
        .map(|_| {
            let next = pick();
            client.report(&next, Report::success(Duration::from_millis(2)));
            next.instance_id().to_owned()
        })
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    client.close().await;
    server.stop().await;
}
