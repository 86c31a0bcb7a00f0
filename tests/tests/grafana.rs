//! The Grafana dashboard in `deploy/grafana/` reads what the services really export: after a
//! real rollout, every metric its queries name is on some service's `/metrics`, and every
//! query is valid PromQL to a real Prometheus.

#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::collections::BTreeMap;
use std::time::Duration;

use aviary_e2e::*;
use aviary_proto as pb;

const CANARY: &str = "    interval: 2s
    threshold: 2
    maxWeight: 50
    stepWeight: 25
    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }";

fn dashboard() -> serde_json::Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/aviary.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every PromQL expression of the dashboard: panel targets and query variables.
fn expressions(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            out.push(var["query"].as_str().unwrap().to_owned());
        }
    }
    out
}

/// The `aviary_…` metric names `expr` reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("aviary_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Metric families by name and type from the `# TYPE` lines of `text`.
fn families(text: &str, into: &mut BTreeMap<String, String>) {
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("#")
            && words.next() == Some("TYPE")
            && let (Some(name), Some(kind)) = (words.next(), words.next())
        {
            into.insert(name.to_owned(), kind.to_owned());
        }
    }
}

/// Whether series `name` (as a query names it) is exported by one of `families`.
fn exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    let is = |base: &str, kinds: &[&str]| {
        families
            .get(base)
            .is_some_and(|k| kinds.contains(&k.as_str()))
    };
    families.contains_key(name)
        || name
            .strip_suffix("_total")
            .is_some_and(|b| is(b, &["counter"]))
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|b| is(b, &["histogram"])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_reads_a_metric_the_services_export() {
    let stack = Stack::start(StackOptions {
        notifier: true,
        ..StackOptions::default()
    })
    .await;
    stack.apply(&stack.manifest("podinfo", CANARY, "")).await;
    let traffic = Traffic::start(&stack.url(), 20, &[]);
    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(60))
        .await;
    traffic.stop().await;

    let mut services = vec![
        stack.schedulers[0].service.admin_url(),
        stack.analyzer.admin_url(),
        stack.agent.admin_url(),
    ];
    services.extend(stack.notifier.as_ref().map(Service::admin_url));
    let mut exported_families = BTreeMap::new();
    let mut scraped = String::new();
    for url in &services {
        let text = reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        families(&text, &mut exported_families);
        scraped.push_str(&text);
    }

    let exprs = expressions(&dashboard());
    assert!(exprs.len() >= 10, "{exprs:?}");
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr} reads no Aviary metric");
        for name in names {
            assert!(
                exported(&name, &exported_families),
                "{expr}: no service exports {name}; they export {:?}",
                exported_families.keys().collect::<Vec<_>>()
            );
        }
        // Valid PromQL to a real Prometheus, with Grafana's variables filled in.
        if !expr.starts_with("label_values(") {
            let promql = expr
                .replace("$__rate_interval", "1m")
                .replace("$rollout", ".*");
            let answer = stack.prometheus.query(&promql).await.unwrap();
            assert_eq!(answer["status"], "success", "{promql}: {answer}");
        }
    }
    // The rollout variable reads the canary weight's `rollout` label, which the scheduler sets.
    assert!(
        scraped.contains("aviary_scheduler_canary_weight{rollout=\"e2e/podinfo\"}"),
        "{scraped}"
    );
}
