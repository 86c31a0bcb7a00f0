//! Gates as Flagger runs them: while `confirm-traffic-increase` is closed the canary is still
//! analysed every interval at its weight (no halt, failed checks count), and while
//! `confirm-rollout` is closed the rollback hooks are polled with it.

#![allow(clippy::unwrap_used)] // test stand-ins: a panic is the failure report

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aviary_bus::names;
use aviary_proto as pb;
use aviary_testkit::eventually;
use common::*;
use futures::StreamExt;
use prost::Message;

/// What the analyzer stand-in saw: analyses (the plan step each judges) and gate checks.
#[derive(Default)]
struct Seen {
    analyses: Vec<u32>,
    gates: Vec<Vec<String>>,
}

/// Answers like the analyzer: metrics with `metrics` (pass or fail); `confirm-*` hooks closed
/// (HTTP 403); `rollback` hooks asking for rollback (HTTP 200) when `rollback` is set.
async fn analyzer(
    client: async_nats::Client,
    metrics: Arc<Mutex<pb::Outcome>>,
    rollback: bool,
) -> Arc<Mutex<Seen>> {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut sub = client
        .queue_subscribe(names::ANALYSIS_REQUEST, names::QUEUE_ANALYZER.into())
        .await
        .unwrap();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            let Ok(request) = pb::AnalysisRequest::decode(message.payload.clone()) else {
                continue;
            };
            let rollout = request.rollout.clone();
            let verdict = if request.metrics.is_empty() {
                record
                    .lock()
                    .unwrap()
                    .gates
                    .push(request.webhooks.iter().map(|w| w.r#type.clone()).collect());
                let webhooks: Vec<pb::WebhookResult> = request
                    .webhooks
                    .iter()
                    .map(|w| {
                        let (status_code, outcome) = match (w.r#type.as_str(), rollback) {
                            ("rollback", true) => (200, pb::Outcome::Fail),
                            ("rollback", false) => (403, pb::Outcome::Pass),
                            _ => (403, pb::Outcome::Inconclusive),
                        };
                        pb::WebhookResult {
                            name: w.name.clone(),
                            r#type: w.r#type.clone(),
                            status_code,
                            outcome: outcome as i32,
                            reason: format!("HTTP {status_code}"),
                        }
                    })
                    .collect();
                let outcome = if webhooks
                    .iter()
                    .any(|w| w.outcome == pb::Outcome::Fail as i32)
                {
                    pb::Outcome::Fail
                } else {
                    pb::Outcome::Inconclusive
                };
                pb::Verdict {
                    rollout,
                    generation: request.generation,
                    outcome: outcome as i32,
                    webhooks,
                    ..Default::default()
                }
            } else {
                let outcome = *metrics.lock().unwrap();
                record.lock().unwrap().analyses.push(request.step);
                pb::Verdict {
                    rollout,
                    generation: request.generation,
                    step: request.step,
                    outcome: outcome as i32,
                    metrics: request
                        .metrics
                        .iter()
                        .map(|m| pb::MetricResult {
                            name: m.name.clone(),
                            value: Some(if outcome == pb::Outcome::Pass {
                                100.0
                            } else {
                                80.0
                            }),
                            outcome: outcome as i32,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }
            };
            if let Some(reply) = message.reply {
                let _ = client.publish(reply, verdict.encode_to_vec().into()).await;
            }
        }
    });
    seen
}

fn manifest(hooks: &str) -> String {
    format!(
        r#"apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata: {{ name: podinfo, namespace: test }}
spec:
  ingresses: [{{ name: edge }}]
  primary: {{ name: app-v1, endpoints: ["127.0.0.1:9001"] }}
  canary: {{ name: app-v2, endpoints: ["127.0.0.1:9002"] }}
  progressDeadlineSeconds: 5
  analysis:
    interval: 300ms
    threshold: 3
    maxWeight: 60
    stepWeight: 30
    metrics:
      - name: request-success-rate
        thresholdRange: {{ min: 99 }}
    webhooks:
{hooks}"#
    )
}

async fn status(
    api: &mut pb::rollout_service_client::RolloutServiceClient<tonic::transport::Channel>,
) -> pb::RolloutStatus {
    api.get(pb::GetRequest {
        r#ref: Some(pb::RolloutRef::new("test", "podinfo")),
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

#[tokio::test]
async fn a_closed_traffic_increase_gate_keeps_analysing_the_canary_past_the_deadline() {
    let plane = Plane::start().await;
    let (client, mut api) = (plane.client.clone(), plane.api.clone());
    let metrics = Arc::new(Mutex::new(pb::Outcome::Pass));
    let seen = analyzer(client.clone(), metrics.clone(), false).await;
    let hooks =
        "      - { name: more, type: confirm-traffic-increase, url: http://127.0.0.1:9/more }\n";
    api.apply(pb::ApplyRequest {
        manifest: manifest(hooks),
    })
    .await
    .unwrap();
    // The first increase (0 → 30) is refused too, so open it by hand; the next (30 → 60) is
    // held. Analyses at 30 % go on beyond the 5 s deadline: a hold is no halt.
    eventually(Duration::from_secs(20), "the first gate check", || {
        let n = seen.lock().unwrap().gates.len();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    api.approve(pb::CommandRequest {
        r#ref: Some(pb::RolloutRef::new("test", "podinfo")),
        reason: "first step".into(),
    })
    .await
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "25 analyses of the first step",
        || {
            let n = seen
                .lock()
                .unwrap()
                .analyses
                .iter()
                .filter(|s| **s == 0)
                .count();
            async move { (n >= 25).then_some(()) }
        },
    )
    .await;
    let held = status(&mut api).await;
    assert_eq!(held.phase(), pb::Phase::Progressing, "{held:#?}");
    assert_eq!(held.canary_weight, 30, "{held:#?}");
    assert!(held.halt_reason.is_empty(), "{held:#?}");

    // Failing now, the held canary is rolled back at the threshold.
    *metrics.lock().unwrap() = pb::Outcome::Fail;
    wait_phase(&api, "podinfo", pb::Phase::Failed, Duration::from_secs(20)).await;
    let failed = status(&mut api).await;
    assert_eq!(failed.failed_checks, 3, "{failed:#?}");
    assert!(
        seen.lock().unwrap().analyses.iter().all(|s| *s == 0),
        "never analysed at the second step's 60 %"
    );
    plane.stop().await;
}

#[tokio::test]
async fn a_rollback_hook_rolls_back_a_rollout_waiting_at_confirm_rollout() {
    let plane = Plane::start().await;
    let (client, mut api) = (plane.client.clone(), plane.api.clone());
    let metrics = Arc::new(Mutex::new(pb::Outcome::Pass));
    let seen = analyzer(client.clone(), metrics, true).await;
    let hooks = "      - { name: start, type: confirm-rollout, url: http://127.0.0.1:9/start }\n      - { name: undo, type: rollback, url: http://127.0.0.1:9/undo }\n";
    api.apply(pb::ApplyRequest {
        manifest: manifest(hooks),
    })
    .await
    .unwrap();
    wait_phase(&api, "podinfo", pb::Phase::Failed, Duration::from_secs(20)).await;
    let gates = std::mem::take(&mut seen.lock().unwrap().gates);
    assert_eq!(gates[0], ["confirm-rollout"], "{gates:?}");
    assert_eq!(gates[1], ["confirm-rollout", "rollback"], "{gates:?}");
    let events = audit_events(&client, "podinfo").await;
    let last = events
        .iter()
        .rev()
        .find(|e| e["type"] == "dev.aviary.rollout.rolled-back")
        .expect("rolled back");
    assert!(
        last["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("rollback webhook"),
        "{last:#}"
    );
    assert!(seen.lock().unwrap().analyses.is_empty(), "never started");
    plane.stop().await;
}
