//! `greyrouter events`: the audit trail.

use super::*;

#[derive(Debug, Args)]
pub(super) struct EventsArgs {
    /// Events after this revision.
    #[arg(long, default_value_t = 0)]
    since: u64,
    /// Only events about this tenant (and service-wide changes).
    #[arg(long, default_value = "")]
    tenant: String,
    /// Only events about this service.
    #[arg(long, default_value = "")]
    service: String,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

pub(super) async fn events_command(
    events: EventsArgs,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    let response = admin
        .list_events(pb::ListEventsRequest {
            since_revision: events.since,
            tenant_id: events.tenant,
            service: events.service,
            limit: events.limit,
        })
        .await
        .map_err(call_error)?
        .into_inner();
    let rows = response
        .events
        .iter()
        .map(|e| {
            vec![
                e.revision.to_string(),
                format_time(e.at_ms),
                e.actor.clone(),
                e.kind.clone(),
                e.tenant_id.clone(),
                e.service.clone(),
                e.reason.clone(),
            ]
        })
        .collect();
    let values = response
        .events
        .iter()
        .map(|e| {
            let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
            json!({"revision": e.revision, "at_ms": e.at_ms, "actor": e.actor, "reason": e.reason,
                   "kind": e.kind, "tenant_id": e.tenant_id, "service": e.service,
                   "before": parse(&e.before), "after": parse(&e.after)})
        })
        .collect();
    out.table(
        &[
            "REVISION",
            "TIME (UTC)",
            "ACTOR",
            "CHANGE",
            "TENANT",
            "SERVICE",
            "REASON",
        ],
        rows,
        Value::Array(values),
    );
    Ok(())
}
