//! A file of instances (TOML, or JSON when the name ends in `.json`), read at every sync and
//! parsed again when its text changed:
//! for static fleets and tests.
//!
//! ```toml
//! [[instances]]
//! service = "api"
//! id = "api-1"
//! address = "10.0.0.1:8080"
//! version = "v1"        # or metadata.version (the configured version key)
//! weight = 1            # an integer, as greyrouter uses it (default 1)
//! healthy = true        # default true
//! enabled = true        # false: drained (weight 0)
//! region = "eu"
//! metadata = { team = "payments" }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;

use crate::registry::{DiscoveredInstance, FieldMapping, Registry, RegistryError, RegistryView};

/// The file's shape.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    #[serde(default)]
    instances: Vec<FileInstance>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInstance {
    service: String,
    id: String,
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

/// Instances from a file.
#[derive(Debug)]
pub struct FileRegistry {
    path: PathBuf,
    mapping: FieldMapping,
    /// The file's text when last parsed, and what it held.
    read: Mutex<Option<(String, Vec<DiscoveredInstance>)>>,
}

impl FileRegistry {
    /// A registry reading `path`.
    pub fn new(path: impl Into<PathBuf>, mapping: FieldMapping) -> Self {
        FileRegistry {
            path: path.into(),
            mapping,
            read: Mutex::new(None),
        }
    }

    fn load(&self) -> Result<Vec<DiscoveredInstance>, RegistryError> {
        let unavailable =
            |e: std::io::Error| RegistryError::Unavailable(format!("{}: {e}", self.path.display()));
        let text = std::fs::read_to_string(&self.path).map_err(unavailable)?;
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        // Parsed again only when the text changed.
        if let Some((known, instances)) = read.as_ref()
            && *known == text
        {
            return Ok(instances.clone());
        }
        let file = parse(&self.path, &text)?;
        let instances: Vec<DiscoveredInstance> = file
            .instances
            .into_iter()
            .map(|i| {
                let mut found = self.mapping.instance(
                    &i.service, i.id, i.address, 0.0, i.healthy, i.enabled, i.metadata,
                );
                found.weight = if i.enabled { i.weight } else { 0 };
                found.version = i.version.or(found.version);
                found.region = i.region.unwrap_or(found.region);
                found.zone = i.zone.unwrap_or(found.zone);
                found
            })
            .collect();
        *read = Some((text, instances.clone()));
        Ok(instances)
    }
}

fn parse(path: &Path, text: &str) -> Result<FleetFile, RegistryError> {
    let malformed = |e: String| RegistryError::Malformed(format!("{}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(text).map_err(|e| malformed(e.to_string()))
    } else {
        toml::from_str(text).map_err(|e| malformed(e.to_string()))
    }
}

#[async_trait::async_trait]
impl Registry for FileRegistry {
    async fn fetch(&self, services: &[String]) -> Result<RegistryView, RegistryError> {
        let instances = self
            .load()?
            .into_iter()
            .filter(|i| services.contains(&i.service))
            .collect();
        Ok(RegistryView { instances })
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}
