//! What ships for Prometheus and Grafana (`deploy/prometheus`, `deploy/grafana`): the alert
//! rules pass `promtool check rules` and their unit tests (`promtool test rules`), the
//! dashboard is valid JSON whose every query parses, and both name only metrics a router
//! exports.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use control::telemetry::names;
use greyrouter_test_support::require_tool;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path)
}

fn promtool_usable() -> bool {
    Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Every `grey_router_*` and `process_*` metric named in `text`, without histogram suffixes.
fn metrics_named(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for prefix in ["grey_router_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| names::ALL.contains(base))
                .map_or(name.clone(), str::to_owned);
            found.push(name);
        }
    }
    found
}

fn only_exported(file: &str, text: &str) {
    let named = metrics_named(text);
    assert!(!named.is_empty(), "{file} names no metric");
    for name in named {
        assert!(
            names::ALL.contains(&name.as_str()),
            "{file} queries {name}, which a router does not export"
        );
    }
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    if !require_tool(
        "promtool",
        promtool_usable(),
        "promtool",
        "install Debian's prometheus package",
    ) {
        return;
    }
    let dir = deploy("prometheus");
    let (ok, out) = promtool(&["check", "rules", "alerts.yml"], &dir);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 6 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts.test.yml"], &dir);
    assert!(ok, "{out}");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).expect("alerts.yml");
    for alert in [
        "GreyRouterHighErrorRate",
        "GreyRouterHighLatency",
        "RedisConnectionFailure",
        "GreyRouterReplicaLag",
        "GreyRouterRolloutAborted",
        "GreyRouterDiscoverySourceDown",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "{alert}");
        let tests = std::fs::read_to_string(dir.join("alerts.test.yml")).expect("tests");
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no unit test"
        );
    }
    only_exported("alerts.yml", &rules);
}

#[test]
fn the_dashboard_is_json_whose_queries_parse_and_name_exported_metrics() {
    let path = deploy("grafana/greyrouter.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dashboard["uid"], "greyrouter");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut exprs = Vec::new();
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL query");
            exprs.push((panel["id"].as_u64().expect("an id"), expr.to_owned()));
        }
    }
    let all: String = exprs.iter().map(|(_, e)| format!("{e}\n")).collect();
    only_exported("greyrouter.json", &all);
    for name in [
        names::REQUESTS,
        names::LATENCY,
        names::ACTIVE_TENANTS,
        names::LAG_SECONDS,
    ] {
        assert!(all.contains(name), "the dashboard shows no {name}");
    }

    if !require_tool(
        "promtool",
        promtool_usable(),
        "promtool",
        "install Debian's prometheus package",
    ) {
        return;
    }
    // Each query as a recording rule: promtool parses every one.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, (panel, expr)) in exprs.iter().enumerate() {
        let expr = expr.replace("$job", ".*");
        rules.push_str(&format!(
            "      - record: greyrouter_dashboard:panel_{panel}_{index}\n        expr: {}\n",
            serde_json::to_string(&expr).expect("quoted")
        ));
    }
    let dir = tempfile::tempdir().expect("a directory");
    std::fs::write(dir.path().join("dashboard.yml"), rules).expect("write");
    let (ok, out) = promtool(&["check", "rules", "dashboard.yml"], dir.path());
    assert!(ok, "a dashboard query does not parse: {out}");
}
