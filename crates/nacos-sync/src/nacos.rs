//! Nacos over its v1 Open API, polled.
//!
//! Why polling the v1 Open API rather than the v2 gRPC push protocol: the v1 endpoints answer on
//! Nacos 1.x, 2.x and 3.x (where they remain open client APIs), they need nothing beyond an HTTP
//! client, and a pull every few seconds keeps the syncer's logic one loop with one failure mode;
//! the gRPC protocol would add a second gRPC stack version (the `nacos-sdk` crate pins its own
//! tonic), and 3.x drops UDP push for non-gRPC clients anyway. A change reaches greyrouter within
//! one poll interval (`[discovery] interval_ms`).
//!
//! Per service: `GET {url}/v1/ns/instance/list?serviceName=..&groupName=..&namespaceId=..
//! &clusters=..&healthyOnly=false`. With a username and password, the adapter logs in
//! (`POST {url}/v1/auth/login`), passes the token as `accessToken`, and logs in again once when
//! Nacos answers 403 (expired token). A configured access token is used as it is.
//!
//! Fields: `ip:port` (IPv6 in brackets) is the address; `ip:port@cluster` the instance id; the
//! float `weight` times `weight_scale` (default 100: Nacos's 1.0 is greyrouter's 100) the integer
//! weight; `healthy` as it is; `enabled = false` drains (weight 0) when the server lists it (Nacos
//! 2.x leaves disabled instances out of the list, so there they are removed, within the
//! protection threshold); the version, region and zone come from the configured metadata keys.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::registry::{DiscoveredInstance, FieldMapping, Registry, RegistryError, RegistryView};

/// Where and how to read Nacos.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NacosSettings {
    /// The server, with its context path: `http://127.0.0.1:8848/nacos`.
    pub url: String,
    /// The namespace id (`public` when empty).
    pub namespace: String,
    /// The group.
    pub group: String,
    /// Only these clusters; every cluster when empty.
    pub clusters: Vec<String>,
    /// The Nacos service of a greyrouter service, when the names differ.
    pub service_names: BTreeMap<String, String>,
    /// The environment variable holding the username (with `password_env`: log in).
    pub username_env: String,
    /// The environment variable holding the password.
    pub password_env: String,
    /// The environment variable holding an access token, used as it is.
    pub access_token_env: String,
    /// How long one request may take, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for NacosSettings {
    fn default() -> Self {
        NacosSettings {
            url: "http://127.0.0.1:8848/nacos".to_owned(),
            namespace: String::new(),
            group: "DEFAULT_GROUP".to_owned(),
            clusters: Vec::new(),
            service_names: BTreeMap::new(),
            username_env: String::new(),
            password_env: String::new(),
            access_token_env: String::new(),
            timeout_ms: 3_000,
        }
    }
}

/// Credentials, read from the environment by the caller; never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Username and password to log in with.
    pub login: Option<(String, String)>,
    /// A token to pass as it is.
    pub access_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("login", &self.login.as_ref().map(|(user, _)| user))
            .field("access_token", &self.access_token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Nacos, polled through the v1 Open API.
#[derive(Debug)]
pub struct NacosRegistry {
    settings: NacosSettings,
    credentials: Credentials,
    mapping: FieldMapping,
    client: reqwest::Client,
    /// The token from the last login, and when to log in again.
    token: Mutex<Option<(String, Instant)>>,
}

#[derive(Debug, Deserialize)]
struct ServiceInfo {
    #[serde(default)]
    hosts: Vec<Host>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Host {
    ip: String,
    port: u16,
    #[serde(default = "one")]
    weight: f64,
    #[serde(default = "yes")]
    healthy: bool,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    cluster_name: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Login {
    access_token: String,
    #[serde(default)]
    token_ttl: u64,
}

impl NacosRegistry {
    /// A registry reading Nacos as `settings` say, with `credentials`.
    pub fn new(
        settings: NacosSettings,
        credentials: Credentials,
        mapping: FieldMapping,
    ) -> Result<Self, RegistryError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms.max(1)))
            .build()
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        Ok(NacosRegistry {
            settings,
            credentials,
            mapping,
            client,
            token: Mutex::new(None),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.url.trim_end_matches('/'))
    }

    /// The token to send: the configured one, or one from a login (again when `fresh`).
    async fn token(&self, fresh: bool) -> Result<Option<String>, RegistryError> {
        if let Some(token) = &self.credentials.access_token {
            return Ok(Some(token.clone()));
        }
        let Some((username, password)) = &self.credentials.login else {
            return Ok(None);
        };
        if !fresh
            && let Some((token, until)) =
                self.token.lock().unwrap_or_else(|e| e.into_inner()).clone()
            && Instant::now() < until
        {
            return Ok(Some(token));
        }
        let response = self
            .client
            .post(self.url("/v1/auth/login"))
            .form(&[
                ("username", username.as_str()),
                ("password", password.as_str()),
            ])
            .send()
            .await
            .map_err(|e| RegistryError::Unavailable(format!("login: {e}")))?;
        let status = response.status();
        if status.as_u16() == 403 || status.as_u16() == 401 {
            return Err(RegistryError::Unauthorized(format!(
                "login refused ({status})"
            )));
        }
        if !status.is_success() {
            return Err(RegistryError::Unavailable(format!("login: {status}")));
        }
        let login: Login = response
            .json()
            .await
            .map_err(|e| RegistryError::Malformed(format!("login: {e}")))?;
        // Log in again at nine tenths of the token's life.
        let ttl = Duration::from_secs(if login.token_ttl == 0 {
            18_000
        } else {
            login.token_ttl
        });
        let until = Instant::now() + ttl.mul_f64(0.9);
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((login.access_token.clone(), until));
        Ok(Some(login.access_token))
    }

    async fn list(&self, service: &str) -> Result<Vec<DiscoveredInstance>, RegistryError> {
        let nacos_service = self
            .settings
            .service_names
            .get(service)
            .map_or(service, String::as_str);
        let mut retried = false;
        loop {
            let mut query: Vec<(&str, String)> = vec![
                ("serviceName", nacos_service.to_owned()),
                ("groupName", self.settings.group.clone()),
                ("healthyOnly", "false".to_owned()),
            ];
            if !self.settings.namespace.is_empty() {
                query.push(("namespaceId", self.settings.namespace.clone()));
            }
            if !self.settings.clusters.is_empty() {
                query.push(("clusters", self.settings.clusters.join(",")));
            }
            if let Some(token) = self.token(retried).await? {
                query.push(("accessToken", token));
            }
            let response = self
                .client
                .get(self.url("/v1/ns/instance/list"))
                .query(&query)
                .send()
                .await
                .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
            let status = response.status();
            if status.as_u16() == 403 {
                if !retried && self.credentials.login.is_some() {
                    retried = true;
                    continue;
                }
                let body = response.text().await.unwrap_or_default();
                return Err(RegistryError::Unauthorized(bounded(&body)));
            }
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(RegistryError::Unavailable(format!(
                    "{status}: {}",
                    bounded(&body)
                )));
            }
            let info: ServiceInfo = response
                .json()
                .await
                .map_err(|e| RegistryError::Malformed(e.to_string()))?;
            return Ok(info
                .hosts
                .into_iter()
                .map(|host| self.instance(service, host))
                .collect());
        }
    }

    fn instance(&self, service: &str, host: Host) -> DiscoveredInstance {
        let cluster = if host.cluster_name.is_empty() {
            "DEFAULT"
        } else {
            &host.cluster_name
        };
        let address = if host.ip.contains(':') {
            format!("[{}]:{}", host.ip, host.port)
        } else {
            format!("{}:{}", host.ip, host.port)
        };
        self.mapping.instance(
            service,
            format!("{}:{}@{cluster}", host.ip, host.port),
            address,
            host.weight,
            host.healthy,
            host.enabled,
            host.metadata,
        )
    }
}

/// At most 200 characters of a body, for messages.
fn bounded(body: &str) -> String {
    body.chars().take(200).collect()
}

#[async_trait::async_trait]
impl Registry for NacosRegistry {
    async fn fetch(&self, services: &[String]) -> Result<RegistryView, RegistryError> {
        let mut instances = Vec::new();
        for service in services {
            instances.extend(self.list(service).await?);
        }
        Ok(RegistryView { instances })
    }

    fn describe(&self) -> String {
        format!("nacos {} group {}", self.settings.url, self.settings.group)
    }
}
