//! Applying a [`Mutation`]: one dispatching `match`, then one function per mutation.
//!
//! Each function checks its input and the state and changes `state`, returning what happened.
//! They work on the copy [`RoutingState::apply`] made for the next revision, which is dropped on
//! error: nothing is ever half applied.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::error::Entity;
use crate::model::RolloutDecision;
use crate::state::rollout;
use crate::state::{Mutation, Outcome, RoutingState, ServiceEntry, StateDump, TenantEntry};
use crate::{
    Experiment, Instance, Override, Revision, Rollout, RoutingError, Service, Tenant, Variant,
    validate,
};

impl RoutingState {
    /// Applies a mutation, returning the state at the next revision and what happened.
    ///
    /// On error the state is unchanged: nothing is half applied.
    pub fn apply(&self, mutation: &Mutation) -> Result<(RoutingState, Outcome), RoutingError> {
        let mut next = self.clone();
        next.revision = self.revision + 1;
        let outcome = next.apply_in_place(mutation)?;
        Ok((next, outcome))
    }

    /// Applies a mutation to this state, without moving the revision.
    pub(super) fn apply_in_place(&mut self, mutation: &Mutation) -> Result<Outcome, RoutingError> {
        match mutation {
            Mutation::UpsertTenant { tenant } => upsert_tenant(self, tenant),
            Mutation::UpsertService { service, force } => upsert_service(self, service, *force),
            Mutation::RegisterInstance { instance } => register_instance(self, instance),
            Mutation::DeregisterInstance {
                service,
                instance_id,
            } => deregister_instance(self, service, instance_id),
            Mutation::SetDefaultVersion {
                service,
                version,
                force,
            } => set_default_version(self, service, version, *force),
            Mutation::SetTenantVersion {
                tenant_id,
                service,
                version,
                expected_version,
                force,
            } => set_tenant_version(
                self,
                tenant_id,
                service,
                version,
                expected_version.as_deref(),
                *force,
            ),
            Mutation::ClearTenantVersion { tenant_id, service } => {
                clear_tenant_version(self, tenant_id, service)
            }
            Mutation::EmergencyRollback {
                service,
                from_version,
                to_version,
                tenant_ids,
                force,
            } => emergency_rollback(self, service, from_version, to_version, tenant_ids, *force),
            Mutation::ClearOverride {
                service,
                override_id,
            } => clear_override(self, service, override_id),
            Mutation::UpsertRollout { rollout } => upsert_rollout(self, rollout),
            Mutation::UpsertExperiment { experiment } => upsert_experiment(self, experiment),
            Mutation::CreateExperiment { experiment } => create_experiment(self, experiment),
            Mutation::ReplaceState {
                state,
                expected_revision,
            } => replace_state(self, state, *expected_revision),
            Mutation::RemoveRollout {
                service,
                rollout_id,
            } => remove_rollout(self, service, rollout_id),
            Mutation::RemoveExperiment {
                service,
                experiment_id,
            } => remove_experiment(self, service, experiment_id),
            Mutation::StartRollout { rollout, force } => start_rollout(self, rollout, *force),
            Mutation::ProgressRollout {
                service,
                rollout_id,
                decision,
            } => progress_rollout(self, service, rollout_id, decision),
            Mutation::ControlRollout {
                service,
                rollout_id,
                decision,
                force,
            } => control_rollout(self, service, rollout_id, decision, *force),
            Mutation::UpdateExperiment {
                service,
                experiment_id,
                variants,
                rebalance,
            } => update_experiment(self, service, experiment_id, variants, *rebalance),
        }
    }
}

fn upsert_tenant(state: &mut RoutingState, tenant: &Tenant) -> Result<Outcome, RoutingError> {
    validate_tenant(tenant)?;
    let pins = state
        .tenant_entry(&tenant.id)
        .map(|entry| entry.pins.clone())
        .unwrap_or_default();
    state.put_tenant(Arc::new(TenantEntry::new(tenant.clone(), pins)));
    Ok(Outcome::Done)
}

fn upsert_service(
    state: &mut RoutingState,
    service: &Service,
    force: bool,
) -> Result<Outcome, RoutingError> {
    validate::name("service.name", &service.name)?;
    validate::name("service.default_version", &service.default_version)?;
    if service.versions.len() >= validate::MAX_VERSIONS_PER_SERVICE {
        return Err(RoutingError::invalid(
            "service.versions",
            format!("at most {} versions", validate::MAX_VERSIONS_PER_SERVICE),
        ));
    }
    for version in &service.versions {
        validate::name("service.versions", version)?;
    }
    let entry = match state.services.get(&service.name) {
        Some(existing) => {
            let mut entry = ServiceEntry::clone(existing);
            for version in &service.versions {
                entry.add_version(version);
            }
            entry.add_version(&service.default_version);
            if entry.service.default_version != service.default_version {
                entry.check_assignable(&service.default_version, force)?;
            }
            if entry.service.versions.len() > validate::MAX_VERSIONS_PER_SERVICE {
                return Err(RoutingError::FailedPrecondition(format!(
                    "service {}: at most {} versions",
                    service.name,
                    validate::MAX_VERSIONS_PER_SERVICE
                )));
            }
            entry.service.default_version = service.default_version.clone();
            entry.service.strategy = service.strategy;
            entry
        }
        None => {
            let mut service = service.clone();
            service.versions.insert(service.default_version.clone());
            state.new_service_entry(service)?
        }
    };
    state.services.insert(service.name.clone(), Arc::new(entry));
    Ok(Outcome::Done)
}

fn register_instance(
    state: &mut RoutingState,
    instance: &Instance,
) -> Result<Outcome, RoutingError> {
    validate_instance(instance)?;
    let mut entry = state.service_entry(&instance.service)?;
    if !entry.instance_versions.contains_key(&instance.id) {
        validate::room(
            "instances of a service",
            entry.instance_versions.len(),
            validate::MAX_INSTANCES_PER_SERVICE,
        )?;
    }
    if !entry.knows(&instance.version) {
        validate::room(
            "versions of a service",
            entry.service.versions.len(),
            validate::MAX_VERSIONS_PER_SERVICE,
        )?;
    }
    if let Some(old_version) = entry.instance_versions.get(&instance.id).cloned()
        && old_version != instance.version
    {
        entry.remove_instance(&old_version, &instance.id);
    }
    // Replaced within its version's pool, so it keeps its live load.
    entry.put_instance(Arc::new(instance.clone()));
    entry
        .instance_versions
        .insert(instance.id.clone(), instance.version.clone());
    entry.add_version(&instance.version);
    state
        .services
        .insert(instance.service.clone(), Arc::new(entry));
    Ok(Outcome::Done)
}

fn deregister_instance(
    state: &mut RoutingState,
    service: &str,
    instance_id: &str,
) -> Result<Outcome, RoutingError> {
    validate::name("service", service)?;
    validate::name("instance_id", instance_id)?;
    let mut entry = state.service_entry(service)?;
    let version = entry.instance_versions.remove(instance_id).ok_or_else(|| {
        RoutingError::not_found(Entity::Instance, format!("{service}/{instance_id}"))
    })?;
    entry.remove_instance(&version, instance_id);
    state.services.insert(service.to_owned(), Arc::new(entry));
    Ok(Outcome::Done)
}

fn set_default_version(
    state: &mut RoutingState,
    service: &str,
    version: &str,
    force: bool,
) -> Result<Outcome, RoutingError> {
    validate::name("service", service)?;
    validate::name("version", version)?;
    let mut entry = state.service_entry(service)?;
    entry.check_assignable(version, force)?;
    entry.service.default_version = version.to_owned();
    state.services.insert(service.to_owned(), Arc::new(entry));
    Ok(Outcome::Done)
}

fn set_tenant_version(
    state: &mut RoutingState,
    tenant_id: &str,
    service: &str,
    version: &str,
    expected_version: Option<&str>,
    force: bool,
) -> Result<Outcome, RoutingError> {
    validate::name("tenant_id", tenant_id)?;
    validate::name("service", service)?;
    validate::name("version", version)?;
    if let Some(expected) = expected_version {
        validate::name("expected_version", expected)?;
    }
    let tenant = state.find_tenant(tenant_id)?;
    let entry = state.find_service(service)?;
    let current = entry.resolve(tenant).version;
    if let Some(expected) = expected_version
        && expected != current
    {
        return Err(RoutingError::VersionMismatch {
            tenant_id: tenant_id.to_owned(),
            service: service.to_owned(),
            expected: expected.to_owned(),
            current,
        });
    }
    entry.check_assignable(version, force)?;
    let version_number = entry
        .version_number(version)
        .ok_or_else(|| RoutingError::not_found(Entity::Version, format!("{service}/{version}")))?;
    let mut tenant = TenantEntry::clone(tenant);
    tenant.pins = tenant.pins.with(entry.number, version_number);
    state.put_tenant(Arc::new(tenant));
    Ok(Outcome::Reassigned {
        previous_version: current,
    })
}

fn clear_tenant_version(
    state: &mut RoutingState,
    tenant_id: &str,
    service: &str,
) -> Result<Outcome, RoutingError> {
    validate::name("tenant_id", tenant_id)?;
    validate::name("service", service)?;
    let tenant = state.find_tenant(tenant_id)?;
    let rest = state
        .service(service)
        .and_then(|entry| tenant.pins.without(entry.number));
    let existed = rest.is_some();
    if let Some(pins) = rest {
        let mut tenant = TenantEntry::clone(tenant);
        tenant.pins = pins;
        state.put_tenant(Arc::new(tenant));
    }
    Ok(Outcome::Cleared { existed })
}

fn emergency_rollback(
    state: &mut RoutingState,
    service: &str,
    from_version: &str,
    to_version: &str,
    tenant_ids: &BTreeSet<String>,
    force: bool,
) -> Result<Outcome, RoutingError> {
    validate::name("service", service)?;
    validate::name("from_version", from_version)?;
    validate::name("to_version", to_version)?;
    if from_version == to_version {
        return Err(RoutingError::invalid(
            "to_version",
            "must differ from from_version",
        ));
    }
    let before = Arc::clone(state.find_service(service)?);
    if !before.knows(from_version) {
        return Err(RoutingError::not_found(
            Entity::Version,
            format!("{service}/{from_version}"),
        ));
    }
    before.check_assignable(to_version, force)?;
    for id in tenant_ids {
        validate::name("tenant_ids", id)?;
        state.find_tenant(id)?;
    }
    validate::room(
        "overrides of a service",
        before.overrides.len(),
        validate::MAX_OVERRIDES_PER_SERVICE,
    )?;
    let id = format!("rb-{}", state.revision);
    let mut after = ServiceEntry::clone(&before);
    after.overrides.push(Override {
        id: id.clone(),
        service: service.to_owned(),
        from_version: from_version.to_owned(),
        to_version: to_version.to_owned(),
        tenant_ids: tenant_ids.clone(),
        created_revision: state.revision,
    });
    let moved = |entry: &TenantEntry| {
        entry.tenant.active
            && before.resolve(entry).version == from_version
            && after.resolve(entry).version != from_version
    };
    let moved_tenants = if tenant_ids.is_empty() {
        state.tenant_entries().filter(|e| moved(e)).count()
    } else {
        tenant_ids
            .iter()
            .filter_map(|t| state.tenant_entry(t))
            .filter(|e| moved(e))
            .count()
    } as u64;
    state.services.insert(service.to_owned(), Arc::new(after));
    Ok(Outcome::RolledBack {
        override_id: id,
        moved_tenants,
    })
}

fn clear_override(
    state: &mut RoutingState,
    service: &str,
    override_id: &str,
) -> Result<Outcome, RoutingError> {
    validate::name("service", service)?;
    validate::name("override_id", override_id)?;
    let mut entry = state.service_entry(service)?;
    let before = entry.overrides.len();
    entry.overrides.retain(|o| o.id != override_id);
    if entry.overrides.len() == before {
        return Err(RoutingError::not_found(
            Entity::Override,
            format!("{service}/{override_id}"),
        ));
    }
    state.services.insert(service.to_owned(), Arc::new(entry));
    Ok(Outcome::Done)
}

fn upsert_rollout(state: &mut RoutingState, rollout: &Rollout) -> Result<Outcome, RoutingError> {
    validate::name("rollout.id", &rollout.id)?;
    validate::name("rollout.service", &rollout.service)?;
    validate::name("rollout.to_version", &rollout.to_version)?;
    validate::text("rollout.salt", &rollout.salt)?;
    if rollout.basis_points > crate::hash::BUCKETS {
        return Err(RoutingError::invalid(
            "rollout.basis_points",
            "must be at most 10000",
        ));
    }
    let mut entry = state.service_entry(&rollout.service)?;
    if !entry.knows(&rollout.to_version) {
        return Err(RoutingError::not_found(
            Entity::Version,
            format!("{}/{}", rollout.service, rollout.to_version),
        ));
    }
    entry.rollouts.retain(|r| r.id != rollout.id);
    validate::room(
        "rollouts of a service",
        entry.rollouts.len(),
        validate::MAX_ROLLOUTS_PER_SERVICE,
    )?;
    entry.rollouts.push(rollout.clone());
    state
        .services
        .insert(rollout.service.clone(), Arc::new(entry));
    Ok(Outcome::Done)
}

fn upsert_experiment(
    state: &mut RoutingState,
    experiment: &Experiment,
) -> Result<Outcome, RoutingError> {
    put_experiment(state, experiment, false)
}

/// As [`upsert_experiment`], but an experiment that exists is refused, not replaced: replacing it
/// would drop the tenants it keeps on their variants.
fn create_experiment(
    state: &mut RoutingState,
    experiment: &Experiment,
) -> Result<Outcome, RoutingError> {
    put_experiment(state, experiment, true)
}

/// Adds an experiment or replaces the one with its id (only when `!create`).
fn put_experiment(
    state: &mut RoutingState,
    experiment: &Experiment,
    create: bool,
) -> Result<Outcome, RoutingError> {
    validate::name("experiment.id", &experiment.id)?;
    validate::name("experiment.service", &experiment.service)?;
    validate::text("experiment.salt", &experiment.salt)?;
    let mut entry = state.service_entry(&experiment.service)?;
    validate_variants(&entry, &experiment.variants)?;
    if create && entry.experiments.iter().any(|e| e.id == experiment.id) {
        return Err(RoutingError::FailedPrecondition(format!(
            "experiment '{}' of service '{}' already exists",
            experiment.id, experiment.service
        )));
    }
    entry.experiments.retain(|e| e.id != experiment.id);
    validate::room(
        "experiments of a service",
        entry.experiments.len(),
        validate::MAX_EXPERIMENTS_PER_SERVICE,
    )?;
    entry.experiments.push(experiment.clone());
    state
        .services
        .insert(experiment.service.clone(), Arc::new(entry));
    Ok(Outcome::Done)
}

fn remove_rollout(
    state: &mut RoutingState,
    service: &str,
    rollout_id: &str,
) -> Result<Outcome, RoutingError> {
    validate::name("service", service)?;
    validate::name("rollout_id", rollout_id)?;
    let mut entry = state.service_entry(service)?;
    let before = entry.rollouts.len();
    entry.rollouts.retain(|r| r.id != rollout_id);
    if entry.rollouts.len() == before {
        return Err(RoutingError::not_found(
            Entity::Rollout,
            format!("{service}/{rollout_id}"),
        ));
    }
    state.services.insert(service.to_owned(), Arc::new(entry));
    Ok(Outcome::Done)
}

fn remove_experiment(
    state: &mut RoutingState,
    service: &str,
    experiment_id: &str,
) -> Result<Outcome, RoutingError> {
    validate::name("service", service)?;
    validate::name("experiment_id", experiment_id)?;
    let mut entry = state.service_entry(service)?;
    let before = entry.experiments.len();
    entry.experiments.retain(|e| e.id != experiment_id);
    if entry.experiments.len() == before {
        return Err(RoutingError::not_found(
            Entity::Experiment,
            format!("{service}/{experiment_id}"),
        ));
    }
    state.services.insert(service.to_owned(), Arc::new(entry));
    Ok(Outcome::Done)
}

fn start_rollout(
    state: &mut RoutingState,
    rollout: &Rollout,
    force: bool,
) -> Result<Outcome, RoutingError> {
    let mut entry = state.service_entry(&rollout.service)?;
    let rollout = rollout::start(&entry, rollout, force)?;
    validate::room(
        "rollouts of a service",
        entry.rollouts.len(),
        validate::MAX_ROLLOUTS_PER_SERVICE,
    )?;
    entry.rollouts.push(rollout);
    state
        .services
        .insert(entry.service.name.clone(), Arc::new(entry));
    Ok(Outcome::Done)
}

fn progress_rollout(
    state: &mut RoutingState,
    service: &str,
    rollout_id: &str,
    decision: &RolloutDecision,
) -> Result<Outcome, RoutingError> {
    validate::name("service", service)?;
    validate::name("rollout_id", rollout_id)?;
    validate::note("decision.note", &decision.note)?;
    let mut entry = state.service_entry(service)?;
    rollout::progress(&mut entry, rollout_id, decision)?;
    state.services.insert(service.to_owned(), Arc::new(entry));
    Ok(Outcome::Done)
}

fn control_rollout(
    state: &mut RoutingState,
    service: &str,
    rollout_id: &str,
    decision: &RolloutDecision,
    force: bool,
) -> Result<Outcome, RoutingError> {
    validate::name("service", service)?;
    validate::name("rollout_id", rollout_id)?;
    validate::note("decision.note", &decision.note)?;
    let mut entry = state.service_entry(service)?;
    rollout::control(&mut entry, rollout_id, decision, force)?;
    state.services.insert(service.to_owned(), Arc::new(entry));
    Ok(Outcome::Done)
}

fn update_experiment(
    state: &mut RoutingState,
    service: &str,
    experiment_id: &str,
    variants: &[Variant],
    rebalance: bool,
) -> Result<Outcome, RoutingError> {
    validate::name("service", service)?;
    validate::name("experiment_id", experiment_id)?;
    let mut entry = state.service_entry(service)?;
    let position = entry
        .experiments
        .iter()
        .position(|e| e.id == experiment_id)
        .ok_or_else(|| {
            RoutingError::not_found(Entity::Experiment, format!("{service}/{experiment_id}"))
        })?;
    validate_variants(&entry, variants)?;
    let mut experiment = entry.experiments[position].clone();
    if rebalance {
        experiment.sticky = Arc::default();
    } else {
        // Every tenant in the experiment keeps the variant it has now.
        let kept: Vec<(String, String)> = state
            .tenant_entries()
            .filter(|t| t.tenant.active && !experiment.sticky.contains_key(&t.tenant.id))
            .filter_map(|t| {
                experiment
                    .variant_for(&t.tenant)
                    .map(|variant| (t.tenant.id.clone(), variant.name.clone()))
            })
            .collect();
        if !kept.is_empty() {
            Arc::make_mut(&mut experiment.sticky).extend(kept);
        }
    }
    experiment.variants = variants.to_vec();
    entry.experiments[position] = experiment;
    state.services.insert(service.to_owned(), Arc::new(entry));
    Ok(Outcome::Done)
}

/// Checks an experiment's variants against the service.
fn validate_variants(entry: &ServiceEntry, variants: &[Variant]) -> Result<(), RoutingError> {
    if variants.is_empty() || variants.len() > validate::MAX_VARIANTS {
        return Err(RoutingError::invalid(
            "experiment.variants",
            format!("must hold 1 to {} variants", validate::MAX_VARIANTS),
        ));
    }
    for variant in variants {
        validate::name("experiment.variants.name", &variant.name)?;
        validate::name("experiment.variants.version", &variant.version)?;
        if !entry.knows(&variant.version) {
            return Err(RoutingError::not_found(
                Entity::Version,
                format!("{}/{}", entry.service.name, variant.version),
            ));
        }
    }
    let mut names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(RoutingError::invalid(
            "experiment.variants.name",
            "names must be unique",
        ));
    }
    if variants.iter().all(|v| v.weight == 0) {
        return Err(RoutingError::invalid(
            "experiment.variants.weight",
            "at least one variant needs a weight",
        ));
    }
    Ok(())
}

/// Checks a tenant record.
pub(super) fn validate_tenant(tenant: &Tenant) -> Result<(), RoutingError> {
    validate::name("tenant.id", &tenant.id)?;
    validate::text("tenant.name", &tenant.name)?;
    validate::optional_name("tenant.region", &tenant.region)?;
    validate::optional_name("tenant.tier", &tenant.tier)?;
    validate::entries("tenant.labels", &tenant.labels)
}

/// Checks an instance record.
pub(super) fn validate_instance(instance: &Instance) -> Result<(), RoutingError> {
    validate::name("instance.id", &instance.id)?;
    validate::address("instance.address", &instance.address)?;
    validate::name("instance.service", &instance.service)?;
    validate::name("instance.version", &instance.version)?;
    validate::optional_name("instance.region", &instance.region)?;
    validate::optional_name("instance.zone", &instance.zone)?;
    validate::entries("instance.metadata", &instance.metadata)?;
    if instance.health_score > 100 {
        return Err(RoutingError::invalid(
            "instance.health_score",
            "must be 0-100",
        ));
    }
    Ok(())
}

/// Replaces every record with those of `desired`, keeping the revision the change produces.
fn replace_state(
    state: &mut RoutingState,
    desired: &StateDump,
    expected_revision: Option<Revision>,
) -> Result<Outcome, RoutingError> {
    // The revision was already moved to the one this change produces.
    let current = state.revision.saturating_sub(1);
    if let Some(expected) = expected_revision
        && expected != current
    {
        return Err(RoutingError::StateMoved { expected, current });
    }
    let revision = state.revision;
    *state = RoutingState::from_dump(desired)?;
    state.revision = revision;
    Ok(Outcome::Done)
}
