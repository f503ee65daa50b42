//! Shared helpers of the black-box tests: a server on an ephemeral port, clients, fixtures.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greyrouter::config::Config;
use greyrouter::server::App;
use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::admin_client::AdminClient;
use greyrouter_proto::v1::router_client::RouterClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Deadline for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A server running in this process on 127.0.0.1:0; its clients and fixtures through `Deref`.
pub struct TestServer {
    pub addr: SocketAddr,
    _data_dir: Option<tempfile::TempDir>,
    api: Api,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Clients of one server, and the fixtures made through them.
pub struct Api {
    pub channel: Channel,
    pub admin: AdminClient<Channel>,
    pub router: RouterClient<Channel>,
}

impl std::ops::Deref for TestServer {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl std::ops::DerefMut for TestServer {
    fn deref_mut(&mut self) -> &mut Api {
        &mut self.api
    }
}

impl Api {
    /// Connects to a server at `url`.
    pub async fn connect(url: &str) -> Api {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        Api {
            channel: channel.clone(),
            admin: AdminClient::new(channel.clone()),
            router: RouterClient::new(channel),
        }
    }

    /// Sets up service `api` (default `v1`, versions v1 and v2, one instance each in `eu`),
    /// and tenants `t0..tN` in `eu`.
    pub async fn populate(&mut self, tenants: usize) {
        self.service("api", "v1", pb::Strategy::RoundRobin).await;
        self.instance("api", "v1", "a1", "eu").await;
        self.instance("api", "v2", "b1", "eu").await;
        for i in 0..tenants {
            self.tenant(&format!("t{i}"), "eu").await;
        }
    }

    pub async fn service(&mut self, name: &str, default: &str, strategy: pb::Strategy) -> u64 {
        self.admin
            .upsert_service(pb::UpsertServiceRequest {
                service: Some(pb::Service {
                    name: name.into(),
                    default_version: default.into(),
                    strategy: strategy.into(),
                    versions: vec![],
                }),
                force: false,
            })
            .await
            .expect("upsert service")
            .into_inner()
            .revision
    }

    pub async fn tenant(&mut self, id: &str, region: &str) -> u64 {
        self.admin
            .upsert_tenant(pb::UpsertTenantRequest {
                tenant: Some(tenant(id, region)),
            })
            .await
            .expect("upsert tenant")
            .into_inner()
            .revision
    }

    pub async fn instance(&mut self, service: &str, version: &str, id: &str, region: &str) -> u64 {
        self.admin
            .register_instance(pb::RegisterInstanceRequest {
                instance: Some(instance(service, version, id, region)),
                ttl_seconds: 0,
            })
            .await
            .expect("register instance")
            .into_inner()
            .revision
    }

    /// The ids of `service`'s instances, sorted.
    pub async fn instance_ids(&mut self, service: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .admin
            .list_instances(pb::ListInstancesRequest {
                service: service.into(),
                version: String::new(),
            })
            .await
            .expect("list instances")
            .into_inner()
            .instances
            .into_iter()
            .map(|i| i.id)
            .collect();
        ids.sort();
        ids
    }

    pub async fn route(
        &mut self,
        tenant: &str,
        service: &str,
    ) -> Result<pb::RouteResponse, tonic::Status> {
        self.router
            .route(pb::RouteRequest {
                tenant_id: tenant.into(),
                service: service.into(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn pin(&mut self, tenant: &str, service: &str, version: &str) -> u64 {
        self.admin
            .set_tenant_version(pb::SetTenantVersionRequest {
                tenant_id: tenant.into(),
                service: service.into(),
                version: version.into(),
                expected_version: None,
                force: false,
                migrate: false,
            })
            .await
            .expect("set tenant version")
            .into_inner()
            .revision
    }
}

impl TestServer {
    /// Starts a server with the default configuration.
    pub async fn start() -> TestServer {
        TestServer::with_config(Config::default()).await
    }

    /// Starts a server with `config` (its address is ignored: the server binds port 0).
    pub async fn with_config(mut config: Config) -> TestServer {
        // The default store keeps its data in ./greyrouter-data: each server gets its own.
        let data_dir = (config.store == "durable" && config.data_dir == Config::default().data_dir)
            .then(|| tempfile::tempdir().expect("a data directory"));
        if let Some(dir) = &data_dir {
            config.data_dir = dir.path().to_owned();
        }
        let app = App::start(config).await.expect("server starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            _data_dir: data_dir,
            api: Api::connect(&format!("http://{addr}")).await,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = within(task).await.expect("server task");
            result.expect("server ran cleanly");
        }
    }
}

pub fn tenant(id: &str, region: &str) -> pb::Tenant {
    pb::Tenant {
        id: id.into(),
        name: format!("Tenant {id}"),
        region: region.into(),
        tier: "pro".into(),
        labels: Default::default(),
        active: true,
    }
}

pub fn instance(service: &str, version: &str, id: &str, region: &str) -> pb::Instance {
    pb::Instance {
        id: id.into(),
        address: format!("{id}.internal:8080"),
        service: service.into(),
        version: version.into(),
        weight: None,
        region: region.into(),
        zone: String::new(),
        metadata: Default::default(),
        healthy: None,
        health_score: None,
    }
}

/// Awaits `future` with the test deadline.
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .expect("deadline passed")
}

/// Polls `check` until it answers `Some`, within the test deadline (for what no event tells);
/// the pause between polls grows from 5 ms to 100 ms.
#[allow(dead_code)]
pub async fn eventually<T>(what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_within(what, DEADLINE, check).await
}

/// [`eventually`] with a deadline of its own, for work that takes long in a debug build
/// (thousands of changes).
pub async fn eventually_within<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// How long a `greyrouter serve` process may take to print its "listening on" line.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// How many times [`ServerProcess::restart`] and [`ServerProcess::start_at`] try an address
/// that another process holds, [`RETRY_PAUSE`] apart, before giving up.
const BIND_ATTEMPTS: usize = 5;
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A `greyrouter serve` process: killed with SIGKILL, restarted on the same address.
pub struct ServerProcess {
    child: std::process::Child,
    pub addr: SocketAddr,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stderr: Arc<Mutex<String>>,
    _data_dir: Option<tempfile::TempDir>,
}

/// Why a process did not print its "listening on" line.
#[derive(Debug)]
pub enum StartError {
    /// It could not bind its address: another process holds it (its stderr).
    AddressInUse(String),
    /// Anything else: it exited, printed something else, or hung (what happened, its stderr).
    Failed(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::AddressInUse(stderr) => {
                write!(
                    f,
                    "the address is in use by another process; stderr:\n{stderr}"
                )
            }
            StartError::Failed(why) => f.write_str(why),
        }
    }
}

/// A process that printed its "listening on" line.
pub struct Started {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// The private data directory given to a server not given one (removed when dropped).
    pub data_dir: Option<tempfile::TempDir>,
    /// Everything the process wrote to stderr so far, and from now on.
    pub stderr: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Starts `greyrouter serve` on an ephemeral port with `args`.
    pub fn start(args: &[&str]) -> ServerProcess {
        ServerProcess::start_on("127.0.0.1:0".parse().expect("an address"), args)
    }

    /// Starts `greyrouter serve` on `addr` (one another process left) with `args`; waits a
    /// little for the address when it is still held, then panics saying so.
    pub fn start_at(addr: SocketAddr, args: &[&str]) -> ServerProcess {
        ServerProcess::start_on(addr, args)
    }

    /// Starts `greyrouter serve` on an ephemeral port with `args` and the variables `env`
    /// (kept for restarts).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let env = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        ServerProcess::start_with("127.0.0.1:0".parse().expect("an address"), args, env)
    }

    fn start_on(addr: SocketAddr, args: &[&str]) -> ServerProcess {
        ServerProcess::start_with(addr, args, Vec::new())
    }

    fn start_with(addr: SocketAddr, args: &[&str], env: Vec<(String, String)>) -> ServerProcess {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let started = Self::spawn_retrying(addr, &args, &env)
            .unwrap_or_else(|err| panic!("greyrouter serve on {addr}: {err}"));
        ServerProcess {
            child: started.child,
            addr: started.addr,
            args,
            env,
            stderr: started.stderr,
            _data_dir: started.data_dir,
        }
    }

    /// Spawns `greyrouter serve` on `addr`, trying again a few times while the address is in
    /// use.
    fn spawn_retrying(
        addr: SocketAddr,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Started, StartError> {
        let mut attempt = 1;
        loop {
            match Self::spawn(&addr.to_string(), args, env) {
                Err(StartError::AddressInUse(_)) if attempt < BIND_ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(RETRY_PAUSE);
                }
                result => return result,
            }
        }
    }

    fn spawn(addr: &str, args: &[String], env: &[(String, String)]) -> Result<Started, StartError> {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_greyrouter"));
        command.args(["serve", "--grpc-addr", addr]).args(args);
        command.envs(env.iter().map(|(name, value)| (name, value)));
        launch(command, START_DEADLINE)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    /// Asks the process to stop (SIGTERM: drain, then exit) and returns how it ended.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        self.child.wait().expect("wait")
    }

    /// Kills the process (SIGKILL: no drain, no goodbye) and waits for it to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the process again on the same address, with the same arguments; panics, saying
    /// so, when another process took the address while it was down.
    pub fn restart(&mut self) {
        if let Err(err) = self.try_restart() {
            panic!("cannot restart greyrouter serve on {}: {err}", self.addr);
        }
    }

    /// Starts the process again on the same address, with the same arguments; waits a little
    /// for the address when another process holds it.
    pub fn try_restart(&mut self) -> Result<(), StartError> {
        self.kill();
        let started = Self::spawn_retrying(self.addr, &self.args, &self.env)?;
        self.child = started.child;
        self.stderr = started.stderr;
        self._data_dir = started.data_dir;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `command` (stdout and stderr piped) and waits up to `deadline` for its first line,
/// `greyrouter listening on <address>`. Its stderr is collected all along; stdout is drained
/// after the first line. On failure the process is killed and the error carries its stderr.
pub fn launch(
    mut command: std::process::Command,
    deadline: Duration,
) -> Result<Started, StartError> {
    use std::io::{BufRead, Read};
    // The default store keeps its data in ./greyrouter-data: each server not given a data
    // directory gets a private one, as if on a machine of its own.
    let given = command.get_args().any(|a| a == "--data-dir")
        || command
            .get_envs()
            .any(|(name, _)| name == "GREYROUTER_DATA_DIR");
    let data_dir = (!given).then(|| tempfile::tempdir().expect("a data directory"));
    if let Some(dir) = &data_dir {
        command.env("GREYROUTER_DATA_DIR", dir.path());
    }
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the server");
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().expect("stderr");
    let collected = Arc::clone(&stderr);
    let (stderr_ended, stderr_done) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buffer) {
            if n == 0 {
                break;
            }
            collected
                .lock()
                .expect("stderr")
                .push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
        let _ = stderr_ended.send(());
    });
    let stdout = child.stdout.take().expect("stdout");
    let (first_line, read) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let _ = first_line.send(reader.read_line(&mut line).map(|_| line));
        // Keep reading, so that the process never writes to a closed pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let (line, timed_out) = match read.recv_timeout(deadline) {
        Ok(Ok(line)) => (line, false),
        Ok(Err(err)) => (format!("<unreadable: {err}>"), false),
        Err(_) => (String::new(), true),
    };
    if let Some(addr) = line
        .trim()
        .strip_prefix("greyrouter listening on ")
        .and_then(|addr| addr.parse().ok())
    {
        return Ok(Started {
            child,
            addr,
            data_dir,
            stderr,
        });
    }
    // A process that exited before listening is a zombie: the signal changes nothing.
    let _ = child.kill();
    let status = child.wait();
    let _ = stderr_done.recv_timeout(Duration::from_secs(5));
    let text = stderr.lock().expect("stderr").clone();
    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
    if line.is_empty() && text.contains("cannot listen") && text.contains("in use") {
        return Err(StartError::AddressInUse(text));
    }
    let what = if timed_out {
        format!("printed no \"listening on\" line within {deadline:?} and was killed ({status})")
    } else if line.is_empty() {
        format!("exited ({status}) before listening")
    } else {
        format!("printed {line:?} instead of \"greyrouter listening on <address>\" ({status})")
    };
    Err(StartError::Failed(format!(
        "the server {what}; stderr:\n{text}"
    )))
}

/// `GET path` over HTTP/1.0 on 127.0.0.1: the status code and the body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Some((status, body))
}
