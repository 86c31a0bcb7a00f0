//! `aviary gate` opens, checks and closes a rollout's gate on a real gate service (state in a
//! real NATS KV bucket).

use std::time::Duration;

use aviary_analyzer::gate::{GateConfig, start_gate};
use aviary_testkit::NatsServer;
use clap::Parser as _;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

async fn aviary(url: &str, args: &[&str]) -> (i32, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(env!("CARGO_BIN_EXE_aviary"))
            .args(args)
            .env("AVIARY_GATE_URL", url)
            .output(),
    )
    .await
    .expect("aviary finishes")
    .expect("aviary runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn gate_open_check_close_round_trip() {
    let nats = NatsServer::start().await.expect("nats-server");
    let config = GateConfig::parse_from([
        "aviary-gate",
        "--nats-url",
        &nats.url(),
        "--listen-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    let shutdown = CancellationToken::new();
    let gate = start_gate(config, shutdown.clone())
        .await
        .expect("gate starts");
    let url = format!("http://{}", gate.addr);

    assert_eq!(
        aviary(&url, &["gate", "check", "test/podinfo"]).await.0,
        1,
        "closed by default"
    );
    let (code, out) = aviary(&url, &["gate", "open", "test/podinfo"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = aviary(&url, &["gate", "check", "test/podinfo"]).await;
    assert_eq!((code, out.trim()), (0, "test/podinfo: open"));
    assert_eq!(
        aviary(&url, &["gate", "check", "test/other"]).await.0,
        1,
        "per rollout"
    );
    assert_eq!(
        aviary(&url, &["gate", "close", "-n", "test", "podinfo"])
            .await
            .0,
        0
    );
    assert_eq!(aviary(&url, &["gate", "check", "test/podinfo"]).await.0, 1);

    shutdown.cancel();
    let (code, out) = aviary(&url, &["gate", "open", "test/podinfo"]).await;
    assert_eq!(code, 1, "a stopped service is an error: {out}");
    assert!(out.contains("cannot reach the gate service"), "{out}");
}
