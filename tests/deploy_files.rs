//! The shipped Grafana dashboard and alert rules may only query metrics the agent exports, and
//! the README lists every one of them.

use std::collections::BTreeSet;

use token_agent::metrics::Metrics;

/// Metric names the agent exports (histograms with their `_bucket`, `_sum`, `_count`).
fn exported() -> BTreeSet<String> {
    let m = Metrics::new();
    let s = m.register_source("s", "oauth2", &["file:/x".into()]);
    let now = std::time::SystemTime::now();
    s.observe_fetch(std::time::Duration::from_millis(1), true);
    m.count_failure("s", "timeout");
    s.sink_written(0, std::time::Duration::from_millis(1));
    m.count_sink_failure("s", "file:/x", "io");
    s.set_last_success(now);
    s.set_expiry(now);
    s.set_next_refresh(now);
    m.config_loaded("abc", now, true);
    m.config_reload_failed();
    m.count_notify("s", "signal", "success");
    m.encode()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// Every `token_agent_*` / `process_*` identifier in `text`.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["token_agent_", "process_"] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

fn check(file: &str, exprs: &str) {
    let exported = exported();
    let used = referenced(exprs);
    assert!(!used.is_empty(), "{file} queries nothing");
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "{file} uses metrics the agent does not export: {unknown:?}\nexported: {exported:?}"
    );
}

#[test]
fn grafana_dashboard_uses_only_exported_metrics() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana-dashboard.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_owned())
        })
        .collect();
    assert!(exprs.len() >= 10);
    check("grafana-dashboard.json", &exprs.join("\n"));
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/alerts.yaml"))
        .unwrap();
    let exprs: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.contains("summary:"))
        .collect::<Vec<_>>()
        .join("\n");
    check("alerts.yaml", &exprs);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let monitoring = readme
        .split("## Monitoring")
        .nth(1)
        .expect("README has a Monitoring section");
    check(
        "README.md (Monitoring)",
        monitoring.split("\n## ").next().unwrap(),
    );
}

#[test]
fn the_readme_lists_every_exported_metric() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let missing: Vec<_> = exported()
        .into_iter()
        .filter(|n| n.starts_with("token_agent_"))
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| n.strip_suffix(suffix).map(str::to_owned))
                .unwrap_or(n)
        })
        .filter(|n| !readme.contains(&format!("`{n}`")))
        .collect();
    assert!(missing.is_empty(), "README.md does not list {missing:?}");
}
