//! The router-agent binary starts, reports ready once it serves its ingresses, and exits 0 on
//! SIGTERM.

use std::path::Path;
use std::time::Duration;

use aviary_testkit::{NatsServer, Service, free_port};

#[tokio::test]
async fn router_agent_reports_ready_and_exits_zero_on_sigterm() {
    let nats = NatsServer::start().await.expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.yaml");
    let xds = free_port().expect("port");
    std::fs::write(
        &config,
        format!("ingresses:\n  - name: edge\n    provider: envoy\n    xds_addr: 127.0.0.1:{xds}\n"),
    )
    .expect("config");
    let args = vec![
        "--nats-url".to_owned(),
        nats.url(),
        "--config-file".into(),
        config.display().to_string(),
    ];
    let mut service = Service::start(
        "router-agent",
        Path::new(env!("CARGO_BIN_EXE_aviary-router-agent")),
        &args,
        dir.path(),
        Duration::from_secs(20),
    )
    .await
    .expect("router agent ready");
    let status = service
        .terminate(Duration::from_secs(15))
        .await
        .expect("exits");
    assert!(
        status.success(),
        "router agent exited with {status:?}:\n{}",
        service.process().log()
    );
}
