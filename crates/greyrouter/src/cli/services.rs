//! `greyrouter service` and `greyrouter instance`: services, their default versions, and instances.

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum ServiceCommand {
    /// Lists services.
    List,
    /// Creates or updates a service.
    Upsert {
        service: String,
        #[arg(long)]
        default_version: String,
        #[arg(long, default_value = "round_robin")]
        strategy: Strategy,
        /// Declares a version (repeatable).
        #[arg(long = "version")]
        versions: Vec<String>,
        #[arg(long)]
        force: bool,
    },
    /// Sets a service's default version.
    SetDefault {
        service: String,
        version: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum InstanceCommand {
    /// Registers an instance.
    Register {
        #[arg(long)]
        service: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        id: String,
        /// host:port
        #[arg(long)]
        address: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[arg(long, default_value = "")]
        region: String,
        #[arg(long, default_value = "")]
        zone: String,
        /// 0-100, for health_aware.
        #[arg(long, default_value_t = 100)]
        health_score: u32,
        /// Registers it as unhealthy.
        #[arg(long)]
        unhealthy: bool,
        /// Metadata, KEY=VALUE (repeatable).
        #[arg(long = "meta", value_parser = key_value)]
        metadata: Vec<(String, String)>,
        /// Removed unless heartbeats (Admin/Heartbeat) renew it within this many seconds;
        /// 0: stays until deregistered.
        #[arg(long, default_value_t = 0)]
        ttl_seconds: u32,
    },
    /// Removes an instance.
    Deregister { service: String, instance: String },
    /// Renews the TTL of instances registered with `--ttl-seconds` (run it more often than the
    /// TTL, e.g. from the instance's own scheduler); fails when an id is unknown.
    Heartbeat {
        service: String,
        /// Instance ids (at most 1,000).
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// Lists a service's instances.
    List {
        service: String,
        #[arg(long, default_value = "")]
        version: String,
    },
}

pub(super) async fn service(
    command: ServiceCommand,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    match command {
        ServiceCommand::List => {
            let response = admin
                .list_services(pb::ListServicesRequest {})
                .await
                .map_err(call_error)?
                .into_inner();
            let strategy_name = |value: i32| {
                convert::strategy("strategy", value)
                    .ok()
                    .flatten()
                    .unwrap_or_default()
                    .to_string()
            };
            let rows = response
                .services
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.default_version.clone(),
                        strategy_name(s.strategy),
                        s.versions.join(","),
                    ]
                })
                .collect();
            let values = response
                .services
                .iter()
                .map(|s| {
                    json!({"name": s.name, "default_version": s.default_version,
                           "strategy": strategy_name(s.strategy), "versions": s.versions})
                })
                .collect();
            out.table(
                &["NAME", "DEFAULT", "STRATEGY", "VERSIONS"],
                rows,
                Value::Array(values),
            );
        }
        ServiceCommand::Upsert {
            service,
            default_version,
            strategy,
            versions,
            force,
        } => {
            let response = admin
                .upsert_service(pb::UpsertServiceRequest {
                    service: Some(pb::Service {
                        name: service.clone(),
                        default_version,
                        strategy: pb::Strategy::from(strategy).into(),
                        versions,
                    }),
                    force,
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.revision(&format!("service {service} saved"), response.revision);
        }
        ServiceCommand::SetDefault {
            service,
            version,
            force,
        } => {
            let response = admin
                .set_default_version(pb::SetDefaultVersionRequest {
                    service: service.clone(),
                    version: version.clone(),
                    force,
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.revision(
                &format!("service {service} defaults to {version}"),
                response.revision,
            );
        }
    }
    Ok(())
}

pub(super) async fn instance(
    command: InstanceCommand,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    match command {
        InstanceCommand::Register {
            service,
            version,
            id,
            address,
            weight,
            region,
            zone,
            health_score,
            unhealthy,
            metadata,
            ttl_seconds,
        } => {
            let response = admin
                .register_instance(pb::RegisterInstanceRequest {
                    instance: Some(pb::Instance {
                        id: id.clone(),
                        address,
                        service,
                        version,
                        weight: Some(weight),
                        region,
                        zone,
                        metadata: metadata.into_iter().collect(),
                        healthy: Some(!unhealthy),
                        health_score: Some(health_score),
                    }),
                    ttl_seconds,
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.revision(&format!("instance {id} registered"), response.revision);
        }
        InstanceCommand::Deregister { service, instance } => {
            let response = admin
                .deregister_instance(pb::DeregisterInstanceRequest {
                    service,
                    instance_id: instance.clone(),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.revision(
                &format!("instance {instance} deregistered"),
                response.revision,
            );
        }
        InstanceCommand::Heartbeat { service, instances } => {
            let response = admin
                .heartbeat(pb::HeartbeatRequest {
                    service,
                    instance_ids: instances,
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.message(
                format!("{} instance(s) renewed", response.renewed),
                json!({"renewed": response.renewed, "unknown": response.unknown}),
            );
            if !response.unknown.is_empty() {
                anyhow::bail!(
                    "unknown (expired, never registered, or without a TTL; register again): {}",
                    response.unknown.join(", ")
                );
            }
        }
        InstanceCommand::List { service, version } => {
            let response = admin
                .list_instances(pb::ListInstancesRequest { service, version })
                .await
                .map_err(call_error)?
                .into_inner();
            let rows = response
                .instances
                .iter()
                .map(|i| {
                    vec![
                        i.id.clone(),
                        i.address.clone(),
                        i.version.clone(),
                        i.weight.unwrap_or(1).to_string(),
                        i.region.clone(),
                        i.zone.clone(),
                        i.healthy.unwrap_or(true).to_string(),
                        i.health_score.unwrap_or(100).to_string(),
                    ]
                })
                .collect();
            let values = response
                .instances
                .iter()
                .map(|i| {
                    json!({"id": i.id, "address": i.address, "service": i.service,
                           "version": i.version, "weight": i.weight.unwrap_or(1),
                           "region": i.region, "zone": i.zone,
                           "healthy": i.healthy.unwrap_or(true),
                           "health_score": i.health_score.unwrap_or(100),
                           "metadata": convert::sorted(&i.metadata)})
                })
                .collect();
            out.table(
                &[
                    "ID", "ADDRESS", "VERSION", "WEIGHT", "REGION", "ZONE", "HEALTHY", "SCORE",
                ],
                rows,
                Value::Array(values),
            );
        }
    }
    Ok(())
}
