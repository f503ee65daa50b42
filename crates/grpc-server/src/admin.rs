//! The `Admin` service: tenants, services, instances and version assignments.
//!
//! Reads answer from this router's replica; mutations go to the store, which applies them
//! atomically, and are answered once the replica has applied them.

use std::sync::Arc;

use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::admin_server::Admin;
use greyrouter_store::Commit;
use routing_core::model::{RolloutDecision, RolloutEvent, RolloutPhase, RolloutPlan};
use routing_core::{Entity, Experiment, Mutation, Outcome, Rollout, RoutingError, validate};
use schema_manager::SchemaError;
use tonic::{Request, Response, Status};

use crate::audit::{self, Actor};
use crate::convert;
use crate::replica::Replica;
use crate::schema::{self, Schemas};
use crate::status;

/// Default and largest page of `ListTenants`.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// Bytes of events after which a `ListEvents` page ends early (the next page goes on).
const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;
/// Most changes one `ListEvents` call reads.
const MAX_EVENTS_SCANNED: usize = 20_000;

/// Serves `greyrouter.v1.Admin`.
#[derive(Debug, Clone)]
pub struct AdminService {
    replica: Arc<Replica>,
    schemas: Option<Arc<Schemas>>,
}

impl AdminService {
    /// Returns the service over a replica, with schema migrations when configured.
    pub fn new(replica: Arc<Replica>, schemas: Option<Arc<Schemas>>) -> Self {
        AdminService { replica, schemas }
    }

    fn schemas(&self) -> Result<&Arc<Schemas>, Status> {
        self.schemas.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "schema migrations are not configured on this router (set [schema] database_url)",
            )
        })
    }

    async fn commit(&self, mutation: Mutation, actor: &Actor) -> Result<Commit, Status> {
        let kind = audit::kind(&mutation);
        let result = self.replica.commit(mutation, actor).await;
        match &result {
            Ok(commit) => tracing::info!(
                mutation = kind,
                revision = commit.revision,
                actor = %actor.name,
                "committed"
            ),
            Err(err) => tracing::debug!(mutation = kind, %err, "refused"),
        }
        result.map_err(|e| status::store(&e))
    }
}

fn invalid(err: RoutingError) -> Status {
    status::routing(&err)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn upsert_tenant(
        &self,
        request: Request<pb::UpsertTenantRequest>,
    ) -> Result<Response<pb::UpsertTenantResponse>, Status> {
        let actor = Actor::from_metadata(request.metadata())?;
        let tenant = convert::required("tenant", request.into_inner().tenant).map_err(invalid)?;
        let commit = self
            .commit(
                Mutation::UpsertTenant {
                    tenant: convert::tenant(tenant),
                },
                &actor,
            )
            .await?;
        Ok(Response::new(pb::UpsertTenantResponse {
            revision: commit.revision,
        }))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let request = request.into_inner();
        let page = match request.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        // A page token is the last tenant id of the previous page.
        validate::optional_name("page_token", &request.page_token).map_err(invalid)?;
        let after = (!request.page_token.is_empty()).then_some(request.page_token.as_str());
        let state = self.replica.current();
        let mut tenants: Vec<pb::Tenant> = state
            .tenants_after(after)
            .take(page + 1)
            .map(|entry| convert::tenant_message(&entry.tenant))
            .collect();
        let next_page_token = if tenants.len() > page {
            tenants.truncate(page);
            tenants.last().map(|t| t.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListTenantsResponse {
            tenants,
            next_page_token,
            revision: state.revision(),
        }))
    }

    async fn upsert_service(
        &self,
        request: Request<pb::UpsertServiceRequest>,
    ) -> Result<Response<pb::UpsertServiceResponse>, Status> {
        let actor = Actor::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let service = convert::required("service", request.service)
            .and_then(convert::service)
            .map_err(invalid)?;
        let commit = self
            .commit(
                Mutation::UpsertService {
                    service,
                    force: request.force,
                },
                &actor,
            )
            .await?;
        Ok(Response::new(pb::UpsertServiceResponse {
            revision: commit.revision,
        }))
    }

    async fn list_services(
        &self,
        _request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let state = self.replica.current();
        Ok(Response::new(pb::ListServicesResponse {
            services: state
                .services()
                .map(|entry| convert::service_message(&entry.service))
                .collect(),
            revision: state.revision(),
        }))
    }

    async fn register_instance(
        &self,
        request: Request<pb::RegisterInstanceRequest>,
    ) -> Result<Response<pb::RegisterInstanceResponse>, Status> {
        let actor = Actor::from_metadata(request.metadata())?;
        let instance = convert::required("instance", request.into_inner().instance)
            .and_then(convert::instance)
            .map_err(invalid)?;
        let commit = self
            .commit(Mutation::RegisterInstance { instance }, &actor)
            .await?;
        Ok(Response::new(pb::RegisterInstanceResponse {
            revision: commit.revision,
        }))
    }

    async fn deregister_instance(
        &self,
        request: Request<pb::DeregisterInstanceRequest>,
    ) -> Result<Response<pb::DeregisterInstanceResponse>, Status> {
        let actor = Actor::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let commit = self
            .commit(
                Mutation::DeregisterInstance {
                    service: request.service,
                    instance_id: request.instance_id,
                },
                &actor,
            )
            .await?;
        Ok(Response::new(pb::DeregisterInstanceResponse {
            revision: commit.revision,
        }))
    }

    async fn list_instances(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let request = request.into_inner();
        validate::name("service", &request.service).map_err(invalid)?;
        validate::optional_name("version", &request.version).map_err(invalid)?;
        let state = self.replica.current();
        let service = state
            .service(&request.service)
            .ok_or_else(|| invalid(RoutingError::not_found(Entity::Service, &request.service)))?;
        let instances = service
            .pools()
            .filter(|(version, _)| request.version.is_empty() || **version == request.version)
            .flat_map(|(_, pool)| pool.members().iter())
            .map(|member| convert::instance_message(member.instance.as_ref()))
            .collect();
        Ok(Response::new(pb::ListInstancesResponse {
            instances,
            revision: state.revision(),
        }))
    }

    async fn set_default_version(
        &self,
        request: Request<pb::SetDefaultVersionRequest>,
    ) -> Result<Response<pb::SetDefaultVersionResponse>, Status> {
        let actor = Actor::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let commit = self
            .commit(
                Mutation::SetDefaultVersion {
                    service: request.service,
                    version: request.version,
                    force: request.force,
                },
                &actor,
            )
            .await?;
        Ok(Response::new(pb::SetDefaultVersionResponse {
            revision: commit.revision,
        }))
    }

    async fn set_tenant_version(
        &self,
        request: Request<pb::SetTenantVersionRequest>,
    ) -> Result<Response<pb::SetTenantVersionResponse>, Status> {
        let actor = Actor::from_metadata(request.metadata())?;
        let request = request.into_inner();
        if request.migrate {
            // Asking for a migration on a router that cannot run one is refused, not ignored.
            self.schemas()?;
        }
        if let Some(schemas) = &self.schemas {
            let state = self.replica.current();
            if let Some(tenant) = state.tenant(&request.tenant_id)
                && state.service(&request.service).is_some()
            {
                schemas
                    .gate(
                        &tenant.tenant,
                        &request.service,
                        &request.version,
                        request.migrate,
                    )
                    .await
                    .map_err(|e| status::gate(&e))?;
            }
        }
        let commit = self
            .commit(
                Mutation::SetTenantVersion {
                    tenant_id: request.tenant_id,
                    service: request.service,
                    version: request.version,
                    expected_version: request.expected_version,
                    force: request.force,
                },
                &actor,
            )
            .await?;
        let previous_version = match commit.outcome {
            Outcome::Reassigned { previous_version } => previous_version,
            _ => String::new(),
        };
        Ok(Response::new(pb::SetTenantVersionResponse {
            revision: commit.revision,
            previous_version,
        }))
    }

    async fn clear_tenant_version(
        &self,
        request: Request<pb::ClearTenantVersionRequest>,
    ) -> Result<Response<pb::ClearTenantVersionResponse>, Status> {
        let actor = Actor::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let commit = self
            .commit(
                Mutation::ClearTenantVersion {
                    tenant_id: request.tenant_id,
                    service: request.service,
                },
                &actor,
            )
            .await?;
        Ok(Response::new(pb::ClearTenantVersionResponse {
            revision: commit.revision,
            cleared: matches!(commit.outcome, Outcome::Cleared { existed: true }),
        }))
    }

    async fn get_tenant_services(
        &self,
        request: Request<pb::GetTenantServicesRequest>,
    ) -> Result<Response<pb::GetTenantServicesResponse>, Status> {
        let tenant_id = request.into_inner().tenant_id;
        validate::name("tenant_id", &tenant_id).map_err(invalid)?;
        let state = self.replica.current();
        let tenant = state
            .tenant(&tenant_id)
            .ok_or_else(|| invalid(RoutingError::not_found(Entity::Tenant, &tenant_id)))?;
        let services = state
            .services()
            .map(|service| {
                let resolution = service.resolve(tenant);
                pb::TenantService {
                    service: service.service.name.clone(),
                    version: resolution.version,
                    source: resolution.source.to_string(),
                    pinned_version: tenant
                        .pins
                        .get(&service.service.name)
                        .cloned()
                        .unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(pb::GetTenantServicesResponse {
            tenant: Some(convert::tenant_message(&tenant.tenant)),
            services,
            revision: state.revision(),
        }))
    }

    async fn emergency_rollback(
        &self,
        request: Request<pb::EmergencyRollbackRequest>,
    ) -> Result<Response<pb::EmergencyRollbackResponse>, Status> {
        let actor = Actor::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let actor = actor.with_reason(&request.reason)?;
        let tenant_ids = convert::names("tenant_ids", request.tenant_ids).map_err(invalid)?;
        let mutation = Mutation::EmergencyRollback {
            service: request.service,
            from_version: request.from_version,
            to_version: request.to_version,
            tenant_ids,
            force: request.force,
        };
        let (revision, outcome) = if request.dry_run {
            // What would happen now, without committing anything.
            let state = self.replica.current();
            let (_, outcome) = state.apply(&mutation).map_err(invalid)?;
            (state.revision(), outcome)
        } else {
            let commit = self.commit(mutation, &actor).await?;
            (commit.revision, commit.outcome)
        };
        let (override_id, moved_tenants) = match outcome {
            Outcome::RolledBack {
                override_id,
                moved_tenants,
            } => (override_id, moved_tenants),
            _ => (String::new(), 0),
        };
        if !request.dry_run {
            tracing::warn!(revision, %override_id, moved_tenants, actor = ?actor.name, reason = ?actor.reason, "emergency rollback");
        }
        Ok(Response::new(pb::EmergencyRollbackResponse {
            revision,
            moved_tenants,
            override_id: if request.dry_run {
                String::new()
            } else {
                override_id
            },
        }))
    }

    async fn list_overrides(
        &self,
        request: Request<pb::ListOverridesRequest>,
    ) -> Result<Response<pb::ListOverridesResponse>, Status> {
        let service = request.into_inner().service;
        validate::optional_name("service", &service).map_err(invalid)?;
        let state = self.replica.current();
        if !service.is_empty() && state.service(&service).is_none() {
            return Err(invalid(RoutingError::not_found(Entity::Service, &service)));
        }
        let overrides = state
            .services()
            .filter(|entry| service.is_empty() || entry.service.name == service)
            .flat_map(|entry| entry.overrides().iter().map(convert::override_message))
            .collect();
        Ok(Response::new(pb::ListOverridesResponse {
            overrides,
            revision: state.revision(),
        }))
    }

    async fn clear_override(
        &self,
        request: Request<pb::ClearOverrideRequest>,
    ) -> Result<Response<pb::ClearOverrideResponse>, Status> {
        let actor = Actor::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let commit = self
            .commit(
                Mutation::ClearOverride {
                    service: request.service,
                    override_id: request.override_id,
                },
                &actor,
            )
            .await?;
        Ok(Response::new(pb::ClearOverrideResponse {
            revision: commit.revision,
        }))
    }

    async fn start_rollout(
        &self,
        request: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        let actor = Actor::from_metadata(request.metadata())?;
        let request = request.into_inner();
        validate::name("service", &request.service).map_err(invalid)?;
        validate::name("to_version", &request.to_version).map_err(invalid)?;
        validate::optional_name("id", &request.id).map_err(invalid)?;
        if request.interval_seconds == 0 {
            return Err(invalid(RoutingError::invalid(
                "interval_seconds",
                "must be positive",
            )));
        }
        let steps = convert::steps(&request.steps).map_err(invalid)?;
        let analysis = convert::analysis(request.analysis).map_err(invalid)?;
        let cohort = convert::cohort(request.cohort).map_err(invalid)?;
        let now = audit::now_ms();
        let id = if request.id.is_empty() {
            format!(
                "{}-{}",
                request.to_version,
                self.replica.current().revision() + 1
            )
        } else {
            request.id
        };
        let rollout = Rollout {
            id: id.clone(),
            service: request.service.clone(),
            to_version: request.to_version.clone(),
            basis_points: 0,
            salt: String::new(),
            cohort,
            plan: Some(RolloutPlan {
                from_version: String::new(),
                steps,
                interval_ms: request.interval_seconds.saturating_mul(1000),
                analysis,
                phase: RolloutPhase::Running,
                step: 0,
                step_started_ms: now,
                failed_checks: 0,
                decisions: Vec::new(),
            }),
        };
        let mutation = Mutation::StartRollout {
            rollout,
            force: request.force,
        };
        if let Some(schemas) = &self.schemas {
            // The first step's tenants get the schema of the new version before they move.
            let state = self.replica.current();
            let (after, _) = state.apply(&mutation).map_err(invalid)?;
            let refused = schemas
                .prepare_moves(&state, &after, &request.service)
                .await;
            if !refused.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "{} tenant(s) of the first step cannot get the schema of {}: {}",
                    refused.len(),
                    request.to_version,
                    refused.join("; ")
                )));
            }
        }
        let commit = self.commit(mutation, &actor).await?;
        self.rollout_response(&request.service, &id, commit.revision)
    }

    async fn get_rollout(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        let request = request.into_inner();
        validate::name("service", &request.service).map_err(invalid)?;
        validate::name("id", &request.id).map_err(invalid)?;
        let revision = self.replica.current().revision();
        self.rollout_response(&request.service, &request.id, revision)
    }

    async fn list_rollouts(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        let service = request.into_inner().service;
        validate::optional_name("service", &service).map_err(invalid)?;
        let state = self.replica.current();
        if !service.is_empty() && state.service(&service).is_none() {
            return Err(invalid(RoutingError::not_found(Entity::Service, &service)));
        }
        let rollouts = state
            .services()
            .filter(|entry| service.is_empty() || entry.service.name == service)
            .flat_map(|entry| entry.rollouts().iter().map(convert::rollout_message))
            .collect();
        Ok(Response::new(pb::ListRolloutsResponse {
            rollouts,
            revision: state.revision(),
        }))
    }

    async fn pause_rollout(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        self.control_rollout(request, RolloutEvent::Paused).await
    }

    async fn resume_rollout(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        self.control_rollout(request, RolloutEvent::Resumed).await
    }

    async fn promote_rollout(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        self.control_rollout(request, RolloutEvent::Promoted).await
    }

    async fn abort_rollout(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        self.control_rollout(request, RolloutEvent::Aborted).await
    }

    async fn create_experiment(
        &self,
        request: Request<pb::CreateExperimentRequest>,
    ) -> Result<Response<pb::ExperimentResponse>, Status> {
        let actor = Actor::from_metadata(request.metadata())?;
        let request = request.into_inner();
        validate::name("service", &request.service).map_err(invalid)?;
        validate::name("id", &request.id).map_err(invalid)?;
        let state = self.replica.current();
        if state
            .service(&request.service)
            .is_some_and(|s| s.experiments().iter().any(|e| e.id == request.id))
        {
            return Err(invalid(RoutingError::FailedPrecondition(format!(
                "experiment '{}' of service '{}' already exists",
                request.id, request.service
            ))));
        }
        let experiment = Experiment {
            id: request.id.clone(),
            service: request.service.clone(),
            salt: format!("{}/{}", request.service, request.id),
            variants: convert::variants(request.variants),
            cohort: convert::cohort(request.cohort).map_err(invalid)?,
            sticky: Default::default(),
        };
        let commit = self
            .commit(Mutation::UpsertExperiment { experiment }, &actor)
            .await?;
        self.experiment_response(&request.service, &request.id, commit.revision)
    }

    async fn update_experiment(
        &self,
        request: Request<pb::UpdateExperimentRequest>,
    ) -> Result<Response<pb::ExperimentResponse>, Status> {
        let actor = Actor::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let commit = self
            .commit(
                Mutation::UpdateExperiment {
                    service: request.service.clone(),
                    experiment_id: request.id.clone(),
                    variants: convert::variants(request.variants),
                    rebalance: request.rebalance,
                },
                &actor,
            )
            .await?;
        self.experiment_response(&request.service, &request.id, commit.revision)
    }

    async fn get_experiment(
        &self,
        request: Request<pb::GetExperimentRequest>,
    ) -> Result<Response<pb::ExperimentResponse>, Status> {
        let request = request.into_inner();
        validate::name("service", &request.service).map_err(invalid)?;
        validate::name("id", &request.id).map_err(invalid)?;
        let revision = self.replica.current().revision();
        self.experiment_response(&request.service, &request.id, revision)
    }

    async fn stop_experiment(
        &self,
        request: Request<pb::StopExperimentRequest>,
    ) -> Result<Response<pb::StopExperimentResponse>, Status> {
        let actor = Actor::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let commit = self
            .commit(
                Mutation::RemoveExperiment {
                    service: request.service,
                    experiment_id: request.id,
                },
                &actor,
            )
            .await?;
        Ok(Response::new(pb::StopExperimentResponse {
            revision: commit.revision,
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let request = request.into_inner();
        validate::optional_name("tenant_id", &request.tenant_id).map_err(invalid)?;
        validate::optional_name("service", &request.service).map_err(invalid)?;
        let limit = match request.limit as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let mut events = Vec::new();
        let mut reply_bytes = 0;
        let mut at = request.since_revision;
        // Reads the log in pages until the page is full or the log ends; at most this many
        // changes are scanned per call, so a narrow filter over a long log answers in parts.
        let mut scanned = 0;
        while events.len() < limit && scanned < MAX_EVENTS_SCANNED && reply_bytes < MAX_REPLY_BYTES
        {
            let changes = self
                .replica
                .store()
                .changes_after(at, MAX_PAGE, std::time::Duration::ZERO)
                .await
                .map_err(|e| status::store(&e))?;
            let Some(last) = changes.last() else { break };
            at = last.revision;
            scanned += changes.len();
            for change in changes {
                let (tenant_id, service) = audit::subject(&change.mutation);
                let tenant_matches = request.tenant_id.is_empty()
                    || tenant_id == request.tenant_id
                    || (tenant_id.is_empty() && !service.is_empty());
                let service_matches = request.service.is_empty() || service == request.service;
                if !(tenant_matches && service_matches) {
                    continue;
                }
                let event = pb::Event {
                    revision: change.revision,
                    at_ms: change.meta.at_ms,
                    actor: change.meta.actor,
                    reason: change.meta.reason,
                    kind: audit::kind(&change.mutation).to_owned(),
                    tenant_id,
                    service,
                    before: change.meta.before,
                    after: change.meta.after,
                };
                reply_bytes += prost::Message::encoded_len(&event);
                events.push(event);
                // A full page, or a reply as large as one reply may be: the rest is the next page.
                if events.len() == limit || reply_bytes >= MAX_REPLY_BYTES {
                    at = change.revision;
                    break;
                }
            }
        }
        Ok(Response::new(pb::ListEventsResponse {
            events,
            next_revision: at,
        }))
    }

    async fn upgrade_schema(
        &self,
        request: Request<pb::UpgradeSchemaRequest>,
    ) -> Result<Response<pb::UpgradeSchemaResponse>, Status> {
        let schemas = self.schemas()?;
        let request = request.into_inner();
        validate::name("service", &request.service).map_err(invalid)?;
        let catalog = schemas
            .migrator()
            .catalog()
            .service(&request.service)
            .ok_or_else(|| {
                status::schema(&SchemaError::NoCatalog {
                    service: request.service.clone(),
                })
            })?;
        let target = match request.target_schema {
            Some(target) => target,
            None => {
                validate::name("target_version", &request.target_version).map_err(invalid)?;
                catalog
                    .required_for(&request.target_version)
                    .ok_or_else(|| {
                        invalid(RoutingError::not_found(
                            Entity::Version,
                            format!(
                                "{}/{} in the migration manifest",
                                request.service, request.target_version
                            ),
                        ))
                    })?
            }
        };
        if target > catalog.latest() {
            return Err(status::schema(&SchemaError::UnknownSchemaVersion {
                service: request.service.clone(),
                version: target,
            }));
        }
        let state = self.replica.current();
        let tenants: Vec<routing_core::Tenant> = if request.tenant_ids.is_empty() {
            let cohort = convert::cohort(request.cohort).map_err(invalid)?;
            state
                .tenants_after(None)
                .filter(|t| t.tenant.active && cohort.contains(&t.tenant))
                .map(|t| t.tenant.clone())
                .collect()
        } else {
            let ids = convert::names("tenant_ids", request.tenant_ids).map_err(invalid)?;
            ids.iter()
                .map(|id| {
                    state
                        .tenant(id)
                        .map(|t| t.tenant.clone())
                        .ok_or_else(|| invalid(RoutingError::not_found(Entity::Tenant, id)))
                })
                .collect::<Result<_, _>>()?
        };
        if !request.dry_run {
            let upgrade_id = schemas.start(tenants, &request.service, target);
            return Ok(Response::new(pb::UpgradeSchemaResponse {
                upgrade_id,
                target_schema: target,
                plans: Vec::new(),
            }));
        }
        let mut plans = Vec::with_capacity(tenants.len());
        for tenant in &tenants {
            let plan = schemas
                .migrator()
                .plan(tenant, &request.service, target)
                .await;
            plans.push(match plan {
                Ok(plan) => pb::TenantSchemaPlan {
                    tenant_id: tenant.id.clone(),
                    from: plan.from,
                    to: plan.to,
                    steps: plan
                        .steps
                        .iter()
                        .map(|step| pb::SchemaStep {
                            version: step.version,
                            name: step.name.clone(),
                            direction: schema::direction(step.direction).to_owned(),
                        })
                        .collect(),
                    error: String::new(),
                },
                Err(err) => pb::TenantSchemaPlan {
                    tenant_id: tenant.id.clone(),
                    error: err.to_string(),
                    ..Default::default()
                },
            });
        }
        Ok(Response::new(pb::UpgradeSchemaResponse {
            upgrade_id: String::new(),
            target_schema: target,
            plans,
        }))
    }

    async fn get_schema_upgrade(
        &self,
        request: Request<pb::GetSchemaUpgradeRequest>,
    ) -> Result<Response<pb::SchemaUpgrade>, Status> {
        let id = request.into_inner().upgrade_id;
        validate::name("upgrade_id", &id).map_err(invalid)?;
        let upgrade = self.schemas()?.upgrade(&id).ok_or_else(|| {
            Status::not_found(format!("schema upgrade '{id}' not found on this router"))
        })?;
        Ok(Response::new(upgrade.snapshot()))
    }

    type WatchSchemaUpgradeStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::SchemaUpgrade, Status>> + Send>,
    >;

    async fn watch_schema_upgrade(
        &self,
        request: Request<pb::GetSchemaUpgradeRequest>,
    ) -> Result<Response<Self::WatchSchemaUpgradeStream>, Status> {
        let id = request.into_inner().upgrade_id;
        validate::name("upgrade_id", &id).map_err(invalid)?;
        let upgrade = self.schemas()?.upgrade(&id).ok_or_else(|| {
            Status::not_found(format!("schema upgrade '{id}' not found on this router"))
        })?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut changes = upgrade.subscribe();
            loop {
                changes.borrow_and_update();
                let snapshot = upgrade.snapshot();
                let finished = snapshot.state == "finished";
                if sender.send(Ok(snapshot)).await.is_err() || finished {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn get_tenant_schema(
        &self,
        request: Request<pb::GetTenantSchemaRequest>,
    ) -> Result<Response<pb::GetTenantSchemaResponse>, Status> {
        let schemas = self.schemas()?;
        let request = request.into_inner();
        validate::name("tenant_id", &request.tenant_id).map_err(invalid)?;
        validate::optional_name("service", &request.service).map_err(invalid)?;
        let state = self.replica.current();
        let tenant = state
            .tenant(&request.tenant_id)
            .ok_or_else(|| invalid(RoutingError::not_found(Entity::Tenant, &request.tenant_id)))?;
        let catalogs: Vec<_> = schemas
            .migrator()
            .catalog()
            .services()
            .filter(|c| request.service.is_empty() || c.service == request.service)
            .collect();
        if !request.service.is_empty() && catalogs.is_empty() {
            return Err(status::schema(&SchemaError::NoCatalog {
                service: request.service,
            }));
        }
        let mut services = Vec::new();
        for catalog in catalogs {
            let status = schemas
                .migrator()
                .status(&tenant.tenant, &catalog.service)
                .await
                .map_err(|e| status::schema(&e))?;
            let required = state
                .service(&catalog.service)
                .map(|service| service.resolve(tenant).version)
                .and_then(|version| catalog.required_for(&version))
                .unwrap_or(0);
            services.push(pb::ServiceSchema {
                service: catalog.service.clone(),
                current: status.current,
                required,
                latest: catalog.latest(),
                history: status
                    .history
                    .iter()
                    .map(|applied| pb::AppliedMigration {
                        version: applied.version,
                        name: applied.name.clone(),
                        checksum: applied.checksum.clone(),
                        direction: applied.direction.clone(),
                        applied_at_ms: applied.applied_at_ms,
                        duration_ms: applied.duration_ms,
                        success: applied.success,
                        applied_by: applied.applied_by.clone(),
                        error: applied.error.clone().unwrap_or_default(),
                    })
                    .collect(),
            });
        }
        Ok(Response::new(pb::GetTenantSchemaResponse {
            tenant_id: request.tenant_id,
            services,
        }))
    }

    async fn adopt_store_history(
        &self,
        request: Request<pb::AdoptStoreHistoryRequest>,
    ) -> Result<Response<pb::AdoptStoreHistoryResponse>, Status> {
        let actor = Actor::from_metadata(request.metadata())?;
        let request = request.into_inner();
        validate::optional_name("retired_history", &request.retired_history).map_err(invalid)?;
        tracing::warn!(actor = ?actor.name, retired = %request.retired_history, "adopting the store's history");
        let adoption = self
            .replica
            .adopt_store_history(&request.retired_history)
            .await
            .map_err(|e| status::store(&e))?;
        Ok(Response::new(pb::AdoptStoreHistoryResponse {
            retired_history: adoption.retired,
            history: adoption.history,
            revision: adoption.revision,
        }))
    }
}

impl AdminService {
    fn rollout_response(
        &self,
        service: &str,
        id: &str,
        revision: u64,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        let state = self.replica.current();
        let rollout = state
            .service(service)
            .ok_or_else(|| invalid(RoutingError::not_found(Entity::Service, service)))?
            .rollouts()
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| {
                invalid(RoutingError::not_found(
                    Entity::Rollout,
                    format!("{service}/{id}"),
                ))
            })?;
        Ok(Response::new(pb::RolloutResponse {
            rollout: Some(convert::rollout_message(rollout)),
            revision,
        }))
    }

    fn experiment_response(
        &self,
        service: &str,
        id: &str,
        revision: u64,
    ) -> Result<Response<pb::ExperimentResponse>, Status> {
        let state = self.replica.current();
        let experiment = state
            .service(service)
            .ok_or_else(|| invalid(RoutingError::not_found(Entity::Service, service)))?
            .experiments()
            .iter()
            .find(|e| e.id == id)
            .ok_or_else(|| {
                invalid(RoutingError::not_found(
                    Entity::Experiment,
                    format!("{service}/{id}"),
                ))
            })?;
        Ok(Response::new(pb::ExperimentResponse {
            experiment: Some(convert::experiment_message(&state, experiment)),
            revision,
        }))
    }

    async fn control_rollout(
        &self,
        request: Request<pb::RolloutActionRequest>,
        event: RolloutEvent,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        let actor = Actor::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let actor = actor.with_reason(&request.reason)?;
        validate::name("service", &request.service).map_err(invalid)?;
        validate::name("id", &request.id).map_err(invalid)?;
        let note = if actor.reason.is_empty() {
            format!("by {}", actor.name)
        } else {
            format!("by {}: {}", actor.name, actor.reason)
        };
        let decision = RolloutDecision {
            at_ms: audit::now_ms(),
            step: 0,
            basis_points: 0,
            event,
            canary: None,
            baseline: None,
            note,
        };
        let commit = self
            .commit(
                Mutation::ControlRollout {
                    service: request.service.clone(),
                    rollout_id: request.id.clone(),
                    decision,
                    force: request.force,
                },
                &actor,
            )
            .await?;
        self.rollout_response(&request.service, &request.id, commit.revision)
    }
}
