//! The `Admin` service: each call converts its request, calls the node, and converts the answer.

use std::sync::Arc;

use control::access::Caller;
use control::declarative::MAX_STATE_BYTES;
use control::node::{
    EmergencyRollback, EventQuery, ExperimentView, RolloutView, SetTenantVersion, StartRollout,
    UpgradeSchema,
};
use control::schema::{SchemaUpgrade, direction};
use control::{Actor, Node};
use greyrouter_proto::domain;
use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::admin_server::Admin;
use routing_core::model::RolloutEvent;
use routing_core::state::plan::Section;
use routing_core::{Instance, Service, StateDump, Tenant, Variant};
use tonic::{Request, Response, Status};

use crate::access;
use crate::status::{self, status};

/// Bytes of state JSON per `ExportState` message (well under any client's message limit).
const STATE_CHUNK_BYTES: usize = 1024 * 1024;

/// Serves `greyrouter.v1.Admin`.
#[derive(Debug, Clone)]
pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    /// Returns the service over a node.
    pub fn new(node: Arc<Node>) -> Self {
        AdminService { node }
    }
}

fn failed(err: control::Error) -> Status {
    status(&err)
}

fn invalid(err: routing_core::RoutingError) -> Status {
    status::routing(err)
}

fn rollout_response(view: RolloutView) -> Response<pb::RolloutResponse> {
    Response::new(pb::RolloutResponse {
        rollout: Some(pb::Rollout::from(&view.rollout)),
        revision: view.revision,
    })
}

fn experiment_response(view: ExperimentView) -> Response<pb::ExperimentResponse> {
    Response::new(pb::ExperimentResponse {
        experiment: Some(domain::experiment_message(
            &view.experiment,
            view.tenants_per_variant,
        )),
        revision: view.revision,
    })
}

fn variants(messages: Vec<pb::Variant>) -> Vec<Variant> {
    messages.into_iter().map(Variant::from).collect()
}

/// Returns the message of a schema upgrade's progress.
pub fn upgrade_message(upgrade: SchemaUpgrade) -> pb::SchemaUpgrade {
    pb::SchemaUpgrade {
        upgrade_id: upgrade.upgrade_id,
        service: upgrade.service,
        target_schema: upgrade.target_schema,
        state: upgrade.state,
        done: upgrade.done,
        failed: upgrade.failed,
        total: upgrade.total,
        tenants: upgrade
            .tenants
            .into_iter()
            .map(|t| pb::TenantUpgrade {
                tenant_id: t.tenant_id,
                state: t.state,
                from: t.from,
                current: t.current,
                step: t.step,
                error: t.error,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn upsert_tenant(
        &self,
        request: Request<pb::UpsertTenantRequest>,
    ) -> Result<Response<pb::UpsertTenantResponse>, Status> {
        let tenant_id = request
            .get_ref()
            .tenant
            .as_ref()
            .map(|t| t.id.clone())
            .unwrap_or_default();
        let actor = self.admit_actor(&request, "UpsertTenant", &[&tenant_id])?;
        let tenant = domain::required("tenant", request.into_inner().tenant).map_err(invalid)?;
        let commit = self
            .node
            .upsert_tenant(Tenant::from(tenant), &actor)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::UpsertTenantResponse {
            revision: commit.revision,
        }))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let caller = self.admit(&request, "ListTenants", &[])?;
        let request = request.into_inner();
        let page = self
            .node
            .list_tenants(&request.page_token, request.page_size)
            .map_err(failed)?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: page
                .tenants
                .iter()
                .filter(|tenant| caller.sees(tenant))
                .map(pb::Tenant::from)
                .collect(),
            next_page_token: page.next_page_token,
            revision: page.revision,
        }))
    }

    async fn upsert_service(
        &self,
        request: Request<pb::UpsertServiceRequest>,
    ) -> Result<Response<pb::UpsertServiceResponse>, Status> {
        let actor = self.admit_actor(&request, "UpsertService", &[])?;
        let request = request.into_inner();
        let service = domain::required("service", request.service)
            .and_then(Service::try_from)
            .map_err(invalid)?;
        let commit = self
            .node
            .upsert_service(service, request.force, &actor)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::UpsertServiceResponse {
            revision: commit.revision,
        }))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        self.admit(&request, "ListServices", &[])?;
        let listed = self.node.list_services();
        Ok(Response::new(pb::ListServicesResponse {
            services: listed.items.iter().map(pb::Service::from).collect(),
            revision: listed.revision,
        }))
    }

    async fn register_instance(
        &self,
        request: Request<pb::RegisterInstanceRequest>,
    ) -> Result<Response<pb::RegisterInstanceResponse>, Status> {
        let actor = self.admit_actor(&request, "RegisterInstance", &[])?;
        let request = request.into_inner();
        let instance = domain::required("instance", request.instance)
            .and_then(Instance::try_from)
            .map_err(invalid)?;
        let ttl = (request.ttl_seconds > 0)
            .then(|| std::time::Duration::from_secs(u64::from(request.ttl_seconds)));
        let commit = self
            .node
            .register_instance(instance, ttl, &actor)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::RegisterInstanceResponse {
            revision: commit.revision,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.admit(&request, "Heartbeat", &[])?;
        let request = request.into_inner();
        let (renewed, unknown) = self
            .node
            .heartbeat(&request.service, &request.instance_ids)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::HeartbeatResponse { renewed, unknown }))
    }

    async fn deregister_instance(
        &self,
        request: Request<pb::DeregisterInstanceRequest>,
    ) -> Result<Response<pb::DeregisterInstanceResponse>, Status> {
        let actor = self.admit_actor(&request, "DeregisterInstance", &[])?;
        let request = request.into_inner();
        let commit = self
            .node
            .deregister_instance(request.service, request.instance_id, &actor)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::DeregisterInstanceResponse {
            revision: commit.revision,
        }))
    }

    async fn list_instances(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        self.admit(&request, "ListInstances", &[])?;
        let request = request.into_inner();
        let listed = self
            .node
            .list_instances(&request.service, &request.version)
            .map_err(failed)?;
        Ok(Response::new(pb::ListInstancesResponse {
            instances: listed
                .items
                .iter()
                .map(|instance| pb::Instance::from(instance.as_ref()))
                .collect(),
            revision: listed.revision,
        }))
    }

    async fn set_default_version(
        &self,
        request: Request<pb::SetDefaultVersionRequest>,
    ) -> Result<Response<pb::SetDefaultVersionResponse>, Status> {
        let actor = self.admit_actor(&request, "SetDefaultVersion", &[])?;
        let request = request.into_inner();
        let commit = self
            .node
            .set_default_version(request.service, request.version, request.force, &actor)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::SetDefaultVersionResponse {
            revision: commit.revision,
        }))
    }

    async fn set_tenant_version(
        &self,
        request: Request<pb::SetTenantVersionRequest>,
    ) -> Result<Response<pb::SetTenantVersionResponse>, Status> {
        let tenant_id = request.get_ref().tenant_id.clone();
        let actor = self.admit_actor(&request, "SetTenantVersion", &[&tenant_id])?;
        let request = request.into_inner();
        let switch = self
            .node
            .set_tenant_version(
                SetTenantVersion {
                    tenant_id: request.tenant_id,
                    service: request.service,
                    version: request.version,
                    expected_version: request.expected_version,
                    force: request.force,
                    migrate: request.migrate,
                },
                &actor,
            )
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::SetTenantVersionResponse {
            revision: switch.revision,
            previous_version: switch.previous_version,
        }))
    }

    async fn clear_tenant_version(
        &self,
        request: Request<pb::ClearTenantVersionRequest>,
    ) -> Result<Response<pb::ClearTenantVersionResponse>, Status> {
        let tenant_id = request.get_ref().tenant_id.clone();
        let actor = self.admit_actor(&request, "ClearTenantVersion", &[&tenant_id])?;
        let request = request.into_inner();
        let (revision, cleared) = self
            .node
            .clear_tenant_version(request.tenant_id, request.service, &actor)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::ClearTenantVersionResponse {
            revision,
            cleared,
        }))
    }

    async fn get_tenant_services(
        &self,
        request: Request<pb::GetTenantServicesRequest>,
    ) -> Result<Response<pb::GetTenantServicesResponse>, Status> {
        let tenant_id = request.get_ref().tenant_id.clone();
        self.admit(&request, "GetTenantServices", &[&tenant_id])?;
        let found = self
            .node
            .tenant_services(&request.into_inner().tenant_id)
            .map_err(failed)?;
        Ok(Response::new(pb::GetTenantServicesResponse {
            tenant: Some(pb::Tenant::from(&found.tenant)),
            services: found
                .services
                .into_iter()
                .map(|s| pb::TenantService {
                    service: s.service,
                    version: s.version,
                    source: s.source,
                    pinned_version: s.pinned_version,
                })
                .collect(),
            revision: found.revision,
        }))
    }

    async fn emergency_rollback(
        &self,
        request: Request<pb::EmergencyRollbackRequest>,
    ) -> Result<Response<pb::EmergencyRollbackResponse>, Status> {
        let tenant_ids = request.get_ref().tenant_ids.clone();
        let named: Vec<&str> = tenant_ids.iter().map(String::as_str).collect();
        let actor = self.admit_actor(&request, "EmergencyRollback", &named)?;
        let request = request.into_inner();
        let result = self
            .node
            .emergency_rollback(
                EmergencyRollback {
                    service: request.service,
                    from_version: request.from_version,
                    to_version: request.to_version,
                    tenant_ids: request.tenant_ids,
                    force: request.force,
                    dry_run: request.dry_run,
                    reason: request.reason,
                },
                &actor,
            )
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::EmergencyRollbackResponse {
            revision: result.revision,
            moved_tenants: result.moved_tenants,
            override_id: result.override_id,
        }))
    }

    async fn list_overrides(
        &self,
        request: Request<pb::ListOverridesRequest>,
    ) -> Result<Response<pb::ListOverridesResponse>, Status> {
        self.admit(&request, "ListOverrides", &[])?;
        let listed = self
            .node
            .list_overrides(&request.into_inner().service)
            .map_err(failed)?;
        Ok(Response::new(pb::ListOverridesResponse {
            overrides: listed.items.iter().map(pb::Override::from).collect(),
            revision: listed.revision,
        }))
    }

    async fn clear_override(
        &self,
        request: Request<pb::ClearOverrideRequest>,
    ) -> Result<Response<pb::ClearOverrideResponse>, Status> {
        let actor = self.admit_actor(&request, "ClearOverride", &[])?;
        let request = request.into_inner();
        let commit = self
            .node
            .clear_override(request.service, request.override_id, &actor)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::ClearOverrideResponse {
            revision: commit.revision,
        }))
    }

    async fn start_rollout(
        &self,
        request: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        let actor = self.admit_actor(&request, "StartRollout", &[])?;
        let request = request.into_inner();
        let start = StartRollout {
            steps: domain::steps(&request.steps).map_err(invalid)?,
            analysis: domain::analysis(request.analysis).map_err(invalid)?,
            cohort: domain::cohort(request.cohort).map_err(invalid)?,
            service: request.service,
            to_version: request.to_version,
            id: request.id,
            interval_seconds: request.interval_seconds,
            force: request.force,
        };
        let view = self
            .node
            .start_rollout(start, &actor)
            .await
            .map_err(failed)?;
        Ok(rollout_response(view))
    }

    async fn get_rollout(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        self.admit(&request, "GetRollout", &[])?;
        let request = request.into_inner();
        let view = self
            .node
            .rollout(&request.service, &request.id)
            .map_err(failed)?;
        Ok(rollout_response(view))
    }

    async fn list_rollouts(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        self.admit(&request, "ListRollouts", &[])?;
        let listed = self
            .node
            .list_rollouts(&request.into_inner().service)
            .map_err(failed)?;
        Ok(Response::new(pb::ListRolloutsResponse {
            rollouts: listed.items.iter().map(pb::Rollout::from).collect(),
            revision: listed.revision,
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
        let actor = self.admit_actor(&request, "CreateExperiment", &[])?;
        let request = request.into_inner();
        let cohort = domain::cohort(request.cohort).map_err(invalid)?;
        let view = self
            .node
            .create_experiment(
                request.service,
                request.id,
                variants(request.variants),
                cohort,
                &actor,
            )
            .await
            .map_err(failed)?;
        Ok(experiment_response(view))
    }

    async fn update_experiment(
        &self,
        request: Request<pb::UpdateExperimentRequest>,
    ) -> Result<Response<pb::ExperimentResponse>, Status> {
        let actor = self.admit_actor(&request, "UpdateExperiment", &[])?;
        let request = request.into_inner();
        let view = self
            .node
            .update_experiment(
                request.service,
                request.id,
                variants(request.variants),
                request.rebalance,
                &actor,
            )
            .await
            .map_err(failed)?;
        Ok(experiment_response(view))
    }

    async fn get_experiment(
        &self,
        request: Request<pb::GetExperimentRequest>,
    ) -> Result<Response<pb::ExperimentResponse>, Status> {
        self.admit(&request, "GetExperiment", &[])?;
        let request = request.into_inner();
        let view = self
            .node
            .experiment(&request.service, &request.id)
            .map_err(failed)?;
        Ok(experiment_response(view))
    }

    async fn stop_experiment(
        &self,
        request: Request<pb::StopExperimentRequest>,
    ) -> Result<Response<pb::StopExperimentResponse>, Status> {
        let actor = self.admit_actor(&request, "StopExperiment", &[])?;
        let request = request.into_inner();
        let commit = self
            .node
            .stop_experiment(request.service, request.id, &actor)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::StopExperimentResponse {
            revision: commit.revision,
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let caller = self.admit(&request, "ListEvents", &[])?;
        let request = request.into_inner();
        // A scoped caller reads only events about its own tenants.
        let state = self.node.snapshot();
        if !request.tenant_id.is_empty() {
            caller
                .check_tenant(&state, &request.tenant_id)
                .map_err(failed)?;
        }
        let visible = |tenant_id: &str| {
            caller.scope.is_all()
                || (!tenant_id.is_empty() && caller.scope.holds_id(&state, tenant_id))
        };
        let page = self
            .node
            .events(&EventQuery {
                since_revision: request.since_revision,
                tenant_id: request.tenant_id,
                service: request.service,
                limit: request.limit,
            })
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::ListEventsResponse {
            events: page
                .events
                .into_iter()
                .filter(|event| visible(&event.tenant_id))
                .map(|event| pb::Event {
                    revision: event.revision,
                    at_ms: event.at_ms,
                    actor: event.actor,
                    reason: event.reason,
                    kind: event.kind,
                    tenant_id: event.tenant_id,
                    service: event.service,
                    before: event.before,
                    after: event.after,
                })
                .collect(),
            next_revision: page.next_revision,
        }))
    }

    async fn upgrade_schema(
        &self,
        request: Request<pb::UpgradeSchemaRequest>,
    ) -> Result<Response<pb::UpgradeSchemaResponse>, Status> {
        let tenant_ids = request.get_ref().tenant_ids.clone();
        let named: Vec<&str> = tenant_ids.iter().map(String::as_str).collect();
        self.admit(&request, "UpgradeSchema", &named)?;
        let request = request.into_inner();
        let cohort = if request.tenant_ids.is_empty() {
            domain::cohort(request.cohort).map_err(invalid)?
        } else {
            routing_core::Cohort::default()
        };
        let started = self
            .node
            .upgrade_schema(UpgradeSchema {
                service: request.service,
                target_schema: request.target_schema,
                target_version: request.target_version,
                tenant_ids: request.tenant_ids,
                cohort,
                dry_run: request.dry_run,
            })
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::UpgradeSchemaResponse {
            upgrade_id: started.upgrade_id,
            target_schema: started.target_schema,
            plans: started
                .plans
                .into_iter()
                .map(|tenant| match tenant.plan {
                    Ok(plan) => pb::TenantSchemaPlan {
                        tenant_id: tenant.tenant_id,
                        from: plan.from,
                        to: plan.to,
                        steps: plan
                            .steps
                            .iter()
                            .map(|step| pb::SchemaStep {
                                version: step.version,
                                name: step.name.clone(),
                                direction: direction(step.direction).to_owned(),
                            })
                            .collect(),
                        error: String::new(),
                    },
                    Err(error) => pb::TenantSchemaPlan {
                        tenant_id: tenant.tenant_id,
                        error,
                        ..Default::default()
                    },
                })
                .collect(),
        }))
    }

    async fn get_schema_upgrade(
        &self,
        request: Request<pb::GetSchemaUpgradeRequest>,
    ) -> Result<Response<pb::SchemaUpgrade>, Status> {
        self.admit(&request, "GetSchemaUpgrade", &[])?;
        let upgrade = self
            .node
            .schema_upgrade(&request.into_inner().upgrade_id)
            .map_err(failed)?;
        Ok(Response::new(upgrade_message(upgrade.snapshot())))
    }

    type WatchSchemaUpgradeStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::SchemaUpgrade, Status>> + Send>,
    >;

    async fn watch_schema_upgrade(
        &self,
        request: Request<pb::GetSchemaUpgradeRequest>,
    ) -> Result<Response<Self::WatchSchemaUpgradeStream>, Status> {
        self.admit(&request, "WatchSchemaUpgrade", &[])?;
        let upgrade = self
            .node
            .schema_upgrade(&request.into_inner().upgrade_id)
            .map_err(failed)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut changes = upgrade.subscribe();
            loop {
                changes.borrow_and_update();
                let snapshot = upgrade.snapshot();
                let finished = snapshot.finished();
                if sender.send(Ok(upgrade_message(snapshot))).await.is_err() || finished {
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
        let tenant_id = request.get_ref().tenant_id.clone();
        self.admit(&request, "GetTenantSchema", &[&tenant_id])?;
        let request = request.into_inner();
        let services = self
            .node
            .tenant_schema(&request.tenant_id, &request.service)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::GetTenantSchemaResponse {
            tenant_id: request.tenant_id,
            services: services.into_iter().map(service_schema).collect(),
        }))
    }

    async fn repair_tenant_schema(
        &self,
        request: Request<pb::RepairTenantSchemaRequest>,
    ) -> Result<Response<pb::RepairTenantSchemaResponse>, Status> {
        let tenant_id = request.get_ref().tenant_id.clone();
        let actor = self.admit_actor(&request, "RepairTenantSchema", &[&tenant_id])?;
        let request = request.into_inner();
        let (rows_changed, schema) = self
            .node
            .repair_tenant_schema(&request.tenant_id, &request.service, &actor)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::RepairTenantSchemaResponse {
            tenant_id: request.tenant_id,
            rows_changed,
            schema: Some(service_schema(schema)),
        }))
    }

    async fn get_discovery_status(
        &self,
        request: Request<pb::GetDiscoveryStatusRequest>,
    ) -> Result<Response<pb::GetDiscoveryStatusResponse>, Status> {
        self.admit(&request, "GetDiscoveryStatus", &[])?;
        let sources = self
            .node
            .discovery_status()
            .into_iter()
            .map(|s| pb::DiscoverySource {
                source: s.source,
                registry: s.registry,
                leading: s.leading,
                up: s.up,
                last_sync_ms: s.last_sync_ms,
                last_success_ms: s.last_success_ms,
                error: s.error,
                instances: s.instances,
                changes: s.changes,
                held: s.held,
                skipped: s.skipped,
            })
            .collect();
        Ok(Response::new(pb::GetDiscoveryStatusResponse { sources }))
    }

    type ExportStateStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::StateChunk, Status>> + Send>>;

    async fn export_state(
        &self,
        request: Request<pb::ExportStateRequest>,
    ) -> Result<Response<Self::ExportStateStream>, Status> {
        self.admit(&request, "ExportState", &[])?;
        let request = request.into_inner();
        let dump = self
            .node
            .export_state(request.at_revision)
            .await
            .map_err(failed)?;
        let revision = dump.revision;
        let json = serde_json::to_vec(&dump).map_err(|err| Status::internal(err.to_string()))?;
        let chunks: Vec<Result<pb::StateChunk, Status>> = json
            .chunks(STATE_CHUNK_BYTES)
            .map(|data| {
                Ok(pb::StateChunk {
                    revision,
                    data: data.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn apply_state(
        &self,
        request: Request<tonic::Streaming<pb::ApplyStateRequest>>,
    ) -> Result<Response<pb::ApplyStateResponse>, Status> {
        let actor = self.admit_actor(&request, "ApplyState", &[])?;
        let mut messages = request.into_inner();
        let mut first: Option<pb::ApplyStateRequest> = None;
        let mut data = Vec::new();
        while let Some(message) = messages.message().await? {
            if data.len() + message.data.len() > MAX_STATE_BYTES {
                return Err(Status::invalid_argument(format!(
                    "invalid data: the desired state is larger than {MAX_STATE_BYTES} bytes"
                )));
            }
            data.extend_from_slice(&message.data);
            if first.is_none() {
                first = Some(pb::ApplyStateRequest {
                    data: Vec::new(),
                    ..message
                });
            }
        }
        let first = first.unwrap_or_default();
        let desired: StateDump = serde_json::from_slice(&data)
            .map_err(|err| Status::invalid_argument(format!("invalid data: {err}")))?;
        let mut sections = Vec::new();
        for name in &first.sections {
            let section = Section::parse(name).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "invalid sections: unknown section '{}'",
                    name.chars().take(64).collect::<String>()
                ))
            })?;
            if !sections.contains(&section) {
                sections.push(section);
            }
        }
        let plan = self
            .node
            .apply_state(
                &desired,
                &sections,
                first.dry_run,
                first.expected_revision,
                &actor,
            )
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::ApplyStateResponse {
            base_revision: plan.base_revision,
            steps: plan
                .steps
                .into_iter()
                .map(|step| pb::PlanStep {
                    action: step.action.as_str().to_owned(),
                    section: step.section.as_str().to_owned(),
                    key: step.key,
                    detail: step.detail,
                })
                .collect(),
            applied: plan.applied.is_some(),
            revision: plan.applied.unwrap_or(plan.base_revision),
        }))
    }

    async fn adopt_store_history(
        &self,
        request: Request<pb::AdoptStoreHistoryRequest>,
    ) -> Result<Response<pb::AdoptStoreHistoryResponse>, Status> {
        let actor = self.admit_actor(&request, "AdoptStoreHistory", &[])?;
        let request = request.into_inner();
        let adoption = self
            .node
            .adopt_store_history(&request.retired_history, &actor)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::AdoptStoreHistoryResponse {
            retired_history: adoption.retired,
            history: adoption.history,
            revision: adoption.revision,
        }))
    }
}

impl AdminService {
    /// Checks a request against the method's rule for the tenants it names.
    fn admit<T>(
        &self,
        request: &Request<T>,
        method: &str,
        tenants: &[&str],
    ) -> Result<Arc<Caller>, Status> {
        access::admit(&self.node, request, "Admin", method, tenants)
    }

    /// Checks a change and answers who makes it, for the audit trail.
    fn admit_actor<T>(
        &self,
        request: &Request<T>,
        method: &str,
        tenants: &[&str],
    ) -> Result<Actor, Status> {
        let caller = self.admit(request, method, tenants)?;
        access::actor(&caller, request)
    }

    async fn control_rollout(
        &self,
        request: Request<pb::RolloutActionRequest>,
        event: RolloutEvent,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        let method = match event {
            RolloutEvent::Paused => "PauseRollout",
            RolloutEvent::Resumed => "ResumeRollout",
            RolloutEvent::Promoted => "PromoteRollout",
            _ => "AbortRollout",
        };
        let actor = self.admit_actor(&request, method, &[])?;
        let request = request.into_inner();
        let view = self
            .node
            .control_rollout(
                request.service,
                request.id,
                event,
                request.force,
                &request.reason,
                &actor,
            )
            .await
            .map_err(failed)?;
        Ok(rollout_response(view))
    }
}

/// Returns a tenant's schema of one service on the wire.
fn service_schema(schema: control::node::ServiceSchema) -> pb::ServiceSchema {
    pb::ServiceSchema {
        service: schema.service,
        current: schema.current,
        required: schema.required,
        latest: schema.latest,
        advice: schema.advice.unwrap_or_default(),
        history: schema
            .history
            .into_iter()
            .map(|applied| pb::AppliedMigration {
                version: applied.version,
                name: applied.name,
                checksum: applied.checksum,
                direction: applied.direction,
                applied_at_ms: applied.applied_at_ms,
                duration_ms: applied.duration_ms,
                success: applied.success,
                applied_by: applied.applied_by,
                error: applied.error.unwrap_or_default(),
                statements_done: applied.statements_done,
                repaired: applied.repaired,
            })
            .collect(),
    }
}
