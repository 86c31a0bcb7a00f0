//! Faults mid-rollout across the real processes: the analyzer, the owning scheduler replica,
//! the router agent and nats-server go away and come back; clients keep being served and every
//! rollout still ends right, with a complete audit trail.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::collections::HashSet;
use std::time::{Duration, Instant};

use aviary_e2e::*;
use aviary_proto as pb;
use aviary_proto::events::EventKind;

/// Canary 25 % → 50 % → promotion, one analysis every 3 s.
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

/// The audit trail of a promoted 25/50 canary, whatever happened on the way: each step once,
/// in order, unique event ids, ending in `succeeded`.
async fn assert_clean_promotion(stack: &Stack, name: &str) {
    let events = stack.events(name).await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    assert_eq!(weight_trail(&events), vec![0, 25, 50, 100], "{trail:#?}");
    assert_eq!(steps_advanced(&events), 2, "no step repeated: {trail:#?}");
    let ids: HashSet<_> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "{trail:#?}");
    let kinds = kinds(&events);
    assert!(!kinds.contains(&EventKind::RolledBack), "{trail:#?}");
    assert_eq!(kinds.last(), Some(&EventKind::Succeeded), "{trail:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyzer_down_halts_and_resumes_when_it_returns() {
    let mut stack = Stack::start(StackOptions::default()).await;
    stack.apply(&stack.manifest("podinfo", CANARY, "")).await;
    let traffic = Traffic::start(&stack.url(), 25, &[]);
    stack
        .wait_status("podinfo", "canary at 25%", Duration::from_secs(30), |s| {
            s.canary_weight == 25
        })
        .await;

    stack.analyzer.kill();
    let before = stack.events("podinfo").await.len();
    // Two analyses without an analyzer: each halts, neither advances nor fails a check.
    eventually(
        Duration::from_secs(30),
        "two halts without an analyzer",
        || {
            let stack = &stack;
            async move {
                let events = stack.events("podinfo").await;
                let halts = events[before..]
                    .iter()
                    .filter(|e| e.kind() == Some(EventKind::Halted))
                    .count();
                (halts >= 2).then_some(())
            }
        },
    )
    .await;
    let status = stack.get("podinfo").await.status.unwrap();
    assert_eq!(status.phase(), pb::Phase::Progressing, "{status:#?}");
    assert_eq!(
        status.failed_checks, 0,
        "a missing analyzer is no failed check: {status:#?}"
    );
    assert!(!status.halt_reason.is_empty(), "{status:#?}");
    let outage = stack.events("podinfo").await[before..].to_vec();
    let trail: Vec<_> = outage.iter().map(describe).collect();
    assert!(
        outage.iter().all(|e| !matches!(
            e.kind(),
            Some(
                EventKind::Verdict
                    | EventKind::StepAdvanced
                    | EventKind::Promoting
                    | EventKind::Succeeded
            )
        )),
        "nothing advances while the analyzer is down: {trail:#?}"
    );
    assert!(
        outage.iter().all(|e| e.data.canary_weight == 25),
        "{trail:#?}"
    );

    stack.analyzer.start().await;
    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(40))
        .await;
    let all = traffic.stop().await;
    assert_eq!(all.errors, 0, "{all:?}");
    assert_clean_promotion(&stack, "podinfo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_replica_killed_another_takes_over() {
    let mut stack = Stack::start(StackOptions {
        schedulers: 2,
        ..Default::default()
    })
    .await;
    stack.apply(&stack.manifest("podinfo", CANARY, "")).await;
    let traffic = Traffic::start(&stack.url(), 25, &[]);
    stack
        .wait_status("podinfo", "canary at 25%", Duration::from_secs(30), |s| {
            s.canary_weight == 25
        })
        .await;
    let owner = eventually(Duration::from_secs(5), "a lease holder", || {
        stack.owner("podinfo")
    })
    .await;

    let killed_at = Instant::now();
    stack.scheduler(&owner).service.kill();
    let survivor = stack
        .schedulers
        .iter()
        .find(|s| s.id != owner)
        .unwrap()
        .id
        .clone();
    eventually(
        Duration::from_secs(10),
        "the survivor holds the lease",
        || {
            let stack = &stack;
            let survivor = survivor.clone();
            async move { (stack.owner("podinfo").await == Some(survivor)).then_some(()) }
        },
    )
    .await;
    let takeover = killed_at.elapsed();
    assert!(
        takeover < Duration::from_millis(2 * LEASE_TTL_MS + 2_000),
        "takeover took {takeover:?}"
    );

    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(40))
        .await;
    let after = traffic
        .wait_answers(Instant::now(), 25, Duration::from_secs(10))
        .await;
    let all = traffic.stop().await;
    assert_eq!(all.errors, 0, "{all:?}");
    assert_eq!(
        all.by_status.keys().collect::<Vec<_>>(),
        vec![&200],
        "{all:?}"
    );
    assert_eq!(after.by_version.get("v2"), Some(&after.sent), "{after:?}");
    assert_clean_promotion(&stack, "podinfo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_agent_restarted_reconciles_the_split() {
    let mut stack = Stack::start(StackOptions::default()).await;
    stack.apply(&stack.manifest("podinfo", CANARY, "")).await;
    let traffic = Traffic::start(&stack.url(), 25, &[]);
    stack
        .wait_status("podinfo", "canary at 25%", Duration::from_secs(30), |s| {
            s.canary_weight == 25
        })
        .await;

    stack.agent.kill();
    // The next step cannot be confirmed without the agent: the rollout halts, Envoy keeps
    // serving the last split.
    stack
        .wait_event_where(
            "podinfo",
            "a halt on the route",
            Duration::from_secs(30),
            |e| e.kind() == Some(EventKind::Halted) && e.data.reason.contains("route"),
        )
        .await;
    let down = traffic
        .wait_answers(Instant::now(), 25, Duration::from_secs(10))
        .await;
    assert_eq!(down.errors, 0, "{down:?}");
    assert!(
        share(&down, "v2") > 0.05 && share(&down, "v2") < 0.5,
        "still 25%: {down:?}"
    );

    let restarted = Instant::now();
    stack.agent.start().await;
    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(60))
        .await;
    let after = traffic.since(restarted);
    let all = traffic.stop().await;
    // A restarted agent serves the desired split from KV: Envoy never saw an empty config.
    assert_eq!(all.errors, 0, "{all:?}");
    assert_eq!(
        all.by_status.keys().collect::<Vec<_>>(),
        vec![&200],
        "{all:?}"
    );
    assert!(share(&after, "v2") > 0.2, "{after:?}");
    assert_clean_promotion(&stack, "podinfo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_rollout_resumes() {
    let mut stack = Stack::start(StackOptions::default()).await;
    stack.apply(&stack.manifest("podinfo", CANARY, "")).await;
    let traffic = Traffic::start(&stack.url(), 25, &[]);
    stack
        .wait_status("podinfo", "canary at 25%", Duration::from_secs(30), |s| {
            s.canary_weight == 25
        })
        .await;

    stack.nats.restart().await.unwrap();

    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(60))
        .await;
    let after = traffic
        .wait_answers(Instant::now(), 25, Duration::from_secs(10))
        .await;
    let all = traffic.stop().await;
    assert_eq!(
        all.errors, 0,
        "the data plane never depended on NATS: {all:?}"
    );
    assert_eq!(after.by_version.get("v2"), Some(&after.sent), "{after:?}");
    assert_clean_promotion(&stack, "podinfo").await;
}
