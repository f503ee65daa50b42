//! What each discovery source last did, as its syncer reports it; read by `greyrouter discovery
//! status` and health.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

/// The state of one discovery source on this router.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceStatus {
    /// The source's name (its changes are made as actor `discovery:<name>`).
    pub source: String,
    /// Where it reads from (no credentials).
    pub registry: String,
    /// Whether this router holds the source's lease and syncs it (one router per fleet does).
    pub leading: bool,
    /// Whether the last read of the registry succeeded.
    pub up: bool,
    /// When the registry was last read, successfully or not (ms since the Unix epoch).
    pub last_sync_ms: u64,
    /// When it was last read successfully.
    pub last_success_ms: u64,
    /// Why the last read failed; empty when it did not.
    pub error: String,
    /// Instances the registry listed for the configured services at the last successful read.
    pub instances: u64,
    /// Changes committed by this source on this router since it started.
    pub changes: u64,
    /// Removals held by the protection threshold at the last sync.
    pub held: Vec<String>,
    /// Instances left out at the last sync, and why.
    pub skipped: Vec<String>,
}

/// The statuses of every source, by name.
#[derive(Debug, Default)]
pub struct DiscoveryBoard {
    sources: Mutex<BTreeMap<String, SourceStatus>>,
}

impl DiscoveryBoard {
    /// Records a source's status.
    pub fn report(&self, status: SourceStatus) {
        self.sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(status.source.clone(), status);
    }

    /// Every source's status, by name.
    pub fn statuses(&self) -> Vec<SourceStatus> {
        self.sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}
