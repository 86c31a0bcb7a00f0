//! The demo app answers with its version, fails the share it is told to, and the load generator
//! counts exactly what came back.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use aviary_demo::app::{AppConfig, serve};
use aviary_demo::load::{LoadConfig, run};
use tokio_util::sync::CancellationToken;

async fn start(version: &str, error_rate: f64) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = AppConfig {
        listen: addr,
        version: version.into(),
        error_rate,
        latency_ms: 0,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, config, shutdown.clone()));
    (format!("http://{addr}/"), shutdown)
}

fn load(url: String) -> LoadConfig {
    LoadConfig {
        url,
        rps: 200,
        duration_s: 1,
        timeout_ms: 2_000,
        headers: vec![],
    }
}

#[tokio::test]
async fn healthy_app_reports_its_version() {
    let (url, stop) = start("v1", 0.0).await;
    let summary = run(load(url), CancellationToken::new()).await.unwrap();
    assert!(summary.sent > 50, "{summary:?}");
    assert_eq!(summary.by_version.get("v1"), Some(&summary.sent));
    assert_eq!(summary.by_status.get(&200), Some(&summary.sent));
    assert_eq!(summary.errors, 0);
    stop.cancel();
}

#[tokio::test]
async fn failing_app_answers_500_and_metrics_count_it() {
    let (url, stop) = start("v3", 1.0).await;
    let summary = run(load(url.clone()), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        summary.by_status.get(&500),
        Some(&summary.sent),
        "{summary:?}"
    );
    let metrics = reqwest::get(format!("{url}metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!("demo_http_requests_total{{code=\"500\"}} {}", summary.sent);
    assert!(metrics.contains(&line), "{metrics}");
    stop.cancel();
}
