//! `greyrouter store`: the store behind the routers.

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum StoreCommand {
    /// Lets the routers that refuse the store's history (it was emptied or replaced since they
    /// loaded it) adopt it: they drop their last state for the store's. Every such router
    /// learns it from the store; the one called adopts at once.
    Adopt {
        /// The retired history (updates and errors name it); the called router's when absent.
        #[arg(long, default_value = "")]
        retired: String,
    },
    /// Checks a durable store's data directory without changing it (it may be in use): every
    /// record's checksum and order, every change applies, every snapshot equals the replay of
    /// the log. Exits 1 when something is damaged.
    Check {
        /// The data directory.
        #[arg(long, env = "GREYROUTER_DATA_DIR", default_value = "greyrouter-data")]
        data_dir: PathBuf,
    },
}

/// `greyrouter store check`: runs here, on the directory, with no server.
pub(super) fn check_command(dir: &std::path::Path, out: Printer) -> ExitCode {
    let report = match greyrouter_store::journal::check(dir) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let damaged = report
        .snapshots
        .iter()
        .filter(|s| !s.status.starts_with("ok"))
        .count();
    match out.0 {
        Output::Json => out.json(serde_json::to_value(&report).unwrap_or(Value::Null)),
        Output::Table => {
            println!(
                "{}: history {}, revision {}, {} changes in {} log segments, {} bytes",
                dir.display(),
                report.history.as_deref().unwrap_or("(none)"),
                report.revision,
                report.changes,
                report.segments,
                report.bytes
            );
            if report.torn_bytes > 0 {
                println!(
                    "the log ends in a torn record of {} bytes (a crash while writing it; never acknowledged): the next start cuts it off",
                    report.torn_bytes
                );
            }
            let rows = report
                .snapshots
                .iter()
                .map(|s| vec![s.revision.to_string(), s.status.clone()])
                .collect();
            out.table(&["SNAPSHOT", "STATUS"], rows, Value::Null);
        }
    }
    if damaged > 0 {
        eprintln!("error: {damaged} damaged snapshot(s)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

pub(super) async fn store_command(
    command: StoreCommand,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    match command {
        StoreCommand::Check { .. } => unreachable!("runs without a server"),
        StoreCommand::Adopt { retired } => {
            let adopted = admin
                .adopt_store_history(pb::AdoptStoreHistoryRequest {
                    retired_history: retired,
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.message(
                format!(
                    "routers following history {} now follow the store's history {} (this \
                     router at revision {})",
                    adopted.retired_history, adopted.history, adopted.revision
                ),
                json!({
                    "retired_history": adopted.retired_history,
                    "history": adopted.history,
                    "revision": adopted.revision,
                }),
            );
        }
    }
    Ok(())
}
