//! Reference servers for `compare.sh`: they implement `greyrouter.v1.Router/Route` (every other
//! Router method answers `UNIMPLEMENTED`) so that the same `run` can drive them and greyrouter.
//!
//! - [`FloorRouter`] (`floor-server`): answers every Route with one fixed, realistic
//!   [`pb::RouteResponse`], without looking at the request: the cost of gRPC itself.
//! - [`SeedDesignRouter`] (`seed-design-server`): the original design's per-request Redis Lua
//!   script ([`ROUTE_SCRIPT`]), run with `EVALSHA` through fred, on data it seeds itself
//!   ([`seed_design_data`]) in that design's key layout.

use std::pin::Pin;
use std::time::Instant;

use fred::prelude::*;
use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::router_server::{Router, RouterServer};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// The original design's routing script, with its flaws fixed: it returns an array reply
/// (`{instance, version, time}`), not a Lua table with string keys (which Redis would turn into
/// an empty array), and errors with `redis.error_reply`. Arguments: tenant id, service name and
/// an optional strategy (`round_robin`, the default, or `random`).
pub const ROUTE_SCRIPT: &str = r#"
local tenant_id = ARGV[1]
local service_name = ARGV[2]
local lb_strategy = ARGV[3] or "round_robin"

local version = redis.call('HGET', 'tenant:' .. tenant_id .. ':services', service_name)
if not version then
  return redis.error_reply('Service version not found for tenant')
end

local instances_key = 'service:' .. service_name .. ':version:' .. version .. ':instances'
local instances = redis.call('SMEMBERS', instances_key)
if #instances == 0 then
  return redis.error_reply('No instances available')
end

local selected
if lb_strategy == 'random' then
  selected = instances[math.random(1, #instances)]
else
  local counter = redis.call('INCR', instances_key .. ':counter')
  selected = instances[((counter - 1) % #instances) + 1]
end

local usage_key = 'instance:' .. selected .. ':usage'
redis.call('INCR', usage_key)
redis.call('EXPIRE', usage_key, 300)
return {selected, version, redis.call('TIME')[1]}
"#;

/// The version every seeded tenant is on, like `greyrouter-load seed`'s default.
const VERSION: &str = "v1";

/// Commands per pipeline while seeding.
const SEED_CHUNK: usize = 1_000;

/// Binds `addr`, prints `listening on ADDR` on stdout, and serves `router` until the process ends.
pub async fn serve<R: RouteOnly>(addr: &str, router: R) -> Result<(), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("no local address: {e}"))?;
    println!("listening on {local}");
    tonic::transport::Server::builder()
        .add_service(RouterServer::new(OnlyRoute(router)))
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .map_err(|e| format!("server failed: {e}"))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::AssignmentUpdate, Status>> + Send>>;

fn unimplemented<T>(method: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{method} is not implemented by this reference server"
    )))
}

/// A router that answers `Route` only; every other call is `UNIMPLEMENTED`.
#[tonic::async_trait]
pub trait RouteOnly: Send + Sync + 'static {
    /// Answers one `Route` call.
    async fn route(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status>;
}

/// Serves a [`RouteOnly`] router as a `greyrouter.v1.Router`.
#[derive(Debug, Clone)]
pub struct OnlyRoute<R>(pub R);

#[tonic::async_trait]
impl<R: RouteOnly> Router for OnlyRoute<R> {
    async fn route(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        self.0.route(request).await
    }

    async fn route_batch(
        &self,
        _: Request<pb::RouteBatchRequest>,
    ) -> Result<Response<pb::RouteBatchResponse>, Status> {
        unimplemented("RouteBatch")
    }

    type WatchAssignmentsStream = WatchStream;

    async fn watch_assignments(
        &self,
        _: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        unimplemented("WatchAssignments")
    }

    async fn report_outcome(
        &self,
        _: Request<tonic::Streaming<pb::Outcome>>,
    ) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        unimplemented("ReportOutcome")
    }

    async fn report_outcomes(
        &self,
        _: Request<pb::ReportOutcomesRequest>,
    ) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        unimplemented("ReportOutcomes")
    }
}

/// Answers every Route with the same response.
#[derive(Debug, Clone)]
pub struct FloorRouter {
    response: pb::RouteResponse,
}

impl Default for FloorRouter {
    /// A response of the size greyrouter answers for the seeded key space.
    fn default() -> Self {
        FloorRouter {
            response: pb::RouteResponse {
                instance_id: "service-7-v1-2".to_owned(),
                address: "10.0.7.2:8080".to_owned(),
                version: VERSION.to_owned(),
                source: "default".to_owned(),
                revision: 10_100,
            },
        }
    }
}

#[tonic::async_trait]
impl RouteOnly for FloorRouter {
    async fn route(
        &self,
        _: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        Ok(Response::new(self.response.clone()))
    }
}

/// Routes with the original design's Lua script, one `EVALSHA` per request.
#[derive(Clone)]
pub struct SeedDesignRouter {
    client: Client,
    sha: String,
}

impl std::fmt::Debug for SeedDesignRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedDesignRouter")
            .field("sha", &self.sha)
            .finish_non_exhaustive()
    }
}

impl SeedDesignRouter {
    /// Connects to `url` and loads [`ROUTE_SCRIPT`].
    pub async fn connect(url: &str) -> Result<SeedDesignRouter, String> {
        let config = Config::from_url(url).map_err(|e| format!("invalid Redis URL {url}: {e}"))?;
        let client = Builder::from_config(config)
            .build()
            .map_err(|e| format!("redis client: {e}"))?;
        client
            .init()
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        let sha: String = client
            .script_load(ROUTE_SCRIPT)
            .await
            .map_err(|e| format!("SCRIPT LOAD: {e}"))?;
        Ok(SeedDesignRouter { client, sha })
    }

    /// The Redis client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Writes the design's layout for `tenants` x `services` x `instances`, pipelined:
/// `tenant:{id}:services` hashes (every service on `v1`) and
/// `service:{name}:version:v1:instances` sets of `10.0.{j}.{k}:8080` members (the `ip:port`
/// the design's Nacos sync stores). Names are `tenant-N` and `service-N`, as `run` asks.
pub async fn seed_design_data(
    client: &Client,
    tenants: usize,
    services: usize,
    instances: usize,
) -> Result<(), String> {
    let fail = |e: Error| format!("seeding Redis: {e}");
    let service_names: Vec<String> = (0..services).map(|j| format!("service-{j}")).collect();
    let pipeline = client.pipeline();
    for (j, name) in service_names.iter().enumerate() {
        let key = format!("service:{name}:version:{VERSION}:instances");
        let members: Vec<String> = (0..instances)
            .map(|k| format!("10.0.{j}.{k}:8080"))
            .collect();
        let () = pipeline.del(key.as_str()).await.map_err(fail)?;
        let () = pipeline.sadd(key, members).await.map_err(fail)?;
    }
    let _: Vec<Value> = pipeline.all().await.map_err(fail)?;
    let fields: Vec<(String, String)> = service_names
        .iter()
        .map(|name| (name.clone(), VERSION.to_owned()))
        .collect();
    let ids: Vec<usize> = (0..tenants).collect();
    for chunk in ids.chunks(SEED_CHUNK) {
        let pipeline = client.pipeline();
        for i in chunk {
            let () = pipeline
                .hset(format!("tenant:tenant-{i}:services"), fields.clone())
                .await
                .map_err(fail)?;
        }
        let _: Vec<Value> = pipeline.all().await.map_err(fail)?;
    }
    Ok(())
}

#[tonic::async_trait]
impl RouteOnly for SeedDesignRouter {
    async fn route(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        let request = request.into_inner();
        let reply: Result<Vec<String>, Error> = self
            .client
            .evalsha(
                self.sha.as_str(),
                Vec::<String>::new(),
                vec![request.tenant_id, request.service],
            )
            .await;
        match reply {
            Ok(reply) => match <[String; 3]>::try_from(reply) {
                Ok([instance, version, _time]) => Ok(Response::new(pb::RouteResponse {
                    instance_id: instance.clone(),
                    address: instance,
                    version,
                    source: "lua".to_owned(),
                    revision: 0,
                })),
                Err(reply) => Err(Status::internal(format!(
                    "unexpected script reply {reply:?}"
                ))),
            },
            Err(err) if err.details().contains("not found") => {
                Err(Status::not_found(err.details().to_owned()))
            }
            Err(err) => Err(Status::unavailable(err.to_string())),
        }
    }
}

/// `seed-design-server`: connects, seeds, then serves (printing the seeding time on stderr).
pub async fn run_seed_design_server(
    redis: &str,
    addr: &str,
    tenants: usize,
    services: usize,
    instances: usize,
) -> Result<(), String> {
    let router = SeedDesignRouter::connect(redis).await?;
    let started = Instant::now();
    seed_design_data(router.client(), tenants, services, instances).await?;
    eprintln!(
        "seeded {tenants} tenants x {services} services x {instances} instances in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    serve(addr, router).await
}

#[cfg(test)]
mod tests {
    use greyrouter_test_support::RedisServer;

    use super::*;

    fn request(tenant_id: &str, service: &str) -> Request<pb::RouteRequest> {
        Request::new(pb::RouteRequest {
            tenant_id: tenant_id.to_owned(),
            service: service.to_owned(),
            ..Default::default()
        })
    }

    /// The script, run on a real Redis over seeded data: its array reply becomes a response,
    /// its counter walks the version's instances in turn, its usage keys count each pick, and
    /// a tenant or service without a version is `NOT_FOUND`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_script_routes_seeded_tenants_in_turn_and_refuses_unknown_ones() {
        let redis = RedisServer::start();
        let router = SeedDesignRouter::connect(&redis.url())
            .await
            .expect("connect and load the script");
        seed_design_data(router.client(), 3, 2, 3)
            .await
            .expect("seed");

        let mut picked = Vec::new();
        for turn in 0..6 {
            let tenant = format!("tenant-{}", turn % 3);
            let answer = router
                .route(request(&tenant, "service-1"))
                .await
                .unwrap_or_else(|status| panic!("routing {tenant}: {status}"))
                .into_inner();
            assert_eq!(
                (
                    answer.version.as_str(),
                    answer.source.as_str(),
                    answer.revision
                ),
                ("v1", "lua", 0),
                "{answer:?}"
            );
            assert_eq!(answer.address, answer.instance_id);
            picked.push(answer.instance_id);
        }
        // One counter per version, shared by every tenant: three picks visit the three
        // instances of service-1 (in the set's order), the next three repeat them.
        let mut first_round = picked[..3].to_vec();
        first_round.sort();
        assert_eq!(
            first_round,
            ["10.0.1.0:8080", "10.0.1.1:8080", "10.0.1.2:8080"]
        );
        assert_eq!(picked[3..], picked[..3]);
        for instance in &first_round {
            let usage = redis.command(&["GET", &format!("instance:{instance}:usage")]);
            assert_eq!(usage, "$1\r\n2\r\n", "{instance}");
        }

        for (tenant, service) in [("tenant-3", "service-1"), ("tenant-0", "service-2")] {
            let status = router
                .route(request(tenant, service))
                .await
                .expect_err("no version");
            assert_eq!(
                status.code(),
                tonic::Code::NotFound,
                "{tenant}/{service}: {status}"
            );
        }
    }

    #[tokio::test]
    async fn the_floor_answers_its_fixed_response_to_any_request() {
        let floor = FloorRouter::default();
        for (tenant, service) in [("tenant-0", "service-0"), ("nobody", "")] {
            let answer = floor
                .route(request(tenant, service))
                .await
                .expect("route")
                .into_inner();
            assert_eq!(answer, floor.response);
            assert_eq!(answer.version, "v1");
            assert!(!answer.address.is_empty());
        }
    }
}
