//! Watching a router in production: a real Prometheus server scrapes `/metrics`, and an OTLP
//! receiver gets the spans of a change made in the caller's trace.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use greyrouter_proto::v1 as pb;
use greyrouter_test_support::{free_port, percent_encode, poll_until, require_tool};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use support::{Api, DEADLINE, ServerProcess, http_get};
use tokio::sync::mpsc;

/// The value of the sample of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// A router on the memory store with HTTP on, and its HTTP port.
fn router(extra: &[&str]) -> (ServerProcess, u16) {
    let http = free_port(false);
    let http_addr = format!("127.0.0.1:{http}");
    let mut args = vec![
        "--store",
        "memory",
        "--http-addr",
        &http_addr,
        "--log-level",
        "warn",
    ];
    args.extend_from_slice(extra);
    (ServerProcess::start(&args), http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_decisions_by_outcome_with_labels_only_from_the_state() {
    let config = tempfile::NamedTempFile::new().expect("a config file");
    std::fs::write(
        config.path(),
        "[metrics]\ntenant_labels = true\nmax_tenant_labels = 1\n",
    )
    .expect("write the config");
    let path = config.path().to_str().expect("utf-8").to_owned();
    let (server, http) = router(&["--config", &path]);
    let mut api = Api::connect(&server.url()).await;
    api.populate(3).await;
    for _ in 0..3 {
        api.route("t0", "api").await.expect("routed");
    }
    api.pin("t1", "api", "v2").await;
    for _ in 0..2 {
        api.route("t1", "api").await.expect("routed");
    }
    let missing = api
        .route("t2", "no-such-service")
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let unknown = api.route("nobody", "api").await.expect_err("unknown");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // A watch stream, open while scraped.
    let mut watch = api
        .router
        .watch_assignments(pb::WatchAssignmentsRequest {
            tenant_ids: vec!["t0".into()],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let snapshot = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .expect("in time")
        .expect("stream ok")
        .expect("a snapshot");
    assert!(snapshot.snapshot);

    let (status, text) = http_get(http, "/metrics").expect("metrics answer");
    assert_eq!(status, 200, "{text}");
    let requests = "grey_router_requests_total";
    let ok_v1 = [("service", "api"), ("version", "v1"), ("status", "ok")];
    let ok_v2 = [("service", "api"), ("version", "v2"), ("status", "ok")];
    assert_eq!(sample(&text, requests, &ok_v1), Some(3.0), "{text}");
    assert_eq!(sample(&text, requests, &ok_v2), Some(2.0), "{text}");
    // A service the state does not hold is counted, not named: callers cannot grow the series.
    let unnamed = [("service", ""), ("status", "not_found")];
    assert_eq!(sample(&text, requests, &unnamed), Some(1.0), "{text}");
    let unknown_tenant = [("service", "api"), ("status", "not_found")];
    assert_eq!(
        sample(&text, requests, &unknown_tenant),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("no-such-service"), "{text}");
    assert!(!text.contains("nobody"), "{text}");
    // Per-tenant series: capped at one; the rest share `_other`.
    let tenants = "grey_router_tenant_requests_total";
    let t0 = [("tenant", "t0"), ("status", "ok")];
    let other = [("tenant", "_other"), ("status", "ok")];
    assert_eq!(sample(&text, tenants, &t0), Some(3.0), "{text}");
    assert_eq!(sample(&text, tenants, &other), Some(2.0), "{text}");
    assert!(!text.contains("tenant=\"t1\""), "{text}");
    // Decision time and Route handling time.
    let decision = [("stage", "decision"), ("le", "+Inf")];
    let route = [("stage", "route"), ("le", "+Inf")];
    let bucket = "grey_router_latency_seconds_bucket";
    assert_eq!(sample(&text, bucket, &decision), Some(7.0), "{text}");
    assert_eq!(sample(&text, bucket, &route), Some(7.0), "{text}");
    // Readings of the node.
    let gauge = |name: &str| {
        text.lines()
            .find(|line| line.starts_with(&format!("{name} ")))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok())
    };
    assert_eq!(gauge("grey_router_active_tenants"), Some(3.0), "{text}");
    assert_eq!(gauge("grey_router_store_up"), Some(1.0), "{text}");
    assert_eq!(
        gauge("grey_router_replica_lag_revisions"),
        Some(0.0),
        "{text}"
    );
    let revision = gauge("grey_router_revision").expect("revision");
    assert!(revision >= 7.0, "{text}");
    let v1 = [("service", "api"), ("version", "v1")];
    assert_eq!(
        sample(&text, "grey_router_instances", &v1),
        Some(1.0),
        "{text}"
    );
    let committed = [("mutation", "set_tenant_version"), ("result", "committed")];
    assert_eq!(
        sample(&text, "grey_router_changes_total", &committed),
        Some(1.0)
    );
    assert!(
        gauge("process_resident_memory_bytes").is_some_and(|rss| rss > 0.0),
        "{text}"
    );
    assert!(
        gauge("process_open_fds").is_some_and(|fds| fds > 0.0),
        "{text}"
    );
    assert_eq!(gauge("grey_router_watch_streams"), Some(1.0), "{text}");
    let sent = gauge("grey_router_watch_messages_total");
    assert!(sent.is_some_and(|sent| sent >= 1.0), "{text}");

    // The stream closed: the reading follows.
    drop(watch);
    let closed = poll_until(DEADLINE, || {
        let (_, text) = http_get(http, "/metrics")?;
        text.lines()
            .filter_map(|line| line.strip_prefix("grey_router_watch_streams "))
            .any(|value| value.parse::<f64>() == Ok(0.0))
            .then_some(())
    });
    assert_eq!(closed, Some(()), "the closed stream is no longer counted");
}

#[test]
fn metrics_can_be_turned_off() {
    let (_server, http) = router(&[]);
    let (status, _) = http_get(http, "/metrics").expect("metrics answer");
    assert_eq!(status, 200);
    let http = free_port(false);
    let http_addr = format!("127.0.0.1:{http}");
    let _off = ServerProcess::start_with_env(
        &["--store", "memory", "--http-addr", &http_addr],
        &[("GREYROUTER_METRICS", "false")],
    );
    let (status, body) = http_get(http, "/metrics").expect("metrics answer");
    assert_eq!(status, 404, "{body}");
    let (status, _) = http_get(http, "/healthz").expect("health answers");
    assert_eq!(status, 200, "health stays on");
}

/// A Prometheus server on a free port, with a temporary configuration and data directory.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("a directory");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: greyrouter\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .expect("write the configuration");
        let port = free_port(false);
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The value of an instant query's first sample, if any.
    fn query(&self, promql: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = http_get(self.port, &path)?;
        if status != 200 {
            return None;
        }
        let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
        let first = answer.pointer("/data/result/0/value/1")?;
        first.as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_usable() -> bool {
    Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_server_scrapes_the_routing_decisions() {
    if !require_tool(
        "prometheus",
        prometheus_usable(),
        "prometheus",
        "install Debian's prometheus package",
    ) {
        return;
    }
    let (server, http) = router(&[]);
    let mut api = Api::connect(&server.url()).await;
    api.populate(2).await;
    for _ in 0..4 {
        api.route("t0", "api").await.expect("routed");
    }
    api.route("t1", "api").await.expect("routed");
    let prometheus = Prometheus::start(&format!("127.0.0.1:{http}"));
    let query = "sum(grey_router_requests_total{service=\"api\",status=\"ok\"})";
    let found = poll_until(Duration::from_secs(60), || {
        prometheus.query(query).filter(|value| *value >= 5.0)
    });
    assert_eq!(found, Some(5.0), "Prometheus found the decisions");
    let up = poll_until(DEADLINE, || {
        prometheus
            .query("up{job=\"greyrouter\"}")
            .filter(|value| *value == 1.0)
    });
    assert_eq!(up, Some(1.0));
    let tenants = poll_until(DEADLINE, || prometheus.query("grey_router_active_tenants"));
    assert_eq!(tenants, Some(2.0));
}

/// An OTLP/gRPC trace receiver: hands every exported span to the test.
struct Receiver(mpsc::UnboundedSender<(Span, HashMap<String, String>)>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|resource| attributes(&resource.attributes))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let _ = self.0.send((span, resource.clone()));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Attributes with a text or integer value, as text.
fn attributes(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(text) => text.clone(),
                Value::IntValue(number) => number.to_string(),
                Value::BoolValue(flag) => flag.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_carrying_a_traceparent_joins_the_callers_trace() {
    let (spans_tx, mut spans) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let receiver = listener.local_addr().expect("address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(spans_tx)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let endpoint = format!("http://{receiver}");
    let server = ServerProcess::start_with_env(
        &["--store", "memory", "--log-level", "warn"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "greyrouter-traced"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let mut api = Api::connect(&server.url()).await;
    api.populate(1).await;

    // The caller's trace: a random trace id, and the caller's own span as the parent.
    let trace_id = format!("{:016x}{:016x}", std::process::id(), rand_u64());
    let parent_id = format!("{:016x}", rand_u64() | 1);
    let mut request = tonic::Request::new(pb::SetTenantVersionRequest {
        tenant_id: "t0".into(),
        service: "api".into(),
        version: "v2".into(),
        expected_version: None,
        force: false,
        migrate: false,
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01")
            .parse()
            .expect("metadata"),
    );
    let revision = api
        .admin
        .set_tenant_version(request)
        .await
        .expect("pinned")
        .into_inner()
        .revision;

    // Spans of the trace, by name, until the three of the change have come.
    let mut traced: HashMap<String, (Span, HashMap<String, String>)> = HashMap::new();
    let wanted = [
        "Admin/SetTenantVersion",
        "admin.set_tenant_version",
        "store.commit",
    ];
    tokio::time::timeout(DEADLINE, async {
        while !wanted.iter().all(|name| traced.contains_key(*name)) {
            let Some((span, resource)) = spans.recv().await else {
                break;
            };
            if hex(&span.trace_id) == trace_id {
                traced.insert(span.name.clone(), (span, resource));
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "spans of the trace not received; got {:?}",
            traced.keys().collect::<Vec<_>>()
        )
    });

    let (call, resource) = &traced["Admin/SetTenantVersion"];
    assert_eq!(
        hex(&call.parent_span_id),
        parent_id,
        "the call's parent is the caller's span"
    );
    assert_eq!(
        resource.get("service.name").map(String::as_str),
        Some("greyrouter-traced")
    );
    let (change, _) = &traced["admin.set_tenant_version"];
    assert_eq!(change.parent_span_id, call.span_id);
    let fields = attributes(&change.attributes);
    assert_eq!(fields.get("tenant").map(String::as_str), Some("t0"));
    assert_eq!(fields.get("service").map(String::as_str), Some("api"));
    assert_eq!(fields.get("version").map(String::as_str), Some("v2"));
    assert_eq!(fields.get("revision"), Some(&revision.to_string()));
    let (commit, _) = &traced["store.commit"];
    assert_eq!(commit.parent_span_id, change.span_id);
    let fields = attributes(&commit.attributes);
    assert_eq!(
        fields.get("mutation").map(String::as_str),
        Some("set_tenant_version")
    );
    assert_eq!(fields.get("revision"), Some(&revision.to_string()));

    // Routing decisions make no spans by default.
    api.route("t0", "api").await.expect("routed");
    api.tenant("t-after", "eu").await;
    let after_route = tokio::time::timeout(DEADLINE, async {
        loop {
            let (span, _) = spans.recv().await?;
            if span.name == "Admin/UpsertTenant" {
                return Some(());
            }
            if span.name.contains("Route") {
                return None;
            }
        }
    })
    .await;
    assert_eq!(
        after_route,
        Ok(Some(())),
        "no Route span came before the next change's"
    );
}

/// A random number from the standard library's hasher keys.
fn rand_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0_u8)
}
