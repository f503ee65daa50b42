//! The `[discovery]` configuration.
//!
//! ```toml
//! [discovery]
//! interval_ms = 5000          # how often each source is read
//! lease_ms = 15000            # one router per fleet syncs a source; another takes over after this
//! protect_threshold = 0.5     # one sync never removes more than this share of a service's instances
//! version_key = "version"     # metadata keys of the version, region and zone
//!
//! [[discovery.sources]]
//! name = "nacos"
//! kind = "nacos"              # or "etcd", "file"
//! services = ["api"]          # greyrouter services this source keeps (create them first)
//! nacos = { url = "http://127.0.0.1:8848/nacos", group = "DEFAULT_GROUP", username_env = "NACOS_USERNAME", password_env = "NACOS_PASSWORD" }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::etcd::{EtcdRegistry, EtcdSettings};
use crate::file::FileRegistry;
use crate::nacos::{Credentials, NacosRegistry, NacosSettings};
use crate::registry::{FieldMapping, Registry};
use crate::syncer::{Instances, SyncJob, SyncPlan, Tenants};
use crate::tenants::{TenantApi, TenantSettings};

/// A source ready to sync: what it syncs and its plan.
pub type Source = (Arc<dyn SyncJob>, SyncPlan);

/// Every discovery source and how they sync.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoverySettings {
    /// How often each source is read, in milliseconds.
    pub interval_ms: u64,
    /// How long a router's lease on a source lasts without renewal, in milliseconds.
    pub lease_ms: u64,
    /// The largest share of a service's instances one sync may remove (more is held).
    pub protect_threshold: f64,
    /// How registry metadata maps to versions, regions, zones and weights.
    #[serde(flatten)]
    pub mapping: FieldMapping,
    /// The sources.
    pub sources: Vec<SourceSettings>,
    /// Tenants from the tenant service (`[discovery.tenants]`; off while its url is empty).
    pub tenants: TenantSettings,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            interval_ms: 5_000,
            lease_ms: 15_000,
            protect_threshold: 0.5,
            mapping: FieldMapping::default(),
            sources: Vec::new(),
            tenants: TenantSettings::default(),
        }
    }
}

/// One source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSettings {
    /// Its name: changes are made as `discovery:<name>`, its lease is `discovery:<name>`.
    pub name: String,
    /// `nacos` or `file`.
    pub kind: String,
    /// The greyrouter services it keeps.
    pub services: Vec<String>,
    /// With `kind = "nacos"`: the server.
    #[serde(default)]
    pub nacos: NacosSettings,
    /// With `kind = "etcd"`: the cluster.
    #[serde(default)]
    pub etcd: EtcdSettings,
    /// With `kind = "file"`: the file.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

impl SourceSettings {
    /// A source of `kind` named `name` keeping `services`, with the kind's default settings.
    pub fn new(name: &str, kind: &str, services: &[&str]) -> SourceSettings {
        SourceSettings {
            name: name.to_owned(),
            kind: kind.to_owned(),
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            nacos: NacosSettings::default(),
            etcd: EtcdSettings::default(),
            path: None,
        }
    }
}

impl DiscoverySettings {
    /// One line per bad value.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.interval_ms == 0 {
            problems.push("discovery.interval_ms: must be positive".to_owned());
        }
        if self.lease_ms <= self.interval_ms && !self.sources.is_empty() {
            problems.push(
                "discovery.lease_ms: must be longer than interval_ms (the lease is renewed every interval)"
                    .to_owned(),
            );
        }
        if !(self.protect_threshold > 0.0 && self.protect_threshold <= 1.0) {
            problems.push("discovery.protect_threshold: must be above 0 and at most 1".to_owned());
        }
        let tenants = &self.tenants;
        if !tenants.url.is_empty() {
            if !tenants.url.starts_with("http://") {
                problems.push("discovery.tenants.url: must start with http://".to_owned());
            }
            if tenants.interval_ms == 0 || tenants.page_size == 0 {
                problems.push(
                    "discovery.tenants: interval_ms and page_size must be positive".to_owned(),
                );
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for source in &self.sources {
            let at = format!("discovery.sources[{}]", source.name);
            if routing_core::validate::name("name", &source.name).is_err() {
                problems.push(format!(
                    "{at}.name: must be a name ([A-Za-z0-9._:+@-], 1-128)"
                ));
            }
            if !names.insert(source.name.clone()) {
                problems.push(format!("{at}.name: used twice"));
            }
            if source.services.is_empty() {
                problems.push(format!("{at}.services: name at least one service"));
            }
            for service in &source.services {
                if routing_core::validate::name("service", service).is_err() {
                    problems.push(format!("{at}.services: '{service}' is not a name"));
                }
            }
            match source.kind.as_str() {
                "nacos" => {
                    if !source.nacos.url.starts_with("http://") {
                        problems.push(format!("{at}.nacos.url: must start with http://"));
                    }
                }
                "etcd" => {
                    if source.etcd.endpoints.is_empty()
                        || !source
                            .etcd
                            .endpoints
                            .iter()
                            .all(|e| e.starts_with("http://"))
                    {
                        problems.push(format!(
                            "{at}.etcd.endpoints: name at least one, each starting with http://"
                        ));
                    }
                    if !source.etcd.prefix.ends_with('/') {
                        problems.push(format!("{at}.etcd.prefix: must end with /"));
                    }
                }
                "file" => {
                    if source.path.is_none() {
                        problems.push(format!("{at}.path: a file source needs a path"));
                    }
                }
                other => problems.push(format!("{at}.kind: '{other}' (use nacos, etcd or file)")),
            }
        }
        problems
    }

    /// Builds each source's registry and sync plan; credentials are read from `env` (the
    /// variables the settings name), never from the file.
    pub fn build(
        &self,
        env: &BTreeMap<String, String>,
        holder: &str,
    ) -> Result<Vec<Source>, String> {
        let var = |name: &str| (!name.is_empty()).then(|| env.get(name).cloned()).flatten();
        let mut built = Vec::new();
        for source in &self.sources {
            let registry: Arc<dyn Registry> = match source.kind.as_str() {
                "nacos" => {
                    let nacos = &source.nacos;
                    let login = match (var(&nacos.username_env), var(&nacos.password_env)) {
                        (Some(user), Some(password)) => Some((user, password)),
                        _ => None,
                    };
                    let credentials = Credentials {
                        login,
                        access_token: var(&nacos.access_token_env),
                    };
                    Arc::new(
                        NacosRegistry::new(nacos.clone(), credentials, self.mapping.clone())
                            .map_err(|e| format!("discovery source {}: {e}", source.name))?,
                    )
                }
                "etcd" => {
                    let etcd = &source.etcd;
                    let login = match (var(&etcd.username_env), var(&etcd.password_env)) {
                        (Some(user), Some(password)) => Some((user, password)),
                        _ => None,
                    };
                    Arc::new(
                        EtcdRegistry::new(etcd.clone(), login, self.mapping.clone())
                            .map_err(|e| format!("discovery source {}: {e}", source.name))?,
                    )
                }
                "file" => {
                    let path = source
                        .path
                        .clone()
                        .ok_or_else(|| format!("discovery source {}: no path", source.name))?;
                    Arc::new(FileRegistry::new(path, self.mapping.clone()))
                }
                other => {
                    return Err(format!(
                        "discovery source {}: unknown kind {other}",
                        source.name
                    ));
                }
            };
            built.push((
                Arc::new(Instances(registry)) as Arc<dyn SyncJob>,
                SyncPlan {
                    source: source.name.clone(),
                    services: source.services.clone(),
                    interval: Duration::from_millis(self.interval_ms),
                    lease: Duration::from_millis(self.lease_ms),
                    protect_threshold: self.protect_threshold,
                    holder: holder.to_owned(),
                },
            ));
        }
        let tenants = &self.tenants;
        if !tenants.url.is_empty() {
            let api = TenantApi::new(tenants.clone(), var(&tenants.token_env))
                .map_err(|e| format!("tenant sync: {e}"))?;
            built.push((
                Arc::new(Tenants(api)) as Arc<dyn SyncJob>,
                SyncPlan {
                    source: "tenants".to_owned(),
                    services: Vec::new(),
                    interval: Duration::from_millis(tenants.interval_ms),
                    lease: Duration::from_millis(self.lease_ms.max(tenants.interval_ms * 3)),
                    protect_threshold: self.protect_threshold,
                    holder: holder.to_owned(),
                },
            ));
        }
        Ok(built)
    }
}
