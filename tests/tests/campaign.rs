//! A staged campaign end to end (as Symphony's): a `check` step calls a real HTTP test
//! service through the analyzer; when it fails the rollout goes back to an earlier stage at a
//! lower weight and runs again, and when it keeps failing the rollout is rolled back. Clients
//! see every weight the audit trail shows.

#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aviary_e2e::*;
use aviary_proto as pb;
use aviary_proto::events::EventKind;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;

const ANALYSIS: &str = "    interval: 2s
    threshold: 2
    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }";

/// A test service whose first `fail_first` calls answer 500, the rest 200.
async fn test_service(fail_first: u32) -> (String, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let app = Router::new().route(
        "/e2e",
        post(move || {
            let seen = seen.clone();
            async move {
                if seen.fetch_add(1, Ordering::SeqCst) < fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/e2e", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

fn steps(url: &str) -> String {
    format!(
        "  steps:
    - stage: one
    - setWeight: 10
    - analysis: {{}}
    - stage: two
    - setWeight: 40
    - check: {{ name: e2e, url: \"{url}\", timeout: 5s, onFailure: {{ goTo: one, setWeight: 5, maxReturns: 1 }} }}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_test_stage_sends_the_rollout_back_at_a_lower_weight() {
    let stack = Stack::start(StackOptions::default()).await;
    let (url, calls) = test_service(1).await;
    stack
        .apply(&stack.manifest("podinfo", ANALYSIS, &steps(&url)))
        .await;
    let traffic = Traffic::start(&stack.url(), 20, &[]);
    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(90))
        .await;
    let all = traffic.stop().await;
    assert_eq!(all.errors, 0, "{all:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "failed once, passed once");
    let events = stack.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    assert_eq!(
        weight_trail(&events),
        vec![0, 10, 40, 5, 40, 100],
        "{trail:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.data.reason.contains("back to stage one at 5%")),
        "{trail:#?}"
    );
    assert!(
        !kinds(&events).contains(&EventKind::RolledBack),
        "{trail:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_stage_that_keeps_failing_rolls_the_rollout_back() {
    let stack = Stack::start(StackOptions::default()).await;
    let (url, calls) = test_service(u32::MAX).await;
    stack
        .apply(&stack.manifest("podinfo", ANALYSIS, &steps(&url)))
        .await;
    let traffic = Traffic::start(&stack.url(), 20, &[]);
    stack
        .wait_phase("podinfo", pb::Phase::Failed, Duration::from_secs(90))
        .await;
    let all = traffic.stop().await;
    assert_eq!(all.errors, 0, "{all:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one return, then the rollback"
    );
    let events = stack.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    assert!(
        kinds(&events).contains(&EventKind::RolledBack),
        "{trail:#?}"
    );
    assert_eq!(weight_trail(&events).last(), Some(&0), "{trail:#?}");
}
