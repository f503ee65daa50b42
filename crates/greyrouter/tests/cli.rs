//! The `greyrouter` binary as a user runs it: `serve` with the example seed, the admin
//! commands against it, configuration errors, and shutdown on SIGTERM and SIGINT. The tests
//! below the helpers pin what the README promises of the CLI.

mod support;

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use support::{DEADLINE, START_DEADLINE, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_greyrouter");

fn example_seed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed.toml")
}

/// A `greyrouter serve` process on an ephemeral port, and the CLI pointed at it.
struct Served {
    process: ServerProcess,
    client: Cli,
}

/// The CLI pointed at a server.
struct Cli {
    url: String,
}

impl std::ops::Deref for Served {
    type Target = Cli;

    fn deref(&self) -> &Cli {
        &self.client
    }
}

impl Served {
    fn start(args: &[&str]) -> Served {
        let process = ServerProcess::start(args);
        let url = process.url();
        Served {
            process,
            client: Cli { url },
        }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        self.process.terminate()
    }
}

impl Cli {
    /// Runs a command against the server, its stdin empty (not a terminal).
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--server", &self.url])
            .stdin(Stdio::null())
            .output()
            .expect("run greyrouter")
    }

    /// Starts a command against the server that runs until it ends or is killed (`watch`),
    /// its stdout read line by line.
    fn spawn_cli(&self, args: &[&str]) -> (Child, Lines) {
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--server", &self.url])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run greyrouter");
        let lines = Lines::of(&mut child);
        (child, lines)
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
}

/// The lines a child process writes to stdout, read by a thread as they come.
struct Lines {
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let stdout = child.stdout.take().expect("stdout piped");
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits up to [`DEADLINE`] for a line that `wanted` accepts; panics with every line seen
    /// when none comes.
    fn wait_for(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line {what} within {DEADLINE:?}; saw {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("stdout closed before a line {what}; saw {:#?}", self.seen)
                }
            }
        }
    }
}

/// Waits up to `deadline` for `child` to exit; kills it and panics when it does not.
fn exit_within(child: &mut Child, deadline: Duration, what: &str) -> ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What an exited child wrote to stderr.
fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut text).expect("read stderr");
    }
    text
}

/// Asserts that a command failed cleanly (a non-zero exit, no panic) and returns its stderr.
fn failure(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "should have failed; stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
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

// ---------------------------------------------------------------------------------------------
// What the README promises of the CLI.

/// The version `tenant` is routed to for `service`, asked through the CLI.
fn routed_version(server: &Cli, tenant: &str, service: &str) -> String {
    let routed = stdout(&server.cli(&[
        "route",
        "--tenant",
        tenant,
        "--service",
        service,
        "--output",
        "json",
    ]));
    let routed: serde_json::Value = serde_json::from_str(&routed).expect("json");
    routed["version"].as_str().expect("a version").to_owned()
}

/// The example seed, with globex also pinned to user-service v2.0 (acme-corp is already): two
/// tenants on v2.0, initech on the default v1.0.
fn seeded_with_two_on_v2() -> Served {
    let seed = example_seed();
    let server = Served::start(&["--seed", seed.to_str().expect("utf-8 path")]);
    stdout(&server.cli(&["tenant", "set-version", "globex", "user-service", "v2.0"]));
    for tenant in ["acme-corp", "globex"] {
        assert_eq!(routed_version(&server, tenant, "user-service"), "v2.0");
    }
    server
}

/// README: "`--dry-run` only shows" how many tenants would move.
#[test]
fn rollback_dry_run_counts_the_tenants_and_changes_nothing() {
    let server = seeded_with_two_on_v2();
    let dry = stdout(&server.cli(&[
        "rollback",
        "user-service",
        "--from",
        "v2.0",
        "--to",
        "v1.0",
        "--dry-run",
        "--yes",
    ]));
    assert!(dry.starts_with("SERVICE"), "the plan first: {dry}");
    assert!(
        dry.contains("dry run: 2 tenant(s) would move; nothing changed"),
        "{dry}"
    );
    for tenant in ["acme-corp", "globex"] {
        assert_eq!(routed_version(&server, tenant, "user-service"), "v2.0");
    }
    let overrides = stdout(&server.cli(&["override", "list", "--output", "json"]));
    assert_eq!(overrides.trim(), "[]", "no override installed");
}

/// README: `greyrouter rollback SERVICE --from V2 --to V1` moves every tenant on V2, and
/// "`--yes` skips" the confirmation: with `--yes` and nothing on stdin, it asks nothing.
#[test]
fn rollback_with_yes_moves_every_tenant_on_the_version_without_asking() {
    let server = seeded_with_two_on_v2();
    let output = server.cli(&[
        "rollback",
        "user-service",
        "--from",
        "v2.0",
        "--to",
        "v1.0",
        "--yes",
    ]);
    let moved = stdout(&output);
    let asked = String::from_utf8_lossy(&output.stderr);
    assert!(!asked.contains("[y/N]"), "asked anyway: {asked}");
    assert!(
        moved.contains("moved 2 tenant(s) of user-service from v2.0 to v1.0"),
        "{moved}"
    );
    for tenant in ["acme-corp", "globex", "initech"] {
        assert_eq!(routed_version(&server, tenant, "user-service"), "v1.0");
    }
    let overrides = stdout(&server.cli(&["override", "list", "--output", "json"]));
    let overrides: serde_json::Value = serde_json::from_str(&overrides).expect("json");
    assert_eq!(overrides.as_array().map(Vec::len), Some(1), "{overrides}");
    assert_eq!(overrides[0]["from_version"], "v2.0");
    assert_eq!(overrides[0]["to_version"], "v1.0");
}

/// README: the rollback "asks for confirmation". Without `--yes` and with nothing to read on
/// stdin (not a terminal, at its end), it asks, takes no answer as no, fails and moves nobody.
#[test]
fn rollback_without_yes_and_without_an_answer_changes_nothing() {
    let server = seeded_with_two_on_v2();
    let output = server.cli(&["rollback", "user-service", "--from", "v2.0", "--to", "v1.0"]);
    let stderr = failure(&output);
    assert!(
        stderr.contains("Roll back 2 tenant(s) across 1 service(s)? [y/N]"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rollback cancelled; nothing changed"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("moved"),
        "{output:?}"
    );
    for tenant in ["acme-corp", "globex"] {
        assert_eq!(routed_version(&server, tenant, "user-service"), "v2.0");
    }
    let overrides = stdout(&server.cli(&["override", "list", "--output", "json"]));
    assert_eq!(overrides.trim(), "[]", "no override installed");
}

/// README: `greyrouter rollback --all-services-on-version V2` rolls back every service with
/// tenants on V2, each to its default version when `--to` is absent.
#[test]
fn rollback_all_services_on_version_moves_each_service_to_its_default() {
    let seed = example_seed();
    let server = Served::start(&["--seed", seed.to_str().expect("utf-8 path")]);
    // order-service gets a v2.0 too, and globex is pinned to it; acme-corp is on user-service
    // v2.0 from the seed; nobody else is on a v2.0.
    stdout(&server.cli(&[
        "instance",
        "register",
        "--service",
        "order-service",
        "--version",
        "v2.0",
        "--id",
        "order-v2-1",
        "--address",
        "10.0.3.20:8080",
    ]));
    stdout(&server.cli(&["tenant", "set-version", "globex", "order-service", "v2.0"]));
    assert_eq!(routed_version(&server, "acme-corp", "user-service"), "v2.0");
    assert_eq!(routed_version(&server, "globex", "order-service"), "v2.0");

    let dry = stdout(&server.cli(&["rollback", "--all-services-on-version", "v2.0", "--dry-run"]));
    assert!(
        dry.contains("dry run: 2 tenant(s) would move; nothing changed"),
        "{dry}"
    );
    assert_eq!(routed_version(&server, "globex", "order-service"), "v2.0");

    let moved = stdout(&server.cli(&["rollback", "--all-services-on-version", "v2.0", "--yes"]));
    assert!(
        moved.contains("moved 1 tenant(s) of user-service from v2.0 to v1.0"),
        "{moved}"
    );
    assert!(
        moved.contains("moved 1 tenant(s) of order-service from v2.0 to v1.2"),
        "{moved}"
    );
    assert_eq!(routed_version(&server, "acme-corp", "user-service"), "v1.0");
    assert_eq!(routed_version(&server, "globex", "order-service"), "v1.2");
    // Tenants that were not on v2.0 are where they were.
    assert_eq!(routed_version(&server, "initech", "user-service"), "v1.0");
    assert_eq!(
        routed_version(&server, "acme-corp", "order-service"),
        "v1.2"
    );
}

/// README: "Every decision is kept with the figures behind it (`GetRollout`,
/// `greyrouter rollout show`)".
#[test]
fn rollout_show_prints_the_rollout_and_its_decisions() {
    let seed = example_seed();
    let server = Served::start(&["--seed", seed.to_str().expect("utf-8 path")]);
    stdout(&server.cli(&[
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
    ]));

    let shown = stdout(&server.cli(&["rollout", "show", "user-service", "r1"]));
    let mut lines = shown.lines();
    let head = lines.next().unwrap_or_default();
    assert!(
        head.starts_with("rollout r1 of user-service: v1.0 -> v2.0, running at 10% (step 1 of 3)"),
        "{shown}"
    );
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("TIME (UTC)") && header.contains("DECISION"),
        "{shown}"
    );
    let first = lines.next().unwrap_or_default();
    assert!(
        first.contains("started") && first.contains("10%"),
        "{shown}"
    );

    let json = stdout(&server.cli(&["rollout", "show", "user-service", "r1", "--output", "json"]));
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(json["id"], "r1");
    assert_eq!(json["service"], "user-service");
    assert_eq!(json["from_version"], "v1.0");
    assert_eq!(json["to_version"], "v2.0");
    assert_eq!(json["phase"], "running");
    assert_eq!(json["steps"], serde_json::json!([10.0, 50.0, 100.0]));
    assert_eq!(json["decisions"][0]["event"], "started", "{json}");

    let unknown = failure(&server.cli(&["rollout", "show", "user-service", "nope"]));
    assert!(unknown.contains("NotFound"), "{unknown}");
}

/// README: `greyrouter watch --tenant acme-corp` prints a snapshot, then every change.
#[test]
fn watch_prints_the_snapshot_then_each_change() {
    let seed = example_seed();
    let server = Served::start(&["--seed", seed.to_str().expect("utf-8 path")]);
    let (mut watch, mut lines) = server.spawn_cli(&["watch", "--tenant", "globex"]);

    let snapshot = lines.wait_for("announcing the snapshot", |l| l.contains(" snapshot: "));
    assert!(snapshot.starts_with("revision "), "{snapshot}");
    lines.wait_for("with globex on user-service v1.0", |l| {
        l.starts_with("  globex user-service -> v1.0 (default)")
    });

    stdout(&server.cli(&[
        "tenant",
        "set-version",
        "globex",
        "user-service",
        "v2.0",
        "--why",
        "watch test",
    ]));
    let change = lines.wait_for("announcing the change", |l| l.contains(" change: "));
    assert!(change.contains("1 upsert(s)"), "{change}");
    lines.wait_for("with globex on user-service v2.0", |l| {
        l.starts_with("  globex user-service -> v2.0 (pin)")
    });
    // Still watching: a change is not the end of the stream.
    assert!(watch.try_wait().expect("try_wait").is_none(), "watch ended");
    let _ = watch.kill();
    let _ = watch.wait();
}

/// A `greyrouter serve` process started here, so that the test can signal it and wait for it
/// with a deadline; killed when dropped.
struct Signalled(support::Started);

impl Signalled {
    fn start(args: &[&str]) -> Signalled {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--grpc-addr", "127.0.0.1:0"])
            .args(args);
        Signalled(
            support::launch(command, START_DEADLINE)
                .unwrap_or_else(|err| panic!("greyrouter serve: {err}")),
        )
    }

    fn log(&self) -> String {
        self.0.stderr.lock().expect("stderr").clone()
    }

    /// Waits until the process catches `signal` (its bit in `SigCgt` of /proc/<pid>/status).
    ///
    /// The server installs its SIGINT and SIGTERM handlers when its accept loop first polls
    /// the shutdown future, which may be after it printed "listening on" and even after it
    /// answered a call: a signal sent earlier kills it with the default action.
    #[cfg(target_os = "linux")]
    fn wait_until_it_catches(&self, signal: u32) {
        let until = Instant::now() + DEADLINE;
        let path = format!("/proc/{}/status", self.0.child.id());
        loop {
            let status = std::fs::read_to_string(&path).expect("/proc/<pid>/status");
            let caught = status
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                .expect("SigCgt");
            if caught & (1 << (signal - 1)) != 0 {
                return;
            }
            assert!(
                Instant::now() < until,
                "the server does not catch signal {signal} after {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Signalled {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

/// README: `serve` "stops gracefully on SIGINT or SIGTERM"; on shutdown "watch streams end at
/// once with `UNAVAILABLE`" (they do not wait for `shutdown_grace_ms`).
#[cfg(target_os = "linux")]
#[test]
fn sigint_stops_the_server_cleanly_and_ends_watch_streams_with_unavailable() {
    const SIGINT: u32 = 2;
    let seed = example_seed();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("greyrouter.toml");
    // A grace far longer than the deadline: the server can only exit in time if the watch
    // stream ended on its own.
    std::fs::write(&config, "shutdown_grace_ms = 600000\n").expect("write");
    let mut server = Signalled::start(&[
        "--seed",
        seed.to_str().expect("utf-8 path"),
        "--config",
        config.to_str().expect("utf-8 path"),
    ]);
    let cli = Cli {
        url: format!("http://{}", server.0.addr),
    };
    let (mut watch, mut lines) = cli.spawn_cli(&["watch", "--tenant", "globex"]);
    lines.wait_for("announcing the snapshot", |l| l.contains(" snapshot: "));
    server.wait_until_it_catches(SIGINT);

    let signalled = Command::new("kill")
        .args(["-INT", &server.0.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(signalled.success());

    let status = exit_within(&mut server.0.child, DEADLINE, "the server after SIGINT");
    assert!(
        status.success(),
        "SIGINT should stop cleanly: {status:?}\n{}",
        server.log()
    );
    let ended = exit_within(&mut watch, DEADLINE, "the watch after the server stopped");
    let why = stderr_of(&mut watch);
    assert_eq!(ended.code(), Some(1), "{why}");
    // Documented: UNAVAILABLE. The message is "server is shutting down; resume on another
    // router", or now and then "this router stopped following changes; resume on another
    // router" (the watch's feed closed first).
    assert!(
        why.contains("error: Unavailable: ") && why.contains("; resume on another router"),
        "{why}"
    );
    // The log is complete once the process exited and its stderr closed.
    let until = Instant::now() + DEADLINE;
    while !server.log().contains("stopped") {
        assert!(
            Instant::now() < until,
            "no \"stopped\" in the log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = server.log();
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        !log.contains("calls still open after the grace period"),
        "the watch stream held the server until the grace ran out:\n{log}"
    );
}

/// README: "Turn it on with `[schema] database_url`". Without it, every schema command fails
/// (a non-zero exit, no panic) saying what is missing.
#[test]
fn schema_commands_say_what_is_missing_when_migrations_are_off() {
    let seed = example_seed();
    let server = Served::start(&["--seed", seed.to_str().expect("utf-8 path")]);
    for command in [
        &[
            "schema",
            "plan",
            "--service",
            "user-service",
            "--version",
            "v2.0",
        ][..],
        &["schema", "status", "globex"],
        &[
            "schema",
            "upgrade",
            "--service",
            "user-service",
            "--version",
            "v2.0",
        ],
    ] {
        let stderr = failure(&server.cli(command));
        assert!(
            stderr.contains(
                "FailedPrecondition: schema migrations are not configured on this router \
                 (set [schema] database_url)"
            ),
            "{command:?}: {stderr}"
        );
    }
}

/// Starts `greyrouter serve` with the example seed and schema migrations on: the repository's
/// catalog (user-service only) and a database nobody listens on.
fn served_with_migrations(dir: &std::path::Path) -> Served {
    let seed = example_seed();
    let migrations = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    let config = dir.join("greyrouter.toml");
    std::fs::write(
        &config,
        format!(
            "[schema]\nmigrations = {:?}\ndatabase_url = \"postgres://greyrouter@127.0.0.1:1/tenant_{{tenant}}\"\n",
            migrations.to_str().expect("utf-8 path")
        ),
    )
    .expect("write");
    Served::start(&[
        "--seed",
        seed.to_str().expect("utf-8 path"),
        "--config",
        config.to_str().expect("utf-8 path"),
    ])
}

/// `schema plan` and `schema status` of a service the catalog does not hold fail, naming it.
#[test]
fn schema_commands_name_a_service_without_a_catalog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = served_with_migrations(dir.path());
    for command in [
        &[
            "schema",
            "plan",
            "--service",
            "order-service",
            "--version",
            "v1.2",
        ][..],
        &["schema", "status", "globex", "--service", "order-service"],
    ] {
        let stderr = failure(&server.cli(command));
        assert!(
            stderr.contains("NotFound: no migration catalog for service order-service"),
            "{command:?}: {stderr}"
        );
    }
}

/// README: "with `migrate` ... the schema is upgraded first and routing switches only after it
/// succeeded". When the tenant's database cannot be reached, the switch fails saying so, and
/// the tenant stays where it was.
#[test]
fn set_version_migrate_fails_clearly_and_keeps_routing_when_the_database_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = served_with_migrations(dir.path());
    let stderr = failure(&server.cli(&[
        "tenant",
        "set-version",
        "globex",
        "user-service",
        "v2.0",
        "--migrate",
    ]));
    assert!(
        stderr.contains("Unavailable: tenant database unavailable: cannot connect to"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tenant_globex"),
        "names the database: {stderr}"
    );
    assert_eq!(routed_version(&server, "globex", "user-service"), "v1.0");
}

/// `--migrate` while schema migrations are off (no `[schema] database_url`) is refused with
/// the reason, not ignored: the tenant stays where it was.
#[test]
fn set_version_migrate_while_migrations_are_off_is_refused() {
    let seed = example_seed();
    let server = Served::start(&["--seed", seed.to_str().expect("utf-8 path")]);
    let refused = server.cli(&[
        "tenant",
        "set-version",
        "globex",
        "user-service",
        "v2.0",
        "--migrate",
    ]);
    let text = failure(&refused);
    assert!(
        text.contains("FailedPrecondition")
            && text.contains("schema migrations are not configured"),
        "{text}"
    );
    assert_eq!(routed_version(&server, "globex", "user-service"), "v1.0");
}

/// The commands the README's "Try it with the CLI" section names: the first word after
/// `greyrouter` in its examples, and the `command sub|sub` spans of "Other commands".
fn readme_commands() -> Vec<Vec<String>> {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let section = readme
        .split("## Try it with the CLI")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a \"Try it with the CLI\" section");
    let mut commands = Vec::new();
    for line in section.lines() {
        if let Some(example) = line.strip_prefix("greyrouter ")
            && let Some(command) = example.split_whitespace().next()
        {
            commands.push(vec![command.to_owned()]);
        }
    }
    let others = section
        .split("Other commands:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("an \"Other commands\" list");
    // A command is a lowercase word; other spans are flags, variables or examples.
    let word = |text: &str| {
        !text.starts_with('-') && text.chars().all(|c| c.is_ascii_lowercase() || c == '-')
    };
    for span in others.split('`').skip(1).step_by(2) {
        let words: Vec<&str> = span.split(' ').collect();
        match words[..] {
            [command] if word(command) => commands.push(vec![command.to_owned()]),
            [command, subcommands] if word(command) && command != "greyrouter" => {
                for sub in subcommands.split('|') {
                    commands.push(vec![command.to_owned(), sub.to_owned()]);
                }
            }
            _ => {}
        }
    }
    commands.sort();
    commands.dedup();
    commands
}

/// README: "`greyrouter help <command>` describes each" of the commands it names.
#[test]
fn every_command_the_readme_names_exists_and_has_help() {
    let commands = readme_commands();
    // The parse found the lists (and so checks something).
    assert!(
        commands.len() >= 25,
        "only {} commands found in the README: {commands:?}",
        commands.len()
    );
    for needed in [&["rollout", "show"][..], &["watch"], &["rollback"]] {
        assert!(
            commands.iter().any(|c| c == needed),
            "{needed:?} not found in the README: {commands:?}"
        );
    }
    for command in &commands {
        let output = Command::new(BIN)
            .arg("help")
            .args(command)
            .stdin(Stdio::null())
            .output()
            .expect("run greyrouter");
        let help = stdout(&output);
        let usage = format!("Usage: greyrouter {} ", command.join(" "));
        assert!(help.contains(&usage), "{command:?}:\n{help}");
    }
}

/// README "Service discovery": an instance registered with a TTL is kept by heartbeats from the
/// CLI, an unknown id fails the command, and `discovery status` answers.
#[test]
fn heartbeats_and_discovery_status_from_the_cli() {
    let seed = example_seed();
    let server = Served::start(&["--seed", seed.to_str().expect("utf-8 path")]);
    stdout(&server.cli(&[
        "instance",
        "register",
        "--service",
        "order-service",
        "--version",
        "v1.2",
        "--id",
        "order-ttl-1",
        "--address",
        "10.0.3.40:8080",
        "--ttl-seconds",
        "60",
    ]));
    let renewed = stdout(&server.cli(&["instance", "heartbeat", "order-service", "order-ttl-1"]));
    assert!(renewed.contains("1 instance(s) renewed"), "{renewed}");
    // An unknown id: the command fails and names it.
    let refused = failure(&server.cli(&[
        "instance",
        "heartbeat",
        "order-service",
        "order-ttl-1",
        "nobody",
    ]));
    assert!(refused.contains("nobody"), "{refused}");
    let status = stdout(&server.cli(&["discovery", "status"]));
    assert!(status.contains("SOURCE"), "{status}");
}

/// `--store durable`: a change acknowledged before a SIGKILL is there after the restart, and a
/// second server on the same data directory is refused.
#[test]
fn the_durable_store_keeps_acknowledged_changes_across_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let mut server = Served::start(&["--store", "durable", "--data-dir", data]);
    stdout(&server.cli(&[
        "tenant", "upsert", "kept", "--name", "Kept", "--region", "eu",
    ]));
    // A second process on the same directory: refused before it serves.
    let second = Command::new(BIN)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--store",
            "durable",
            "--data-dir",
            data,
        ])
        .output()
        .expect("run");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use"), "{stderr}");
    server.process.kill();
    server.process.restart();
    let tenants = stdout(&server.cli(&["tenant", "list", "--output", "json"]));
    assert!(tenants.contains("\"kept\""), "{tenants}");
}

/// README: "`status TENANT` (which also says what to do about a half-applied migration),
/// `repair TENANT --service S`", on MySQL/MariaDB. A migration stopped half-way by a duplicate
/// makes `schema upgrade` fail; `schema status` names the statement and the repair command;
/// after the fix, `schema repair` and a second upgrade resume it.
#[test]
fn schema_status_says_how_to_repair_a_half_applied_mysql_migration_and_repair_does() {
    let databases = greyrouter_test_support::MysqlDatabases::create();
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = dir.path().join("migrations/user-service");
    std::fs::create_dir_all(&catalog).expect("catalog");
    for (name, text) in [
        (
            "0001_create_users.up.sql",
            "CREATE TABLE users (id BIGINT PRIMARY KEY, email VARCHAR(200) NOT NULL);\n",
        ),
        (
            "0002_unique_email.up.sql",
            "CREATE TABLE audit (id BIGINT PRIMARY KEY);\nCREATE UNIQUE INDEX users_email ON users (email);\n",
        ),
        ("versions.toml", "[versions]\n\"v1.0\" = 1\n\"v2.0\" = 2\n"),
    ] {
        std::fs::write(catalog.join(name), text).expect("write");
    }
    let config = dir.path().join("greyrouter.toml");
    std::fs::write(
        &config,
        format!(
            "[schema]\nmigrations = {:?}\ndatabase_url = {:?}\nschema = \"{}_{{tenant}}\"\n",
            dir.path().join("migrations").to_str().expect("utf-8 path"),
            databases.url(),
            databases.prefix()
        ),
    )
    .expect("write the config");
    let seed = example_seed();
    let server = Served::start(&[
        "--seed",
        seed.to_str().expect("utf-8 path"),
        "--config",
        config.to_str().expect("utf-8 path"),
    ]);
    let upgrade = |to: &str| {
        server.cli(&[
            "schema",
            "upgrade",
            "--service",
            "user-service",
            "--to-schema",
            to,
            "--tenant",
            "globex",
        ])
    };
    stdout(&upgrade("1"));
    databases.sql(&format!(
        "INSERT INTO `{}_globex`.users VALUES (1, 'a@x'), (2, 'a@x')",
        databases.prefix()
    ));
    let stderr = failure(&upgrade("2"));
    assert!(stderr.contains("1 of 1 tenant(s) failed"), "{stderr}");

    let status = stdout(&server.cli(&["schema", "status", "globex", "--service", "user-service"]));
    assert!(status.contains("half-applied"), "{status}");
    assert!(status.contains("statement 2 failed"), "{status}");
    assert!(
        status.contains("greyrouter schema repair globex --service user-service"),
        "{status}"
    );

    databases.sql(&format!(
        "UPDATE `{}_globex`.users SET email = 'b@x' WHERE id = 2",
        databases.prefix()
    ));
    let repaired =
        stdout(&server.cli(&["schema", "repair", "globex", "--service", "user-service"]));
    assert!(repaired.contains("1 history row(s) changed"), "{repaired}");
    assert!(repaired.contains("resumes at statement 2"), "{repaired}");
    stdout(&upgrade("2"));
    let status = stdout(&server.cli(&[
        "schema",
        "status",
        "globex",
        "--service",
        "user-service",
        "--output",
        "json",
    ]));
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status[0]["current"], 2, "{status}");
    assert_eq!(status[0]["advice"], "", "{status}");
}
