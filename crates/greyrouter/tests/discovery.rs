//! Service discovery end to end: instances registered in a real Nacos (rnacos) or written to a
//! fleet file reach `Route`, and leave it when they go (an etcd lease expiring); the registry going away keeps routing on the last known instances;
//! the protection threshold holds mass removals; in a fleet on Redis one router syncs.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use greyrouter::config::Config;
use greyrouter_proto::v1 as pb;
use greyrouter_test_support::{EtcdServer, NacosServer, RedisServer};
use nacos_sync::SourceSettings;
use nacos_sync::nacos::NacosSettings;
use support::{Api, ServerProcess, TestServer, eventually, eventually_within};

/// A router syncing `source` every 100 ms.
fn config_with(source: SourceSettings) -> Config {
    let mut config = Config::default();
    config.discovery.interval_ms = 100;
    config.discovery.lease_ms = 1_000;
    config.discovery.sources = vec![source];
    config
}

fn nacos_source(server: &NacosServer) -> SourceSettings {
    SourceSettings {
        nacos: NacosSettings {
            url: server.url(),
            ..NacosSettings::default()
        },
        ..SourceSettings::new("nacos", "nacos", &["api"])
    }
}

/// Registers (or changes) `ip:8080` of Nacos service `api`, version `version`, as a service does.
fn nacos_register(server: &NacosServer, ip: &str, version: &str, weight: f64) {
    let metadata = format!("{{\"version\":\"{version}\"}}");
    server.register("api", ip, 8080, weight, &metadata);
}

fn nacos_deregister(server: &NacosServer, ip: &str) {
    server.deregister("api", ip, 8080);
}

/// The addresses rnacos itself lists for service `api`, sorted.
fn nacos_ips(server: &NacosServer) -> Vec<String> {
    // Empty while rnacos cannot answer yet (just restarted): callers wait for a list.
    let body = server
        .try_call("GET", "/nacos/v1/ns/instance/list?serviceName=api")
        .unwrap_or_default();
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut ips: Vec<String> = listed["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .filter_map(|host| host["ip"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ips.sort();
    ips
}

/// The ids and weights of service `api`'s instances.
async fn instances(server: &mut Api) -> BTreeMap<String, u32> {
    server
        .admin
        .list_instances(pb::ListInstancesRequest {
            service: "api".into(),
            version: String::new(),
        })
        .await
        .expect("list instances")
        .into_inner()
        .instances
        .into_iter()
        .map(|i| (i.id, i.weight.unwrap_or(1)))
        .collect()
}

async fn status(server: &mut Api) -> pb::DiscoverySource {
    server
        .admin
        .get_discovery_status(pb::GetDiscoveryStatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .sources
        .into_iter()
        .next()
        .expect("one source")
}

/// Service `api` (no instance of its own) and tenant `t0`.
async fn service_and_tenant(server: &mut Api) {
    server.service("api", "v1", pb::Strategy::RoundRobin).await;
    server.tenant("t0", "eu").await;
}

async fn nacos() -> NacosServer {
    tokio::task::spawn_blocking(NacosServer::start)
        .await
        .expect("rnacos")
}

#[tokio::test]
async fn an_instance_registered_in_nacos_is_routed_to_and_leaves_when_deregistered() {
    let nacos = nacos().await;
    let mut server = TestServer::with_config(config_with(nacos_source(&nacos))).await;
    service_and_tenant(&mut server).await;

    nacos_register(&nacos, "10.7.0.1", "v1", 1.0);
    let id = "10.7.0.1:8080@DEFAULT";
    let route = eventually("the Nacos instance routed to", async || {
        server.route("t0", "api").await.ok()
    })
    .await;
    assert_eq!(
        (route.instance_id.as_str(), route.address.as_str()),
        (id, "10.7.0.1:8080")
    );

    // A weight change in Nacos applies (Nacos 2.0 is greyrouter's 200).
    nacos_register(&nacos, "10.7.0.1", "v1", 2.0);
    eventually("the new weight", async || {
        (instances(&mut server).await.get(id) == Some(&200)).then_some(())
    })
    .await;

    // The change is audited as the source.
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
            .any(|e| e.actor == "discovery:nacos" && e.kind == "register_instance"),
        "{events:?}"
    );

    // Deregistered: no longer picked (its only instance gone, the route fails).
    nacos_deregister(&nacos, "10.7.0.1");
    eventually("the instance gone", async || {
        instances(&mut server).await.is_empty().then_some(())
    })
    .await;
    assert!(server.route("t0", "api").await.is_err());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_goes_on_when_nacos_goes_away_and_the_view_converges_when_it_returns() {
    let mut nacos = nacos().await;
    let mut server = TestServer::with_config(config_with(nacos_source(&nacos))).await;
    service_and_tenant(&mut server).await;
    for ip in ["10.8.0.1", "10.8.0.2"] {
        nacos_register(&nacos, ip, "v1", 1.0);
    }
    eventually("both instances", async || {
        (instances(&mut server).await.len() == 2).then_some(())
    })
    .await;
    nacos.kill();
    eventually("the source reported down", async || {
        let status = status(&mut server).await;
        (!status.up && !status.error.is_empty()).then_some(())
    })
    .await;
    // Zero failed routes on the last known instances.
    for _ in 0..200 {
        server
            .route("t0", "api")
            .await
            .expect("routed while Nacos is down");
    }
    assert_eq!(instances(&mut server).await.len(), 2);
    // Back, and a change made since: the view converges on what rnacos lists. rnacos answers
    // before it has replayed its log, and what it replays depends on what it had written when
    // it was killed; so the test keeps rnacos at the intended list (10.8.0.1 only: registered
    // again if the replay lost it, 10.8.0.2 removed whenever it shows) until greyrouter's view
    // matches it. A replay that restores 10.8.0.2 late is removed again, and the view follows.
    tokio::task::block_in_place(|| nacos.restart());
    eventually_within(
        "the source up again and the view on rnacos's list",
        std::time::Duration::from_secs(90),
        async || {
            let listed = nacos_ips(&nacos);
            // Writes refused while rnacos starts are tried again on the next round.
            if !listed.contains(&"10.8.0.1".to_owned()) {
                nacos.try_register("api", "10.8.0.1", 8080, 1.0, "{\"version\":\"v1\"}");
            }
            if listed.contains(&"10.8.0.2".to_owned()) {
                nacos.try_deregister("api", "10.8.0.2", 8080);
            }
            let up = status(&mut server).await.up;
            let ids = instances(&mut server).await;
            (listed == ["10.8.0.1"]
                && up
                && ids.len() == 1
                && ids.contains_key("10.8.0.1:8080@DEFAULT"))
            .then_some(())
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn removing_most_instances_at_once_is_held_and_removing_one_proceeds() {
    let nacos = nacos().await;
    let mut server = TestServer::with_config(config_with(nacos_source(&nacos))).await;
    service_and_tenant(&mut server).await;
    let ips: Vec<String> = (1..=5).map(|i| format!("10.9.0.{i}")).collect();
    for ip in &ips {
        nacos_register(&nacos, ip, "v1", 1.0);
    }
    eventually("five instances", async || {
        (instances(&mut server).await.len() == 5).then_some(())
    })
    .await;
    // 80% gone at once: held, reported, routing unchanged.
    for ip in &ips[1..] {
        nacos_deregister(&nacos, ip);
    }
    let held = eventually("the removal held", async || {
        let status = status(&mut server).await;
        (!status.held.is_empty()).then_some(status.held)
    })
    .await;
    assert!(held[0].contains("4 of 5"), "{held:?}");
    assert_eq!(instances(&mut server).await.len(), 5);
    // Back to four of five listed: the one removal proceeds.
    for ip in &ips[1..4] {
        nacos_register(&nacos, ip, "v1", 1.0);
    }
    eventually("one instance removed", async || {
        let ids = instances(&mut server).await;
        (ids.len() == 4 && !ids.contains_key("10.9.0.5:8080@DEFAULT")).then_some(())
    })
    .await;
    assert!(status(&mut server).await.held.is_empty());
    server.stop().await;
}

fn file_source(path: &Path) -> SourceSettings {
    SourceSettings {
        path: Some(path.to_owned()),
        ..SourceSettings::new("file", "file", &["api"])
    }
}

fn write_fleet(path: &Path, ids: &[&str]) {
    let mut text = String::new();
    for id in ids {
        text.push_str(&format!(
            "[[instances]]\nservice = \"api\"\nid = \"{id}\"\naddress = \"{id}.internal:8080\"\nversion = \"v1\"\n"
        ));
    }
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

#[tokio::test]
async fn a_fleet_file_is_followed_and_hand_registered_instances_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fleet.toml");
    write_fleet(&path, &["f1", "f2"]);
    let mut server = TestServer::with_config(config_with(file_source(&path))).await;
    service_and_tenant(&mut server).await;
    server.instance("api", "v1", "by-hand", "eu").await;
    eventually("the file's instances", async || {
        let ids = instances(&mut server).await;
        (ids.len() == 3).then_some(())
    })
    .await;
    write_fleet(&path, &["f1"]);
    eventually("f2 removed", async || {
        let ids = instances(&mut server).await;
        (!ids.contains_key("f2")).then_some(ids)
    })
    .await;
    let ids = instances(&mut server).await;
    assert!(
        ids.contains_key("by-hand") && ids.contains_key("f1"),
        "{ids:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn in_a_fleet_one_router_syncs_and_another_takes_over_when_it_is_killed() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fleet.toml");
    write_fleet(&path, &["f1"]);
    // Two router processes on one Redis, syncing the same fleet file.
    let config = |name: &str| {
        let file = dir.path().join(format!("{name}.toml"));
        let text = format!(
            "store = \"{}\"\n\n[redis]\nprefix = \"discovery-fleet\"\n\n\
             [outcomes]\nreplica_id = \"{name}\"\n\n\
             [discovery]\ninterval_ms = 100\nlease_ms = 1000\n\n\
             [[discovery.sources]]\nname = \"file\"\nkind = \"file\"\n\
             services = [\"api\"]\npath = {:?}\n",
            redis.url(),
            path.display().to_string()
        );
        std::fs::write(&file, text).expect("config");
        file.display().to_string()
    };
    let (first_config, second_config) = (config("first"), config("second"));
    let mut processes = [
        ServerProcess::start(&["--config", &first_config]),
        ServerProcess::start(&["--config", &second_config]),
    ];
    let mut first = Api::connect(&format!("http://{}", processes[0].addr)).await;
    let mut second = Api::connect(&format!("http://{}", processes[1].addr)).await;
    service_and_tenant(&mut first).await;
    eventually("one leader that synced f1", async || {
        let (a, b) = (status(&mut first).await, status(&mut second).await);
        (a.leading != b.leading && instances(&mut first).await.contains_key("f1")).then_some(())
    })
    .await;
    // SIGKILL the leader: its lease is never released; the other takes over when it lapses.
    let first_leads = status(&mut first).await.leading;
    let (killed, mut follower) = if first_leads { (0, second) } else { (1, first) };
    processes[killed].kill();
    write_fleet(&path, &["f1", "f2"]);
    eventually("the other router leads and syncs f2", async || {
        let leading = status(&mut follower).await.leading;
        (leading && instances(&mut follower).await.contains_key("f2")).then_some(())
    })
    .await;
}

/// Writes `/services/api/<id>` in etcd, version v1, under `lease` when given (its id).
fn etcd_put(etcd: &EtcdServer, id: &str, lease: Option<&str>) {
    use base64::Engine;
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let value = format!("{{\"address\":\"{id}.internal:8080\",\"version\":\"v1\"}}");
    let mut body = serde_json::json!({
        "key": encode(&format!("/services/api/{id}")),
        "value": encode(&value),
    });
    if let Some(lease) = lease {
        body["lease"] = serde_json::json!(lease);
    }
    etcd.call("/v3/kv/put", &body.to_string());
}

#[tokio::test]
async fn an_etcd_instance_whose_lease_expires_leaves_routing() {
    let etcd = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .expect("etcd");
    let source = SourceSettings {
        etcd: nacos_sync::etcd::EtcdSettings {
            endpoints: vec![etcd.url()],
            ..Default::default()
        },
        ..SourceSettings::new("etcd", "etcd", &["api"])
    };
    let mut server = TestServer::with_config(config_with(source)).await;
    service_and_tenant(&mut server).await;
    // One instance kept by its service (no lease here), one under a 2 s lease nobody renews.
    etcd_put(&etcd, "kept", None);
    let grant: serde_json::Value =
        serde_json::from_str(&etcd.call("/v3/lease/grant", r#"{"TTL": 2}"#)).expect("grant");
    let lease = grant["ID"].as_str().expect("lease id").to_owned();
    etcd_put(&etcd, "leased", Some(&lease));
    eventually("both etcd instances", async || {
        (instances(&mut server).await.len() == 2).then_some(())
    })
    .await;
    let route = server.route("t0", "api").await.expect("routed");
    assert!(["kept", "leased"].contains(&route.instance_id.as_str()));
    eventually("the leased instance gone with its lease", async || {
        let ids = instances(&mut server).await;
        (ids.len() == 1 && ids.contains_key("kept")).then_some(())
    })
    .await;
    server.stop().await;
}

/// A tenant-management service: pages of the tenants it holds, as `{"items": [...]}`.
struct TenantService {
    port: u16,
    tenants: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl TenantService {
    fn start(tenants: Vec<serde_json::Value>) -> TenantService {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let tenants = std::sync::Arc::new(std::sync::Mutex::new(tenants));
        let served = std::sync::Arc::clone(&tenants);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut line = String::new();
                if BufReader::new(&stream).read_line(&mut line).is_err() {
                    continue;
                }
                // GET /api/tenants?page=N&size=S HTTP/1.1
                let query = line.split_whitespace().nth(1).unwrap_or_default();
                let param = |name: &str| -> usize {
                    query
                        .split(['?', '&'])
                        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                let (page, size) = (param("page").max(1), param("size").max(1));
                let all = served.lock().expect("tenants").clone();
                let items: Vec<_> = all.into_iter().skip((page - 1) * size).take(size).collect();
                let body = serde_json::json!({ "items": items }).to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TenantService { port, tenants }
    }

    fn set(&self, tenants: Vec<serde_json::Value>) {
        *self.tenants.lock().expect("tenants") = tenants;
    }
}

fn tenant_json(i: usize, name: &str) -> serde_json::Value {
    serde_json::json!({
        "id": format!("tenant-{i:05}"), "name": name, "region": "eu", "tier": "pro",
        "labels": {"plan": "standard"}, "active": true,
    })
}

#[tokio::test]
async fn tenants_come_from_the_tenant_service_in_pages() {
    let count = 10_000;
    let listed: Vec<_> = (0..count).map(|i| tenant_json(i, "Tenant")).collect();
    let service = TenantService::start(listed.clone());
    let mut config = Config::default();
    config.discovery.lease_ms = 2_000;
    config.discovery.tenants.url = format!("http://127.0.0.1:{}/api/tenants", service.port);
    config.discovery.tenants.interval_ms = 200;
    config.discovery.tenants.page_size = 500;
    let mut server = TestServer::with_config(config).await;
    server.service("api", "v1", pb::Strategy::RoundRobin).await;
    server.instance("api", "v1", "a1", "eu").await;
    server.instance("api", "v2", "b1", "eu").await;
    let tenant_count = async |server: &mut TestServer| {
        let mut count = 0;
        let mut token = String::new();
        loop {
            let page = server
                .admin
                .list_tenants(pb::ListTenantsRequest {
                    page_size: 1000,
                    page_token: token,
                })
                .await
                .expect("tenants")
                .into_inner();
            count += page.tenants.iter().filter(|t| t.active).count();
            if page.next_page_token.is_empty() {
                return count;
            }
            token = page.next_page_token;
        }
    };
    // 10,000 changes: a debug build on two busy cores may need more than the usual deadline.
    eventually_within(
        "10,000 tenants created",
        Duration::from_secs(90),
        async || (tenant_count(&mut server).await == count).then_some(()),
    )
    .await;
    // A pin on a tenant that will disappear.
    server.pin("tenant-00042", "api", "v2").await;
    let mut next = listed.clone();
    next[7] = tenant_json(7, "Renamed");
    next.remove(42);
    service.set(next);
    let services = eventually("tenant-00042 inactive", async || {
        let found = server
            .admin
            .get_tenant_services(pb::GetTenantServicesRequest {
                tenant_id: "tenant-00042".into(),
            })
            .await
            .expect("tenant")
            .into_inner();
        (!found.tenant.as_ref().is_some_and(|t| t.active)).then_some(found)
    })
    .await;
    // Never deleted: the pin stays.
    assert_eq!(services.services[0].pinned_version, "v2");
    let renamed = server
        .admin
        .get_tenant_services(pb::GetTenantServicesRequest {
            tenant_id: "tenant-00007".into(),
        })
        .await
        .expect("tenant")
        .into_inner()
        .tenant
        .expect("tenant");
    assert_eq!(renamed.name, "Renamed");
    server.stop().await;
}
