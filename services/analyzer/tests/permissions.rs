//! The analyzer and the gate service, each under its own NATS identity
//! (`aviary_bus::permissions`) on a permissioned nats-server: the analyzer answers the
//! scheduler's requests through `allow_responses`, the gate keeps its state in KV, and the
//! server refuses nothing either does.
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

use std::path::Path;
use std::time::Duration;

use aviary_analyzer::gate::{GateConfig, start_gate};
use aviary_bus::{names, permissions};
use aviary_testkit::{NatsServer, Service};
use clap::Parser as _;
use tokio_util::sync::CancellationToken;

fn password(user: &str) -> String {
    format!("pw-{user}")
}

async fn permissioned() -> NatsServer {
    let config = permissions::nats_authorization(|user| format!("\"{}\"", password(user)));
    NatsServer::start_with_config(&config).await.unwrap()
}

fn assert_nothing_refused(nats: &NatsServer) {
    let log = nats.log();
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(violations.is_empty(), "refused: {violations:#?}");
}

#[tokio::test]
async fn the_analyzer_answers_the_scheduler_under_its_own_identity() {
    let nats = permissioned().await;
    let dir = tempfile::tempdir().unwrap();
    let args = vec![
        "--nats-url".to_owned(),
        nats.url(),
        "--nats-user".into(),
        "analyzer".into(),
        "--nats-password".into(),
        password("analyzer"),
        "--prometheus-url".into(),
        "http://127.0.0.1:9".into(),
    ];
    let mut analyzer = Service::start(
        "analyzer",
        Path::new(env!("CARGO_BIN_EXE_aviary-analyzer")),
        &args,
        dir.path(),
        Duration::from_secs(20),
    )
    .await
    .unwrap();

    // A request that does not decode is answered with a 400, into the scheduler's own inbox.
    let scheduler = async_nats::ConnectOptions::with_user_and_password(
        "scheduler".into(),
        password("scheduler"),
    )
    .custom_inbox_prefix(names::inbox_prefix("aviary-scheduler"))
    .connect(nats.url())
    .await
    .unwrap();
    // Ready does not promise the server has its subscription yet: ask until someone answers.
    let reply = aviary_testkit::eventually(Duration::from_secs(10), "an answer", || async {
        scheduler
            .request(names::ANALYSIS_REQUEST, "not protobuf".into())
            .await
            .ok()
    })
    .await;
    let code = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map(|v| v.as_str().to_owned());
    assert_eq!(code.as_deref(), Some("400"), "{reply:?}");

    let status = analyzer.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{}", analyzer.process().log());
    assert_nothing_refused(&nats);
}

#[tokio::test]
async fn the_gate_keeps_its_state_under_its_own_identity() {
    let nats = permissioned().await;
    let gate_password = password("gate");
    let config = GateConfig::parse_from([
        "aviary-gate",
        "--admin-addr",
        "127.0.0.1:0",
        "--listen-addr",
        "127.0.0.1:0",
        "--nats-url",
        &nats.url(),
        "--nats-user",
        "gate",
        "--nats-password",
        &gate_password,
    ]);
    let shutdown = CancellationToken::new();
    let gate = start_gate(config, shutdown.clone()).await.unwrap();
    let call = |path: &'static str| {
        let url = format!("http://{}{path}", gate.addr);
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&serde_json::json!({
                    "name": "podinfo", "namespace": "test", "phase": "Progressing",
                    "checksum": "abc", "metadata": {}
                }))
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(call("/gate/check").await, 403, "closed by default");
    assert_eq!(call("/gate/open").await, 200);
    assert_eq!(call("/gate/check").await, 200);
    shutdown.cancel();
    assert_nothing_refused(&nats);
}
