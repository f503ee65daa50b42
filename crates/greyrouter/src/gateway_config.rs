//! The gateway's configuration (`[gateway]`, shared by `greyrouter gateway` and `serve`) and
//! its start: the SDK following the routers, the token verifier, the listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

/// `[gateway]`: the HTTP gateway. `serve` runs one in-process when `listen` is set;
/// `greyrouter gateway` runs one on its own (its flags override these values).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Where `serve` runs the gateway; absent: no gateway in `serve`.
    pub listen: Option<SocketAddr>,
    /// Where the tenant comes from, first found wins: `header`, `token` (the tenant claim of a
    /// bearer JWT checked as `[auth]` says), `host` (a subdomain of `tenant_domain`).
    pub tenant_from: Vec<String>,
    /// The header naming the tenant.
    pub tenant_header: String,
    /// The JWT claim naming the tenant (a dotted path).
    pub tenant_claim: String,
    /// A domain whose subdomains name tenants (`acme.example.com`: tenant `acme`); empty: none.
    pub tenant_domain: String,
    /// The header naming the service.
    pub service_header: String,
    /// Path prefixes of services; without a match the first path segment names the service.
    pub routes: Vec<GatewayRoute>,
    /// Longest wait for a connection to an instance, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Longest wait for an instance's response headers, in milliseconds.
    pub request_timeout_ms: u64,
    /// Connections to instances unused this long are closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Most connections kept per instance.
    pub max_connections_per_instance: usize,
    /// Share of requests that may be retries (0 to 1).
    pub retry_budget: f64,
    /// Retry POST requests too (they may not be idempotent).
    pub retry_post: bool,
    /// Largest request body (413 above it).
    pub max_body_bytes: u64,
    /// Largest request body kept to retry an idempotent request.
    pub max_retry_body_bytes: usize,
    /// Largest request head (request line and headers); 431 above it.
    pub max_header_bytes: usize,
    /// Threads of `greyrouter gateway` (0: the cores it may run on). In `serve` the gateway
    /// shares the server's runtime.
    pub threads: usize,
}

/// A path prefix of a service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayRoute {
    /// The prefix (`/shop`).
    pub prefix: String,
    /// The service.
    pub service: String,
    /// Forward the path without the prefix (the default).
    #[serde(default = "yes")]
    pub strip_prefix: bool,
}

fn yes() -> bool {
    true
}

impl Default for GatewayConfig {
    fn default() -> Self {
        let settings = gateway::GatewaySettings::default();
        GatewayConfig {
            listen: None,
            tenant_from: vec!["header".into(), "token".into(), "host".into()],
            tenant_header: settings.tenant_header.as_str().to_owned(),
            tenant_claim: "tenant_id".into(),
            tenant_domain: String::new(),
            service_header: settings.service_header.as_str().to_owned(),
            routes: Vec::new(),
            connect_timeout_ms: millis(settings.connect_timeout),
            request_timeout_ms: millis(settings.request_timeout),
            idle_timeout_ms: millis(settings.idle_timeout),
            max_connections_per_instance: settings.max_connections_per_instance,
            retry_budget: settings.retry_budget,
            retry_post: settings.retry_post,
            max_body_bytes: settings.max_body_bytes,
            max_retry_body_bytes: settings.max_retry_body_bytes,
            max_header_bytes: settings.max_header_bytes,
            threads: 0,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Most bytes a request head may be configured to take.
const MAX_HEADER_BYTES: usize = 1024 * 1024;

impl GatewayConfig {
    /// Checks every value; one line per problem.
    pub fn problems(&self) -> Vec<String> {
        match self.settings(None) {
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        }
    }

    /// The gateway's settings, with `verifier` checking bearer tokens when the `token` source
    /// is used.
    pub fn settings(
        &self,
        verifier: Option<Arc<auth::jwt::JwtVerifier>>,
    ) -> Result<gateway::GatewaySettings, Vec<String>> {
        let mut problems = Vec::new();
        let header = |field: &str, value: &str, problems: &mut Vec<String>| {
            http::HeaderName::from_bytes(value.as_bytes())
                .map_err(|_| {
                    problems.push(format!("gateway.{field}: {value:?} is not a header name"))
                })
                .ok()
        };
        let tenant_header = header("tenant_header", &self.tenant_header, &mut problems);
        let service_header = header("service_header", &self.service_header, &mut problems);
        let mut tenant_from = Vec::new();
        for name in &self.tenant_from {
            match name.parse::<gateway::TenantSource>() {
                Ok(source) if !tenant_from.contains(&source) => tenant_from.push(source),
                Ok(_) => problems.push(format!("gateway.tenant_from: {name} named twice")),
                Err(err) => problems.push(format!("gateway.tenant_from: {err}")),
            }
        }
        if tenant_from.is_empty() {
            problems.push("gateway.tenant_from: name at least one of header, token, host".into());
        }
        if self.tenant_claim.is_empty() {
            problems.push("gateway.tenant_claim: must not be empty".into());
        }
        if !(0.0..=1.0).contains(&self.retry_budget) {
            problems.push(format!(
                "gateway.retry_budget: {} is outside 0 to 1",
                self.retry_budget
            ));
        }
        if self.connect_timeout_ms == 0 || self.request_timeout_ms == 0 || self.idle_timeout_ms == 0
        {
            problems.push(
                "gateway: connect_timeout_ms, request_timeout_ms and idle_timeout_ms must be positive"
                    .into(),
            );
        }
        if self.max_connections_per_instance == 0 || self.max_body_bytes == 0 {
            problems.push(
                "gateway: max_connections_per_instance and max_body_bytes must be positive".into(),
            );
        }
        if !(1024..=MAX_HEADER_BYTES).contains(&self.max_header_bytes) {
            problems.push(format!(
                "gateway.max_header_bytes: {} is outside 1024 to {MAX_HEADER_BYTES}",
                self.max_header_bytes
            ));
        }
        let mut routes = Vec::new();
        for route in &self.routes {
            let prefix = route.prefix.trim_end_matches('/');
            if !route.prefix.starts_with('/')
                || prefix.is_empty()
                || routing_core::validate::name("service", &route.service).is_err()
            {
                problems.push(format!(
                    "gateway.routes: expected a /prefix and a service name, got {:?} = {:?}",
                    route.prefix, route.service
                ));
                continue;
            }
            routes.push(gateway::RouteRule {
                prefix: prefix.to_owned(),
                service: route.service.clone(),
                strip_prefix: route.strip_prefix,
            });
        }
        let (Some(tenant_header), Some(service_header)) = (tenant_header, service_header) else {
            return Err(problems);
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(gateway::GatewaySettings {
            tenant_from,
            tenant_header,
            token_verifier: verifier,
            tenant_domain: Some(self.tenant_domain.trim_start_matches('.').to_owned())
                .filter(|domain| !domain.is_empty()),
            service_header,
            routes,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_connections_per_instance: self.max_connections_per_instance,
            retry_budget: self.retry_budget,
            retry_post: self.retry_post,
            max_retry_body_bytes: self.max_retry_body_bytes,
            max_body_bytes: self.max_body_bytes,
            max_header_bytes: self.max_header_bytes,
            ..gateway::GatewaySettings::default()
        })
    }
}

/// The verifier of bearer tokens for the `token` tenant source: `[auth]`'s JWT settings with
/// the gateway's tenant claim; none when `[auth]` checks no JWTs or `token` is not a source.
pub async fn token_verifier(
    gateway: &GatewayConfig,
    auth: Option<&crate::security::AuthConfig>,
    secrets: &crate::config::Secrets,
) -> Result<Option<Arc<auth::jwt::JwtVerifier>>, String> {
    if !gateway.tenant_from.iter().any(|source| source == "token") {
        return Ok(None);
    }
    let Some(auth) = auth else {
        return Ok(None);
    };
    let Some(mut jwt) = auth.settings(secrets)?.jwt else {
        return Ok(None);
    };
    jwt.tenant_claim = Some(gateway.tenant_claim.clone());
    let verifier = auth::jwt::JwtVerifier::new(jwt).map_err(|err| format!("auth: {err}"))?;
    verifier
        .refresh()
        .await
        .map_err(|err| format!("auth: cannot read the JWKS: {err}"))?;
    let verifier = Arc::new(verifier);
    // The key set is read again every `jwks_refresh_seconds` while the gateway runs.
    auth::jwt::refresh_every(
        Arc::downgrade(&verifier),
        Duration::from_secs(auth.jwks_refresh_seconds.max(1)),
        |verifier| Some(verifier),
    );
    Ok(Some(verifier))
}
