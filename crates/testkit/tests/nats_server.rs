//! The nats-server harness: starts ready, keeps JetStream data across restarts, cleans up.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use aviary_testkit::{NatsServer, TestkitError, eventually, tool_path};
use futures::StreamExt;

const DEADLINE: Duration = Duration::from_secs(10);

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[tokio::test]
async fn starts_ready_for_core_nats_and_jetstream() -> TestResult {
    let nats = NatsServer::start().await?;
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));
    let client = nats.client().await?;
    let js = jetstream::new(client.clone());
    let info = js.query_account().await?;
    assert_eq!(info.streams, 0);
    Ok(())
}

#[tokio::test]
async fn two_servers_do_not_share_ports_or_data() -> TestResult {
    let a = NatsServer::start().await?;
    let b = NatsServer::start().await?;
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
    Ok(())
}

async fn publish_and_read_back(restart: impl AsyncFnOnce(&mut NatsServer)) -> TestResult {
    let mut nats = NatsServer::start().await?;
    let js = jetstream::new(nats.client().await?);
    js.create_stream(stream::Config {
        name: "KEEP".into(),
        subjects: vec!["keep.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    js.publish("keep.one", "survives".into()).await?.await?;

    restart(&mut nats).await;

    let js = jetstream::new(nats.client().await?);
    let mut stream = js.get_stream("KEEP").await?;
    assert_eq!(stream.info().await?.state.messages, 1);
    let message = stream.get_raw_message(1).await?;
    assert_eq!(message.payload, bytes::Bytes::from("survives"));
    Ok(())
}

#[tokio::test]
async fn graceful_restart_keeps_file_store_data() -> TestResult {
    publish_and_read_back(async |nats: &mut NatsServer| {
        nats.restart().await.expect("restart");
    })
    .await
}

#[tokio::test]
async fn kill_then_restart_keeps_acknowledged_data() -> TestResult {
    publish_and_read_back(async |nats: &mut NatsServer| {
        let port = nats.port();
        nats.kill();
        assert!(
            nats.client().await.is_err(),
            "a killed server refuses clients"
        );
        nats.restart().await.expect("restart");
        assert_eq!(nats.port(), port, "restart keeps the port");
    })
    .await
}

#[tokio::test]
async fn clients_reconnect_across_a_restart() -> TestResult {
    let mut nats = NatsServer::start().await?;
    let client = nats.client().await?;
    nats.restart().await?;
    eventually(DEADLINE, "client reconnects and round-trips", || {
        let client = client.clone();
        async move {
            let mut sub = client.subscribe("ping").await.ok()?;
            client.publish("ping", "x".into()).await.ok()?;
            client.flush().await.ok()?;
            tokio::time::timeout(Duration::from_millis(200), sub.next())
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn drop_removes_the_store_dir() -> TestResult {
    let nats = NatsServer::start().await?;
    let dir = nats.store_dir();
    let _ = nats.client().await?;
    drop(nats);
    assert!(!dir.exists(), "{} should be removed", dir.display());
    Ok(())
}

#[test]
fn a_missing_tool_says_how_to_install_it() {
    let err = tool_path("aviary-no-such-tool").expect_err("must not exist");
    assert!(matches!(err, TestkitError::ToolNotFound { .. }));
    assert!(err.to_string().contains("scripts/bootstrap.sh"), "{err}");
}

#[tokio::test]
#[should_panic(expected = "waiting for: never true")]
async fn eventually_panics_with_what_after_the_deadline() {
    eventually(Duration::from_millis(50), "never true", || async {
        None::<()>
    })
    .await;
}
