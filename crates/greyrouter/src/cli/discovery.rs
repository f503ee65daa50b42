//! `greyrouter discovery`: the service-discovery sources of a router.

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum DiscoveryCommand {
    /// What each source last did on the called router: whether it syncs there (holds the
    /// lease), whether the registry answered, what was held or left out and why.
    Status,
}

pub(super) async fn discovery_command(
    command: DiscoveryCommand,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    match command {
        DiscoveryCommand::Status => {
            let sources = admin
                .get_discovery_status(pb::GetDiscoveryStatusRequest {})
                .await
                .map_err(call_error)?
                .into_inner()
                .sources;
            let when = |ms: u64| {
                if ms == 0 {
                    "never".to_owned()
                } else {
                    format_time(ms)
                }
            };
            let mut rows = Vec::new();
            for s in &sources {
                let state = match (s.leading, s.up) {
                    (false, _) => "standby".to_owned(),
                    (true, true) => "up".to_owned(),
                    (true, false) => format!("DOWN: {}", s.error),
                };
                rows.push(vec![
                    s.source.clone(),
                    s.registry.clone(),
                    state,
                    when(s.last_success_ms),
                    s.instances.to_string(),
                    s.changes.to_string(),
                ]);
                for line in s.held.iter().chain(&s.skipped) {
                    rows.push(vec![String::new(), format!("  {line}")]);
                }
            }
            let json = json!(
                sources
                    .iter()
                    .map(|s| json!({
                        "source": s.source, "registry": s.registry, "leading": s.leading,
                        "up": s.up, "error": s.error, "last_sync_ms": s.last_sync_ms,
                        "last_success_ms": s.last_success_ms, "instances": s.instances,
                        "changes": s.changes, "held": s.held, "skipped": s.skipped,
                    }))
                    .collect::<Vec<_>>()
            );
            out.table(
                &[
                    "SOURCE",
                    "REGISTRY",
                    "STATE",
                    "LAST SYNC",
                    "INSTANCES",
                    "CHANGES",
                ],
                rows,
                json,
            );
        }
    }
    Ok(())
}
