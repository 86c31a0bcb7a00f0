//! `--cluster`: an analyzer on a member cluster's leaf nats-server takes the requests of its
//! cluster's subject, sent from the hub over the leaf link, and no others.
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

mod common;

use aviary_analyzer::{Config, start};
use aviary_bus::NatsArgs;
use aviary_bus::names;
use aviary_proto::{Outcome, Verdict, WebhookCheck};
use aviary_testkit::NatsHub;
use clap::Parser as _;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

fn config(nats_url: &str, cluster: &str) -> Config {
    let mut config = Config::parse_from([
        "aviary-analyzer",
        "--admin-addr",
        "127.0.0.1:0",
        "--prometheus-url",
        "http://127.0.0.1:1",
        "--cluster",
        cluster,
    ]);
    config.nats = NatsArgs::for_url(nats_url);
    config
}

#[test]
fn a_cluster_that_is_not_one_subject_token_is_refused() {
    for bad in ["e.u", "eu*", "", "e u"] {
        let err = Config::try_parse_from(["aviary-analyzer", "--cluster", bad]).unwrap_err();
        assert!(err.to_string().contains("cluster"), "{bad:?}: {err}");
    }
}

#[tokio::test]
async fn answers_its_clusters_requests_from_the_hub_and_no_others() {
    let hub = NatsHub::start().await.unwrap();
    let eu = hub.start_leaf("eu").await.unwrap();
    let _us = hub.start_leaf("us").await.unwrap();
    hub.wait_leaves(2).await.unwrap();
    let shutdown = CancellationToken::new();
    let _worker = start(config(&eu.url(), "eu"), shutdown.clone())
        .await
        .unwrap();

    let gate = axum::Router::new().route("/open", axum::routing::post(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate_url = format!("http://{}/open", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, gate).await });
    let mut request = common::request(0, 1, vec![]);
    request.webhooks = vec![WebhookCheck {
        name: "gate".into(),
        r#type: "confirm-traffic-increase".into(),
        url: gate_url,
        timeout_ms: 2_000,
        ..WebhookCheck::default()
    }];
    let body = bytes::Bytes::from(request.encode_to_vec());

    let client = hub.server().client().await.unwrap();
    let eu_subject = names::analysis_subject(Some("eu")).unwrap();
    // The analyzer's subscription reaches the hub asynchronously: poll until it answers.
    let answer = aviary_testkit::eventually(
        std::time::Duration::from_secs(10),
        "eu's analyzer answers from the hub",
        || async { client.request(eu_subject.clone(), body.clone()).await.ok() },
    )
    .await;
    let verdict = Verdict::decode(answer.payload).unwrap();
    assert_eq!(verdict.outcome(), Outcome::Pass, "{verdict:?}");

    // Nobody serves us's subject or the single-cluster one.
    for subject in [
        names::analysis_subject(Some("us")).unwrap(),
        names::ANALYSIS_REQUEST.to_owned(),
    ] {
        let err = client
            .request(subject.clone(), body.clone())
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            async_nats::RequestErrorKind::NoResponders,
            "{subject}: {err}"
        );
    }
    shutdown.cancel();
}
