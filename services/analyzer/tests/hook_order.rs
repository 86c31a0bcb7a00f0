//! Flagger's order within one analysis: the `rollout` webhooks are called first; a failing one
//! is a failed check and the metrics backend is not asked; otherwise the metrics are queried
//! after the hooks answered. One local server plays both the backend and the hook receiver and
//! writes every event into one log, so the test reads the order directly.
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aviary_proto::{Outcome, WebhookCheck};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use common::*;

type Log = Arc<Mutex<Vec<String>>>;

async fn query(State(log): State<Log>) -> String {
    log.lock().unwrap().push("query".into());
    r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"99.9"]}]}}"#.to_owned()
}

/// Answers `code` after a pause long enough that a metric query started alongside the hook
/// would be logged before the hook's answer.
async fn hook(State(log): State<Log>, Path(code): Path<u16>) -> StatusCode {
    log.lock().unwrap().push("hook called".into());
    tokio::time::sleep(Duration::from_millis(300)).await;
    log.lock().unwrap().push("hook answered".into());
    StatusCode::from_u16(code).unwrap()
}

async fn server() -> (Log, String) {
    let log = Log::default();
    let app = Router::new()
        .route("/api/v1/query", get(query))
        .route("/hook/{code}", post(hook))
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (log, url)
}

fn rollout_hook(url: String) -> WebhookCheck {
    WebhookCheck {
        name: "load-test".into(),
        r#type: "rollout".into(),
        url,
        timeout_ms: 5_000,
        ..WebhookCheck::default()
    }
}

#[tokio::test]
async fn a_failing_rollout_hook_fails_the_check_and_no_metric_is_queried() {
    let (log, url) = server().await;
    let analyzer = analyzer(&url);
    let mut req = request(
        1_700_000_000_000,
        1_700_000_060_000,
        vec![success_rate_min(99.0), duration_max(500.0)],
    );
    req.webhooks = vec![rollout_hook(format!("{url}/hook/500"))];
    let v = analyzer.analyze(&req).await;
    assert_eq!(v.outcome(), Outcome::Fail, "{v:?}");
    assert!(
        !v.decisive,
        "a failed check counts toward the threshold: {v:?}"
    );
    assert_eq!(v.webhooks[0].outcome(), Outcome::Fail, "{v:?}");
    assert_eq!(v.metrics.len(), 2, "every metric is reported: {v:?}");
    for m in &v.metrics {
        assert!(m.reason.contains("not queried"), "{m:?}");
        assert_eq!(m.value, None, "{m:?}");
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        ["hook called", "hook answered"],
        "the backend got no query"
    );
}

#[tokio::test]
async fn a_passing_rollout_hook_is_called_before_the_metrics_are_queried() {
    let (log, url) = server().await;
    let analyzer = analyzer(&url);
    let mut req = request(
        1_700_000_000_000,
        1_700_000_060_000,
        vec![success_rate_min(99.0)],
    );
    req.webhooks = vec![rollout_hook(format!("{url}/hook/200"))];
    let v = analyzer.analyze(&req).await;
    assert_eq!(v.outcome(), Outcome::Pass, "{v:?}");
    assert_eq!(v.metrics[0].value, Some(99.9), "{v:?}");
    let log = log.lock().unwrap().clone();
    assert_eq!(log[..2], ["hook called", "hook answered"], "{log:?}");
    assert!(
        log.len() > 2 && log[2..].iter().all(|e| e == "query"),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_closed_gate_does_not_stop_the_metrics() {
    // Gates halt; they are not checks, so the metrics are still judged and reported.
    let (log, url) = server().await;
    let analyzer = analyzer(&url);
    let mut req = request(
        1_700_000_000_000,
        1_700_000_060_000,
        vec![success_rate_min(99.0)],
    );
    let mut gate = rollout_hook(format!("{url}/hook/403"));
    gate.r#type = "confirm-promotion".into();
    req.webhooks = vec![gate];
    let v = analyzer.analyze(&req).await;
    assert_eq!(v.outcome(), Outcome::Inconclusive, "{v:?}");
    assert_eq!(v.metrics[0].value, Some(99.9), "{v:?}");
    assert!(log.lock().unwrap().iter().any(|e| e == "query"));
}
