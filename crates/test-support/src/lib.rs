//! Test harness: real servers for the tests that need them, each on its own free loopback port
//! and in its own temporary directory, so tests run in parallel without touching the machine's
//! own services.
//!
//! PostgreSQL tests use the machine's server instead, each in a database of its own
//! ([`PostgresDatabase`]), dropped at the end.
//!
//! A missing server binary is a test failure with a message saying what to install, never a
//! silent skip (`.ci/run` and `scripts/test` install what is missing). Tests of the contract
//! outside Rust (Python, grpcurl) call [`require_tool`]: a missing tool fails them too, unless
//! the caller opts out by naming it in [`SKIP_MISSING`].
//!
//! A server started here is this test's own: the harness checks that the process answering on
//! the port is the child it spawned (a parallel test may take a free port between the moment
//! it is chosen and the moment the server binds it), and tries another port when it is not.
//!
//! Readiness is awaited with [`eventually`]: a condition polled until a deadline, not a fixed
//! sleep.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub fn eventually<T>(what: &str, deadline: Duration, check: impl FnMut() -> Option<T>) -> T {
    poll_until(deadline, check).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// Polls `check` (for an external process, which has no event to await) until it returns
/// `Some`, or returns `None` once `within` has passed.
pub fn poll_until<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if start.elapsed() >= within {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Percent-encodes a query parameter value.
pub fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The environment variable through which a caller lets the tests of missing external tools
/// skip instead of failing: a comma-separated list of tool names, `python` (python3 with grpcio
/// and grpcio-tools), `grpcurl`, `chromium` (with chromium-driver), e.g.
/// `GREYROUTER_SKIP_MISSING=python,grpcurl`. Unset, every missing tool fails its tests. Redis and PostgreSQL have no opt-out.
pub const SKIP_MISSING: &str = "GREYROUTER_SKIP_MISSING";

/// Returns whether a test that needs the external tool `tool` can run: `true` when it is
/// `usable`; when it is not, panics saying what is missing and how to install it, unless
/// [`SKIP_MISSING`] names `tool`: then prints why the test skips and returns `false`.
pub fn require_tool(tool: &str, usable: bool, missing: &str, install: &str) -> bool {
    let skip = std::env::var(SKIP_MISSING).ok();
    match tool_decision(tool, usable, skip.as_deref()) {
        ToolDecision::Run => true,
        ToolDecision::Skip => {
            println!(
                "skipping: {missing} is missing; {install} (scripts/test does it); \
                 {SKIP_MISSING}={} lets it skip",
                skip.unwrap_or_default()
            );
            false
        }
        ToolDecision::Fail => panic!(
            "{missing} is missing: {install} (scripts/test does it), \
             or set {SKIP_MISSING}={tool} to skip the tests that need it"
        ),
    }
}

/// What a test does about an external tool.
#[derive(Debug, PartialEq, Eq)]
enum ToolDecision {
    Run,
    Skip,
    Fail,
}

/// Decides from whether the tool is usable and the value of [`SKIP_MISSING`], if set.
fn tool_decision(tool: &str, usable: bool, skip: Option<&str>) -> ToolDecision {
    if usable {
        ToolDecision::Run
    } else if skip.is_some_and(|list| list.split(',').any(|name| name.trim() == tool)) {
        ToolDecision::Skip
    } else {
        ToolDecision::Fail
    }
}

/// Returns a loopback port that was free a moment ago; with `bus`, port + 10000 was free too
/// (Redis Cluster's bus port).
pub fn free_port(bus: bool) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local address").port();
        if !bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn binary(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{name} is not installed: install Debian's redis-server package (scripts/test does)")
    })
}

/// Sends one command to a Redis server over RESP and returns the raw reply, or `None` when the
/// server does not answer.
pub fn redis_command(port: u16, args: &[&str]) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buffer[..n]);
        if reply_complete(&reply) {
            break;
        }
    }
    Some(String::from_utf8_lossy(&reply).into_owned())
}

/// Whether a RESP reply is complete (enough for the simple, bulk and error replies used here).
fn reply_complete(reply: &[u8]) -> bool {
    let text = String::from_utf8_lossy(reply);
    match text.chars().next() {
        Some('+' | '-' | ':') => text.ends_with("\r\n"),
        Some('$') => {
            let Some((header, rest)) = text.split_once("\r\n") else {
                return false;
            };
            match header[1..].parse::<i64>() {
                Ok(len) if len < 0 => true,
                Ok(len) => rest.len() >= len as usize + 2,
                Err(_) => true,
            }
        }
        Some(_) => text.ends_with("\r\n"),
        None => false,
    }
}

/// One `redis-server` process.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    /// Arguments before `--port <port> --logfile redis.log`.
    args: Vec<String>,
    child: Option<Child>,
}

/// How many ports a server tries before giving up, each taken by another process.
const PORT_ATTEMPTS: usize = 10;

/// The log file of a server, in its directory.
const REDIS_LOG: &str = "redis.log";

/// The port a server was to listen on belongs to another process (the text says why).
#[derive(Debug)]
struct PortTaken(String);

impl RedisServer {
    /// Starts a standalone server on a free port.
    pub fn start() -> RedisServer {
        RedisServer::start_on_free_port(false, &[])
    }

    /// Starts a server on `port` with extra arguments; panics when another process holds the
    /// port.
    pub fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        RedisServer::launch(standalone_args(extra), [port])
    }

    /// Starts a server with extra arguments on a free port (with `bus`, port + 10000 free too),
    /// trying another one when a parallel test took it first.
    fn start_on_free_port(bus: bool, extra: &[&str]) -> RedisServer {
        RedisServer::launch(
            standalone_args(extra),
            std::iter::repeat_with(|| free_port(bus)),
        )
    }

    /// Starts `redis-server` with `args` on the first of `ports` where the server that
    /// answers is the child itself.
    fn launch(args: Vec<String>, ports: impl IntoIterator<Item = u16>) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        RedisServer::launch_in(dir, args, ports)
    }

    fn launch_in(
        dir: tempfile::TempDir,
        args: Vec<String>,
        ports: impl IntoIterator<Item = u16>,
    ) -> RedisServer {
        let mut server = RedisServer {
            port: 0,
            dir,
            args,
            child: None,
        };
        let mut taken = Vec::new();
        for port in ports.into_iter().take(PORT_ATTEMPTS) {
            server.port = port;
            match server.spawn() {
                Ok(()) => return server,
                Err(PortTaken(why)) => taken.push(format!("port {port}: {why}")),
            }
        }
        panic!(
            "redis-server found no port of its own:\n{}",
            taken.join("\n")
        )
    }

    /// Spawns the server on its port and waits until it answers PING. Returns [`PortTaken`]
    /// when the server answering on the port is not the child (another test's) or the child
    /// could not bind it; panics when the child fails for any other reason.
    fn spawn(&mut self) -> Result<(), PortTaken> {
        let port = self.port;
        let log = self.dir.path().join(REDIS_LOG);
        // The log of this attempt only.
        let _ = std::fs::remove_file(&log);
        let mut child = Command::new(binary("redis-server"))
            .args(&self.args)
            .args(["--port", &port.to_string(), "--logfile", REDIS_LOG])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let pid = child.id();
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
        // Whichever comes first: the child exits, or a server answers on the port with its
        // process id (INFO answers while a dump loads; PING does not).
        let answer = eventually(
            &format!("redis-server on port {port}"),
            READY_DEADLINE,
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(Err(status));
                }
                redis_command(port, &["INFO", "server"])
                    .and_then(|reply| info_field(&reply, "process_id")?.parse::<u32>().ok())
                    .map(Ok)
            },
        );
        match answer {
            Ok(answering) if answering == pid => {}
            Ok(answering) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PortTaken(format!(
                    "another redis-server (pid {answering}) answers there, not the child \
                     (pid {pid}); the child's log:\n{}",
                    read_log()
                )));
            }
            Err(status) => {
                let text = read_log();
                if text.contains("Address already in use") {
                    return Err(PortTaken(format!(
                        "the child (pid {pid}) could not bind it ({status}):\n{text}"
                    )));
                }
                panic!("redis-server on port {port} exited ({status}); its log:\n{text}");
            }
        }
        self.child = Some(child);
        eventually(
            &format!("redis-server on port {port} to answer PING"),
            READY_DEADLINE,
            || redis_command(port, &["PING"]).filter(|r| r.starts_with("+PONG")),
        );
        Ok(())
    }

    /// Starts a replica of `master` on a free port and waits until it is in sync.
    pub fn start_replica_of(master: &RedisServer) -> RedisServer {
        let master_port = master.port().to_string();
        let replica =
            RedisServer::start_on_free_port(false, &["--replicaof", "127.0.0.1", &master_port]);
        let replica_port = replica.port();
        eventually("replica in sync", READY_DEADLINE, || {
            redis_command(replica_port, &["INFO", "replication"])
                .filter(|r| r.contains("master_link_status:up"))
        });
        replica
    }

    /// Returns the port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("redis on port {} is not running", self.port))
    }

    /// Freezes the process (SIGSTOP): its connections stay open but it answers nothing, nor
    /// acknowledges replication, until [`RedisServer::resume`].
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }

    /// Returns the working directory (logs, dumps).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Returns `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Sends a command to this server.
    pub fn command(&self, args: &[&str]) -> String {
        redis_command(self.port, args)
            .unwrap_or_else(|| panic!("redis on port {} does not answer", self.port))
    }

    /// Stops the server abruptly (no save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server after saving its data to `dump.rdb` in its directory.
    pub fn shutdown_saving(&mut self) {
        let _ = redis_command(self.port, &["SHUTDOWN", "SAVE"]);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (loading `dump.rdb` if saved);
    /// panics, saying so, when another process took the port while the server was down.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(PortTaken(why)) = self.spawn() {
            panic!(
                "cannot restart redis-server on port {}: another process took the port while \
                 it was down: {why}",
                self.port
            );
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Returns the arguments of a server that keeps nothing on disk, plus `extra`.
fn standalone_args(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ]
    .map(str::to_owned)
    .into();
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

/// Returns the value of `field` in an `INFO` reply.
fn info_field<'a>(reply: &'a str, field: &str) -> Option<&'a str> {
    reply
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':').map(str::trim))
}

/// Sends a signal to a process with `kill`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}

/// A Redis Cluster of three masters on loopback ports.
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them into one cluster.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with_replicas(0)
    }

    /// Starts three masters with `replicas` replicas each and joins them into one cluster;
    /// waits until every replica is in sync.
    pub fn start_with_replicas(replicas: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                RedisServer::start_on_free_port(
                    true,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = Command::new(binary("redis-cli"))
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        for node in &nodes {
            let port = node.port();
            eventually("cluster_state:ok", READY_DEADLINE, || {
                redis_command(port, &["CLUSTER", "INFO"]).filter(|r| r.contains("cluster_state:ok"))
            });
            eventually("replica in sync", READY_DEADLINE, || {
                redis_command(port, &["INFO", "replication"])
                    .filter(|r| r.contains("role:master") || r.contains("master_link_status:up"))
            });
        }
        RedisCluster { nodes }
    }

    /// Returns a replica of the master that serves `key`'s slot.
    pub fn replica_of_key(&self, key: &str) -> &RedisServer {
        let any = self.nodes[0].port();
        let slot: u16 = redis_command(any, &["CLUSTER", "KEYSLOT", key])
            .and_then(|r| r.trim().trim_start_matches(':').parse().ok())
            .expect("CLUSTER KEYSLOT");
        let nodes = redis_command(any, &["CLUSTER", "NODES"]).expect("CLUSTER NODES");
        // Lines: id ip:port@bus flags master-id ping pong epoch state [slot ranges...]
        let lines: Vec<Vec<&str>> = nodes
            .lines()
            .map(|line| line.split_whitespace().collect())
            .filter(|fields: &Vec<&str>| fields.len() >= 8)
            .collect();
        let serves = |fields: &Vec<&str>| {
            fields[8..].iter().any(|range| {
                let (low, high) = range.split_once('-').unwrap_or((range, range));
                match (low.parse::<u16>(), high.parse::<u16>()) {
                    (Ok(low), Ok(high)) => (low..=high).contains(&slot),
                    _ => false,
                }
            })
        };
        let master = lines
            .iter()
            .find(|fields| fields[2].contains("master") && serves(fields))
            .map(|fields| fields[0])
            .expect("the master of the slot");
        let port: u16 = lines
            .iter()
            .find(|fields| fields[2].contains("slave") && fields[3] == master)
            .and_then(|fields| fields[1].split(['@', ':']).nth(1)?.parse().ok())
            .expect("a replica of that master");
        self.nodes
            .iter()
            .find(|node| node.port() == port)
            .expect("the replica is one of the nodes")
    }

    /// Returns `redis-cluster://127.0.0.1:<port>?node=...` naming every node.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port());
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", node.port()));
        }
        url
    }
}

/// A master, a replica and one sentinel watching them as `mymaster`.
pub struct RedisSentinel {
    /// The initial master.
    pub master: RedisServer,
    /// The initial replica.
    pub replica: RedisServer,
    /// The sentinel.
    pub sentinel: RedisServer,
}

/// The sentinel's name for the monitored master.
pub const SENTINEL_SERVICE: &str = "mymaster";

impl RedisSentinel {
    /// Starts the three processes and waits until the sentinel sees the replica.
    pub fn start() -> RedisSentinel {
        let master = RedisServer::start();
        let master_port = master.port().to_string();
        let replica = RedisServer::start_replica_of(&master);
        let replica_port = replica.port();
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("sentinel.conf");
        // The port is given on the command line (each attempt its own).
        std::fs::write(
            &config,
            format!(
                "bind 127.0.0.1\nsentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                 sentinel failover-timeout {SENTINEL_SERVICE} 5000\n"
            ),
        )
        .expect("write sentinel.conf");
        let config = config.to_string_lossy().into_owned();
        let sentinel = RedisServer::launch_in(
            dir,
            vec![config, "--sentinel".into()],
            std::iter::repeat_with(|| free_port(false)),
        );
        let sentinel_port = sentinel.port();
        eventually("sentinel sees the replica", READY_DEADLINE, || {
            redis_command(sentinel_port, &["SENTINEL", "REPLICAS", SENTINEL_SERVICE])
                .filter(|r| r.contains(&replica_port.to_string()))
        });
        RedisSentinel {
            master,
            replica,
            sentinel,
        }
    }

    /// Returns `redis-sentinel://127.0.0.1:<sentinel port>/0?sentinelServiceName=mymaster`.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={SENTINEL_SERVICE}",
            self.sentinel.port()
        )
    }

    /// Returns the port of the current master as the sentinel reports it.
    pub fn master_port(&self) -> Option<u16> {
        let reply = redis_command(
            self.sentinel.port(),
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE],
        )?;
        reply
            .split("\r\n")
            .filter(|line| !line.starts_with(['*', '$']))
            .filter_map(|line| line.parse().ok())
            .next()
    }

    /// Cuts the replica off the master so that the changes made from now on reach only the
    /// master: freezes the replica (SIGSTOP), then has the master drop its replication link, so
    /// nothing more is even buffered towards it. [`RedisSentinel::fail_over_losing_changes`]
    /// then promotes it without those changes.
    pub fn cut_replication(&self) {
        self.replica.pause();
        let killed = self.master.command(&["CLIENT", "KILL", "TYPE", "replica"]);
        assert!(killed.starts_with(':'), "CLIENT KILL: {killed}");
    }

    /// Kills the master (SIGKILL), resumes the replica cut off by
    /// [`RedisSentinel::cut_replication`] and waits until the sentinel promoted it: every change
    /// made since the cut is lost, and its revisions will be reused.
    pub fn fail_over_losing_changes(&mut self) {
        self.master.kill();
        self.replica.resume();
        let sentinel_port = self.sentinel.port();
        let replica_port = self.replica.port();
        // The sentinel may start the failover by itself once the master is down; asking again
        // meanwhile is harmless (INPROG, or NOGOODSLAVE until it hears from the replica).
        eventually("the lagging replica promoted", READY_DEADLINE, || {
            if self.master_port() == Some(replica_port) {
                return Some(());
            }
            let _ = redis_command(sentinel_port, &["SENTINEL", "FAILOVER", SENTINEL_SERVICE]);
            None
        });
        eventually("the new master accepts writes", READY_DEADLINE, || {
            redis_command(replica_port, &["INFO", "replication"])
                .filter(|r| r.contains("role:master"))
        });
    }

    /// Forces a failover and waits until the replica is the master.
    pub fn failover(&self) {
        // Right after start the sentinel may not yet count the replica as promotable
        // (NOGOODSLAVE) until it has heard from it directly.
        let sentinel_port = self.sentinel.port();
        eventually("the sentinel to accept a failover", READY_DEADLINE, || {
            redis_command(sentinel_port, &["SENTINEL", "FAILOVER", SENTINEL_SERVICE])
                .filter(|reply| reply.starts_with("+OK"))
        });
        let replica_port = self.replica.port();
        eventually("the replica promoted", READY_DEADLINE, || {
            (self.master_port() == Some(replica_port)).then_some(())
        });
        eventually("the new master accepts writes", READY_DEADLINE, || {
            redis_command(replica_port, &["INFO", "replication"])
                .filter(|r| r.contains("role:master"))
        });
    }
}

/// The PostgreSQL server the database tests use: the machine's own, with trust authentication.
pub const POSTGRES_HOST: &str = "127.0.0.1";
/// Its port.
pub const POSTGRES_PORT: u16 = 5432;
/// Its superuser, who creates and drops the test databases.
pub const POSTGRES_USER: &str = "postgres";

/// A database of its own for one test, `grey_test_<random>`, on the machine's PostgreSQL server
/// ([`POSTGRES_HOST`]:[`POSTGRES_PORT`], user [`POSTGRES_USER`], trust authentication); dropped,
/// with any session still connected to it, when the value is dropped.
///
/// Needs `psql` (Debian's postgresql-client) and a running server; without either, creating one
/// panics saying which is missing, under CI and everywhere else: never a silent skip.
pub struct PostgresDatabase {
    name: String,
}

impl PostgresDatabase {
    /// Creates a fresh, empty database.
    pub fn create() -> PostgresDatabase {
        let name = format!("grey_test_{:016x}", unique_number());
        postgres_admin(&format!("CREATE DATABASE \"{name}\""))
            .unwrap_or_else(|why| panic!("cannot create the test database {name}: {why}"));
        PostgresDatabase { name }
    }

    /// Creates a fresh, empty database named `name`, dropped like the others: for a database
    /// per tenant, name them after one from [`PostgresDatabase::create`] (`<its name>_<tenant>`)
    /// and configure `<its url>_{tenant}`.
    pub fn create_named(name: &str) -> PostgresDatabase {
        postgres_admin(&format!("CREATE DATABASE \"{name}\""))
            .unwrap_or_else(|why| panic!("cannot create the test database {name}: {why}"));
        PostgresDatabase {
            name: name.to_owned(),
        }
    }

    /// Returns the database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns a `postgres://` URL of the database (no password: trust authentication).
    pub fn url(&self) -> String {
        format!(
            "postgres://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{}",
            self.name
        )
    }

    /// Runs SQL in the database with `psql` and returns its unaligned, tuples-only output
    /// (`|` between columns, one row a line); panics with the server's message when it fails.
    pub fn psql(&self, sql: &str) -> String {
        psql(&self.name, sql).unwrap_or_else(|why| panic!("psql in {}: {why}", self.name))
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(why) = postgres_admin(&drop) {
            eprintln!("cannot drop the test database {}: {why}", self.name);
        }
    }
}

/// A session kept open on a test database: `psql` reading statements from a pipe, for a test
/// that holds something across calls (an advisory lock as a gate that migrations wait at).
///
/// Statements run in order but asynchronously: wait for their effect (in `pg_locks`, say) with
/// [`PostgresDatabase::psql`] before relying on it. The session ends when the value is dropped.
pub struct PostgresSession {
    child: Child,
}

impl PostgresSession {
    /// Opens a session on `database`.
    pub fn open(database: &PostgresDatabase) -> PostgresSession {
        let child = Command::new("psql")
            .args(["-X", "-q", "-A", "-t"])
            .args(["-h", POSTGRES_HOST, "-p", &POSTGRES_PORT.to_string()])
            .args(["-U", POSTGRES_USER, "-d", database.name()])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot run psql (install Debian's postgresql-client package): {err}")
            });
        PostgresSession { child }
    }

    /// Sends one statement (or several, each ending with `;`) to the session.
    pub fn send(&mut self, sql: &str) {
        let stdin = self.child.stdin.as_mut().expect("psql's stdin");
        stdin
            .write_all(format!("{sql}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("send a statement to psql");
    }
}

impl Drop for PostgresSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs SQL in the `postgres` maintenance database.
fn postgres_admin(sql: &str) -> Result<String, String> {
    psql("postgres", sql)
}

fn psql(database: &str, sql: &str) -> Result<String, String> {
    let mut command = Command::new("psql");
    command
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", POSTGRES_HOST, "-p", &POSTGRES_PORT.to_string()])
        .args(["-U", POSTGRES_USER, "-d", database, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10");
    run_client(
        command,
        "psql is not installed: install Debian's postgresql-client package (and a PostgreSQL \
         server listening on 127.0.0.1:5432 with trust authentication for user postgres)",
        &["connection to server", "could not connect"],
        &format!(
            "no PostgreSQL server accepts user {POSTGRES_USER} at {POSTGRES_HOST}:{POSTGRES_PORT} \
             with trust authentication (the database tests need one running)"
        ),
    )
}

/// Runs a database's command-line client and returns its output, trimmed; when it fails,
/// `missing` if it is not installed, `unreachable` and what it said if its error holds one of
/// `unreachable_when`, else what it said.
fn run_client(
    mut command: Command,
    missing: &str,
    unreachable_when: &[&str],
    unreachable: &str,
) -> Result<String, String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = match command.stdin(Stdio::null()).output() {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(missing.to_owned()),
        Err(err) => return Err(format!("cannot run {program}: {err}")),
    };
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if unreachable_when
        .iter()
        .any(|marker| stderr.contains(marker))
    {
        Err(format!("{unreachable}: {}", stderr.trim()))
    } else {
        Err(stderr.trim().to_owned())
    }
}

/// Returns a number no other call returns, in this process or a concurrent one, for naming
/// throwaway databases.
fn unique_number() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};

    static CREATED: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded randomly per process; the counter and the pid tell apart the
    // databases of one process and of concurrent ones.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(CREATED.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// The machine's MySQL or MariaDB server, which the schema tests use.
pub const MYSQL_HOST: &str = "127.0.0.1";
/// Its port.
pub const MYSQL_PORT: u16 = 3306;
/// Its user (empty password).
pub const MYSQL_USER: &str = "root";

/// A set of throwaway MySQL databases on the machine's MySQL/MariaDB server
/// ([`MYSQL_HOST`]:[`MYSQL_PORT`], user [`MYSQL_USER`], empty password): every database whose
/// name starts with [`MysqlDatabases::prefix`] and `_`, the tenants' schemas of one test;
/// dropped with it. A missing server or client panics saying which: never a silent skip.
#[derive(Debug)]
pub struct MysqlDatabases {
    prefix: String,
}

impl MysqlDatabases {
    /// Returns a fresh prefix, owned by no database yet.
    pub fn create() -> MysqlDatabases {
        // Short: a tenant's schema is `<prefix>_<tenant>`, at most 64 characters.
        let prefix = format!("gt{:012x}", unique_number() >> 16);
        // Fails loudly when the server is missing.
        mysql_query(&format!("SELECT '{prefix}'"))
            .unwrap_or_else(|why| panic!("cannot reach the MySQL server: {why}"));
        MysqlDatabases { prefix }
    }

    /// Returns the prefix of the databases: name schemas `<prefix>_...`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Returns a `mysql://` URL of the server, naming no database.
    pub fn url(&self) -> String {
        format!("mysql://{MYSQL_USER}@{MYSQL_HOST}:{MYSQL_PORT}/")
    }

    /// Runs SQL with the `mariadb` client and returns its output (tab between columns, one row
    /// a line, no headers); panics with the server's message when it fails.
    pub fn sql(&self, sql: &str) -> String {
        mysql_query(sql).unwrap_or_else(|why| panic!("mariadb: {why}\n{sql}"))
    }
}

impl Drop for MysqlDatabases {
    fn drop(&mut self) {
        let listed = mysql_query(&format!(
            "SELECT schema_name FROM information_schema.schemata \
             WHERE schema_name LIKE '{}\\_%'",
            self.prefix
        ));
        let names = match listed {
            Ok(names) => names,
            Err(why) => {
                eprintln!("cannot list the test databases {}_*: {why}", self.prefix);
                return;
            }
        };
        for name in names.lines().filter(|name| !name.is_empty()) {
            if let Err(why) = mysql_query(&format!("DROP DATABASE IF EXISTS `{name}`")) {
                eprintln!("cannot drop the test database {name}: {why}");
            }
        }
    }
}

fn mysql_query(sql: &str) -> Result<String, String> {
    let mut command = Command::new("mariadb");
    command
        .args([
            "-h",
            MYSQL_HOST,
            "-P",
            &MYSQL_PORT.to_string(),
            "-u",
            MYSQL_USER,
        ])
        .args([
            "--protocol=tcp",
            "--connect-timeout=10",
            "-N",
            "-B",
            "-e",
            sql,
        ]);
    run_client(
        command,
        "the mariadb client is not installed: install Debian's mariadb-client package (and a \
         MariaDB or MySQL server on 127.0.0.1:3306, user root, empty password)",
        &["Can't connect", "Access denied"],
        &format!(
            "no MySQL/MariaDB server accepts user {MYSQL_USER} with an empty password at \
             {MYSQL_HOST}:{MYSQL_PORT} (the schema tests need one running)"
        ),
    )
}

/// One Nacos-compatible server (`rnacos`) on free ports with a temporary data directory.
///
/// The binary is `$GREYROUTER_RNACOS`, else `rnacos` in the tool cache `scripts/test` installs
/// it into (`$XDG_CACHE_HOME/greyrouter/tools/bin`, or `~/.cache/...`), else on `PATH`. Missing,
/// the test fails saying how to install it: never a silent skip.
pub struct NacosServer {
    http_port: u16,
    grpc_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// With auth on: the admin's username and password.
    auth: Option<(String, String)>,
}

/// Whether process `pid` holds the listening TCP socket on `port` (from `/proc`): a server
/// that answers on a port chosen a moment ago may be another test's.
pub fn owns_listener(pid: u32, port: u16) -> bool {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local = fields.get(1)?;
                    let listening = fields.get(3)? == &"0A";
                    let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
                    (listening && local_port == port)
                        .then(|| fields.get(9).map(|i| (*i).to_owned()))?
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            inodes
                .iter()
                .any(|inode| target == format!("socket:[{inode}]"))
        })
    })
}

/// Where `scripts/test` installs rnacos.
fn rnacos_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("GREYROUTER_RNACOS") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")));
    if let Some(cached) = cache.map(|c| c.join("greyrouter/tools/bin/rnacos"))
        && cached.is_file()
    {
        return cached;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("rnacos"))
            .find(|path| path.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "rnacos is not installed: run scripts/test (it installs it with \
             `cargo install rnacos --locked --root ~/.cache/greyrouter/tools`), or set GREYROUTER_RNACOS"
        )
    })
}

/// Sends one HTTP/1.0 request to 127.0.0.1:`port` and returns the status code and body.
pub fn http_request(port: u16, method: &str, path_and_query: &str) -> Option<(u16, String)> {
    http_request_with(port, method, path_and_query, "")
}

/// Sends one HTTP/1.0 request with a JSON `body` (none when empty) to 127.0.0.1:`port`.
pub fn http_request_with(
    port: u16,
    method: &str,
    path_and_query: &str,
    body: &str,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "{method} {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// One `etcd` (Debian's `etcd-server`) on free ports with a temporary data directory.
pub struct EtcdServer {
    client_port: u16,
    _dir: tempfile::TempDir,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts a single-member cluster and waits until it answers.
    pub fn start() -> EtcdServer {
        let etcd = std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("etcd"))
                    .find(|path| path.is_file())
            })
            .unwrap_or_else(|| {
                panic!("etcd is not installed: install Debian's etcd-server package (scripts/test does)")
            });
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            let dir = tempfile::tempdir().expect("temporary directory");
            let client_port = free_port(false);
            let peer_port = loop {
                let port = free_port(false);
                if port != client_port {
                    break port;
                }
            };
            let client = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let child = Command::new(&etcd)
                .args(["--name", "test", "--data-dir"])
                .arg(dir.path().join("data"))
                .args([
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                ])
                .args(["--initial-cluster", &format!("test={peer}")])
                .args(["--log-level", "error"])
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn etcd");
            let pid = child.id();
            let mut server = EtcdServer {
                client_port,
                _dir: dir,
                child: Some(child),
            };
            let ready = poll_until(READY_DEADLINE, || {
                if let Some(child) = server.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    return Some(Err(format!(
                        "etcd exited at start ({status}) on port {client_port}"
                    )));
                }
                let healthy = http_request(client_port, "GET", "/health")
                    .is_some_and(|(status, body)| status == 200 && body.contains("true"));
                (healthy && owns_listener(pid, client_port)).then_some(Ok(()))
            })
            .unwrap_or_else(|| {
                Err(format!(
                    "etcd on port {client_port} did not answer as its own"
                ))
            });
            match ready {
                Ok(()) => return server,
                // Another test's server took a port between the choice and the bind.
                Err(why) => failures.push(why),
            }
        }
        panic!("etcd found no ports of its own:\n{}", failures.join("\n"))
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Posts `body` to the JSON gateway (`/v3/...`); panics unless it answers 200.
    pub fn call(&self, path: &str, body: &str) -> String {
        match http_request_with(self.client_port, "POST", path, body) {
            Some((200, reply)) => reply,
            other => panic!("etcd POST {path}: {other:?}"),
        }
    }

    /// Stops the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl NacosServer {
    /// Starts a server and waits until its naming API answers.
    pub fn start() -> NacosServer {
        NacosServer::launch(None)
    }

    /// Starts a server whose Open API needs a login, with an admin `username` and `password`.
    pub fn start_with_auth(username: &str, password: &str) -> NacosServer {
        // rnacos creates the admin user a moment after it answers, and now and then not at all:
        // a server whose admin cannot log in within a while is replaced by a fresh one.
        for _ in 0..3 {
            let server = NacosServer::launch(Some((username.to_owned(), password.to_owned())));
            if server.try_login(Duration::from_secs(10)).is_some() {
                return server;
            }
        }
        panic!("rnacos never created its admin user (three fresh servers)")
    }

    fn launch(auth: Option<(String, String)>) -> NacosServer {
        let mut server = NacosServer {
            http_port: 0,
            grpc_port: 0,
            dir: tempfile::tempdir().expect("temporary directory"),
            child: None,
            auth,
        };
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            server.http_port = free_port(false);
            server.grpc_port = loop {
                let port = free_port(false);
                if port != server.http_port {
                    break port;
                }
            };
            match server.spawn() {
                Ok(()) => return server,
                // Another test's server took a port between the choice and the bind.
                Err(why) => failures.push(why),
            }
        }
        panic!("rnacos found no ports of its own:\n{}", failures.join("\n"))
    }

    /// Logs in as the admin and returns an access token (with auth on).
    pub fn login(&self) -> String {
        self.try_login(READY_DEADLINE)
            .unwrap_or_else(|| panic!("the rnacos admin cannot log in"))
    }

    /// Logs in as the admin, retrying (the user is created a moment after the server answers)
    /// until `within` has passed.
    fn try_login(&self, within: Duration) -> Option<String> {
        let (user, password) = self.auth.as_ref()?;
        let path = format!("/nacos/v1/auth/login?username={user}&password={password}");
        let body = poll_until(within, || {
            match http_request(self.http_port, "POST", &path) {
                Some((200, body)) => Some(body),
                _ => None,
            }
        })?;
        let start = body.find("\"accessToken\":\"").map(|at| at + 15)?;
        body[start..]
            .find('"')
            .map(|end| body[start..start + end].to_owned())
    }

    /// Starts the server again after [`kill`](Self::kill), on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(why) = self.spawn() {
            panic!("rnacos did not restart: {why}");
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let (http_port, grpc_port) = (self.http_port, self.grpc_port);
        let mut command = Command::new(rnacos_binary());
        if let Some((user, password)) = &self.auth {
            command
                .env("RNACOS_ENABLE_OPEN_API_AUTH", "true")
                // Logins tried before the admin user exists count as failures; the default
                // limit (5 an hour) would lock the user out of the test.
                .env("RNACOS_CONSOLE_LOGIN_ONE_HOUR_LIMIT", "1000000")
                .env("RNACOS_INIT_ADMIN_USERNAME", user)
                .env("RNACOS_INIT_ADMIN_PASSWORD", password);
        }
        let child = command
            .env("RNACOS_HTTP_PORT", http_port.to_string())
            .env("RNACOS_GRPC_PORT", grpc_port.to_string())
            .env("RNACOS_HTTP_CONSOLE_PORT", "0")
            .env("RNACOS_HTTP_WORKERS", "1")
            .env("RNACOS_DATA_DIR", self.dir.path().join("data"))
            .env("RNACOS_RAFT_NODE_ADDR", format!("127.0.0.1:{grpc_port}"))
            .env("RUST_LOG", "warn")
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rnacos");
        let pid = child.id();
        self.child = Some(child);
        let ready = "/nacos/v1/ns/service/list?pageNo=1&pageSize=1";
        let answer = poll_until(READY_DEADLINE, || {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Some(Err(format!(
                    "rnacos exited at start ({status}) on port {http_port}"
                )));
            }
            // Answered by this child (not another test's server on the same port): with auth
            // on, the list answers 403.
            let answered = http_request(http_port, "GET", ready)
                .is_some_and(|(status, _)| status == 200 || status == 403);
            (answered && owns_listener(pid, http_port)).then_some(Ok(()))
        });
        let answer = answer.unwrap_or_else(|| {
            Err(format!(
                "rnacos on port {http_port} did not answer as its own"
            ))
        });
        if answer.is_err() {
            self.kill();
        }
        answer
    }

    /// `http://127.0.0.1:<port>/nacos`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/nacos", self.http_port)
    }

    /// The HTTP port.
    pub fn port(&self) -> u16 {
        self.http_port
    }

    /// Sends a request to the server's HTTP API; panics unless it answers 200.
    pub fn call(&self, method: &str, path_and_query: &str) -> String {
        match http_request(self.http_port, method, path_and_query) {
            Some((200, body)) => body,
            other => panic!("rnacos {method} {path_and_query}: {other:?}"),
        }
    }

    /// [`NacosServer::call`], `None` unless rnacos answers 200 (a server still starting).
    pub fn try_call(&self, method: &str, path_and_query: &str) -> Option<String> {
        match http_request(self.http_port, method, path_and_query) {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }

    /// Registers (or changes) a persistent instance through Nacos's own v1 API, as a service
    /// registering itself would; `metadata` is a JSON object.
    pub fn register(&self, service: &str, ip: &str, port: u16, weight: f64, metadata: &str) {
        assert!(
            self.try_register(service, ip, port, weight, metadata),
            "rnacos refused to register {ip}:{port}"
        );
    }

    /// [`NacosServer::register`], telling whether rnacos took it (a server still starting may
    /// refuse writes).
    pub fn try_register(
        &self,
        service: &str,
        ip: &str,
        port: u16,
        weight: f64,
        metadata: &str,
    ) -> bool {
        let path = format!(
            "/nacos/v1/ns/instance?serviceName={}&ip={ip}&port={port}&ephemeral=false\
             &weight={weight}&metadata={}",
            percent_encode(service),
            percent_encode(metadata)
        );
        matches!(http_request(self.http_port, "POST", &path), Some((200, _)))
    }

    /// Removes a persistent instance through Nacos's own v1 API.
    pub fn deregister(&self, service: &str, ip: &str, port: u16) {
        assert!(
            self.try_deregister(service, ip, port),
            "rnacos refused to deregister {ip}:{port}"
        );
    }

    /// [`NacosServer::deregister`], telling whether rnacos took it.
    pub fn try_deregister(&self, service: &str, ip: &str, port: u16) -> bool {
        let path = format!(
            "/nacos/v1/ns/instance?serviceName={}&ip={ip}&port={port}&ephemeral=false",
            percent_encode(service)
        );
        matches!(
            http_request(self.http_port, "DELETE", &path),
            Some((200, _))
        )
    }

    /// Stops the server (SIGKILL); its data directory stays until the value is dropped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NacosServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain `redis-server`, started without the harness: another test's server.
    struct Stranger {
        child: Child,
        _dir: tempfile::TempDir,
    }

    impl Stranger {
        fn start(port: u16) -> Stranger {
            let dir = tempfile::tempdir().expect("temporary directory");
            let child = Command::new(binary("redis-server"))
                .args(standalone_args(&[]))
                .args(["--port", &port.to_string()])
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            eventually("the other redis-server", READY_DEADLINE, || {
                redis_command(port, &["PING"]).filter(|r| r.starts_with("+PONG"))
            });
            Stranger { child, _dir: dir }
        }
    }

    impl Drop for Stranger {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn answering_pid(port: u16) -> u32 {
        let reply = redis_command(port, &["INFO", "server"]).expect("INFO server");
        info_field(&reply, "process_id")
            .and_then(|pid| pid.parse().ok())
            .expect("process_id")
    }

    #[test]
    fn a_missing_tool_fails_unless_named_in_the_opt_out() {
        use ToolDecision::{Fail, Run, Skip};
        assert_eq!(tool_decision("grpcurl", true, None), Run);
        assert_eq!(tool_decision("grpcurl", true, Some("grpcurl")), Run);
        assert_eq!(tool_decision("grpcurl", false, None), Fail);
        assert_eq!(tool_decision("grpcurl", false, Some("")), Fail);
        assert_eq!(tool_decision("grpcurl", false, Some("python")), Fail);
        assert_eq!(tool_decision("grpcurl", false, Some("grpcurl-x")), Fail);
        assert_eq!(tool_decision("grpcurl", false, Some("grpcurl")), Skip);
        assert_eq!(
            tool_decision("grpcurl", false, Some("python, grpcurl")),
            Skip
        );
        assert_eq!(tool_decision("python", false, Some("python,grpcurl")), Skip);
    }

    #[test]
    fn info_fields_are_read_by_name() {
        let reply = "$60\r\n# Server\r\nredis_version:7.0.15\r\nprocess_id:4242\r\nrun_id:ab\r\n";
        assert_eq!(info_field(reply, "process_id"), Some("4242"));
        assert_eq!(info_field(reply, "run_id"), Some("ab"));
        assert_eq!(info_field(reply, "process"), None);
    }

    #[test]
    fn a_server_answers_from_its_own_child() {
        let server = RedisServer::start();
        assert_eq!(answering_pid(server.port()), server.pid());
    }

    /// Regression: a PING answered by another test's server on the chosen port made two tests
    /// share one Redis.
    #[test]
    fn a_port_held_by_another_server_is_not_shared() {
        let port = free_port(false);
        let stranger = Stranger::start(port);
        let server = RedisServer::launch(standalone_args(&[]), [port, free_port(false)]);
        assert_ne!(server.port(), port, "moved to the next port");
        assert_eq!(answering_pid(server.port()), server.pid());
        assert_eq!(
            answering_pid(port),
            stranger.child.id(),
            "the other server is untouched"
        );
    }

    #[test]
    fn a_port_asked_for_but_held_by_another_server_is_an_error() {
        let port = free_port(false);
        let _stranger = Stranger::start(port);
        let started = std::panic::catch_unwind(|| RedisServer::start_with(port, &[]));
        let message = *started
            .err()
            .expect("no server on a taken port")
            .downcast::<String>()
            .expect("a message");
        assert!(message.contains(&format!("port {port}")), "{message}");
        assert!(message.contains("another redis-server"), "{message}");
    }

    #[test]
    fn a_restart_on_a_port_taken_meanwhile_says_so() {
        let mut server = RedisServer::start();
        let port = server.port();
        server.kill();
        let _stranger = Stranger::start(port);
        let restarted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.restart()));
        let message = *restarted
            .expect_err("no restart on a taken port")
            .downcast::<String>()
            .expect("a message");
        assert!(
            message.contains("another process took the port"),
            "{message}"
        );
    }

    #[test]
    fn a_sentinel_answers_from_its_own_child() {
        let sentinel = RedisSentinel::start();
        assert_eq!(
            answering_pid(sentinel.sentinel.port()),
            sentinel.sentinel.pid()
        );
        assert_eq!(sentinel.master_port(), Some(sentinel.master.port()));
    }
}
