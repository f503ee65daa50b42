//! The audit trail: who changed routing state, when, why, and the records before and after.
//!
//! Every change carries a [`ChangeMeta`] into the store's change log (the Redis stream, or the
//! embedded store's bounded log), so the log of changes *is* the audit trail: append-only,
//! ordered by revision, readable with `Admin/ListEvents` and `greyrouter events`.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::Error;
use greyrouter_store::ChangeMeta;
use routing_core::model::RolloutPlan;
use routing_core::validate;
use routing_core::{Mutation, RoutingState, Scope};
use serde_json::{Value, json};

/// Request header naming who makes a change.
pub const ACTOR_HEADER: &str = "x-greyrouter-actor";
/// Request header saying why.
pub const REASON_HEADER: &str = "x-greyrouter-reason";

/// Who makes a change and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// A user, a service, or `rollout-driver`.
    pub name: String,
    /// Why.
    pub reason: String,
}

impl Actor {
    /// Reads the actor and reason headers of a request (`anonymous` without an actor); the
    /// front door passes each header's value as text, or `None` when absent.
    ///
    /// Both follow the rules every other field follows (`validate::actor`,
    /// `validate::reason`): a header that breaks them is refused, naming the header, never cut
    /// or cleaned silently.
    pub fn from_headers(actor: Option<&str>, reason: Option<&str>) -> Result<Actor, Error> {
        let name = actor.unwrap_or_default();
        validate::actor(ACTOR_HEADER, name)?;
        let reason = reason.unwrap_or_default();
        validate::reason(REASON_HEADER, reason)?;
        Ok(Actor {
            name: if name.is_empty() {
                "anonymous".to_owned()
            } else {
                name.to_owned()
            },
            reason: reason.to_owned(),
        })
    }

    /// An actor inside the router itself.
    pub fn system(name: &str, reason: impl Into<String>) -> Actor {
        Actor {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }

    /// Returns this actor with a reason given in the request body, when the header gave none.
    /// The body's reason follows the reason rule whether used or not.
    pub fn with_reason(mut self, reason: &str) -> Result<Actor, Error> {
        validate::reason("reason", reason)?;
        if self.reason.is_empty() {
            self.reason = reason.to_owned();
        }
        Ok(self)
    }
}

/// Returns the time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Returns the audit record of `mutation`, which took `before` to `after`.
pub fn meta(
    actor: &Actor,
    before: &RoutingState,
    after: &RoutingState,
    mutation: &Mutation,
    at_ms: u64,
) -> ChangeMeta {
    let (old, new) = (record(before, mutation), record(after, mutation));
    ChangeMeta {
        actor: actor.name.clone(),
        reason: actor.reason.clone(),
        at_ms,
        before: old.to_string(),
        after: new.to_string(),
    }
}

/// The name of a mutation in the audit trail.
pub fn kind(mutation: &Mutation) -> &'static str {
    match mutation {
        Mutation::UpsertTenant { .. } => "upsert_tenant",
        Mutation::UpsertService { .. } => "upsert_service",
        Mutation::RegisterInstance { .. } => "register_instance",
        Mutation::DeregisterInstance { .. } => "deregister_instance",
        Mutation::SetDefaultVersion { .. } => "set_default_version",
        Mutation::SetTenantVersion { .. } => "set_tenant_version",
        Mutation::ClearTenantVersion { .. } => "clear_tenant_version",
        Mutation::EmergencyRollback { .. } => "emergency_rollback",
        Mutation::ClearOverride { .. } => "clear_override",
        Mutation::UpsertRollout { .. } => "upsert_rollout",
        Mutation::RemoveRollout { .. } => "remove_rollout",
        Mutation::UpsertExperiment { .. } => "upsert_experiment",
        Mutation::CreateExperiment { .. } => "create_experiment",
        Mutation::RemoveExperiment { .. } => "remove_experiment",
        Mutation::StartRollout { .. } => "start_rollout",
        Mutation::ProgressRollout { .. } => "progress_rollout",
        Mutation::ControlRollout { .. } => "control_rollout",
        Mutation::UpdateExperiment { .. } => "update_experiment",
        Mutation::ReplaceState { .. } => "replace_state",
    }
}

/// The tenant and service a mutation is about (empty when it is about all of them).
pub fn subject(mutation: &Mutation) -> (String, String) {
    match mutation.scope() {
        Scope::Everything => (String::new(), String::new()),
        Scope::Tenant(tenant) => (tenant, String::new()),
        Scope::Service(service) | Scope::ServiceVersion { service, .. } => (String::new(), service),
        Scope::Assignment { tenant_id, service } => (tenant_id, service),
    }
}

/// The records a mutation touches, as they are in `state`.
fn record(state: &RoutingState, mutation: &Mutation) -> Value {
    match mutation {
        Mutation::UpsertTenant { tenant } => state
            .tenant(&tenant.id)
            .map_or(Value::Null, |entry| json!(entry.tenant)),
        Mutation::UpsertService { service, .. } => service_record(state, &service.name),
        Mutation::SetDefaultVersion { service, .. } => service_record(state, service),
        Mutation::RegisterInstance { instance } => {
            instance_record(state, &instance.service, &instance.id)
        }
        Mutation::DeregisterInstance {
            service,
            instance_id,
        } => instance_record(state, service, instance_id),
        Mutation::SetTenantVersion {
            tenant_id, service, ..
        }
        | Mutation::ClearTenantVersion { tenant_id, service } => {
            let Some(tenant) = state.tenant(tenant_id) else {
                return Value::Null;
            };
            let Some(entry) = state.service(service) else {
                return Value::Null;
            };
            let resolution = entry.resolve(tenant);
            json!({
                "version": resolution.version,
                "source": resolution.source.to_string(),
                "pinned_version": entry.pinned_version(tenant),
            })
        }
        Mutation::EmergencyRollback { service, .. } | Mutation::ClearOverride { service, .. } => {
            state.service(service).map_or(
                Value::Null,
                |entry| json!({ "overrides": entry.overrides() }),
            )
        }
        Mutation::UpsertRollout { rollout } => rollout_record(state, &rollout.service, &rollout.id),
        Mutation::StartRollout { rollout, .. } => {
            rollout_record(state, &rollout.service, &rollout.id)
        }
        Mutation::RemoveRollout {
            service,
            rollout_id,
        }
        | Mutation::ProgressRollout {
            service,
            rollout_id,
            ..
        }
        | Mutation::ControlRollout {
            service,
            rollout_id,
            ..
        } => rollout_record(state, service, rollout_id),
        Mutation::UpsertExperiment { experiment } | Mutation::CreateExperiment { experiment } => {
            experiment_record(state, &experiment.service, &experiment.id)
        }
        Mutation::RemoveExperiment {
            service,
            experiment_id,
        }
        | Mutation::UpdateExperiment {
            service,
            experiment_id,
            ..
        } => experiment_record(state, service, experiment_id),
        // The whole state: its size (the plan that made it is what the caller was shown).
        Mutation::ReplaceState { .. } => {
            let dump = state.dump();
            json!({
                "revision": state.revision(),
                "tenants": dump.tenants.len(),
                "services": dump.services.len(),
                "instances": dump.instances.len(),
                "pins": dump.pins.len(),
                "overrides": dump.overrides.len(),
                "rollouts": dump.rollouts.len(),
                "experiments": dump.experiments.len(),
            })
        }
    }
}

fn service_record(state: &RoutingState, name: &str) -> Value {
    state
        .service(name)
        .map_or(Value::Null, |entry| json!(entry.service))
}

fn instance_record(state: &RoutingState, service: &str, id: &str) -> Value {
    state
        .service(service)
        .and_then(|entry| entry.pools().find_map(|(_, pool)| pool.member(id)))
        .map_or(Value::Null, |member| json!(member.instance.as_ref()))
}

fn rollout_record(state: &RoutingState, service: &str, id: &str) -> Value {
    let Some(rollout) = state
        .service(service)
        .and_then(|entry| entry.rollouts().iter().find(|r| r.id == id))
    else {
        return Value::Null;
    };
    // The decision history is in the rollout itself; the trail keeps where it stood.
    let plan = rollout.plan.as_ref().map(|plan: &RolloutPlan| {
        json!({
            "phase": plan.phase.as_str(),
            "step": plan.step,
            "failed_checks": plan.failed_checks,
            "last_decision": plan.decisions.last(),
        })
    });
    json!({
        "to_version": rollout.to_version,
        "basis_points": rollout.basis_points,
        "plan": plan,
    })
}

fn experiment_record(state: &RoutingState, service: &str, id: &str) -> Value {
    state
        .service(service)
        .and_then(|entry| entry.experiments().iter().find(|e| e.id == id))
        .map_or(Value::Null, |experiment| {
            json!({
                "variants": experiment.variants,
                "cohort": cohort_summary(&experiment.cohort),
                "sticky_tenants": experiment.sticky.len(),
            })
        })
}

/// A cohort as the trail keeps it: its tiers and labels, and how many tenants it names (a list
/// of tenants can be long; the change itself holds it).
fn cohort_summary(cohort: &routing_core::Cohort) -> Value {
    json!({
        "tiers": cohort.tiers,
        "labels": cohort.labels,
        "tenant_ids": cohort.tenant_ids.len(),
    })
}
