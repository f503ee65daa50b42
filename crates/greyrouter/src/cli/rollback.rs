//! `greyrouter rollback`: the emergency rollback, planned and confirmed.

use super::*;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["service", "all_services_on_version"])))]
pub(super) struct RollbackArgs {
    /// The service to roll back.
    service: Option<String>,
    /// The broken version (with a service).
    #[arg(long, requires = "service")]
    from: Option<String>,
    /// The version to go back to: required with a service; with --all-services-on-version,
    /// each service's default version when absent.
    #[arg(long)]
    to: Option<String>,
    /// Rolls back every service with tenants on this version.
    #[arg(long, conflicts_with_all = ["service", "from"])]
    all_services_on_version: Option<String>,
    /// Only these tenants (repeatable); every tenant on the version when absent.
    #[arg(long = "tenant")]
    tenants: Vec<String>,
    /// Does not ask for confirmation.
    #[arg(long, short = 'y')]
    yes: bool,
    /// Shows what would move, changing nothing.
    #[arg(long)]
    dry_run: bool,
    /// Allows a target without a healthy instance.
    #[arg(long)]
    force: bool,
}

/// One emergency rollback to make: service, versions, tenants that would move.
struct PlannedRollback {
    service: String,
    from: String,
    to: String,
    moving: u64,
}

pub(super) async fn rollback_command(
    rollback: RollbackArgs,
    reason: &str,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    let request =
        |service: &str, from: &str, to: &str, dry_run: bool| pb::EmergencyRollbackRequest {
            service: service.to_owned(),
            from_version: from.to_owned(),
            to_version: to.to_owned(),
            tenant_ids: rollback.tenants.clone(),
            force: rollback.force,
            dry_run,
            reason: reason.to_owned(),
        };
    // What would move, service by service, changing nothing.
    let mut plan = Vec::new();
    if let Some(version) = &rollback.all_services_on_version {
        let services = admin
            .list_services(pb::ListServicesRequest {})
            .await
            .map_err(call_error)?
            .into_inner()
            .services;
        for service in services
            .into_iter()
            .filter(|s| s.versions.contains(version))
        {
            let to = rollback
                .to
                .clone()
                .unwrap_or_else(|| service.default_version.clone());
            if &to == version || !service.versions.contains(&to) {
                eprintln!(
                    "skipping {}: no version to go back to from {version} (use --to)",
                    service.name
                );
                continue;
            }
            let moving = admin
                .emergency_rollback(request(&service.name, version, &to, true))
                .await
                .map_err(call_error)?
                .into_inner()
                .moved_tenants;
            if moving > 0 {
                plan.push(PlannedRollback {
                    service: service.name,
                    from: version.clone(),
                    to,
                    moving,
                });
            }
        }
    } else {
        let (Some(service), Some(from), Some(to)) =
            (&rollback.service, &rollback.from, &rollback.to)
        else {
            anyhow::bail!("give a service with --from and --to, or --all-services-on-version");
        };
        let moving = admin
            .emergency_rollback(request(service, from, to, true))
            .await
            .map_err(call_error)?
            .into_inner()
            .moved_tenants;
        plan.push(PlannedRollback {
            service: service.clone(),
            from: from.clone(),
            to: to.clone(),
            moving,
        });
    }
    let total: u64 = plan.iter().map(|p| p.moving).sum();
    if out.0 == Output::Table {
        out.table(
            &["SERVICE", "FROM", "TO", "TENANTS MOVING"],
            plan.iter()
                .map(|p| {
                    vec![
                        p.service.clone(),
                        p.from.clone(),
                        p.to.clone(),
                        p.moving.to_string(),
                    ]
                })
                .collect(),
            Value::Null,
        );
    }
    if rollback.dry_run || plan.is_empty() {
        let plan_json: Vec<Value> = plan
            .iter()
            .map(|p| json!({"service": p.service, "from_version": p.from, "to_version": p.to, "moving_tenants": p.moving}))
            .collect();
        out.message(
            format!("dry run: {total} tenant(s) would move; nothing changed"),
            json!({"dry_run": true, "moving_tenants": total, "rollbacks": plan_json}),
        );
        return Ok(());
    }
    if !rollback.yes {
        eprint!(
            "Roll back {total} tenant(s) across {} service(s)? [y/N] ",
            plan.len()
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            anyhow::bail!("rollback cancelled; nothing changed");
        }
    }
    let mut done = Vec::new();
    for planned in &plan {
        let response = admin
            .emergency_rollback(request(&planned.service, &planned.from, &planned.to, false))
            .await
            .map_err(call_error)?
            .into_inner();
        if out.0 == Output::Table {
            println!(
                "moved {} tenant(s) of {} from {} to {} (override {}, revision {})",
                response.moved_tenants,
                planned.service,
                planned.from,
                planned.to,
                response.override_id,
                response.revision
            );
        }
        done.push(json!({
            "service": planned.service,
            "moved_tenants": response.moved_tenants,
            "override_id": response.override_id,
            "revision": response.revision,
        }));
    }
    if out.0 == Output::Json {
        out.json(Value::Array(done));
    }
    Ok(())
}
