//! A webhook that hangs does not starve the analyzer (issue 13, item 14): repeated requests
//! for the step share one call, requests without webhooks still get verdicts, and SIGTERM's
//! drain ends within its deadline while the hook hangs. Real nats-server.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aviary_analyzer::{Config, start};
use aviary_bus::NatsArgs;
use aviary_bus::names;
use aviary_proto::{Outcome, RolloutRef, Verdict, WebhookCheck};
use aviary_testkit::{NatsServer, eventually};
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use clap::Parser as _;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

/// A hook that answers after 30 s (counting calls), and a backend that answers at once.
async fn server(calls: Arc<AtomicU32>) -> String {
    let app = Router::new()
        .route(
            "/hang",
            post(|State(calls): State<Arc<AtomicU32>>| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route(
            "/api/v1/query",
            get(|| async {
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"99.9"]}]}}"#
            }),
        )
        .with_state(calls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_hanging_hook_gets_one_call_and_starves_no_one_and_shutdown_drains() {
    let calls = Arc::new(AtomicU32::new(0));
    let url = server(calls.clone()).await;
    let nats = NatsServer::start().await.unwrap();
    let mut config = Config::parse_from([
        "aviary-analyzer",
        "--admin-addr",
        "127.0.0.1:0",
        "--prometheus-url",
        &url,
        "--max-concurrent-analyses",
        "2",
        "--drain-timeout-ms",
        "1500",
    ]);
    config.nats = NatsArgs::for_url(nats.url());
    let shutdown = CancellationToken::new();
    let running = start(config, shutdown.clone()).await.unwrap();
    let client = nats.client().await.unwrap();

    // N repeated requests for the same step of a rollout whose rollout hook hangs.
    const N: usize = 6;
    let mut hanging = common::request(0, 1, vec![]);
    hanging.webhooks = vec![WebhookCheck {
        name: "load-test".into(),
        r#type: "rollout".into(),
        url: format!("{url}/hang"),
        timeout_ms: 30_000,
        ..WebhookCheck::default()
    }];
    let inbox = client.new_inbox();
    for _ in 0..N {
        client
            .publish_with_reply(
                names::ANALYSIS_REQUEST,
                inbox.clone(),
                hanging.encode_to_vec().into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    eventually(Duration::from_secs(10), "the hook is called", || async {
        (calls.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;

    // Another rollout, metrics only: answered promptly while the hook hangs.
    let mut healthy = common::request(
        1_700_000_000_000,
        1_700_000_060_000,
        vec![common::success_rate_min(99.0)],
    );
    healthy.rollout = Some(RolloutRef::new("test", "other"));
    healthy.idempotency_key = "test/other/1/0".into();
    let started = Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(names::ANALYSIS_REQUEST, healthy.encode_to_vec().into()),
    )
    .await
    .expect("the healthy rollout is answered while the hook hangs")
    .unwrap();
    let verdict = Verdict::decode(reply.payload).unwrap();
    assert_eq!(verdict.outcome(), Outcome::Pass, "{verdict:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "{N} identical requests share one call"
    );

    // Shutdown while every hanging request still waits: the drain ends by its deadline.
    let started = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), running.wait())
        .await
        .expect("drained within the deadline")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A hook that answers only once the test releases it, so a request is surely in flight.
async fn held_hook(release: Arc<tokio::sync::Notify>, entered: Arc<tokio::sync::Notify>) -> String {
    let app = Router::new()
        .route(
            "/held",
            post(
                |State((release, entered)): State<(
                    Arc<tokio::sync::Notify>,
                    Arc<tokio::sync::Notify>,
                )>| async move {
                    entered.notify_one();
                    release.notified().await;
                    "ok"
                },
            ),
        )
        .with_state((release, entered));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn shutdown_answers_the_request_in_flight_before_the_analyzer_exits() {
    let (release, entered) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let url = held_hook(release.clone(), entered.clone()).await;
    let nats = NatsServer::start().await.unwrap();
    let mut config = Config::parse_from([
        "aviary-analyzer",
        "--admin-addr",
        "127.0.0.1:0",
        "--prometheus-url",
        &url,
        "--drain-timeout-ms",
        "20000",
    ]);
    config.nats = NatsArgs::for_url(nats.url());
    let shutdown = CancellationToken::new();
    let running = start(config, shutdown.clone()).await.unwrap();
    let admin = format!("http://{}/readyz", running.admin_addr);
    let client = nats.client().await.unwrap();

    let mut request = common::request(0, 1, vec![]);
    request.webhooks = vec![WebhookCheck {
        name: "smoke".into(),
        r#type: "rollout".into(),
        url: format!("{url}/held"),
        timeout_ms: 30_000,
        ..WebhookCheck::default()
    }];
    let reply = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .request(names::ANALYSIS_REQUEST, request.encode_to_vec().into())
                .await
        }
    });
    tokio::time::timeout(Duration::from_secs(10), entered.notified())
        .await
        .expect("the hook is called");

    // Stopping with the request in flight: not ready any more, but not gone either.
    shutdown.cancel();
    eventually(
        Duration::from_secs(10),
        "/readyz reports draining",
        || async {
            let status = reqwest::get(&admin).await.ok()?.status();
            (status == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(())
        },
    )
    .await;
    let waiting = tokio::spawn(running.wait());
    assert!(!reply.is_finished() && !waiting.is_finished());

    release.notify_one();
    let reply = tokio::time::timeout(Duration::from_secs(10), reply)
        .await
        .expect("answered while draining")
        .unwrap()
        .expect("a reply, not a timeout or no responders");
    let verdict = Verdict::decode(reply.payload).unwrap();
    assert_eq!(verdict.outcome(), Outcome::Pass, "{verdict:?}");
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("exits once the request is answered")
        .unwrap()
        .unwrap();
}
