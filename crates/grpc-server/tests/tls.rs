//! TLS and client certificates on the gRPC listener: a certificate from another CA is refused,
//! the right one is the caller's identity, a rotated server certificate is served without a
//! restart; and calls over the in-flight cap are refused at once with the time to retry.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use auth::tls::{ClientCertificates, ServerTls, TlsFiles};
use auth::{AuthSettings, Authenticator, Grant};
use control::access::{LimitSettings, Role, Roles, TenantScope};
use control::{Actor, Node, NodeSettings};
use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::router_client::RouterClient;
use greyrouter_store::{MemoryStore, Store, suite};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A certificate authority that signs server and client certificates.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("ca");
        Authority {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `name` (a DNS name for servers, a common name for clients): PEMs of
    /// the certificate and its key.
    fn sign(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

async fn node(limits: LimitSettings) -> Arc<Node> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let node = Node::start(
        store,
        None,
        NodeSettings {
            limits,
            ..NodeSettings::default()
        },
    )
    .await
    .expect("node");
    let actor = Actor::system("test", "");
    for mutation in [
        suite::service(),
        suite::instance("a1", "v1"),
        suite::tenant("acme"),
    ] {
        node.replica().commit(mutation, &actor).await.expect("seed");
    }
    node
}

fn route() -> pb::RouteRequest {
    pb::RouteRequest {
        tenant_id: "acme".into(),
        service: "api".into(),
        ..Default::default()
    }
}

async fn client(
    addr: &str,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<RouterClient<tonic::transport::Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(RouterClient::new(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_callers_and_a_rotated_certificate_is_served_without_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let servers = Authority::new("server-ca");
    let clients = Authority::new("client-ca");
    let stranger = Authority::new("another-ca");
    let (cert, key) = servers.sign("localhost");
    let files = TlsFiles {
        cert: write(dir.path(), "server.pem", &cert),
        key: write(dir.path(), "server-key.pem", &key),
        client_ca: Some(write(dir.path(), "clients.pem", &clients.pem)),
        client_certificates: ClientCertificates::Required,
        alpn: vec![b"h2".to_vec()],
    };
    let tls = ServerTls::load(files.clone()).expect("tls");
    let mut reloads = tls.reloads();
    let auth = Authenticator::start(AuthSettings {
        certificates: [(
            "gateway-eu".to_owned(),
            Grant {
                name: "gateway-eu".into(),
                roles: Roles::NONE.with(Role::Router),
                scope: TenantScope::All,
            },
        )]
        .into(),
        ..AuthSettings::default()
    })
    .await
    .expect("auth");
    let node = node(LimitSettings::default()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(grpc_server::serve(
        node,
        grpc_server::GrpcSettings::default(),
        grpc_server::Security {
            auth: Some(Arc::new(auth)),
            tls: Some(tls),
            tls_reload_interval: Duration::from_millis(50),
        },
        listener,
        std::future::pending(),
    ));

    // The configured subject, from the clients' CA: routed.
    let gateway = clients.sign("gateway-eu");
    let mut router = client(&addr, &servers.pem, Some(&gateway))
        .await
        .expect("connect");
    let routed = router.route(route()).await.expect("routed").into_inner();
    assert_eq!(routed.instance_id, "a1");

    // Same subject, signed by another CA: the handshake fails.
    let forged = stranger.sign("gateway-eu");
    let refused = match client(&addr, &servers.pem, Some(&forged)).await {
        Err(_) => true,
        Ok(mut router) => router.route(route()).await.is_err(),
    };
    assert!(refused, "a certificate from another CA was let in");

    // No certificate where one is required: refused too.
    let refused = match client(&addr, &servers.pem, None).await {
        Err(_) => true,
        Ok(mut router) => router.route(route()).await.is_err(),
    };
    assert!(refused, "a client without a certificate was let in");

    // A right CA but a subject nobody configured: UNAUTHENTICATED.
    let unknown = clients.sign("someone-else");
    let mut router = client(&addr, &servers.pem, Some(&unknown))
        .await
        .expect("connect");
    let status = router.route(route()).await.expect_err("unknown subject");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Rotate the server certificate to one of a new server CA: new connections get it.
    let rotated_ca = Authority::new("rotated-server-ca");
    let (cert, key) = rotated_ca.sign("localhost");
    // Key first, then the certificate: a reader between the two sees a mismatch and keeps the
    // old pair, never a broken one.
    std::fs::write(&files.key, key).expect("key");
    std::fs::write(&files.cert, cert).expect("cert");
    // Served from the reload that read both new files: each reload is awaited, then tried (a
    // reload between the two writes either fails and keeps the old pair, or is followed by
    // another once the second file changes).
    let rotated = async {
        loop {
            reloads.changed().await.expect("the reloader is alive");
            if let Ok(mut router) = client(&addr, &rotated_ca.pem, Some(&gateway)).await
                && router.route(route()).await.is_ok()
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), rotated)
        .await
        .expect("the rotated certificate was not served within 20 s");
    // And the old CA no longer verifies the server.
    let old = match client(&addr, &servers.pem, Some(&gateway)).await {
        Err(_) => true,
        Ok(mut router) => router.route(route()).await.is_err(),
    };
    assert!(old, "the old certificate is still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_a_rate_are_refused_at_once_with_the_time_to_retry() {
    let limits = LimitSettings {
        router_per_caller: routing_core::limits::Rate {
            per_second: 1.0,
            burst: 3.0,
        },
        ..LimitSettings::default()
    };
    let node = node(limits).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(grpc_server::serve(
        node,
        grpc_server::GrpcSettings::default(),
        grpc_server::Security::default(),
        listener,
        std::future::pending(),
    ));
    let mut router = RouterClient::connect(url).await.expect("connect");
    for _ in 0..3 {
        router.route(route()).await.expect("within the burst");
    }
    let status = router.route(route()).await.expect_err("over the rate");
    assert_eq!(status.code(), Code::ResourceExhausted);
    use tonic_types::StatusExt;
    let retry = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("retry info");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
}
