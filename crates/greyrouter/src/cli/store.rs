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
}

pub(super) async fn store_command(
    command: StoreCommand,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    match command {
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
