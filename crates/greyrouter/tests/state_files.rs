//! The routing state as a file, as the README promises it: `greyrouter backup` writes it,
//! `restore` loads it into an empty store (or over another with `--force`), `apply` makes the
//! live state match it as one change guarded by the revision it was planned on, `diff` shows
//! drift, and `state --at-revision` shows a past state. A Redis fleet's backup restored into the
//! embedded store (and back) routes every (tenant, service) pair alike.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use greyrouter_proto::v1 as pb;
use greyrouter_test_support::RedisServer;
use support::{Api, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_greyrouter");

fn example_seed() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed.toml")
}

/// Runs the CLI against `server`.
fn cli(server: &ServerProcess, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--server", &server.url()])
        .output()
        .expect("run greyrouter")
}

/// Runs the CLI and returns its stdout, failing the test when it fails.
fn ok(server: &ServerProcess, args: &[&str]) -> String {
    let output = cli(server, args);
    assert!(
        output.status.success(),
        "greyrouter {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

/// The state of `server` as a backup holds it, without its revision.
fn records(server: &ServerProcess, dir: &Path, name: &str) -> serde_json::Value {
    let file = dir.join(format!("{name}.json"));
    ok(server, &["backup", file.to_str().expect("utf-8")]);
    let mut value = json(&std::fs::read_to_string(&file).expect("backup"));
    value["revision"] = serde_json::Value::Null;
    value
}

fn plan_keys(plan: &serde_json::Value) -> Vec<String> {
    plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| format!("{} {} {}", s["action"], s["section"], s["key"]).replace('"', ""))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_apply_and_diff_keep_routing_in_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = example_seed();
    let live = ServerProcess::start(&["--seed", seed.to_str().expect("utf-8")]);
    let backup = dir.path().join("backup.toml");
    let backup = backup.to_str().expect("utf-8");
    ok(&live, &["backup", backup]);

    // A file equal to the state: an empty plan, no drift.
    let plan = json(&ok(
        &live,
        &["apply", "-f", backup, "--dry-run", "--output", "json"],
    ));
    assert_eq!(plan_keys(&plan), Vec::<String>::new());
    let seeded_at = plan["base_revision"].as_u64().expect("revision");
    assert_eq!(cli(&live, &["diff", "-f", backup]).status.code(), Some(0));

    // The desired state in git: globex moves region, initech goes, a new tenant comes, and
    // acme-corp's pin moves back to the default.
    let text = std::fs::read_to_string(backup).expect("backup");
    let desired = text
        .replace(
            "id = \"globex\"\nname = \"Globex\"\nregion = \"us-east\"",
            "id = \"globex\"\nname = \"Globex\"\nregion = \"eu-west\"",
        )
        .replace(
            "id = \"initech\"\nname = \"Initech\"",
            "id = \"hooli\"\nname = \"Hooli\"",
        )
        .replace(
            "tenant_id = \"acme-corp\"\nservice = \"user-service\"\nversion = \"v2.0\"",
            "tenant_id = \"acme-corp\"\nservice = \"user-service\"\nversion = \"v1.0\"",
        );
    assert_ne!(desired, text, "the edits apply to the backup's layout");
    let desired_file = dir.path().join("desired.toml");
    std::fs::write(&desired_file, &desired).expect("write");
    let desired_file = desired_file.to_str().expect("utf-8");
    let drift = cli(&live, &["diff", "-f", desired_file, "--output", "json"]);
    assert_eq!(drift.status.code(), Some(2), "drift exits 2");
    let mut expected = vec![
        "update tenants globex",
        "delete tenants initech",
        "create tenants hooli",
        "update pins acme-corp/user-service",
    ];
    let mut planned = plan_keys(&json(&String::from_utf8_lossy(&drift.stdout)));
    planned.sort();
    expected.sort_unstable();
    assert_eq!(planned, expected);

    // The state moved since the plan: refused with ABORTED, nothing applied.
    let mut api = Api::connect(&live.url()).await;
    api.tenant("late-comer", "eu").await;
    let dump = desired_json(&desired);
    let refused = api
        .admin
        .apply_state(tokio_stream::iter(vec![pb::ApplyStateRequest {
            sections: vec!["tenants".into(), "pins".into()],
            dry_run: false,
            expected_revision: Some(seeded_at),
            data: dump,
        }]))
        .await
        .expect_err("the state moved");
    assert_eq!(refused.code(), tonic::Code::Aborted, "{refused:?}");
    assert!(refused.message().contains("plan again"), "{refused:?}");

    // Applied: one change, audited, and then no drift.
    let applied = json(&ok(
        &live,
        &[
            "apply",
            "-f",
            desired_file,
            "--why",
            "routing in git",
            "--output",
            "json",
        ],
    ));
    assert_eq!(applied["applied"], true, "{applied}");
    let applied_at = applied["revision"].as_u64().expect("revision");
    assert_eq!(applied_at, seeded_at + 2, "one change after the late comer");
    assert_eq!(
        cli(&live, &["diff", "-f", desired_file]).status.code(),
        Some(0)
    );
    let events = json(&ok(
        &live,
        &[
            "events",
            "--since",
            &seeded_at.to_string(),
            "--output",
            "json",
        ],
    ));
    let last = events.as_array().and_then(|e| e.last()).expect("an event");
    assert_eq!(
        (last["kind"].as_str(), last["reason"].as_str()),
        (Some("replace_state"), Some("routing in git"))
    );
    let routed = api.route("acme-corp", "user-service").await.expect("route");
    assert_eq!(routed.version, "v1.0");
    assert!(api.route("initech", "user-service").await.is_err());

    // What acme-corp was routed to before: the state at a past revision.
    let before = json(&ok(
        &live,
        &[
            "state",
            "--at-revision",
            &seeded_at.to_string(),
            "--tenant",
            "acme-corp",
            "--output",
            "json",
        ],
    ));
    let user = before["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["service"] == "user-service")
        .expect("user-service");
    assert_eq!(
        (user["version"].as_str(), user["source"].as_str()),
        (Some("v2.0"), Some("pin"))
    );

    // Restore into an empty server: the same records.
    let empty = ServerProcess::start(&[]);
    let restore_from = dir.path().join("live.json");
    ok(&live, &["backup", restore_from.to_str().expect("utf-8")]);
    let restore_from = restore_from.to_str().expect("utf-8");
    ok(&empty, &["restore", restore_from]);
    assert_eq!(
        records(&empty, dir.path(), "restored"),
        records(&live, dir.path(), "source")
    );

    // Over another state only with --force, after showing what changes.
    let other = ServerProcess::start(&["--seed", seed.to_str().expect("utf-8")]);
    let before_restore = records(&other, dir.path(), "other");
    let refused = cli(&other, &["restore", restore_from]);
    assert_eq!(refused.status.code(), Some(1));
    let shown = String::from_utf8_lossy(&refused.stdout);
    assert!(shown.contains("delete  tenant  initech"), "{shown}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    assert_eq!(
        records(&other, dir.path(), "other-after"),
        before_restore,
        "nothing changed"
    );
    ok(&other, &["restore", restore_from, "--force"]);
    assert_eq!(
        records(&other, dir.path(), "forced"),
        records(&live, dir.path(), "source-again")
    );
}

/// The desired file's records as the JSON an `ApplyState` call carries.
fn desired_json(toml_text: &str) -> Vec<u8> {
    let table: toml::Table = toml::from_str(toml_text).expect("toml");
    serde_json::to_vec(&table).expect("json")
}

/// Every (tenant, service) pair's version and source on `api`.
async fn answers(api: &mut Api, tenants: usize) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for i in 0..tenants {
        for service in ["api", "web"] {
            let tenant = format!("t{i}");
            let answer = api.route(&tenant, service).await.expect("route");
            out.push((format!("{tenant}/{service}"), answer.version, answer.source));
        }
    }
    out
}

/// A state with every kind of record that decides a route: pins, an emergency override, a
/// rollout part way, an experiment.
async fn populate(api: &mut Api, tenants: usize) {
    api.populate(tenants).await;
    api.service("web", "v1", pb::Strategy::RoundRobin).await;
    for (version, id) in [("v1", "w1"), ("v2", "w2"), ("v3", "w3")] {
        api.instance("web", version, id, "eu").await;
    }
    for i in (0..tenants).step_by(7) {
        api.pin(&format!("t{i}"), "api", "v2").await;
    }
    api.admin
        .start_rollout(pb::StartRolloutRequest {
            service: "api".into(),
            id: "r1".into(),
            to_version: "v2".into(),
            steps: vec![30.0, 60.0, 100.0],
            // Far enough apart that nothing moves while the test runs.
            interval_seconds: 3_600,
            analysis: None,
            cohort: None,
            force: false,
        })
        .await
        .expect("start rollout");
    api.admin
        .create_experiment(pb::CreateExperimentRequest {
            id: "e1".into(),
            service: "web".into(),
            variants: vec![
                pb::Variant {
                    name: "control".into(),
                    version: "v1".into(),
                    weight: 50,
                },
                pb::Variant {
                    name: "treatment".into(),
                    version: "v2".into(),
                    weight: 50,
                },
            ],
            cohort: None,
        })
        .await
        .expect("create experiment");
    api.admin
        .emergency_rollback(pb::EmergencyRollbackRequest {
            service: "web".into(),
            from_version: "v2".into(),
            to_version: "v3".into(),
            tenant_ids: vec![],
            reason: "v2 breaks checkout".into(),
            ..Default::default()
        })
        .await
        .expect("rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_fleet_restored_into_the_embedded_store_routes_every_pair_alike() {
    const TENANTS: usize = 60;
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::start();
    let fleet = ServerProcess::start(&["--store", &redis.url()]);
    let mut fleet_api = Api::connect(&fleet.url()).await;
    populate(&mut fleet_api, TENANTS).await;
    let expected = answers(&mut fleet_api, TENANTS).await;
    let sources: std::collections::BTreeSet<&str> = expected
        .iter()
        .map(|(_, _, source)| source.split(':').next().unwrap_or_default())
        .collect();
    assert!(
        ["pin", "rollout", "experiment", "override", "default"]
            .iter()
            .all(|s| sources.contains(s)),
        "every source is exercised: {sources:?}"
    );

    // Redis -> embedded (the default, durable store).
    let backup = dir.path().join("fleet.toml");
    let backup = backup.to_str().expect("utf-8");
    ok(&fleet, &["backup", backup]);
    let single = ServerProcess::start(&[]);
    ok(&single, &["restore", backup]);
    let mut single_api = Api::connect(&single.url()).await;
    assert_eq!(answers(&mut single_api, TENANTS).await, expected);
    let equal = json(&ok(
        &single,
        &["apply", "-f", backup, "--dry-run", "--output", "json"],
    ));
    assert_eq!(plan_keys(&equal), Vec::<String>::new(), "nothing to apply");

    // And back: embedded -> a new Redis (a team outgrowing one node).
    let second = dir.path().join("single.json");
    let second = second.to_str().expect("utf-8");
    ok(&single, &["backup", second]);
    let new_redis = RedisServer::start();
    let new_fleet = ServerProcess::start(&["--store", &new_redis.url()]);
    ok(&new_fleet, &["restore", second]);
    let mut new_api = Api::connect(&new_fleet.url()).await;
    assert_eq!(answers(&mut new_api, TENANTS).await, expected);
    // A second router on the new Redis loads the same state from it.
    let follower = ServerProcess::start(&["--store", &new_redis.url()]);
    let mut follower_api = Api::connect(&follower.url()).await;
    assert_eq!(answers(&mut follower_api, TENANTS).await, expected);
}
