//! The HTTP/JSON API under `/api/v1/`: the node's operations for browsers and scripts, with
//! the same rules (each endpoint is governed by the rule of its gRPC twin), the same audit
//! trail and, when configured, the same auth as gRPC. Errors are RFC 9457 problem documents
//! with the status of the one error table (`ErrorKind::http_status`).
//!
//! The paths of the original design answer too, as aliases: `GET /api/tenants/{id}/services`,
//! `PUT /api/tenants/{id}/services/{service}/version`, `POST /api/emergency/rollback` and
//! `POST /api/grey-router/route`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use control::access::{Caller, Rule};
use control::audit::{ACTOR_HEADER, REASON_HEADER};
use control::node::{EmergencyRollback, EventQuery, SetTenantVersion, StartRollout, UpgradeSchema};
use control::{Actor, Error, ErrorKind, Node};
use routing_core::model::RolloutEvent;
use routing_core::{AnalysisPolicy, Cohort, Instance, RouteQuery, Service, Tenant, Variant};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Deserialize;
use serde_json::{Value, json};

/// The JSON Schema of a request body, added to a generator's definitions.
pub type BodySchema = fn(&mut SchemaGenerator) -> Schema;

/// One endpoint: its method, its path (axum syntax), the rule of its gRPC twin and the schema
/// of its JSON body, if it takes one.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// The HTTP method.
    pub method: &'static str,
    /// The path, `{name}` for a segment.
    pub path: &'static str,
    /// The gRPC service of the rule (`Admin`, `Router`).
    pub service: &'static str,
    /// The gRPC operation whose rule governs the endpoint.
    pub operation: &'static str,
    /// The body's schema.
    pub body: Option<BodySchema>,
}

const fn endpoint(
    method: &'static str,
    path: &'static str,
    service: &'static str,
    operation: &'static str,
) -> Endpoint {
    Endpoint {
        method,
        path,
        service,
        operation,
        body: None,
    }
}

impl Endpoint {
    /// The endpoint taking a JSON body of type `T`.
    const fn with_body(self, body: BodySchema) -> Endpoint {
        Endpoint {
            body: Some(body),
            ..self
        }
    }
}

/// `T`'s schema (a reference to its definition).
fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// Every endpoint of the API, aliases included.
pub const ENDPOINTS: &[Endpoint] = &[
    endpoint("GET", "/api/v1/tenants", "Admin", "ListTenants"),
    endpoint(
        "GET",
        "/api/v1/tenants/{tenant}",
        "Admin",
        "GetTenantServices",
    ),
    endpoint("PUT", "/api/v1/tenants/{tenant}", "Admin", "UpsertTenant")
        .with_body(schema::<TenantBody>),
    endpoint(
        "GET",
        "/api/v1/tenants/{tenant}/services",
        "Admin",
        "GetTenantServices",
    ),
    endpoint(
        "PUT",
        "/api/v1/tenants/{tenant}/services/{service}/version",
        "Admin",
        "SetTenantVersion",
    )
    .with_body(schema::<VersionBody>),
    endpoint(
        "DELETE",
        "/api/v1/tenants/{tenant}/services/{service}/version",
        "Admin",
        "ClearTenantVersion",
    ),
    endpoint("GET", "/api/v1/services", "Admin", "ListServices"),
    endpoint(
        "PUT",
        "/api/v1/services/{service}",
        "Admin",
        "UpsertService",
    )
    .with_body(schema::<ServiceBody>),
    endpoint(
        "PUT",
        "/api/v1/services/{service}/default-version",
        "Admin",
        "SetDefaultVersion",
    )
    .with_body(schema::<DefaultVersionBody>),
    endpoint(
        "GET",
        "/api/v1/services/{service}/instances",
        "Admin",
        "ListInstances",
    ),
    endpoint(
        "POST",
        "/api/v1/services/{service}/instances",
        "Admin",
        "RegisterInstance",
    )
    .with_body(schema::<InstanceBody>),
    endpoint(
        "DELETE",
        "/api/v1/services/{service}/instances/{instance}",
        "Admin",
        "DeregisterInstance",
    ),
    endpoint(
        "GET",
        "/api/v1/services/{service}/stats",
        "Admin",
        "ListRollouts",
    ),
    endpoint(
        "GET",
        "/api/v1/services/{service}/overrides",
        "Admin",
        "ListOverrides",
    ),
    endpoint(
        "DELETE",
        "/api/v1/services/{service}/overrides/{override}",
        "Admin",
        "ClearOverride",
    ),
    endpoint("POST", "/api/v1/rollback", "Admin", "EmergencyRollback")
        .with_body(schema::<RollbackBody>),
    endpoint(
        "GET",
        "/api/v1/services/{service}/rollouts",
        "Admin",
        "ListRollouts",
    ),
    endpoint(
        "POST",
        "/api/v1/services/{service}/rollouts",
        "Admin",
        "StartRollout",
    )
    .with_body(schema::<RolloutBody>),
    endpoint(
        "GET",
        "/api/v1/services/{service}/rollouts/{rollout}",
        "Admin",
        "GetRollout",
    ),
    endpoint(
        "POST",
        "/api/v1/services/{service}/rollouts/{rollout}/pause",
        "Admin",
        "PauseRollout",
    )
    .with_body(schema::<ActionBody>),
    endpoint(
        "POST",
        "/api/v1/services/{service}/rollouts/{rollout}/resume",
        "Admin",
        "ResumeRollout",
    )
    .with_body(schema::<ActionBody>),
    endpoint(
        "POST",
        "/api/v1/services/{service}/rollouts/{rollout}/promote",
        "Admin",
        "PromoteRollout",
    )
    .with_body(schema::<ActionBody>),
    endpoint(
        "POST",
        "/api/v1/services/{service}/rollouts/{rollout}/abort",
        "Admin",
        "AbortRollout",
    )
    .with_body(schema::<ActionBody>),
    endpoint(
        "POST",
        "/api/v1/services/{service}/experiments",
        "Admin",
        "CreateExperiment",
    )
    .with_body(schema::<ExperimentBody>),
    endpoint(
        "GET",
        "/api/v1/services/{service}/experiments/{experiment}",
        "Admin",
        "GetExperiment",
    ),
    endpoint(
        "PUT",
        "/api/v1/services/{service}/experiments/{experiment}",
        "Admin",
        "UpdateExperiment",
    )
    .with_body(schema::<VariantsBody>),
    endpoint(
        "DELETE",
        "/api/v1/services/{service}/experiments/{experiment}",
        "Admin",
        "StopExperiment",
    ),
    endpoint("POST", "/api/v1/schema/upgrades", "Admin", "UpgradeSchema")
        .with_body(schema::<UpgradeBody>),
    endpoint(
        "GET",
        "/api/v1/schema/upgrades/{upgrade}",
        "Admin",
        "GetSchemaUpgrade",
    ),
    endpoint(
        "GET",
        "/api/v1/schema/upgrades/{upgrade}/events",
        "Admin",
        "WatchSchemaUpgrade",
    ),
    endpoint(
        "GET",
        "/api/v1/tenants/{tenant}/schema",
        "Admin",
        "GetTenantSchema",
    ),
    endpoint(
        "POST",
        "/api/v1/tenants/{tenant}/schema/{service}/repair",
        "Admin",
        "RepairTenantSchema",
    )
    .with_body(schema::<RepairBody>),
    endpoint("GET", "/api/v1/events", "Admin", "ListEvents"),
    endpoint("GET", "/api/v1/watch", "Router", "WatchAssignments"),
    endpoint("POST", "/api/v1/route", "Router", "Route").with_body(schema::<RouteBody>),
    // The original design's paths.
    endpoint(
        "GET",
        "/api/tenants/{tenant}/services",
        "Admin",
        "GetTenantServices",
    ),
    endpoint(
        "PUT",
        "/api/tenants/{tenant}/services/{service}/version",
        "Admin",
        "SetTenantVersion",
    )
    .with_body(schema::<VersionBody>),
    endpoint(
        "POST",
        "/api/emergency/rollback",
        "Admin",
        "EmergencyRollback",
    )
    .with_body(schema::<RollbackBody>),
    endpoint("POST", "/api/grey-router/route", "Router", "Route").with_body(schema::<RouteBody>),
];

/// Where the OpenAPI document is served (open to anyone, like health).
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// Largest JSON body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Most tenants or events in one page.
const MAX_PAGE: u32 = 1_000;

/// The endpoint a method and path reach, with its rule; `None` for paths outside the API.
pub fn endpoint_of(method: &Method, path: &str) -> Option<(&'static Endpoint, &'static Rule)> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    ENDPOINTS
        .iter()
        .filter(|endpoint| endpoint.method == method.as_str())
        .find(|endpoint| {
            let pattern: Vec<&str> = endpoint.path.split('/').collect();
            pattern.len() == segments.len()
                && pattern
                    .iter()
                    .zip(&segments)
                    .all(|(p, s)| (p.starts_with('{') && !s.is_empty()) || p == s)
        })
        .and_then(|endpoint| {
            control::access::rule(endpoint.service, endpoint.operation).map(|rule| (endpoint, rule))
        })
}

/// The routes of the API over `node`; live streams end when `closing` turns true.
pub fn routes(node: Arc<Node>, closing: tokio::sync::watch::Receiver<bool>) -> Router {
    let tenant_services = get(tenant_services);
    let set_version = put(set_tenant_version);
    let rollback = post(rollback);
    let route = post(route);
    Router::new()
        .route("/api/v1/tenants", get(list_tenants))
        .route(
            "/api/v1/tenants/{tenant}",
            get(tenant_services.clone()).put(upsert_tenant),
        )
        .route("/api/v1/tenants/{tenant}/services", tenant_services.clone())
        .route(
            "/api/v1/tenants/{tenant}/services/{service}/version",
            set_version.clone().delete(clear_tenant_version),
        )
        .route("/api/v1/services", get(list_services))
        .route("/api/v1/services/{service}", put(upsert_service))
        .route(
            "/api/v1/services/{service}/default-version",
            put(set_default_version),
        )
        .route(
            "/api/v1/services/{service}/instances",
            get(list_instances).post(register_instance),
        )
        .route(
            "/api/v1/services/{service}/instances/{instance}",
            axum::routing::delete(deregister_instance),
        )
        .route("/api/v1/services/{service}/overrides", get(list_overrides))
        .route("/api/v1/services/{service}/stats", get(service_stats))
        .route(
            "/api/v1/services/{service}/overrides/{override}",
            axum::routing::delete(clear_override),
        )
        .route("/api/v1/rollback", rollback.clone())
        .route(
            "/api/v1/services/{service}/rollouts",
            get(list_rollouts).post(start_rollout),
        )
        .route(
            "/api/v1/services/{service}/rollouts/{rollout}",
            get(get_rollout),
        )
        .route(
            "/api/v1/services/{service}/rollouts/{rollout}/pause",
            post(pause_rollout),
        )
        .route(
            "/api/v1/services/{service}/rollouts/{rollout}/resume",
            post(resume_rollout),
        )
        .route(
            "/api/v1/services/{service}/rollouts/{rollout}/promote",
            post(promote_rollout),
        )
        .route(
            "/api/v1/services/{service}/rollouts/{rollout}/abort",
            post(abort_rollout),
        )
        .route(
            "/api/v1/services/{service}/experiments",
            post(create_experiment),
        )
        .route(
            "/api/v1/services/{service}/experiments/{experiment}",
            get(get_experiment)
                .put(update_experiment)
                .delete(stop_experiment),
        )
        .route("/api/v1/schema/upgrades", post(upgrade_schema))
        .route("/api/v1/schema/upgrades/{upgrade}", get(schema_upgrade))
        .route(
            "/api/v1/schema/upgrades/{upgrade}/events",
            get(schema_upgrade_events),
        )
        .route("/api/v1/tenants/{tenant}/schema", get(tenant_schema))
        .route(
            "/api/v1/tenants/{tenant}/schema/{service}/repair",
            post(repair_tenant_schema),
        )
        .route("/api/v1/events", get(events))
        .route("/api/v1/watch", get(watch))
        .route("/api/v1/route", route.clone())
        .route("/api/tenants/{tenant}/services", tenant_services)
        .route(
            "/api/tenants/{tenant}/services/{service}/version",
            set_version,
        )
        .route("/api/emergency/rollback", rollback)
        .route("/api/grey-router/route", route)
        .route(OPENAPI_PATH, get(openapi_json))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(same_origin))
        .layer(Extension(Closing(closing)))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(node)
}

/// A problem document (RFC 9457) for `err`, with the status of the error table.
pub fn problem(err: &Error) -> Response {
    let status =
        StatusCode::from_u16(err.kind().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    problem_with_status(err, status)
}

/// A problem document for `err` with `status` (a body refused as too large or not JSON).
fn problem_with_status(err: &Error, status: StatusCode) -> Response {
    let kind = err.kind();
    let mut body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": err.message(),
        "kind": kind.as_str(),
    });
    if let Some((field, reason)) = err.field() {
        body["field"] = json!(field);
        body["reason"] = json!(reason);
    }
    if let Some(current) = err.current_version() {
        body["current_version"] = json!(current);
    }
    let retry_after = err.retry_after_ms();
    if let Some(ms) = retry_after {
        body["retry_after_ms"] = json!(ms);
    }
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response();
    if let Some(ms) = retry_after
        && let Ok(value) = header::HeaderValue::try_from(ms.div_ceil(1000).max(1).to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// What a handler answers: JSON, or a problem document.
type Answer = Result<Response, Problem>;

/// An error answered as a problem document (with the status of the error table, or of the
/// body's rejection: 413 too large, 415 not JSON).
pub struct Problem(Error, Option<StatusCode>);

impl Problem {
    fn with_status(status: StatusCode, err: Error) -> Problem {
        Problem(err, Some(status))
    }
}

impl From<Error> for Problem {
    fn from(err: Error) -> Problem {
        Problem(err, None)
    }
}

impl From<routing_core::RoutingError> for Problem {
    fn from(err: routing_core::RoutingError) -> Problem {
        Problem(Error::from(err), None)
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Problem {
        // A body over the limit, not JSON, or not the fields expected: the caller's to fix.
        let status = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Some(StatusCode::PAYLOAD_TOO_LARGE),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
            _ => None,
        };
        Problem(Error::invalid("body", rejection.body_text()), status)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        match self.1 {
            Some(status) => problem_with_status(&self.0, status),
            None => problem(&self.0),
        }
    }
}

/// Refuses a change a page of another site asks a browser to make: an unsafe method whose
/// `Origin` is not this server's, or that the browser marks `Sec-Fetch-Site: cross-site`.
async fn same_origin(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let unsafe_method = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if unsafe_method {
        let headers = request.headers();
        let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let cross_site = text("sec-fetch-site") == Some("cross-site");
        let foreign_origin = match (text("origin"), text("host")) {
            (Some(origin), Some(host)) => {
                origin.split_once("://").map(|(_, authority)| authority) != Some(host)
            }
            (Some(_), None) => true,
            _ => false,
        };
        if cross_site || foreign_origin {
            return problem(&Error::new(
                ErrorKind::PermissionDenied,
                "a change asked by a page of another site is refused",
            ));
        }
    }
    next.run(request).await
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    problem(&Error::new(
        ErrorKind::NotFound,
        format!("no endpoint {method} {}", uri.path()),
    ))
}

fn ok(value: impl serde::Serialize) -> Answer {
    Ok(Json(value).into_response())
}

/// The body as `T`, or a problem naming what is wrong.
fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, Problem> {
    body.map(|Json(value)| value).map_err(Problem::from)
}

/// Checks the request against its endpoint's rule for `tenants`, as every front door does.
fn admit(
    node: &Node,
    caller: &Caller,
    service: &str,
    operation: &str,
    tenants: &[&str],
) -> Result<(), Problem> {
    let rule = control::access::rule(service, operation).ok_or_else(|| {
        Error::new(
            ErrorKind::PermissionDenied,
            format!("no access rule covers {service}/{operation}"),
        )
    })?;
    control::access::admit_tenants(&node.snapshot(), node.admission(), caller, rule, tenants)?;
    Ok(())
}

/// The audit trail's actor: the verified caller when auth is on, else the actor header; the
/// reason header, else `reason` when the body gives one.
fn actor(caller: &Caller, headers: &HeaderMap, reason: Option<&str>) -> Result<Actor, Problem> {
    let header = |name: &'static str| -> Result<Option<&str>, Problem> {
        headers
            .get(name)
            .map(|value| {
                value
                    .to_str()
                    .map_err(|_| Problem::from(Error::invalid(name, "must be printable ASCII")))
            })
            .transpose()
    };
    let given = header(REASON_HEADER)?.or(reason.filter(|r| !r.is_empty()));
    Ok(caller.actor(header(ACTOR_HEADER)?, given)?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    page_token: String,
    #[serde(default)]
    page_size: u32,
}

async fn list_tenants(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(page) =
        page.map_err(|err| Problem::from(Error::invalid("query", err.body_text())))?;
    admit(&node, &caller, "Admin", "ListTenants", &[])?;
    let mut listed = node.list_tenants(&page.page_token, page.page_size.min(MAX_PAGE))?;
    // A scoped caller sees only its own tenants.
    listed.tenants.retain(|tenant| caller.sees(tenant));
    ok(listed)
}

async fn tenant_services(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(tenant): Path<String>,
) -> Answer {
    admit(&node, &caller, "Admin", "GetTenantServices", &[&tenant])?;
    ok(node.tenant_services(&tenant)?)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TenantBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    tier: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default = "yes")]
    active: bool,
}

fn yes() -> bool {
    true
}

async fn upsert_tenant(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    json: Result<Json<TenantBody>, JsonRejection>,
) -> Answer {
    let given = body(json)?;
    admit(&node, &caller, "Admin", "UpsertTenant", &[&tenant])?;
    let actor = actor(&caller, &headers, None)?;
    let commit = node
        .upsert_tenant(
            Tenant {
                id: tenant,
                name: given.name,
                region: given.region,
                tier: given.tier,
                labels: given.labels,
                active: given.active,
            },
            &actor,
        )
        .await?;
    ok(json!({"revision": commit.revision}))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct VersionBody {
    version: String,
    /// Compare-and-set: the version the tenant must be on now (`If-Match` says the same).
    #[serde(default)]
    expected_version: Option<String>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    migrate: bool,
    #[serde(default)]
    reason: String,
}

async fn set_tenant_version(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((tenant, service)): Path<(String, String)>,
    headers: HeaderMap,
    json: Result<Json<VersionBody>, JsonRejection>,
) -> Answer {
    let given = body(json)?;
    admit(&node, &caller, "Admin", "SetTenantVersion", &[&tenant])?;
    let actor = actor(&caller, &headers, Some(&given.reason))?;
    // `If-Match: "v1"` is the expected version (the entity tag of the tenant's version);
    // `*` asks for none. Weak tags and lists are refused.
    let if_match = headers
        .get(header::IF_MATCH)
        .map(|value| {
            let text = value
                .to_str()
                .map_err(|_| Problem::from(Error::invalid("If-Match", "must be printable ASCII")))?
                .trim();
            if text == "*" {
                return Ok(None);
            }
            text.strip_prefix('"')
                .and_then(|rest| rest.strip_suffix('"'))
                .filter(|tag| !tag.contains('"'))
                .map(|tag| Some(tag.to_owned()))
                .ok_or_else(|| {
                    Problem::from(Error::invalid(
                        "If-Match",
                        "one strong entity tag, the version in quotes (\"v1\"), or *",
                    ))
                })
        })
        .transpose()?
        .flatten();
    let expected_version = match (if_match, given.expected_version) {
        (Some(tag), Some(body)) if tag != body => {
            return Err(Problem::from(Error::invalid(
                "expected_version",
                "differs from If-Match",
            )));
        }
        (Some(tag), _) => Some(tag),
        (None, given) => given,
    };
    let switch = node
        .set_tenant_version(
            SetTenantVersion {
                tenant_id: tenant,
                service,
                version: given.version.clone(),
                expected_version,
                force: given.force,
                migrate: given.migrate,
            },
            &actor,
        )
        .await?;
    let mut response = Json(switch).into_response();
    if let Ok(tag) = header::HeaderValue::try_from(format!("\"{}\"", given.version)) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    Ok(response)
}

async fn clear_tenant_version(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((tenant, service)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    admit(&node, &caller, "Admin", "ClearTenantVersion", &[&tenant])?;
    let actor = actor(&caller, &headers, None)?;
    let (revision, cleared) = node.clear_tenant_version(tenant, service, &actor).await?;
    ok(json!({"revision": revision, "cleared": cleared}))
}

async fn list_services(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Answer {
    admit(&node, &caller, "Admin", "ListServices", &[])?;
    ok(node.list_services())
}

/// A service: its default version, load-balancing strategy and known versions.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ServiceBody {
    default_version: String,
    #[serde(default)]
    strategy: routing_core::Strategy,
    #[serde(default)]
    versions: std::collections::BTreeSet<String>,
    /// Even when the default version has no instance.
    #[serde(default)]
    force: bool,
}

async fn upsert_service(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(service): Path<String>,
    headers: HeaderMap,
    json: Result<Json<ServiceBody>, JsonRejection>,
) -> Answer {
    let given = body(json)?;
    admit(&node, &caller, "Admin", "UpsertService", &[])?;
    let actor = actor(&caller, &headers, None)?;
    let service = Service {
        name: service,
        default_version: given.default_version,
        strategy: given.strategy,
        versions: given.versions,
    };
    let commit = node.upsert_service(service, given.force, &actor).await?;
    ok(json!({"revision": commit.revision}))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct DefaultVersionBody {
    version: String,
    #[serde(default)]
    force: bool,
}

async fn set_default_version(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(service): Path<String>,
    headers: HeaderMap,
    json: Result<Json<DefaultVersionBody>, JsonRejection>,
) -> Answer {
    let given = body(json)?;
    admit(&node, &caller, "Admin", "SetDefaultVersion", &[])?;
    let actor = actor(&caller, &headers, None)?;
    let commit = node
        .set_default_version(service, given.version, given.force, &actor)
        .await?;
    ok(json!({"revision": commit.revision}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionFilter {
    #[serde(default)]
    version: String,
}

async fn list_instances(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(service): Path<String>,
    filter: Result<Query<VersionFilter>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(filter) =
        filter.map_err(|err| Problem::from(Error::invalid("query", err.body_text())))?;
    admit(&node, &caller, "Admin", "ListInstances", &[])?;
    let listed = node.list_instances(&service, &filter.version)?;
    let items: Vec<&Instance> = listed.items.iter().map(AsRef::as_ref).collect();
    ok(json!({"items": items, "revision": listed.revision}))
}

/// An instance of a version of the service.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct InstanceBody {
    id: String,
    /// `host:port`.
    address: String,
    version: String,
    /// Relative weight; 0 drains it.
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    region: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
    #[serde(default = "yes")]
    healthy: bool,
    /// 0-100.
    #[serde(default = "full_health")]
    health_score: u8,
    /// Seconds the registration lasts without a heartbeat; 0 or absent: until deregistered.
    #[serde(default)]
    ttl_seconds: u64,
}

fn one() -> u32 {
    1
}

fn full_health() -> u8 {
    100
}

async fn register_instance(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(service): Path<String>,
    headers: HeaderMap,
    json: Result<Json<InstanceBody>, JsonRejection>,
) -> Answer {
    let given = body(json)?;
    admit(&node, &caller, "Admin", "RegisterInstance", &[])?;
    let actor = actor(&caller, &headers, None)?;
    let ttl = (given.ttl_seconds > 0).then(|| std::time::Duration::from_secs(given.ttl_seconds));
    let instance = Instance {
        id: given.id,
        address: given.address,
        service,
        version: given.version,
        weight: given.weight,
        region: given.region,
        zone: given.zone,
        metadata: given.metadata,
        healthy: given.healthy,
        health_score: given.health_score,
    };
    let commit = node.register_instance(instance, ttl, &actor).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"revision": commit.revision})),
    )
        .into_response())
}

async fn deregister_instance(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((service, instance)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    admit(&node, &caller, "Admin", "DeregisterInstance", &[])?;
    let actor = actor(&caller, &headers, None)?;
    let commit = node.deregister_instance(service, instance, &actor).await?;
    ok(json!({"revision": commit.revision}))
}

/// Outcomes of each version of a service over the outcome window: requests, errors, error
/// rate and p99, as reported by clients and gateways. Figures of every tenant's traffic: under
/// the fleet-wide rule of the rollout figures they feed.
async fn service_stats(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(service): Path<String>,
) -> Answer {
    admit(&node, &caller, "Admin", "ListRollouts", &[])?;
    let state = node.snapshot();
    let entry = state.service(&service).ok_or_else(|| {
        Error::from(routing_core::RoutingError::not_found(
            routing_core::Entity::Service,
            service.clone(),
        ))
    })?;
    let window = node.settings().outcomes.window();
    let now = control::audit::now_ms();
    let versions: Vec<Value> = entry
        .service
        .versions
        .iter()
        .map(|version| {
            let stats = node
                .outcomes()
                .version_stats(&service, version, now, window.span_ms);
            json!({
                "version": version,
                "requests": stats.requests,
                "errors": stats.errors,
                "error_rate": stats.error_rate(),
                "p99_ms": stats.p99_ms(),
            })
        })
        .collect();
    ok(json!({"service": service, "window_ms": window.span_ms, "versions": versions}))
}

async fn list_overrides(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(service): Path<String>,
) -> Answer {
    admit(&node, &caller, "Admin", "ListOverrides", &[])?;
    ok(node.list_overrides(&service)?)
}

async fn clear_override(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((service, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    admit(&node, &caller, "Admin", "ClearOverride", &[])?;
    let actor = actor(&caller, &headers, None)?;
    let commit = node.clear_override(service, id, &actor).await?;
    ok(json!({"revision": commit.revision}))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    service: String,
    from_version: String,
    to_version: String,
    #[serde(default)]
    tenant_ids: Vec<String>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    reason: String,
}

async fn rollback(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
    json: Result<Json<RollbackBody>, JsonRejection>,
) -> Answer {
    let given = body(json)?;
    let tenants: Vec<&str> = given.tenant_ids.iter().map(String::as_str).collect();
    admit(&node, &caller, "Admin", "EmergencyRollback", &tenants)?;
    let actor = actor(&caller, &headers, Some(&given.reason))?;
    let result = node
        .emergency_rollback(
            EmergencyRollback {
                service: given.service,
                from_version: given.from_version,
                to_version: given.to_version,
                tenant_ids: given.tenant_ids,
                force: given.force,
                dry_run: given.dry_run,
                reason: given.reason,
            },
            &actor,
        )
        .await?;
    ok(json!({
        "revision": result.revision,
        "moved_tenants": result.moved_tenants,
        "override_id": result.override_id,
        "dry_run": given.dry_run,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFilter {
    #[serde(default)]
    since_revision: u64,
    #[serde(default)]
    tenant_id: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    limit: u32,
}

async fn events(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    filter: Result<Query<EventFilter>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(filter) =
        filter.map_err(|err| Problem::from(Error::invalid("query", err.body_text())))?;
    admit(&node, &caller, "Admin", "ListEvents", &[])?;
    // A scoped caller reads only events about its own tenants.
    let state = node.snapshot();
    if !filter.tenant_id.is_empty() {
        caller.check_tenant(&state, &filter.tenant_id)?;
    }
    let mut page = node
        .events(&EventQuery {
            since_revision: filter.since_revision,
            tenant_id: filter.tenant_id.clone(),
            service: filter.service.clone(),
            limit: filter.limit.min(MAX_PAGE),
        })
        .await?;
    if !caller.scope.is_all() {
        page.events.retain(|event| {
            !event.tenant_id.is_empty() && caller.scope.holds_id(&state, &event.tenant_id)
        });
    }
    ok(page)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RouteBody {
    #[serde(alias = "tenant")]
    tenant_id: String,
    service: String,
    #[serde(default)]
    metadata: HashMap<String, String>,
    #[serde(default)]
    hash_key: String,
    #[serde(default)]
    region: String,
}

async fn route(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    json: Result<Json<RouteBody>, JsonRejection>,
) -> Answer {
    let started = std::time::Instant::now();
    let given = body(json)?;
    admit(&node, &caller, "Router", "Route", &[&given.tenant_id])?;
    let state = node.snapshot();
    let query = RouteQuery {
        tenant_id: &given.tenant_id,
        service: &given.service,
        region: &given.region,
        hash_key: &given.hash_key,
        strategy: None,
        entropy: routing_core::hash::entropy(),
        now_ms: control::audit::now_ms(),
    };
    let decided = node.route(&state, &query, &given.metadata);
    node.route_handled(started.elapsed());
    let decision = decided?;
    let instance = &decision.member.instance;
    ok(json!({
        "instance_id": instance.id,
        "address": instance.address,
        "version": decision.resolution.version,
        "source": decision.resolution.source.to_string(),
        "revision": decision.revision,
    }))
}

async fn list_rollouts(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(service): Path<String>,
) -> Answer {
    admit(&node, &caller, "Admin", "ListRollouts", &[])?;
    ok(node.list_rollouts(&service)?)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RolloutBody {
    to_version: String,
    #[serde(default)]
    id: String,
    /// How long each step runs before it is judged.
    interval_seconds: u64,
    /// The share of tenants at each step, in percent (`[5, 25, 100]`).
    steps_percent: Vec<f64>,
    #[serde(default)]
    analysis: Option<AnalysisPolicy>,
    #[serde(default)]
    cohort: Cohort,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    reason: String,
}

/// Checks a cohort's names as the gRPC front door does.
fn checked(cohort: Cohort) -> Result<Cohort, Problem> {
    Ok(routing_core::validate::cohort(
        cohort.tiers.into_iter().collect(),
        cohort.labels,
        cohort.tenant_ids.into_iter().collect(),
    )?)
}

/// Shares in percent as basis points: 1 to 100 steps, each above 0 and at most 100 percent.
fn basis_points(percents: &[f64]) -> Result<Vec<u32>, Problem> {
    if percents.len() > 100 {
        return Err(Problem::from(Error::invalid(
            "steps_percent",
            "1 to 100 steps",
        )));
    }
    Ok(routing_core::validate::shares("steps_percent", percents)?)
}

async fn start_rollout(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(service): Path<String>,
    headers: HeaderMap,
    json: Result<Json<RolloutBody>, JsonRejection>,
) -> Answer {
    let given = body(json)?;
    let analysis = given.analysis.clone().unwrap_or_default();
    analysis
        .validate()
        .map_err(|reason| Problem::from(Error::invalid("analysis", reason)))?;
    admit(&node, &caller, "Admin", "StartRollout", &[])?;
    let actor = actor(&caller, &headers, Some(&given.reason))?;
    let view = node
        .start_rollout(
            StartRollout {
                service,
                to_version: given.to_version,
                id: given.id,
                interval_seconds: given.interval_seconds,
                steps: basis_points(&given.steps_percent)?,
                analysis,
                cohort: checked(given.cohort)?,
                force: given.force,
            },
            &actor,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn get_rollout(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((service, id)): Path<(String, String)>,
) -> Answer {
    admit(&node, &caller, "Admin", "GetRollout", &[])?;
    ok(node.rollout(&service, &id)?)
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    reason: String,
}

async fn control_rollout(
    node: &Node,
    caller: &Caller,
    (service, id): (String, String),
    headers: &HeaderMap,
    bytes: &axum::body::Bytes,
    (operation, event): (&str, RolloutEvent),
) -> Answer {
    // The body is optional, but when there is one it is JSON: a form or text post from another
    // site (which needs no preflight) is refused.
    let given: ActionBody = if bytes.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
        ActionBody::default()
    } else {
        json_content_type(headers)?;
        serde_json::from_slice(bytes)
            .map_err(|err| Problem::from(Error::invalid("body", err.to_string())))?
    };
    admit(node, caller, "Admin", operation, &[])?;
    let actor = actor(caller, headers, Some(&given.reason))?;
    let reason = actor.reason.clone();
    ok(node
        .control_rollout(service, id, event, given.force, &reason, &actor)
        .await?)
}

/// Refuses a body that does not say it is JSON (415).
fn json_content_type(headers: &HeaderMap) -> Result<(), Problem> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
    if json {
        Ok(())
    } else {
        Err(Problem::with_status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::invalid("content-type", "the body must be application/json"),
        ))
    }
}

macro_rules! rollout_action {
    ($name:ident, $operation:literal, $event:expr) => {
        async fn $name(
            State(node): State<Arc<Node>>,
            Extension(caller): Extension<Arc<Caller>>,
            Path(path): Path<(String, String)>,
            headers: HeaderMap,
            bytes: axum::body::Bytes,
        ) -> Answer {
            control_rollout(&node, &caller, path, &headers, &bytes, ($operation, $event)).await
        }
    };
}

rollout_action!(pause_rollout, "PauseRollout", RolloutEvent::Paused);
rollout_action!(resume_rollout, "ResumeRollout", RolloutEvent::Resumed);
rollout_action!(promote_rollout, "PromoteRollout", RolloutEvent::Promoted);
rollout_action!(abort_rollout, "AbortRollout", RolloutEvent::Aborted);

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ExperimentBody {
    id: String,
    variants: Vec<Variant>,
    #[serde(default)]
    cohort: Cohort,
}

async fn create_experiment(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(service): Path<String>,
    headers: HeaderMap,
    json: Result<Json<ExperimentBody>, JsonRejection>,
) -> Answer {
    let given = body(json)?;
    admit(&node, &caller, "Admin", "CreateExperiment", &[])?;
    let actor = actor(&caller, &headers, None)?;
    let view = node
        .create_experiment(
            service,
            given.id,
            given.variants,
            checked(given.cohort)?,
            &actor,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn get_experiment(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((service, id)): Path<(String, String)>,
) -> Answer {
    admit(&node, &caller, "Admin", "GetExperiment", &[])?;
    ok(node.experiment(&service, &id)?)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct VariantsBody {
    variants: Vec<Variant>,
    /// Move tenants already assigned when the split changes (default: they stay).
    #[serde(default)]
    rebalance: bool,
}

async fn update_experiment(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((service, id)): Path<(String, String)>,
    headers: HeaderMap,
    json: Result<Json<VariantsBody>, JsonRejection>,
) -> Answer {
    let given = body(json)?;
    admit(&node, &caller, "Admin", "UpdateExperiment", &[])?;
    let actor = actor(&caller, &headers, None)?;
    ok(node
        .update_experiment(service, id, given.variants, given.rebalance, &actor)
        .await?)
}

async fn stop_experiment(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((service, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    admit(&node, &caller, "Admin", "StopExperiment", &[])?;
    let actor = actor(&caller, &headers, None)?;
    let commit = node.stop_experiment(service, id, &actor).await?;
    ok(json!({"revision": commit.revision}))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct UpgradeBody {
    service: String,
    #[serde(default)]
    target_schema: Option<u32>,
    #[serde(default)]
    target_version: String,
    #[serde(default)]
    tenant_ids: Vec<String>,
    #[serde(default)]
    cohort: Cohort,
    #[serde(default)]
    dry_run: bool,
}

async fn upgrade_schema(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    json: Result<Json<UpgradeBody>, JsonRejection>,
) -> Answer {
    let given = body(json)?;
    let tenants: Vec<&str> = given.tenant_ids.iter().map(String::as_str).collect();
    admit(&node, &caller, "Admin", "UpgradeSchema", &tenants)?;
    let started = node
        .upgrade_schema(UpgradeSchema {
            service: given.service,
            target_schema: given.target_schema,
            target_version: given.target_version,
            tenant_ids: given.tenant_ids,
            cohort: checked(given.cohort)?,
            dry_run: given.dry_run,
        })
        .await?;
    let plans: Vec<Value> = started
        .plans
        .iter()
        .map(|plan| match &plan.plan {
            Ok(planned) => json!({
                "tenant_id": plan.tenant_id,
                "from": planned.from,
                "to": planned.to,
                "steps": planned.steps.iter().map(|step| json!({
                    "version": step.version,
                    "name": step.name,
                    "direction": format!("{:?}", step.direction).to_lowercase(),
                })).collect::<Vec<_>>(),
            }),
            Err(reason) => json!({"tenant_id": plan.tenant_id, "error": reason}),
        })
        .collect();
    let status = if given.dry_run {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(json!({
            "upgrade_id": started.upgrade_id,
            "target_schema": started.target_schema,
            "plans": plans,
        })),
    )
        .into_response())
}

async fn schema_upgrade(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Answer {
    admit(&node, &caller, "Admin", "GetSchemaUpgrade", &[])?;
    ok(node.schema_upgrade(&id)?.snapshot())
}

/// `GET /api/v1/schema/upgrades/{id}/events`: an upgrade's progress as server-sent events
/// (`event: progress`, `data:` the progress as JSON): now, then at every change, until it
/// finishes.
async fn schema_upgrade_events(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Extension(Closing(closing)): Extension<Closing>,
    Path(id): Path<String>,
) -> Answer {
    use axum::response::sse::{Event, KeepAlive, Sse};
    admit(&node, &caller, "Admin", "WatchSchemaUpgrade", &[])?;
    let upgrade = node.schema_upgrade(&id)?;
    // Counted against the caller's cap of open streams, like every watch.
    let slot = node.admission().open_watch(&caller)?;
    let changes = upgrade.subscribe();
    /// Where the stream is: before its first event, waiting for a change, or done.
    enum Next {
        Now,
        AfterAChange,
        End,
    }
    let events = futures_util::stream::unfold(
        (upgrade, changes, closing, Next::Now, slot),
        |(upgrade, mut changes, mut closing, next, slot)| async move {
            match next {
                Next::End => return None,
                Next::AfterAChange => {
                    tokio::select! {
                        changed = changes.changed() => changed.ok()?,
                        _ = closing.wait_for(|closing| *closing) => return None,
                    }
                }
                Next::Now => {}
            }
            changes.borrow_and_update();
            let progress = upgrade.snapshot();
            let then = if progress.finished() {
                Next::End
            } else {
                Next::AfterAChange
            };
            let data = serde_json::to_string(&progress).ok()?;
            let event = Event::default().event("progress").data(data);
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (upgrade, changes, closing, then, slot),
            ))
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFilter {
    #[serde(default)]
    service: String,
}

async fn tenant_schema(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(tenant): Path<String>,
    filter: Result<Query<ServiceFilter>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(filter) =
        filter.map_err(|err| Problem::from(Error::invalid("query", err.body_text())))?;
    admit(&node, &caller, "Admin", "GetTenantSchema", &[&tenant])?;
    let schemas = node.tenant_schema(&tenant, &filter.service).await?;
    let services: Vec<Value> = schemas.iter().map(service_schema_json).collect();
    ok(json!({"tenant_id": tenant, "services": services}))
}

/// The body of a schema repair: `{}`, or why.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RepairBody {
    #[serde(default)]
    reason: String,
}

async fn repair_tenant_schema(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((tenant, service)): Path<(String, String)>,
    headers: HeaderMap,
    json: Result<Json<RepairBody>, JsonRejection>,
) -> Answer {
    let given = body(json)?;
    admit(&node, &caller, "Admin", "RepairTenantSchema", &[&tenant])?;
    let actor = actor(&caller, &headers, Some(&given.reason))?;
    let (rows_changed, schema) = node.repair_tenant_schema(&tenant, &service, &actor).await?;
    ok(json!({
        "tenant_id": tenant,
        "rows_changed": rows_changed,
        "schema": service_schema_json(&schema),
    }))
}

/// Returns a tenant's schema of one service as JSON.
fn service_schema_json(schema: &control::node::ServiceSchema) -> Value {
    json!({
        "service": schema.service,
        "current": schema.current,
        "required": schema.required,
        "latest": schema.latest,
        "advice": schema.advice,
        "history": schema.history.iter().map(|applied| json!({
            "version": applied.version,
            "name": applied.name,
            "direction": applied.direction,
            "applied_at_ms": applied.applied_at_ms,
            "duration_ms": applied.duration_ms,
            "success": applied.success,
            "applied_by": applied.applied_by,
            "error": applied.error,
            "statements_done": applied.statements_done,
            "repaired": applied.repaired,
        })).collect::<Vec<_>>(),
    })
}

/// The OpenAPI 3 document of the API, generated from [`ENDPOINTS`]: every path and method,
/// its path parameters, the gRPC operation whose rule governs it, and the problem document
/// every error is.
pub fn openapi() -> Value {
    // OpenAPI 3.1 takes JSON Schema 2020-12 as it is; definitions live under components.
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|settings| {
        settings.definitions_path = "/components/schemas".into();
        settings.meta_schema = None;
    });
    let mut generator = SchemaGenerator::new(settings);
    let mut paths = serde_json::Map::new();
    for endpoint in ENDPOINTS {
        let parameters: Vec<Value> = endpoint
            .path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
            })
            .collect();
        let alias = !endpoint.path.starts_with("/api/v1/");
        let mut operation = json!({
            "operationId": format!(
                "{}{}{}",
                endpoint.method.to_lowercase(),
                endpoint.path.replace(['/', '{', '}', '-', '.'], "_"),
                if alias { "_alias" } else { "" }
            ),
            "summary": format!("{}/{}", endpoint.service, endpoint.operation),
            "x-grpc-operation": format!("greyrouter.v1.{}/{}", endpoint.service, endpoint.operation),
            "parameters": parameters,
            "responses": {
                "200": {"description": "the result as JSON"},
                "default": {
                    "description": "a problem document",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                },
            },
        });
        if alias {
            operation["description"] = json!("a path of the original design, kept as an alias");
        }
        if let Some(body) = endpoint.body {
            let schema = body(&mut generator);
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": schema.as_value()}},
            });
        }
        let entry = paths
            .entry(endpoint.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[endpoint.method.to_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "greyrouter HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The node's operations over HTTP/JSON; each endpoint is governed by the rule of its gRPC twin.",
        },
        "paths": paths,
        "components": {
            "schemas": problem_and(generator.definitions().clone(), json!({
                    "type": "object",
                    "required": ["type", "title", "status", "detail", "kind"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "kind": {"type": "string", "enum": ErrorKind::ALL.iter().map(|kind| kind.as_str()).collect::<Vec<_>>()},
                        "field": {"type": "string"},
                        "reason": {"type": "string"},
                        "current_version": {"type": "string"},
                        "retry_after_ms": {"type": "integer"},
                    },
                })),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    })
}

/// The bodies' definitions and the problem document's.
fn problem_and(mut definitions: serde_json::Map<String, Value>, problem: Value) -> Value {
    definitions.insert("Problem".into(), problem);
    Value::Object(definitions)
}

async fn openapi_json() -> Response {
    Json(openapi()).into_response()
}

/// Turns true when the server shuts down: live streams end then.
#[derive(Clone)]
struct Closing(tokio::sync::watch::Receiver<bool>);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    /// Comma-separated tenant ids; empty: every tenant (a scoped caller: its own).
    #[serde(default)]
    tenant_ids: String,
    /// Comma-separated services; empty: every service.
    #[serde(default)]
    services: String,
    /// Resume after this revision (0: start with a snapshot).
    #[serde(default)]
    from_revision: u64,
    /// The history of `from_revision`.
    #[serde(default)]
    history: String,
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Encodes watch updates as the JSON data of server-sent events.
struct JsonFrames;

impl control::watch::Frames for JsonFrames {
    type Frame = (u64, String);

    fn frame(&self, update: &control::watch::Update<'_>) -> (u64, String) {
        let upserts: Vec<Value> = update
            .upserts
            .iter()
            .map(|assignment| {
                json!({
                    "tenant_id": assignment.tenant_id,
                    "service": assignment.service,
                    "version": assignment.resolution.version,
                    "source": assignment.resolution.source.to_string(),
                    "instances": assignment.pool.as_ref().map_or(0, |pool| pool.members().len()),
                })
            })
            .collect();
        let removals: Vec<Value> = update
            .removals
            .iter()
            .map(|(tenant_id, service)| json!({"tenant_id": tenant_id, "service": service}))
            .collect();
        let data = json!({
            "revision": update.revision,
            "snapshot": update.snapshot,
            "partial": update.partial,
            "cause": update.cause,
            "history": update.history,
            "upserts": upserts,
            "removals": removals,
        });
        (update.revision, data.to_string())
    }

    fn memory_bytes(&self, frame: &(u64, String)) -> usize {
        frame.1.len() + 64
    }
}

/// `GET /api/v1/watch`: the effective assignments a caller follows as server-sent events
/// (`event: assignments`, `id:` the revision, `data:` the update as JSON): a snapshot first
/// (or the changes after `from_revision`), then every change; the same watchers, limits and
/// caps as `WatchAssignments`.
async fn watch(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Arc<Caller>>,
    Extension(Closing(closing)): Extension<Closing>,
    query: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let Query(query) =
        query.map_err(|err| Problem::from(Error::invalid("query", err.body_text())))?;
    let mut tenant_ids = list(&query.tenant_ids);
    // A caller scoped to listed tenants that names none watches those it may see.
    if let (true, control::access::TenantScope::Only(scope)) =
        (tenant_ids.is_empty(), &caller.scope)
        && scope.labels.is_empty()
    {
        tenant_ids = scope.tenants.iter().cloned().collect();
    }
    let named: Vec<&str> = tenant_ids.iter().map(String::as_str).collect();
    admit(&node, &caller, "Router", "WatchAssignments", &named)?;
    let slot = node.admission().open_watch(&caller)?;
    let queue = node.watch(
        tenant_ids,
        list(&query.services),
        query.from_revision,
        &query.history,
        closing.clone(),
        JsonFrames,
    )?;
    let events = futures_util::stream::unfold(
        (queue, closing, slot),
        |(mut queue, mut closing, slot)| async move {
            let next = tokio::select! {
                next = queue.recv() => next,
                _ = closing.wait_for(|closing| *closing) => None,
            };
            // The permit is released here: the update now belongs to the transport.
            let ((revision, data), _permit) = next?;
            let event = Event::default()
                .event("assignments")
                .id(revision.to_string())
                .data(data);
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (queue, closing, slot),
            ))
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A concrete path of an endpoint's pattern.
    fn concrete(path: &str) -> String {
        path.split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "x"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn every_endpoint_is_governed_by_the_rule_of_its_grpc_twin() {
        for endpoint in ENDPOINTS {
            let method = Method::from_bytes(endpoint.method.as_bytes()).expect("a method");
            let (found, rule) = endpoint_of(&method, &concrete(endpoint.path))
                .unwrap_or_else(|| panic!("{} {} has no rule", endpoint.method, endpoint.path));
            assert_eq!(found.path, endpoint.path);
            assert_eq!(
                (rule.service, rule.operation),
                (endpoint.service, endpoint.operation)
            );
        }
        assert!(endpoint_of(&Method::GET, "/api/v1/nothing").is_none());
        assert!(endpoint_of(&Method::POST, "/api/v1/tenants").is_none());
        assert!(endpoint_of(&Method::GET, "/api/v1/tenants//services").is_none());
        let (alias, _) = endpoint_of(&Method::POST, "/api/grey-router/route").expect("alias");
        assert_eq!(alias.operation, "Route");
    }

    #[test]
    fn the_openapi_document_lists_every_endpoint_once() {
        let document = openapi();
        let paths = document["paths"].as_object().expect("paths");
        let mut listed = 0;
        for (path, methods) in paths {
            for method in methods.as_object().expect("methods").keys() {
                listed += 1;
                assert!(
                    ENDPOINTS
                        .iter()
                        .any(|e| e.path == path && e.method.to_lowercase() == *method),
                    "{method} {path}"
                );
            }
        }
        assert_eq!(listed, ENDPOINTS.len());
        // Every endpoint that changes something with a body documents the body's fields.
        for endpoint in ENDPOINTS {
            if matches!(endpoint.method, "PUT" | "POST") {
                assert!(
                    endpoint.body.is_some(),
                    "{} {}",
                    endpoint.method,
                    endpoint.path
                );
            }
        }
        let schemas = &document["components"]["schemas"];
        assert!(
            schemas["RolloutBody"]["properties"]["steps_percent"].is_object(),
            "{schemas}"
        );
        assert!(schemas["RolloutBody"]["properties"]["cohort"].is_object());
        assert!(
            schemas["Cohort"]["properties"]["tiers"].is_object(),
            "{schemas}"
        );
        assert!(schemas["Problem"]["properties"]["kind"].is_object());
        let body = &document["paths"]["/api/v1/tenants/{tenant}/services/{service}/version"]["put"]
            ["requestBody"]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(body, "#/components/schemas/VersionBody");
        let mut ids: Vec<&str> = paths
            .values()
            .flat_map(|methods| methods.as_object().expect("methods").values())
            .filter_map(|operation| operation["operationId"].as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), ENDPOINTS.len(), "operation ids are unique");
    }

    #[test]
    fn problems_carry_the_status_of_the_error_table() {
        for kind in ErrorKind::ALL {
            let response = problem(&Error::new(kind, "why"));
            assert_eq!(response.status().as_u16(), kind.http_status(), "{kind:?}");
            assert_eq!(
                response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok()),
                Some("application/problem+json")
            );
        }
        let limited = problem(&Error::Exhausted {
            message: "slow down".into(),
            retry_after_ms: 1500,
        });
        assert_eq!(
            limited
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("2")
        );
    }
}
