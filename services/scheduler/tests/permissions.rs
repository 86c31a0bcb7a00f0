//! The scheduler under its own NATS identity (`aviary_bus::permissions`) on a permissioned
//! nats-server: a rollout runs to promotion with the router agent and the analyzer answering
//! as theirs, so a permission the scheduler lacks fails this test; and the server refused
//! nothing the scheduler did.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::time::Duration;

use aviary_bus::permissions;
use aviary_proto as pb;
use aviary_testkit::{NatsServer, free_port};
use common::*;
use tokio_util::sync::CancellationToken;

fn password(user: &str) -> String {
    format!("pw-{user}")
}

/// A client of `user` as its service connects (its inbox prefix).
async fn connect_as(server: &NatsServer, user: &str) -> async_nats::Client {
    let identity = permissions::identity(user).unwrap();
    async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
        .custom_inbox_prefix(identity.inbox_prefix)
        .connect(server.url())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_rollout_runs_to_promotion_with_each_service_under_its_own_identity() {
    let config = permissions::nats_authorization(|user| format!("\"{}\"", password(user)));
    let nats = NatsServer::start_with_config(&config).await.unwrap();
    let routes = route_responder(connect_as(&nats, "router-agent").await, "edge").await;
    let _verdicts = analyzer_responder(
        connect_as(&nats, "analyzer").await,
        pb::Outcome::Pass,
        CancellationToken::new(),
    )
    .await;
    let port = free_port().unwrap();
    let scheduler_password = password("scheduler");
    let scheduler = Replica::start(
        &nats.url(),
        port,
        &[
            "--nats-user",
            "scheduler",
            "--nats-password",
            &scheduler_password,
        ],
    );
    let mut api = api(port).await;
    api.apply(pb::ApplyRequest {
        manifest: canary_manifest("podinfo", 50, 50, 1),
    })
    .await
    .unwrap();
    wait_phase(
        &api,
        "podinfo",
        pb::Phase::Succeeded,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        routes.lock().unwrap().last().unwrap(),
        &("app-v2".to_owned(), 100, 0),
        "canary finalised as primary"
    );
    let events = audit_events(&connect_as(&nats, "scheduler").await, "podinfo").await;
    assert_eq!(
        events.last().unwrap()["type"],
        "dev.aviary.rollout.succeeded"
    );
    let log = nats.log();
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(violations.is_empty(), "refused: {violations:#?}");
    scheduler.stop().await;
}
