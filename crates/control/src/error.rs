//! The one error of the node, and the one table mapping it to a gRPC code and an HTTP status.
//!
//! Clients decide retries from the code: `INVALID_ARGUMENT`, `NOT_FOUND` and
//! `FAILED_PRECONDITION` are not retried as they are, `ABORTED` is retried after re-reading,
//! `UNAVAILABLE` is retried later.
//!
//! | kind | gRPC code | HTTP status |
//! |---|---|---|
//! | `InvalidArgument` | `INVALID_ARGUMENT` (3) | 400 |
//! | `OutOfRange` | `OUT_OF_RANGE` (11) | 400 |
//! | `Unauthenticated` | `UNAUTHENTICATED` (16) | 401 |
//! | `PermissionDenied` | `PERMISSION_DENIED` (7) | 403 |
//! | `NotFound` | `NOT_FOUND` (5) | 404 |
//! | `FailedPrecondition` | `FAILED_PRECONDITION` (9) | 409 |
//! | `Conflict` | `ABORTED` (10) | 409 |
//! | `VersionMismatch` | `ABORTED` (10) | 412 |
//! | `ResourceExhausted` | `RESOURCE_EXHAUSTED` (8) | 429 |
//! | `Internal` | `INTERNAL` (13) | 500 |
//! | `Unavailable` | `UNAVAILABLE` (14) | 503 |
//! | `DeadlineExceeded` | `DEADLINE_EXCEEDED` (4) | 504 |

use greyrouter_store::StoreError;
use routing_core::RoutingError;
use schema_manager::SchemaError;

use crate::schema::GateError;

/// Longest error message: messages travel in a header, and a caller's value echoed whole could
/// make the header too large for the client, which would then see a broken connection instead
/// of the error.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// What kind of failure an [`Error`] is: decides the gRPC code, the HTTP status, and whether a
/// client retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A field of the request is malformed or out of its limits.
    InvalidArgument,
    /// A revision outside what is kept (too old, or ahead of this router).
    OutOfRange,
    /// The caller did not prove who it is.
    Unauthenticated,
    /// The caller may not do this.
    PermissionDenied,
    /// A named tenant, service, version, instance, rollout, experiment or upgrade does not exist.
    NotFound,
    /// The request is valid but the current state refuses it (inactive tenant, version not
    /// servable, a schema the version needs is missing, ...).
    FailedPrecondition,
    /// Another change got there first; read again and retry.
    Conflict,
    /// A compare-and-set found another version than expected.
    VersionMismatch,
    /// A rate or quota is used up; retry later.
    ResourceExhausted,
    /// A bug or corrupt data: not the caller's fault, not retried.
    Internal,
    /// The store (or a database) cannot be reached, or no instance is healthy; retry later.
    Unavailable,
    /// The operation did not finish in time.
    DeadlineExceeded,
}

impl ErrorKind {
    /// Every kind, for tables and tests.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::InvalidArgument,
        ErrorKind::OutOfRange,
        ErrorKind::Unauthenticated,
        ErrorKind::PermissionDenied,
        ErrorKind::NotFound,
        ErrorKind::FailedPrecondition,
        ErrorKind::Conflict,
        ErrorKind::VersionMismatch,
        ErrorKind::ResourceExhausted,
        ErrorKind::Internal,
        ErrorKind::Unavailable,
        ErrorKind::DeadlineExceeded,
    ];

    /// The gRPC status code (the numbers of `google.rpc.Code`).
    pub const fn grpc_code(self) -> i32 {
        match self {
            ErrorKind::InvalidArgument => 3,
            ErrorKind::DeadlineExceeded => 4,
            ErrorKind::NotFound => 5,
            ErrorKind::PermissionDenied => 7,
            ErrorKind::ResourceExhausted => 8,
            ErrorKind::FailedPrecondition => 9,
            ErrorKind::Conflict | ErrorKind::VersionMismatch => 10,
            ErrorKind::OutOfRange => 11,
            ErrorKind::Internal => 13,
            ErrorKind::Unavailable => 14,
            ErrorKind::Unauthenticated => 16,
        }
    }

    /// The HTTP status.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument | ErrorKind::OutOfRange => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::FailedPrecondition | ErrorKind::Conflict => 409,
            ErrorKind::VersionMismatch => 412,
            ErrorKind::ResourceExhausted => 429,
            ErrorKind::Internal => 500,
            ErrorKind::Unavailable => 503,
            ErrorKind::DeadlineExceeded => 504,
        }
    }

    /// A short name (`invalid_argument`, ...), for logs and problem documents.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::OutOfRange => "out_of_range",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::Conflict => "conflict",
            ErrorKind::VersionMismatch => "version_mismatch",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::Internal => "internal",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
        }
    }
}

/// Every error of the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rule of the routing state refused the request.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// The store refused or failed the change.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A schema migration failed or cannot run.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A version switch waits for a schema migration.
    #[error(transparent)]
    Gate(#[from] GateError),
    /// A rate or a cap is used up: retry after the given time.
    #[error("{message}")]
    Exhausted {
        /// What is used up, and when to retry.
        message: String,
        /// How long to wait before retrying, in milliseconds.
        retry_after_ms: u64,
    },
    /// Any other refusal, with its kind.
    #[error("{message}")]
    Refused {
        /// What kind of refusal.
        kind: ErrorKind,
        /// What went wrong, lowercase, no trailing period.
        message: String,
    },
}

impl Error {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error::Refused {
            kind,
            message: message.into(),
        }
    }

    /// An `InvalidArgument` naming `field`.
    pub fn invalid(field: &str, reason: impl Into<String>) -> Error {
        Error::Routing(RoutingError::invalid(field, reason))
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Routing(err) => routing_kind(err),
            Error::Store(err) => store_kind(err),
            Error::Schema(err) => schema_kind(err),
            Error::Gate(err) => match err {
                GateError::Unapplied { .. } | GateError::Contract { .. } => {
                    ErrorKind::FailedPrecondition
                }
                GateError::Schema(err) => schema_kind(err),
            },
            Error::Exhausted { .. } => ErrorKind::ResourceExhausted,
            Error::Refused { kind, .. } => *kind,
        }
    }

    /// How long to wait before retrying, when a rate or a cap is used up.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Error::Exhausted { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// The routing rule behind this error, when there is one.
    fn routing(&self) -> Option<&RoutingError> {
        match self {
            Error::Routing(err) | Error::Store(StoreError::Rejected(err)) => Some(err),
            _ => None,
        }
    }

    /// The field and the reason of an `InvalidArgument` that names one.
    pub fn field(&self) -> Option<(&str, &str)> {
        match self.routing() {
            Some(RoutingError::InvalidArgument { field, reason }) => Some((field, reason)),
            _ => None,
        }
    }

    /// The version a compare-and-set found instead of the expected one.
    pub fn current_version(&self) -> Option<&str> {
        match self.routing() {
            Some(RoutingError::VersionMismatch { current, .. }) => Some(current),
            _ => None,
        }
    }

    /// The message, at most [`MAX_MESSAGE_BYTES`] long.
    pub fn message(&self) -> String {
        bounded(self.to_string())
    }
}

pub(crate) fn store_kind(err: &StoreError) -> ErrorKind {
    match err {
        StoreError::Rejected(err) => routing_kind(err),
        StoreError::Unavailable(_) => ErrorKind::Unavailable,
        StoreError::Compacted { .. } => ErrorKind::OutOfRange,
        StoreError::Conflict { .. } => ErrorKind::Conflict,
        StoreError::Corrupt(_) => ErrorKind::Internal,
    }
}

pub(crate) fn routing_kind(err: &RoutingError) -> ErrorKind {
    match err {
        RoutingError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
        RoutingError::NotFound { .. } => ErrorKind::NotFound,
        RoutingError::InactiveTenant(_)
        | RoutingError::VersionNotServable { .. }
        | RoutingError::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
        RoutingError::VersionMismatch { .. } => ErrorKind::VersionMismatch,
        RoutingError::StateMoved { .. } => ErrorKind::Conflict,
        RoutingError::NoHealthyInstance { .. } => ErrorKind::Unavailable,
    }
}

fn schema_kind(err: &SchemaError) -> ErrorKind {
    match err {
        SchemaError::NoCatalog { .. } | SchemaError::UnknownSchemaVersion { .. } => {
            ErrorKind::NotFound
        }
        SchemaError::Busy { .. } => ErrorKind::Conflict,
        SchemaError::Unavailable(_) => ErrorKind::Unavailable,
        SchemaError::InvalidTenant(_) => ErrorKind::InvalidArgument,
        SchemaError::Catalog(_)
        | SchemaError::Edited { .. }
        | SchemaError::Irreversible { .. }
        | SchemaError::Contract { .. }
        | SchemaError::HalfApplied { .. }
        | SchemaError::MigrationFailed { .. } => ErrorKind::FailedPrecondition,
    }
}

/// Cuts a message to [`MAX_MESSAGE_BYTES`] on a character boundary, marking the cut.
pub fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

#[cfg(test)]
mod tests {
    use routing_core::Entity;

    use super::*;

    #[test]
    fn every_error_has_its_kind() {
        let cases = [
            (
                RoutingError::invalid("tenant_id", "must not be empty"),
                ErrorKind::InvalidArgument,
            ),
            (
                RoutingError::not_found(Entity::Service, "api"),
                ErrorKind::NotFound,
            ),
            (
                RoutingError::InactiveTenant("t".into()),
                ErrorKind::FailedPrecondition,
            ),
            (
                RoutingError::VersionNotServable {
                    service: "api".into(),
                    version: "v2".into(),
                },
                ErrorKind::FailedPrecondition,
            ),
            (
                RoutingError::VersionMismatch {
                    tenant_id: "t".into(),
                    service: "api".into(),
                    expected: "v1".into(),
                    current: "v2".into(),
                },
                ErrorKind::VersionMismatch,
            ),
            (
                RoutingError::NoHealthyInstance {
                    service: "api".into(),
                    version: "v1".into(),
                },
                ErrorKind::Unavailable,
            ),
        ];
        for (err, kind) in cases {
            assert_eq!(Error::from(err.clone()).kind(), kind, "{err}");
            // A rule refused inside the store's compare-and-set is the same error.
            assert_eq!(
                Error::from(StoreError::Rejected(err.clone())).kind(),
                kind,
                "{err}"
            );
        }
        assert_eq!(
            Error::from(StoreError::Unavailable("down".into())).kind(),
            ErrorKind::Unavailable
        );
        assert_eq!(
            Error::from(StoreError::Compacted {
                requested: 1,
                oldest: 5
            })
            .kind(),
            ErrorKind::OutOfRange
        );
    }

    #[test]
    fn the_table_maps_every_kind_to_a_grpc_code_and_an_http_status() {
        for kind in ErrorKind::ALL {
            assert!((1..=16).contains(&kind.grpc_code()), "{kind:?}");
            assert!((400..600).contains(&kind.http_status()), "{kind:?}");
        }
        // Clients retry on these; keep them stable.
        assert_eq!(ErrorKind::Unavailable.grpc_code(), 14);
        assert_eq!(ErrorKind::Unavailable.http_status(), 503);
        assert_eq!(ErrorKind::VersionMismatch.grpc_code(), 10);
        assert_eq!(ErrorKind::VersionMismatch.http_status(), 412);
    }

    #[test]
    fn field_errors_name_the_field() {
        let err = Error::from(RoutingError::invalid("tenant.id", "must not be empty"));
        assert_eq!(err.field(), Some(("tenant.id", "must not be empty")));
        assert_eq!(err.message(), "invalid tenant.id: must not be empty");
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let echoed = Error::from(RoutingError::not_found(Entity::Tenant, "é".repeat(10_000)));
        assert_eq!(echoed.kind(), ErrorKind::NotFound);
        let message = echoed.message();
        assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
        assert!(message.ends_with("..."));
        assert_eq!(bounded("short".to_owned()), "short");
    }
}
