//! Every Admin and Router RPC against a real server on an ephemeral port.

mod support;

use std::collections::{HashMap, HashSet};

use greyrouter_proto::v1 as pb;
use support::{TestServer, instance, tenant};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn route_answers_version_instance_source_and_revision() {
    let mut server = TestServer::start().await;
    server.populate(2).await;
    let revision = server.pin("t1", "api", "v2").await;

    let default = server.route("t0", "api").await.expect("route t0");
    assert_eq!(
        (
            default.version.as_str(),
            default.source.as_str(),
            default.instance_id.as_str()
        ),
        ("v1", "default", "a1")
    );
    assert_eq!(default.address, "a1.internal:8080");
    let pinned = server.route("t1", "api").await.expect("route t1");
    assert_eq!(
        (pinned.version.as_str(), pinned.source.as_str()),
        ("v2", "pin")
    );
    assert_eq!(pinned.instance_id, "b1");
    assert_eq!(pinned.revision, revision);
    server.stop().await;
}

#[tokio::test]
async fn non_default_http2_settings_serve_concurrent_calls() {
    let config = greyrouter::config::Config {
        server: greyrouter::config::ServerSettings {
            http2_adaptive_window: true,
            max_concurrent_streams: 2,
            http2_keepalive_interval_ms: 1_000,
            http2_keepalive_timeout_ms: 1_000,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut server = TestServer::with_config(config).await;
    server.populate(4).await;
    // The server announces the stream limit it was given.
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (send, mut connection) = h2::client::handshake(tcp).await.expect("handshake");
    let mut ping = connection.ping_pong().expect("ping handle");
    tokio::spawn(connection);
    support::within(ping.ping(h2::Ping::opaque()))
        .await
        .expect("pong");
    assert_eq!(send.current_max_send_streams(), 2);
    // 16 calls at once on one connection that allows 2 streams: the client queues the rest.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..16 {
        let mut router = server.router.clone();
        calls.spawn(async move {
            router
                .route(pb::RouteRequest {
                    tenant_id: format!("t{}", i % 4),
                    service: "api".into(),
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let mut routed = 0;
    while let Some(call) = support::within(calls.join_next()).await {
        let response = call.expect("task").expect("route");
        assert_eq!(response.instance_id, "a1");
        routed += 1;
    }
    assert_eq!(routed, 16);
    server.stop().await;
}

#[tokio::test]
async fn tenants_are_listed_in_pages() {
    let mut server = TestServer::start().await;
    for i in 0..25 {
        server.tenant(&format!("tenant-{i:02}"), "eu").await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = server
            .admin
            .list_tenants(pb::ListTenantsRequest {
                page_size: 10,
                page_token: token,
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.tenants.len() <= 10);
        seen.extend(page.tenants.into_iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<String> = (0..25).map(|i| format!("tenant-{i:02}")).collect();
    assert_eq!(seen, expected);
    server.stop().await;
}

#[tokio::test]
async fn services_and_instances_are_managed() {
    let mut server = TestServer::start().await;
    server.populate(0).await;
    server.instance("api", "v1", "a2", "us").await;
    let listed = server
        .admin
        .list_instances(pb::ListInstancesRequest {
            service: "api".into(),
            version: "v1".into(),
        })
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<&str> = listed.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["a1", "a2"]);
    assert_eq!(listed.instances[0].weight, Some(1));
    assert_eq!(listed.instances[0].healthy, Some(true));

    server
        .admin
        .deregister_instance(pb::DeregisterInstanceRequest {
            service: "api".into(),
            instance_id: "a2".into(),
        })
        .await
        .expect("deregister");
    let all = server
        .admin
        .list_instances(pb::ListInstancesRequest {
            service: "api".into(),
            version: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<&str> = all.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["a1", "b1"]);

    let services = server
        .admin
        .list_services(pb::ListServicesRequest {})
        .await
        .expect("services")
        .into_inner();
    assert_eq!(services.services.len(), 1);
    assert_eq!(services.services[0].versions, ["v1", "v2"]);

    let gone = server
        .admin
        .deregister_instance(pb::DeregisterInstanceRequest {
            service: "api".into(),
            instance_id: "a2".into(),
        })
        .await
        .expect_err("already gone");
    assert_eq!(gone.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn default_version_moves_unpinned_tenants() {
    let mut server = TestServer::start().await;
    server.populate(2).await;
    server.pin("t0", "api", "v1").await;
    let response = server
        .admin
        .set_default_version(pb::SetDefaultVersionRequest {
            service: "api".into(),
            version: "v2".into(),
            force: false,
        })
        .await
        .expect("set default")
        .into_inner();
    let t0 = server.route("t0", "api").await.expect("route");
    let t1 = server.route("t1", "api").await.expect("route");
    assert_eq!((t0.version.as_str(), t0.source.as_str()), ("v1", "pin"));
    assert_eq!((t1.version.as_str(), t1.source.as_str()), ("v2", "default"));
    assert_eq!(t1.revision, response.revision);
    server.stop().await;
}

#[tokio::test]
async fn compare_and_set_wins_once_and_reports_the_current_version() {
    let mut server = TestServer::start().await;
    server.populate(1).await;
    let set = |expected: &str| pb::SetTenantVersionRequest {
        tenant_id: "t0".into(),
        service: "api".into(),
        version: "v2".into(),
        expected_version: Some(expected.into()),
        force: false,
        migrate: false,
    };
    let won = server
        .admin
        .set_tenant_version(set("v1"))
        .await
        .expect("first wins")
        .into_inner();
    assert_eq!(won.previous_version, "v1");
    let lost = server
        .admin
        .set_tenant_version(set("v1"))
        .await
        .expect_err("second loses");
    assert_eq!(lost.code(), Code::Aborted);
    assert!(lost.message().contains("'v2'"), "{}", lost.message());
    let info = lost
        .get_error_details()
        .error_info()
        .cloned()
        .expect("error info");
    assert_eq!(
        info.metadata.get("current_version").map(String::as_str),
        Some("v2")
    );

    // Both racing from one client through two connections: exactly one wins.
    server.tenant("t9", "eu").await;
    let race = |mut admin: greyrouter_proto::v1::admin_client::AdminClient<_>| async move {
        admin
            .set_tenant_version(pb::SetTenantVersionRequest {
                tenant_id: "t9".into(),
                service: "api".into(),
                version: "v2".into(),
                expected_version: Some("v1".into()),
                force: false,
                migrate: false,
            })
            .await
    };
    let (a, b) = tokio::join!(race(server.admin.clone()), race(server.admin.clone()));
    assert_eq!([a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(), 1);
    server.stop().await;
}

#[tokio::test]
async fn clearing_a_pin_returns_the_tenant_to_the_default() {
    let mut server = TestServer::start().await;
    server.populate(1).await;
    server.pin("t0", "api", "v2").await;
    let clear = || pb::ClearTenantVersionRequest {
        tenant_id: "t0".into(),
        service: "api".into(),
    };
    let cleared = server
        .admin
        .clear_tenant_version(clear())
        .await
        .expect("clear")
        .into_inner();
    assert!(cleared.cleared);
    let again = server
        .admin
        .clear_tenant_version(clear())
        .await
        .expect("clear")
        .into_inner();
    assert!(!again.cleared);
    assert_eq!(again.revision, cleared.revision + 1);
    let routed = server.route("t0", "api").await.expect("route");
    assert_eq!(
        (routed.version.as_str(), routed.source.as_str()),
        ("v1", "default")
    );
    server.stop().await;
}

#[tokio::test]
async fn tenant_services_show_version_source_and_pin() {
    let mut server = TestServer::start().await;
    server.populate(1).await;
    server.service("billing", "b1", pb::Strategy::Random).await;
    server.instance("billing", "b1", "bill-1", "eu").await;
    server.pin("t0", "api", "v2").await;
    let response = server
        .admin
        .get_tenant_services(pb::GetTenantServicesRequest {
            tenant_id: "t0".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(response.tenant.map(|t| t.id), Some("t0".to_owned()));
    let by_service: HashMap<&str, (&str, &str, &str)> = response
        .services
        .iter()
        .map(|s| {
            (
                s.service.as_str(),
                (
                    s.version.as_str(),
                    s.source.as_str(),
                    s.pinned_version.as_str(),
                ),
            )
        })
        .collect();
    assert_eq!(by_service["api"], ("v2", "pin", "v2"));
    assert_eq!(by_service["billing"], ("b1", "default", ""));
    server.stop().await;
}

#[tokio::test]
async fn emergency_rollback_moves_every_tenant_at_once_and_can_be_cleared() {
    let mut server = TestServer::start().await;
    server.populate(20).await;
    server
        .admin
        .set_default_version(pb::SetDefaultVersionRequest {
            service: "api".into(),
            version: "v2".into(),
            force: false,
        })
        .await
        .expect("default v2");
    server.pin("t0", "api", "v2").await;
    server.pin("t1", "api", "v1").await;
    let rollback = server
        .admin
        .emergency_rollback(pb::EmergencyRollbackRequest {
            service: "api".into(),
            from_version: "v2".into(),
            to_version: "v1".into(),
            tenant_ids: vec![],
            force: false,
            ..Default::default()
        })
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!(rollback.moved_tenants, 19, "t1 was already on v1");
    assert_eq!(rollback.override_id, format!("rb-{}", rollback.revision));
    for i in 0..20 {
        let routed = server.route(&format!("t{i}"), "api").await.expect("route");
        assert_eq!(routed.version, "v1", "t{i}");
        assert_eq!(routed.revision, rollback.revision);
    }
    let pinned = server.route("t0", "api").await.expect("route");
    assert_eq!(pinned.source, format!("override:{}", rollback.override_id));

    let listed = server
        .admin
        .list_overrides(pb::ListOverridesRequest {
            service: "api".into(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.overrides.len(), 1);
    assert_eq!(listed.overrides[0].from_version, "v2");

    server
        .admin
        .clear_override(pb::ClearOverrideRequest {
            service: "api".into(),
            override_id: rollback.override_id.clone(),
        })
        .await
        .expect("clear");
    let back = server.route("t0", "api").await.expect("route");
    assert_eq!((back.version.as_str(), back.source.as_str()), ("v2", "pin"));
    server.stop().await;
}

#[tokio::test]
async fn rollback_of_listed_tenants_moves_only_them() {
    let mut server = TestServer::start().await;
    server.populate(3).await;
    for t in ["t0", "t1", "t2"] {
        server.pin(t, "api", "v2").await;
    }
    let rollback = server
        .admin
        .emergency_rollback(pb::EmergencyRollbackRequest {
            service: "api".into(),
            from_version: "v2".into(),
            to_version: "v1".into(),
            tenant_ids: vec!["t1".into()],
            force: false,
            ..Default::default()
        })
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!(rollback.moved_tenants, 1);
    let versions: Vec<String> = [
        server.route("t0", "api").await,
        server.route("t1", "api").await,
        server.route("t2", "api").await,
    ]
    .into_iter()
    .map(|r| r.expect("route").version)
    .collect();
    assert_eq!(versions, ["v2", "v1", "v2"]);
    server.stop().await;
}

#[tokio::test]
async fn strategies_and_region_preference_apply_per_request() {
    let mut server = TestServer::start().await;
    server.populate(1).await;
    server.instance("api", "v1", "a2", "eu").await;
    server.instance("api", "v1", "us1", "us").await;
    let route = |strategy: pb::Strategy, region: &str, hash_key: &str| pb::RouteRequest {
        tenant_id: "t0".into(),
        service: "api".into(),
        metadata: HashMap::new(),
        hash_key: hash_key.into(),
        region: region.into(),
        strategy: strategy.into(),
    };
    // Tenant t0 lives in eu: round robin alternates between the two eu instances only, each
    // in turn (random picking would repeat one).
    let mut picked = Vec::new();
    for _ in 0..8 {
        let r = server
            .router
            .route(route(pb::Strategy::RoundRobin, "", ""))
            .await
            .expect("route");
        picked.push(r.into_inner().instance_id);
    }
    let turn = [picked[0].clone(), picked[1].clone()];
    assert_eq!(
        HashSet::from(turn.clone()),
        HashSet::from(["a1".to_owned(), "a2".to_owned()]),
        "{picked:?}"
    );
    let alternating: Vec<String> = turn.iter().cycle().take(8).cloned().collect();
    assert_eq!(picked, alternating);
    // Asking for us picks the us instance.
    let us = server
        .router
        .route(route(pb::Strategy::Random, "us", ""))
        .await
        .expect("route");
    assert_eq!(us.into_inner().instance_id, "us1");
    // Consistent hash: the same key keeps its instance.
    let first = server
        .router
        .route(route(pb::Strategy::ConsistentHash, "", "user-42"))
        .await
        .expect("route")
        .into_inner()
        .instance_id;
    for _ in 0..5 {
        let again = server
            .router
            .route(route(pb::Strategy::ConsistentHash, "", "user-42"))
            .await
            .expect("route")
            .into_inner()
            .instance_id;
        assert_eq!(again, first);
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_status() {
    let mut server = TestServer::start().await;
    server.populate(1).await;

    let empty = server.route("", "api").await.expect_err("empty tenant");
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_eq!(empty.message(), "invalid tenant_id: must not be empty");
    let field = empty
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations[0].field.clone());
    assert_eq!(field.as_deref(), Some("tenant_id"));

    let long = server
        .route(&"x".repeat(200), "api")
        .await
        .expect_err("too long");
    assert_eq!(long.code(), Code::InvalidArgument);

    let unknown_tenant = server
        .route("nobody", "api")
        .await
        .expect_err("unknown tenant");
    assert_eq!(unknown_tenant.code(), Code::NotFound);
    assert!(unknown_tenant.message().contains("nobody"));
    let unknown_service = server
        .route("t0", "nothing")
        .await
        .expect_err("unknown service");
    assert_eq!(unknown_service.code(), Code::NotFound);

    let bad_strategy = server
        .router
        .route(pb::RouteRequest {
            tenant_id: "t0".into(),
            service: "api".into(),
            strategy: 99,
            ..Default::default()
        })
        .await
        .expect_err("unknown strategy");
    assert_eq!(bad_strategy.code(), Code::InvalidArgument);
    assert!(bad_strategy.message().contains("strategy"));

    let too_much_metadata = server
        .router
        .route(pb::RouteRequest {
            tenant_id: "t0".into(),
            service: "api".into(),
            metadata: (0..100)
                .map(|i| (format!("k{i}"), "v".to_owned()))
                .collect(),
            ..Default::default()
        })
        .await
        .expect_err("metadata limit");
    assert_eq!(too_much_metadata.code(), Code::InvalidArgument);
    assert!(too_much_metadata.message().contains("metadata"));

    let huge = server
        .router
        .route(pb::RouteRequest {
            tenant_id: "t0".into(),
            service: "api".into(),
            hash_key: "k".repeat(2 * 1024 * 1024),
            ..Default::default()
        })
        .await
        .expect_err("request size limit");
    assert_eq!(huge.code(), Code::OutOfRange, "{huge:?}");

    let unknown_version = server
        .admin
        .set_tenant_version(pb::SetTenantVersionRequest {
            tenant_id: "t0".into(),
            service: "api".into(),
            version: "v9".into(),
            expected_version: None,
            force: false,
            migrate: false,
        })
        .await
        .expect_err("unknown version");
    assert_eq!(unknown_version.code(), Code::NotFound);

    let missing_tenant = server
        .admin
        .upsert_tenant(pb::UpsertTenantRequest { tenant: None })
        .await
        .expect_err("missing tenant");
    assert_eq!(missing_tenant.code(), Code::InvalidArgument);
    assert_eq!(missing_tenant.message(), "invalid tenant: is required");

    let bad_address = server
        .admin
        .register_instance(pb::RegisterInstanceRequest {
            instance: Some(pb::Instance {
                address: "no-port".into(),
                ..instance("api", "v1", "x1", "eu")
            }),
            ttl_seconds: 0,
        })
        .await
        .expect_err("bad address");
    assert_eq!(bad_address.code(), Code::InvalidArgument);
    assert!(bad_address.message().contains("instance.address"));

    let bad_tenant = server
        .admin
        .upsert_tenant(pb::UpsertTenantRequest {
            tenant: Some(tenant("has space", "eu")),
        })
        .await
        .expect_err("bad id");
    assert!(bad_tenant.message().contains("tenant.id"));
    server.stop().await;
}

#[tokio::test]
async fn versions_without_healthy_instances_are_refused_unless_forced() {
    let mut server = TestServer::start().await;
    server.populate(1).await;
    server
        .admin
        .register_instance(pb::RegisterInstanceRequest {
            instance: Some(pb::Instance {
                healthy: Some(false),
                ..instance("api", "v3", "c1", "eu")
            }),
            ttl_seconds: 0,
        })
        .await
        .expect("register unhealthy");
    let request = |force| pb::SetTenantVersionRequest {
        tenant_id: "t0".into(),
        service: "api".into(),
        version: "v3".into(),
        expected_version: None,
        force,
        migrate: false,
    };
    let refused = server
        .admin
        .set_tenant_version(request(false))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("no healthy instance"),
        "{}",
        refused.message()
    );
    server
        .admin
        .set_tenant_version(request(true))
        .await
        .expect("forced");
    let unavailable = server
        .route("t0", "api")
        .await
        .expect_err("nothing healthy");
    assert_eq!(unavailable.code(), Code::Unavailable);
    assert!(
        unavailable.message().contains("no healthy instance"),
        "{}",
        unavailable.message()
    );

    let mut inactive = tenant("sleepy", "eu");
    inactive.active = false;
    server
        .admin
        .upsert_tenant(pb::UpsertTenantRequest {
            tenant: Some(inactive),
        })
        .await
        .expect("upsert");
    let status = server.route("sleepy", "api").await.expect_err("inactive");
    assert_eq!(status.code(), Code::FailedPrecondition);
    server.stop().await;
}

#[tokio::test]
async fn every_mutation_returns_the_next_revision() {
    let mut server = TestServer::start().await;
    let mut revisions = vec![
        server.service("api", "v1", pb::Strategy::RoundRobin).await,
        server.instance("api", "v1", "a1", "eu").await,
        server.tenant("t0", "eu").await,
    ];
    revisions.push(server.pin("t0", "api", "v1").await);
    assert_eq!(revisions, [1, 2, 3, 4]);
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let server = TestServer::start().await;
    let channel = server.channel.clone();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "greyrouter.v1.Router", "greyrouter.v1.Admin"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("message")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: HashSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "greyrouter.v1.Router",
        "greyrouter.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_batch_answers_each_request_on_its_own() {
    let mut server = TestServer::start().await;
    server.populate(2).await;
    let revision = server.pin("t1", "api", "v2").await;
    let request = |tenant: &str| pb::RouteRequest {
        tenant_id: tenant.into(),
        service: "api".into(),
        ..Default::default()
    };
    let response = server
        .router
        .route_batch(pb::RouteBatchRequest {
            requests: vec![request("t0"), request("t1"), request("nobody"), request("")],
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(response.revision, revision);
    let answers: Vec<String> = response
        .results
        .iter()
        .map(|r| match &r.result {
            Some(pb::route_result::Result::Route(route)) => {
                format!("{} {}", route.version, route.source)
            }
            Some(pb::route_result::Result::Error(error)) => format!("error {}", error.code),
            None => "nothing".to_owned(),
        })
        .collect();
    assert_eq!(answers, ["v1 default", "v2 pin", "error 5", "error 3"]);

    let too_many = server
        .router
        .route_batch(pb::RouteBatchRequest {
            requests: (0..1001).map(|_| request("t0")).collect(),
        })
        .await
        .expect_err("limit");
    assert_eq!(too_many.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn bad_page_tokens_and_report_tenant_ids_are_refused() {
    let mut server = TestServer::start().await;
    server.populate(2).await;

    for token in ["not a tenant", "t0\u{202E}", "t0\u{200B}"] {
        let refused = server
            .admin
            .list_tenants(pb::ListTenantsRequest {
                page_size: 10,
                page_token: token.into(),
            })
            .await
            .expect_err("a bad page token is refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{token:?}");
        let field = refused
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations[0].field.clone());
        assert_eq!(field.as_deref(), Some("page_token"), "{token:?}");
    }
    // A tenant id that does not exist is still a valid position.
    let page = server
        .admin
        .list_tenants(pb::ListTenantsRequest {
            page_size: 10,
            page_token: "t0".into(),
        })
        .await
        .expect("list after t0")
        .into_inner();
    let ids: Vec<String> = page.tenants.into_iter().map(|t| t.id).collect();
    assert_eq!(ids, ["t1"]);

    let report = |tenant_id: &str| pb::Outcome {
        instance_id: "a1".into(),
        tenant_id: tenant_id.into(),
        service: "api".into(),
        success: true,
        latency_ms: 3,
        ..Default::default()
    };
    let response = server
        .router
        .report_outcomes(pb::ReportOutcomesRequest {
            outcomes: vec![report("t0"), report(""), report("bad tenant")],
        })
        .await
        .expect("report")
        .into_inner();
    assert_eq!((response.accepted, response.rejected), (2, 1));
    assert!(
        response.first_rejection.starts_with("invalid tenant_id: "),
        "{}",
        response.first_rejection
    );
    server.stop().await;
}

#[tokio::test]
async fn the_server_advertises_a_stream_limit_and_refuses_oversized_headers() {
    let mut server = TestServer::start().await;
    server.populate(1).await;
    // What the server announces in its HTTP/2 SETTINGS, read by a plain HTTP/2 client: a ping
    // answered means the SETTINGS frame sent before it has been applied.
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (send, mut connection) = h2::client::handshake(tcp).await.expect("handshake");
    let mut ping = connection.ping_pong().expect("ping handle");
    tokio::spawn(connection);
    support::within(ping.ping(h2::Ping::opaque()))
        .await
        .expect("pong");
    assert_eq!(
        send.current_max_send_streams(),
        greyrouter::config::DEFAULT_MAX_CONCURRENT_STREAMS as usize
    );

    // Metadata beyond the header list limit is refused before any handler runs ...
    let mut request = tonic::Request::new(pb::RouteRequest {
        tenant_id: "t0".into(),
        service: "api".into(),
        ..Default::default()
    });
    let big = "x".repeat(greyrouter::config::DEFAULT_MAX_HEADER_LIST_BYTES as usize);
    request
        .metadata_mut()
        .insert("x-padding", big.parse().expect("ascii metadata"));
    let refused = server.router.route(request).await;
    assert!(refused.is_err(), "{refused:?}");
    // ... and the server keeps serving.
    let routed = server.route("t0", "api").await.expect("route");
    assert_eq!(routed.instance_id, "a1");
    server.stop().await;
}

#[tokio::test]
async fn every_reason_follows_one_rule_in_the_body_and_in_the_header() {
    let mut server = TestServer::start().await;
    server.populate(2).await;
    let rollback = |reason: String| pb::EmergencyRollbackRequest {
        service: "api".into(),
        from_version: "v1".into(),
        to_version: "v2".into(),
        reason,
        ..Default::default()
    };
    let refused =
        |result: Result<tonic::Response<pb::EmergencyRollbackResponse>, tonic::Status>,
         field: &str| {
            let status = result.expect_err("refused");
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains(field), "{status:?}");
        };
    let revision = server.route("t0", "api").await.expect("route").revision;
    // Too long (a megabyte once made every audit entry carry it), or able to forge log lines.
    for reason in [
        "x".repeat(routing_core::validate::MAX_REASON_LEN + 1),
        "x".repeat(1_000_000),
        "fixed\n2026-01-01T00:00:00Z INFO all good".to_owned(),
        "\u{1b}[2J".to_owned(),
        "oops\u{202e}".to_owned(),
    ] {
        refused(
            server.admin.emergency_rollback(rollback(reason)).await,
            "reason",
        );
    }
    // However long, a reason is refused for the reason limit.
    let status = server
        .admin
        .emergency_rollback(rollback("x".repeat(1_000_000)))
        .await
        .expect_err("refused");
    assert!(
        status.message().contains("longer than 256 characters"),
        "{status:?}"
    );
    for reason in [
        "x".repeat(routing_core::validate::MAX_REASON_LEN + 1),
        "a\tb".to_owned(),
    ] {
        let mut request = tonic::Request::new(rollback(String::new()));
        request
            .metadata_mut()
            .insert("x-greyrouter-reason", reason.parse().expect("header value"));
        refused(
            server.admin.emergency_rollback(request).await,
            "x-greyrouter-reason",
        );
    }
    let mut request = tonic::Request::new(rollback(String::new()));
    request.metadata_mut().insert(
        "x-greyrouter-actor",
        "a".repeat(200).parse().expect("header value"),
    );
    refused(
        server.admin.emergency_rollback(request).await,
        "x-greyrouter-actor",
    );
    // Nothing was changed by the refused calls; the longest allowed reason is recorded whole.
    assert_eq!(
        server.route("t0", "api").await.expect("route").revision,
        revision
    );
    let longest = "y".repeat(routing_core::validate::MAX_REASON_LEN);
    server
        .admin
        .emergency_rollback(rollback(longest.clone()))
        .await
        .expect("rollback");
    let events = server
        .admin
        .list_events(pb::ListEventsRequest::default())
        .await
        .expect("events")
        .into_inner();
    assert!(
        events.events.iter().any(|e| e.reason == longest),
        "{events:?}"
    );
    server.stop().await;
}
