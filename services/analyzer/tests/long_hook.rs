//! A hook's own `timeout` is honoured end to end (issue 13, item 4): a pre-rollout hook that
//! takes longer than the analyzer's request budget still gets its answer delivered, because
//! a request that calls webhooks is worked on for as long as its longest call can take.
//! Real nats-server, a real HTTP hook.
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

mod common;

use std::time::Duration;

use aviary_analyzer::{Config, start};
use aviary_bus::NatsArgs;
use aviary_bus::names;
use aviary_proto::{Outcome, Verdict, WebhookCheck};
use aviary_testkit::NatsServer;
use axum::Router;
use axum::routing::post;
use clap::Parser as _;
use prost::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_hook_slower_than_the_request_budget_is_still_answered() {
    // The hook answers 200 only once the test lets it, after the budget has passed.
    let release = std::sync::Arc::new(Notify::new());
    let app = Router::new().route(
        "/slow",
        post({
            let release = release.clone();
            move || async move {
                release.notified().await;
                "done"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let nats = NatsServer::start().await.unwrap();
    let mut config = Config::parse_from([
        "aviary-analyzer",
        "--admin-addr",
        "127.0.0.1:0",
        "--prometheus-url",
        "http://127.0.0.1:1",
        "--analysis-budget-ms",
        "500",
    ]);
    config.nats = NatsArgs::for_url(nats.url());
    let shutdown = CancellationToken::new();
    let _running = start(config, shutdown.clone()).await.unwrap();
    let client = nats.client().await.unwrap();

    let mut request = common::request(0, 1, vec![]);
    request.webhooks = vec![WebhookCheck {
        name: "load-test".into(),
        r#type: "pre-rollout".into(),
        url: format!("{url}/slow"),
        timeout_ms: 60_000,
        ..WebhookCheck::default()
    }];
    let asked = tokio::spawn({
        let client = client.clone();
        let body = request.encode_to_vec();
        async move {
            tokio::time::timeout(
                Duration::from_secs(60),
                client.request(names::ANALYSIS_REQUEST, body.into()),
            )
            .await
        }
    });
    // Past the budget: a reply now would be an error or none at all. Wait on the clock the
    // analyzer uses, then let the hook answer.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!asked.is_finished(), "no early answer while the hook runs");
    release.notify_one();
    let reply = asked.await.unwrap().expect("answered").expect("a reply");
    let verdict = Verdict::decode(reply.payload).unwrap();
    assert_eq!(verdict.outcome(), Outcome::Pass, "{verdict:?}");
    assert_eq!(verdict.webhooks[0].status_code, 200, "{verdict:?}");
    shutdown.cancel();
}
