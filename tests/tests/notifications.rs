//! What the notifier posts for a real rollout: a halt that lasts several intervals once (the
//! audit trail keeps each, marked repeated), and a promotion once, not again when it
//! finalises.

#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::time::Duration;

use aviary_e2e::*;
use aviary_proto as pb;
use aviary_proto::events::EventKind;

/// One step to 50 %, then promotion; no request means no data, which halts.
const CANARY: &str = "    interval: 2s
    threshold: 2
    maxWeight: 50
    stepWeight: 50
    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }
        minRequests: 10";

fn posted(stack: &Stack, ty: &str) -> usize {
    let ty = format!("dev.aviary.rollout.{ty}");
    stack
        .notifications
        .lock()
        .unwrap()
        .iter()
        .filter(|n| n["type"] == ty.as_str())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lasting_halt_and_a_promotion_are_each_posted_once() {
    let stack = Stack::start(StackOptions {
        notifier: true,
        ..StackOptions::default()
    })
    .await;
    stack.apply(&stack.manifest("podinfo", CANARY, "")).await;
    // No traffic yet: every window has no data, so the canary stays halted at 50 %.
    eventually(Duration::from_secs(60), "three halted events", || async {
        let events = stack.events("podinfo").await;
        let halts = events
            .iter()
            .filter(|e| e.kind() == Some(EventKind::Halted))
            .count();
        (halts >= 3).then_some(())
    })
    .await;
    let traffic = Traffic::start(&stack.url(), 25, &[]);
    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(60))
        .await;
    traffic.stop().await;
    eventually(Duration::from_secs(30), "the success posted", || async {
        (posted(&stack, "succeeded") == 1).then_some(())
    })
    .await;

    let events = stack.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    let halts: Vec<bool> = events
        .iter()
        .filter(|e| e.kind() == Some(EventKind::Halted))
        .map(|e| e.data.repeated)
        .collect();
    let first_halts = halts.iter().filter(|r| !**r).count();
    assert!(halts.len() >= 3 && first_halts < halts.len(), "{trail:#?}");
    assert_eq!(posted(&stack, "halted"), first_halts, "{trail:#?}");
    let promoting = events
        .iter()
        .filter(|e| e.kind() == Some(EventKind::Promoting))
        .count();
    assert_eq!(promoting, 2, "promoting and finalising: {trail:#?}");
    assert_eq!(posted(&stack, "promoting"), 1, "{trail:#?}");
}
