//! Why a seed, a run, a propagation or a memory measurement could not be carried out. Failed
//! requests of a run are not errors: they are counted in its [`Summary`](crate::summary::Summary).
//!
//! Messages do not repeat their source; [`chain`] joins an error with its sources.

/// Returns `error` and each of its sources, joined by `: `.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Why a seed, a run, a propagation or a memory measurement could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A fan-out measurement could not go on.
    #[error("fanout: {0}")]
    Fanout(String),
    /// A setting is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The flag or field, as the user spells it.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The target is not a valid URI.
    #[error("invalid target '{target}'")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// Why it does not parse.
        source: tonic::transport::Error,
    },
    /// No connection to the target could be opened.
    #[error("cannot connect to {target}")]
    Connect {
        /// The target as given.
        target: String,
        /// Why connecting failed.
        source: tonic::transport::Error,
    },
    /// An Admin call of the seed failed.
    #[error("seeding failed at {what}: {status}")]
    Seed {
        /// The call and the entity it was about, e.g. `upsert tenant 'tenant-7'`.
        what: String,
        /// The server's answer.
        status: Box<tonic::Status>,
    },
    /// The SDK could not start (bad settings, or no snapshot from the target in time).
    #[error("the SDK cannot start: {0}")]
    Sdk(String),
    /// A call of a measurement failed, or its watch stream ended.
    #[error("{what}: {status}")]
    Call {
        /// The call and where it went, e.g. `SetTenantVersion on http://127.0.0.1:50061`.
        what: String,
        /// The server's answer, or why the stream ended.
        status: Box<tonic::Status>,
    },
    /// The measured server's process cannot be read (`memory`).
    #[error("process {pid}: {reason}")]
    Process {
        /// The process id given with `--pid`.
        pid: u32,
        /// What could not be read.
        reason: String,
    },
    /// A registry or router of the discovery measurement failed.
    #[error("discovery: {0}")]
    Discovery(String),
    /// A worker task panicked or was cancelled.
    #[error("a worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_the_sources() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        #[derive(Debug, thiserror::Error)]
        #[error("cannot connect")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(chain(&Outer(io)), "cannot connect: refused");
    }
}
