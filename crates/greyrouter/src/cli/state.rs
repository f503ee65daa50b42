//! `greyrouter backup`, `restore`, `apply`, `diff` and `state`: the routing state as a file (the
//! seed file format), and the plans that take the live state to one.

use std::path::Path;

use routing_core::state::plan::Section;
use routing_core::{RoutingState, StateDump};

use super::*;

#[derive(Debug, Args)]
pub(super) struct BackupArgs {
    /// File to write: JSON when it ends in `.json`, TOML otherwise (the seed file format).
    file: PathBuf,
    /// A past revision instead of the current one.
    #[arg(long)]
    at_revision: Option<u64>,
}

#[derive(Debug, Args)]
pub(super) struct RestoreArgs {
    /// A backup (or seed) file: JSON when it ends in `.json`, TOML otherwise.
    file: PathBuf,
    /// Replaces a store that holds other routing state (after printing what changes).
    #[arg(long)]
    force: bool,
    /// Prints what would change, changing nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
pub(super) struct ApplyArgs {
    /// The desired state: JSON when it ends in `.json`, TOML otherwise. Only the sections it
    /// has (tenants, services, instances, pins, overrides, rollouts, experiments) are managed.
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// Prints the plan, changing nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
pub(super) struct DiffArgs {
    /// The desired state, as for `apply`. Exits 0 when the live state matches it, 2 when it
    /// drifted (the plan is printed).
    #[arg(long, short = 'f')]
    file: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct StateArgs {
    /// A past revision (rebuilt from the store's log, as far as it is kept).
    #[arg(long)]
    at_revision: Option<u64>,
    /// Shows this tenant's version of every service, and why, at that revision.
    #[arg(long)]
    tenant: Option<String>,
}

/// `diff` found drift: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("the live state differs from {0}")]
pub(super) struct Drift(pub(super) String);

/// Reads a state file; returns it and the sections it has.
pub(super) fn read_state_file(path: &Path) -> anyhow::Result<(StateDump, Vec<Section>)> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| anyhow::anyhow!("cannot read {}: {err}", path.display()))?;
    let value: Value = if is_json(path) {
        serde_json::from_str(&text)
            .map_err(|err| anyhow::anyhow!("{}: not valid JSON: {err}", path.display()))?
    } else {
        let table: toml::Table = toml::from_str(&text)
            .map_err(|err| anyhow::anyhow!("{}: not valid TOML: {err}", path.display()))?;
        serde_json::to_value(table)?
    };
    let sections = value
        .as_object()
        .map(|fields| {
            Section::ALL
                .into_iter()
                .filter(|s| fields.contains_key(s.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let dump: StateDump = serde_json::from_value(value)
        .map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
    Ok((dump, sections))
}

fn is_json(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "json")
}

async fn export(admin: &mut Admin, at_revision: Option<u64>) -> anyhow::Result<StateDump> {
    let mut chunks = admin
        .export_state(pb::ExportStateRequest { at_revision })
        .await
        .map_err(call_error)?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = chunks.message().await.map_err(call_error)? {
        data.extend_from_slice(&chunk.data);
    }
    Ok(serde_json::from_slice(&data)?)
}

/// Sends a desired state; returns the plan (and what applying it did).
async fn send(
    admin: &mut Admin,
    dump: &StateDump,
    sections: &[Section],
    dry_run: bool,
    expected_revision: Option<u64>,
) -> anyhow::Result<pb::ApplyStateResponse> {
    const CHUNK: usize = 512 * 1024;
    let json = serde_json::to_vec(dump)?;
    let mut messages: Vec<pb::ApplyStateRequest> = json
        .chunks(CHUNK)
        .map(|data| pb::ApplyStateRequest {
            data: data.to_vec(),
            ..Default::default()
        })
        .collect();
    if messages.is_empty() {
        messages.push(pb::ApplyStateRequest::default());
    }
    messages[0].sections = sections.iter().map(|s| s.as_str().to_owned()).collect();
    messages[0].dry_run = dry_run;
    messages[0].expected_revision = expected_revision;
    Ok(admin
        .apply_state(tokio_stream::iter(messages))
        .await
        .map_err(call_error)?
        .into_inner())
}

fn print_plan(plan: &pb::ApplyStateResponse, out: Printer) {
    let count = |action: &str| plan.steps.iter().filter(|s| s.action == action).count();
    let summary = format!(
        "{} to create, {} to update, {} to delete (planned on revision {})",
        count("create"),
        count("update"),
        count("delete"),
        plan.base_revision
    );
    match out.0 {
        Output::Json => out.json(json!({
            "base_revision": plan.base_revision,
            "steps": plan.steps.iter().map(|s| json!({
                "action": s.action, "section": s.section, "key": s.key, "detail": s.detail,
            })).collect::<Vec<_>>(),
            "applied": plan.applied,
            "revision": plan.revision,
        })),
        Output::Table => {
            if !plan.steps.is_empty() {
                let rows = plan
                    .steps
                    .iter()
                    .map(|s| {
                        vec![
                            s.action.clone(),
                            Section::parse(&s.section)
                                .map_or(s.section.clone(), |section| section.record().to_owned()),
                            s.key.clone(),
                            s.detail.clone(),
                        ]
                    })
                    .collect();
                out.table(&["ACTION", "RECORD", "KEY", "CHANGE"], rows, Value::Null);
            }
            println!("plan: {summary}");
            if plan.applied {
                println!("applied at revision {}", plan.revision);
            }
        }
    }
}

pub(super) async fn backup_command(
    args: BackupArgs,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    let dump = export(admin, args.at_revision).await?;
    let text = if is_json(&args.file) {
        serde_json::to_string_pretty(&dump)?
    } else {
        toml::to_string(&dump)?
    };
    // Written beside the target, then renamed: a backup is whole or absent.
    let partial = args.file.with_extension("partial");
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, &args.file))
        .map_err(|err| anyhow::anyhow!("cannot write {}: {err}", args.file.display()))?;
    out.message(
        format!(
            "backup of revision {} written to {} ({} tenants, {} services, {} instances, {} pins)",
            dump.revision,
            args.file.display(),
            dump.tenants.len(),
            dump.services.len(),
            dump.instances.len(),
            dump.pins.len()
        ),
        json!({"revision": dump.revision, "file": args.file, "tenants": dump.tenants.len(),
               "services": dump.services.len(), "instances": dump.instances.len(),
               "pins": dump.pins.len()}),
    );
    Ok(())
}

pub(super) async fn restore_command(
    args: RestoreArgs,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    let (dump, _) = read_state_file(&args.file)?;
    // A backup is the whole state: every section, whatever the file holds.
    let plan = send(admin, &dump, &Section::ALL, true, None).await?;
    let replaces = plan.steps.iter().any(|s| s.action != "create");
    if args.dry_run || plan.steps.is_empty() {
        print_plan(&plan, out);
        return Ok(());
    }
    if replaces && !args.force {
        print_plan(&plan, out);
        anyhow::bail!(
            "the store holds other routing state (the plan above updates or deletes records); restore --force replaces it"
        );
    }
    let applied = send(admin, &dump, &Section::ALL, false, Some(plan.base_revision)).await?;
    print_plan(&applied, out);
    Ok(())
}

pub(super) async fn apply_command(
    args: ApplyArgs,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    let (dump, sections) = read_state_file(&args.file)?;
    if sections.is_empty() {
        anyhow::bail!(
            "{} has no section to apply (tenants, services, instances, pins, overrides, rollouts, experiments)",
            args.file.display()
        );
    }
    let plan = send(admin, &dump, &sections, true, None).await?;
    if args.dry_run || plan.steps.is_empty() {
        print_plan(&plan, out);
        return Ok(());
    }
    let applied = send(admin, &dump, &sections, false, Some(plan.base_revision)).await?;
    print_plan(&applied, out);
    Ok(())
}

pub(super) async fn diff_command(
    args: DiffArgs,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    let (dump, sections) = read_state_file(&args.file)?;
    if sections.is_empty() {
        anyhow::bail!("{} has no section to compare", args.file.display());
    }
    let plan = send(admin, &dump, &sections, true, None).await?;
    print_plan(&plan, out);
    if plan.steps.is_empty() {
        Ok(())
    } else {
        Err(Drift(args.file.display().to_string()).into())
    }
}

pub(super) async fn state_command(
    args: StateArgs,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    let dump = export(admin, args.at_revision).await?;
    let Some(tenant_id) = args.tenant else {
        match out.0 {
            Output::Json => out.json(serde_json::to_value(&dump)?),
            Output::Table => {
                println!("revision {}", dump.revision);
                let rows = vec![
                    vec!["tenants".to_owned(), dump.tenants.len().to_string()],
                    vec!["services".to_owned(), dump.services.len().to_string()],
                    vec!["instances".to_owned(), dump.instances.len().to_string()],
                    vec!["pins".to_owned(), dump.pins.len().to_string()],
                    vec!["overrides".to_owned(), dump.overrides.len().to_string()],
                    vec!["rollouts".to_owned(), dump.rollouts.len().to_string()],
                    vec!["experiments".to_owned(), dump.experiments.len().to_string()],
                ];
                out.table(&["SECTION", "RECORDS"], rows, Value::Null);
            }
        }
        return Ok(());
    };
    let state = RoutingState::from_dump(&dump)?;
    let tenant = state.tenant(&tenant_id).ok_or_else(|| {
        anyhow::anyhow!(
            "tenant {tenant_id} did not exist at revision {}",
            dump.revision
        )
    })?;
    let assignments: Vec<(String, String, String)> = state
        .services()
        .map(|entry| {
            let resolution = entry.resolve(tenant);
            (
                entry.service.name.clone(),
                resolution.version,
                resolution.source.to_string(),
            )
        })
        .collect();
    match out.0 {
        Output::Json => out.json(json!({
            "revision": dump.revision,
            "tenant": tenant.tenant,
            "services": assignments.iter().map(|(service, version, source)| json!({
                "service": service, "version": version, "source": source,
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            println!("tenant {tenant_id} at revision {}", dump.revision);
            let rows = assignments
                .into_iter()
                .map(|(service, version, source)| vec![service, version, source])
                .collect();
            out.table(&["SERVICE", "VERSION", "SOURCE"], rows, Value::Null);
        }
    }
    Ok(())
}
