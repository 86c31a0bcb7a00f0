//! The analyzer and gate binaries start, report ready once connected to NATS, and exit 0 on
//! SIGTERM after draining.

use std::path::Path;
use std::time::Duration;

use aviary_testkit::{NatsServer, Service, free_port};

#[tokio::test]
async fn analyzer_and_gate_report_ready_and_exit_zero_on_sigterm() {
    let nats = NatsServer::start().await.expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let analyzer_args = vec![
        "--nats-url".to_owned(),
        nats.url(),
        "--prometheus-url".into(),
        "http://127.0.0.1:9".into(),
    ];
    let gate_port = free_port().expect("port");
    let gate_args = vec![
        "--nats-url".to_owned(),
        nats.url(),
        "--listen-addr".into(),
        format!("127.0.0.1:{gate_port}"),
    ];
    for (name, binary, args) in [
        (
            "analyzer",
            env!("CARGO_BIN_EXE_aviary-analyzer"),
            analyzer_args,
        ),
        ("gate", env!("CARGO_BIN_EXE_aviary-gate"), gate_args),
    ] {
        let mut service = Service::start(
            name,
            Path::new(binary),
            &args,
            dir.path(),
            Duration::from_secs(20),
        )
        .await
        .expect("service ready");
        assert_eq!(service.admin_status("/healthz").await, Some(200));
        let status = service
            .terminate(Duration::from_secs(15))
            .await
            .expect("exits");
        assert!(
            status.success(),
            "{name} exited with {status:?}:\n{}",
            service.process().log()
        );
    }
}
