//! Gates and commands: a confirm-rollout gate opened through `aviary-gate`, a manual approval
//! step and a confirm-promotion gate opened through the API, an abort mid-rollout, and a
//! `SetWeight` hold — each checked against what clients were served.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::time::{Duration, Instant};

use aviary_e2e::*;
use aviary_proto as pb;
use aviary_proto::events::EventKind;

const CANARY: &str = "    interval: 3s
    threshold: 2
    maxWeight: 50
    stepWeight: 25
    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }
        minRequests: 5
      - name: request-duration
        thresholdRange: { max: 500 }";

fn with_webhook(kind: &str, url: &str) -> String {
    format!(
        "{CANARY}
    webhooks:
      - name: gate
        type: {kind}
        url: {url}
        timeout: 2s"
    )
}

fn reference() -> Option<pb::RolloutRef> {
    Some(pb::RolloutRef::new(NS, "podinfo"))
}

/// Checks for `hold` that the rollout stays as `pred` says (an absence can only be observed
/// over time; the length is one analysis interval).
async fn stays(
    stack: &Stack,
    what: &str,
    hold: Duration,
    pred: impl Fn(&pb::RolloutStatus) -> bool,
) {
    let until = Instant::now() + hold;
    while Instant::now() < until {
        let status = stack.get("podinfo").await.status.unwrap();
        assert!(pred(&status), "{what}: {status:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_rollout_gate_holds_until_opened() {
    let stack = Stack::start(StackOptions {
        gate: true,
        ..Default::default()
    })
    .await;
    let check = format!("{}/gate/check", stack.gate_url());
    stack
        .apply(&stack.manifest("podinfo", &with_webhook("confirm-rollout", &check), ""))
        .await;
    let traffic = Traffic::start(&stack.url(), 20, &[]);
    stack
        .wait_phase("podinfo", pb::Phase::Waiting, Duration::from_secs(30))
        .await;
    stack
        .wait_event("podinfo", EventKind::GateWaiting, Duration::from_secs(5))
        .await;
    let held = Instant::now();
    stays(
        &stack,
        "held by the closed gate",
        Duration::from_secs(4),
        |s| s.phase() == pb::Phase::Waiting && s.canary_weight == 0,
    )
    .await;
    let while_held = traffic.since(held);
    assert_eq!(
        while_held.by_version.get("v1"),
        Some(&while_held.sent),
        "{while_held:?}"
    );

    // Opened the way an operator would: `aviary gate open`.
    let (code, out) = stack.gate_cli("open", "podinfo").await;
    assert_eq!(code, 0, "{out}");
    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(45))
        .await;
    let all = traffic.stop().await;
    assert_eq!(all.errors, 0, "{all:?}");
    assert!(all.by_version.get("v2").is_some_and(|n| *n > 0), "{all:?}");
    let events = stack.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    let kinds = kinds(&events);
    let opened = kinds.iter().position(|k| *k == EventKind::GateOpened);
    let first_step = kinds.iter().position(|k| *k == EventKind::StepAdvanced);
    assert!(opened.is_some() && opened < first_step, "{trail:#?}");
    assert_eq!(kinds.last(), Some(&EventKind::Succeeded), "{trail:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_approval_step_waits_for_approve() {
    let stack = Stack::start(StackOptions::default()).await;
    let steps = "  steps:
    - setWeight: 25
    - approval: {}
    - setWeight: 50
    - analysis: {}";
    let analysis = CANARY.replace("    maxWeight: 50\n    stepWeight: 25\n", "");
    stack
        .apply(&stack.manifest("podinfo", &analysis, steps))
        .await;
    let traffic = Traffic::start(&stack.url(), 20, &[]);
    stack
        .wait_status(
            "podinfo",
            "waiting for approval",
            Duration::from_secs(30),
            |s| s.waiting_gates.iter().any(|g| g == "approval"),
        )
        .await;
    let held = Instant::now();
    stays(
        &stack,
        "held at 25% for approval",
        Duration::from_secs(3),
        |s| s.canary_weight == 25 && s.phase() == pb::Phase::Progressing,
    )
    .await;
    let while_held = traffic.since(held);
    let canary = share(&while_held, "v2");
    assert!(
        canary > 0.05 && canary < 0.5,
        "25% while held: {while_held:?}"
    );

    stack
        .api()
        .await
        .approve(pb::CommandRequest {
            r#ref: reference(),
            reason: "e2e".into(),
        })
        .await
        .unwrap();
    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(40))
        .await;
    let all = traffic.stop().await;
    assert_eq!(all.errors, 0, "{all:?}");
    let events = stack.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    assert!(
        kinds(&events).contains(&EventKind::GateOpened),
        "{trail:#?}"
    );
    assert_eq!(weight_trail(&events), vec![0, 25, 50, 100], "{trail:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_promotion_gate_holds_at_max_weight() {
    let stack = Stack::start(StackOptions {
        gate: true,
        ..Default::default()
    })
    .await;
    let check = format!("{}/gate/check", stack.gate_url());
    stack
        .apply(&stack.manifest("podinfo", &with_webhook("confirm-promotion", &check), ""))
        .await;
    let traffic = Traffic::start(&stack.url(), 20, &[]);
    stack
        .wait_phase(
            "podinfo",
            pb::Phase::WaitingPromotion,
            Duration::from_secs(40),
        )
        .await;
    let held = Instant::now();
    stays(
        &stack,
        "held before promotion",
        Duration::from_secs(4),
        |s| s.phase() == pb::Phase::WaitingPromotion && s.canary_weight == 50,
    )
    .await;
    let while_held = traffic.since(held);
    let canary = share(&while_held, "v2");
    assert!(
        canary > 0.3 && canary < 0.7,
        "50% while held: {while_held:?}"
    );

    assert_eq!(stack.gate_call("/gate/open", "podinfo").await, 200);
    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(30))
        .await;
    let after = traffic
        .wait_answers(Instant::now(), 20, Duration::from_secs(10))
        .await;
    let all = traffic.stop().await;
    assert_eq!(after.by_version.get("v2"), Some(&after.sent), "{after:?}");
    assert_eq!(all.errors, 0, "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_mid_rollout_rolls_back() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.apply(&stack.manifest("podinfo", CANARY, "")).await;
    let traffic = Traffic::start(&stack.url(), 20, &[]);
    stack
        .wait_status("podinfo", "canary at 25%", Duration::from_secs(30), |s| {
            s.canary_weight == 25
        })
        .await;
    stack
        .api()
        .await
        .abort(pb::CommandRequest {
            r#ref: reference(),
            reason: "e2e".into(),
        })
        .await
        .unwrap();
    stack
        .wait_rolled_back("podinfo", Duration::from_secs(10))
        .await;
    let after = traffic
        .wait_answers(Instant::now(), 20, Duration::from_secs(10))
        .await;
    let all = traffic.stop().await;
    assert_eq!(after.by_version.get("v1"), Some(&after.sent), "{after:?}");
    assert_eq!(all.errors, 0, "{all:?}");
    let events = stack.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    let kinds = kinds(&events);
    assert!(kinds.contains(&EventKind::Command), "{trail:#?}");
    assert_eq!(kinds.last(), Some(&EventKind::RolledBack), "{trail:#?}");
    assert!(!kinds.contains(&EventKind::Promoting), "{trail:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_weight_holds_the_canary_until_resumed() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.apply(&stack.manifest("podinfo", CANARY, "")).await;
    let traffic = Traffic::start(&stack.url(), 25, &[]);
    stack
        .wait_status("podinfo", "canary at 25%", Duration::from_secs(30), |s| {
            s.canary_weight == 25
        })
        .await;
    stack
        .api()
        .await
        .set_weight(pb::SetWeightRequest {
            r#ref: reference(),
            weight: 80,
        })
        .await
        .unwrap();
    stack
        .wait_status("podinfo", "held at 80%", Duration::from_secs(10), |s| {
            s.canary_weight == 80 && s.phase() == pb::Phase::Paused
        })
        .await;
    // Give the data plane the acknowledged split, then measure what clients get.
    let held = Instant::now();
    stays(&stack, "held at 80%", Duration::from_secs(4), |s| {
        s.canary_weight == 80 && s.phase() == pb::Phase::Paused
    })
    .await;
    let while_held = traffic.window(held, Some(Instant::now()));
    let canary = share(&while_held, "v2");
    assert!(
        canary > 0.65 && canary < 0.95,
        "80% while held: {while_held:?}"
    );

    stack
        .api()
        .await
        .resume(pb::CommandRequest {
            r#ref: reference(),
            reason: "e2e".into(),
        })
        .await
        .unwrap();
    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(40))
        .await;
    let all = traffic.stop().await;
    assert_eq!(all.errors, 0, "{all:?}");
    let events = stack.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    assert!(weight_trail(&events).contains(&80), "{trail:#?}");
    assert_eq!(
        kinds(&events).last(),
        Some(&EventKind::Succeeded),
        "{trail:#?}"
    );
}

/// A rolled-back rollout's status shows the split the data plane serves (100 % primary), once
/// the agent acknowledged it (DESIGN §3: a route is never fire-and-forget).
///
/// (The owner keeps a finished rollout until its last route is confirmed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_status_shows_the_confirmed_primary_split() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.apply(&stack.manifest("podinfo", CANARY, "")).await;
    stack
        .wait_status("podinfo", "canary at 25%", Duration::from_secs(30), |s| {
            s.canary_weight == 25
        })
        .await;
    stack
        .api()
        .await
        .abort(pb::CommandRequest {
            r#ref: reference(),
            reason: "e2e".into(),
        })
        .await
        .unwrap();
    stack
        .wait_phase("podinfo", pb::Phase::Failed, Duration::from_secs(10))
        .await;
    wait_serving(&stack.url(), &[], "v1", Duration::from_secs(5)).await;
    let stack = &stack;
    eventually(
        Duration::from_secs(10),
        "the API showing 100% primary",
        || async move {
            let status = stack.get("podinfo").await.status.unwrap();
            (status.canary_weight == 0 && status.primary_weight == 100).then_some(())
        },
    )
    .await;
}
