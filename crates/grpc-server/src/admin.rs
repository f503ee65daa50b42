//! The `Admin` service: tenants, services, instances and version assignments.
//!
//! Reads answer from this router's replica; mutations go to the store, which applies them
//! atomically, and are answered once the replica has applied them.

use std::sync::Arc;

use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::admin_server::Admin;
use greyrouter_store::Commit;
use routing_core::{Entity, Mutation, Outcome, RoutingError, validate};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::replica::Replica;
use crate::status;

/// Default and largest page of `ListTenants`.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Serves `greyrouter.v1.Admin`.
#[derive(Debug, Clone)]
pub struct AdminService {
    replica: Arc<Replica>,
}

impl AdminService {
    /// Returns the service over a replica.
    pub fn new(replica: Arc<Replica>) -> Self {
        AdminService { replica }
    }

    async fn commit(&self, mutation: Mutation) -> Result<Commit, Status> {
        let kind = mutation_name(&mutation);
        let result = self.replica.commit(mutation).await;
        match &result {
            Ok(commit) => tracing::info!(mutation = kind, revision = commit.revision, "committed"),
            Err(err) => tracing::debug!(mutation = kind, %err, "refused"),
        }
        result.map_err(|e| status::store(&e))
    }
}

fn mutation_name(mutation: &Mutation) -> &'static str {
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
        Mutation::RemoveExperiment { .. } => "remove_experiment",
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
        let tenant = convert::required("tenant", request.into_inner().tenant).map_err(invalid)?;
        let commit = self
            .commit(Mutation::UpsertTenant {
                tenant: convert::tenant(tenant),
            })
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
        let request = request.into_inner();
        let service = convert::required("service", request.service)
            .and_then(convert::service)
            .map_err(invalid)?;
        let commit = self
            .commit(Mutation::UpsertService {
                service,
                force: request.force,
            })
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
        let instance = convert::required("instance", request.into_inner().instance)
            .and_then(convert::instance)
            .map_err(invalid)?;
        let commit = self.commit(Mutation::RegisterInstance { instance }).await?;
        Ok(Response::new(pb::RegisterInstanceResponse {
            revision: commit.revision,
        }))
    }

    async fn deregister_instance(
        &self,
        request: Request<pb::DeregisterInstanceRequest>,
    ) -> Result<Response<pb::DeregisterInstanceResponse>, Status> {
        let request = request.into_inner();
        let commit = self
            .commit(Mutation::DeregisterInstance {
                service: request.service,
                instance_id: request.instance_id,
            })
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
        let request = request.into_inner();
        let commit = self
            .commit(Mutation::SetDefaultVersion {
                service: request.service,
                version: request.version,
                force: request.force,
            })
            .await?;
        Ok(Response::new(pb::SetDefaultVersionResponse {
            revision: commit.revision,
        }))
    }

    async fn set_tenant_version(
        &self,
        request: Request<pb::SetTenantVersionRequest>,
    ) -> Result<Response<pb::SetTenantVersionResponse>, Status> {
        let request = request.into_inner();
        let commit = self
            .commit(Mutation::SetTenantVersion {
                tenant_id: request.tenant_id,
                service: request.service,
                version: request.version,
                expected_version: request.expected_version,
                force: request.force,
            })
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
        let request = request.into_inner();
        let commit = self
            .commit(Mutation::ClearTenantVersion {
                tenant_id: request.tenant_id,
                service: request.service,
            })
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
        let request = request.into_inner();
        let tenant_ids = convert::names("tenant_ids", request.tenant_ids).map_err(invalid)?;
        let commit = self
            .commit(Mutation::EmergencyRollback {
                service: request.service,
                from_version: request.from_version,
                to_version: request.to_version,
                tenant_ids,
                force: request.force,
            })
            .await?;
        let (override_id, moved_tenants) = match commit.outcome {
            Outcome::RolledBack {
                override_id,
                moved_tenants,
            } => (override_id, moved_tenants),
            _ => (String::new(), 0),
        };
        tracing::warn!(revision = commit.revision, %override_id, moved_tenants, "emergency rollback");
        Ok(Response::new(pb::EmergencyRollbackResponse {
            revision: commit.revision,
            moved_tenants,
            override_id,
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
        let request = request.into_inner();
        let commit = self
            .commit(Mutation::ClearOverride {
                service: request.service,
                override_id: request.override_id,
            })
            .await?;
        Ok(Response::new(pb::ClearOverrideResponse {
            revision: commit.revision,
        }))
    }
}
