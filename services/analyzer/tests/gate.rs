//! The gate service over a real nats-server: Flagger's gate endpoints, state kept in KV
//! across a restart of the service and of NATS.
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

use std::time::Duration;

use aviary_analyzer::gate::{GateConfig, start_gate};
use aviary_bus::NatsArgs;
use aviary_testkit::NatsServer;
use clap::Parser as _;
use tokio_util::sync::CancellationToken;

fn config(nats: &NatsServer) -> GateConfig {
    let mut config = GateConfig::parse_from([
        "aviary-gate",
        "--admin-addr",
        "127.0.0.1:0",
        "--listen-addr",
        "127.0.0.1:0",
    ]);
    config.nats = NatsArgs::for_url(nats.url());
    config
}

async fn call(addr: std::net::SocketAddr, path: &str, name: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .json(&serde_json::json!({
            "name": name, "namespace": "test", "phase": "Progressing",
            "checksum": "abc", "metadata": {}
        }))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn gates_open_close_and_survive_restarts() {
    let mut nats = NatsServer::start().await.unwrap();
    let shutdown = CancellationToken::new();
    let gate = start_gate(config(&nats), shutdown.clone()).await.unwrap();
    let addr = gate.addr;

    assert_eq!(call(addr, "/gate/approve", "podinfo").await, 200);
    assert_eq!(call(addr, "/gate/halt", "podinfo").await, 403);
    assert_eq!(
        call(addr, "/gate/check", "podinfo").await,
        403,
        "closed by default"
    );
    assert_eq!(
        call(addr, "/rollback/check", "podinfo").await,
        403,
        "no rollback by default"
    );
    assert_eq!(call(addr, "/gate/open", "podinfo").await, 200);
    assert_eq!(call(addr, "/gate/check", "podinfo").await, 200);
    assert_eq!(
        call(addr, "/gate/check", "other").await,
        403,
        "gates are per rollout"
    );
    assert_eq!(call(addr, "/rollback/open", "other").await, 200);
    assert_eq!(call(addr, "/rollback/check", "other").await, 200);

    let bad = reqwest::Client::new()
        .post(format!("http://{addr}/gate/check"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad_name = call(addr, "/gate/open", "a.b").await;
    assert_eq!(bad_name, 400, "a name that is not a key token is rejected");

    // Restart the service: state is in KV, not in memory.
    shutdown.cancel();
    gate.wait().await.unwrap();
    let shutdown = CancellationToken::new();
    let gate = start_gate(config(&nats), shutdown.clone()).await.unwrap();
    assert_eq!(call(gate.addr, "/gate/check", "podinfo").await, 200);
    assert_eq!(call(gate.addr, "/rollback/check", "other").await, 200);

    // Restart NATS itself: the file store keeps the bucket.
    nats.restart().await.unwrap();
    let status = aviary_testkit::eventually(
        Duration::from_secs(20),
        "gate after NATS restart",
        || async {
            let s = call(gate.addr, "/gate/check", "podinfo").await;
            (s != 503).then_some(s)
        },
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(call(gate.addr, "/gate/close", "podinfo").await, 200);
    assert_eq!(call(gate.addr, "/gate/check", "podinfo").await, 403);
    assert_eq!(call(gate.addr, "/rollback/close", "other").await, 200);
    assert_eq!(call(gate.addr, "/rollback/check", "other").await, 403);
    shutdown.cancel();
    gate.wait().await.unwrap();
}
