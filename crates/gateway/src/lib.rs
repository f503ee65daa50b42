//! The HTTP gateway: a reverse proxy that routes every request by its tenant.
//!
//! For each request it finds the tenant (in the configured order: a header, default
//! `X-Tenant-Id`; a verified bearer token's tenant claim; the host name's first label under a
//! configured domain), finds the service (a header, a route table of path prefixes, else the
//! first path segment), decides locally from the SDK's watch-fed copy of the assignments (no
//! network hop per request once the copy holds the pair), forwards to the chosen instance with
//! `X-Service-Version`, `X-Target-Instance` and `X-Route-Source`, and reports the outcome (a
//! 5xx or a failed connection is a failure) so that outlier ejection and canary analysis see
//! the traffic. Idempotent requests are retried once on another instance within a retry
//! budget; POST only when configured. Errors it answers itself are small JSON documents: 400
//! without a tenant, 401 for a bad token, 404 for an unknown tenant or service, 413 for a body
//! over the limit, 503 with `Retry-After` when no instance is healthy, 504 on a timeout, 502
//! when the instance fails.
//!
//! Requests go to instances over HTTP/1.1 on kept-alive connections; gRPC (an HTTP/2 request
//! with a `application/grpc` content type) goes over one multiplexed HTTP/2 connection per
//! instance, trailers included. WebSocket and other HTTP/1.1 upgrades pass through.
//!
//! Plain keep-alive HTTP/1.1 requests, most of the traffic, are relayed by the caller's
//! connection task itself (`plain`): its own head parsing, a kept bare connection to the
//! instance, the response copied back as it arrives. The first request of a connection that is
//! anything else (HTTP/2, an upgrade, a chunked request body, `Expect`, HTTP/1.0) hands the
//! connection to hyper, which serves it from there on.

mod plain;
mod resolve;
mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use auth::jwt::JwtVerifier;
use bytes::Bytes;
use greyrouter_client::{Client, ClientError, Decision, Report, RouteRequest};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::upstream::{Upstream, UpstreamError};

/// The body type of forwarded requests and of answers.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A path prefix and the service it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// The prefix (`/api/users`); the longest matching prefix wins.
    pub prefix: String,
    /// The service.
    pub service: String,
    /// Forward the path without the prefix.
    pub strip_prefix: bool,
}

/// Where a request's tenant may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantSource {
    /// The tenant header ([`GatewaySettings::tenant_header`]).
    Header,
    /// The tenant claim of a bearer JWT, verified ([`GatewaySettings::token_verifier`]).
    Token,
    /// The host name's first label under [`GatewaySettings::tenant_domain`].
    Host,
}

impl std::str::FromStr for TenantSource {
    type Err = String;

    fn from_str(name: &str) -> Result<TenantSource, String> {
        match name {
            "header" => Ok(TenantSource::Header),
            "token" => Ok(TenantSource::Token),
            "host" => Ok(TenantSource::Host),
            other => Err(format!(
                "{other:?} is not a tenant source (header, token, host)"
            )),
        }
    }
}

/// How the gateway finds tenants and services, and its limits.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Where the tenant comes from, first found wins.
    pub tenant_from: Vec<TenantSource>,
    /// The header naming the tenant.
    pub tenant_header: HeaderName,
    /// Checks bearer tokens whose tenant claim names the tenant ([`TenantSource::Token`]); a
    /// token that fails the check is refused with 401.
    pub token_verifier: Option<Arc<JwtVerifier>>,
    /// With a domain (`example.com`), a request to `acme.example.com` is tenant `acme`.
    pub tenant_domain: Option<String>,
    /// The header naming the service (before the route table).
    pub service_header: HeaderName,
    /// Path prefixes of services; without a match, the first path segment names the service.
    pub routes: Vec<RouteRule>,
    /// Longest wait for a connection to an instance.
    pub connect_timeout: Duration,
    /// Longest wait for an instance's response headers.
    pub request_timeout: Duration,
    /// Connections to instances unused this long are closed.
    pub idle_timeout: Duration,
    /// Most connections kept per instance.
    pub max_connections_per_instance: usize,
    /// Share of requests that may be retries (over a 10 s window; at least 10 retries).
    pub retry_budget: f64,
    /// Retry POST too (never by default: it may not be idempotent).
    pub retry_post: bool,
    /// Largest request body kept to retry an idempotent request; larger bodies are streamed and
    /// their requests not retried.
    pub max_retry_body_bytes: usize,
    /// Largest request body (413 above it; a streamed body is cut off there).
    pub max_body_bytes: u64,
    /// Largest request (and instance response) head: request line or status line and headers.
    pub max_header_bytes: usize,
    /// Longest wait for a request's headers on a connection (slow clients are closed).
    pub header_read_timeout: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            tenant_from: vec![
                TenantSource::Header,
                TenantSource::Token,
                TenantSource::Host,
            ],
            tenant_header: HeaderName::from_static("x-tenant-id"),
            token_verifier: None,
            tenant_domain: None,
            service_header: HeaderName::from_static("x-service"),
            routes: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_connections_per_instance: 512,
            retry_budget: 0.2,
            retry_post: false,
            max_retry_body_bytes: 1024 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Headers added to the forwarded request (and to the answer).
pub mod headers {
    /// The version the request was routed to.
    pub const SERVICE_VERSION: &str = "x-service-version";
    /// The instance it was sent to.
    pub const TARGET_INSTANCE: &str = "x-target-instance";
    /// Why that version (`pin`, `rollout`, `default`, ...).
    pub const ROUTE_SOURCE: &str = "x-route-source";
}

/// Headers of one hop, never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Retries allowed over a window: a share of the requests, at least a few.
#[derive(Debug)]
struct RetryBudget {
    share: f64,
    window_start_ms: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

const BUDGET_WINDOW_MS: u64 = 10_000;
const BUDGET_FLOOR: u64 = 10;

impl RetryBudget {
    fn now_ms(&self, epoch: Instant) -> u64 {
        u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn roll(&self, now_ms: u64) {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(start) >= BUDGET_WINDOW_MS
            && self
                .window_start_ms
                .compare_exchange(start, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    fn request(&self, now_ms: u64) {
        self.roll(now_ms);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if any is left.
    fn take(&self) -> bool {
        let allowed =
            (self.requests.load(Ordering::Relaxed) as f64 * self.share) as u64 + BUDGET_FLOOR;
        let taken = self.retries.fetch_add(1, Ordering::Relaxed);
        if taken < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

/// The gateway: the SDK's copy of the assignments, connections to instances.
#[derive(Debug)]
pub struct Gateway {
    router: Client,
    upstream: Upstream,
    settings: GatewaySettings,
    budget: RetryBudget,
    epoch: Instant,
    labels: HeaderValues,
}

/// Header values of versions, instance ids and route sources, made once and shared (a clone
/// is a reference count, not a copy); at most [`HeaderValues::MAX`] are kept.
#[derive(Debug, Default)]
struct HeaderValues(std::sync::Mutex<std::collections::HashMap<Box<str>, HeaderValue>>);

impl HeaderValues {
    const MAX: usize = 10_000;

    fn get(&self, text: &str) -> Option<HeaderValue> {
        let mut values = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(value) = values.get(text) {
            return Some(value.clone());
        }
        let value = HeaderValue::from_str(text).ok()?;
        if values.len() >= Self::MAX {
            values.clear();
        }
        values.insert(text.into(), value.clone());
        Some(value)
    }
}

/// The route headers of one decision.
struct RouteHeaders([Option<HeaderValue>; 3]);

impl RouteHeaders {
    const NAMES: [HeaderName; 3] = [
        HeaderName::from_static(headers::SERVICE_VERSION),
        HeaderName::from_static(headers::TARGET_INSTANCE),
        HeaderName::from_static(headers::ROUTE_SOURCE),
    ];

    fn new(values: &HeaderValues, decision: &Decision) -> RouteHeaders {
        RouteHeaders([
            values.get(decision.version()),
            values.get(decision.instance_id()),
            values.get(decision.source()),
        ])
    }

    fn add_to(&self, headers: &mut HeaderMap) {
        for (name, value) in Self::NAMES.iter().zip(&self.0) {
            if let Some(value) = value {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

/// A request refused before it reached an instance.
struct Refused(Response<Body>);

impl Gateway {
    /// Returns a gateway deciding with `router` (a connected SDK client).
    pub fn new(router: Client, settings: GatewaySettings) -> Arc<Gateway> {
        Arc::new(Gateway {
            router,
            upstream: Upstream::new(
                settings.connect_timeout,
                settings.idle_timeout,
                settings.max_connections_per_instance,
                settings.max_header_bytes,
            ),
            budget: RetryBudget {
                share: settings.retry_budget,
                window_start_ms: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            },
            settings,
            epoch: Instant::now(),
            labels: HeaderValues::default(),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &GatewaySettings {
        &self.settings
    }

    /// Connections to instances kept open now.
    pub fn kept_connections(&self) -> usize {
        self.upstream.kept()
    }

    /// Serves HTTP/1.1 and HTTP/2 on `listener` until `shutdown` completes (connections open
    /// then finish their requests on their own).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tokio::pin!(shutdown);
        let sweeper = {
            let gateway = Arc::downgrade(&self);
            let every = (self.settings.idle_timeout / 2).max(Duration::from_secs(1));
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    match gateway.upgrade() {
                        Some(gateway) => gateway.upstream.sweep(),
                        None => return,
                    }
                }
            })
        };
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_read_timeout)
            .max_buf_size(self.settings.max_header_bytes.max(8192));
        builder.http2().max_header_list_size(
            u32::try_from(self.settings.max_header_bytes).unwrap_or(u32::MAX),
        );
        let builder = Arc::new(builder);
        let outcome = loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(%err, "gateway: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break Ok(()),
            };
            let _ = stream.set_nodelay(true);
            let gateway = Arc::clone(&self);
            let builder = Arc::clone(&builder);
            tokio::spawn(async move {
                // The caller's address, formatted once per connection.
                let peer = Arc::new(Peer::new(peer.ip()));
                // Plain HTTP/1.1 requests are relayed here; the rest of the connection, from
                // the first request that is not one, is hyper's.
                let mut stream = stream;
                let read = match gateway.serve_plain(&mut stream, &peer).await {
                    plain::Ended::Closed => return,
                    plain::Ended::HandOver(read) => read,
                };
                let stream = plain::Rewind::new(read, stream);
                let service = hyper::service::service_fn(move |request| {
                    let gateway = Arc::clone(&gateway);
                    let peer = Arc::clone(&peer);
                    async move { Ok::<_, Infallible>(gateway.forward(request, Some(&peer)).await) }
                });
                if let Err(err) = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%err, "gateway: connection ended");
                }
            });
        };
        sweeper.abort();
        outcome
    }

    /// Routes and forwards one request from `peer`.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: Option<SocketAddr>,
    ) -> Response<Body> {
        let peer = peer.map(|peer| Peer::new(peer.ip()));
        self.forward(request, peer.as_ref()).await
    }

    async fn forward(&self, request: Request<Incoming>, peer: Option<&Peer>) -> Response<Body> {
        self.budget.request(self.budget.now_ms(self.epoch));
        let (mut parts, body) = request.into_parts();
        let tenant = match self.tenant(&parts).await {
            Ok(tenant) => tenant,
            Err(Refused(answer)) => return answer,
        };
        let Some((service, rewritten)) = resolve::service_of(&self.settings, &parts) else {
            return problem(StatusCode::NOT_FOUND, "no service in the path");
        };
        if let Some(length) = content_length(&parts.headers)
            && length > self.settings.max_body_bytes
        {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body over {} bytes", self.settings.max_body_bytes),
            );
        }
        let path = match rewritten {
            Some(path) => match PathAndQuery::try_from(path) {
                Ok(path) => path,
                Err(_) => return problem(StatusCode::BAD_REQUEST, "the path is not valid"),
            },
            None => parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        if is_upgrade(&parts.headers) {
            let caller = Request::from_parts(parts, body);
            return self.upgrade(caller, &tenant, &service, path, peer).await;
        }
        let grpc = parts.version == Version::HTTP_2 && is_grpc(&parts.headers);
        let keep_te = grpc && parts.headers.contains_key(header::TE);
        strip_hop_by_hop(&mut parts.headers);
        if keep_te {
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if let Some(peer) = peer {
            peer.append_to(&mut parts.headers);
        }
        let retryable = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        ) || (self.settings.retry_post && parts.method == Method::POST);
        // A retryable request's body is kept (up to a limit) to be sent again.
        let (kept, mut streamed) = if body.is_end_stream() {
            (Some(Bytes::new()), None)
        } else if retryable
            && content_length(&parts.headers)
                .is_some_and(|length| length <= self.settings.max_retry_body_bytes as u64)
        {
            match Limited::new(body, self.settings.max_retry_body_bytes)
                .collect()
                .await
            {
                Ok(collected) => (Some(collected.to_bytes()), None),
                Err(_) => return problem(StatusCode::BAD_REQUEST, "the request body failed"),
            }
        } else {
            let limit = usize::try_from(self.settings.max_body_bytes).unwrap_or(usize::MAX);
            (None, Some(Limited::new(body, limit).boxed()))
        };
        let retryable = retryable && kept.is_some();
        let route = RouteRequest::new(&tenant, &service);
        let mut tried: Vec<String> = Vec::new();
        loop {
            let decision = match self.router.route_avoiding(&route, &tried).await {
                Ok(decision) => decision,
                Err(err) => return refusal(&err),
            };
            let body = match (&kept, streamed.take()) {
                (Some(bytes), _) if bytes.is_empty() => empty(),
                (Some(bytes), _) => full(bytes.clone()),
                (None, Some(body)) => body,
                (None, None) => empty(),
            };
            let can_retry = retryable && tried.is_empty();
            let headers = if can_retry {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
            let mut forwarded = Request::new(body);
            *forwarded.method_mut() = parts.method.clone();
            *forwarded.headers_mut() = headers;
            let route_headers = RouteHeaders::new(&self.labels, &decision);
            route_headers.add_to(forwarded.headers_mut());
            let address = decision.address();
            let started = Instant::now();
            let sent = if grpc {
                match absolute_uri(address, &path) {
                    Ok(uri) => *forwarded.uri_mut() = uri,
                    Err(reason) => return problem(StatusCode::BAD_GATEWAY, &reason),
                }
                *forwarded.version_mut() = Version::HTTP_2;
                tokio::time::timeout(
                    self.settings.request_timeout,
                    self.upstream.send_http2(address, forwarded),
                )
                .await
            } else {
                *forwarded.uri_mut() = Uri::from(path.clone());
                tokio::time::timeout(
                    self.settings.request_timeout,
                    self.upstream.send_http1(address, forwarded),
                )
                .await
            };
            let latency = started.elapsed();
            match sent {
                Ok(Ok(response)) => {
                    let status = response.status();
                    self.router.report(
                        &decision,
                        Report {
                            success: !status.is_server_error(),
                            latency,
                            status_code: u32::from(status.as_u16()),
                        },
                    );
                    let unavailable = matches!(
                        status,
                        StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    );
                    if unavailable && can_retry && self.budget.take() {
                        tried.push(decision.instance_id().to_owned());
                        continue;
                    }
                    return answer(response, &route_headers);
                }
                Ok(Err(err)) => {
                    self.router.report(&decision, Report::failure(latency));
                    if can_retry && self.budget.take() {
                        tried.push(decision.instance_id().to_owned());
                        continue;
                    }
                    tracing::debug!(%err, instance = decision.instance_id(), "gateway: forwarding failed");
                    return problem(
                        StatusCode::BAD_GATEWAY,
                        &match err {
                            UpstreamError::Connect(_) => {
                                format!("instance {} did not answer", decision.instance_id())
                            }
                            UpstreamError::Request(_) | UpstreamError::Relay(_) => {
                                format!("instance {} failed the request", decision.instance_id())
                            }
                        },
                    );
                }
                Err(_) => {
                    self.router.report(&decision, Report::failure(latency));
                    return problem(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!(
                            "instance {} did not answer within {} ms",
                            decision.instance_id(),
                            self.settings.request_timeout.as_millis()
                        ),
                    );
                }
            }
        }
    }

    /// The request's tenant, from the first configured source that names one.
    async fn tenant<H: resolve::Head + Sync + ?Sized>(&self, head: &H) -> Result<String, Refused> {
        for source in &self.settings.tenant_from {
            match source {
                TenantSource::Header => {
                    if let Some(tenant) = resolve::tenant_from_header(&self.settings, head) {
                        return Ok(tenant.to_owned());
                    }
                }
                TenantSource::Token => {
                    let (Some(verifier), Some(token)) = (
                        self.settings.token_verifier.as_ref(),
                        resolve::bearer_token(head),
                    ) else {
                        continue;
                    };
                    match verifier.verify(token).await {
                        Ok(caller) => {
                            if let Some(tenant) = &caller.tenant {
                                return Ok(tenant.clone());
                            }
                        }
                        Err(refusal) => {
                            let mut answer =
                                problem(StatusCode::UNAUTHORIZED, &refusal.to_string());
                            answer.headers_mut().insert(
                                header::WWW_AUTHENTICATE,
                                HeaderValue::from_static("Bearer"),
                            );
                            return Err(Refused(answer));
                        }
                    }
                }
                TenantSource::Host => {
                    if let Some(tenant) = resolve::tenant_from_host(&self.settings, head) {
                        return Ok(tenant.to_owned());
                    }
                }
            }
        }
        let how: Vec<String> = self
            .settings
            .tenant_from
            .iter()
            .filter_map(|source| match source {
                TenantSource::Header => Some(format!(
                    "the {} header",
                    self.settings.tenant_header.as_str()
                )),
                TenantSource::Token => self
                    .settings
                    .token_verifier
                    .as_ref()
                    .map(|_| "a bearer token with a tenant claim".to_owned()),
                TenantSource::Host => self
                    .settings
                    .tenant_domain
                    .as_ref()
                    .map(|domain| format!("a host name under {domain}")),
            })
            .collect();
        Err(Refused(problem(
            StatusCode::BAD_REQUEST,
            &format!("no tenant: send {}", how.join(" or ")),
        )))
    }

    /// Passes an HTTP/1.1 upgrade (WebSocket) through: the instance's `101 Switching
    /// Protocols` goes back to the caller, then bytes are copied both ways until either side
    /// closes. Not retried; the outcome reported is the handshake's.
    async fn upgrade(
        &self,
        mut request: Request<Incoming>,
        tenant: &str,
        service: &str,
        path: PathAndQuery,
        peer: Option<&Peer>,
    ) -> Response<Body> {
        let caller = hyper::upgrade::on(&mut request);
        let decision = match self.router.route(&RouteRequest::new(tenant, service)).await {
            Ok(decision) => decision,
            Err(err) => return refusal(&err),
        };
        let (mut parts, body) = request.into_parts();
        // The upgrade's own hop-by-hop headers go on: they are the request.
        let connection = parts.headers.remove(header::CONNECTION);
        let upgrade = parts.headers.remove(header::UPGRADE);
        for name in &HOP_BY_HOP {
            parts.headers.remove(name);
        }
        if let Some(peer) = peer {
            peer.append_to(&mut parts.headers);
        }
        let mut forwarded = Request::new(body.map_err(Into::into).boxed());
        *forwarded.method_mut() = parts.method;
        *forwarded.uri_mut() = Uri::from(path);
        *forwarded.headers_mut() = parts.headers;
        for (name, value) in [(header::CONNECTION, connection), (header::UPGRADE, upgrade)] {
            if let Some(value) = value {
                forwarded.headers_mut().insert(name, value);
            }
        }
        let route_headers = RouteHeaders::new(&self.labels, &decision);
        route_headers.add_to(forwarded.headers_mut());
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            self.settings.request_timeout,
            self.upstream.send_upgrade(decision.address(), forwarded),
        )
        .await;
        let mut response = match outcome {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => {
                self.router
                    .report(&decision, Report::failure(started.elapsed()));
                return problem(
                    StatusCode::BAD_GATEWAY,
                    &format!("instance {} did not answer", decision.instance_id()),
                );
            }
            Err(_) => {
                self.router
                    .report(&decision, Report::failure(started.elapsed()));
                return problem(StatusCode::GATEWAY_TIMEOUT, "the instance did not answer");
            }
        };
        let status = response.status();
        self.router.report(
            &decision,
            Report {
                success: !status.is_server_error(),
                latency: started.elapsed(),
                status_code: u32::from(status.as_u16()),
            },
        );
        if status != StatusCode::SWITCHING_PROTOCOLS {
            return answer(response, &route_headers);
        }
        let instance = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(caller, instance) {
                Ok((caller, instance)) => {
                    let mut caller = TokioIo::new(caller);
                    let mut instance = TokioIo::new(instance);
                    let _ = tokio::io::copy_bidirectional(&mut caller, &mut instance).await;
                }
                Err(err) => tracing::debug!(%err, "gateway: upgrade failed"),
            }
        });
        let (mut parts, _) = response.into_parts();
        route_headers.add_to(&mut parts.headers);
        Response::from_parts(parts, empty())
    }
}

/// Whether a request asks to switch protocols (`Connection: upgrade` with an `Upgrade`).
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes the headers of one hop (a walk over the few headers there are first: most messages
/// have none of them, and a walk is cheaper than eight lookups).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
}

/// Whether a request is gRPC (`content-type: application/grpc`, `application/grpc+proto`...).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// The declared body length, when there is one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The caller at the other end of a connection.
struct Peer {
    ip: IpAddr,
    /// `ip` as a header value.
    forwarded_for: HeaderValue,
}

impl Peer {
    fn new(ip: IpAddr) -> Peer {
        let forwarded_for = HeaderValue::try_from(ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer { ip, forwarded_for }
    }

    /// Adds the caller's address to `X-Forwarded-For`.
    fn append_to(&self, headers: &mut HeaderMap) {
        let value = match headers.get(&FORWARDED_FOR).map(HeaderValue::to_str) {
            None => Some(self.forwarded_for.clone()),
            Some(Ok(earlier)) => HeaderValue::try_from(format!("{earlier}, {}", self.ip)).ok(),
            Some(Err(_)) => None,
        };
        if let Some(value) = value {
            headers.insert(FORWARDED_FOR, value);
        }
    }
}

/// `http://address/path` (HTTP/2 requests carry the authority).
fn absolute_uri(address: &str, path: &PathAndQuery) -> Result<Uri, String> {
    Uri::builder()
        .scheme("http")
        .authority(address)
        .path_and_query(path.clone())
        .build()
        .map_err(|_| format!("instance address {address:?} is not usable"))
}

/// The instance's response, with the route headers added.
fn answer(response: Response<Incoming>, route_headers: &RouteHeaders) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    route_headers.add_to(&mut parts.headers);
    Response::from_parts(parts, body.map_err(Into::into).boxed())
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// The gateway's own answer to a request it cannot route.
fn refusal(err: &ClientError) -> Response<Body> {
    let status = match err {
        ClientError::NoHealthyInstance { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ClientError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => match i32::from(err.code()) {
            tonic_code::NOT_FOUND => StatusCode::NOT_FOUND,
            tonic_code::INVALID_ARGUMENT => StatusCode::BAD_REQUEST,
            tonic_code::FAILED_PRECONDITION => StatusCode::FORBIDDEN,
            tonic_code::DEADLINE_EXCEEDED => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        },
    };
    problem(status, &err.to_string())
}

/// gRPC codes as numbers, so the gateway needs no gRPC types of its own.
mod tonic_code {
    pub(crate) const INVALID_ARGUMENT: i32 = 3;
    pub(crate) const DEADLINE_EXCEEDED: i32 = 4;
    pub(crate) const NOT_FOUND: i32 = 5;
    pub(crate) const FAILED_PRECONDITION: i32 = 9;
}

/// A small JSON error document; 503 says when to retry.
fn problem(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({"status": status.as_u16(), "error": message}).to_string();
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use http::request::Parts;

    use super::*;

    fn settings() -> GatewaySettings {
        GatewaySettings {
            tenant_domain: Some("example.com".into()),
            routes: vec![
                RouteRule {
                    prefix: "/shop".into(),
                    service: "shop".into(),
                    strip_prefix: false,
                },
                RouteRule {
                    prefix: "/shop/api".into(),
                    service: "shop-api".into(),
                    strip_prefix: true,
                },
            ],
            ..GatewaySettings::default()
        }
    }

    fn parts(request: Request<()>) -> Parts {
        request.into_parts().0
    }

    fn tenant(request: Request<()>) -> Option<String> {
        let settings = settings();
        let parts = parts(request);
        resolve::tenant_from_header(&settings, &parts)
            .or_else(|| resolve::tenant_from_host(&settings, &parts))
            .map(str::to_owned)
    }

    #[test]
    fn the_header_names_the_tenant_before_the_host() {
        let request = Request::get("/x")
            .header("x-tenant-id", "acme")
            .header("host", "globex.example.com:8080")
            .body(())
            .expect("request");
        assert_eq!(tenant(request).as_deref(), Some("acme"));
        let request = Request::get("/x")
            .header("host", "globex.example.com:8080")
            .body(())
            .expect("request");
        assert_eq!(tenant(request).as_deref(), Some("globex"));
        for host in [
            "example.com",
            "a.b.example.com",
            "globex.example.org",
            "xexample.com",
        ] {
            let request = Request::get("/x")
                .header("host", host)
                .body(())
                .expect("request");
            assert_eq!(tenant(request), None, "{host}");
        }
    }

    #[test]
    fn a_bearer_token_is_read_from_the_authorization_header() {
        let token = |value: &str| {
            let parts = parts(
                Request::get("/x")
                    .header("authorization", value)
                    .body(())
                    .expect("request"),
            );
            resolve::bearer_token(&parts).map(str::to_owned)
        };
        assert_eq!(token("Bearer abc.def.ghi").as_deref(), Some("abc.def.ghi"));
        assert_eq!(token("bearer abc").as_deref(), Some("abc"));
        assert_eq!(token("Basic dXNlcjpwYXNz"), None);
        assert_eq!(token("Bearer "), None);
    }

    #[test]
    fn the_longest_prefix_names_the_service_then_the_first_segment() {
        let settings = settings();
        let service = |path: &str| {
            let parts = parts(Request::get(path).body(()).expect("request"));
            resolve::service_of(&settings, &parts)
        };
        assert_eq!(
            service("/shop/api/orders?id=1"),
            Some(("shop-api".into(), Some("/orders?id=1".into())))
        );
        assert_eq!(service("/shop/cart"), Some(("shop".into(), None)));
        assert_eq!(service("/shopping/x"), Some(("shopping".into(), None)));
        assert_eq!(
            service("/shop/api"),
            Some(("shop-api".into(), Some("/".into())))
        );
        assert_eq!(service("/"), None);
        let request = Request::get("/anything")
            .header("x-service", "billing")
            .body(())
            .expect("request");
        assert_eq!(
            resolve::service_of(&settings, &parts(request)),
            Some(("billing".into(), None))
        );
    }

    #[test]
    fn tenant_sources_are_named_in_the_configuration() {
        let sources: Result<Vec<TenantSource>, String> = ["header", "token", "host"]
            .iter()
            .map(|s| s.parse())
            .collect();
        assert_eq!(
            sources.expect("sources"),
            vec![
                TenantSource::Header,
                TenantSource::Token,
                TenantSource::Host
            ]
        );
        assert!("cookie".parse::<TenantSource>().is_err());
    }

    #[test]
    fn forwarded_for_lists_every_hop() {
        let mut headers = HeaderMap::new();
        Peer::new(IpAddr::from([10, 0, 0, 1])).append_to(&mut headers);
        Peer::new(IpAddr::from([127, 0, 0, 1])).append_to(&mut headers);
        assert_eq!(
            headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
            Some("10.0.0.1, 127.0.0.1")
        );
    }

    #[test]
    fn retries_stay_within_their_share_of_requests() {
        let budget = RetryBudget {
            share: 0.2,
            window_start_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        };
        for _ in 0..100 {
            budget.request(1);
        }
        let granted = (0..1000).filter(|_| budget.take()).count();
        assert_eq!(granted, 20 + BUDGET_FLOOR as usize);
        // A new window starts over.
        budget.request(BUDGET_WINDOW_MS + 1);
        assert!(budget.take());
    }
}
