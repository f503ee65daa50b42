//! `greyrouter schema`: per-tenant schema plans, upgrades, rollbacks and status.

use super::*;

#[derive(Debug, Args)]
pub(super) struct SchemaTarget {
    #[arg(long)]
    service: String,
    /// Reach the schema this service version requires...
    #[arg(
        long,
        conflicts_with = "to_schema",
        required_unless_present = "to_schema"
    )]
    version: Option<String>,
    /// ...or this schema version (migration number).
    #[arg(long)]
    to_schema: Option<u32>,
    /// Only these tenants (repeatable); every active tenant (of the tiers) when absent.
    #[arg(long = "tenant")]
    tenants: Vec<String>,
    /// Only tenants of these tiers (repeatable).
    #[arg(long = "tier")]
    tiers: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(super) enum SchemaCommand {
    /// Shows each tenant's migration steps, changing nothing.
    Plan(SchemaTarget),
    /// Upgrades tenants' schemas, with a progress bar.
    Upgrade(SchemaTarget),
    /// Rolls tenants' schemas back (down migrations) to --to-schema.
    Rollback(SchemaTarget),
    /// Shows a tenant's applied schema versions and history, and what to do about a
    /// migration left half-applied.
    Status {
        tenant: String,
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Acknowledges a tenant's schema as it is, once the database is fixed: edited migrations
    /// take the catalog's checksums; a half-applied migration (MySQL) resumes at the statement
    /// that did not complete on the next upgrade.
    Repair {
        tenant: String,
        #[arg(long)]
        service: String,
    },
}

/// Returns a history row as JSON.
fn applied_json(h: &pb::AppliedMigration) -> Value {
    json!({"version": h.version, "name": h.name, "direction": h.direction, "success": h.success,
           "applied_at_ms": h.applied_at_ms, "duration_ms": h.duration_ms,
           "applied_by": h.applied_by, "error": h.error, "statements_done": h.statements_done,
           "repaired": h.repaired})
}

pub(super) async fn schema_command(
    command: SchemaCommand,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    let request = |target: SchemaTarget, dry_run: bool| pb::UpgradeSchemaRequest {
        service: target.service,
        tenant_ids: target.tenants,
        cohort: Some(pb::Cohort {
            tiers: target.tiers,
            ..Default::default()
        }),
        target_version: target.version.unwrap_or_default(),
        target_schema: target.to_schema,
        dry_run,
    };
    match command {
        SchemaCommand::Plan(target) => {
            let response = admin
                .upgrade_schema(request(target, true))
                .await
                .map_err(call_error)?
                .into_inner();
            let rows = response
                .plans
                .iter()
                .map(|p| {
                    let steps: Vec<String> = p
                        .steps
                        .iter()
                        .map(|s| format!("{} {:04}_{}", s.direction, s.version, s.name))
                        .collect();
                    let steps = if !p.error.is_empty() {
                        format!("refused: {}", p.error)
                    } else if steps.is_empty() {
                        "up to date".to_owned()
                    } else {
                        steps.join(", ")
                    };
                    vec![
                        p.tenant_id.clone(),
                        p.from.to_string(),
                        p.to.to_string(),
                        steps,
                    ]
                })
                .collect();
            let values = response
                .plans
                .iter()
                .map(|p| {
                    json!({"tenant_id": p.tenant_id, "from": p.from, "to": p.to, "error": p.error,
                           "steps": p.steps.iter().map(|s| json!({"version": s.version, "name": s.name,
                               "direction": s.direction})).collect::<Vec<_>>()})
                })
                .collect();
            out.table(
                &["TENANT", "FROM", "TO", "STEPS"],
                rows,
                Value::Array(values),
            );
        }
        SchemaCommand::Upgrade(target) | SchemaCommand::Rollback(target) => {
            let started = admin
                .upgrade_schema(request(target, false))
                .await
                .map_err(call_error)?
                .into_inner();
            let mut progress = admin
                .watch_schema_upgrade(pb::GetSchemaUpgradeRequest {
                    upgrade_id: started.upgrade_id.clone(),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            let mut last = pb::SchemaUpgrade::default();
            while let Some(state) = progress.message().await.map_err(call_error)? {
                if out.0 == Output::Table {
                    let finished = state
                        .tenants
                        .iter()
                        .filter(|t| t.state == "done" || t.state == "failed")
                        .count();
                    eprint!(
                        "\r{} {finished}/{} tenants, {} failed",
                        progress_bar(finished, state.tenants.len(), 30),
                        state.tenants.len(),
                        state.tenants.iter().filter(|t| t.state == "failed").count()
                    );
                }
                last = state;
            }
            if out.0 == Output::Table {
                eprintln!();
            }
            let rows = last
                .tenants
                .iter()
                .map(|t| {
                    vec![
                        t.tenant_id.clone(),
                        t.state.clone(),
                        t.current.to_string(),
                        t.error.clone(),
                    ]
                })
                .collect();
            let values = last
                .tenants
                .iter()
                .map(|t| json!({"tenant_id": t.tenant_id, "state": t.state, "current": t.current, "error": t.error}))
                .collect();
            out.table(
                &["TENANT", "STATE", "SCHEMA", "ERROR"],
                rows,
                json!({
                "upgrade_id": started.upgrade_id, "target_schema": started.target_schema,
                "done": last.done, "failed": last.failed, "tenants": Value::Array(values)}),
            );
            if last.failed > 0 {
                anyhow::bail!(
                    "{} of {} tenant(s) failed (upgrade {})",
                    last.failed,
                    last.total,
                    started.upgrade_id
                );
            }
        }
        SchemaCommand::Status { tenant, service } => {
            let response = admin
                .get_tenant_schema(pb::GetTenantSchemaRequest {
                    tenant_id: tenant,
                    service,
                })
                .await
                .map_err(call_error)?
                .into_inner();
            let rows = response
                .services
                .iter()
                .map(|s| {
                    vec![
                        s.service.clone(),
                        s.current.to_string(),
                        s.required.to_string(),
                        s.latest.to_string(),
                        s.history.len().to_string(),
                    ]
                })
                .collect();
            let values = response
                .services
                .iter()
                .map(|s| {
                    json!({"service": s.service, "current": s.current, "required": s.required,
                           "latest": s.latest, "advice": s.advice,
                           "history": s.history.iter().map(applied_json).collect::<Vec<_>>()})
                })
                .collect();
            out.table(
                &["SERVICE", "SCHEMA", "REQUIRED", "LATEST", "HISTORY ROWS"],
                rows,
                Value::Array(values),
            );
            if out.0 != Output::Json {
                for service in response.services.iter().filter(|s| !s.advice.is_empty()) {
                    println!("\n{}: {}", service.service, service.advice);
                }
            }
        }
        SchemaCommand::Repair { tenant, service } => {
            let response = admin
                .repair_tenant_schema(pb::RepairTenantSchemaRequest {
                    tenant_id: tenant.clone(),
                    service: service.clone(),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            let schema = response.schema.unwrap_or_default();
            let mut text = format!(
                "repaired {service} of tenant {tenant}: {} history row(s) changed; schema {}",
                response.rows_changed, schema.current
            );
            if !schema.advice.is_empty() {
                text.push_str(&format!("\n{}", schema.advice));
            }
            out.message(
                text,
                json!({"tenant_id": response.tenant_id, "service": schema.service,
                       "rows_changed": response.rows_changed, "current": schema.current,
                       "advice": schema.advice,
                       "history": schema.history.iter().map(applied_json).collect::<Vec<_>>()}),
            );
        }
    }
    Ok(())
}

/// Draws `[#####-----]`.
fn progress_bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}
