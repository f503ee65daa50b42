//! The web console in a real headless browser (Debian's chromium, driven through
//! chromium-driver's WebDriver protocol) against a real node: a tenant pinned from its page
//! routes to the new version; a rollout started from the rollouts view shows its progress as
//! it changes, without a reload; an emergency rollback goes through its confirmation; the audit
//! trail shows who did what. Screenshots of the main views go to `GREYROUTER_SCREENSHOTS` (a
//! directory) when set.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use greyrouter::config::Config;
use greyrouter::server::App;
use greyrouter_test_support::{free_port, require_tool};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use support::{eventually, within};
use tokio::net::TcpListener;

type Http = HttpClient<HttpConnector, Full<Bytes>>;

async fn call(http: &Http, method: Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = Request::builder().method(method).uri(url);
    let body = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let response = within(http.request(request.body(Full::new(body)).expect("request")))
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let bytes = within(response.into_body().collect())
        .await
        .expect("a body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// chromium-driver on a free port, and one headless chromium session.
struct Browser {
    driver: Child,
    http: Http,
    base: String,
    session: String,
}

impl Drop for Browser {
    /// Ends the session first, so that chromium-driver closes the browser it started (killing
    /// the driver alone leaves chromium running), then stops the driver.
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = end_session(&self.base, &self.session);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE /session/{id}` over a plain blocking connection (a drop cannot await), waiting for the
/// driver's answer: it answers once the browser is closed.
fn end_session(base: &str, session: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(())
}

fn chromedriver() -> Option<&'static str> {
    ["chromedriver", "/usr/bin/chromedriver"]
        .into_iter()
        .find(|path| {
            Command::new(path)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
}

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
}

impl Browser {
    async fn start(driver: &str, chromium: &str) -> Browser {
        let port = free_port(false);
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium-driver");
        let http: Http = HttpClient::builder(TokioExecutor::new()).build_http();
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver: child,
            http,
            base,
            session: String::new(),
        };
        let status_url = format!("{}/status", browser.base);
        let http = browser.http.clone();
        eventually("chromium-driver answers", async || {
            let request = Request::get(&status_url)
                .body(Full::new(Bytes::new()))
                .ok()?;
            let response = http.request(request).await.ok()?;
            let bytes = response.into_body().collect().await.ok()?.to_bytes();
            let status: Value = serde_json::from_slice(&bytes).ok()?;
            status["value"]["ready"].as_bool().filter(|ready| *ready)
        })
        .await;
        let (status, created) = call(
            &browser.http,
            Method::POST,
            &format!("{}/session", browser.base),
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,900"],
                },
            }}})),
        )
        .await;
        assert_eq!(status, 200, "a browser session: {created}");
        browser.session = created["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        browser
    }

    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let (status, answer) = call(&self.http, method, &url, body).await;
        assert_eq!(status, 200, "{path}: {answer}");
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.command(Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` in the page and returns its value.
    async fn run(&self, script: &str, args: Value) -> Value {
        self.command(
            Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Waits until `script` returns something truthy (the page renders asynchronously).
    async fn until(&self, what: &str, script: &str) -> Value {
        eventually(what, async || {
            let value = self.run(script, json!([])).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(text) => !text.is_empty(),
                _ => true,
            };
            truthy.then_some(value)
        })
        .await
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .command(
                Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_object()
            .and_then(|object| object.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.command(
            Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.command(
            Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.command(
            Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Saves a screenshot as `name`.png in `GREYROUTER_SCREENSHOTS`, when set.
    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("GREYROUTER_SCREENSHOTS") else {
            return;
        };
        use base64::Engine;
        let png = self.command(Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64"))
            .expect("a PNG");
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), bytes).expect("a screenshot");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_pins_rolls_out_rolls_back_and_shows_the_trail() {
    let (Some(driver), Some(chromium)) = (chromedriver(), chromium()) else {
        require_tool(
            "chromium",
            false,
            "chromium and chromium-driver",
            "install Debian's chromium and chromium-driver packages",
        );
        return;
    };
    // A node with its HTTP listener.
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = http_listener.local_addr().expect("address");
    let app = App::start(Config {
        store: "memory".into(),
        ..Config::default()
    })
    .await
    .expect("a node");
    let node = tokio::spawn(app.serve_with_http(grpc, Some(http_listener), std::future::pending()));
    let api = format!("http://{addr}/api/v1");
    let http: Http = HttpClient::builder(TokioExecutor::new()).build_http();
    let (status, _) = call(
        &http,
        Method::PUT,
        &format!("{api}/services/api"),
        Some(json!({"default_version": "v1", "versions": ["v1", "v2"], "force": true})),
    )
    .await;
    assert_eq!(status, 200);
    for (version, id) in [("v1", "api-1"), ("v2", "api-2")] {
        call(
            &http,
            Method::POST,
            &format!("{api}/services/api/instances"),
            Some(json!({"id": id, "version": version, "address": "10.0.0.1:80", "region": "eu"})),
        )
        .await;
    }
    for (tenant, tier) in [("acme", "pro"), ("globex", "free"), ("initech", "pro")] {
        call(
            &http,
            Method::PUT,
            &format!("{api}/tenants/{tenant}"),
            Some(json!({"name": tenant, "tier": tier, "region": "eu"})),
        )
        .await;
    }
    let route = async |tenant: &str| {
        call(
            &http,
            Method::POST,
            &format!("{api}/route"),
            Some(json!({"tenant_id": tenant, "service": "api"})),
        )
        .await
        .1
    };

    let browser = Browser::start(driver, chromium).await;
    let console = format!("http://{addr}/");
    // Auth is off: the audit trail names the actor the console is told.
    browser.open(&console).await;
    browser
        .run(
            "localStorage.setItem('greyrouter.actor', arguments[0]);",
            json!(["release-manager"]),
        )
        .await;

    // Tenants: the list filters by tier.
    browser.open(&format!("{console}#/tenants")).await;
    browser
        .until(
            "the tenant list",
            "return document.querySelectorAll('#tenants tbody tr').length === 3",
        )
        .await;
    browser
        .run(
            "const s = document.getElementById('tenant-tier'); s.value = 'pro'; s.dispatchEvent(new Event('input'));",
            json!([]),
        )
        .await;
    let shown = browser
        .until(
            "only pro tenants",
            "const rows = [...document.querySelectorAll('#tenants tbody tr')].map(r => r.dataset.tenant); return rows.length === 2 && rows.join(',');",
        )
        .await;
    assert_eq!(shown, "acme,initech");
    browser
        .until(
            "versions in the list",
            "return document.querySelector('#tenants tr[data-tenant=acme] td.versions').textContent.includes('api: v1')",
        )
        .await;
    browser.screenshot("tenants").await;

    // A tenant's page: move acme to v2 and apply; the route follows.
    assert_eq!(route("acme").await["version"], "v1");
    browser.open(&format!("{console}#/tenants/acme")).await;
    browser
        .until(
            "acme's services",
            "return document.querySelector('#tenant-services select[data-service=api]')",
        )
        .await;
    browser
        .click("#tenant-services select[data-service=api] option[value=v2]")
        .await;
    browser.screenshot("tenant").await;
    browser.click("#apply-upgrades").await;
    browser
        .until(
            "the page shows the pin",
            "const c = document.querySelector('#tenant-services tr[data-service=api] td.current'); return c && c.textContent.includes('v2 (pin)')",
        )
        .await;
    let routed = route("acme").await;
    assert_eq!(routed["version"], "v2", "{routed}");
    assert_eq!(routed["source"], "pin");

    // Rollouts: started from the form; a change made elsewhere shows without a reload.
    browser.open(&format!("{console}#/rollouts")).await;
    browser
        .until(
            "the rollout form",
            "return document.getElementById('rollout-version')",
        )
        .await;
    browser.type_into("#rollout-version", "v2").await;
    browser.type_into("#rollout-steps", "50, 100").await;
    browser.click("#start-rollout button[type=submit]").await;
    browser
        .until(
            "the rollout running at 50%",
            "const s = document.querySelector('#rollouts section'); return s && s.querySelector('.phase').textContent === 'running' && s.querySelector('.share').textContent === '50%'",
        )
        .await;
    let marker = browser
        .run("window.notReloaded = true; return true;", json!([]))
        .await;
    assert_eq!(marker, true);
    let rollout_id = browser
        .run(
            "return document.querySelector('#rollouts section').dataset.rollout",
            json!([]),
        )
        .await;
    let rollout_id = rollout_id.as_str().expect("a rollout id").to_owned();
    let (status, paused) = call(
        &http,
        Method::POST,
        &format!("{api}/services/api/rollouts/{rollout_id}/pause"),
        Some(json!({"reason": "holding for the weekend"})),
    )
    .await;
    assert_eq!(status, 200, "{paused}");
    browser
        .until(
            "the page shows the pause",
            "return document.querySelector('#rollouts section .phase').textContent === 'paused'",
        )
        .await;
    assert_eq!(
        browser
            .run("return window.notReloaded === true", json!([]))
            .await,
        true,
        "the page was not reloaded"
    );
    browser.screenshot("rollouts").await;
    call(
        &http,
        Method::POST,
        &format!("{api}/services/api/rollouts/{rollout_id}/abort"),
        Some(json!({"reason": "test over"})),
    )
    .await;

    // Emergency rollback: a preview, a confirmation that asks why, then the override.
    browser.open(&format!("{console}#/rollback")).await;
    browser
        .until(
            "the rollback form",
            "return document.getElementById('rollback-from')",
        )
        .await;
    browser.type_into("#rollback-from", "v2").await;
    browser.type_into("#rollback-to", "v1").await;
    browser.click("#rollback-start").await;
    let question = browser
        .until(
            "the confirmation",
            "const d = document.getElementById('confirm-dialog'); return d.open && document.getElementById('confirm-text').textContent",
        )
        .await;
    assert!(
        question
            .as_str()
            .is_some_and(|q| q.starts_with("1 tenant(s)")),
        "{question}"
    );
    browser.screenshot("rollback").await;
    browser
        .type_into("#confirm-reason", "v2 fails checkout")
        .await;
    browser.click("#confirm-button").await;
    browser
        .until(
            "the rollback result",
            "return document.getElementById('rollback-result').textContent.includes('1 tenant(s) moved')",
        )
        .await;
    let routed = route("acme").await;
    assert_eq!(routed["version"], "v1", "{routed}");
    assert!(
        routed["source"]
            .as_str()
            .is_some_and(|source| source.starts_with("override")),
        "{routed}"
    );

    // The audit trail: who pinned, and why the rollback.
    browser.open(&format!("{console}#/events")).await;
    let trail = browser
        .until(
            "the audit trail",
            "const t = document.getElementById('events'); return t && t.textContent.includes('v2 fails checkout') && t.textContent",
        )
        .await;
    assert!(
        trail
            .as_str()
            .is_some_and(|t| t.contains("release-manager")),
        "{trail}"
    );
    browser.screenshot("events").await;

    browser.open(&format!("{console}#/services")).await;
    browser
        .until(
            "the services view",
            "return document.querySelector('section[data-service=api] table')",
        )
        .await;
    browser.screenshot("services").await;
    node.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_a_strict_policy() {
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = http_listener.local_addr().expect("address");
    let app = App::start(Config {
        store: "memory".into(),
        ..Config::default()
    })
    .await
    .expect("a node");
    let node = tokio::spawn(app.serve_with_http(grpc, Some(http_listener), std::future::pending()));
    let http: Http = HttpClient::builder(TokioExecutor::new()).build_http();
    for (path, kind) in [
        ("/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/style.css", "text/css"),
    ] {
        let request = Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = within(http.request(request)).await.expect("an answer");
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        assert!(header("content-security-policy").contains("default-src 'self'"));
        assert_eq!(header("x-frame-options"), "DENY");
    }
    node.abort();
}
