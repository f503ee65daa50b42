//! Node errors as gRPC statuses, through the one table ([`control::ErrorKind::grpc_code`]).
//!
//! An `INVALID_ARGUMENT` that names a field carries a `BadRequest` detail with it; a failed
//! compare-and-set carries an `ErrorInfo` (`VERSION_MISMATCH`) with the current version; a used-up
//! rate or cap (`RESOURCE_EXHAUSTED`) carries a `RetryInfo` with the time to wait.

use control::Error;
use routing_core::RoutingError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use control::error::{MAX_MESSAGE_BYTES, bounded};

/// Returns the status of a node error.
pub fn status(err: &Error) -> Status {
    if let Some((field, reason)) = err.field() {
        return invalid_argument(field, reason);
    }
    let code = Code::from_i32(err.kind().grpc_code());
    let message = err.message();
    if let Some(current) = err.current_version() {
        return Status::with_error_details(
            code,
            message,
            ErrorDetails::with_error_info(
                "VERSION_MISMATCH",
                "greyrouter",
                [("current_version".to_owned(), current.to_owned())],
            ),
        );
    }
    if let Some(wait) = err.retry_after_ms() {
        return Status::with_error_details(
            code,
            message,
            ErrorDetails::with_retry_info(Some(std::time::Duration::from_millis(wait))),
        );
    }
    Status::new(code, message)
}

/// Returns the status of a routing rule's error.
pub fn routing(err: RoutingError) -> Status {
    status(&Error::Routing(err))
}

/// Returns `INVALID_ARGUMENT` naming the field, with a `BadRequest` detail for clients that
/// read rich errors.
pub fn invalid_argument(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        bounded(format!("invalid {field}: {reason}")),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

#[cfg(test)]
mod tests {
    use control::ErrorKind;
    use greyrouter_store::StoreError;
    use routing_core::Entity;

    use super::*;

    #[test]
    fn every_kind_has_its_code() {
        let cases = [
            (
                Error::from(RoutingError::invalid("tenant_id", "must not be empty")),
                Code::InvalidArgument,
            ),
            (
                Error::from(RoutingError::not_found(Entity::Service, "api")),
                Code::NotFound,
            ),
            (
                Error::from(RoutingError::InactiveTenant("t".into())),
                Code::FailedPrecondition,
            ),
            (
                Error::from(RoutingError::VersionMismatch {
                    tenant_id: "t".into(),
                    service: "api".into(),
                    expected: "v1".into(),
                    current: "v2".into(),
                }),
                Code::Aborted,
            ),
            (
                Error::from(RoutingError::NoHealthyInstance {
                    service: "api".into(),
                    version: "v1".into(),
                }),
                Code::Unavailable,
            ),
            (
                Error::from(StoreError::Unavailable("down".into())),
                Code::Unavailable,
            ),
            (
                Error::from(StoreError::Compacted {
                    requested: 1,
                    oldest: 5,
                }),
                Code::OutOfRange,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(status(&err).code(), code, "{err}");
        }
        for kind in ErrorKind::ALL {
            let status = status(&Error::new(kind, "x"));
            assert_eq!(status.code() as i32, kind.grpc_code(), "{kind:?}");
        }
    }

    #[test]
    fn field_errors_name_the_field() {
        let status = routing(RoutingError::invalid("tenant.id", "must not be empty"));
        assert_eq!(status.message(), "invalid tenant.id: must not be empty");
        let details = status.get_error_details();
        let violations = details.bad_request().map(|b| b.field_violations.clone());
        assert_eq!(
            violations.and_then(|v| v.first().map(|f| f.field.clone())),
            Some("tenant.id".to_owned())
        );
    }

    #[test]
    fn a_version_mismatch_carries_the_current_version() {
        let status = routing(RoutingError::VersionMismatch {
            tenant_id: "t".into(),
            service: "api".into(),
            expected: "v1".into(),
            current: "v2".into(),
        });
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "VERSION_MISMATCH");
        assert_eq!(
            info.metadata.get("current_version").map(String::as_str),
            Some("v2")
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let echoed = routing(RoutingError::not_found(Entity::Tenant, "é".repeat(10_000)));
        assert_eq!(echoed.code(), Code::NotFound);
        assert!(
            echoed.message().len() <= MAX_MESSAGE_BYTES,
            "{}",
            echoed.message().len()
        );
        assert!(echoed.message().ends_with("..."));
    }
}
