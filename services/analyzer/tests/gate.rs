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

async fn call_as(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .json(&serde_json::json!({ "name": "podinfo", "namespace": "test" }))
        .timeout(Duration::from_secs(10));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn with_a_tokens_file_only_operators_open_and_close_gates() {
    let nats = NatsServer::start().await.unwrap();
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(
        &mut tokens,
        b"# gates\nr3ad read auditor\nop operator alice\n",
    )
    .unwrap();
    let mut config = config(&nats);
    config.tokens_file = Some(tokens.path().to_owned());
    let shutdown = CancellationToken::new();
    let gate = start_gate(config, shutdown.clone()).await.unwrap();
    let addr = gate.addr;

    for path in [
        "/gate/open",
        "/gate/close",
        "/rollback/open",
        "/rollback/close",
    ] {
        assert_eq!(call_as(addr, path, None).await, 401, "{path} anonymous");
        assert_eq!(call_as(addr, path, Some("wrong")).await, 401, "{path}");
        assert_eq!(call_as(addr, path, Some("r3ad")).await, 403, "{path} read");
    }
    assert_eq!(
        call_as(addr, "/gate/check", None).await,
        403,
        "still closed after refused writes; checks need no token (webhooks send none)"
    );
    assert_eq!(call_as(addr, "/gate/open", Some("op")).await, 200);
    assert_eq!(call_as(addr, "/gate/check", None).await, 200);
    assert_eq!(call_as(addr, "/gate/check", Some("r3ad")).await, 200);
    assert_eq!(call_as(addr, "/gate/close", Some("op")).await, 200);
    assert_eq!(call_as(addr, "/gate/check", None).await, 403);
    shutdown.cancel();
    gate.wait().await.unwrap();
}

#[tokio::test]
async fn a_tokens_file_without_a_token_is_refused_at_start() {
    let nats = NatsServer::start().await.unwrap();
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut tokens, b"# nobody yet\n").unwrap();
    let mut config = config(&nats);
    config.tokens_file = Some(tokens.path().to_owned());
    let error = start_gate(config, CancellationToken::new())
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(error.contains("has no token"), "{error}");
}
