//! The `[tls]` and `[auth]` sections: TLS for the listener, and who may call.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use auth::jwt::{Algorithm, JwksSource, JwtSettings};
use auth::tls::{ClientCertificates, ServerTls, TlsFiles};
use auth::{AuthSettings, Authenticator, Grant};
use control::access::{Role, Roles, TenantScope};
use serde::Deserialize;

use crate::config::Secrets;

/// TLS for the gRPC listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// The server's private key (PEM).
    pub key_file: PathBuf,
    /// CA bundle (PEM) that client certificates must chain to; turns client certificates on.
    pub client_ca_file: Option<PathBuf>,
    /// `optional` (the default with a CA bundle: callers without a certificate use a token)
    /// or `required`.
    pub client_certificates: String,
    /// How often the files are checked for a change, in milliseconds.
    pub reload_interval_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: None,
            client_certificates: "optional".to_owned(),
            reload_interval_ms: 5_000,
        }
    }
}

/// Who may call: bearer JWTs, static API keys, client certificates. Present: auth is on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The only accepted token issuer (`iss`).
    pub issuer: String,
    /// The audience tokens must name (`aud`).
    pub audience: String,
    /// A JWKS file with the issuer's public keys (read again on every refresh).
    pub jwks_file: Option<PathBuf>,
    /// The issuer's JWKS URL.
    pub jwks_url: String,
    /// A CA bundle trusted for the JWKS URL besides the system's roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// How often the key set is fetched again, in seconds.
    pub jwks_refresh_seconds: u64,
    /// Least time between fetches caused by an unknown key id, in seconds.
    pub jwks_min_refresh_seconds: u64,
    /// The environment variable holding an HS256 shared secret (at least 32 bytes).
    pub hs256_secret_env: String,
    /// Accepted algorithms (`none` never is).
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// The claim with the roles (a dotted path, e.g. `realm_access.roles`).
    pub roles_claim: String,
    /// The claim with the tenant scope (tenant ids, `key=value` labels, `*`); absent: all.
    pub tenants_claim: String,
    /// Longest token accepted, in bytes.
    pub max_token_bytes: usize,
    /// Most verified tokens cached.
    pub token_cache_entries: usize,
    /// Tokens checked for the first time per second per peer address (twice that in a burst);
    /// beyond, `RESOURCE_EXHAUSTED`: a signature check costs up to a third of a millisecond,
    /// so a flood of new tokens cannot take the router's CPU; 0: no limit.
    pub first_checks_per_second_per_address: f64,
    /// Static API keys for service accounts.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Client certificate subjects (common names) allowed in, with their roles.
    pub certificates: Vec<CertificateConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: String::new(),
            audience: String::new(),
            jwks_file: None,
            jwks_url: String::new(),
            jwks_ca_file: None,
            jwks_refresh_seconds: 300,
            jwks_min_refresh_seconds: 30,
            hs256_secret_env: String::new(),
            algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            leeway_seconds: 30,
            roles_claim: "roles".into(),
            tenants_claim: "tenants".into(),
            max_token_bytes: 8 * 1024,
            token_cache_entries: 10_000,
            first_checks_per_second_per_address: 200.0,
            api_keys: Vec::new(),
            certificates: Vec::new(),
        }
    }
}

/// A static API key, kept as its SHA-256 only.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The caller's name (the audit trail's actor).
    pub name: String,
    /// The lowercase hex SHA-256 of the key (`printf %s KEY | sha256sum`).
    pub sha256: String,
    /// Roles held.
    pub roles: Vec<String>,
    /// Tenant scope; absent: every tenant.
    #[serde(default)]
    pub tenants: Option<Vec<String>>,
}

/// A client certificate subject allowed in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The certificate's subject common name.
    pub subject: String,
    /// Roles held.
    pub roles: Vec<String>,
    /// Tenant scope; absent: every tenant.
    #[serde(default)]
    pub tenants: Option<Vec<String>>,
}

fn grant(name: &str, roles: &[String], tenants: Option<&Vec<String>>) -> Result<Grant, String> {
    let mut held = Roles::NONE;
    for role in roles {
        held = held.with(Role::parse(role).ok_or_else(|| {
            format!("{name}: unknown role {role:?} (viewer, router, operator, admin)")
        })?);
    }
    let scope = match tenants {
        None => TenantScope::All,
        Some(entries) => TenantScope::parse(entries.iter().map(String::as_str))
            .map_err(|e| format!("{name}: {e}"))?,
    };
    routing_core::validate::actor("name", name).map_err(|e| format!("{name}: {e}"))?;
    Ok(Grant {
        name: name.to_owned(),
        roles: held,
        scope,
    })
}

impl AuthConfig {
    fn uses_jwt(&self) -> bool {
        self.jwks_file.is_some() || !self.jwks_url.is_empty() || !self.hs256_secret_env.is_empty()
    }

    /// Checks every value; one line per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.uses_jwt() && self.api_keys.is_empty() && self.certificates.is_empty() {
            problems.push(
                "auth: no way in: set jwks_file, jwks_url or hs256_secret_env, api_keys or certificates"
                    .to_owned(),
            );
        }
        if self.uses_jwt() {
            if self.issuer.is_empty() || self.audience.is_empty() {
                problems.push("auth: issuer and audience are required to check tokens".to_owned());
            }
            if self.jwks_file.is_some() && !self.jwks_url.is_empty() {
                problems.push("auth: set jwks_file or jwks_url, not both".to_owned());
            }
            if let Err(err) = auth::jwt::algorithms(self.algorithms.iter().map(String::as_str)) {
                problems.push(format!("auth.algorithms: {err}"));
            }
            let rate = self.first_checks_per_second_per_address;
            if !rate.is_finite() || rate < 0.0 {
                problems.push(
                    "auth.first_checks_per_second_per_address: 0 (no limit) or positive".to_owned(),
                );
            }
            if self.jwks_refresh_seconds == 0 || self.max_token_bytes == 0 {
                problems.push(
                    "auth: jwks_refresh_seconds and max_token_bytes must be positive".to_owned(),
                );
            }
        }
        for key in &self.api_keys {
            if let Err(err) = grant(&key.name, &key.roles, key.tenants.as_ref()) {
                problems.push(format!("auth.api_keys: {err}"));
            }
            let hex = key.sha256.len() == 64 && key.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex {
                problems.push(format!(
                    "auth.api_keys: {}: sha256 must be 64 hex digits",
                    key.name
                ));
            }
        }
        for cert in &self.certificates {
            if let Err(err) = grant(&cert.subject, &cert.roles, cert.tenants.as_ref()) {
                problems.push(format!("auth.certificates: {err}"));
            }
        }
        problems
    }

    /// The authenticator's settings.
    pub fn settings(&self, secrets: &Secrets) -> Result<AuthSettings, String> {
        let jwt = if self.uses_jwt() {
            let mut settings = JwtSettings::new(&self.issuer, &self.audience);
            settings.algorithms =
                auth::jwt::algorithms(self.algorithms.iter().map(String::as_str))?;
            settings.leeway = Duration::from_secs(self.leeway_seconds);
            settings.roles_claim.clone_from(&self.roles_claim);
            settings.tenants_claim.clone_from(&self.tenants_claim);
            settings.jwks = match (&self.jwks_file, self.jwks_url.as_str()) {
                (Some(file), _) => Some(JwksSource::File(file.clone())),
                (None, "") => None,
                (None, url) => Some(JwksSource::Url(url.to_owned())),
            };
            settings.jwks_ca_file.clone_from(&self.jwks_ca_file);
            settings.jwks_refresh = Duration::from_secs(self.jwks_refresh_seconds);
            settings.jwks_min_refresh = Duration::from_secs(self.jwks_min_refresh_seconds);
            settings.max_token_bytes = self.max_token_bytes;
            settings.cache_entries = self.token_cache_entries.max(1);
            if !self.hs256_secret_env.is_empty() {
                let secret = secrets.0.get(&self.hs256_secret_env).ok_or_else(|| {
                    format!(
                        "auth: environment variable {} is not set",
                        self.hs256_secret_env
                    )
                })?;
                if !settings.algorithms.contains(&Algorithm::HS256) {
                    settings.algorithms.push(Algorithm::HS256);
                }
                settings.hs256_secret = Some(secret.as_bytes().to_vec());
            }
            Some(settings)
        } else {
            None
        };
        let mut api_keys = HashMap::new();
        for key in &self.api_keys {
            api_keys.insert(
                key.sha256.to_ascii_lowercase(),
                grant(&key.name, &key.roles, key.tenants.as_ref())?,
            );
        }
        let mut certificates = HashMap::new();
        for cert in &self.certificates {
            certificates.insert(
                cert.subject.clone(),
                grant(&cert.subject, &cert.roles, cert.tenants.as_ref())?,
            );
        }
        Ok(AuthSettings {
            jwt,
            api_keys,
            certificates,
            first_checks_per_second_per_address: self.first_checks_per_second_per_address,
        })
    }
}

impl TlsConfig {
    /// Checks every value; one line per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.cert_file.as_os_str().is_empty() || self.key_file.as_os_str().is_empty() {
            problems.push("tls: cert_file and key_file are required".to_owned());
        } else {
            let files = [
                ("tls.cert_file", Some(&self.cert_file)),
                ("tls.key_file", Some(&self.key_file)),
                ("tls.client_ca_file", self.client_ca_file.as_ref()),
            ];
            for (key, path) in files {
                if let Some(path) = path.filter(|path| !path.is_file()) {
                    problems.push(format!("{key}: {} is not a readable file", path.display()));
                }
            }
        }
        if !matches!(self.client_certificates.as_str(), "optional" | "required") {
            problems.push(format!(
                "tls.client_certificates: '{}' is not optional or required",
                self.client_certificates
            ));
        }
        if self.reload_interval_ms == 0 {
            problems.push("tls.reload_interval_ms: must be positive".to_owned());
        }
        problems
    }

    /// Reads the files.
    pub fn load(&self) -> Result<ServerTls, String> {
        let client_certificates = match (&self.client_ca_file, self.client_certificates.as_str()) {
            (None, _) => ClientCertificates::Off,
            (Some(_), "required") => ClientCertificates::Required,
            (Some(_), _) => ClientCertificates::Optional,
        };
        ServerTls::load(TlsFiles {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            client_ca: self.client_ca_file.clone(),
            client_certificates,
            alpn: vec![b"h2".to_vec()],
        })
    }
}

/// Builds the listener's security from the configuration: TLS files read, JWKS fetched.
pub async fn security(
    tls: Option<&TlsConfig>,
    auth_config: Option<&AuthConfig>,
    secrets: &Secrets,
) -> anyhow::Result<grpc_server::Security> {
    let tls_server = tls
        .map(TlsConfig::load)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let authenticator = match auth_config {
        Some(config) => {
            let settings = config.settings(secrets).map_err(anyhow::Error::msg)?;
            let authenticator = Authenticator::start(settings)
                .await
                .map_err(anyhow::Error::msg)?;
            let authenticator = Arc::new(authenticator);
            if authenticator.jwt().is_some() {
                auth::jwt::refresh_every(
                    Arc::downgrade(&authenticator),
                    Duration::from_secs(config.jwks_refresh_seconds.max(1)),
                    Authenticator::jwt,
                );
            }
            tracing::info!(
                jwt = config.uses_jwt(),
                api_keys = config.api_keys.len(),
                certificates = config.certificates.len(),
                "auth is on: every call needs a verified identity and its role"
            );
            Some(authenticator)
        }
        None => {
            tracing::warn!(
                "AUTH IS OFF: any caller that reaches the port may read and change routing; add an [auth] section before exposing it"
            );
            None
        }
    };
    if tls_server.is_none() {
        tracing::warn!("TLS is off: gRPC traffic is plaintext; add a [tls] section to encrypt it");
    }
    Ok(grpc_server::Security {
        auth: authenticator,
        tls: tls_server,
        tls_reload_interval: Duration::from_millis(tls.map_or(5_000, |t| t.reload_interval_ms)),
    })
}
