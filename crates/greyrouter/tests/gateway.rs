//! The HTTP gateway against real HTTP backends (small hyper servers that say which instance
//! they are), a router in this process and the SDK's watch-fed copy of its assignments.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use gateway::{Gateway, GatewaySettings};
use greyrouter_client::{Client, ClientConfig};
use greyrouter_proto::v1 as pb;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{DEADLINE, TestServer, instance, within};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A backend instance: answers its id (and the route headers it got), `/fail` with 503,
/// `/stream` in two chunks with a pause the test ends; counts the requests it got.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(id: &'static str, failing: bool) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let hits = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let (counted, released) = (Arc::clone(&hits), Arc::clone(&release));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (hits, release) = (Arc::clone(&counted), Arc::clone(&released));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (hits, release) = (Arc::clone(&hits), Arc::clone(&release));
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            if request.uri().path().ends_with("/echo") {
                                return Ok::<_, Infallible>(echo(request).await);
                            }
                            Ok::<_, Infallible>(respond(id, failing, request, release))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend {
            addr,
            hits,
            release,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `/echo`: the length and the byte sum of the request body.
async fn echo(request: Request<Incoming>) -> Response<Body> {
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => return Response::new(Full::new(Bytes::from(err.to_string())).boxed()),
    };
    let sum: u64 = body.iter().map(|&byte| u64::from(byte)).sum();
    Response::new(Full::new(Bytes::from(format!("{} {sum}", body.len()))).boxed())
}

fn respond(
    id: &str,
    failing: bool,
    mut request: Request<Incoming>,
    release: Arc<Notify>,
) -> Response<Body> {
    if request.headers().contains_key("upgrade") {
        // Switches protocols, then echoes every byte back (what a WebSocket echo does to the
        // frames it gets).
        let upgraded = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(upgraded) = upgraded.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            let mut buffer = [0_u8; 1024];
            while let Ok(read) = io.read(&mut buffer).await {
                if read == 0 || io.write_all(&buffer[..read]).await.is_err() {
                    return;
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()).boxed())
            .expect("a response");
    }
    if failing || request.uri().path().ends_with("/fail") {
        let mut response = Response::new(Full::new(Bytes::from("failing")).boxed());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return response;
    }
    if request.uri().path().ends_with("/stream") {
        let (chunks, body) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
        tokio::spawn(async move {
            let _ = chunks.send(Ok(Frame::data(Bytes::from("first;")))).await;
            release.notified().await;
            let _ = chunks.send(Ok(Frame::data(Bytes::from("second")))).await;
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(body);
        return Response::new(StreamBody::new(stream).boxed());
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let text = format!(
        "{id} {} {} {} {}",
        header("x-service-version"),
        header("x-target-instance"),
        header("x-route-source"),
        request.uri().path()
    );
    Response::new(Full::new(Bytes::from(text)).boxed())
}

/// A router, the SDK following it, and a gateway in front.
struct Setup {
    server: TestServer,
    client: Client,
    gateway: SocketAddr,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl Setup {
    async fn start() -> Setup {
        Setup::with(GatewaySettings::default()).await
    }

    async fn with(settings: GatewaySettings) -> Setup {
        let server = TestServer::start().await;
        let client = Client::connect(ClientConfig::new(format!("http://{}", server.addr)))
            .await
            .expect("the SDK connects");
        client.ready(DEADLINE).await.expect("a first snapshot");
        let gateway = Gateway::new(client.clone(), settings);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(gateway.serve(listener, std::future::pending()));
        Setup {
            server,
            client,
            gateway: addr,
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A setup whose service `api` (default v1) has one instance, `a1` on `backend`, and
    /// tenant `acme`, once the SDK's copy holds them.
    async fn serving(settings: GatewaySettings, backend: &Backend) -> Setup {
        let mut setup = Setup::with(settings).await;
        setup
            .server
            .service("api", "v1", pb::Strategy::RoundRobin)
            .await;
        setup.register("v1", "a1", backend).await;
        let revision = setup.server.tenant("acme", "eu").await;
        setup.synced(revision).await;
        setup
    }

    async fn register(&mut self, version: &str, id: &str, backend: &Backend) -> u64 {
        let mut registered = instance("api", version, id, "eu");
        registered.address = backend.addr.to_string();
        self.server
            .admin
            .register_instance(pb::RegisterInstanceRequest {
                instance: Some(registered),
                ttl_seconds: 0,
            })
            .await
            .expect("register")
            .into_inner()
            .revision
    }

    /// Waits until the SDK's copy is at `revision`.
    async fn synced(&self, revision: u64) {
        self.client
            .wait_for_revision(revision, DEADLINE)
            .await
            .expect("the copy follows");
    }

    async fn send(&self, method: Method, tenant: Option<&str>, path: &str) -> (StatusCode, String) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.gateway));
        if let Some(tenant) = tenant {
            request = request.header("x-tenant-id", tenant);
        }
        let request = request.body(Full::new(Bytes::new())).expect("request");
        let response = within(self.http.request(request)).await.expect("an answer");
        let status = response.status();
        let body = within(response.into_body().collect())
            .await
            .expect("a body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn get(&self, tenant: &str, path: &str) -> (StatusCode, String) {
        self.send(Method::GET, Some(tenant), path).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_version_of_their_tenant_and_follow_a_rollback() {
    let v1 = Backend::start("a1", false).await;
    let v2 = Backend::start("b1", false).await;
    let mut setup = Setup::start().await;
    setup
        .server
        .service("api", "v1", pb::Strategy::RoundRobin)
        .await;
    setup.register("v1", "a1", &v1).await;
    setup.register("v2", "b1", &v2).await;
    setup.server.tenant("acme", "eu").await;
    setup.server.tenant("globex", "eu").await;
    let revision = setup.server.pin("acme", "api", "v2").await;
    setup.synced(revision).await;

    let (status, body) = setup.get("acme", "/api/orders").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "b1 v2 b1 pin /api/orders");
    let (_, body) = setup.get("globex", "/api/orders").await;
    assert_eq!(body, "a1 v1 a1 default /api/orders");

    // A rollback (the pin back to v1) moves the next request.
    let revision = setup.server.pin("acme", "api", "v1").await;
    setup.synced(revision).await;
    let (_, body) = setup.get("acme", "/api/orders").await;
    assert!(body.starts_with("a1 v1"), "{body}");

    // The gateway's own answers.
    let (status, body) = setup.send(Method::GET, None, "/api/orders").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("x-tenant-id"), "{body}");
    let (status, body) = setup.get("nobody", "/api/orders").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = setup.get("acme", "/no-such-service/x").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_elsewhere_and_a_post_never() {
    let healthy = Backend::start("a1", false).await;
    let failing = Backend::start("a2", true).await;
    let mut setup = Setup::start().await;
    setup
        .server
        .service("api", "v1", pb::Strategy::RoundRobin)
        .await;
    setup.register("v1", "a1", &healthy).await;
    setup.register("v1", "a2", &failing).await;
    let revision = setup.server.tenant("acme", "eu").await;
    setup.synced(revision).await;

    // A POST that meets the failing instance gets its answer: never sent twice. Round robin
    // alternates instances, so one of the first few meets it.
    let mut failed_post = false;
    for _ in 0..4 {
        let (healthy_before, failing_before) = (healthy.hits(), failing.hits());
        let (status, _) = setup.send(Method::POST, Some("acme"), "/api/orders").await;
        let sent = (healthy.hits() - healthy_before) + (failing.hits() - failing_before);
        assert_eq!(sent, 1, "a POST reaches one instance once");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            failed_post = true;
            break;
        }
    }
    assert!(
        failed_post,
        "a POST met the failing instance and got its 503"
    );

    // A GET whose first attempt meets the failing instance is retried on the healthy one.
    let mut retried = false;
    for _ in 0..4 {
        let (healthy_before, failing_before) = (healthy.hits(), failing.hits());
        let (status, body) = setup.get("acme", "/api/orders").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.starts_with("a1 "), "{body}");
        if failing.hits() > failing_before {
            assert_eq!(
                healthy.hits() - healthy_before,
                1,
                "then sent once elsewhere"
            );
            retried = true;
            break;
        }
    }
    assert!(retried, "a GET met the failing instance and was retried");

    // The reports eject the failing instance: requests stop reaching it.
    let before = failing.hits();
    for _ in 0..10 {
        setup.get("acme", "/api/orders").await;
    }
    assert!(
        setup.client.status().ejections >= 1,
        "{:?}",
        setup.client.status()
    );
    assert!(
        failing.hits() - before < 5,
        "ejected instances get no more traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_arrives_chunk_by_chunk() {
    let backend = Backend::start("a1", false).await;
    let setup = Setup::serving(GatewaySettings::default(), &backend).await;

    let request = Request::get(format!("http://{}/api/stream", setup.gateway))
        .header("x-tenant-id", "acme")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = within(setup.http.request(request)).await.expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // The first chunk arrives while the backend still holds the second.
    let first = within(body.frame())
        .await
        .expect("a frame")
        .expect("data")
        .into_data()
        .expect("data");
    assert_eq!(first, Bytes::from("first;"));
    backend.release.notify_one();
    let rest = within(body.collect()).await.expect("the rest").to_bytes();
    assert_eq!(rest, Bytes::from("second"));
}

/// `greyrouter gateway` as its own process in front of a router.
struct GatewayProcess(std::process::Child);

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_command_routes_by_tenant_and_path_prefix() {
    use std::io::BufRead;
    let backend = Backend::start("a1", false).await;
    let setup = Setup::serving(GatewaySettings::default(), &backend).await;

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_greyrouter"))
        .args([
            "gateway",
            "--server",
            &format!("http://{}", setup.server.addr),
            "--listen",
            "127.0.0.1:0",
            "--route",
            "/shop/api=api",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the gateway");
    let stdout = child.stdout.take().expect("stdout");
    let process = GatewayProcess(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    });
    let line = within(line).await.expect("joined").expect("a line");
    let addr = line
        .trim()
        .strip_prefix("greyrouter gateway listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();

    let request = Request::get(format!("http://{addr}/shop/api/orders?id=7"))
        .header("x-tenant-id", "acme")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = within(setup.http.request(request)).await.expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("x-service-version")
            .map(|v| v.as_bytes()),
        Some(&b"v1"[..])
    );
    let body = within(response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    // The prefix is stripped before forwarding.
    assert_eq!(body, Bytes::from("a1 v1 a1 default /orders"));
    drop(process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_passes_through_and_echoes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start("a1", false).await;
    let setup = Setup::serving(GatewaySettings::default(), &backend).await;

    let mut stream = within(tokio::net::TcpStream::connect(setup.gateway))
        .await
        .expect("connect");
    let handshake = "GET /api/chat HTTP/1.1\r\nHost: gateway\r\nX-Tenant-Id: acme\r\n\
                     Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    within(stream.write_all(handshake.as_bytes()))
        .await
        .expect("handshake sent");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0_u8; 1];
        let read = within(stream.read(&mut byte)).await.expect("read");
        assert_eq!(
            read,
            1,
            "the gateway closed: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("x-target-instance: a1"), "{head}");

    // A masked text frame "hi", as a browser sends it; the echo comes back byte for byte.
    let frame = [0x81_u8, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    for _ in 0..3 {
        within(stream.write_all(&frame)).await.expect("frame sent");
        let mut echoed = [0_u8; 8];
        within(stream.read_exact(&mut echoed)).await.expect("echo");
        assert_eq!(echoed, frame);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_is_retried_around_then_ejected() {
    let healthy = Backend::start("a1", false).await;
    let killed = Backend::start("a2", false).await;
    let mut setup = Setup::start().await;
    setup
        .server
        .service("api", "v1", pb::Strategy::RoundRobin)
        .await;
    setup.register("v1", "a1", &healthy).await;
    setup.register("v1", "a2", &killed).await;
    let revision = setup.server.tenant("acme", "eu").await;
    setup.synced(revision).await;
    // The instance goes away: its port refuses connections.
    let gone = killed.addr;
    drop(killed);
    within(async {
        while tokio::net::TcpStream::connect(gone).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;

    for _ in 0..12 {
        let (status, body) = setup.get("acme", "/api/orders").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.starts_with("a1 "), "{body}");
    }
    let status = setup.client.status();
    assert!(
        status.ejections >= 1,
        "the failed connections ejected it: {status:?}"
    );
}

/// The routers' own gRPC API as the backend: a second router registered as the instance of
/// service `grpc-api`, called through the gateway over HTTP/2 (unary, a streamed response, an
/// error status in the trailers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_passes_through_over_http2_with_streams_and_trailers() {
    use greyrouter_proto::v1::router_client::RouterClient;
    let mut backend = TestServer::start().await;
    backend.service("api", "v1", pb::Strategy::RoundRobin).await;
    backend.tenant("acme", "eu").await;
    backend.instance("api", "v1", "inner-1", "eu").await;

    let mut setup = Setup::start().await;
    setup
        .server
        .service("grpc-api", "v1", pb::Strategy::RoundRobin)
        .await;
    let mut registered = instance("grpc-api", "v1", "router-1", "eu");
    registered.address = backend.addr.to_string();
    setup
        .server
        .admin
        .register_instance(pb::RegisterInstanceRequest {
            instance: Some(registered),
            ttl_seconds: 0,
        })
        .await
        .expect("register");
    let revision = setup.server.tenant("acme", "eu").await;
    setup.synced(revision).await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", setup.gateway))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the gateway");
    let mut router = RouterClient::new(channel);
    fn through<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("x-tenant-id", "acme".parse().expect("value"));
        request
            .metadata_mut()
            .insert("x-service", "grpc-api".parse().expect("value"));
        request
    }

    // Unary: the backend router answers from its own state.
    let answer = within(router.route(through(pb::RouteRequest {
        tenant_id: "acme".into(),
        service: "api".into(),
        ..Default::default()
    })))
    .await
    .expect("routed through the gateway");
    assert_eq!(
        answer
            .metadata()
            .get("x-target-instance")
            .and_then(|v| v.to_str().ok()),
        Some("router-1")
    );
    assert_eq!(answer.into_inner().instance_id, "inner-1");

    // An error travels in the trailers.
    let refused = within(router.route(through(pb::RouteRequest {
        tenant_id: "nobody".into(),
        service: "api".into(),
        ..Default::default()
    })))
    .await
    .expect_err("unknown tenant");
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused}");

    // A server stream: the watch's first message is the backend's snapshot, and a change
    // made on the backend arrives on the same stream.
    let mut updates = within(
        router.watch_assignments(through(pb::WatchAssignmentsRequest {
            tenant_ids: vec!["acme".into()],
            ..Default::default()
        })),
    )
    .await
    .expect("a watch through the gateway")
    .into_inner();
    let first = within(updates.message())
        .await
        .expect("a message")
        .expect("not the end");
    assert!(first.snapshot, "{first:?}");
    backend.instance("api", "v2", "inner-2", "eu").await;
    let changed = backend.pin("acme", "api", "v2").await;
    let update = within(async {
        loop {
            let update = updates.message().await.expect("a message").expect("open");
            if update.revision >= changed && !update.partial {
                return update;
            }
        }
    })
    .await;
    assert!(
        update.upserts.iter().any(|a| a.version == "v2"),
        "{update:?}"
    );
}

fn hs256_token(secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret).expect("a key"),
    )
    .expect("a token")
}

/// A verified bearer token's tenant claim names the tenant when the header does not; a bad
/// token is refused with 401 and never routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_token_names_the_tenant() {
    const SECRET: &[u8] = b"a shared secret of at least 32 bytes, for tests";
    let v1 = Backend::start("a1", false).await;
    let v2 = Backend::start("b1", false).await;
    let mut jwt = auth::jwt::JwtSettings::new("https://id.test/", "gateway");
    jwt.algorithms = vec![auth::jwt::Algorithm::HS256];
    jwt.hs256_secret = Some(SECRET.to_vec());
    jwt.tenant_claim = Some("tenant_id".into());
    let verifier = Arc::new(auth::jwt::JwtVerifier::new(jwt).expect("a verifier"));
    let mut setup = Setup::with(GatewaySettings {
        token_verifier: Some(verifier),
        ..GatewaySettings::default()
    })
    .await;
    setup
        .server
        .service("api", "v1", pb::Strategy::RoundRobin)
        .await;
    setup.register("v1", "a1", &v1).await;
    setup.register("v2", "b1", &v2).await;
    setup.server.tenant("acme", "eu").await;
    setup.server.tenant("globex", "eu").await;
    let revision = setup.server.pin("acme", "api", "v2").await;
    setup.synced(revision).await;

    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        + 600;
    let claims = |tenant: Option<&str>| {
        let mut claims = serde_json::json!({
            "iss": "https://id.test/", "aud": "gateway", "sub": "svc", "exp": exp,
        });
        if let Some(tenant) = tenant {
            claims["tenant_id"] = tenant.into();
        }
        claims
    };
    let send = |authorization: String, tenant_header: Option<&'static str>| {
        let mut request = Request::get(format!("http://{}/api/orders", setup.gateway))
            .header("authorization", authorization);
        if let Some(tenant) = tenant_header {
            request = request.header("x-tenant-id", tenant);
        }
        let request = request.body(Full::new(Bytes::new())).expect("request");
        let http = setup.http.clone();
        async move {
            let response = within(http.request(request)).await.expect("an answer");
            let status = response.status();
            let body = within(response.into_body().collect())
                .await
                .expect("a body")
                .to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };

    let token = hs256_token(SECRET, &claims(Some("acme")));
    let (status, body) = send(format!("Bearer {token}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.starts_with("b1 v2"),
        "acme's claim routes to v2: {body}"
    );
    // The header comes first in the default order.
    let (_, body) = send(format!("Bearer {token}"), Some("globex")).await;
    assert!(body.starts_with("a1 v1"), "{body}");
    // Signed with another secret: refused, not routed.
    let forged = hs256_token(
        b"another secret, also at least 32 bytes long",
        &claims(Some("acme")),
    );
    let before = v2.hits();
    let (status, body) = send(format!("Bearer {forged}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("invalid token"), "{body}");
    assert_eq!(v2.hits(), before);
    // A valid token without the claim, and no other source: no tenant.
    let anonymous = hs256_token(SECRET, &claims(None));
    let (status, body) = send(format!("Bearer {anonymous}"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("tenant claim"), "{body}");
}

/// Request heads and bodies over the limits are refused before anything is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_bodies_are_refused() {
    let backend = Backend::start("a1", false).await;
    let setup = Setup::serving(
        GatewaySettings {
            max_body_bytes: 1024,
            max_header_bytes: 8192,
            ..GatewaySettings::default()
        },
        &backend,
    )
    .await;

    let post = |body: Bytes, extra: Option<String>| {
        let mut request = Request::post(format!("http://{}/api/orders", setup.gateway))
            .header("x-tenant-id", "acme");
        if let Some(value) = extra {
            request = request.header("x-padding", value);
        }
        let request = request.body(Full::new(body)).expect("request");
        let http = setup.http.clone();
        async move {
            within(http.request(request))
                .await
                .expect("an answer")
                .status()
        }
    };
    assert_eq!(
        post(Bytes::from(vec![b'x'; 1024]), None).await,
        StatusCode::OK
    );
    assert_eq!(
        post(Bytes::from(vec![b'x'; 1025]), None).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        post(Bytes::new(), Some("y".repeat(16 * 1024))).await,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(
        backend.hits(),
        1,
        "only the request within the limits arrived"
    );
}

/// `serve` with `[gateway] listen` runs the gateway in-process, following the server itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_the_gateway_when_configured() {
    let backend = Backend::start("a1", false).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir().expect("a directory");
    let config = dir.path().join("greyrouter.toml");
    std::fs::write(
        &config,
        format!(
            "store = \"memory\"\n[gateway]\nlisten = \"127.0.0.1:{port}\"\n\n[[gateway.routes]]\nprefix = \"/shop\"\nservice = \"api\"\n"
        ),
    )
    .expect("write the configuration");
    let config = config.to_string_lossy().into_owned();
    let server = support::ServerProcess::start(&["--config", &config]);
    let mut api = support::Api::connect(&server.url()).await;
    api.service("api", "v1", pb::Strategy::RoundRobin).await;
    let mut registered = instance("api", "v1", "a1", "eu");
    registered.address = backend.addr.to_string();
    api.admin
        .register_instance(pb::RegisterInstanceRequest {
            instance: Some(registered),
            ttl_seconds: 0,
        })
        .await
        .expect("register");
    api.tenant("acme", "eu").await;

    let http: HttpClient<HttpConnector, Full<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    // The in-process copy follows the server's watch: the first answers may still be 404.
    let body = support::eventually("the gateway routes acme", async || {
        let request = Request::get(format!("http://127.0.0.1:{port}/shop/cart"))
            .header("x-tenant-id", "acme")
            .body(Full::new(Bytes::new()))
            .ok()?;
        let response = http.request(request).await.ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some(String::from_utf8_lossy(&body).into_owned())
    })
    .await;
    assert_eq!(body, "a1 v1 a1 default /cart");
}

/// Reads one response with a `Content-Length` from a raw connection: its head (lower case)
/// and body. `buffer` keeps what was read past it.
async fn read_response(
    stream: &mut tokio::net::TcpStream,
    buffer: &mut Vec<u8>,
) -> (String, String) {
    read_answer(stream, buffer, false).await
}

/// [`read_response`]; the answer to a HEAD (`to_head`) has a length but no body.
async fn read_answer(
    stream: &mut tokio::net::TcpStream,
    buffer: &mut Vec<u8>,
    to_head: bool,
) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let end = loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        let mut more = [0_u8; 4096];
        let read = within(stream.read(&mut more)).await.expect("read");
        assert!(
            read > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(buffer)
        );
        buffer.extend_from_slice(&more[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .unwrap_or_else(|| panic!("no content-length: {head}"))
        .trim()
        .parse()
        .expect("a length");
    buffer.drain(..end);
    let length = if to_head { 0 } else { length };
    while buffer.len() < length {
        let mut more = [0_u8; 4096];
        let read = within(stream.read(&mut more)).await.expect("read");
        assert!(read > 0, "closed within a body");
        buffer.extend_from_slice(&more[..read]);
    }
    let body = String::from_utf8_lossy(&buffer[..length]).into_owned();
    buffer.drain(..length);
    (head, body)
}

/// One connection carries pipelined requests, a chunked request body (relayed by hyper from
/// there on) and plain requests after it; a large body is streamed to the instance; a request
/// asking to close gets its answer, then the end of the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_pipelined_chunked_and_large_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start("a1", false).await;
    let setup = Setup::serving(
        GatewaySettings {
            max_retry_body_bytes: 1024,
            ..GatewaySettings::default()
        },
        &backend,
    )
    .await;

    let mut stream = within(tokio::net::TcpStream::connect(setup.gateway))
        .await
        .expect("connect");
    let mut buffer = Vec::new();
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nX-Tenant-Id: acme\r\n\r\n");
    let pipelined = format!("{}{}", get("/api/one"), get("/api/two?x=1"));
    within(stream.write_all(pipelined.as_bytes()))
        .await
        .expect("sent");
    let (head, body) = read_response(&mut stream, &mut buffer).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-service-version: v1\r\n"), "{head}");
    assert_eq!(body, "a1 v1 a1 default /api/one");
    let (_, body) = read_response(&mut stream, &mut buffer).await;
    assert_eq!(body, "a1 v1 a1 default /api/two");

    // The gateway's own answer to a HEAD has no body: the next answer is read where it starts.
    let head_then_get = format!(
        "HEAD /no-such-service/x HTTP/1.1\r\nHost: gateway\r\nX-Tenant-Id: acme\r\n\r\n{}",
        get("/api/after-head")
    );
    within(stream.write_all(head_then_get.as_bytes()))
        .await
        .expect("sent");
    let (head, body) = read_answer(&mut stream, &mut buffer, true).await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert!(body.is_empty());
    let (head, body) = read_response(&mut stream, &mut buffer).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "a1 v1 a1 default /api/after-head");

    let chunked = "POST /api/echo HTTP/1.1\r\nHost: gateway\r\nX-Tenant-Id: acme\r\n\
                   Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    within(stream.write_all(chunked.as_bytes()))
        .await
        .expect("sent");
    let (head, body) = read_response(&mut stream, &mut buffer).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(
        body,
        format!("5 {}", b"abcde".iter().map(|&b| u32::from(b)).sum::<u32>())
    );
    within(stream.write_all(get("/api/three").as_bytes()))
        .await
        .expect("sent");
    let (_, body) = read_response(&mut stream, &mut buffer).await;
    assert_eq!(body, "a1 v1 a1 default /api/three");

    // Over the retry limit: streamed to the instance as it arrives.
    let mut stream = within(tokio::net::TcpStream::connect(setup.gateway))
        .await
        .expect("connect");
    let large = vec![b'x'; 100_000];
    let head = format!(
        "POST /api/echo HTTP/1.1\r\nHost: gateway\r\nX-Tenant-Id: acme\r\nContent-Length: {}\r\n\r\n",
        large.len()
    );
    within(stream.write_all(head.as_bytes()))
        .await
        .expect("sent");
    within(stream.write_all(&large)).await.expect("sent");
    let mut buffer = Vec::new();
    let (_, body) = read_response(&mut stream, &mut buffer).await;
    assert_eq!(body, format!("100000 {}", 100_000 * u64::from(b'x')));

    let close =
        "GET /api/last HTTP/1.1\r\nHost: gateway\r\nX-Tenant-Id: acme\r\nConnection: close\r\n\r\n";
    within(stream.write_all(close.as_bytes()))
        .await
        .expect("sent");
    let (head, body) = read_response(&mut stream, &mut buffer).await;
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert_eq!(body, "a1 v1 a1 default /api/last");
    let mut rest = Vec::new();
    within(stream.read_to_end(&mut rest)).await.expect("closed");
    assert!(rest.is_empty() && buffer.is_empty());
}

/// An instance that closes every connection after its response (without saying so): the
/// gateway's kept connection to it is found closed and replaced, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_the_instance_closed_is_replaced() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    let instance_task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0_u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let mut setup = Setup::start().await;
    setup
        .server
        .service("api", "v1", pb::Strategy::RoundRobin)
        .await;
    let mut registered = instance("api", "v1", "a1", "eu");
    registered.address = addr.to_string();
    setup
        .server
        .admin
        .register_instance(pb::RegisterInstanceRequest {
            instance: Some(registered),
            ttl_seconds: 0,
        })
        .await
        .expect("register");
    let revision = setup.server.tenant("acme", "eu").await;
    setup.synced(revision).await;

    for round in 1..=5 {
        let (status, body) = setup.get("acme", "/api/orders").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "ok"),
            "request {round}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        5,
        "one connection per request"
    );
    assert_eq!(setup.client.status().ejections, 0);
    instance_task.abort();
}
