//! The notifier binary starts, reports ready once its consumer is bound, and exits 0 on SIGTERM.

use std::path::Path;
use std::time::Duration;

use aviary_testkit::{NatsServer, Service};

#[tokio::test]
async fn notifier_reports_ready_and_exits_zero_on_sigterm() {
    let nats = NatsServer::start().await.expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("notifier.yaml");
    std::fs::write(
        &config,
        "defaultProvider: hook\nproviders:\n  - name: hook\n    type: webhook\n    url: http://127.0.0.1:9/hook\n",
    )
    .expect("config");
    let args = vec![
        "--nats-url".to_owned(),
        nats.url(),
        "--config".into(),
        config.display().to_string(),
    ];
    let mut service = Service::start(
        "notifier",
        Path::new(env!("CARGO_BIN_EXE_aviary-notifier")),
        &args,
        dir.path(),
        Duration::from_secs(20),
    )
    .await
    .expect("notifier ready");
    let status = service
        .terminate(Duration::from_secs(15))
        .await
        .expect("exits");
    assert!(
        status.success(),
        "notifier exited with {status:?}:\n{}",
        service.process().log()
    );
}
