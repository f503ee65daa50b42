//! Instances registered with a TTL stay while heartbeats renew them and leave when they stop.

mod support;

use std::time::Duration;

use greyrouter::config::Config;
use greyrouter_proto::v1 as pb;
use support::{TestServer, eventually, instance};
use tonic::Code;

async fn register(
    server: &mut TestServer,
    id: &str,
    ttl_seconds: u32,
) -> Result<u64, tonic::Status> {
    server
        .admin
        .register_instance(pb::RegisterInstanceRequest {
            instance: Some(instance("api", "v1", id, "eu")),
            ttl_seconds,
        })
        .await
        .map(|r| r.into_inner().revision)
}

async fn heartbeat(server: &mut TestServer, ids: &[&str]) -> pb::HeartbeatResponse {
    server
        .admin
        .heartbeat(pb::HeartbeatRequest {
            service: "api".into(),
            instance_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
        })
        .await
        .expect("heartbeat")
        .into_inner()
}

async fn ids(server: &mut TestServer) -> Vec<String> {
    server.instance_ids("api").await
}

#[tokio::test]
async fn an_instance_without_heartbeats_leaves_after_its_ttl_and_one_with_heartbeats_stays() {
    let mut config = Config::default();
    config.outcomes.heartbeat_tick_ms = 50;
    let mut server = TestServer::with_config(config).await;
    server.service("api", "v1", pb::Strategy::RoundRobin).await;
    // A TTL well above the heartbeat period, so a busy machine does not miss one.
    register(&mut server, "beating", 3).await.expect("beating");
    register(&mut server, "silent", 1).await.expect("silent");
    register(&mut server, "forever", 0).await.expect("forever");
    assert_eq!(ids(&mut server).await, ["beating", "forever", "silent"]);

    // Heartbeats every 330 ms, until the silent one (1 s) is gone.
    let gone = eventually("the silent instance removed", async || {
        let answer = heartbeat(&mut server, &["beating"]).await;
        assert_eq!((answer.renewed, answer.unknown.len()), (1, 0), "{answer:?}");
        tokio::time::sleep(Duration::from_millis(330)).await;
        let ids = ids(&mut server).await;
        (!ids.contains(&"silent".to_owned())).then_some(ids)
    })
    .await;
    assert_eq!(gone, ["beating", "forever"]);
    // Heartbeats for longer than the TTL: still there.
    for _ in 0..12 {
        assert_eq!(heartbeat(&mut server, &["beating"]).await.renewed, 1);
        tokio::time::sleep(Duration::from_millis(330)).await;
    }
    assert_eq!(ids(&mut server).await, ["beating", "forever"]);

    // Unknown: expired, never registered, or without a TTL.
    let answer = heartbeat(&mut server, &["silent", "nobody", "forever"]).await;
    assert_eq!(answer.renewed, 0);
    assert_eq!(answer.unknown, ["silent", "nobody", "forever"]);

    // The expiry is one audited change.
    let events = server
        .admin
        .list_events(pb::ListEventsRequest {
            service: "api".into(),
            ..Default::default()
        })
        .await
        .expect("events")
        .into_inner()
        .events;
    assert!(
        events
            .iter()
            .any(|e| e.actor == "instance-ttl" && e.kind == "deregister_instance"),
        "{events:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_ttl_out_of_range_is_refused_naming_the_field() {
    let mut server = TestServer::start().await;
    server.service("api", "v1", pb::Strategy::RoundRobin).await;
    let err = register(&mut server, "x", 100_000)
        .await
        .expect_err("too long");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("ttl_seconds"), "{}", err.message());
    let too_many: Vec<String> = (0..1001).map(|i| format!("i{i}")).collect();
    let err = server
        .admin
        .heartbeat(pb::HeartbeatRequest {
            service: "api".into(),
            instance_ids: too_many,
        })
        .await
        .expect_err("too many");
    assert_eq!(err.code(), Code::InvalidArgument);
    server.stop().await;
}
