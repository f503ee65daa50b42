//! Who may call what: every RPC of `Router` and `Admin` (read from the service descriptors, so
//! a new RPC cannot be forgotten) x every role x a tenant inside and outside the caller's
//! tenant scope, against a node served with auth on.
//!
//! The roles each RPC needs are written here, apart from `control::access::RULES`, and the two
//! must agree: a change of a rule is a change of this table too.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use auth::jwt::{Algorithm, JwtSettings};
use auth::{AuthSettings, Authenticator};
use control::access::{RULES, Reach};
use control::{Actor, Node, NodeSettings};
use greyrouter_proto::v1 as pb;
use greyrouter_store::{MemoryStore, Store, suite};
use http::uri::PathAndQuery;
use jsonwebtoken::{EncodingKey, Header};
use prost::Message;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Code, Status};

const SECRET: &[u8] = b"a shared secret of at least 32 bytes, for tests";
const IN: &str = "acme";
const OUT: &str = "globex";

/// The role each RPC needs (`None`: the test has no cell for it yet).
fn expected_role(method: &str) -> Option<&'static str> {
    Some(match method {
        "Route" | "RouteBatch" | "WatchAssignments" | "ReportOutcome" | "ReportOutcomes" => {
            "router"
        }
        "ListTenants" | "ListServices" | "ListInstances" | "GetTenantServices"
        | "ListOverrides" | "GetRollout" | "ListRollouts" | "GetExperiment" | "ListEvents"
        | "GetSchemaUpgrade" | "WatchSchemaUpgrade" | "GetTenantSchema" | "GetDiscoveryStatus" => {
            "viewer"
        }
        "SetTenantVersion" | "ClearTenantVersion" | "StartRollout" | "PauseRollout"
        | "ResumeRollout" | "PromoteRollout" | "AbortRollout" | "CreateExperiment"
        | "UpdateExperiment" | "StopExperiment" | "UpgradeSchema" | "RepairTenantSchema" => {
            "operator"
        }
        "UpsertTenant" | "UpsertService" | "RegisterInstance" | "DeregisterInstance"
        | "Heartbeat" | "SetDefaultVersion" | "EmergencyRollback" | "ClearOverride"
        | "AdoptStoreHistory" | "ExportState" | "ApplyState" => "admin",
        _ => return None,
    })
}

/// Whether `held` grants `needed`: admin holds operator and viewer, operator holds viewer,
/// nothing else implies anything.
fn grants(held: &str, needed: &str) -> bool {
    held == needed
        || (held == "admin" && matches!(needed, "operator" | "viewer"))
        || (held == "operator" && needed == "viewer")
}

fn token(subject: &str, roles: &[&str], tenants: Option<&[&str]>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = serde_json::json!({
        "sub": subject, "iss": "https://id.test/", "aud": "greyrouter",
        "exp": now + 600, "roles": roles,
    });
    if let Some(tenants) = tenants {
        claims["tenants"] = serde_json::json!(tenants);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET).expect("key"),
    )
    .expect("token")
}

/// What a call answered, reduced to what the matrix judges.
#[derive(Debug)]
enum Answer {
    Status(Status),
    /// Answered; with the tenants of `OUT` the answer showed or took (filtered calls).
    Ok {
        leaked: bool,
    },
}

async fn unary<Req, Res>(
    channel: &Channel,
    token: &str,
    path: &str,
    request: Req,
) -> Result<Res, Status>
where
    Req: Message + Send + Sync + 'static,
    Res: Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    grpc.unary(
        request,
        PathAndQuery::from_str(path).expect("path"),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

async fn first_of_stream<Req, Res>(
    channel: &Channel,
    token: &str,
    path: &str,
    request: Req,
) -> Result<Option<Res>, Status>
where
    Req: Message + Send + Sync + 'static,
    Res: Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let mut stream = grpc
        .server_streaming(
            request,
            PathAndQuery::from_str(path).expect("path"),
            tonic_prost::ProstCodec::default(),
        )
        .await?
        .into_inner();
    stream.message().await
}

async fn client_stream<Req, Res>(
    channel: &Channel,
    token: &str,
    path: &str,
    messages: Vec<Req>,
) -> Result<Res, Status>
where
    Req: Message + Send + Sync + 'static,
    Res: Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(tokio_stream::iter(messages));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    grpc.client_streaming(
        request,
        PathAndQuery::from_str(path).expect("path"),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Shows nothing of another tenant.
fn no<T>(_: &T) -> bool {
    false
}

fn answer<T>(result: Result<T, Status>, leaked: impl FnOnce(&T) -> bool) -> Answer {
    match result {
        Ok(value) => Answer::Ok {
            leaked: leaked(&value),
        },
        Err(status) => Answer::Status(status),
    }
}

/// Calls `method` about `tenant` as the holder of `token`.
async fn call(channel: &Channel, token: &str, method: &str, tenant: &str) -> Option<Answer> {
    let path = |service: &str| format!("/greyrouter.v1.{service}/{method}");
    let router = path("Router");
    let admin = path("Admin");
    let t = tenant.to_owned();
    let route = pb::RouteRequest {
        tenant_id: t.clone(),
        service: "api".into(),
        ..Default::default()
    };
    let outcome = pb::Outcome {
        instance_id: "a1".into(),
        tenant_id: t.clone(),
        service: "api".into(),
        success: true,
        ..Default::default()
    };
    Some(match method {
        "Route" => answer(
            unary::<_, pb::RouteResponse>(channel, token, &router, route).await,
            no::<_>,
        ),
        "RouteBatch" => {
            answer(
                unary::<_, pb::RouteBatchResponse>(
                    channel,
                    token,
                    &router,
                    pb::RouteBatchRequest {
                        requests: vec![route],
                    },
                )
                .await,
                |batch| {
                    batch.results.iter().any(|result| {
                        matches!(result.result, Some(pb::route_result::Result::Route(_)))
                    }) && tenant == OUT
                },
            )
        }
        "WatchAssignments" => answer(
            first_of_stream::<_, pb::AssignmentUpdate>(
                channel,
                token,
                &router,
                pb::WatchAssignmentsRequest {
                    tenant_ids: vec![t],
                    ..Default::default()
                },
            )
            .await,
            |update| {
                update
                    .iter()
                    .any(|u| u.upserts.iter().any(|a| a.tenant_id == OUT))
            },
        ),
        "ReportOutcome" => answer(
            client_stream::<_, pb::ReportOutcomeResponse>(channel, token, &router, vec![outcome])
                .await,
            |reply| reply.accepted > 0 && tenant == OUT,
        ),
        "ReportOutcomes" => answer(
            unary::<_, pb::ReportOutcomeResponse>(
                channel,
                token,
                &router,
                pb::ReportOutcomesRequest {
                    outcomes: vec![outcome],
                },
            )
            .await,
            |reply| reply.accepted > 0 && tenant == OUT,
        ),
        "UpsertTenant" => answer(
            unary::<_, pb::UpsertTenantResponse>(
                channel,
                token,
                &admin,
                pb::UpsertTenantRequest {
                    tenant: Some(pb::Tenant {
                        id: t,
                        active: true,
                        ..Default::default()
                    }),
                },
            )
            .await,
            no::<_>,
        ),
        "ListTenants" => answer(
            unary::<_, pb::ListTenantsResponse>(
                channel,
                token,
                &admin,
                pb::ListTenantsRequest::default(),
            )
            .await,
            |page| page.tenants.iter().any(|tenant| tenant.id == OUT),
        ),
        "UpsertService" => answer(
            unary::<_, pb::UpsertServiceResponse>(
                channel,
                token,
                &admin,
                pb::UpsertServiceRequest {
                    service: Some(pb::Service {
                        name: "other".into(),
                        default_version: "v1".into(),
                        ..Default::default()
                    }),
                    force: true,
                },
            )
            .await,
            no::<_>,
        ),
        "ListServices" => answer(
            unary::<_, pb::ListServicesResponse>(
                channel,
                token,
                &admin,
                pb::ListServicesRequest {},
            )
            .await,
            no::<_>,
        ),
        "RegisterInstance" => answer(
            unary::<_, pb::RegisterInstanceResponse>(
                channel,
                token,
                &admin,
                pb::RegisterInstanceRequest {
                    instance: Some(pb::Instance {
                        id: "a9".into(),
                        address: "a9.internal:8080".into(),
                        service: "api".into(),
                        version: "v1".into(),
                        ..Default::default()
                    }),
                    ttl_seconds: 0,
                },
            )
            .await,
            no::<_>,
        ),
        "DeregisterInstance" => answer(
            unary::<_, pb::DeregisterInstanceResponse>(
                channel,
                token,
                &admin,
                pb::DeregisterInstanceRequest {
                    service: "api".into(),
                    instance_id: "a9".into(),
                },
            )
            .await,
            no::<_>,
        ),
        "Heartbeat" => answer(
            unary::<_, pb::HeartbeatResponse>(
                channel,
                token,
                &admin,
                pb::HeartbeatRequest {
                    service: "api".into(),
                    instance_ids: vec!["a1".into()],
                },
            )
            .await,
            no::<_>,
        ),
        "ListInstances" => answer(
            unary::<_, pb::ListInstancesResponse>(
                channel,
                token,
                &admin,
                pb::ListInstancesRequest {
                    service: "api".into(),
                    version: String::new(),
                },
            )
            .await,
            no::<_>,
        ),
        "SetDefaultVersion" => answer(
            unary::<_, pb::SetDefaultVersionResponse>(
                channel,
                token,
                &admin,
                pb::SetDefaultVersionRequest {
                    service: "api".into(),
                    version: "v1".into(),
                    force: true,
                },
            )
            .await,
            no::<_>,
        ),
        "SetTenantVersion" => answer(
            unary::<_, pb::SetTenantVersionResponse>(
                channel,
                token,
                &admin,
                pb::SetTenantVersionRequest {
                    tenant_id: t,
                    service: "api".into(),
                    version: "v2".into(),
                    force: true,
                    ..Default::default()
                },
            )
            .await,
            no::<_>,
        ),
        "ClearTenantVersion" => answer(
            unary::<_, pb::ClearTenantVersionResponse>(
                channel,
                token,
                &admin,
                pb::ClearTenantVersionRequest {
                    tenant_id: t,
                    service: "api".into(),
                },
            )
            .await,
            no::<_>,
        ),
        "GetTenantServices" => answer(
            unary::<_, pb::GetTenantServicesResponse>(
                channel,
                token,
                &admin,
                pb::GetTenantServicesRequest { tenant_id: t },
            )
            .await,
            no::<_>,
        ),
        "EmergencyRollback" => answer(
            unary::<_, pb::EmergencyRollbackResponse>(
                channel,
                token,
                &admin,
                pb::EmergencyRollbackRequest {
                    service: "api".into(),
                    from_version: "v2".into(),
                    to_version: "v1".into(),
                    tenant_ids: vec![t],
                    dry_run: true,
                    ..Default::default()
                },
            )
            .await,
            no::<_>,
        ),
        "ListOverrides" => answer(
            unary::<_, pb::ListOverridesResponse>(
                channel,
                token,
                &admin,
                pb::ListOverridesRequest::default(),
            )
            .await,
            no::<_>,
        ),
        "ClearOverride" => answer(
            unary::<_, pb::ClearOverrideResponse>(
                channel,
                token,
                &admin,
                pb::ClearOverrideRequest {
                    service: "api".into(),
                    override_id: "none".into(),
                },
            )
            .await,
            no::<_>,
        ),
        "StartRollout" => answer(
            unary::<_, pb::RolloutResponse>(
                channel,
                token,
                &admin,
                pb::StartRolloutRequest {
                    service: "api".into(),
                    to_version: "v2".into(),
                    steps: vec![50.0, 100.0],
                    interval_seconds: 3600,
                    force: true,
                    ..Default::default()
                },
            )
            .await,
            no::<_>,
        ),
        "GetRollout" | "PauseRollout" | "ResumeRollout" | "PromoteRollout" | "AbortRollout" => {
            let request = pb::RolloutActionRequest {
                service: "api".into(),
                id: "none".into(),
                ..Default::default()
            };
            if method == "GetRollout" {
                answer(
                    unary::<_, pb::RolloutResponse>(
                        channel,
                        token,
                        &admin,
                        pb::GetRolloutRequest {
                            service: "api".into(),
                            id: "none".into(),
                        },
                    )
                    .await,
                    no::<_>,
                )
            } else {
                answer(
                    unary::<_, pb::RolloutResponse>(channel, token, &admin, request).await,
                    no::<_>,
                )
            }
        }
        "ListRollouts" => answer(
            unary::<_, pb::ListRolloutsResponse>(
                channel,
                token,
                &admin,
                pb::ListRolloutsRequest::default(),
            )
            .await,
            no::<_>,
        ),
        "CreateExperiment" => answer(
            unary::<_, pb::ExperimentResponse>(
                channel,
                token,
                &admin,
                pb::CreateExperimentRequest {
                    id: "exp".into(),
                    service: "api".into(),
                    variants: vec![pb::Variant {
                        name: "a".into(),
                        version: "v1".into(),
                        weight: 100,
                    }],
                    cohort: None,
                },
            )
            .await,
            no::<_>,
        ),
        "UpdateExperiment" => answer(
            unary::<_, pb::ExperimentResponse>(
                channel,
                token,
                &admin,
                pb::UpdateExperimentRequest {
                    service: "api".into(),
                    id: "none".into(),
                    ..Default::default()
                },
            )
            .await,
            no::<_>,
        ),
        "GetExperiment" => answer(
            unary::<_, pb::ExperimentResponse>(
                channel,
                token,
                &admin,
                pb::GetExperimentRequest {
                    service: "api".into(),
                    id: "none".into(),
                },
            )
            .await,
            no::<_>,
        ),
        "StopExperiment" => answer(
            unary::<_, pb::StopExperimentResponse>(
                channel,
                token,
                &admin,
                pb::StopExperimentRequest {
                    service: "api".into(),
                    id: "none".into(),
                },
            )
            .await,
            no::<_>,
        ),
        "ListEvents" => answer(
            unary::<_, pb::ListEventsResponse>(
                channel,
                token,
                &admin,
                pb::ListEventsRequest {
                    tenant_id: t,
                    limit: 1000,
                    ..Default::default()
                },
            )
            .await,
            |page| page.events.iter().any(|event| event.tenant_id == OUT),
        ),
        "UpgradeSchema" => answer(
            unary::<_, pb::UpgradeSchemaResponse>(
                channel,
                token,
                &admin,
                pb::UpgradeSchemaRequest {
                    service: "api".into(),
                    tenant_ids: vec![t],
                    target_version: "v2".into(),
                    dry_run: true,
                    ..Default::default()
                },
            )
            .await,
            no::<_>,
        ),
        "GetSchemaUpgrade" => answer(
            unary::<_, pb::SchemaUpgrade>(
                channel,
                token,
                &admin,
                pb::GetSchemaUpgradeRequest {
                    upgrade_id: "none".into(),
                },
            )
            .await,
            no::<_>,
        ),
        "WatchSchemaUpgrade" => answer(
            first_of_stream::<_, pb::SchemaUpgrade>(
                channel,
                token,
                &admin,
                pb::GetSchemaUpgradeRequest {
                    upgrade_id: "none".into(),
                },
            )
            .await,
            no::<_>,
        ),
        "GetTenantSchema" => answer(
            unary::<_, pb::GetTenantSchemaResponse>(
                channel,
                token,
                &admin,
                pb::GetTenantSchemaRequest {
                    tenant_id: t,
                    service: "api".into(),
                },
            )
            .await,
            no::<_>,
        ),
        "RepairTenantSchema" => answer(
            unary::<_, pb::RepairTenantSchemaResponse>(
                channel,
                token,
                &admin,
                pb::RepairTenantSchemaRequest {
                    tenant_id: t,
                    service: "api".into(),
                },
            )
            .await,
            no::<_>,
        ),
        "AdoptStoreHistory" => answer(
            unary::<_, pb::AdoptStoreHistoryResponse>(
                channel,
                token,
                &admin,
                pb::AdoptStoreHistoryRequest::default(),
            )
            .await,
            no::<_>,
        ),
        "GetDiscoveryStatus" => answer(
            unary::<_, pb::GetDiscoveryStatusResponse>(
                channel,
                token,
                &admin,
                pb::GetDiscoveryStatusRequest {},
            )
            .await,
            no::<_>,
        ),
        "ExportState" => answer(
            first_of_stream::<_, pb::StateChunk>(
                channel,
                token,
                &admin,
                pb::ExportStateRequest::default(),
            )
            .await,
            no::<_>,
        ),
        "ApplyState" => answer(
            client_stream::<_, pb::ApplyStateResponse>(
                channel,
                token,
                &admin,
                vec![pb::ApplyStateRequest {
                    sections: vec!["tenants".into()],
                    dry_run: true,
                    data: br#"{"tenants": []}"#.to_vec(),
                    ..Default::default()
                }],
            )
            .await,
            no::<_>,
        ),
        _ => return None,
    })
}

async fn serve() -> (Channel, Arc<Node>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let node = Node::start(store, None, NodeSettings::default())
        .await
        .expect("node");
    let actor = Actor::system("test", "");
    for mutation in [
        suite::service(),
        suite::instance("a1", "v1"),
        suite::instance("a2", "v2"),
        suite::tenant(IN),
        suite::tenant(OUT),
    ] {
        node.replica().commit(mutation, &actor).await.expect("seed");
    }
    let mut jwt = JwtSettings::new("https://id.test/", "greyrouter");
    jwt.algorithms = vec![Algorithm::HS256];
    jwt.hs256_secret = Some(SECRET.to_vec());
    let auth = Authenticator::start(AuthSettings {
        jwt: Some(jwt),
        ..AuthSettings::default()
    })
    .await
    .expect("auth");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(grpc_server::serve(
        Arc::clone(&node),
        grpc_server::GrpcSettings::default(),
        grpc_server::Security {
            auth: Some(Arc::new(auth)),
            ..grpc_server::Security::default()
        },
        listener,
        std::future::pending(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    (channel, node)
}

fn methods() -> Vec<(String, String)> {
    let set = prost_types::FileDescriptorSet::decode(greyrouter_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut methods = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                methods.push((service.name().to_owned(), method.name().to_owned()));
            }
        }
    }
    methods
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_by_every_role_in_and_out_of_scope() {
    let (channel, _node) = serve().await;
    // Events about both tenants, so that a leak of the other tenant's would show.
    let unscoped_admin = token("root", &["admin"], None);
    for tenant in [IN, OUT] {
        let _ = call(&channel, &unscoped_admin, "SetTenantVersion", tenant).await;
    }
    let methods = methods();
    assert!(methods.len() >= 40, "{} methods", methods.len());
    let mut cells = 0;
    let mut missing = Vec::new();
    for (service, method) in &methods {
        let Some(needed) = expected_role(method) else {
            missing.push(format!("{service}/{method}: no expected role in the test"));
            continue;
        };
        let Some(rule) = RULES
            .iter()
            .find(|r| r.service == service && r.operation == method)
        else {
            missing.push(format!("{service}/{method}: no access rule"));
            continue;
        };
        assert_eq!(
            rule.role.name(),
            needed,
            "{service}/{method}: the rule disagrees"
        );
        for role in ["none", "viewer", "router", "operator", "admin"] {
            let scoped = token(&format!("{role}-svc"), &[role], Some(&[IN]));
            for tenant in [IN, OUT] {
                let Some(answer) = call(&channel, &scoped, method, tenant).await else {
                    missing.push(format!("{service}/{method}: no request in the test"));
                    break;
                };
                cells += 1;
                let cell = format!("{service}/{method} as {role} about {tenant}");
                let denied = |answer: &Answer| match answer {
                    Answer::Status(status) => status.code() == Code::PermissionDenied,
                    Answer::Ok { .. } => false,
                };
                if !grants(role, needed) {
                    let Answer::Status(status) = &answer else {
                        panic!("{cell}: answered without the role {needed}: {answer:?}");
                    };
                    assert_eq!(status.code(), Code::PermissionDenied, "{cell}: {status:?}");
                    assert!(
                        status.message().contains(needed),
                        "{cell}: the refusal does not name {needed}: {}",
                        status.message()
                    );
                    continue;
                }
                // The role is held: the tenant scope decides.
                match (rule.reach, tenant) {
                    (Reach::Shared, _) | (Reach::Tenant | Reach::Tenants, IN) => {
                        assert!(!denied(&answer), "{cell}: refused: {answer:?}");
                    }
                    (Reach::Tenant | Reach::Tenants | Reach::Fleet, _) => {
                        assert!(denied(&answer), "{cell}: not refused: {answer:?}");
                    }
                    (Reach::Filtered, _) => match &answer {
                        Answer::Ok { leaked } => {
                            assert!(!leaked, "{cell}: showed or took the other tenant")
                        }
                        Answer::Status(status) => assert!(
                            status.code() == Code::PermissionDenied && tenant == OUT,
                            "{cell}: {status:?}"
                        ),
                    },
                }
                if matches!(answer, Answer::Status(ref s) if s.code() == Code::Unauthenticated) {
                    panic!("{cell}: a good token was refused");
                }
            }
        }
        // Every call an unscoped caller with the role may make is not refused.
        let unscoped = token("root", &[needed], None);
        let answer = call(&channel, &unscoped, method, OUT).await;
        assert!(
            !matches!(&answer, Some(Answer::Status(s)) if matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated)),
            "{service}/{method} as an unscoped {needed}: {answer:?}"
        );
    }
    assert!(
        missing.is_empty(),
        "cells without a rule or a request: {missing:#?}"
    );
    assert_eq!(cells, methods.len() * 5 * 2, "every cell checked");
    println!(
        "access matrix: {cells} cells checked ({} RPCs x 5 roles x 2 tenants)",
        methods.len()
    );
}

#[tokio::test]
async fn no_token_or_a_bad_one_is_unauthenticated_and_health_stays_open() {
    let (channel, _node) = serve().await;
    let router = "/greyrouter.v1.Router/Route";
    let route = || pb::RouteRequest {
        tenant_id: IN.into(),
        service: "api".into(),
        ..Default::default()
    };
    for bad in ["", "garbage", "eyJhbGciOiJub25lIn0.e30."] {
        let status = unary::<_, pb::RouteResponse>(&channel, bad, router, route())
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{bad:?}: {status:?}");
        assert!(
            !status.message().contains("signature"),
            "{}",
            status.message()
        );
    }
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("ready");
    let status = grpc
        .unary::<_, pb::RouteResponse, _>(
            tonic::Request::new(route()),
            PathAndQuery::from_static("/greyrouter.v1.Router/Route"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let served = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health needs no token");
    assert_eq!(served.into_inner().status, 1);
}

#[tokio::test]
async fn the_audit_actor_is_the_verified_subject_not_the_header() {
    let (channel, node) = serve().await;
    let operator = token("alice@example.com", &["operator"], None);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(pb::SetTenantVersionRequest {
        tenant_id: IN.into(),
        service: "api".into(),
        version: "v2".into(),
        force: true,
        ..Default::default()
    });
    let metadata = request.metadata_mut();
    metadata.insert(
        "authorization",
        format!("Bearer {operator}").parse().expect("h"),
    );
    metadata.insert("x-greyrouter-actor", "mallory".parse().expect("h"));
    grpc.unary::<_, pb::SetTenantVersionResponse, _>(
        request,
        PathAndQuery::from_static("/greyrouter.v1.Admin/SetTenantVersion"),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .expect("pinned");
    let events = node
        .events(&control::node::EventQuery {
            since_revision: 0,
            tenant_id: IN.into(),
            service: String::new(),
            limit: 100,
        })
        .await
        .expect("events");
    let last = events.events.last().expect("an event");
    assert_eq!(last.actor, "alice@example.com");
}
