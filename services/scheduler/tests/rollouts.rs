//! The scheduler drives rollouts end to end over a real nats-server, with router-agent and
//! analyzer responders answering on the real subjects.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use aviary_proto as pb;
use common::*;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn healthy_canary_is_promoted_and_every_transition_is_audited_once() {
    let plane = Plane::start().await;
    let (client, mut api) = (plane.client.clone(), plane.api.clone());
    let routes = plane.routes.clone();
    let _verdicts =
        analyzer_responder(client.clone(), pb::Outcome::Pass, CancellationToken::new()).await;

    let applied = api
        .apply(pb::ApplyRequest {
            manifest: canary_manifest("podinfo", 20, 50, 2),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(applied.changed);
    let again = api
        .apply(pb::ApplyRequest {
            manifest: canary_manifest("podinfo", 20, 50, 2),
        })
        .await
        .unwrap();
    assert!(
        !again.into_inner().changed,
        "applying the same spec twice changes nothing"
    );

    wait_phase(
        &api,
        "podinfo",
        pb::Phase::Succeeded,
        Duration::from_secs(30),
    )
    .await;

    // 20, 40, 60 (the documented overshoot), then promotion to 100 and the canary finalised
    // as the new primary.
    let seen: Vec<_> = routes.lock().unwrap().clone();
    let canary_weights: Vec<u32> = seen
        .iter()
        .filter(|(p, _, _)| p == "app-v1")
        .map(|(_, _, c)| *c)
        .collect();
    let mut steps = canary_weights.clone();
    steps.dedup();
    assert_eq!(
        steps,
        vec![0, 20, 40, 60, 100],
        "routes asked for: {seen:?}"
    );
    assert_eq!(
        seen.last().unwrap(),
        &("app-v2".to_owned(), 100, 0),
        "canary finalised as primary"
    );

    let events = audit_events(&client, "podinfo").await;
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "no event twice");
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types.first(),
        Some(&"dev.aviary.rollout.created"),
        "{types:?}"
    );
    assert_eq!(
        types.last(),
        Some(&"dev.aviary.rollout.succeeded"),
        "{types:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["specversion"] == "1.0" && e["subject"] == "test/podinfo")
    );

    // Once settled, the stored outbox holds nothing already published, so no later owner can
    // publish an event twice.
    let js = async_nats::jetstream::new(client.clone());
    let records = js
        .get_key_value(aviary_bus::names::BUCKET_ROLLOUTS)
        .await
        .unwrap();
    aviary_testkit::eventually(Duration::from_secs(10), "outbox trimmed", || {
        let records = records.clone();
        async move {
            let raw = records.get("test.podinfo").await.ok()??;
            let record: serde_json::Value = serde_json::from_slice(&raw).ok()?;
            record["outbox"]
                .as_array()
                .is_some_and(Vec::is_empty)
                .then_some(())
        }
    })
    .await;

    plane.stop().await;
}

#[tokio::test]
async fn failing_canary_is_rolled_back_at_threshold() {
    let plane = Plane::start().await;
    let (client, mut api) = (plane.client.clone(), plane.api.clone());
    let routes = plane.routes.clone();
    let verdicts =
        analyzer_responder(client.clone(), pb::Outcome::Fail, CancellationToken::new()).await;
    api.apply(pb::ApplyRequest {
        manifest: canary_manifest("bad", 10, 50, 2),
    })
    .await
    .unwrap();

    wait_phase(&api, "bad", pb::Phase::Failed, Duration::from_secs(30)).await;
    assert_eq!(
        *verdicts.lock().unwrap(),
        2,
        "rolled back after exactly threshold failed checks"
    );
    // Failed is stored when the rollback is decided; the route back follows a moment later.
    let last = aviary_testkit::eventually(Duration::from_secs(10), "the rollback route", || {
        let last = routes.lock().unwrap().last().cloned();
        async move { last.filter(|(_, primary, _)| *primary == 100) }
    })
    .await;
    assert_eq!(
        last,
        ("app-v1".to_owned(), 100, 0),
        "all traffic back on the primary"
    );
    let status = api
        .get(pb::GetRequest {
            r#ref: Some(pb::RolloutRef::new("test", "bad")),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.failed_checks, 2);
    let events = audit_events(&client, "bad").await;
    let rolled_back = events
        .iter()
        .find(|e| e["type"] == "dev.aviary.rollout.rolled-back")
        .expect("rolled-back event");
    let metric = &rolled_back["data"]["metrics"][0];
    assert_eq!(metric["name"], "request-success-rate", "{rolled_back:#}");
    assert_eq!(metric["value"], 80.0, "the failing value is recorded");
    assert_eq!(metric["min"], 99.0, "with its threshold");
    assert_eq!(metric["outcome"], "fail");

    plane.stop().await;
}

#[tokio::test]
async fn analyzer_down_halts_and_never_promotes_then_resumes() {
    let plane = Plane::start().await;
    let (client, mut api) = (plane.client.clone(), plane.api.clone());
    api.apply(pb::ApplyRequest {
        manifest: canary_manifest("halted", 50, 50, 1),
    })
    .await
    .unwrap();

    // No analyzer: the rollout halts with a reason and stays in Progressing.
    let halted = aviary_testkit::eventually(Duration::from_secs(20), "halt reported", || {
        let mut api = api.clone();
        async move {
            let status = api
                .get(pb::GetRequest {
                    r#ref: Some(pb::RolloutRef::new("test", "halted")),
                })
                .await
                .ok()?
                .into_inner()
                .status?;
            (!status.halt_reason.is_empty()).then_some(status)
        }
    })
    .await;
    assert_eq!(
        pb::Phase::try_from(halted.phase).unwrap(),
        pb::Phase::Progressing
    );
    assert_eq!(halted.failed_checks, 0, "a halt is not a failed check");

    // The analyzer comes back: the rollout resumes and is promoted.
    let _verdicts =
        analyzer_responder(client.clone(), pb::Outcome::Pass, CancellationToken::new()).await;
    wait_phase(
        &api,
        "halted",
        pb::Phase::Succeeded,
        Duration::from_secs(30),
    )
    .await;
    let events = audit_events(&client, "halted").await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "dev.aviary.rollout.halted"),
        "{events:#?}"
    );

    plane.stop().await;
}

#[tokio::test]
async fn a_pre_rollout_gate_nobody_answers_halts_instead_of_failing_a_healthy_canary() {
    let plane = Plane::start().await;
    let (client, mut api) = (plane.client.clone(), plane.api.clone());
    // threshold 1: one failed pre-rollout check would roll the canary back at once.
    let manifest = canary_manifest("gated", 50, 50, 1).replace(
        "  analysis:\n",
        "  analysis:\n    webhooks:\n      - { name: pre, type: pre-rollout, url: http://127.0.0.1:1/pre }\n",
    );
    api.apply(pb::ApplyRequest { manifest }).await.unwrap();

    // No analyzer: the gate cannot be asked. A halt, with the reason, and no failed check.
    let halted = aviary_testkit::eventually(Duration::from_secs(20), "halt reported", || {
        let mut api = api.clone();
        async move {
            let status = api
                .get(pb::GetRequest {
                    r#ref: Some(pb::RolloutRef::new("test", "gated")),
                })
                .await
                .ok()?
                .into_inner()
                .status?;
            status.halt_reason.contains("pre-rollout").then_some(status)
        }
    })
    .await;
    assert_eq!(halted.failed_checks, 0, "no answer is not a failed check");
    assert_ne!(
        pb::Phase::try_from(halted.phase).unwrap(),
        pb::Phase::Failed
    );

    // The analyzer comes back and opens the gate: the canary is promoted.
    let _verdicts =
        analyzer_responder(client.clone(), pb::Outcome::Pass, CancellationToken::new()).await;
    wait_phase(&api, "gated", pb::Phase::Succeeded, Duration::from_secs(30)).await;
    plane.stop().await;
}

#[tokio::test]
async fn a_command_while_analysis_is_in_flight_wins_and_the_analysis_is_asked_again() {
    let plane = Plane::start().await;
    let (client, mut api) = (plane.client.clone(), plane.api.clone());
    let (release, held) = tokio::sync::watch::channel(false);
    let requests = held_analyzer_responder(
        client.clone(),
        pb::Outcome::Pass,
        held,
        CancellationToken::new(),
    )
    .await;
    let podinfo = || pb::CommandRequest {
        r#ref: Some(pb::RolloutRef::new("test", "podinfo")),
        reason: String::new(),
    };
    api.apply(pb::ApplyRequest {
        manifest: canary_manifest("podinfo", 50, 50, 1),
    })
    .await
    .unwrap();

    // The first analysis is asked for and its answer held back: pause meanwhile.
    let asked = requests.clone();
    aviary_testkit::eventually(Duration::from_secs(10), "analysis asked", || {
        let asked = asked.clone();
        async move { (*asked.lock().unwrap() >= 1).then_some(()) }
    })
    .await;
    api.pause(podinfo()).await.unwrap();
    wait_phase(&api, "podinfo", pb::Phase::Paused, Duration::from_secs(10)).await;

    // The held answer was asked for before the pause: resuming asks again, and the run ends
    // promoted with every event once.
    release.send(true).unwrap();
    api.resume(podinfo()).await.unwrap();
    wait_phase(
        &api,
        "podinfo",
        pb::Phase::Succeeded,
        Duration::from_secs(30),
    )
    .await;
    assert!(*requests.lock().unwrap() >= 2, "analysis asked again");
    let events = audit_events(&client, "podinfo").await;
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "no event twice");
    let succeeded = events
        .iter()
        .filter(|e| e["type"] == "dev.aviary.rollout.succeeded")
        .count();
    assert_eq!(succeeded, 1, "{events:#?}");

    plane.stop().await;
}
