//! `/readyz` follows the NATS connection: the analyzer and the gate go unready when their
//! nats-server stops and ready again when it is back on the same port, without restarting.

use std::path::Path;
use std::time::Duration;

use aviary_testkit::{NatsServer, Service, eventually, free_port};

/// Deadline of each wait: generous for a 2-core machine that is compiling.
const DEADLINE: Duration = Duration::from_secs(30);

async fn readyz_becomes(service: &Service, status: u16, what: &str) {
    eventually(DEADLINE, what, || async {
        (service.admin_status("/readyz").await == Some(status)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn analyzer_and_gate_readiness_follow_the_nats_connection() {
    let mut nats = NatsServer::start().await.expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let gate_port = free_port().expect("port");
    let services = [
        (
            "analyzer",
            env!("CARGO_BIN_EXE_aviary-analyzer"),
            vec![
                "--nats-url".to_owned(),
                nats.url(),
                "--prometheus-url".into(),
                "http://127.0.0.1:9".into(),
            ],
        ),
        (
            "gate",
            env!("CARGO_BIN_EXE_aviary-gate"),
            vec![
                "--nats-url".to_owned(),
                nats.url(),
                "--listen-addr".into(),
                format!("127.0.0.1:{gate_port}"),
            ],
        ),
    ];
    let mut running = Vec::new();
    for (name, binary, args) in services {
        let service = Service::start(name, Path::new(binary), &args, dir.path(), DEADLINE)
            .await
            .expect("service ready");
        running.push((name, service));
    }

    nats.stop().await.expect("nats-server stops");
    for (name, service) in &running {
        readyz_becomes(service, 503, &format!("{name} unready without NATS")).await;
        assert_eq!(service.admin_status("/healthz").await, Some(200), "{name}");
    }
    nats.start_again().await.expect("nats-server starts again");
    for (name, service) in &running {
        readyz_becomes(service, 200, &format!("{name} ready after NATS is back")).await;
    }

    for (name, mut service) in running {
        let status = service.terminate(DEADLINE).await.expect("exits");
        assert!(
            status.success(),
            "{name} exited with {status:?}:\n{}",
            service.process().log()
        );
    }
}
