//! What `report` promises, held without a router: it ends the in-flight count of a
//! `least_connections` pick, feeds the client's own ejection (3 failures in a row or 50% errors,
//! 5 s doubling, at most half a pool), and never waits: a full queue drops reports and counts
//! them. The clients here follow a router that is not there (or never answers) and hold a
//! snapshot fed by hand.

use std::time::Duration;

use super::*;
use crate::cache::CacheBuilder;

const DEADLINE: Duration = Duration::from_secs(20);

fn snapshot(instances: &[&str]) -> pb::AssignmentUpdate {
    pb::AssignmentUpdate {
        revision: 1,
        snapshot: true,
        upserts: vec![pb::Assignment {
            tenant_id: "acme".into(),
            service: "api".into(),
            version: "v1".into(),
            source: "default".into(),
            instances: instances
                .iter()
                .map(|id| pb::InstanceAddress {
                    instance_id: (*id).into(),
                    address: format!("{id}.internal:8080"),
                    weight: 1,
                    region: String::new(),
                    zone: String::new(),
                    healthy: true,
                    health_score: 100,
                })
                .collect(),
            strategy: pb::Strategy::RoundRobin.into(),
            region: String::new(),
        }],
        removals: Vec::new(),
        partial: false,
        cause: String::new(),
        history: "h1".into(),
        versions: Vec::new(),
    }
}

/// Connects with `config` and publishes a snapshot of `instances` serving acme/api by hand.
async fn holding(config: ClientConfig, instances: &[&str]) -> Client {
    let client = Client::connect(config).await.expect("valid settings");
    let mut builder = CacheBuilder::default();
    assert!(builder.accept(snapshot(instances)).is_some());
    client.shared.publish(builder.current().clone());
    client
}

/// A client of a router that is not there, with `policy`, sending no reports.
async fn local_client(policy: EjectionPolicy, instances: &[&str]) -> Client {
    let mut config = ClientConfig::new("http://127.0.0.1:1");
    config.report_outcomes = false;
    config.ejection = policy;
    holding(config, instances).await
}

fn request() -> RouteRequest<'static> {
    RouteRequest::new("acme", "api")
}

/// A local decision on instance `id` (round robin comes to it, unless it is ejected).
fn decision_on(client: &Client, id: &str) -> Decision {
    for _ in 0..64 {
        let decision = client.route_local(&request()).expect("held");
        if decision.instance_id() == id {
            return decision;
        }
    }
    panic!("{id} is never picked")
}

/// The instances 64 local decisions go to.
fn picked(client: &Client) -> std::collections::BTreeSet<String> {
    (0..64)
        .map(|_| {
            client
                .route_local(&request())
                .expect("held")
                .instance_id()
                .to_owned()
        })
        .collect()
}

fn failure() -> Report {
    Report::failure(Duration::from_millis(1))
}

fn success() -> Report {
    Report::success(Duration::from_millis(1))
}

/// Reports a failure on `id`, returning the client's clock just before and just after.
fn fail_timed(client: &Client, id: &str) -> (u64, Decision, u64) {
    let decision = decision_on(client, id);
    let before = client.shared.now_ms();
    client.report(&decision, failure());
    (before, decision, client.shared.now_ms())
}

#[test]
fn the_default_ejection_policy_is_the_readmes() {
    // "3 failures in a row or 50% errors eject an instance for 5 s, doubling, at most half a
    // pool".
    let policy = ClientConfig::new("http://router:50051").ejection;
    assert_eq!(policy.consecutive_failures, 3);
    assert_eq!(policy.error_rate, 0.5);
    assert_eq!(policy.base_ejection_ms, 5_000);
    assert!(policy.max_ejection_ms > policy.base_ejection_ms);
    assert_eq!(policy.max_ejected_percent, 50);
}

#[tokio::test]
async fn report_ends_the_in_flight_count_of_a_least_connections_pick() {
    let client = local_client(ClientConfig::new("http://x:1").ejection, &["a1", "a2"]).await;
    let counted = RouteRequest::new("acme", "api").strategy(Strategy::LeastConnections);
    let first = client.route_local(&counted).expect("held");
    let load = Arc::clone(first.load().expect("a local pick"));
    assert_eq!(load.in_flight(client.shared.now_ms()), 1);
    // The other instance is idle: the next pick goes there, and each has one in flight.
    let other = client.route_local(&counted).expect("held");
    assert_ne!(other.instance_id(), first.instance_id());
    // A round-robin decision on the same instance counted nothing, so its report ends nothing.
    let plain = decision_on(&client, first.instance_id());
    client.report(&plain, success());
    assert_eq!(load.in_flight(client.shared.now_ms()), 1);
    client.report(&first, success());
    assert_eq!(load.in_flight(client.shared.now_ms()), 0);
    // Through the strategy: the instance whose request was reported is the less loaded, so
    // every pick goes to it while each pick is reported (a count that did not come down would
    // send every other pick to the other instance).
    for _ in 0..20 {
        let held = client.route_local(&counted).expect("held");
        assert_eq!(held.instance_id(), first.instance_id());
        client.report(&held, success());
    }
    assert_eq!(load.in_flight(client.shared.now_ms()), 0);
    client.report(&other, failure());
    assert_eq!(
        other.load().map(|l| l.in_flight(client.shared.now_ms())),
        Some(0)
    );
}

#[tokio::test]
async fn an_error_rate_of_half_ejects_an_instance_without_failures_in_a_row() {
    let policy = EjectionPolicy {
        // Only the error rate can eject here.
        consecutive_failures: 0,
        error_rate: 0.5,
        min_requests: 20,
        window_ms: 60_000,
        base_ejection_ms: 60_000,
        max_ejection_ms: 600_000,
        max_ejected_percent: 50,
    };
    let client = local_client(policy, &["a1", "a2"]).await;
    // a1 answers every other call: never two failures in a row, 50% errors.
    for n in 0..19 {
        let report = if n % 2 == 0 { success() } else { failure() };
        client.report(&decision_on(&client, "a1"), report);
    }
    // 9 of 19: not enough requests yet.
    assert_eq!(client.status().ejections, 0);
    client.report(&decision_on(&client, "a1"), failure());
    // 10 of 20 is 50%.
    assert_eq!(client.status().ejections, 1);
    assert_eq!(picked(&client), ["a2".to_owned()].into());
}

#[tokio::test]
async fn a_second_ejection_lasts_twice_as_long_as_the_first() {
    let policy = EjectionPolicy {
        consecutive_failures: 3,
        error_rate: 1.0,
        min_requests: 1_000,
        window_ms: 60_000,
        base_ejection_ms: 500,
        max_ejection_ms: 60_000,
        max_ejected_percent: 50,
    };
    let client = local_client(policy, &["a1", "a2"]).await;
    for (ejection, lasts) in [(1, 500), (2, 1_000), (3, 2_000)] {
        // Three failures in a row; the third ejects at the client's clock `now`, between
        // `before` and `after`, until `now + lasts`.
        fail_timed(&client, "a1");
        fail_timed(&client, "a1");
        let (before, decision, after) = fail_timed(&client, "a1");
        assert_eq!(client.status().ejections, ejection);
        let until = decision.load().expect("local").ejected_until_ms();
        assert!(
            until >= before + lasts && until <= after + lasts,
            "ejection {ejection}: until {until}, clock {before}-{after}, expected {lasts} ms"
        );
        assert_eq!(picked(&client), ["a2".to_owned()].into());
        if ejection == 3 {
            break;
        }
        // Wait for the ejection to end on the client's clock: a1 takes requests again.
        let waited = tokio::time::timeout(DEADLINE, async {
            while client.shared.now_ms() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "the ejection never ended");
        assert!(picked(&client).contains("a1"));
    }
}

#[tokio::test]
async fn the_client_never_ejects_more_than_half_a_pool() {
    let policy = ClientConfig::new("http://x:1").ejection;
    let client = local_client(policy, &["a1", "a2", "a3", "a4"]).await;
    for id in ["a1", "a2", "a3"] {
        for _ in 0..3 {
            client.report(&decision_on(&client, id), failure());
        }
    }
    // a1 and a2 went (for 5 s); a3 failed as often but two of four are out already.
    assert_eq!(client.status().ejections, 2);
    assert_eq!(picked(&client), ["a3".to_owned(), "a4".to_owned()].into());
    // The first ejection of the default policy lasts 5 s.
    let a1 = client
        .shared
        .cache
        .load()
        .route(&request(), 0, client.shared.now_ms(), &[])
        .expect("held");
    let until = a1
        .pool()
        .and_then(|pool| pool.member("a1"))
        .map(|m| m.load.ejected_until_ms())
        .expect("a1");
    let now = client.shared.now_ms();
    assert!(
        until > now && until <= now + 5_000,
        "until {until}, now {now}"
    );

    // A pool of one keeps its instance; a pool of three spares one.
    let single = local_client(ClientConfig::new("http://x:1").ejection, &["s1"]).await;
    for _ in 0..10 {
        single.report(&decision_on(&single, "s1"), failure());
    }
    assert_eq!(single.status().ejections, 0);
    let three = local_client(
        ClientConfig::new("http://x:1").ejection,
        &["b1", "b2", "b3"],
    )
    .await;
    for id in ["b1", "b2", "b3"] {
        for _ in 0..3 {
            three.report(&decision_on(&three, id), failure());
        }
    }
    assert_eq!(three.status().ejections, 1);
    assert_eq!(picked(&three), ["b2".to_owned(), "b3".to_owned()].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_report_queue_drops_and_counts_reports_and_never_waits() {
    // A router address that accepts connections and never answers: the reporting task's call
    // hangs, so the queue fills.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("address");
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            connections.push(connection);
        }
    });
    let mut config = ClientConfig::new(format!("http://{addr}"));
    config.report_queue = 5;
    config.report_batch_size = 1;
    config.request_timeout = Duration::from_secs(120);
    let client = holding(config, &["a1", "a2"]).await;
    let decision = client.route_local(&request()).expect("held");
    // The first report is taken by the reporting task, which then waits on the router.
    client.report(&decision, success());
    let stuck = tokio::time::timeout(DEADLINE, async {
        while client.status().report_calls == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(stuck.is_ok(), "the first report was never sent");
    let started = Instant::now();
    for _ in 0..100 {
        client.report(&decision, success());
    }
    let took = started.elapsed();
    // Five fit in the queue; the other 95 are dropped and counted, at once: waiting for room
    // would take the 120 s the call in flight may last.
    let status = client.status();
    assert_eq!(status.reports_dropped, 95, "{status:?}");
    assert_eq!(
        (
            status.report_calls,
            status.reports_accepted,
            status.reports_failed
        ),
        (1, 0, 0),
        "{status:?}"
    );
    assert!(took < Duration::from_secs(10), "100 reports took {took:?}");
    held.abort();
}

#[tokio::test]
async fn a_batch_sends_reports_of_one_kind_as_one_message() {
    let client = local_client(EjectionPolicy::default(), &["a1", "a2"]).await;
    let on_a1 = decision_on(&client, "a1");
    let on_a2 = decision_on(&client, "a2");
    let reported = |decision: &Decision, success: bool, latency_ms: u32, status_code: u32| {
        crate::reports::Reported {
            decision: decision.clone(),
            success,
            latency_ms,
            status_code,
        }
    };
    let batch = vec![
        reported(&on_a1, true, 3, 200),
        reported(&on_a2, true, 4, 200),
        reported(&on_a1, true, 5, 200),
        reported(&on_a1, false, 40, 503),
        reported(&on_a1, true, 6, 200),
    ];
    let messages = crate::reports::messages(&batch);
    let summary: Vec<(&str, bool, u32, u32, Vec<u32>)> = messages
        .iter()
        .map(|m| {
            (
                m.instance_id.as_str(),
                m.success,
                m.status_code,
                m.latency_ms,
                m.more_latencies_ms.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("a1", true, 200, 3, vec![5, 6]),
            ("a2", true, 200, 4, vec![]),
            ("a1", false, 503, 40, vec![]),
        ]
    );
    assert!(
        messages
            .iter()
            .all(|m| m.tenant_id == "acme" && m.service == "api" && m.version == "v1"),
        "{messages:?}"
    );
}
