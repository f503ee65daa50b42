//! The greyrouter SDK: routing decisions inside the calling service.
//!
//! A [`Client`] subscribes to `WatchAssignments` for the tenants and services it is given (or all),
//! keeps a local copy of their effective assignments (version, source, instances, strategy,
//! region), and decides with the same `routing-core` code the router runs: a decision costs a
//! hash lookup and a pick, not a network round trip. Pairs it does not hold are routed by a
//! router's unary `Route`. The copy follows every change; when the watch breaks, the client
//! reconnects (to the next router, if given several) and resumes from the last revision it
//! applied, or takes a fresh snapshot when the router cannot replay that far; meanwhile it keeps
//! deciding from the copy it holds.
//!
//! Outcomes of calls ([`Client::report`]) end the instance's in-flight count (kept for
//! `least_connections` decisions only; a decision never reported stops counting after 30 to 60
//! seconds, see [`IN_FLIGHT_TIMEOUT_MS`](routing_core::balance::IN_FLIGHT_TIMEOUT_MS)), feed the
//! client's own outlier ejection (an instance that keeps failing is left alone for a while) and
//! are sent to the routers in batches, where they drive canary analysis and the routers'
//! ejections. [`Client::call_idempotent`] does all of it around a call
//! and retries a failed idempotent call on another instance.
//!
//! ```no_run
//! # async fn example() -> Result<(), greyrouter_client::ClientError> {
//! use std::time::{Duration, Instant};
//! use greyrouter_client::{Client, ClientConfig, Report, RouteRequest};
//!
//! let client = Client::connect(ClientConfig::new("http://127.0.0.1:50051")).await?;
//! client.ready(Duration::from_secs(5)).await?;
//! let decision = client.route(&RouteRequest::new("acme", "user-service")).await?;
//! let started = Instant::now();
//! // ... call decision.address() ...
//! client.report(&decision, Report::success(started.elapsed()));
//! # Ok(())
//! # }
//! ```

mod cache;
mod config;
mod error;
mod follow;
mod reports;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::router_client::RouterClient;
use routing_core::ejection::EjectionBook;
use routing_core::hash::entropy;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use cache::{Decision, LocalCopy, Origin, RouteRequest};
pub use config::{ClientConfig, TlsSettings};
pub use error::{CallError, ClientError};
pub use reports::Report;
pub use routing_core::Strategy;
pub use routing_core::ejection::EjectionPolicy;

use cache::Cache;

/// A connection to a fleet of routers and the local copy of the assignments it follows.
///
/// Cheap to clone: clones share the copy, the connections and the background tasks, which stop
/// when the last clone is dropped or [`close`](Client::close) is called.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
    lifetime: Arc<Lifetime>,
}

/// What the client's tasks share with it.
#[derive(Debug)]
struct Shared {
    config: ClientConfig,
    /// The bearer token sent with every call.
    credentials: Credentials,
    /// One lazily connected channel per endpoint.
    channels: Vec<Channel>,
    cache: ArcSwap<Cache>,
    /// Bumped when the watch connects or breaks, a revision is applied, reports are delivered
    /// or an instance is ejected: wakes [`Client::wait_for_status`].
    status_changed: watch::Sender<u64>,
    counters: Counters,
    /// Outcomes per (service, instance id), for the client's own ejections.
    health: Mutex<EjectionBook>,
    /// Milliseconds since the Unix epoch, renewed every [`CLOCK_TICK`]: decisions read it
    /// instead of the system clock (ejections last seconds; a read of the clock costs more than
    /// the rest of a decision).
    clock_ms: AtomicU64,
}

/// How often the client's clock is renewed.
const CLOCK_TICK: Duration = Duration::from_millis(5);

#[derive(Debug, Default)]
struct Counters {
    connected: AtomicBool,
    /// Index (modulo the endpoint count) of the router in use.
    endpoint: AtomicUsize,
    snapshots: AtomicU64,
    resumes: AtomicU64,
    reconnects: AtomicU64,
    server_decisions: AtomicU64,
    reports_dropped: AtomicU64,
    reports_accepted: AtomicU64,
    reports_rejected: AtomicU64,
    reports_failed: AtomicU64,
    report_calls: AtomicU64,
    ejections: AtomicU64,
}

/// Stops the background tasks when the last clone of the client goes.
#[derive(Debug)]
struct Lifetime {
    closing: watch::Sender<bool>,
    reports: Mutex<Option<mpsc::Sender<reports::Message>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Lifetime {
    fn drop(&mut self) {
        self.closing.send_replace(true);
    }
}

/// What the client knows of itself, for health checks and dashboards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The revision of the local copy (0 before the first snapshot).
    pub revision: u64,
    /// Whether the local copy holds a whole snapshot (decisions are local from then on).
    pub synced: bool,
    /// Whether the watch is connected now.
    pub connected: bool,
    /// The router the watch uses (or will try next).
    pub endpoint: String,
    /// (tenant, service) pairs held locally.
    pub assignments: usize,
    /// Snapshots received (1 when every reconnection could resume).
    pub snapshots: u64,
    /// Watches resumed from a revision instead of a snapshot.
    pub resumes: u64,
    /// Watches that broke or could not open.
    pub reconnects: u64,
    /// Decisions made by a router's `Route` (pairs not held locally).
    pub server_decisions: u64,
    /// Outcome reports accepted by the routers.
    pub reports_accepted: u64,
    /// Outcome reports the routers refused (unknown instance, ...).
    pub reports_rejected: u64,
    /// Outcome reports lost because no router could be reached.
    pub reports_failed: u64,
    /// Outcome reports dropped because the queue was full.
    pub reports_dropped: u64,
    /// `ReportOutcomes` calls made: reports go in batches, so far fewer than reports.
    pub report_calls: u64,
    /// Instances this client ejected after seeing them fail.
    pub ejections: u64,
}

impl Shared {
    fn publish(&self, cache: Cache) {
        self.cache.store(Arc::new(cache));
        self.status_changed();
    }

    /// Wakes whoever waits for a status.
    fn status_changed(&self) {
        self.status_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn now_ms(&self) -> u64 {
        self.clock_ms.load(Ordering::Relaxed)
    }

    fn channel(&self) -> Channel {
        let index = self.counters.endpoint.load(Ordering::Relaxed) % self.channels.len();
        self.channels[index].clone()
    }
}

/// A router client that sends the bearer token.
type Router = RouterClient<InterceptedService<Channel, Credentials>>;

/// Adds the bearer token to every call.
#[derive(Debug, Clone)]
struct Credentials(Option<MetadataValue<Ascii>>);

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

impl Shared {
    /// A router client over `channel`, with the credentials.
    fn router(&self, channel: Channel) -> Router {
        RouterClient::with_interceptor(channel, self.credentials.clone())
    }
}

impl Client {
    /// Checks the settings and starts following the routers; returns at once (see
    /// [`ready`](Client::ready) to wait for the first snapshot). Decisions made before it
    /// arrives go to the routers.
    ///
    /// Must be called within a tokio runtime.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        let mut channels = Vec::with_capacity(config.endpoints.len());
        for address in &config.endpoints {
            let endpoint = Endpoint::from_shared(address.clone())
                .map_err(|err| ClientError::InvalidConfig {
                    field: "endpoints",
                    reason: format!("'{address}': {err}"),
                })?
                .connect_timeout(config.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(config.keep_alive_interval)
                .keep_alive_timeout(config.keep_alive_interval)
                .keep_alive_while_idle(true);
            let endpoint = if address.starts_with("https://") {
                endpoint
                    .tls_config(config.tls.client_config()?)
                    .map_err(|err| ClientError::InvalidConfig {
                        field: "tls",
                        reason: err.to_string(),
                    })?
            } else {
                endpoint
            };
            channels.push(endpoint.connect_lazy());
        }
        let credentials = Credentials(
            config
                .token
                .as_ref()
                .and_then(|token| MetadataValue::try_from(format!("Bearer {token}")).ok()),
        );
        let (closing, closed) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            credentials,
            channels,
            cache: ArcSwap::from_pointee(Cache::default()),
            status_changed: watch::Sender::new(0),
            counters: Counters::default(),
            health: Mutex::new(EjectionBook::new()),
            clock_ms: AtomicU64::new(now_ms()),
        });
        let mut tasks = vec![
            tokio::spawn(follow::follow(Arc::clone(&shared), closed.clone())),
            tokio::spawn(tick(Arc::clone(&shared), closed)),
        ];
        let reports = if shared.config.report_outcomes {
            let (sender, receiver) = mpsc::channel(shared.config.report_queue);
            tasks.push(tokio::spawn(reports::send_reports(
                Arc::clone(&shared),
                receiver,
            )));
            Some(sender)
        } else {
            None
        };
        Ok(Client {
            shared,
            lifetime: Arc::new(Lifetime {
                closing,
                reports: Mutex::new(reports),
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// Waits until the local copy holds a whole snapshot; returns its revision.
    pub async fn ready(&self, timeout: Duration) -> Result<u64, ClientError> {
        self.wait_for_status(timeout, "the first snapshot", |s| s.synced)
            .await
            .map(|status| status.revision)
    }

    /// Waits until the local copy reached `revision` (a revision an admin call answered with);
    /// returns the revision reached.
    pub async fn wait_for_revision(
        &self,
        revision: u64,
        timeout: Duration,
    ) -> Result<u64, ClientError> {
        self.wait_for_status(timeout, &format!("revision {revision}"), |s| {
            s.synced && s.revision >= revision
        })
        .await
        .map(|status| status.revision)
    }

    /// Waits until the status satisfies `done` (`what` names the wait in the timeout error);
    /// returns that status. Wakes when the watch connects or breaks, a revision is applied,
    /// reports are delivered or an instance is ejected.
    pub async fn wait_for_status(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Status) -> bool,
    ) -> Result<Status, ClientError> {
        let mut changes = self.shared.status_changed.subscribe();
        let wait = async {
            loop {
                let status = self.status();
                if done(&status) {
                    return Ok(status);
                }
                if changes.changed().await.is_err() {
                    return Err(ClientError::Closed);
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                what: what.to_owned(),
                waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// Decides from the local copy only: [`ClientError::NotCached`] when it does not hold the
    /// pair. No allocation beyond the decision's reference counts; no I/O.
    pub fn route_local(&self, request: &RouteRequest<'_>) -> Result<Decision, ClientError> {
        self.shared
            .cache
            .load()
            .route(request, entropy(), self.shared.now_ms(), &[])
    }

    /// Decides locally when the copy holds the pair, else asks a router (`Route`).
    pub async fn route(&self, request: &RouteRequest<'_>) -> Result<Decision, ClientError> {
        self.route_avoiding(request, &[]).await
    }

    /// Decides like [`Client::route`], avoiding the instances named in `avoid` when the local
    /// copy holds the pair and another instance is left (a retry goes elsewhere).
    pub async fn route_avoiding(
        &self,
        request: &RouteRequest<'_>,
        avoid: &[String],
    ) -> Result<Decision, ClientError> {
        match self
            .shared
            .cache
            .load()
            .route(request, entropy(), self.shared.now_ms(), avoid)
        {
            Err(ClientError::NotCached { .. }) => self.route_remote(request).await,
            decided => decided,
        }
    }

    /// Asks a router, whatever the local copy holds.
    pub async fn route_remote(&self, request: &RouteRequest<'_>) -> Result<Decision, ClientError> {
        let mut client = self.shared.router(self.shared.channel());
        let call = client.route(pb::RouteRequest {
            tenant_id: request.tenant_id.to_owned(),
            service: request.service.to_owned(),
            metadata: Default::default(),
            hash_key: request.hash_key.to_owned(),
            region: request.region.to_owned(),
            strategy: request
                .strategy
                .map_or(pb::Strategy::Unspecified, pb::Strategy::from)
                .into(),
        });
        let response = tokio::time::timeout(self.shared.config.request_timeout, call)
            .await
            .map_err(|_| {
                ClientError::Rpc(tonic::Status::deadline_exceeded(format!(
                    "no answer from the router within {} ms",
                    self.shared.config.request_timeout.as_millis()
                )))
            })??;
        self.shared
            .counters
            .server_decisions
            .fetch_add(1, Ordering::Relaxed);
        Ok(Decision::from_server(request, response.into_inner()))
    }

    /// Whether the local copy holds the pair.
    pub fn holds(&self, tenant_id: &str, service: &str) -> bool {
        self.shared.cache.load().holds(tenant_id, service)
    }

    /// Records the outcome of a call made on a decision: ends its in-flight count, ejects the
    /// instance locally when it keeps failing (see [`ClientConfig::ejection`]), and queues the
    /// report for the routers. Never waits; when the queue is full the report is dropped and
    /// counted.
    pub fn report(&self, decision: &Decision, report: Report) {
        let latency_ms = u32::try_from(report.latency.as_millis()).unwrap_or(u32::MAX);
        if let (Some(member), Some(pool)) = (decision.member(), decision.pool()) {
            let now = self.shared.now_ms();
            if decision.started() {
                member.load.finish(now);
            }
            let ejection = self
                .shared
                .health
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(
                    &self.shared.config.ejection,
                    pool,
                    member,
                    report.success,
                    latency_ms,
                    now,
                );
            if let Some(ejection) = ejection {
                self.shared
                    .counters
                    .ejections
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.status_changed();
                tracing::info!(
                    service = decision.service(),
                    instance = decision.instance_id(),
                    until_ms = ejection.until_ms,
                    times = ejection.times,
                    "instance ejected by this client"
                );
            }
        }
        let queue = self
            .lifetime
            .reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !self.shared.config.report_outcomes {
            return;
        }
        let Some(queue) = queue.as_ref() else {
            // Closed by another clone: the report has nowhere to go.
            self.shared
                .counters
                .reports_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let outcome = reports::Reported {
            decision: decision.clone(),
            success: report.success,
            latency_ms,
            status_code: report.status_code,
        };
        if queue.try_send(reports::Message::Outcome(outcome)).is_err() {
            self.shared
                .counters
                .reports_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Routes and makes an idempotent call, retrying up to `attempts` times in all: each retry
    /// goes to an instance not tried yet when the pair is held locally and one is left (a
    /// router's decision may repeat an instance). Every attempt's outcome is reported.
    pub async fn call_idempotent<T, E, F, Fut>(
        &self,
        request: &RouteRequest<'_>,
        attempts: usize,
        mut call: F,
    ) -> Result<T, CallError<E>>
    where
        F: FnMut(Decision) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let attempts = attempts.max(1);
        let mut tried: Vec<String> = Vec::new();
        let mut last = None;
        for _ in 0..attempts {
            let decision = self.route_avoiding(request, &tried).await?;
            let started = Instant::now();
            match call(decision.clone()).await {
                Ok(value) => {
                    self.report(&decision, Report::success(started.elapsed()));
                    return Ok(value);
                }
                Err(err) => {
                    self.report(&decision, Report::failure(started.elapsed()));
                    tried.push(decision.instance_id().to_owned());
                    last = Some(err);
                }
            }
        }
        match last {
            Some(last) => Err(CallError::Exhausted { attempts, last }),
            None => Err(CallError::Route(ClientError::Closed)),
        }
    }

    /// Sends the queued outcome reports now and waits until they are sent (or failed).
    pub async fn flush(&self) -> Result<(), ClientError> {
        let queue = self
            .lifetime
            .reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(queue) = queue else {
            return Ok(());
        };
        let (done, sent) = oneshot::channel();
        queue
            .send(reports::Message::Flush(done))
            .await
            .map_err(|_| ClientError::Closed)?;
        sent.await.map_err(|_| ClientError::Closed)
    }

    /// Returns what the client knows of itself.
    pub fn status(&self) -> Status {
        let cache = self.shared.cache.load();
        let counters = &self.shared.counters;
        let index = counters.endpoint.load(Ordering::Relaxed) % self.shared.channels.len();
        Status {
            revision: cache.revision,
            synced: cache.synced,
            connected: counters.connected.load(Ordering::Relaxed),
            endpoint: self.shared.config.endpoints[index].clone(),
            assignments: cache.pairs,
            snapshots: counters.snapshots.load(Ordering::Relaxed),
            resumes: counters.resumes.load(Ordering::Relaxed),
            reconnects: counters.reconnects.load(Ordering::Relaxed),
            server_decisions: counters.server_decisions.load(Ordering::Relaxed),
            reports_accepted: counters.reports_accepted.load(Ordering::Relaxed),
            reports_rejected: counters.reports_rejected.load(Ordering::Relaxed),
            reports_failed: counters.reports_failed.load(Ordering::Relaxed),
            reports_dropped: counters.reports_dropped.load(Ordering::Relaxed),
            report_calls: counters.report_calls.load(Ordering::Relaxed),
            ejections: counters.ejections.load(Ordering::Relaxed),
        }
    }

    /// Stops watching, sends the queued reports, and waits for the background tasks to end.
    /// Other clones go on deciding from the last copy, which no longer changes; their reports
    /// are dropped (and counted).
    pub async fn close(self) {
        self.lifetime.closing.send_replace(true);
        // Closing the queue lets the reporting task send what is left and end.
        self.lifetime
            .reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let tasks: Vec<_> = self
            .lifetime
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Renews the client's clock until the client closes.
async fn tick(shared: Arc<Shared>, mut closing: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(CLOCK_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => shared.clock_ms.store(now_ms(), Ordering::Relaxed),
            _ = closing.changed() => return,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
