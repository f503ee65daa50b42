//! The gRPC face of [`control::access`]: which rule a method path has, how a refusal is
//! answered, and the tenant checks each handler makes with its decoded request.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use auth::Operation;
use control::access::{Caller, RULES, Rule};
use control::audit::{ACTOR_HEADER, REASON_HEADER};
use control::{Actor, Error, ErrorKind, Node};
use tonic::{Request, Status};

use crate::status::{self, status};

/// The gRPC package of the greyrouter services.
pub const PACKAGE: &str = "greyrouter.v1";

static BY_PATH: LazyLock<HashMap<String, &'static Rule>> = LazyLock::new(|| {
    RULES
        .iter()
        .map(|rule| {
            (
                format!("/{PACKAGE}.{}/{}", rule.service, rule.operation),
                rule,
            )
        })
        .collect()
});

/// The operation of a method path: health checks and reflection are open; a greyrouter
/// method has its rule; anything else is unknown.
pub fn classify(path: &str) -> Operation {
    if let Some(rule) = BY_PATH.get(path) {
        return Operation::Governed(rule);
    }
    if path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.") {
        Operation::Open
    } else {
        Operation::Unknown
    }
}

/// Answers a refusal of the auth layer as a gRPC status.
pub fn refuse(err: &Error) -> http::Response<tonic::body::Body> {
    status(err).into_http()
}

/// The rule of `service`'s `method`, by its RPC name.
fn rule_of(service: &str, method: &str) -> Result<&'static Rule, Status> {
    control::access::rule(service, method).ok_or_else(|| {
        status(&Error::new(
            ErrorKind::PermissionDenied,
            format!("no access rule covers {service}/{method}"),
        ))
    })
}

/// The caller the auth layer found.
pub fn caller<T>(request: &Request<T>) -> Result<Arc<Caller>, Status> {
    request
        .extensions()
        .get::<Arc<Caller>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no caller: the auth layer is missing"))
}

/// Checks a request of `service`'s `method` that names `tenants` against the method's rule
/// and the caller's scope, and takes it from each tenant's rate budget; answers the caller.
pub fn admit<T>(
    node: &Node,
    request: &Request<T>,
    service: &str,
    method: &str,
    tenants: &[&str],
) -> Result<Arc<Caller>, Status> {
    let caller = caller(request)?;
    let rule = rule_of(service, method)?;
    control::access::admit_tenants(&node.snapshot(), node.admission(), &caller, rule, tenants)
        .map_err(|e| status(&e))?;
    Ok(caller)
}

/// The audit trail's actor of a request: the verified caller when auth is on, else the actor
/// header; the reason header either way.
pub fn actor<T>(caller: &Caller, request: &Request<T>) -> Result<Actor, Status> {
    let metadata = request.metadata();
    let header = |name: &'static str| -> Result<Option<&str>, Status> {
        metadata
            .get(name)
            .map(|value| {
                value
                    .to_str()
                    .map_err(|_| status::invalid_argument(name, "must be printable ASCII"))
            })
            .transpose()
    };
    caller
        .actor(header(ACTOR_HEADER)?, header(REASON_HEADER)?)
        .map_err(|e| status(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_rules_and_only_health_and_reflection_are_open() {
        assert!(matches!(
            classify("/greyrouter.v1.Admin/SetTenantVersion"),
            Operation::Governed(rule) if rule.operation == "SetTenantVersion"
        ));
        assert_eq!(classify("/grpc.health.v1.Health/Check"), Operation::Open);
        assert_eq!(
            classify("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Operation::Open
        );
        assert_eq!(
            classify("/greyrouter.v1.Admin/NoSuchThing"),
            Operation::Unknown
        );
        assert_eq!(classify("/other.Service/Route"), Operation::Unknown);
    }

    #[test]
    fn every_method_of_the_contract_has_a_rule_and_every_rule_a_method() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(greyrouter_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let mut methods = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        for path in &methods {
            assert!(
                matches!(classify(path), Operation::Governed(_)),
                "{path} has no access rule"
            );
        }
        assert_eq!(methods.len(), RULES.len(), "a rule names no method");
    }
}
