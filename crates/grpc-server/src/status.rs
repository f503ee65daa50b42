//! The one table mapping every error to a gRPC status code.
//!
//! Clients decide retries from the code: `INVALID_ARGUMENT`, `NOT_FOUND` and
//! `FAILED_PRECONDITION` are not retried as they are, `ABORTED` is retried after re-reading,
//! `UNAVAILABLE` is retried later.

use greyrouter_store::StoreError;
use schema_manager::SchemaError;

use crate::schema::GateError;
use routing_core::RoutingError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Longest status message: messages travel in a header, and a caller's value echoed whole
/// could make the header too large for the client, which would then see a broken connection
/// instead of the status.
pub const MAX_MESSAGE_BYTES: usize = 1024;

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

/// Returns the status for a routing error.
pub fn routing(err: &RoutingError) -> Status {
    let message = bounded(err.to_string());
    match err {
        RoutingError::InvalidArgument { field, reason } => invalid_argument(field, reason),
        RoutingError::NotFound { .. } => Status::not_found(message),
        RoutingError::InactiveTenant(_)
        | RoutingError::VersionNotServable { .. }
        | RoutingError::FailedPrecondition(_) => Status::failed_precondition(message),
        RoutingError::VersionMismatch { current, .. } => Status::with_error_details(
            Code::Aborted,
            message,
            ErrorDetails::with_error_info(
                "VERSION_MISMATCH",
                "greyrouter",
                [("current_version".to_owned(), current.clone())],
            ),
        ),
        RoutingError::NoHealthyInstance { .. } => Status::unavailable(message),
    }
}

/// Returns the status for a store error.
pub fn store(err: &StoreError) -> Status {
    match err {
        StoreError::Rejected(err) => routing(err),
        StoreError::Unavailable(_) => Status::unavailable(bounded(err.to_string())),
        StoreError::Compacted { .. } => Status::out_of_range(bounded(err.to_string())),
        StoreError::Conflict { .. } => Status::aborted(bounded(err.to_string())),
        StoreError::Corrupt(_) => Status::internal(bounded(err.to_string())),
    }
}

/// Returns the status for a schema migration error.
pub fn schema(err: &SchemaError) -> Status {
    let message = bounded(err.to_string());
    match err {
        SchemaError::NoCatalog { .. } | SchemaError::UnknownSchemaVersion { .. } => {
            Status::not_found(message)
        }
        SchemaError::Busy { .. } => Status::aborted(message),
        SchemaError::Unavailable(_) => Status::unavailable(message),
        SchemaError::InvalidTenant(_) => Status::invalid_argument(message),
        SchemaError::Catalog(_)
        | SchemaError::Edited { .. }
        | SchemaError::Irreversible { .. }
        | SchemaError::Contract { .. }
        | SchemaError::MigrationFailed { .. } => Status::failed_precondition(message),
    }
}

/// Returns the status for a refused version switch.
pub fn gate(err: &GateError) -> Status {
    match err {
        GateError::Unapplied { .. } | GateError::Contract { .. } => {
            Status::failed_precondition(err.to_string())
        }
        GateError::Schema(err) => schema(err),
    }
}

/// Returns `INVALID_ARGUMENT` naming the field, with a `BadRequest` detail for clients that
/// read rich errors.
pub fn invalid_argument(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid {field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

#[cfg(test)]
mod tests {
    use routing_core::Entity;

    use super::*;

    #[test]
    fn every_error_has_its_code() {
        let cases = [
            (
                RoutingError::invalid("tenant_id", "must not be empty"),
                Code::InvalidArgument,
            ),
            (
                RoutingError::not_found(Entity::Service, "api"),
                Code::NotFound,
            ),
            (
                RoutingError::InactiveTenant("t".into()),
                Code::FailedPrecondition,
            ),
            (
                RoutingError::VersionNotServable {
                    service: "api".into(),
                    version: "v2".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                RoutingError::VersionMismatch {
                    tenant_id: "t".into(),
                    service: "api".into(),
                    expected: "v1".into(),
                    current: "v2".into(),
                },
                Code::Aborted,
            ),
            (
                RoutingError::NoHealthyInstance {
                    service: "api".into(),
                    version: "v1".into(),
                },
                Code::Unavailable,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(routing(&err).code(), code, "{err}");
        }
        assert_eq!(
            store(&StoreError::Unavailable("down".into())).code(),
            Code::Unavailable
        );
        assert_eq!(
            store(&StoreError::Compacted {
                requested: 1,
                oldest: 5
            })
            .code(),
            Code::OutOfRange
        );
    }

    #[test]
    fn field_errors_name_the_field() {
        let status = routing(&RoutingError::invalid("tenant.id", "must not be empty"));
        assert_eq!(status.message(), "invalid tenant.id: must not be empty");
        let details = status.get_error_details();
        let violations = details.bad_request().map(|b| b.field_violations.clone());
        assert_eq!(
            violations.and_then(|v| v.first().map(|f| f.field.clone())),
            Some("tenant.id".to_owned())
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let echoed = routing(&RoutingError::not_found(
            routing_core::Entity::Tenant,
            "é".repeat(10_000),
        ));
        assert_eq!(echoed.code(), Code::NotFound);
        assert!(
            echoed.message().len() <= MAX_MESSAGE_BYTES,
            "{}",
            echoed.message().len()
        );
        assert!(echoed.message().ends_with("..."));
        assert_eq!(bounded("short".to_owned()), "short");
    }
}
