//! The syncer: reads a source every interval and commits what changed through the node.
//!
//! In a fleet on a shared store exactly one router syncs a source: the holder of the store lease
//! `discovery:<source>`, renewed every interval; when it dies the lease lapses and another router
//! takes over. Changes are ordinary changes: audited as actor `discovery:<source>`, revisioned,
//! in the watch stream. When the registry fails (unreachable, refused credentials, an answer
//! that cannot be read) nothing is changed: routing goes on with the last known instances, and
//! the status says the source is down.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use control::audit::now_ms;
use control::discovery::SourceStatus;
use control::{Actor, Node};

use crate::reconcile::reconcile;
use crate::registry::Registry;

/// What one syncer does.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncPlan {
    /// The source's name.
    pub source: String,
    /// The greyrouter services it keeps.
    pub services: Vec<String>,
    /// How often it reads the registry.
    pub interval: Duration,
    /// How long its lease lasts without renewal.
    pub lease: Duration,
    /// The share of a service's instances one sync may remove (0.5: half).
    pub protect_threshold: f64,
    /// This router's name for the lease.
    pub holder: String,
}

/// One kind of sync: instances from a registry, or tenants from the tenant service.
#[async_trait::async_trait]
pub trait SyncJob: Send + Sync + 'static {
    /// Where it reads from (no credentials).
    fn describe(&self) -> String;

    /// Reads once and commits what changed as `actor`; updates `status`.
    async fn sync(&self, node: &Node, plan: &SyncPlan, actor: &Actor, status: &mut SourceStatus);
}

/// Instances from a registry.
pub struct Instances(pub Arc<dyn Registry>);

#[async_trait::async_trait]
impl SyncJob for Instances {
    fn describe(&self) -> String {
        self.0.describe()
    }

    async fn sync(&self, node: &Node, plan: &SyncPlan, actor: &Actor, status: &mut SourceStatus) {
        sync_once(node, self.0.as_ref(), plan, actor, status).await;
    }
}

/// Syncs `registry` into `node` until the task is dropped.
pub async fn run(node: Arc<Node>, registry: Arc<dyn Registry>, plan: SyncPlan) {
    run_sync(node, Arc::new(Instances(registry)), plan).await;
}

/// Runs `sync` every interval while this router holds the source's lease, until dropped.
pub async fn run_sync(node: Arc<Node>, sync: Arc<dyn SyncJob>, plan: SyncPlan) {
    let lease = format!("discovery:{}", plan.source);
    let actor = Actor::system(&lease, "sync");
    let mut status = SourceStatus {
        source: plan.source.clone(),
        registry: sync.describe(),
        ..SourceStatus::default()
    };
    let mut ticker = tokio::time::interval(plan.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let leading = match node.store().lease(&lease, &plan.holder, plan.lease).await {
            Ok(held) => held,
            Err(err) => {
                tracing::debug!(source = %plan.source, %err, "cannot renew the discovery lease");
                false
            }
        };
        if leading != status.leading {
            tracing::info!(source = %plan.source, holder = %plan.holder, leading, "discovery lease");
        }
        status.leading = leading;
        if leading {
            let span = tracing::info_span!(
                "discovery.sync",
                source = %plan.source,
                registry = %status.registry,
                up = tracing::field::Empty,
                instances = tracing::field::Empty,
                changes = tracing::field::Empty,
            );
            let changes_before = status.changes;
            sync.sync(&node, &plan, &actor, &mut status)
                .instrument(span.clone())
                .await;
            span.record("up", status.up);
            span.record("instances", status.instances);
            span.record("changes", status.changes.saturating_sub(changes_before));
        }
        node.report_discovery(status.clone());
    }
}

/// Reads the registry once and commits what changed; updates `status`.
pub async fn sync_once(
    node: &Node,
    registry: &dyn Registry,
    plan: &SyncPlan,
    actor: &Actor,
    status: &mut SourceStatus,
) {
    status.last_sync_ms = now_ms();
    let view = match registry.fetch(&plan.services).await {
        Ok(view) => view,
        Err(err) => {
            if status.up || status.last_success_ms == 0 {
                tracing::warn!(source = %plan.source, %err, "registry unavailable: routing goes on with the last known instances");
            }
            status.up = false;
            status.error = err.to_string();
            return;
        }
    };
    if !status.up && status.last_success_ms > 0 {
        tracing::info!(source = %plan.source, "registry available again");
    }
    status.up = true;
    status.error.clear();
    status.last_success_ms = status.last_sync_ms;
    status.instances = view.instances.len() as u64;
    let result = reconcile(
        &node.state(),
        &view,
        &plan.source,
        &plan.services,
        plan.protect_threshold,
    );
    if result.held != status.held {
        for held in &result.held {
            tracing::warn!(source = %plan.source, "{held}");
        }
    }
    if result.skipped != status.skipped {
        for skipped in &result.skipped {
            tracing::warn!(source = %plan.source, "{skipped}");
        }
    }
    status.held = result.held;
    status.skipped = result.skipped;
    for mutation in result.mutations {
        match node.commit(mutation, actor).await {
            Ok(_) => status.changes += 1,
            Err(err) => {
                // The next sync computes again from the state it finds.
                tracing::warn!(source = %plan.source, %err, "discovery change refused");
            }
        }
    }
}

/// Tenants from the tenant service.
pub struct Tenants(pub crate::tenants::TenantApi);

#[async_trait::async_trait]
impl SyncJob for Tenants {
    fn describe(&self) -> String {
        self.0.describe()
    }

    async fn sync(&self, node: &Node, plan: &SyncPlan, actor: &Actor, status: &mut SourceStatus) {
        status.last_sync_ms = now_ms();
        let (listed, problems) = match self.0.fetch().await {
            Ok(read) => read,
            Err(err) => {
                if status.up || status.last_success_ms == 0 {
                    tracing::warn!(source = %plan.source, %err, "tenant service unavailable: tenants stay as they are");
                }
                status.up = false;
                status.error = err.to_string();
                return;
            }
        };
        status.up = true;
        status.error.clear();
        status.last_success_ms = status.last_sync_ms;
        status.instances = listed.len() as u64;
        let result = crate::tenants::reconcile_tenants(
            &node.state(),
            &listed,
            &plan.source,
            plan.protect_threshold,
        );
        if result.held != status.held {
            for held in &result.held {
                tracing::warn!(source = %plan.source, "{held}");
            }
        }
        status.held = result.held;
        status.skipped = problems;
        for mutation in result.mutations {
            match node.commit(mutation, actor).await {
                Ok(_) => status.changes += 1,
                Err(err) => tracing::warn!(source = %plan.source, %err, "tenant change refused"),
            }
        }
    }
}
