//! Test harness: real servers for the tests that need them, each on its own free loopback port
//! and in its own temporary directory, so tests run in parallel without touching the machine's
//! own services.
//!
//! PostgreSQL tests use the machine's server instead, each in a database of its own
//! ([`PostgresDatabase`]), dropped at the end.
//!
//! A missing server binary is a test failure with a message saying what to install, never a
//! silent skip (`.ci/run` and `scripts/test` install what is missing).
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
pub fn eventually<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
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
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a standalone server on a free port.
    pub fn start() -> RedisServer {
        RedisServer::start_with(free_port(false), &[])
    }

    /// Starts a server on `port` with extra arguments.
    pub fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--daemonize".into(),
            "no".into(),
            "--logfile".into(),
            "redis.log".into(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let mut server = RedisServer {
            port,
            dir,
            args,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(binary("redis-server"))
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let port = self.port;
        eventually(
            &format!("redis-server on port {port}"),
            READY_DEADLINE,
            || redis_command(port, &["PING"]).filter(|r| r.starts_with("+PONG")),
        );
    }

    /// Starts a replica of `master` on a free port and waits until it is in sync.
    pub fn start_replica_of(master: &RedisServer) -> RedisServer {
        let master_port = master.port().to_string();
        let replica = RedisServer::start_with(
            free_port(false),
            &["--replicaof", "127.0.0.1", &master_port],
        );
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

    /// Starts the server again on the same port and directory (loading `dump.rdb` if saved).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
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
                RedisServer::start_with(
                    free_port(true),
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
        let sentinel_port = free_port(false);
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                 sentinel failover-timeout {SENTINEL_SERVICE} 5000\n"
            ),
        )
        .expect("write sentinel.conf");
        let config = config.to_string_lossy().into_owned();
        let mut sentinel = RedisServer {
            port: sentinel_port,
            dir,
            args: vec![config, "--sentinel".into()],
            child: None,
        };
        sentinel.spawn();
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
        use std::collections::hash_map::RandomState;
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};

        static CREATED: AtomicU64 = AtomicU64::new(0);
        // RandomState is seeded randomly per process; the counter and the pid tell apart the
        // databases of one process and of concurrent ones.
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u64(CREATED.fetch_add(1, Ordering::Relaxed));
        let name = format!("grey_test_{:016x}", hasher.finish());
        postgres_admin(&format!("CREATE DATABASE \"{name}\""))
            .unwrap_or_else(|why| panic!("cannot create the test database {name}: {why}"));
        PostgresDatabase { name }
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

/// Runs SQL in the `postgres` maintenance database.
fn postgres_admin(sql: &str) -> Result<String, String> {
    psql("postgres", sql)
}

fn psql(database: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", POSTGRES_HOST, "-p", &POSTGRES_PORT.to_string()])
        .args(["-U", POSTGRES_USER, "-d", database, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output();
    let output = match output {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(
                "psql is not installed: install Debian's postgresql-client package \
                 (and a PostgreSQL server listening on 127.0.0.1:5432 with trust \
                 authentication for user postgres)"
                    .to_owned(),
            );
        }
        Err(err) => return Err(format!("cannot run psql: {err}")),
    };
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("connection to server") || stderr.contains("could not connect") {
        Err(format!(
            "no PostgreSQL server accepts user {POSTGRES_USER} at {POSTGRES_HOST}:{POSTGRES_PORT} \
             with trust authentication (the database tests need one running): {}",
            stderr.trim()
        ))
    } else {
        Err(stderr.trim().to_owned())
    }
}
