//! Faults mid-rollout: the owning replica is SIGKILLed, nats-server restarts, a replica is
//! asked to stop. Rollouts still end right, with each step audited once.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use aviary_bus::names;
use aviary_proto as pb;
use aviary_testkit::{NatsServer, Process, free_port};
use common::*;
use tokio_util::sync::CancellationToken;

fn scheduler_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aviary-scheduler"))
}

fn spawn_replica(nats: &NatsServer, replica: &str, grpc: u16, admin: u16, dir: &Path) -> Process {
    let args = [
        "--nats-url".to_owned(),
        nats.url(),
        "--grpc-addr".into(),
        format!("127.0.0.1:{grpc}"),
        "--admin-addr".into(),
        format!("127.0.0.1:{admin}"),
        "--replica-id".into(),
        replica.into(),
        "--lease-ttl-ms".into(),
        "1000".into(),
        "--route-timeout-ms".into(),
        "2000".into(),
        "--analysis-timeout-ms".into(),
        "2000".into(),
    ];
    Process::spawn(
        replica,
        scheduler_binary(),
        args,
        &dir.join(format!("{replica}.log")),
    )
    .unwrap()
}

async fn canary_weight(
    api: &aviary_proto::rollout_service_client::RolloutServiceClient<tonic::transport::Channel>,
    name: &str,
) -> u32 {
    let mut api = api.clone();
    api.get(pb::GetRequest {
        r#ref: Some(pb::RolloutRef::new("test", name)),
    })
    .await
    .map(|r| r.into_inner().status.unwrap_or_default().canary_weight)
    .unwrap_or(0)
}

/// Steps announced on the audit stream, by canary weight: each must appear once.
fn step_counts(events: &[serde_json::Value]) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for event in events
        .iter()
        .filter(|e| e["type"] == "dev.aviary.rollout.step-advanced")
    {
        *counts
            .entry(event["data"]["canaryWeight"].as_u64().unwrap_or(0))
            .or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn owner_killed_mid_rollout_is_replaced_and_no_step_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let _routes = route_responder(client.clone(), "edge").await;
    let _verdicts =
        analyzer_responder(client.clone(), pb::Outcome::Pass, CancellationToken::new()).await;
    let (grpc_a, grpc_b) = (free_port().unwrap(), free_port().unwrap());
    let mut a = spawn_replica(&nats, "a", grpc_a, free_port().unwrap(), dir.path());
    let mut b = spawn_replica(&nats, "b", grpc_b, free_port().unwrap(), dir.path());
    let api = api(grpc_a).await;
    let api_b = common::api(grpc_b).await;
    api.clone()
        .apply(pb::ApplyRequest {
            manifest: canary_manifest("podinfo", 20, 100, 1).replace("300ms", "700ms"),
        })
        .await
        .unwrap();

    aviary_testkit::eventually(Duration::from_secs(20), "rollout at 20% or more", || {
        let api = api.clone();
        async move { (canary_weight(&api, "podinfo").await >= 20).then_some(()) }
    })
    .await;
    let js = async_nats::jetstream::new(client.clone());
    let leases = js.get_key_value(names::BUCKET_LEASES).await.unwrap();
    let lease = leases
        .get(names::lease_key("test", "podinfo").unwrap())
        .await
        .unwrap()
        .unwrap();
    let owner: serde_json::Value = serde_json::from_slice(&lease).unwrap();
    let (killed, survivor_api) = match owner["owner"].as_str().unwrap() {
        "a" => (&mut a, api_b.clone()),
        _ => (&mut b, api.clone()),
    };
    killed.kill();

    wait_phase(
        &survivor_api,
        "podinfo",
        pb::Phase::Succeeded,
        Duration::from_secs(30),
    )
    .await;
    let events = audit_events(&client, "podinfo").await;
    let counts = step_counts(&events);
    assert!(!counts.is_empty(), "{events:#?}");
    assert!(
        counts.values().all(|n| *n == 1),
        "each step exactly once: {counts:?}"
    );
    let ids: std::collections::HashSet<_> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), events.len());
    let _ = (
        a.stop(Duration::from_secs(5)).await,
        b.stop(Duration::from_secs(5)).await,
    );
}

#[tokio::test]
async fn nats_restart_mid_rollout_loses_nothing() {
    let mut nats = NatsServer::start().await.unwrap();
    let port = free_port().unwrap();
    let scheduler = Replica::start(&nats.url(), port, &[]);
    let api = api(port).await;
    let client = nats.client().await.unwrap();
    let _routes = route_responder(client.clone(), "edge").await;
    let _verdicts =
        analyzer_responder(client.clone(), pb::Outcome::Pass, CancellationToken::new()).await;
    api.clone()
        .apply(pb::ApplyRequest {
            manifest: canary_manifest("podinfo", 20, 100, 1).replace("300ms", "500ms"),
        })
        .await
        .unwrap();
    aviary_testkit::eventually(Duration::from_secs(20), "rollout at 20% or more", || {
        let api = api.clone();
        async move { (canary_weight(&api, "podinfo").await >= 20).then_some(()) }
    })
    .await;

    nats.restart().await.unwrap();

    wait_phase(
        &api,
        "podinfo",
        pb::Phase::Succeeded,
        Duration::from_secs(40),
    )
    .await;
    let events = audit_events(&nats.client().await.unwrap(), "podinfo").await;
    assert!(
        step_counts(&events).values().all(|n| *n == 1),
        "{events:#?}"
    );
    assert_eq!(
        events.last().unwrap()["type"],
        "dev.aviary.rollout.succeeded"
    );
    scheduler.stop().await;
}

#[tokio::test]
async fn binary_reports_ready_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start().await.unwrap();
    let admin = free_port().unwrap();
    let mut replica = spawn_replica(&nats, "solo", free_port().unwrap(), admin, dir.path());
    let url = format!("http://127.0.0.1:{admin}/readyz");
    replica
        .wait_ready(Duration::from_secs(20), || {
            let url = url.clone();
            async move { reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) }
        })
        .await
        .unwrap();
    replica.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = aviary_testkit::eventually(Duration::from_secs(15), "scheduler exits", || {
        let status = replica.exit_status();
        async move { status }
    })
    .await;
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        replica.log()
    );
}
