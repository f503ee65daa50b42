//! `greyrouter tenant`: list, show, upsert, pin and unpin tenants.

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum TenantCommand {
    /// Lists every tenant.
    List,
    /// Shows a tenant and each service's effective version and source.
    Show { tenant: String },
    /// Creates or updates a tenant.
    Upsert {
        tenant: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        region: String,
        #[arg(long, default_value = "")]
        tier: String,
        /// Label, KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = key_value)]
        labels: Vec<(String, String)>,
        /// Creates the tenant inactive (not routed).
        #[arg(long)]
        inactive: bool,
    },
    /// Pins a tenant to a version of a service.
    SetVersion {
        tenant: String,
        service: String,
        version: String,
        /// Only if the tenant is currently on this version (compare-and-set).
        #[arg(long)]
        expect: Option<String>,
        /// Allows a version without a healthy instance.
        #[arg(long)]
        force: bool,
        /// Upgrades the tenant's schema first when the version needs it.
        #[arg(long)]
        migrate: bool,
    },
    /// Removes a tenant's pin.
    ClearVersion { tenant: String, service: String },
}

pub(super) async fn tenant(
    command: TenantCommand,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    match command {
        TenantCommand::List => {
            let mut tenants = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = admin
                    .list_tenants(pb::ListTenantsRequest {
                        page_size: 1000,
                        page_token,
                    })
                    .await
                    .map_err(call_error)?
                    .into_inner();
                tenants.extend(page.tenants);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            let rows = tenants
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        t.region.clone(),
                        t.tier.clone(),
                        t.active.to_string(),
                        labels(&t.labels),
                    ]
                })
                .collect();
            let values = tenants.iter().map(tenant_json).collect();
            out.table(
                &["ID", "NAME", "REGION", "TIER", "ACTIVE", "LABELS"],
                rows,
                Value::Array(values),
            );
        }
        TenantCommand::Show { tenant } => {
            let response = admin
                .get_tenant_services(pb::GetTenantServicesRequest { tenant_id: tenant })
                .await
                .map_err(call_error)?
                .into_inner();
            let info = response.tenant.unwrap_or_default();
            let services: Vec<Value> = response
                .services
                .iter()
                .map(|s| {
                    json!({"service": s.service, "version": s.version, "source": s.source,
                           "pinned_version": s.pinned_version})
                })
                .collect();
            if out.0 == Output::Json {
                out.json(json!({"tenant": tenant_json(&info), "services": services,
                                "revision": response.revision}));
            } else {
                println!(
                    "tenant {} ({}) region={} tier={} active={} revision={}",
                    info.id, info.name, info.region, info.tier, info.active, response.revision
                );
                let rows = response
                    .services
                    .iter()
                    .map(|s| {
                        vec![
                            s.service.clone(),
                            s.version.clone(),
                            s.source.clone(),
                            s.pinned_version.clone(),
                        ]
                    })
                    .collect();
                out.table(
                    &["SERVICE", "VERSION", "SOURCE", "PINNED"],
                    rows,
                    Value::Null,
                );
            }
        }
        TenantCommand::Upsert {
            tenant,
            name,
            region,
            tier,
            labels,
            inactive,
        } => {
            let response = admin
                .upsert_tenant(pb::UpsertTenantRequest {
                    tenant: Some(pb::Tenant {
                        id: tenant.clone(),
                        name,
                        region,
                        tier,
                        labels: labels.into_iter().collect(),
                        active: !inactive,
                    }),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.revision(&format!("tenant {tenant} saved"), response.revision);
        }
        TenantCommand::SetVersion {
            tenant,
            service,
            version,
            expect,
            force,
            migrate,
        } => {
            let response = admin
                .set_tenant_version(pb::SetTenantVersionRequest {
                    tenant_id: tenant.clone(),
                    service: service.clone(),
                    version: version.clone(),
                    expected_version: expect,
                    force,
                    migrate,
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.message(
                format!(
                    "tenant {tenant} pinned to {service} {version} (was {}), revision {}",
                    response.previous_version, response.revision
                ),
                json!({"previous_version": response.previous_version, "revision": response.revision}),
            );
        }
        TenantCommand::ClearVersion { tenant, service } => {
            let response = admin
                .clear_tenant_version(pb::ClearTenantVersionRequest {
                    tenant_id: tenant.clone(),
                    service: service.clone(),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            let what = if response.cleared {
                "pin removed"
            } else {
                "no pin to remove"
            };
            out.message(
                format!(
                    "tenant {tenant} {service}: {what}, revision {}",
                    response.revision
                ),
                json!({"cleared": response.cleared, "revision": response.revision}),
            );
        }
    }
    Ok(())
}

fn tenant_json(t: &pb::Tenant) -> Value {
    json!({"id": t.id, "name": t.name, "region": t.region, "tier": t.tier,
           "labels": convert::sorted(&t.labels), "active": t.active})
}
