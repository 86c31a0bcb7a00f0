//! The analyzer as a service over a real nats-server: queue group, replies, malformed
//! requests, admin endpoints and drain.
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

mod common;

use std::time::Duration;

use aviary_analyzer::{Config, start};
use aviary_bus::NatsArgs;
use aviary_bus::names;
use aviary_proto::{Outcome, Verdict, WebhookCheck};
use aviary_testkit::{NatsServer, eventually};
use clap::Parser as _;
use futures::StreamExt as _;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

fn config(nats_url: &str) -> Config {
    let mut config = Config::parse_from([
        "aviary-analyzer",
        "--admin-addr",
        "127.0.0.1:0",
        "--prometheus-url",
        "http://127.0.0.1:1",
        "--drain-timeout-ms",
        "5000",
    ]);
    config.nats = NatsArgs::for_url(nats_url);
    config
}

async fn admin_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The value of a counter line `name{labels} value` summed over label sets containing `has`.
fn counter(metrics: &str, name: &str, has: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(has))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn two_workers_in_a_queue_group_answer_each_request_once() {
    let nats = NatsServer::start().await.unwrap();
    let shutdown = CancellationToken::new();
    let a = start(config(&nats.url()), shutdown.clone()).await.unwrap();
    let b = start(config(&nats.url()), shutdown.clone()).await.unwrap();
    for w in [&a, &b] {
        assert_eq!(admin_get(w.admin_addr, "/readyz").await.0, 200);
        assert_eq!(admin_get(w.admin_addr, "/healthz").await.0, 200);
    }

    // A local gate, so each request does real work and gets a passing verdict.
    let gate = axum::Router::new().route("/open", axum::routing::post(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate_url = format!("http://{}/open", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, gate).await });

    let client = nats.client().await.unwrap();
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(format!("{inbox}.*")).await.unwrap();
    const N: u32 = 24;
    for step in 0..N {
        let mut req = common::request(0, 1, vec![]);
        req.step = step;
        req.webhooks = vec![WebhookCheck {
            name: "gate".into(),
            r#type: "confirm-traffic-increase".into(),
            url: gate_url.clone(),
            timeout_ms: 2_000,
            ..WebhookCheck::default()
        }];
        client
            .publish_with_reply(
                names::ANALYSIS_REQUEST,
                format!("{inbox}.{step}"),
                req.encode_to_vec().into(),
            )
            .await
            .unwrap();
    }
    let mut steps = Vec::new();
    while steps.len() < N as usize {
        let msg = tokio::time::timeout(Duration::from_secs(20), replies.next())
            .await
            .expect("a verdict for every request")
            .unwrap();
        let verdict = Verdict::decode(msg.payload).unwrap();
        assert_eq!(verdict.outcome(), Outcome::Pass, "{verdict:?}");
        assert!(msg.subject.ends_with(&format!(".{}", verdict.step)));
        steps.push(verdict.step);
    }
    steps.sort_unstable();
    assert_eq!(steps, (0..N).collect::<Vec<_>>(), "each request answered");

    // Exactly once: the two workers' verdict counters add up to N, and both took some.
    let (ma, mb) = (
        admin_get(a.admin_addr, "/metrics").await.1,
        admin_get(b.admin_addr, "/metrics").await.1,
    );
    let (va, vb) = (
        counter(&ma, "aviary_analyzer_verdicts_total", "outcome=\"pass\""),
        counter(&mb, "aviary_analyzer_verdicts_total", "outcome=\"pass\""),
    );
    assert_eq!(va + vb, f64::from(N), "{ma}\n{mb}");
    assert!(
        va > 0.0 && vb > 0.0,
        "the queue group spreads work: {va} / {vb}"
    );
    let hooks = counter(
        &ma,
        "aviary_analyzer_webhook_calls_total",
        "type=\"confirm-traffic-increase\"",
    ) + counter(
        &mb,
        "aviary_analyzer_webhook_calls_total",
        "type=\"confirm-traffic-increase\"",
    );
    assert_eq!(hooks, f64::from(N));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), async {
        a.wait().await.unwrap();
        b.wait().await.unwrap();
    })
    .await
    .expect("drained in time");
}

#[tokio::test]
async fn malformed_and_invalid_requests_get_error_verdicts() {
    let nats = NatsServer::start().await.unwrap();
    let shutdown = CancellationToken::new();
    let worker = start(config(&nats.url()), shutdown.clone()).await.unwrap();
    let client = nats.client().await.unwrap();

    let reply = client
        .request(names::ANALYSIS_REQUEST, vec![0xff, 0xff, 0xff].into())
        .await
        .unwrap();
    // Said as every responder says a client error (docs/bus.md), and in the body.
    let headers = reply.headers.clone().expect("error headers");
    assert_eq!(
        headers
            .get(aviary_bus::typed::SERVICE_ERROR_CODE)
            .map(|v| v.as_str()),
        Some("400")
    );
    assert!(
        headers
            .get(aviary_bus::typed::SERVICE_ERROR)
            .is_some_and(|v| v.as_str().contains("undecodable")),
        "{headers:?}"
    );
    let verdict = Verdict::decode(reply.payload).unwrap();
    assert_eq!(verdict.outcome(), Outcome::Error);
    assert!(verdict.error.contains("undecodable"), "{verdict:?}");

    let mut invalid = common::request(0, 1, vec![]);
    invalid.rollout = None;
    let reply = client
        .request(names::ANALYSIS_REQUEST, invalid.encode_to_vec().into())
        .await
        .unwrap();
    let verdict = Verdict::decode(reply.payload).unwrap();
    assert_eq!(verdict.outcome(), Outcome::Error);
    assert!(verdict.error.contains("rollout"), "{verdict:?}");

    // Metrics whose backend is down: an error verdict per metric, not a hang.
    let reply = client
        .request(
            names::ANALYSIS_REQUEST,
            common::request(0, 60_000, vec![common::success_rate_min(99.0)])
                .encode_to_vec()
                .into(),
        )
        .await
        .unwrap();
    let verdict = Verdict::decode(reply.payload).unwrap();
    assert_eq!(verdict.outcome(), Outcome::Error);
    assert_eq!(verdict.metrics[0].outcome(), Outcome::Error, "{verdict:?}");

    let metrics = admin_get(worker.admin_addr, "/metrics").await.1;
    assert_eq!(
        counter(&metrics, "aviary_analyzer_malformed_requests_total", ""),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        counter(
            &metrics,
            "aviary_analyzer_queries_total",
            "outcome=\"error\""
        ),
        1.0,
        "{metrics}"
    );

    shutdown.cancel();
    let addr = worker.admin_addr;
    worker.wait().await.unwrap();
    // Drained and stopped: the admin server is gone too.
    eventually(
        Duration::from_secs(5),
        "admin server closed",
        || async move {
            reqwest::get(format!("http://{addr}/healthz"))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
}
