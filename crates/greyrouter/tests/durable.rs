//! The default store keeps what it acknowledged: `greyrouter serve` killed with `SIGKILL` at a
//! random moment under 8 concurrent writers, restarted, again and again, has every acknowledged
//! change and no half of any other; its data directory checks out (every snapshot equals the
//! replay of the log). And a damaged data directory is refused, loudly, not served.
//!
//! `GREYROUTER_CRASH_ROUNDS` sets the number of rounds (20 by default; the longer run in
//! docs/BENCHMARKS.md uses 100).

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use greyrouter_proto::v1 as pb;
use support::{Api, DEADLINE, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_greyrouter");
const WRITERS: usize = 8;

/// A small, seeded generator: the test prints its seed, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Acknowledgements counted across writers, and a signal for each.
#[derive(Default)]
struct Acks {
    count: AtomicU64,
    arrived: tokio::sync::Notify,
}

/// Writer `w` upserts tenant `w<w>` with names `n<first>`, `n<first+1>`, ... one at a time
/// until a call fails; returns the last acknowledged number and the one in flight.
async fn writer(url: String, w: usize, first: u64, acked: Arc<Acks>) -> (u64, u64) {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url) else {
        return (first - 1, first);
    };
    let Ok(channel) = endpoint.connect().await else {
        return (first - 1, first);
    };
    let mut admin = pb::admin_client::AdminClient::new(channel);
    let mut k = first;
    loop {
        let request = pb::UpsertTenantRequest {
            tenant: Some(pb::Tenant {
                id: format!("w{w}"),
                name: format!("n{k}"),
                region: "eu".into(),
                tier: "pro".into(),
                active: true,
                ..Default::default()
            }),
        };
        if admin.upsert_tenant(request).await.is_err() {
            return (k - 1, k);
        }
        acked.count.fetch_add(1, Ordering::SeqCst);
        acked.arrived.notify_one();
        k += 1;
    }
}

/// Each writer's tenant name number as the server has it.
async fn present(api: &mut Api) -> [u64; WRITERS] {
    let tenants = api
        .admin
        .list_tenants(pb::ListTenantsRequest {
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect("list tenants")
        .into_inner()
        .tenants;
    let mut out = [0u64; WRITERS];
    for tenant in tenants {
        let w: usize = tenant.id[1..].parse().expect("writer tenant");
        out[w] = tenant.name[1..].parse().expect("n<k>");
    }
    out
}

fn check(data: &Path) -> (bool, serde_json::Value) {
    let output = Command::new(BIN)
        .args(["store", "check", "--output", "json", "--data-dir"])
        .arg(data)
        .output()
        .expect("run greyrouter store check");
    let report = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (output.status.success(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill_at_any_moment() {
    let rounds: u64 = std::env::var("GREYROUTER_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // Snapshots often, so that kills land before, during and after them.
    let config = dir.path().join("greyrouter.toml");
    std::fs::write(&config, "snapshot_every = 60\nkeep_snapshots = 2\n").expect("config");
    let args = [
        "--config",
        config.to_str().expect("utf-8"),
        "--data-dir",
        data.to_str().expect("utf-8"),
    ];
    let mut server = ServerProcess::start(&args);
    let mut expected = [0u64; WRITERS];
    let (mut acknowledged, mut in_flight, mut landed) = (0u64, 0u64, 0u64);
    for round in 0..rounds {
        let kill_after = 20 + rng.next() % 200;
        let counted = Arc::new(Acks::default());
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                tokio::spawn(writer(
                    server.url(),
                    w,
                    expected[w] + 1,
                    Arc::clone(&counted),
                ))
            })
            .collect();
        // Killed once the writers had this many changes acknowledged: wherever they are.
        while counted.count.load(Ordering::SeqCst) < kill_after {
            tokio::time::timeout(DEADLINE, counted.arrived.notified())
                .await
                .expect("the writers make progress");
        }
        server.kill();
        let mut outcomes = Vec::new();
        for writer in writers {
            outcomes.push(
                tokio::time::timeout(DEADLINE, writer)
                    .await
                    .expect("writers stop when the server dies")
                    .expect("writer"),
            );
        }
        server.restart();
        let mut api = Api::connect(&server.url()).await;
        let now = present(&mut api).await;
        for (w, (last_acked, attempted)) in outcomes.into_iter().enumerate() {
            acknowledged += last_acked - expected[w];
            in_flight += 1;
            // Every acknowledged change is there; the one in flight is there whole or not at
            // all; nothing later was made up.
            assert!(
                now[w] == last_acked || now[w] == attempted,
                "round {round} (seed {seed}): writer {w} had {last_acked} acknowledged and \
                 {attempted} in flight, the restarted server has {}",
                now[w]
            );
            landed += u64::from(now[w] == attempted);
            expected[w] = now[w];
        }
    }
    server.kill();
    let (ok, report) = check(&data);
    assert!(ok, "store check: {report}");
    let snapshots = report["snapshots"].as_array().expect("snapshots");
    assert!(
        snapshots
            .iter()
            .any(|s| s["status"] == "ok (equals the replay of the log)"),
        "a snapshot was checked against the log: {report}"
    );
    assert_eq!(
        report["revision"].as_u64(),
        Some(expected.iter().sum::<u64>()),
        "one revision per change that landed, and no other"
    );
    println!(
        "crash test (seed {seed}): {rounds} SIGKILL rounds, {acknowledged} acknowledged changes, \
         all present after restart; {in_flight} changes in flight at the kills, {landed} landed \
         whole, none in part"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_data_directory_is_refused_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8");
    let mut server = ServerProcess::start(&["--data-dir", data_arg]);
    let mut api = Api::connect(&server.url()).await;
    for i in 0..5 {
        api.tenant(&format!("t{i}"), "eu").await;
    }
    server.kill();
    let segment = std::fs::read_dir(&data)
        .expect("data directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a log segment");
    let whole = std::fs::read(&segment).expect("segment");

    // A torn last record (a crash mid-write): cut off, loudly, and the rest served.
    let mut torn = whole.clone();
    torn.extend_from_slice(&200u32.to_le_bytes());
    torn.extend_from_slice(b"{\"entry\":\"cha");
    std::fs::write(&segment, &torn).expect("write");
    server.restart();
    let mut api = Api::connect(&server.url()).await;
    assert_eq!(present_tenants(&mut api).await, 5);
    let log = server.stderr();
    assert!(log.contains("torn record"), "{log}");
    server.kill();

    // A flipped byte in the middle: refused, naming the file and the check command.
    let mut damaged = std::fs::read(&segment).expect("segment");
    assert_eq!(damaged, whole, "the torn tail was cut off");
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    std::fs::write(&segment, &damaged).expect("write");
    let refused = Command::new(BIN)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--data-dir",
            data_arg,
        ])
        .output()
        .expect("run");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("damaged") && stderr.contains("store check"),
        "{stderr}"
    );
    let (ok, _) = check(&data);
    assert!(!ok, "store check fails on damage");
    assert_eq!(
        std::fs::read(&segment).expect("segment"),
        damaged,
        "left as it is"
    );
}

async fn present_tenants(api: &mut Api) -> usize {
    api.admin
        .list_tenants(pb::ListTenantsRequest {
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect("list tenants")
        .into_inner()
        .tenants
        .len()
}

/// The first update of a watch resuming from `from` in `history`.
async fn first_update(api: &mut Api, from: u64, history: &str) -> pb::AssignmentUpdate {
    let mut stream = api
        .router
        .watch_assignments(pb::WatchAssignmentsRequest {
            tenant_ids: vec!["t1".into()],
            services: vec![],
            from_revision: from,
            history: history.into(),
            instances_by_version: false,
        })
        .await
        .expect("watch")
        .into_inner();
    tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("an update in time")
        .expect("a message")
        .expect("an update")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resumes_across_a_restart_with_a_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&["--data-dir", data.to_str().expect("utf-8")]);
    let mut api = Api::connect(&server.url()).await;
    api.populate(2).await;
    // What a watcher saw last before the restart: a revision and its history.
    let seen = first_update(&mut api, 0, "").await;
    assert!(seen.snapshot);
    let pinned = api.pin("t1", "api", "v2").await;
    server.kill();
    server.restart();
    let mut api = Api::connect(&server.url()).await;
    let resumed = first_update(&mut api, seen.revision, &seen.history).await;
    assert_eq!(
        resumed.history, seen.history,
        "the same history after the restart"
    );
    assert!(!resumed.snapshot, "a replay, not a snapshot: {resumed:?}");
    assert_eq!(resumed.revision, pinned);
    assert_eq!(resumed.upserts.len(), 1, "{resumed:?}");
    assert_eq!(resumed.upserts[0].version, "v2");
}

/// Heartbeat leases live in memory: a restart counts as a heartbeat of every instance with a
/// TTL, so instances that heartbeat all along do not all expire at the first tick after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_expire_instances_that_heartbeat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("greyrouter.toml");
    std::fs::write(&config, "[outcomes]\nheartbeat_tick_ms = 20\n").expect("config");
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--data-dir",
        data.to_str().expect("utf-8"),
    ]);
    let mut api = Api::connect(&server.url()).await;
    api.service("api", "v1", pb::Strategy::RoundRobin).await;
    for (id, ttl_seconds) in [("short", 1), ("long", 3_600)] {
        api.admin
            .register_instance(pb::RegisterInstanceRequest {
                instance: Some(support::instance("api", "v1", id, "eu")),
                ttl_seconds,
            })
            .await
            .expect("register");
    }
    server.kill();
    server.restart();
    let mut api = Api::connect(&server.url()).await;
    // The short TTL lapses one TTL after the start (nothing heartbeats it)...
    support::eventually("the short-lived instance expires", async || {
        let ids = api.instance_ids("api").await;
        (!ids.contains(&"short".to_owned())).then_some(())
    })
    .await;
    // ...while the long one, past many expiry ticks, is still there.
    assert_eq!(api.instance_ids("api").await, ["long"]);
}

/// README, Quickstart: the first command keeps its state in `./greyrouter-data`; killed and
/// started again, it still has every change it acknowledged, and the seed is not applied again
/// over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_server_keeps_its_state_across_a_restart() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let seed =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed.toml");
    let start = || {
        let mut command = Command::new(BIN);
        command
            .current_dir(cwd.path())
            // The default data directory, not one the harness would give.
            .env_remove("GREYROUTER_DATA_DIR")
            .args(["serve", "--grpc-addr", "127.0.0.1:0", "--seed"])
            .arg(&seed);
        support::launch(command, support::START_DEADLINE)
            .unwrap_or_else(|err| panic!("greyrouter serve: {err}"))
    };
    let mut first = start();
    let mut api = Api::connect(&format!("http://{}", first.addr)).await;
    // acme-corp is pinned to v2.0 by the seed; move it back.
    api.pin("acme-corp", "user-service", "v1.0").await;
    let _ = first.child.kill();
    let _ = first.child.wait();
    assert!(cwd.path().join("greyrouter-data").is_dir());
    let mut second = start();
    let mut api = Api::connect(&format!("http://{}", second.addr)).await;
    let routed = api.route("acme-corp", "user-service").await.expect("route");
    assert_eq!(
        routed.version, "v1.0",
        "the change survived and the seed did not revert it"
    );
    let _ = second.child.kill();
    let _ = second.child.wait();
}
