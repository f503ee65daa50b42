//! etcd v3 through its JSON gateway (`/v3/kv/range`), polled: one prefix read per service and
//! sync, every key a live instance.
//!
//! Key layout: `<prefix><service>/<instance-id>` (prefix `/services/` by default), value JSON:
//!
//! ```json
//! {"address": "10.0.0.5:8080", "version": "v2", "weight": 1, "healthy": true,
//!  "enabled": true, "region": "eu", "zone": "a", "metadata": {"team": "payments"}}
//! ```
//!
//! `address` is required; `version` (or the configured metadata key) says the version, the rest
//! is optional (weight 1, healthy, enabled). A service writes its key with a lease and keeps the
//! lease alive: when the service dies the lease expires, the key goes, and the next sync removes
//! the instance (within the protection threshold). Values that cannot be read are reported and
//! skipped.
//!
//! Why the gateway and polling rather than the gRPC `Watch`: the Rust client (`etcd-client`)
//! needs `protoc` at build time and the gateway needs nothing beyond the HTTP client the Nacos
//! adapter already uses; a prefix read per interval is one request per service, and the
//! reconcile step makes every sync idempotent. A change reaches greyrouter within one interval.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::registry::{DiscoveredInstance, FieldMapping, Registry, RegistryError, RegistryView};

/// Where and how to read etcd.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdSettings {
    /// Client URLs, tried in order: `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The key prefix of services: keys are `<prefix><service>/<instance-id>`.
    pub prefix: String,
    /// The environment variable holding the username (with `password_env`: authenticate).
    pub username_env: String,
    /// The environment variable holding the password.
    pub password_env: String,
    /// How long one request may take, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for EtcdSettings {
    fn default() -> Self {
        EtcdSettings {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: "/services/".to_owned(),
            username_env: String::new(),
            password_env: String::new(),
            timeout_ms: 3_000,
        }
    }
}

/// etcd, polled through the v3 JSON gateway.
#[derive(Debug)]
pub struct EtcdRegistry {
    settings: EtcdSettings,
    login: Option<(String, String)>,
    mapping: FieldMapping,
    client: reqwest::Client,
    token: Mutex<Option<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Debug, Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Value {
    address: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default = "yes")]
    healthy: bool,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct Token {
    token: String,
}

/// The key just past every key starting with `prefix` (etcd's `range_end` of a prefix read).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: read to the end of the keyspace.
    vec![0]
}

impl EtcdRegistry {
    /// A registry reading etcd as `settings` say; `login` is a username and password.
    pub fn new(
        settings: EtcdSettings,
        login: Option<(String, String)>,
        mapping: FieldMapping,
    ) -> Result<Self, RegistryError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms.max(1)))
            .build()
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        Ok(EtcdRegistry {
            settings,
            login,
            mapping,
            client,
            token: Mutex::new(None),
        })
    }

    async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        endpoint: &str,
        path: &str,
        body: serde_json::Value,
        token: Option<&str>,
    ) -> Result<T, RegistryError> {
        let mut request = self
            .client
            .post(format!("{}{path}", endpoint.trim_end_matches('/')))
            .json(&body);
        if let Some(token) = token {
            request = request.header("Authorization", token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| RegistryError::Unavailable(format!("{endpoint}: {e}")))?;
        let status = response.status();
        if status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(RegistryError::Unauthorized(format!("{endpoint}: {status}")));
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let text: String = text.chars().take(200).collect();
            // The gateway answers auth failures as errors with a gRPC code in the body.
            if text.contains("authentication") || text.contains("permission denied") {
                return Err(RegistryError::Unauthorized(format!("{endpoint}: {text}")));
            }
            return Err(RegistryError::Unavailable(format!(
                "{endpoint}: {status}: {text}"
            )));
        }
        response
            .json()
            .await
            .map_err(|e| RegistryError::Malformed(format!("{endpoint}: {e}")))
    }

    async fn token(&self, endpoint: &str, fresh: bool) -> Result<Option<String>, RegistryError> {
        let Some((name, password)) = &self.login else {
            return Ok(None);
        };
        if !fresh && let Some(token) = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone()
        {
            return Ok(Some(token));
        }
        let token: Token = self
            .post(
                endpoint,
                "/v3/auth/authenticate",
                serde_json::json!({"name": name, "password": password}),
                None,
            )
            .await?;
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.token.clone());
        Ok(Some(token.token))
    }

    async fn range(&self, endpoint: &str, service: &str) -> Result<RangeResponse, RegistryError> {
        let prefix = format!("{}{service}/", self.settings.prefix);
        let body = serde_json::json!({
            "key": STANDARD.encode(prefix.as_bytes()),
            "range_end": STANDARD.encode(prefix_end(prefix.as_bytes())),
        });
        let token = self.token(endpoint, false).await?;
        match self
            .post(endpoint, "/v3/kv/range", body.clone(), token.as_deref())
            .await
        {
            // An expired token: authenticate again, once.
            Err(RegistryError::Unauthorized(_)) if self.login.is_some() => {
                let token = self.token(endpoint, true).await?;
                self.post(endpoint, "/v3/kv/range", body, token.as_deref())
                    .await
            }
            other => other,
        }
    }

    fn instance(&self, service: &str, kv: &KeyValue) -> Result<DiscoveredInstance, String> {
        let key = STANDARD
            .decode(&kv.key)
            .map_err(|e| format!("key not base64: {e}"))?;
        let key = String::from_utf8(key).map_err(|_| "key not UTF-8".to_owned())?;
        let prefix = format!("{}{service}/", self.settings.prefix);
        let id = key.strip_prefix(&prefix).unwrap_or(&key).to_owned();
        let value = STANDARD
            .decode(&kv.value)
            .map_err(|e| format!("{key}: value not base64: {e}"))?;
        let value: Value =
            serde_json::from_slice(&value).map_err(|e| format!("{key}: value: {e}"))?;
        let mut found = self.mapping.instance(
            service,
            id,
            value.address,
            0.0,
            value.healthy,
            value.enabled,
            value.metadata,
        );
        found.weight = if value.enabled { value.weight } else { 0 };
        found.version = value.version.or(found.version);
        found.region = value.region.unwrap_or(found.region);
        found.zone = value.zone.unwrap_or(found.zone);
        Ok(found)
    }
}

#[async_trait::async_trait]
impl Registry for EtcdRegistry {
    async fn fetch(&self, services: &[String]) -> Result<RegistryView, RegistryError> {
        let mut last = RegistryError::Unavailable("no endpoint configured".to_owned());
        'endpoints: for endpoint in &self.settings.endpoints {
            let mut view = RegistryView::default();
            for service in services {
                match self.range(endpoint, service).await {
                    Ok(range) => {
                        for kv in &range.kvs {
                            match self.instance(service, kv) {
                                Ok(found) => view.instances.push(found),
                                Err(why) => tracing::warn!(%service, "etcd value skipped: {why}"),
                            }
                        }
                    }
                    Err(err @ RegistryError::Unauthorized(_)) => return Err(err),
                    Err(err) => {
                        last = err;
                        continue 'endpoints;
                    }
                }
            }
            return Ok(view);
        }
        Err(last)
    }

    fn describe(&self) -> String {
        format!(
            "etcd {} prefix {}",
            self.settings.endpoints.join(","),
            self.settings.prefix
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_read_ends_just_past_the_prefix() {
        assert_eq!(prefix_end(b"/services/api/"), b"/services/api0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
