//! What goes over the wire to a metrics backend (auth, headers, query, time), and that
//! identical concurrent queries reach the backend once. A recording HTTP server stands in for
//! the backend so the test sees every request.
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aviary_analyzer::provider::prometheus::PrometheusConfig;
use aviary_analyzer::provider::{Auth, Secret};
use aviary_proto::Outcome;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use common::*;

#[derive(Debug, Clone)]
struct Seen {
    authorization: Option<String>,
    tenant: Option<String>,
    query: String,
    time: String,
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn answer(
    State(rec): State<Recorder>,
    headers: HeaderMap,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> String {
    rec.seen.lock().unwrap().push(Seen {
        authorization: headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
        tenant: headers
            .get("x-scope-orgid")
            .map(|v| v.to_str().unwrap().to_owned()),
        query: params.get("query").cloned().unwrap_or_default(),
        time: params.get("time").cloned().unwrap_or_default(),
    });
    // Slow enough that concurrent identical queries overlap.
    tokio::time::sleep(Duration::from_millis(300)).await;
    r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"99.9"]}]}}"#.to_owned()
}

async fn recorder() -> (Recorder, String) {
    let rec = Recorder::default();
    let app = Router::new()
        .route("/prefix/api/v1/query", get(answer))
        .with_state(rec.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/prefix", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (rec, url)
}

#[tokio::test]
async fn basic_auth_tenant_header_query_and_time_are_sent() {
    let (rec, url) = recorder().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("password"), "s3cret\n").unwrap();
    let mut config = PrometheusConfig::new(url);
    config.auth = Auth::Basic {
        username: "aviary".into(),
        password: Secret::from_file(&dir.path().join("password")).unwrap(),
    };
    config.headers = vec![("X-Scope-OrgID".into(), "team-a".into())];
    let v = analyzer_with(config)
        .analyze(&request(
            1_700_000_000_000,
            1_700_000_030_500,
            vec![success_rate_min(99.0)],
        ))
        .await;
    assert_eq!(v.outcome(), Outcome::Pass, "{v:?}");
    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    // base64("aviary:s3cret")
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Basic YXZpYXJ5OnMzY3JldA==")
    );
    assert_eq!(seen[0].tenant.as_deref(), Some("team-a"));
    assert_eq!(seen[0].time, "1700000030.500");
    assert!(
        seen[0]
            .query
            .contains(r#"envoy_cluster_name="test_podinfo-v2""#)
            // The 30.5 s window, widened by the 1 s scrape interval (built-in metric).
            && seen[0].query.contains("[31500ms]"),
        "{}",
        seen[0].query
    );
}

#[tokio::test]
async fn bearer_tokens_go_only_to_the_default_backend() {
    let (default_rec, default_url) = recorder().await;
    let (other_rec, other_url) = recorder().await;
    let mut config = PrometheusConfig::new(default_url);
    config.auth = Auth::Bearer(Secret::new("t0ken"));
    let analyzer = analyzer_with(config);
    let mut elsewhere = success_rate_min(99.0);
    elsewhere.provider_address = other_url;
    let v = analyzer
        .analyze(&request(0, 60_000, vec![success_rate_min(99.0), elsewhere]))
        .await;
    assert_eq!(v.outcome(), Outcome::Pass, "{v:?}");
    let d = default_rec.seen.lock().unwrap().clone();
    let o = other_rec.seen.lock().unwrap().clone();
    assert_eq!(d[0].authorization.as_deref(), Some("Bearer t0ken"));
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].authorization, None);
}

#[tokio::test]
async fn identical_concurrent_queries_reach_the_backend_once() {
    let (rec, url) = recorder().await;
    let analyzer = Arc::new(analyzer(&url));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let analyzer = analyzer.clone();
            tokio::spawn(async move {
                analyzer
                    .analyze(&request(0, 60_000, vec![success_rate_min(99.0)]))
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().outcome(), Outcome::Pass);
    }
    assert_eq!(rec.seen.lock().unwrap().len(), 1);
    assert_eq!(analyzer.metrics().deduplicated.get(), 7);
    // A different window is a different query.
    analyzer
        .analyze(&request(0, 61_000, vec![success_rate_min(99.0)]))
        .await;
    assert_eq!(rec.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_repeated_request_for_the_same_window_reuses_the_answer() {
    let (rec, url) = recorder().await;
    let analyzer = analyzer(&url);
    let req = request(0, 60_000, vec![success_rate_min(99.0)]);
    // A redelivery: the same request again, after the first has been answered.
    let first = analyzer.analyze(&req).await;
    let second = analyzer.analyze(&req).await;
    assert_eq!(first.outcome(), Outcome::Pass, "{first:?}");
    assert_eq!(second.metrics, first.metrics);
    assert_eq!(rec.seen.lock().unwrap().len(), 1);
    let calls = |a: &aviary_analyzer::analysis::Analyzer| {
        a.metrics()
            .backend_calls
            .get_or_create(&aviary_analyzer::metrics::ProviderLabels {
                provider: "prometheus".into(),
            })
            .get()
    };
    assert_eq!(calls(&analyzer), 1);
    assert_eq!(analyzer.metrics().cache_hits.get(), 1);
    assert_eq!(analyzer.metrics().deduplicated.get(), 0);
    // The next step's window is a new question.
    analyzer
        .analyze(&request(0, 61_000, vec![success_rate_min(99.0)]))
        .await;
    assert_eq!(calls(&analyzer), 2);
}
