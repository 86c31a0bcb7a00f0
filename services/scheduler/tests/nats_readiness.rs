//! `/readyz` follows the NATS connection: the scheduler goes unready when its nats-server stops
//! and ready again when it is back on the same port, without restarting.

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
async fn scheduler_readiness_follows_the_nats_connection() {
    let mut nats = NatsServer::start().await.expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let grpc = free_port().expect("port");
    let args = vec![
        "--nats-url".to_owned(),
        nats.url(),
        "--grpc-addr".into(),
        format!("127.0.0.1:{grpc}"),
    ];
    let mut service = Service::start(
        "scheduler",
        Path::new(env!("CARGO_BIN_EXE_aviary-scheduler")),
        &args,
        dir.path(),
        DEADLINE,
    )
    .await
    .expect("scheduler ready");

    nats.stop().await.expect("nats-server stops");
    readyz_becomes(&service, 503, "unready without NATS").await;
    assert_eq!(service.admin_status("/healthz").await, Some(200));
    nats.start_again().await.expect("nats-server starts again");
    readyz_becomes(&service, 200, "ready after NATS is back").await;

    let status = service.terminate(DEADLINE).await.expect("exits");
    assert!(
        status.success(),
        "scheduler exited with {status:?}:\n{}",
        service.process().log()
    );
}
