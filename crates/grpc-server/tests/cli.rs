//! The `greyrouter` binary as a user runs it: `serve` with the example seed, the admin
//! commands against it, configuration errors, and shutdown on SIGTERM.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use support::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_greyrouter");

fn example_seed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed.toml")
}

/// A `greyrouter serve` process on an ephemeral port, and the CLI pointed at it.
struct Served {
    process: ServerProcess,
    url: String,
}

impl Served {
    fn start(args: &[&str]) -> Served {
        let process = ServerProcess::start(args);
        let url = process.url();
        Served { process, url }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--server", &self.url])
            .output()
            .expect("run greyrouter")
    }

    fn cli_with_input(&self, args: &[&str], input: &str) -> Output {
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--server", &self.url, "--actor", "oncall-alice"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run greyrouter");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).expect("answer");
        }
        child.wait_with_output().expect("wait")
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        self.process.terminate()
    }
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn serves_the_example_seed_and_answers_the_cli() {
    let seed = example_seed();
    let server = Served::start(&["--seed", seed.to_str().expect("utf-8 path")]);

    let routed = stdout(&server.cli(&[
        "route",
        "--tenant",
        "acme-corp",
        "--service",
        "user-service",
        "--output",
        "json",
    ]));
    let routed: serde_json::Value = serde_json::from_str(&routed).expect("json");
    assert_eq!(routed["version"], "v2.0");
    assert_eq!(routed["source"], "pin");

    let table = stdout(&server.cli(&["route", "--tenant", "globex", "--service", "user-service"]));
    assert!(table.starts_with("INSTANCE"), "{table}");
    assert!(
        table.contains("v1.0") && table.contains("default"),
        "{table}"
    );

    stdout(&server.cli(&[
        "tenant",
        "set-version",
        "globex",
        "user-service",
        "v2.0",
        "--expect",
        "v1.0",
    ]));
    let shown = stdout(&server.cli(&["tenant", "show", "globex", "--output", "json"]));
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
    let user = shown["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == "user-service"))
        .cloned()
        .expect("user-service");
    assert_eq!(user["version"], "v2.0");
    assert_eq!(user["source"], "pin");

    let refused = server.cli(&[
        "tenant",
        "set-version",
        "globex",
        "user-service",
        "v1.0",
        "--expect",
        "v1.0",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Aborted"));

    let rollback = ["rollback", "user-service", "--from", "v2.0", "--to", "v1.0"];
    let dry = stdout(&server.cli(&[&rollback[..], &["--dry-run"]].concat()));
    assert!(dry.contains("2 tenant(s) would move"), "{dry}");
    // Asked to confirm, the answer "n" changes nothing.
    let declined = server.cli_with_input(&rollback, "n\n");
    assert!(!declined.status.success());
    let asked = String::from_utf8_lossy(&declined.stderr);
    assert!(
        asked.contains("Roll back 2 tenant(s) across 1 service(s)?"),
        "{asked}"
    );
    assert!(asked.contains("nothing changed"), "{asked}");
    let confirmed = server.cli_with_input(
        &[&rollback[..], &["--why", "v2.0 leaks memory"]].concat(),
        "y\n",
    );
    let moved = stdout(&confirmed);
    assert!(moved.contains("moved 2 tenant(s)"), "{moved}");
    // The audit trail says who and why.
    let events = stdout(&server.cli(&["events", "--service", "user-service"]));
    let last = events.lines().last().unwrap_or_default();
    assert!(
        last.contains("emergency_rollback")
            && last.contains("oncall-alice")
            && last.contains("v2.0 leaks memory"),
        "{events}"
    );

    stdout(&server.cli(&[
        "instance",
        "register",
        "--service",
        "order-service",
        "--version",
        "v1.2",
        "--id",
        "order-v12-3",
        "--address",
        "10.0.3.12:8080",
    ]));
    let instances = stdout(&server.cli(&["instance", "list", "order-service", "--output", "json"]));
    let instances: serde_json::Value = serde_json::from_str(&instances).expect("json");
    assert_eq!(instances.as_array().map(Vec::len), Some(3));

    let status = server.terminate();
    assert!(
        status.success(),
        "SIGTERM should shut down cleanly: {status:?}"
    );
}

#[test]
fn configuration_errors_exit_64_before_listening() {
    let output = Command::new(BIN)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--store",
            "nowhere://x",
        ])
        .env("GREYROUTER_WATCH_HISTORY", "many")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("store"), "{stderr}");
    assert!(stderr.contains("GREYROUTER_WATCH_HISTORY"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing was served");
}

#[test]
fn server_settings_out_of_range_exit_64() {
    let output = Command::new(BIN)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--worker-threads",
            "5000",
        ])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.worker_threads: 5000 is more than 1024"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing was served");
}

/// Threads of a process. (Not filtered by name: a thread names itself once it runs, which may
/// be after the server prints its address.)
#[cfg(target_os = "linux")]
fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/<pid>/task")
        .count()
}

#[cfg(target_os = "linux")]
#[test]
fn worker_threads_size_the_server_runtime() {
    // More workers than this machine has cores, so that the default (one per core, plus the
    // main thread and a few blocking threads) cannot pass.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let asked = cores + 8;
    let server = Served::start(&["--worker-threads", &asked.to_string()]);
    // The runtime starts its workers (and the main thread waits on it) before `serve` binds
    // and prints its address.
    let threads = thread_count(server.process.id());
    assert!(
        threads > asked,
        "{threads} threads, {asked} workers asked for"
    );
    drop(server);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("greyrouter.toml");
    std::fs::write(&file, format!("[server]\nworker_threads = {asked}\n")).expect("write");
    let server = Served::start(&["--config", file.to_str().expect("utf-8 path")]);
    let threads = thread_count(server.process.id());
    assert!(
        threads > asked,
        "{threads} threads, {asked} workers asked for"
    );
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let output = Command::new(BIN)
        .args(["tenant", "list", "--server", "http://127.0.0.1:1"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect"));
}

#[test]
fn rollouts_and_experiments_from_the_cli() {
    let seed = example_seed();
    let server = Served::start(&["--seed", seed.to_str().expect("utf-8 path")]);
    let started = stdout(&server.cli(&[
        "rollout",
        "start",
        "user-service",
        "--to",
        "v2.0",
        "--steps",
        "10,50,100",
        "--interval",
        "600",
        "--id",
        "r1",
        "--tier",
        "internal",
    ]));
    assert!(
        started.contains("rollout r1 of user-service: v1.0 -> v2.0, running at 10%"),
        "{started}"
    );
    assert!(started.contains("started"), "{started}");
    let listed = stdout(&server.cli(&["rollout", "list", "--output", "json"]));
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed[0]["phase"], "running");
    let aborted =
        stdout(&server.cli(&["rollout", "abort", "user-service", "r1", "--why", "testing"]));
    assert!(aborted.contains("aborted at 0%"), "{aborted}");
    assert!(aborted.contains("testing"), "{aborted}");

    let created = stdout(&server.cli(&[
        "experiment",
        "create",
        "order-service",
        "checkout",
        "--variant",
        "control=v1.2:1",
        "--variant",
        "treatment=v1.2:1",
    ]));
    assert!(created.starts_with("VARIANT"), "{created}");
    let shown = stdout(&server.cli(&[
        "experiment",
        "show",
        "order-service",
        "checkout",
        "--output",
        "json",
    ]));
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
    let tenants: u64 = shown["variants"]
        .as_array()
        .map(|v| v.iter().filter_map(|v| v["tenants"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(tenants, 3, "every seeded tenant is in one variant: {shown}");
    let bad = server.cli(&[
        "experiment",
        "create",
        "order-service",
        "x",
        "--variant",
        "nonsense",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("NAME=VERSION:WEIGHT"));
}
