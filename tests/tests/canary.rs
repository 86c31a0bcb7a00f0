//! Canary rollouts judged on Envoy's metrics in Prometheus: a healthy canary is promoted, one
//! that fails requests or answers slowly is rolled back — as real clients saw it.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::time::{Duration, Instant};

use aviary_e2e::*;
use aviary_proto as pb;
use aviary_proto::events::EventKind;

/// Canary 25 % → 50 % → promotion, one analysis every 3 s; two failed checks roll back.
const CANARY: &str = "    interval: 3s
    threshold: 2
    maxWeight: 50
    stepWeight: 25
    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }
        minRequests: 10
      - name: request-duration
        thresholdRange: { max: 500 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_canary_is_promoted() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.apply(&stack.manifest("podinfo", CANARY, "")).await;
    let traffic = Traffic::start(&stack.url(), 25, &[]);

    stack
        .wait_status("podinfo", "canary at 50%", Duration::from_secs(40), |s| {
            s.canary_weight == 50
        })
        .await;
    let at_half = Instant::now();
    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(40))
        .await;
    let promoted = Instant::now();
    let during = traffic.window(at_half, Some(promoted));
    let after = traffic
        .wait_answers(promoted, 40, Duration::from_secs(10))
        .await;
    let all = traffic.stop().await;

    // Clients: nothing failed, the canary served a real share at 50 %, then everything.
    assert_eq!(all.errors, 0, "{all:?}");
    assert_eq!(
        all.by_status.keys().collect::<Vec<_>>(),
        vec![&200],
        "{all:?}"
    );
    assert!(
        share(&during, "v2") > 0.2,
        "canary share at 50%: {during:?}"
    );
    assert_eq!(after.by_version.get("v2"), Some(&(after.sent)), "{after:?}");

    let status = stack.get("podinfo").await.status.unwrap();
    let verdict = status.last_verdict.unwrap();
    assert_eq!(verdict.outcome(), pb::Outcome::Pass, "{verdict:#?}");

    // Audit: each step once, in order, then promoted.
    let events = stack.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    assert_eq!(weight_trail(&events), vec![0, 25, 50, 100], "{trail:#?}");
    assert_eq!(steps_advanced(&events), 2, "{trail:#?}");
    let kinds = kinds(&events);
    assert!(kinds.contains(&EventKind::Verdict), "{trail:#?}");
    assert!(kinds.contains(&EventKind::Promoting), "{trail:#?}");
    assert!(!kinds.contains(&EventKind::RolledBack), "{trail:#?}");
    assert_eq!(kinds.last(), Some(&EventKind::Succeeded), "{trail:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_failing_requests_is_rolled_back() {
    let stack = Stack::start(StackOptions {
        canary: AppBehaviour {
            error_rate: 0.3,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    stack.apply(&stack.manifest("podinfo", CANARY, "")).await;
    let traffic = Traffic::start(&stack.url(), 25, &[]);

    stack
        .wait_rolled_back("podinfo", Duration::from_secs(40))
        .await;
    let rolled_back = Instant::now();
    let after = traffic
        .wait_answers(rolled_back, 40, Duration::from_secs(10))
        .await;
    let all = traffic.stop().await;

    // Clients saw the canary's errors only while it had traffic, then only the primary.
    assert!(all.by_status.get(&500).is_some_and(|n| *n > 0), "{all:?}");
    assert_eq!(after.by_version.get("v1"), Some(&after.sent), "{after:?}");
    assert_eq!(after.by_status.get(&200), Some(&after.sent), "{after:?}");

    // Rolled back on the success rate Envoy measured for the canary.
    let status = stack.get("podinfo").await.status.unwrap();
    assert_eq!(status.failed_checks, 2, "{status:#?}");
    // (The API names the failing checks; their values are not kept: see the test below.)
    let verdict = status.last_verdict.clone().unwrap();
    assert_eq!(verdict.outcome(), pb::Outcome::Fail, "{status:#?}");
    assert_eq!(verdict.error, "request-success-rate", "{status:#?}");

    let events = stack.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    let kinds = kinds(&events);
    assert!(!kinds.contains(&EventKind::Promoting), "{trail:#?}");
    assert!(!kinds.contains(&EventKind::Succeeded), "{trail:#?}");
    // Never promoted (clients saw the way back to 0 above).
    assert!(!weight_trail(&events).contains(&100), "{trail:#?}");
    assert_eq!(kinds.last(), Some(&EventKind::RolledBack), "{trail:#?}");
    let rollback = events
        .iter()
        .find(|e| e.kind() == Some(EventKind::RolledBack))
        .unwrap_or_else(|| panic!("no rolled-back event: {trail:#?}"));
    assert!(rollback.data.reason.contains("threshold"), "{trail:#?}");
}

/// DESIGN §4/proto `events.rs`: verdict and rolled-back events carry every metric's value, so
/// any audit subscriber sees why a rollout was rolled back; the API's `last_verdict` too.
///
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_event_records_the_failing_metric_values() {
    let stack = Stack::start(StackOptions {
        canary: AppBehaviour {
            error_rate: 0.5,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    stack
        .apply(&stack.manifest(
            "podinfo",
            &CANARY.replace("threshold: 2", "threshold: 1"),
            "",
        ))
        .await;
    let traffic = Traffic::start(&stack.url(), 25, &[]);
    let rollback = stack
        .wait_event("podinfo", EventKind::RolledBack, Duration::from_secs(40))
        .await;
    traffic.stop().await;
    let verdict = stack
        .get("podinfo")
        .await
        .status
        .unwrap()
        .last_verdict
        .unwrap();
    assert!(
        verdict
            .metrics
            .iter()
            .any(|m| m.name == "request-success-rate" && m.value.is_some()),
        "API last_verdict without metric values: {verdict:#?}"
    );
    let rate = rollback
        .data
        .metrics
        .iter()
        .find(|m| m.name == "request-success-rate")
        .unwrap_or_else(|| panic!("rolled-back event without metric values: {rollback:#?}"));
    assert_eq!(rate.outcome, "fail", "{rollback:#?}");
    assert!(rate.value.is_some_and(|v| v < 99.0), "{rollback:#?}");
    assert_eq!(rate.min, Some(99.0), "{rollback:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_canary_is_rolled_back_on_request_duration() {
    let stack = Stack::start(StackOptions {
        canary: AppBehaviour {
            latency_ms: 700,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    stack.apply(&stack.manifest("podinfo", CANARY, "")).await;
    let traffic = Traffic::start(&stack.url(), 25, &[]);

    stack
        .wait_rolled_back("podinfo", Duration::from_secs(40))
        .await;
    let after = traffic
        .wait_answers(Instant::now(), 40, Duration::from_secs(10))
        .await;
    let all = traffic.stop().await;

    assert_eq!(all.errors, 0, "slow, not failing: {all:?}");
    assert_eq!(after.by_version.get("v1"), Some(&after.sent), "{after:?}");

    let status = stack.get("podinfo").await.status.unwrap();
    let verdict = status.last_verdict.clone().unwrap();
    // The success rate was fine: latency alone rolled it back.
    assert_eq!(verdict.outcome(), pb::Outcome::Fail, "{status:#?}");
    assert_eq!(verdict.error, "request-duration", "{status:#?}");
    let events = stack.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    assert!(
        !kinds(&events).contains(&EventKind::Succeeded),
        "{trail:#?}"
    );
    // The rollback's event announces the split it asks for: all traffic on the primary.
    assert_eq!(weight_trail(&events), vec![0, 25, 0], "{trail:#?}");
}
