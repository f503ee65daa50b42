//! What can go wrong, by what a caller does about it.

/// An error of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A setting is unusable; names the setting.
    #[error("invalid client setting {field}: {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The local copy does not hold the pair (not watched, not yet received, or unknown tenant):
    /// ask the server ([`Client::route`](crate::Client::route) does).
    #[error("no local assignment for tenant '{tenant_id}' and service '{service}'")]
    NotCached {
        /// The tenant.
        tenant_id: String,
        /// The service.
        service: String,
    },
    /// The tenant's version of the service has no instance that can take traffic (all
    /// unhealthy, drained or none registered); the server would answer `UNAVAILABLE` too.
    #[error("no healthy instance of service '{service}' version '{version}'")]
    NoHealthyInstance {
        /// The service.
        service: String,
        /// The resolved version.
        version: String,
    },
    /// The server answered a call with an error status (`NOT_FOUND`, `INVALID_ARGUMENT`, ...),
    /// or could not be reached (`UNAVAILABLE`, `DEADLINE_EXCEEDED`).
    #[error("router call failed: {0}")]
    Rpc(#[from] tonic::Status),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// Waiting for the local copy timed out.
    #[error("timed out after {waited_ms} ms waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited_ms: u64,
    },
}

impl ClientError {
    /// Returns the gRPC code a server would have answered with.
    pub fn code(&self) -> tonic::Code {
        match self {
            ClientError::InvalidConfig { .. } => tonic::Code::InvalidArgument,
            ClientError::NotCached { .. } => tonic::Code::NotFound,
            ClientError::NoHealthyInstance { .. } => tonic::Code::Unavailable,
            ClientError::Rpc(status) => status.code(),
            ClientError::Closed => tonic::Code::Cancelled,
            ClientError::Timeout { .. } => tonic::Code::DeadlineExceeded,
        }
    }
}

/// The failure of a call made with [`Client::call_idempotent`](crate::Client::call_idempotent).
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// No instance could be chosen.
    #[error(transparent)]
    Route(#[from] ClientError),
    /// Every attempt failed; holds the last attempt's error.
    #[error("{attempts} attempts failed, the last one with: {last}")]
    Exhausted {
        /// Attempts made.
        attempts: usize,
        /// The last attempt's error.
        last: E,
    },
}
