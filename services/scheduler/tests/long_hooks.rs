//! A hook's own `timeout` is honoured end to end (issue 13, item 4): a pre-rollout test that
//! takes longer than the scheduler's `--analysis-timeout-ms` (2 s in these tests) is waited
//! for, not cut short into a halt, and another rollout is not held meanwhile. Real
//! nats-server; the analyzer's answers come from a responder the test controls.
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

mod common;

use std::time::Duration;

use aviary_bus::names;
use aviary_proto as pb;
use common::*;
use futures::StreamExt as _;
use prost::Message as _;
use tokio::sync::watch;

/// Answers every request with a pass; one that calls webhooks only once `release` is true.
async fn responder(client: async_nats::Client, release: watch::Receiver<bool>) {
    let mut sub = client
        .queue_subscribe(names::ANALYSIS_REQUEST, names::QUEUE_ANALYZER.into())
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            let Ok(request) = pb::AnalysisRequest::decode(message.payload.clone()) else {
                continue;
            };
            let (client, mut release) = (client.clone(), release.clone());
            tokio::spawn(async move {
                if !request.webhooks.is_empty() {
                    let _ = release.wait_for(|r| *r).await;
                }
                let verdict = pb::Verdict {
                    rollout: request.rollout.clone(),
                    generation: request.generation,
                    step: request.step,
                    outcome: pb::Outcome::Pass as i32,
                    metrics: request
                        .metrics
                        .iter()
                        .map(|m| pb::MetricResult {
                            name: m.name.clone(),
                            value: Some(100.0),
                            outcome: pb::Outcome::Pass as i32,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                };
                if let Some(reply) = message.reply {
                    let _ = client.publish(reply, verdict.encode_to_vec().into()).await;
                }
            });
        }
    });
}

#[tokio::test]
async fn a_pre_rollout_test_longer_than_the_request_timeout_is_waited_for() {
    let plane = Plane::start().await;
    let (client, mut api) = (plane.client.clone(), plane.api.clone());
    let (release, released) = watch::channel(false);
    responder(client.clone(), released).await;
    // Two services on one ingress, told apart by host.
    let manifest = canary_manifest("tested", 50, 50, 1)
        .replace("spec:\n", "spec:\n  service: { hosts: [tested.example] }\n")
        .replace(
        "  analysis:\n",
        "  analysis:\n    webhooks:\n      - { name: load, type: pre-rollout, url: http://127.0.0.1:1/load, timeout: 60s }\n",
    );
    api.apply(pb::ApplyRequest { manifest }).await.unwrap();
    let applied = tokio::time::Instant::now();
    api.apply(pb::ApplyRequest {
        manifest: canary_manifest("other", 50, 50, 1)
            .replace("spec:\n", "spec:\n  service: { hosts: [other.example] }\n"),
    })
    .await
    .unwrap();

    // The rollout without hooks is not held by the long test.
    wait_phase(&api, "other", pb::Phase::Succeeded, Duration::from_secs(30)).await;
    // The long test is still running, well past the 2 s request timeout: what is tested is
    // that time passing does not end the wait, so the test lets twice that pass.
    tokio::time::sleep_until(applied + Duration::from_secs(4)).await;
    let now = phase(&mut api, "tested").await;
    assert!(
        matches!(now, pb::Phase::Initialized | pb::Phase::Progressing),
        "{now:?}"
    );
    let status = api
        .get(pb::GetRequest {
            r#ref: Some(pb::RolloutRef::new("test", "tested")),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.halt_reason, "", "waiting on its hook is not a halt");
    assert_eq!(status.canary_weight, 0, "no traffic before the test passes");

    release.send_replace(true);
    wait_phase(
        &api,
        "tested",
        pb::Phase::Succeeded,
        Duration::from_secs(30),
    )
    .await;
    let events = audit_events(&client, "tested").await;
    let halts: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "dev.aviary.rollout.halted")
        .collect();
    assert!(halts.is_empty(), "no halt while the hook ran: {halts:?}");
    plane.stop().await;
}
