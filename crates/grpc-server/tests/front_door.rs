//! The gRPC front door on its own: a node over the embedded store, served on an ephemeral port
//! with `grpc_server::serve`, without the binary's configuration or start-up.

use std::sync::Arc;
use std::time::Duration;

use control::{Actor, Node, NodeSettings};
use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::admin_client::AdminClient;
use greyrouter_proto::v1::router_client::RouterClient;
use greyrouter_store::{MemoryStore, Store, suite};
use tokio::net::TcpListener;

#[tokio::test]
async fn a_node_served_by_the_front_door_answers_admin_and_router_calls() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let node = Node::start(store, None, NodeSettings::default())
        .await
        .expect("node");
    // Changes made on the node itself are what the front door serves.
    let actor = Actor::system("test", "");
    let mut revision = 0;
    for mutation in [
        suite::service(),
        suite::instance("a1", "v1"),
        suite::tenant("acme"),
    ] {
        revision = node
            .replica()
            .commit(mutation, &actor)
            .await
            .expect("commit")
            .revision;
    }

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(grpc_server::serve(
        Arc::clone(&node),
        grpc_server::GrpcSettings::default(),
        grpc_server::Security::default(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");

    let services = AdminClient::new(channel.clone())
        .list_services(pb::ListServicesRequest::default())
        .await
        .expect("list services")
        .into_inner();
    let names: Vec<&str> = services.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!((names, services.revision), (vec!["api"], revision));

    let mut router = RouterClient::new(channel);
    let request = |tenant: &str| pb::RouteRequest {
        tenant_id: tenant.into(),
        service: "api".into(),
        ..Default::default()
    };
    let route = router
        .route(request("acme"))
        .await
        .expect("route")
        .into_inner();
    assert_eq!(
        (
            route.version.as_str(),
            route.instance_id.as_str(),
            route.revision
        ),
        ("v1", "a1", revision)
    );
    // A rule of the node comes back through the one table: an unknown tenant is NOT_FOUND.
    let missing = router.route(request("nobody")).await.expect_err("unknown");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("stops in time")
        .expect("task")
        .expect("served");
}
