//! The router agent under its own NATS identity (`aviary_bus::permissions`) on a permissioned
//! nats-server: it sets up, lists the desired routes, registers its capabilities and answers
//! route commands through `allow_responses`; the server refuses nothing it does.

use std::path::Path;
use std::time::Duration;

use aviary_bus::{names, permissions};
use aviary_testkit::{NatsServer, Service, free_port};

fn password(user: &str) -> String {
    format!("pw-{user}")
}

#[tokio::test]
async fn the_router_agent_works_under_its_own_identity() {
    let config = permissions::nats_authorization(|user| format!("\"{}\"", password(user)));
    let nats = NatsServer::start_with_config(&config)
        .await
        .expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let agent_config = dir.path().join("agent.yaml");
    let xds = free_port().expect("port");
    std::fs::write(
        &agent_config,
        format!("ingresses:\n  - name: edge\n    provider: envoy\n    xds_addr: 127.0.0.1:{xds}\n"),
    )
    .expect("config");
    let args = vec![
        "--nats-url".to_owned(),
        nats.url(),
        "--nats-user".into(),
        "router-agent".into(),
        "--nats-password".into(),
        password("router-agent"),
        "--config-file".into(),
        agent_config.display().to_string(),
    ];
    let mut agent = Service::start(
        "router-agent",
        Path::new(env!("CARGO_BIN_EXE_aviary-router-agent")),
        &args,
        dir.path(),
        Duration::from_secs(20),
    )
    .await
    .expect("router agent ready");

    let scheduler = async_nats::ConnectOptions::with_user_and_password(
        "scheduler".into(),
        password("scheduler"),
    )
    .custom_inbox_prefix(names::inbox_prefix("aviary-scheduler"))
    .connect(nats.url())
    .await
    .expect("scheduler connects");
    // Its capabilities are registered for the scheduler to read.
    let js = async_nats::jetstream::new(scheduler.clone());
    let agents = js
        .get_key_value(names::BUCKET_AGENTS)
        .await
        .expect("agents bucket");
    assert!(agents.get("edge").await.expect("read").is_some());
    // A route command that does not decode is answered (400) into the scheduler's inbox.
    // Ready does not promise the server has its subscription yet: ask until someone answers.
    let subject = names::route_subject("edge").expect("subject");
    let reply = aviary_testkit::eventually(Duration::from_secs(10), "an answer", || async {
        scheduler
            .request(subject.clone(), "not protobuf".into())
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

    let status = agent
        .terminate(Duration::from_secs(15))
        .await
        .expect("exits");
    assert!(status.success(), "{}", agent.process().log());
    let log = nats.log();
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(violations.is_empty(), "refused: {violations:#?}");
}
