//! The events a rollout emits for what it notifies once: a halt still in force at a later
//! interval is marked repeated, a promotion is announced by one unrepeated `promoting` event
//! (its finalising step is marked repeated), and a post-rollout hook that fails is recorded
//! as `hook-failed` after the rollout succeeded.

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

/// Answers analysis requests: the first `errors` with an error verdict (the metrics backend
/// is down), the rest with a pass; hooks (requests with webhooks) get HTTP 500 from each.
async fn flaky_analyzer(client: async_nats::Client, errors: u32) -> Arc<Mutex<u32>> {
    let count = Arc::new(Mutex::new(0));
    let mut sub = client
        .queue_subscribe(names::ANALYSIS_REQUEST, names::QUEUE_ANALYZER.into())
        .await
        .unwrap();
    let seen = count.clone();
    tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            let Ok(request) = pb::AnalysisRequest::decode(message.payload.clone()) else {
                continue;
            };
            let verdict = if request.webhooks.is_empty() {
                let n = {
                    let mut n = seen.lock().unwrap();
                    *n += 1;
                    *n
                };
                let outcome = if n <= errors {
                    pb::Outcome::Error
                } else {
                    pb::Outcome::Pass
                };
                pb::Verdict {
                    rollout: request.rollout.clone(),
                    generation: request.generation,
                    step: request.step,
                    outcome: outcome as i32,
                    metrics: request
                        .metrics
                        .iter()
                        .map(|m| pb::MetricResult {
                            name: m.name.clone(),
                            value: (outcome == pb::Outcome::Pass).then_some(100.0),
                            outcome: outcome as i32,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }
            } else {
                pb::Verdict {
                    rollout: request.rollout.clone(),
                    generation: request.generation,
                    outcome: pb::Outcome::Error as i32,
                    webhooks: request
                        .webhooks
                        .iter()
                        .map(|w| pb::WebhookResult {
                            name: w.name.clone(),
                            r#type: w.r#type.clone(),
                            status_code: 500,
                            outcome: pb::Outcome::Error as i32,
                            reason: "HTTP 500: not delivered (informational)".into(),
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
    count
}

const MANIFEST: &str = r#"apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata: { name: podinfo, namespace: test }
spec:
  ingresses: [{ name: edge }]
  primary: { name: app-v1, endpoints: ["127.0.0.1:9001"] }
  canary: { name: app-v2, endpoints: ["127.0.0.1:9002"] }
  progressDeadlineSeconds: 60
  analysis:
    interval: 300ms
    threshold: 2
    maxWeight: 50
    stepWeight: 50
    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }
    webhooks:
      - name: smoke
        type: post-rollout
        url: http://127.0.0.1:9/smoke
"#;

fn of_type<'a>(events: &'a [serde_json::Value], ty: &str) -> Vec<&'a serde_json::Value> {
    events
        .iter()
        .filter(|e| e["type"] == format!("dev.aviary.rollout.{ty}"))
        .collect()
}

fn repeated(e: &serde_json::Value) -> bool {
    e["data"]["repeated"] == true
}

#[tokio::test]
async fn lasting_halts_and_the_finalising_step_are_marked_and_a_failed_hook_is_recorded() {
    let plane = Plane::start().await;
    let (client, mut api) = (plane.client.clone(), plane.api.clone());
    let _analyses = flaky_analyzer(client.clone(), 3).await;
    api.apply(pb::ApplyRequest {
        manifest: MANIFEST.into(),
    })
    .await
    .unwrap();
    wait_phase(
        &api,
        "podinfo",
        pb::Phase::Succeeded,
        Duration::from_secs(30),
    )
    .await;
    let events = eventually(Duration::from_secs(30), "a hook-failed event", || {
        let client = client.clone();
        async move {
            let events = audit_events(&client, "podinfo").await;
            (!of_type(&events, "hook-failed").is_empty()).then_some(events)
        }
    })
    .await;

    let halts = of_type(&events, "halted");
    assert_eq!(halts.len(), 3, "one per errored analysis: {events:#?}");
    assert!(!repeated(halts[0]), "{halts:#?}");
    assert!(halts[1..].iter().all(|h| repeated(h)), "{halts:#?}");
    let promoting = of_type(&events, "promoting");
    let announced: Vec<_> = promoting.iter().filter(|e| !repeated(e)).collect();
    assert_eq!(announced.len(), 1, "{promoting:#?}");
    assert!(
        promoting
            .iter()
            .any(|e| e["data"]["phase"] == "Finalising" && repeated(e))
    );
    let hook = of_type(&events, "hook-failed")[0];
    assert_eq!(hook["data"]["phase"], "Succeeded");
    let reason = hook["data"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("post-rollout") && reason.contains("smoke: HTTP 500"),
        "{reason}"
    );
    plane.stop().await;
}
