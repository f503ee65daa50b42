//! The HTTP gateway: a reverse proxy that routes every request by its tenant.
//!
//! For each request it finds the tenant (a header, default `X-Tenant-Id`, else the host name's
//! first label under a configured domain), finds the service (a header, a route table of path
//! prefixes, else the first path segment), decides locally from the SDK's watch-fed copy of the
//! assignments (no network hop per request once the copy holds the pair), forwards to the
//! chosen instance with `X-Service-Version`, `X-Target-Instance` and `X-Route-Source`, and
//! reports the outcome (a 5xx or a failed connection is a failure) so that outlier ejection and
//! canary analysis see the traffic. Idempotent requests are retried once on another instance
//! within a retry budget; POST only when configured. Errors it answers itself are small JSON
//! documents: 400 without a tenant, 404 for an unknown tenant or service, 503 with
//! `Retry-After` when no instance is healthy, 504 on a timeout, 502 when the instance fails.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use greyrouter_client::{Client, ClientError, Decision, Report, RouteRequest};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The body type of forwarded requests and of answers.
pub type Body = BoxBody<Bytes, hyper::Error>;

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

/// How the gateway finds tenants and services, and its limits.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// The header naming the tenant.
    pub tenant_header: HeaderName,
    /// With a domain (`example.com`), a request to `acme.example.com` is tenant `acme` when the
    /// header is absent.
    pub tenant_domain: Option<String>,
    /// The header naming the service (before the route table).
    pub service_header: HeaderName,
    /// Path prefixes of services; without a match, the first path segment names the service.
    pub routes: Vec<RouteRule>,
    /// Longest wait for a connection to an instance.
    pub connect_timeout: Duration,
    /// Longest wait for an instance's response headers.
    pub request_timeout: Duration,
    /// Share of requests that may be retries (over a 10 s window; at least 10 retries).
    pub retry_budget: f64,
    /// Retry POST too (never by default: it may not be idempotent).
    pub retry_post: bool,
    /// Largest request body kept to retry an idempotent request; larger bodies are streamed and
    /// their requests not retried.
    pub max_retry_body_bytes: usize,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            tenant_header: HeaderName::from_static("x-tenant-id"),
            tenant_domain: None,
            service_header: HeaderName::from_static("x-service"),
            routes: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            retry_budget: 0.2,
            retry_post: false,
            max_retry_body_bytes: 1024 * 1024,
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
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
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

/// The gateway: the SDK's copy of the assignments, a pool of connections to instances.
#[derive(Debug)]
pub struct Gateway {
    router: Client,
    http: HttpClient<HttpConnector, Body>,
    settings: GatewaySettings,
    budget: RetryBudget,
    epoch: Instant,
}

impl Gateway {
    /// Returns a gateway deciding with `router` (a connected SDK client).
    pub fn new(router: Client, settings: GatewaySettings) -> Arc<Gateway> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Arc::new(Gateway {
            router,
            http,
            budget: RetryBudget {
                share: settings.retry_budget,
                window_start_ms: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            },
            settings,
            epoch: Instant::now(),
        })
    }

    /// Serves HTTP/1.1 and HTTP/2 on `listener` until `shutdown` completes (connections open
    /// then finish their requests on their own).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(%err, "gateway: accept failed");
                        continue;
                    }
                },
                () = &mut shutdown => return Ok(()),
            };
            let _ = stream.set_nodelay(true);
            let gateway = Arc::clone(&self);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let gateway = Arc::clone(&gateway);
                    async move { Ok::<_, Infallible>(gateway.handle(request).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(err) = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%err, "gateway: connection ended");
                }
            });
        }
    }

    /// Routes and forwards one request.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        self.budget.request(self.budget.now_ms(self.epoch));
        let Some(tenant) = self.tenant(&request) else {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!(
                    "no tenant: send the {} header",
                    self.settings.tenant_header.as_str()
                ),
            );
        };
        let Some((service, path)) = self.service(&request) else {
            return problem(StatusCode::NOT_FOUND, "no service in the path");
        };
        if is_upgrade(request.headers()) {
            return self.upgrade(request, &tenant, &service, &path).await;
        }
        let retryable = matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        ) || (self.settings.retry_post && request.method() == Method::POST);
        let (parts, body) = request.into_parts();
        // A retryable request's body is kept (up to a limit) to be sent again.
        let small = body_is_small(&parts.headers, self.settings.max_retry_body_bytes);
        let (kept, mut streamed) = if retryable && small {
            match Limited::new(body, self.settings.max_retry_body_bytes)
                .collect()
                .await
            {
                Ok(collected) => (Some(collected.to_bytes()), None),
                Err(_) => {
                    return problem(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
                }
            }
        } else {
            (None, Some(body.boxed()))
        };
        let route = RouteRequest::new(&tenant, &service);
        let mut tried: Vec<String> = Vec::new();
        loop {
            let decision = match self.router.route_avoiding(&route, &tried).await {
                Ok(decision) => decision,
                Err(err) => return refusal(&err),
            };
            let body = match (&kept, streamed.take()) {
                (Some(bytes), _) => Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed(),
                (None, Some(body)) => body,
                (None, None) => Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed(),
            };
            let forwarded = match forward_request(&parts, &decision, &path, body) {
                Ok(forwarded) => forwarded,
                Err(reason) => return problem(StatusCode::BAD_GATEWAY, &reason),
            };
            let started = Instant::now();
            let outcome =
                tokio::time::timeout(self.settings.request_timeout, self.http.request(forwarded))
                    .await;
            let latency = started.elapsed();
            let can_retry = kept.is_some() && tried.is_empty();
            match outcome {
                Ok(Ok(response)) => {
                    let status = response.status();
                    let failed = status.is_server_error();
                    self.router.report(
                        &decision,
                        Report {
                            success: !failed,
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
                    return answer(response, &decision);
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
                        &format!("instance {} did not answer", decision.instance_id()),
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

    /// Passes an HTTP/1.1 upgrade (WebSocket) through: the instance's `101 Switching
    /// Protocols` goes back to the caller, then bytes are copied both ways until either side
    /// closes. Not retried; the outcome reported is the handshake's.
    async fn upgrade(
        &self,
        mut request: Request<Incoming>,
        tenant: &str,
        service: &str,
        path: &str,
    ) -> Response<Body> {
        let caller = hyper::upgrade::on(&mut request);
        let decision = match self.router.route(&RouteRequest::new(tenant, service)).await {
            Ok(decision) => decision,
            Err(err) => return refusal(&err),
        };
        let (parts, body) = request.into_parts();
        let mut forwarded = match forward_request(&parts, &decision, path, body.boxed()) {
            Ok(forwarded) => forwarded,
            Err(reason) => return problem(StatusCode::BAD_GATEWAY, &reason),
        };
        // The upgrade's own hop-by-hop headers go on: they are the request.
        for name in [header::CONNECTION, header::UPGRADE] {
            if let Some(value) = parts.headers.get(&name) {
                forwarded.headers_mut().insert(name, value.clone());
            }
        }
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(self.settings.request_timeout, self.http.request(forwarded)).await;
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
            return answer(response, &decision);
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
        add_route_headers(&mut parts.headers, &decision);
        Response::from_parts(
            parts,
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        )
    }

    fn tenant<B>(&self, request: &Request<B>) -> Option<String> {
        tenant_of(&self.settings, request)
    }

    fn service<B>(&self, request: &Request<B>) -> Option<(String, String)> {
        service_of(&self.settings, request)
    }
}

/// The tenant: the header, else the host's first label under the configured domain.
fn tenant_of<B>(settings: &GatewaySettings, request: &Request<B>) -> Option<String> {
    if let Some(value) = request.headers().get(&settings.tenant_header) {
        return value
            .to_str()
            .ok()
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
    }
    let domain = settings.tenant_domain.as_deref()?;
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())?;
    let host = host.split(':').next().unwrap_or(host);
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then(|| label.to_owned())
}

/// The service (the header, the longest matching route, else the first path segment) and the
/// path to forward.
fn service_of<B>(settings: &GatewaySettings, request: &Request<B>) -> Option<(String, String)> {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    if let Some(value) = request.headers().get(&settings.service_header) {
        let service = value.to_str().ok().filter(|v| !v.is_empty())?;
        return Some((service.to_owned(), path_and_query));
    }
    let path = request.uri().path();
    let rule = settings
        .routes
        .iter()
        .filter(|rule| {
            path.strip_prefix(rule.prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|rule| rule.prefix.len());
    if let Some(rule) = rule {
        let forwarded = if rule.strip_prefix {
            let rest = &path_and_query[rule.prefix.len()..];
            if rest.starts_with('/') {
                rest.to_owned()
            } else {
                format!("/{rest}")
            }
        } else {
            path_and_query
        };
        return Some((rule.service.clone(), forwarded));
    }
    let first = path.trim_start_matches('/').split('/').next()?;
    (!first.is_empty()).then(|| (first.to_owned(), path_and_query))
}

/// Whether a request asks to switch protocols (`Connection: upgrade` with an `Upgrade`).
fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Whether a request's body is known to fit in `limit` (no body, or a small Content-Length).
fn body_is_small(headers: &http::HeaderMap, limit: usize) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return false;
    }
    match headers.get(header::CONTENT_LENGTH) {
        None => true,
        Some(length) => length
            .to_str()
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
            .is_some_and(|l| l <= limit),
    }
}

/// The request to send to the decided instance.
fn forward_request(
    parts: &http::request::Parts,
    decision: &Decision,
    path: &str,
    body: Body,
) -> Result<Request<Body>, String> {
    let uri: Uri = format!("http://{}{}", decision.address(), path)
        .parse()
        .map_err(|_| format!("instance address {:?} is not usable", decision.address()))?;
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .version(http::Version::HTTP_11)
        .body(body)
        .map_err(|err| err.to_string())?;
    let headers = request.headers_mut();
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            headers.append(name, value.clone());
        }
    }
    add_route_headers(headers, decision);
    Ok(request)
}

fn add_route_headers(headers: &mut http::HeaderMap, decision: &Decision) {
    for (name, value) in [
        (headers::SERVICE_VERSION, decision.version()),
        (headers::TARGET_INSTANCE, decision.instance_id()),
        (headers::ROUTE_SOURCE, decision.source()),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

/// The instance's response, with the route headers added.
fn answer(response: Response<Incoming>, decision: &Decision) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    add_route_headers(&mut parts.headers, decision);
    Response::from_parts(parts, body.boxed())
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
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
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

    fn resolve(request: Request<()>) -> (Option<String>, Option<(String, String)>) {
        let settings = settings();
        let tenant = tenant_of(&settings, &request);
        let service = service_of(&settings, &request);
        (tenant, service)
    }

    #[test]
    fn the_header_names_the_tenant_before_the_host() {
        let request = Request::get("/x")
            .header("x-tenant-id", "acme")
            .header("host", "globex.example.com:8080")
            .body(())
            .expect("request");
        assert_eq!(resolve(request).0.as_deref(), Some("acme"));
        let request = Request::get("/x")
            .header("host", "globex.example.com:8080")
            .body(())
            .expect("request");
        assert_eq!(resolve(request).0.as_deref(), Some("globex"));
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
            assert_eq!(resolve(request).0, None, "{host}");
        }
    }

    #[test]
    fn the_longest_prefix_names_the_service_then_the_first_segment() {
        let service = |path: &str| resolve(Request::get(path).body(()).expect("request")).1;
        assert_eq!(
            service("/shop/api/orders?id=1"),
            Some(("shop-api".into(), "/orders?id=1".into()))
        );
        assert_eq!(
            service("/shop/cart"),
            Some(("shop".into(), "/shop/cart".into()))
        );
        assert_eq!(
            service("/shopping/x"),
            Some(("shopping".into(), "/shopping/x".into()))
        );
        assert_eq!(service("/shop/api"), Some(("shop-api".into(), "/".into())));
        assert_eq!(service("/"), None);
        let request = Request::get("/anything")
            .header("x-service", "billing")
            .body(())
            .expect("request");
        assert_eq!(
            resolve(request).1,
            Some(("billing".into(), "/anything".into()))
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
