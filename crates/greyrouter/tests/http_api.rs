//! The HTTP/JSON API (`/api/v1/...` on `--http-addr`) against a real node: every endpoint,
//! its errors as problem documents, compare-and-set through `If-Match`, the original design's
//! paths, and auth (API keys with roles) as on gRPC.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use greyrouter::config::Config;
use greyrouter::server::App;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use support::within;
use tokio::net::TcpListener;

/// A node serving gRPC and HTTP in this process.
struct Api {
    http: SocketAddr,
    client: HttpClient<HttpConnector, Full<Bytes>>,
    token: Option<String>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An answer: status, content type and the JSON body.
struct Answer {
    status: StatusCode,
    content_type: String,
    headers: http::HeaderMap,
    body: Value,
}

impl Api {
    async fn start(config: Config) -> Api {
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
        let http_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP");
        let http = http_listener.local_addr().expect("address");
        let app = App::start(config).await.expect("the node starts");
        let task =
            tokio::spawn(app.serve_with_http(grpc, Some(http_listener), std::future::pending()));
        Api {
            http,
            client: HttpClient::builder(TokioExecutor::new()).build_http(),
            token: None,
            task,
        }
    }

    async fn memory() -> Api {
        Api::start(Config {
            store: "memory".into(),
            ..Config::default()
        })
        .await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.http));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body)).expect("request");
        let response = within(self.client.request(request))
            .await
            .expect("an answer");
        let status = response.status();
        let headers = response.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = within(response.into_body().collect())
            .await
            .expect("a body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer {
            status,
            content_type,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None, &[]).await
    }

    async fn put(&self, path: &str, body: Value) -> Answer {
        self.call(Method::PUT, path, Some(body), &[]).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(body), &[]).await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, None, &[]).await
    }

    /// Two versions of `api` with one instance each, tenants acme and globex.
    async fn populate(&self) {
        let answer = self
            .put(
                "/api/v1/services/api",
                json!({"default_version": "v1", "versions": ["v1", "v2"], "force": true}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        for (version, id, port) in [("v1", "api-1", 9001), ("v2", "api-2", 9002)] {
            let answer = self
                .post(
                    "/api/v1/services/api/instances",
                    json!({"id": id, "version": version, "address": format!("10.0.0.1:{port}"), "region": "eu"}),
                )
                .await;
            assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        }
        for tenant in ["acme", "globex"] {
            let answer = self
                .put(
                    &format!("/api/v1/tenants/{tenant}"),
                    json!({"name": tenant, "region": "eu", "tier": "pro"}),
                )
                .await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        }
    }
}

/// Asserts a problem document (RFC 9457) of `status` and `kind`.
fn assert_problem(answer: &Answer, status: StatusCode, kind: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.body["status"], status.as_u16(), "{}", answer.body);
    assert_eq!(answer.body["kind"], kind, "{}", answer.body);
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{}",
        answer.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_services_and_instances_through_the_api() {
    let api = Api::memory().await;
    api.populate().await;

    let tenants = api.get("/api/v1/tenants").await;
    assert_eq!(tenants.status, StatusCode::OK);
    let ids: Vec<&str> = tenants.body["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, ["acme", "globex"]);
    let page = api.get("/api/v1/tenants?page_size=1").await;
    assert_eq!(page.body["tenants"].as_array().map(Vec::len), Some(1));
    assert_eq!(page.body["next_page_token"], "acme");

    let services = api.get("/api/v1/services").await;
    assert_eq!(
        services.body["items"][0]["name"], "api",
        "{}",
        services.body
    );
    let instances = api.get("/api/v1/services/api/instances?version=v2").await;
    let items = instances.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{}", instances.body);
    assert_eq!(items[0]["id"], "api-2");

    let tenant = api.get("/api/v1/tenants/acme/services").await;
    assert_eq!(tenant.status, StatusCode::OK, "{}", tenant.body);
    assert_eq!(tenant.body["tenant"]["tier"], "pro");
    assert_eq!(tenant.body["services"][0]["version"], "v1");
    assert_eq!(api.get("/api/v1/tenants/acme").await.body, tenant.body);

    let answer = api
        .put(
            "/api/v1/services/api/default-version",
            json!({"version": "v2"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let routed = api
        .post(
            "/api/v1/route",
            json!({"tenant_id": "globex", "service": "api"}),
        )
        .await;
    assert_eq!(routed.body["version"], "v2", "{}", routed.body);
    assert_eq!(routed.body["source"], "default");

    let gone = api.delete("/api/v1/services/api/instances/api-1").await;
    assert_eq!(gone.status, StatusCode::OK, "{}", gone.body);
    let instances = api.get("/api/v1/services/api/instances").await;
    assert_eq!(instances.body["items"].as_array().map(Vec::len), Some(1));

    // Errors: unknown names, malformed bodies, invalid fields, unknown endpoints.
    assert_problem(
        &api.get("/api/v1/tenants/nobody/services").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_problem(
        &api.get("/api/v1/services/nothing/instances").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let bad = api
        .call(
            Method::PUT,
            "/api/v1/tenants/acme",
            None,
            &[("content-type", "application/json")],
        )
        .await;
    assert_problem(&bad, StatusCode::BAD_REQUEST, "invalid_argument");
    assert_eq!(bad.body["field"], "body", "{}", bad.body);
    let unknown_field = api
        .put("/api/v1/tenants/acme", json!({"nmae": "typo"}))
        .await;
    assert_problem(&unknown_field, StatusCode::BAD_REQUEST, "invalid_argument");
    let invalid = api
        .put("/api/v1/tenants/bad%20id", json!({"name": "x"}))
        .await;
    assert_problem(&invalid, StatusCode::BAD_REQUEST, "invalid_argument");
    assert!(invalid.body["field"].is_string(), "{}", invalid.body);
    assert_problem(
        &api.get("/api/v1/nothing-here").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_problem(
        &api.get("/api/v1/tenants?page_size=lots").await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    );
    let unroutable = api
        .post(
            "/api/v1/route",
            json!({"tenant_id": "nobody", "service": "api"}),
        )
        .await;
    assert_problem(&unroutable, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_with_compare_and_set_rollback_and_the_audit_trail() {
    let api = Api::memory().await;
    api.populate().await;
    let pin = "/api/v1/tenants/acme/services/api/version";

    // If-Match names the version the tenant must be on: a stale one is refused with 412 and
    // the current version.
    let stale = api
        .call(
            Method::PUT,
            pin,
            Some(json!({"version": "v2"})),
            &[("if-match", "\"v2\""), ("x-greyrouter-actor", "alice")],
        )
        .await;
    assert_problem(&stale, StatusCode::PRECONDITION_FAILED, "version_mismatch");
    assert_eq!(stale.body["current_version"], "v1", "{}", stale.body);
    let moved = api
        .call(
            Method::PUT,
            pin,
            Some(json!({"version": "v2", "reason": "beta customer"})),
            &[("if-match", "\"v1\""), ("x-greyrouter-actor", "alice")],
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
    assert_eq!(
        moved.headers.get("etag").and_then(|v| v.to_str().ok()),
        Some("\"v2\"")
    );
    let routed = api
        .post(
            "/api/v1/route",
            json!({"tenant_id": "acme", "service": "api"}),
        )
        .await;
    assert_eq!(routed.body["version"], "v2");
    assert_eq!(routed.body["source"], "pin");

    // The original design's paths.
    let alias = api.get("/api/tenants/acme/services").await;
    assert_eq!(alias.body["services"][0]["version"], "v2", "{}", alias.body);
    let routed = api
        .post(
            "/api/grey-router/route",
            json!({"tenant": "globex", "service": "api"}),
        )
        .await;
    assert_eq!(routed.body["version"], "v1", "{}", routed.body);
    let answer = api
        .put(
            "/api/tenants/globex/services/api/version",
            json!({"version": "v2"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    // Emergency rollback: a dry run says how many tenants move and changes nothing.
    let rollback = json!({"service": "api", "from_version": "v2", "to_version": "v1",
        "reason": "errors on v2"});
    let mut dry = rollback.clone();
    dry["dry_run"] = json!(true);
    let dry = api.post("/api/v1/rollback", dry).await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.body);
    assert_eq!(dry.body["moved_tenants"], 2, "{}", dry.body);
    assert_eq!(dry.body["override_id"], "");
    let routed = api
        .post(
            "/api/v1/route",
            json!({"tenant_id": "acme", "service": "api"}),
        )
        .await;
    assert_eq!(routed.body["version"], "v2", "a dry run changes nothing");
    let done = api.post("/api/emergency/rollback", rollback).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let override_id = done.body["override_id"]
        .as_str()
        .expect("an override")
        .to_owned();
    let routed = api
        .post(
            "/api/v1/route",
            json!({"tenant_id": "acme", "service": "api"}),
        )
        .await;
    assert_eq!(routed.body["version"], "v1");
    assert!(
        routed.body["source"]
            .as_str()
            .is_some_and(|source| source.starts_with("override")),
        "{}",
        routed.body
    );
    let overrides = api.get("/api/v1/services/api/overrides").await;
    assert_eq!(overrides.body["items"][0]["id"], override_id.as_str());
    let cleared = api
        .delete(&format!("/api/v1/services/api/overrides/{override_id}"))
        .await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.body);
    let unpinned = api.delete(pin).await;
    assert_eq!(unpinned.body["cleared"], true, "{}", unpinned.body);

    // The audit trail has who and why.
    let events = api.get("/api/v1/events?tenant_id=acme").await;
    assert_eq!(events.status, StatusCode::OK, "{}", events.body);
    let list = events.body["events"].as_array().expect("events");
    let pinned = list
        .iter()
        .find(|e| e["actor"] == "alice")
        .unwrap_or_else(|| panic!("alice's pin in {}", events.body));
    assert_eq!(pinned["reason"], "beta customer");
    assert_eq!(pinned["tenant_id"], "acme");
    assert!(
        list.iter().any(|e| e["reason"] == "errors on v2"),
        "{}",
        events.body
    );
    let next = events.body["next_revision"].as_u64().expect("a number");
    let after = api
        .get(&format!("/api/v1/events?since_revision={next}"))
        .await;
    assert_eq!(after.body["events"].as_array().map(Vec::len), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_the_api_asks_for_a_key_and_checks_its_role() {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("greyrouter.toml");
    let hash = |key: &str| auth::api_key_hash(key);
    std::fs::write(
        &file,
        format!(
            "store = \"memory\"\n\
             [auth]\n\
             [[auth.api_keys]]\nname = \"ops\"\nsha256 = \"{}\"\nroles = [\"admin\"]\n\
             [[auth.api_keys]]\nname = \"reader\"\nsha256 = \"{}\"\nroles = [\"viewer\"]\n\
             [[auth.api_keys]]\nname = \"acme-only\"\nsha256 = \"{}\"\nroles = [\"operator\"]\ntenants = [\"acme\"]\n",
            hash("ops-key"),
            hash("reader-key"),
            hash("acme-key")
        ),
    )
    .expect("write");
    let config = Config::load(
        Some(&file),
        &std::collections::BTreeMap::new(),
        greyrouter::config::Overrides::default(),
    )
    .expect("a valid configuration");
    let mut api = Api::start(config).await;

    // Health stays open; the API wants a key.
    assert_eq!(api.get("/healthz").await.status, StatusCode::OK);
    assert_problem(
        &api.get("/api/v1/tenants").await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    api.token = Some("wrong".into());
    assert_problem(
        &api.get("/api/v1/tenants").await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );

    api.token = Some("ops-key".into());
    api.populate().await;
    let pinned = api
        .call(
            Method::PUT,
            "/api/v1/tenants/acme/services/api/version",
            Some(json!({"version": "v2"})),
            &[("x-greyrouter-actor", "mallory")],
        )
        .await;
    assert_eq!(pinned.status, StatusCode::OK, "{}", pinned.body);

    api.token = Some("reader-key".into());
    assert_eq!(api.get("/api/v1/tenants").await.status, StatusCode::OK);
    let refused = api
        .put(
            "/api/v1/tenants/acme/services/api/version",
            json!({"version": "v1"}),
        )
        .await;
    assert_problem(&refused, StatusCode::FORBIDDEN, "permission_denied");
    assert!(
        refused.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("operator")),
        "{}",
        refused.body
    );
    // The audit trail names the key, not the header.
    let events = api.get("/api/v1/events?tenant_id=acme").await;
    let actors: Vec<&str> = events.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["actor"].as_str())
        .collect();
    assert!(actors.contains(&"ops"), "{actors:?}");
    assert!(!actors.contains(&"mallory"), "{actors:?}");

    // A key scoped to acme sees acme only, and may not touch globex.
    api.token = Some("acme-key".into());
    let tenants = api.get("/api/v1/tenants").await;
    let ids: Vec<&str> = tenants.body["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, ["acme"]);
    assert_problem(
        &api.get("/api/v1/tenants/globex/services").await,
        StatusCode::FORBIDDEN,
        "permission_denied",
    );
    // Fleet-wide figures and operations are not a scoped caller's.
    for path in [
        "/api/v1/services/api/stats",
        "/api/v1/services/api/rollouts",
    ] {
        assert_problem(
            &api.get(path).await,
            StatusCode::FORBIDDEN,
            "permission_denied",
        );
    }
    let rollback = api
        .post(
            "/api/v1/rollback",
            json!({"service": "api", "from_version": "v2", "to_version": "v1", "dry_run": true}),
        )
        .await;
    assert_problem(&rollback, StatusCode::FORBIDDEN, "permission_denied");
    // The audit trail shows its own tenant's events only.
    let events = api.get("/api/v1/events").await;
    assert_eq!(events.status, StatusCode::OK, "{}", events.body);
    let tenants: Vec<&str> = events.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["tenant_id"].as_str())
        .collect();
    assert!(
        !tenants.is_empty() && tenants.iter().all(|t| *t == "acme"),
        "{tenants:?}"
    );
    assert_problem(
        &api.get("/api/v1/events?tenant_id=globex").await,
        StatusCode::FORBIDDEN,
        "permission_denied",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_from_other_sites_and_bodies_that_are_not_json_are_refused() {
    let api = Api::memory().await;
    api.populate().await;
    api.post(
        "/api/v1/services/api/rollouts",
        json!({"to_version": "v2", "id": "r1", "interval_seconds": 600, "steps_percent": [50, 100]}),
    )
    .await;
    // A form post (no preflight in a browser) to a rollout action: refused, nothing changes.
    let form = api
        .call(
            Method::POST,
            "/api/v1/services/api/rollouts/r1/abort",
            None,
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .await;
    assert_problem(
        &form,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_argument",
    );
    let other_site = api
        .call(
            Method::POST,
            "/api/v1/services/api/rollouts/r1/abort",
            None,
            &[("origin", "https://attacker.example")],
        )
        .await;
    assert_problem(&other_site, StatusCode::FORBIDDEN, "permission_denied");
    let read = api.get("/api/v1/services/api/rollouts/r1").await;
    assert_eq!(
        read.body["rollout"]["plan"]["phase"], "running",
        "{}",
        read.body
    );
    // The same site, and no body at all, are fine.
    let same_site = api
        .call(
            Method::POST,
            "/api/v1/services/api/rollouts/r1/pause",
            None,
            &[("origin", &format!("http://{}", api.http))],
        )
        .await;
    assert_eq!(same_site.status, StatusCode::OK, "{}", same_site.body);

    // If-Match: `*` expects nothing; lists and weak tags are refused.
    let pin = "/api/v1/tenants/acme/services/api/version";
    for tag in [r#""v1", "v2""#, r#"W/"v1""#, "v1"] {
        let refused = api
            .call(
                Method::PUT,
                pin,
                Some(json!({"version": "v2"})),
                &[("if-match", tag)],
            )
            .await;
        assert_problem(&refused, StatusCode::BAD_REQUEST, "invalid_argument");
        assert_eq!(refused.body["field"], "If-Match", "{}", refused.body);
    }
    let any = api
        .call(
            Method::PUT,
            pin,
            Some(json!({"version": "v2"})),
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(any.status, StatusCode::OK, "{}", any.body);

    // A body that is not JSON, or too large.
    let text = api
        .call(
            Method::PUT,
            "/api/v1/tenants/acme",
            None,
            &[("content-type", "text/plain")],
        )
        .await;
    assert_problem(
        &text,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_argument",
    );
    let big = api
        .put(
            "/api/v1/tenants/acme",
            json!({"name": "x".repeat(300 * 1024)}),
        )
        .await;
    assert_problem(&big, StatusCode::PAYLOAD_TOO_LARGE, "invalid_argument");
    // A cohort name that breaks the naming rule, as gRPC refuses it.
    let bad_cohort = api
        .post(
            "/api/v1/services/api/experiments",
            json!({"id": "e1", "variants": [{"name": "a", "version": "v1", "weight": 1}],
                   "cohort": {"tiers": ["bad tier"]}}),
        )
        .await;
    assert_problem(&bad_cohort, StatusCode::BAD_REQUEST, "invalid_argument");
    assert_eq!(
        bad_cohort.body["field"], "cohort.tiers",
        "{}",
        bad_cohort.body
    );
    // Unknown paths and methods.
    assert_problem(
        &api.get("/api/v1/services/api/rollouts/r1/jump").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_experiments_and_schema_upgrades_through_the_api() {
    let api = Api::memory().await;
    api.populate().await;

    // A rollout: started, read, paused, resumed, aborted.
    let started = api
        .post(
            "/api/v1/services/api/rollouts",
            json!({"to_version": "v2", "id": "r1", "interval_seconds": 3600,
                   "steps_percent": [50, 100], "reason": "new release"}),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    assert_eq!(started.body["rollout"]["id"], "r1", "{}", started.body);
    let listed = api.get("/api/v1/services/api/rollouts").await;
    assert_eq!(listed.body["items"][0]["id"], "r1", "{}", listed.body);
    let read = api.get("/api/v1/services/api/rollouts/r1").await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    for action in ["pause", "resume"] {
        let answer = api
            .call(
                Method::POST,
                &format!("/api/v1/services/api/rollouts/r1/{action}"),
                None,
                &[],
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{action}: {}", answer.body);
    }
    let again = api
        .call(
            Method::POST,
            "/api/v1/services/api/rollouts/r1/resume",
            None,
            &[],
        )
        .await;
    assert_problem(&again, StatusCode::CONFLICT, "failed_precondition");
    let aborted = api
        .post(
            "/api/v1/services/api/rollouts/r1/abort",
            json!({"reason": "errors"}),
        )
        .await;
    assert_eq!(aborted.status, StatusCode::OK, "{}", aborted.body);
    assert_problem(
        &api.post("/api/v1/services/api/rollouts/r1/jump", json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_problem(
        &api.post(
            "/api/v1/services/api/rollouts",
            json!({"to_version": "v2", "interval_seconds": 60, "steps_percent": [0]}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    );

    // An experiment: created, read (tenants per variant), reweighted, stopped.
    let created = api
        .post(
            "/api/v1/services/api/experiments",
            json!({"id": "e1", "variants": [
                {"name": "control", "version": "v1", "weight": 1},
                {"name": "treatment", "version": "v2", "weight": 1}]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let read = api.get("/api/v1/services/api/experiments/e1").await;
    let per_variant = read.body["tenants_per_variant"]
        .as_object()
        .expect("counts");
    let total: u64 = per_variant.values().filter_map(Value::as_u64).sum();
    assert_eq!(total, 2, "{}", read.body);
    let updated = api
        .put(
            "/api/v1/services/api/experiments/e1",
            json!({"variants": [
                {"name": "control", "version": "v1", "weight": 1},
                {"name": "treatment", "version": "v2", "weight": 3}], "rebalance": true}),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    let stopped = api.delete("/api/v1/services/api/experiments/e1").await;
    assert_eq!(stopped.status, StatusCode::OK, "{}", stopped.body);
    assert_problem(
        &api.get("/api/v1/services/api/experiments/e1").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Schema upgrades need [schema]: without it, a clear refusal.
    let refused = api
        .post(
            "/api/v1/schema/upgrades",
            json!({"service": "api", "target_version": "v2"}),
        )
        .await;
    assert_problem(&refused, StatusCode::CONFLICT, "failed_precondition");
    assert!(
        refused.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("database_url")),
        "{}",
        refused.body
    );
    assert_problem(
        &api.get("/api/v1/tenants/acme/schema").await,
        StatusCode::CONFLICT,
        "failed_precondition",
    );
}

/// Reads server-sent events from `body` until `wanted` accepts one's data; returns it.
async fn next_event(
    body: &mut hyper::body::Incoming,
    pending: &mut String,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let data: String = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if event.lines().any(|line| line == "event: assignments") {
                let value: Value = serde_json::from_str(&data).expect("JSON data");
                if wanted(&value) {
                    return value;
                }
            }
        }
        let frame = within(body.frame())
            .await
            .expect("the stream stays open")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            pending.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_changes_stream_as_server_sent_events() {
    let api = Api::memory().await;
    api.populate().await;
    let request = Request::get(format!(
        "http://{}/api/v1/watch?tenant_ids=acme&services=api",
        api.http
    ))
    .body(Full::new(Bytes::new()))
    .expect("request");
    let response = within(api.client.request(request)).await.expect("a stream");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut body = response.into_body();
    let mut pending = String::new();
    let snapshot = next_event(&mut body, &mut pending, |_| true).await;
    assert_eq!(snapshot["snapshot"], true, "{snapshot}");
    assert_eq!(snapshot["upserts"][0]["tenant_id"], "acme", "{snapshot}");
    assert_eq!(snapshot["upserts"][0]["version"], "v1", "{snapshot}");

    let pinned = api
        .put(
            "/api/v1/tenants/acme/services/api/version",
            json!({"version": "v2"}),
        )
        .await;
    assert_eq!(pinned.status, StatusCode::OK, "{}", pinned.body);
    let change = next_event(&mut body, &mut pending, |update| {
        update["snapshot"] == false
    })
    .await;
    assert_eq!(change["upserts"][0]["version"], "v2", "{change}");
    assert_eq!(change["upserts"][0]["source"], "pin", "{change}");
    assert!(change["revision"].as_u64() > snapshot["revision"].as_u64());

    // A resume from a revision this router never had is refused before streaming.
    let gone = api.get("/api/v1/watch?from_revision=999999").await;
    assert_problem(&gone, StatusCode::BAD_REQUEST, "out_of_range");
}

/// Every operation of the OpenAPI document is routed (none falls to the "no endpoint" answer),
/// and the document is served without credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let api = Api::memory().await;
    let document = api.get("/api/v1/openapi.json").await;
    assert_eq!(document.status, StatusCode::OK);
    assert_eq!(document.body["openapi"], "3.1.0");
    // A valid OpenAPI 3.1 document, by the reference validator (PyPI's openapi-spec-validator).
    let validator = || {
        std::process::Command::new("python3")
            .args(["-c", "import openapi_spec_validator"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if greyrouter_test_support::require_tool(
        "python",
        validator(),
        "python3 with openapi-spec-validator",
        "python3 -m pip install openapi-spec-validator",
    ) {
        let dir = tempfile::tempdir().expect("a directory");
        let file = dir.path().join("openapi.json");
        std::fs::write(&file, document.body.to_string()).expect("write");
        let output = std::process::Command::new("python3")
            .args([
                "-c",
                "import json, sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')",
            ])
            .arg(&file)
            .output()
            .expect("python3 runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let paths = document.body["paths"].as_object().expect("paths");
    assert!(paths.len() >= 20, "{}", paths.len());
    for (path, methods) in paths {
        let concrete: String = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "x"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in methods.as_object().expect("methods").keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
            if path == "/api/v1/watch" {
                continue; // a stream: its own test
            }
            let answer = api
                .call(method.clone(), &concrete, Some(json!({})), &[])
                .await;
            let detail = answer.body["detail"].as_str().unwrap_or("");
            assert!(
                !detail.starts_with("no endpoint"),
                "{method} {path} is documented but not routed: {}",
                answer.body
            );
            assert_ne!(
                answer.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
        }
    }
}

/// Schema upgrades through the API on a real PostgreSQL database: a dry run's plans, an upgrade
/// followed to the end as server-sent events, each tenant's schema after it, a pin with
/// migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_upgrades_stream_their_progress() {
    let db = greyrouter_test_support::PostgresDatabase::create();
    let mut config = Config {
        store: "memory".into(),
        ..Config::default()
    };
    config.schema.database_url = db.url();
    config.schema.migrations =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    let api = Api::start(config).await;
    let answer = api
        .put(
            "/api/v1/services/user-service",
            json!({"default_version": "v1.0", "versions": ["v1.0", "v2.0", "v3.0"], "force": true}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    for version in ["v1.0", "v2.0", "v3.0"] {
        api.post(
            "/api/v1/services/user-service/instances",
            json!({"id": format!("user-{version}"), "version": version, "address": "10.0.0.1:80"}),
        )
        .await;
    }
    for tenant in ["t1", "t2"] {
        api.put(&format!("/api/v1/tenants/{tenant}"), json!({}))
            .await;
    }

    let plan = api
        .post(
            "/api/v1/schema/upgrades",
            json!({"service": "user-service", "target_version": "v3.0", "dry_run": true}),
        )
        .await;
    assert_eq!(plan.status, StatusCode::OK, "{}", plan.body);
    assert_eq!(plan.body["upgrade_id"], "");
    assert_eq!(plan.body["target_schema"], 3);
    let plans = plan.body["plans"].as_array().expect("plans");
    assert_eq!(plans.len(), 2, "{}", plan.body);
    assert!(
        plans
            .iter()
            .all(|p| p["steps"].as_array().map(Vec::len) == Some(3)),
        "{}",
        plan.body
    );

    let started = api
        .post(
            "/api/v1/schema/upgrades",
            json!({"service": "user-service", "target_version": "v3.0"}),
        )
        .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    let id = started.body["upgrade_id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let request = Request::get(format!(
        "http://{}/api/v1/schema/upgrades/{id}/events",
        api.http
    ))
    .body(Full::new(Bytes::new()))
    .expect("request");
    let response = within(api.client.request(request)).await.expect("a stream");
    assert_eq!(response.status(), StatusCode::OK);
    // Events until the upgrade is finished; then the stream ends.
    let bytes = within(response.into_body().collect())
        .await
        .expect("the stream ends when the upgrade does")
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    let last: Value = text
        .split("\n\n")
        .filter(|event| event.contains("event: progress"))
        .filter_map(|event| {
            let data: String = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            serde_json::from_str(&data).ok()
        })
        .last()
        .expect("a progress event");
    assert_eq!(last["state"], "finished", "{last}");
    assert_eq!(last["done"], 2, "{last}");
    assert_eq!(last["failed"], 0, "{last}");

    let schema = api
        .get("/api/v1/tenants/t1/schema?service=user-service")
        .await;
    assert_eq!(schema.status, StatusCode::OK, "{}", schema.body);
    assert_eq!(schema.body["services"][0]["current"], 3, "{}", schema.body);
    let progress = api.get(&format!("/api/v1/schema/upgrades/{id}")).await;
    assert_eq!(progress.body["state"], "finished", "{}", progress.body);
    assert_problem(
        &api.get("/api/v1/schema/upgrades/no-such-upgrade").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

/// Splits a shell line into words: spaces separate, single quotes keep what they hold.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            _ => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

/// README, "HTTP API": the curl walkthrough against a server with the quickstart's seed, each
/// command answered 2xx (curl's flags read by the test: -X, -H, -d and the URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_http_walkthrough_runs() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let api = Api::start(Config {
        store: "memory".into(),
        seed: Some(root.join("examples/seed.toml")),
        ..Config::default()
    })
    .await;
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let section = readme
        .split("\n## HTTP API\n")
        .nth(1)
        .expect("an HTTP API section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a sh block");
    let commands: Vec<String> = block
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("curl "))
        .map(str::to_owned)
        .collect();
    assert_eq!(commands.len(), 3, "{block}");
    let mut answers = Vec::new();
    for command in &commands {
        let words = shell_words(command);
        let mut method = Method::GET;
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut body = None;
        let mut path = None;
        let mut words = words.iter().skip(1);
        while let Some(word) = words.next() {
            match word.as_str() {
                "-s" => {}
                "-X" => method = words.next().expect("a method").parse().expect("a method"),
                "-H" => {
                    let (name, value) = words
                        .next()
                        .and_then(|h| h.split_once(": "))
                        .expect("a header");
                    headers.push((name.to_owned(), value.to_owned()));
                }
                "-d" => {
                    body = Some(
                        serde_json::from_str::<Value>(words.next().expect("data")).expect("JSON"),
                    );
                }
                url => {
                    path = Some(
                        url.strip_prefix("http://127.0.0.1:50052")
                            .unwrap_or_else(|| panic!("{url} is not the quickstart's address"))
                            .to_owned(),
                    );
                }
            }
        }
        let path = path.expect("a URL");
        let header_refs: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(name, _)| name != "content-type")
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let answer = api.call(method, &path, body, &header_refs).await;
        assert!(answer.status.is_success(), "{command}: {}", answer.body);
        answers.push(answer.body);
    }
    assert_eq!(answers[1]["previous_version"], "v2.0", "{}", answers[1]);
    assert_eq!(answers[2]["version"], "v1.0", "{}", answers[2]);
    assert_eq!(answers[2]["source"], "pin");
}
