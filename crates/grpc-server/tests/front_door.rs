//! The gRPC front door on its own: a node over the embedded store, served on an ephemeral port
//! with `grpc_server::serve`, without the binary's configuration or start-up.

use std::sync::Arc;
use std::time::Duration;

use control::{Node, NodeSettings};
use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::admin_client::AdminClient;
use greyrouter_proto::v1::router_client::RouterClient;
use greyrouter_store::{MemoryStore, Store};
use grpc_server::GrpcSettings;
use tokio::net::TcpListener;

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_node_served_by_the_front_door_answers_admin_and_router_calls() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let node = Node::start(store, None, NodeSettings::default())
        .await
        .expect("node");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(grpc_server::serve(
        Arc::clone(&node),
        GrpcSettings::default(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut admin = AdminClient::new(channel.clone());
    let mut router = RouterClient::new(channel);

    admin
        .upsert_service(pb::UpsertServiceRequest {
            service: Some(pb::Service {
                name: "api".into(),
                default_version: "v1".into(),
                ..Default::default()
            }),
            force: false,
        })
        .await
        .expect("service");
    admin
        .register_instance(pb::RegisterInstanceRequest {
            instance: Some(pb::Instance {
                id: "a1".into(),
                address: "10.0.0.1:8080".into(),
                service: "api".into(),
                version: "v1".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("instance");
    let revision = admin
        .upsert_tenant(pb::UpsertTenantRequest {
            tenant: Some(pb::Tenant {
                id: "acme".into(),
                active: true,
                ..Default::default()
            }),
        })
        .await
        .expect("tenant")
        .into_inner()
        .revision;

    let route = router
        .route(pb::RouteRequest {
            tenant_id: "acme".into(),
            service: "api".into(),
            ..Default::default()
        })
        .await
        .expect("route")
        .into_inner();
    assert_eq!(
        (route.version.as_str(), route.instance_id.as_str()),
        ("v1", "a1")
    );
    assert_eq!(route.revision, revision);
    // The node answers the same from its side of the door.
    assert_eq!(node.state().revision(), revision);

    // A rule of the node comes back through the one table: unknown tenant -> NOT_FOUND.
    let missing = router
        .route(pb::RouteRequest {
            tenant_id: "nobody".into(),
            service: "api".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown tenant");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("stops in time")
        .expect("task")
        .expect("served");
}
