//! A three-node JetStream cluster with every stream and bucket at three replicas
//! (`--js-replicas 3`), and nodes SIGKILLed mid-rollout:
//!
//! - the node leading the rollouts bucket dies: the rollout goes on through the new leader, and
//!   the audit stream has every step once, none missing; the node restarts and catches up;
//! - a second node dies too (no quorum): the rollout halts where it is and is not promoted;
//!   when a node comes back it resumes and is promoted, again with every step once.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use aviary_bus::names;
use aviary_proto as pb;
use aviary_testkit::{NatsCluster, eventually, free_port};
use common::*;
use tokio_util::sync::CancellationToken;

type Api = pb::rollout_service_client::RolloutServiceClient<tonic::transport::Channel>;

/// Every stream and bucket of the scheduler's state, at three replicas.
const REPLICAS: &[&str] = &["--js-replicas", "3"];

/// Canary weight step of the test rollouts: 10 % a step, an analysis every 300 ms, promoted
/// after 100 %. Ten steps take a few seconds, so a fault lands mid-rollout.
const STEP: u64 = 10;

/// A Raft election after a SIGKILL takes a few seconds; generous for a two-core machine.
const ELECTION: Duration = Duration::from_secs(30);

/// How long a rollout may take end to end, faults included. After quorum returns, the route
/// whose acknowledgement could not be stored is sent again only when its acknowledgement times
/// out (`aviary_core::machine::ROUTE_ACK_TIMEOUT_MS`, 30 s), so a resume takes that long.
const ROLLOUT: Duration = Duration::from_secs(60);

fn manifest(name: &str) -> String {
    canary_manifest(name, u32::try_from(STEP).unwrap(), 100, 1)
}

/// The stream behind the rollouts bucket.
fn rollouts_stream() -> String {
    format!("KV_{}", names::BUCKET_ROLLOUTS)
}

/// The status of `test/<name>`; `None` while the API cannot read it (during an election the
/// control API answers `unavailable`, and the caller asks again).
async fn status(api: &Api, name: &str) -> Option<pb::RolloutStatus> {
    let mut api = api.clone();
    let rollout = api
        .get(pb::GetRequest {
            r#ref: Some(pb::RolloutRef::new("test", name)),
        })
        .await
        .ok()?;
    rollout.into_inner().status
}

async fn canary_weight(api: &Api, name: &str) -> Option<u32> {
    Some(status(api, name).await?.canary_weight)
}

/// Waits until `test/<name>` has succeeded.
async fn wait_succeeded(api: &Api, name: &str) {
    eventually(ROLLOUT, &format!("{name} succeeded"), || async {
        status(api, name)
            .await
            .filter(|s| s.phase == pb::Phase::Succeeded as i32)
    })
    .await;
}

/// How often each canary weight was announced on the audit stream.
fn step_counts(events: &[serde_json::Value]) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for event in events
        .iter()
        .filter(|e| e["type"] == "dev.aviary.rollout.step-advanced")
    {
        *counts
            .entry(event["data"]["canaryWeight"].as_u64().unwrap())
            .or_default() += 1;
    }
    counts
}

/// The audit trail of a promoted rollout: every step from `STEP` up once, none skipped, each
/// event once, and the promotion last.
fn assert_every_step_once(events: &[serde_json::Value]) {
    let counts = step_counts(events);
    let weights: Vec<u64> = counts.keys().copied().collect();
    let expected: Vec<u64> = (1..=weights.len() as u64).map(|i| i * STEP).collect();
    assert!(weights.len() >= 9, "steps up to at least 90 %: {counts:?}");
    assert_eq!(weights, expected, "no step lost: {counts:?}");
    assert!(
        counts.values().all(|n| *n == 1),
        "no step doubled: {counts:?}"
    );
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "no event twice");
    assert_eq!(
        events.last().unwrap()["type"],
        "dev.aviary.rollout.succeeded",
        "{events:#?}"
    );
}

/// An R3 stream of the test's own, so the test can see when the cluster has no quorum
/// without writing to the scheduler's state.
async fn probe_stream(js: &async_nats::jetstream::Context) {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "PROBE".into(),
        subjects: vec!["probe".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Whether a publish to the probe stream is stored (acknowledged) within a second.
async fn quorum(js: &async_nats::jetstream::Context) -> bool {
    let stored = async { js.publish("probe", "x".into()).await.ok()?.await.ok() };
    tokio::time::timeout(Duration::from_secs(1), stored)
        .await
        .ok()
        .flatten()
        .is_some()
}

#[tokio::test]
async fn the_rollouts_bucket_leader_killed_mid_rollout_loses_and_repeats_no_step() {
    let mut cluster = NatsCluster::start(3).await.unwrap();
    let client = cluster.client().await.unwrap();
    let routes = route_responder(client.clone(), "edge").await;
    let _verdicts =
        analyzer_responder(client.clone(), pb::Outcome::Pass, CancellationToken::new()).await;
    let port = free_port().unwrap();
    let scheduler = Replica::start(&cluster.url(), port, REPLICAS);
    let api = api(port).await;
    api.clone()
        .apply(pb::ApplyRequest {
            manifest: manifest("podinfo"),
        })
        .await
        .unwrap();

    // The scheduler created its state at three replicas.
    let js = async_nats::jetstream::new(client.clone());
    for stream in [rollouts_stream(), names::STREAM_EVENTS.to_owned()] {
        let info = js
            .get_stream(&stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.config.num_replicas, 3, "{stream}");
    }

    eventually(ROLLOUT, "rollout at 20 % or more", || async {
        canary_weight(&api, "podinfo").await.filter(|w| *w >= 20)
    })
    .await;
    let stream = rollouts_stream();
    let leader = eventually(ELECTION, "the rollouts bucket has a leader", || {
        cluster.stream_leader(&stream)
    })
    .await;
    let steps_before = step_counts(&audit_events(&client, "podinfo").await).len();

    cluster.node_mut(leader).kill();

    wait_succeeded(&api, "podinfo").await;
    let events = audit_events(&client, "podinfo").await;
    assert!(
        step_counts(&events).len() > steps_before,
        "the rollout went on after the kill (steps before: {steps_before}): {events:#?}"
    );
    assert_every_step_once(&events);
    assert_eq!(
        routes.lock().unwrap().last().unwrap(),
        &("app-v2".to_owned(), 100, 0),
        "canary finalised as primary"
    );
    let new_leader = cluster.stream_leader(&rollouts_stream()).await;
    assert!(new_leader.is_some_and(|l| l != leader), "{new_leader:?}");

    // The killed node comes back, rejoins, and catches up on what it missed.
    cluster.node_mut(leader).start_again().await.unwrap();
    for stream in [rollouts_stream(), names::STREAM_EVENTS.to_owned()] {
        eventually(
            ELECTION,
            &format!("{stream} current on all three"),
            || async { cluster.stream_current(&stream, 3).await.then_some(()) },
        )
        .await;
    }
    scheduler.stop().await;
}

#[tokio::test]
async fn without_quorum_rollouts_halt_and_never_promote_then_resume() {
    let mut cluster = NatsCluster::start(3).await.unwrap();
    let client = cluster.client().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    probe_stream(&js).await;
    let routes = route_responder(client.clone(), "edge").await;
    let _verdicts =
        analyzer_responder(client.clone(), pb::Outcome::Pass, CancellationToken::new()).await;
    let port = free_port().unwrap();
    let scheduler = Replica::start(&cluster.url(), port, REPLICAS);
    let api = api(port).await;
    api.clone()
        .apply(pb::ApplyRequest {
            manifest: manifest("halted"),
        })
        .await
        .unwrap();
    eventually(ROLLOUT, "rollout at 20 % or more", || async {
        canary_weight(&api, "halted").await.filter(|w| *w >= 20)
    })
    .await;

    // The leader of the rollouts bucket, then a second node: one of three is left.
    let stream = rollouts_stream();
    let leader = eventually(ELECTION, "the rollouts bucket has a leader", || {
        cluster.stream_leader(&stream)
    })
    .await;
    let second = (leader + 1) % 3;
    cluster.node_mut(leader).kill();
    cluster.node_mut(second).kill();
    eventually(ELECTION, "the cluster has lost its quorum", || async {
        (!quorum(&js).await).then_some(())
    })
    .await;

    // No quorum, no writes: the scheduler cannot record a step, so it takes none. Watch ten
    // analysis intervals, in which a healthy rollout would have been promoted.
    let at_halt = routes.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during: Vec<_> = routes.lock().unwrap()[at_halt..].to_vec();
    let before_max = routes.lock().unwrap()[..at_halt]
        .iter()
        .map(|(_, _, c)| *c)
        .max()
        .unwrap();
    assert!(
        during.iter().all(|(primary, _, canary)| primary == "app-v1"
            && u64::from(*canary) <= u64::from(before_max) + STEP
            && *canary < 100),
        "no step beyond one already in flight, no promotion without quorum \
         (before: {before_max} %): {during:?}"
    );

    // A second node returns: quorum, and the rollout resumes to promotion.
    cluster.node_mut(second).start_again().await.unwrap();
    eventually(ELECTION, "the cluster has its quorum back", || async {
        quorum(&js).await.then_some(())
    })
    .await;
    wait_succeeded(&api, "halted").await;
    assert_every_step_once(&audit_events(&client, "halted").await);
    assert_eq!(
        routes.lock().unwrap().last().unwrap(),
        &("app-v2".to_owned(), 100, 0),
        "canary finalised as primary"
    );
    scheduler.stop().await;
}
