//! The `Registry` port: what a service registry answers, in greyrouter's terms.

use std::collections::BTreeMap;

/// One instance as a registry reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredInstance {
    /// The greyrouter service it serves.
    pub service: String,
    /// A stable id within the service (for Nacos: `ip:port@cluster`).
    pub id: String,
    /// `host:port` callers connect to.
    pub address: String,
    /// The version, from the configured metadata key; `None` when the key is missing (such an
    /// instance is reported, never guessed).
    pub version: Option<String>,
    /// Integer weight (a Nacos float weight times `weight_scale`); 0 drains it.
    pub weight: u32,
    /// Whether the registry says it is healthy.
    pub healthy: bool,
    /// Region, from the configured metadata key.
    pub region: String,
    /// Zone, from the configured metadata key.
    pub zone: String,
    /// The registry's metadata, as it is.
    pub metadata: BTreeMap<String, String>,
}

/// Everything a registry holds for the services asked about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryView {
    /// The instances, of the services asked about only.
    pub instances: Vec<DiscoveredInstance>,
}

/// Why a registry could not answer; the syncer keeps the last known instances meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry cannot be reached or answered with a server error.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The registry refused the credentials.
    #[error("registry refused the credentials: {0}")]
    Unauthorized(String),
    /// The registry answered something this adapter cannot read.
    #[error("registry answer not understood: {0}")]
    Malformed(String),
}

/// A source of instances: Nacos, a file (later etcd). Adapters run the shared behaviour suite
/// (`nacos_sync::suite`, feature `test-suite`).
#[async_trait::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Lists the instances of `services` (greyrouter service names).
    async fn fetch(&self, services: &[String]) -> Result<RegistryView, RegistryError>;

    /// Where it reads from, for logs and status (never with credentials).
    fn describe(&self) -> String;
}

/// How registry metadata maps to greyrouter fields.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldMapping {
    /// The metadata key holding the version.
    pub version_key: String,
    /// The metadata key holding the region.
    pub region_key: String,
    /// The metadata key holding the zone.
    pub zone_key: String,
    /// A registry weight (Nacos: a float, 1.0 by default) times this is the integer weight.
    pub weight_scale: f64,
}

impl Default for FieldMapping {
    fn default() -> Self {
        FieldMapping {
            version_key: "version".to_owned(),
            region_key: "region".to_owned(),
            zone_key: "zone".to_owned(),
            weight_scale: 100.0,
        }
    }
}

impl FieldMapping {
    /// The integer weight of a registry weight: rounded, never negative, at most 1,000,000.
    pub fn weight(&self, weight: f64) -> u32 {
        let scaled = (weight * self.weight_scale).round();
        if scaled.is_finite() && scaled > 0.0 {
            scaled.min(1_000_000.0) as u32
        } else {
            0
        }
    }

    /// Builds an instance from a registry's fields and metadata.
    #[allow(clippy::too_many_arguments)]
    pub fn instance(
        &self,
        service: &str,
        id: String,
        address: String,
        weight: f64,
        healthy: bool,
        enabled: bool,
        metadata: BTreeMap<String, String>,
    ) -> DiscoveredInstance {
        let field = |key: &str| metadata.get(key).cloned().unwrap_or_default();
        DiscoveredInstance {
            service: service.to_owned(),
            id,
            address,
            version: metadata.get(&self.version_key).cloned(),
            // A disabled instance is drained, not removed.
            weight: if enabled { self.weight(weight) } else { 0 },
            healthy,
            region: field(&self.region_key),
            zone: field(&self.zone_key),
            metadata,
        }
    }
}
