//! The one error type of routing decisions and state changes.

use crate::Revision;

/// Why a routing decision or a change of routing state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// A field of the request is empty, malformed or too large.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field, as named in the API (`tenant.id`, `version`, ...).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tenant, service, version, instance or override does not exist.
    #[error("{kind} '{id}' not found")]
    NotFound {
        /// What was looked up.
        kind: Entity,
        /// Its identifier (`service/version` for versions).
        id: String,
    },
    /// The tenant exists but is inactive, so it is not routed.
    #[error("tenant '{0}' is inactive")]
    InactiveTenant(String),
    /// Assigning a version that has no healthy, undrained instance (without `force`).
    #[error(
        "version '{version}' of service '{service}' has no healthy instance; use force to assign it anyway"
    )]
    VersionNotServable {
        /// The service.
        service: String,
        /// The version without a healthy instance.
        version: String,
    },
    /// A compare-and-set found another version than the expected one.
    #[error(
        "tenant '{tenant_id}' is on version '{current}' of service '{service}', not '{expected}'"
    )]
    VersionMismatch {
        /// The tenant.
        tenant_id: String,
        /// The service.
        service: String,
        /// The version the caller expected.
        expected: String,
        /// The version the tenant is actually on.
        current: String,
    },
    /// The change does not fit the current state (a rollout already running, a stale decision).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The state moved since the change was planned on it.
    #[error(
        "the routing state moved since the change was planned (planned on revision {expected}, now at {current}); plan again"
    )]
    StateMoved {
        /// The revision the change was planned on.
        expected: Revision,
        /// The revision now.
        current: Revision,
    },
    /// No instance of the resolved version can take traffic.
    #[error("no healthy instance of service '{service}' version '{version}'")]
    NoHealthyInstance {
        /// The service.
        service: String,
        /// The resolved version.
        version: String,
    },
}

/// The kinds of things routing state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    /// A tenant.
    Tenant,
    /// A service.
    Service,
    /// A version of a service.
    Version,
    /// An instance of a service.
    Instance,
    /// An emergency override.
    Override,
    /// A gradual rollout.
    Rollout,
    /// An A/B experiment.
    Experiment,
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Entity::Tenant => "tenant",
            Entity::Service => "service",
            Entity::Version => "version",
            Entity::Instance => "instance",
            Entity::Override => "override",
            Entity::Rollout => "rollout",
            Entity::Experiment => "experiment",
        })
    }
}

impl RoutingError {
    /// Returns an [`RoutingError::InvalidArgument`] for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        RoutingError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Returns a [`RoutingError::NotFound`].
    pub fn not_found(kind: Entity, id: impl Into<String>) -> Self {
        RoutingError::NotFound {
            kind,
            id: id.into(),
        }
    }
}
