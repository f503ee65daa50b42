//! Shared helpers of the black-box tests: a server on an ephemeral port, clients, fixtures.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
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
            })
            .await
            .expect("register instance")
            .into_inner()
            .revision
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
    pub async fn with_config(config: Config) -> TestServer {
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

/// A `greyrouter serve` process: killed with SIGKILL, restarted on the same address.
pub struct ServerProcess {
    child: std::process::Child,
    pub addr: SocketAddr,
    args: Vec<String>,
}

impl ServerProcess {
    /// Starts `greyrouter serve` on an ephemeral port with `args`.
    pub fn start(args: &[&str]) -> ServerProcess {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let (child, addr) = Self::spawn("127.0.0.1:0", &args);
        ServerProcess { child, addr, args }
    }

    /// Starts `greyrouter serve` on `addr` (one another process left) with `args`.
    pub fn start_at(addr: SocketAddr, args: &[&str]) -> ServerProcess {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let (child, addr) = Self::spawn(&addr.to_string(), &args);
        ServerProcess { child, addr, args }
    }

    fn spawn(addr: &str, args: &[String]) -> (std::process::Child, SocketAddr) {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_greyrouter"))
            .args(["serve", "--grpc-addr", addr])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn greyrouter serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the first line");
        let addr = line
            .trim()
            .strip_prefix("greyrouter listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("an address");
        (child, addr)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
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

    /// Starts the process again on the same address, with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        let (child, _) = Self::spawn(&self.addr.to_string(), &self.args);
        self.child = child;
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
