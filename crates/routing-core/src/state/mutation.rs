//! The changes of routing state ([`Mutation`]), the pairs each may alter ([`Scope`]) and what
//! applying one reports ([`Outcome`]).
//!
//! Stores keep mutations (their change logs) as serde records tagged by `op`: a variant's name
//! and fields are a stored format, so new variants go at the end and existing ones do not change.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::model::RolloutDecision;
use crate::state::StateDump;
use crate::{Experiment, Instance, Revision, Rollout, Service, Tenant, Variant};

/// A change of routing state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Mutation {
    /// Creates or replaces a tenant (its pins are kept).
    UpsertTenant {
        /// The tenant.
        tenant: Tenant,
    },
    /// Creates or updates a service; versions are added, never removed.
    UpsertService {
        /// The service.
        service: Service,
        /// Allows a new default version without a healthy instance.
        #[serde(default)]
        force: bool,
    },
    /// Registers (or re-registers) an instance.
    RegisterInstance {
        /// The instance.
        instance: Instance,
    },
    /// Removes an instance.
    DeregisterInstance {
        /// Its service.
        service: String,
        /// Its id.
        instance_id: String,
    },
    /// Changes a service's default version.
    SetDefaultVersion {
        /// The service.
        service: String,
        /// The new default.
        version: String,
        /// Allows a version without a healthy instance.
        #[serde(default)]
        force: bool,
    },
    /// Pins a tenant to a version of a service.
    SetTenantVersion {
        /// The tenant.
        tenant_id: String,
        /// The service.
        service: String,
        /// The version.
        version: String,
        /// Compare-and-set: apply only if the tenant's effective version is this one.
        #[serde(default)]
        expected_version: Option<String>,
        /// Allows a version without a healthy instance.
        #[serde(default)]
        force: bool,
    },
    /// Removes a tenant's pin.
    ClearTenantVersion {
        /// The tenant.
        tenant_id: String,
        /// The service.
        service: String,
    },
    /// Moves tenants off a version with an override (`rb-<revision>`).
    EmergencyRollback {
        /// The service.
        service: String,
        /// The version tenants leave.
        from_version: String,
        /// The version they go to.
        to_version: String,
        /// Only these tenants; all when empty.
        #[serde(default)]
        tenant_ids: BTreeSet<String>,
        /// Allows a target without a healthy instance.
        #[serde(default)]
        force: bool,
    },
    /// Removes an override.
    ClearOverride {
        /// The service.
        service: String,
        /// The override.
        override_id: String,
    },
    /// Creates or replaces a rollout.
    UpsertRollout {
        /// The rollout.
        rollout: Rollout,
    },
    /// Removes a rollout.
    RemoveRollout {
        /// The service.
        service: String,
        /// The rollout.
        rollout_id: String,
    },
    /// Creates or replaces an experiment.
    UpsertExperiment {
        /// The experiment.
        experiment: Experiment,
    },
    /// Removes an experiment.
    RemoveExperiment {
        /// The service.
        service: String,
        /// The experiment.
        experiment_id: String,
    },
    /// Starts a managed rollout at its first step; its plan's baseline is the current default.
    StartRollout {
        /// The rollout, with its plan.
        rollout: Rollout,
        /// Allows a version without a healthy instance.
        #[serde(default)]
        force: bool,
    },
    /// Records a decision of the rollout's analysis and applies it.
    ProgressRollout {
        /// The service.
        service: String,
        /// The rollout.
        rollout_id: String,
        /// The decision (its `event` is a step action).
        decision: RolloutDecision,
    },
    /// Pauses, resumes, promotes or aborts a managed rollout.
    ControlRollout {
        /// The service.
        service: String,
        /// The rollout.
        rollout_id: String,
        /// What to do, when and why (`event` is paused, resumed, promoted or aborted).
        decision: RolloutDecision,
        /// With a promotion: allows a version without a healthy instance.
        #[serde(default)]
        force: bool,
    },
    /// Changes an experiment's weights. Without `rebalance`, every tenant keeps its variant.
    UpdateExperiment {
        /// The service.
        service: String,
        /// The experiment.
        experiment_id: String,
        /// The variants with their new weights.
        variants: Vec<Variant>,
        /// Lets tenants move to follow the new weights.
        #[serde(default)]
        rebalance: bool,
    },
    /// Creates an experiment, as [`Mutation::UpsertExperiment`] does, but is refused when the
    /// service already has an experiment with its id (whose sticky tenants are then kept).
    CreateExperiment {
        /// The experiment.
        experiment: Experiment,
    },
    /// Replaces the whole state with `state`'s records (a restore, or a declarative apply) as
    /// one change; refused when the state is no longer at `expected_revision`.
    ReplaceState {
        /// Every record of the state after the change (its revision is ignored).
        state: Box<StateDump>,
        /// The revision the change was planned on.
        #[serde(default)]
        expected_revision: Option<Revision>,
    },
}

/// What applying a mutation reports besides the new state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Nothing to report.
    Done,
    /// A tenant's version changed; this was its effective version before.
    Reassigned {
        /// The effective version before the change.
        previous_version: String,
    },
    /// A pin was removed, or there was none.
    Cleared {
        /// Whether a pin existed.
        existed: bool,
    },
    /// An emergency rollback installed an override.
    RolledBack {
        /// The override's id.
        override_id: String,
        /// Active tenants that left the version.
        moved_tenants: u64,
    },
}

/// The (tenant, service) pairs a change may have altered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every pair.
    Everything,
    /// Every service of one tenant.
    Tenant(String),
    /// Every tenant of one service.
    Service(String),
    /// The tenants of one service on one version (its instances changed).
    ServiceVersion {
        /// The service.
        service: String,
        /// The version.
        version: String,
    },
    /// One pair.
    Assignment {
        /// The tenant.
        tenant_id: String,
        /// The service.
        service: String,
    },
}

impl Mutation {
    /// Returns the pairs this mutation may alter.
    pub fn scope(&self) -> Scope {
        match self {
            Mutation::UpsertTenant { tenant } => Scope::Tenant(tenant.id.clone()),
            Mutation::UpsertService { service, .. } => Scope::Service(service.name.clone()),
            Mutation::RegisterInstance { instance } => Scope::Service(instance.service.clone()),
            Mutation::DeregisterInstance { service, .. }
            | Mutation::SetDefaultVersion { service, .. }
            | Mutation::EmergencyRollback { service, .. }
            | Mutation::ClearOverride { service, .. }
            | Mutation::RemoveRollout { service, .. }
            | Mutation::RemoveExperiment { service, .. }
            | Mutation::ProgressRollout { service, .. }
            | Mutation::ControlRollout { service, .. }
            | Mutation::UpdateExperiment { service, .. } => Scope::Service(service.clone()),
            Mutation::StartRollout { rollout, .. } => Scope::Service(rollout.service.clone()),
            Mutation::UpsertRollout { rollout } => Scope::Service(rollout.service.clone()),
            Mutation::UpsertExperiment { experiment }
            | Mutation::CreateExperiment { experiment } => {
                Scope::Service(experiment.service.clone())
            }
            Mutation::SetTenantVersion {
                tenant_id, service, ..
            }
            | Mutation::ClearTenantVersion { tenant_id, service } => Scope::Assignment {
                tenant_id: tenant_id.clone(),
                service: service.clone(),
            },
            Mutation::ReplaceState { .. } => Scope::Everything,
        }
    }
}
