//! Datadog, New Relic and Graphite as their documented HTTP APIs: a local server per vendor
//! checks every request (method, path, credentials, query parameters or body) and answers in
//! the vendor's documented shape; the test asserts on the verdict.
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aviary_analyzer::analysis::Analyzer;
use aviary_analyzer::provider::datadog::DatadogConfig;
use aviary_analyzer::provider::graphite::GraphiteConfig;
use aviary_analyzer::provider::newrelic::NewRelicConfig;
use aviary_analyzer::provider::{Auth, Secret, VendorConfig};
use aviary_proto::{MetricCheck, MetricResult, Outcome, Verdict};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use common::*;

const DD_API_KEY: &str = "dd-api-0123456789";
const DD_APP_KEY: &str = "dd-app-abcdef";
const NR_KEY: &str = "NRAK-SECRET42";
const GRAPHITE_PASSWORD: &str = "gr4phite-pw";

/// Window of every request here: 2023-11-14T22:13:20Z + 30.5 s.
const START_MS: i64 = 1_700_000_000_000;
const END_MS: i64 = 1_700_000_030_500;

/// One request as the vendor saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    params: BTreeMap<String, String>,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

#[derive(Clone)]
struct Vendor {
    seen: Arc<Mutex<Vec<Seen>>>,
    answer: Arc<Mutex<(u16, String)>>,
    url: String,
}

impl Vendor {
    /// A server answering every request with `status` and `body` (until [`Vendor::answer`]).
    async fn start(status: u16, body: &str) -> Self {
        let vendor = Self {
            seen: Arc::default(),
            answer: Arc::new(Mutex::new((status, body.to_owned()))),
            url: String::new(),
        };
        let app = Router::new().fallback(record).with_state(vendor.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, ..vendor }
    }

    fn answer(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap() = (status, body.to_owned());
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn last(&self) -> Seen {
        self.seen().pop().expect("the vendor was called")
    }
}

async fn record(
    State(vendor): State<Vendor>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(params): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> (StatusCode, String) {
    let (status, answer) = vendor.answer.lock().unwrap().clone();
    // Error answers echo the request's headers back, as a careless proxy might: reasons must
    // still not carry a credential.
    let answer = if status >= 400 {
        format!("{answer} (request headers: {headers:?})")
    } else {
        answer
    };
    vendor.seen.lock().unwrap().push(Seen {
        method,
        path: uri.path().to_owned(),
        headers,
        params,
        body,
    });
    (StatusCode::from_u16(status).unwrap(), answer)
}

fn vendors(datadog: &str, newrelic: &str, graphite: &str) -> VendorConfig {
    VendorConfig {
        datadog: DatadogConfig {
            url: datadog.to_owned(),
            api_key: Some(Secret::new(DD_API_KEY)),
            application_key: Some(Secret::new(DD_APP_KEY)),
            ..DatadogConfig::default()
        },
        newrelic: NewRelicConfig {
            url: newrelic.to_owned(),
            account_id: Some(1234567),
            api_key: Some(Secret::new(NR_KEY)),
            ..NewRelicConfig::default()
        },
        graphite: GraphiteConfig {
            url: graphite.to_owned(),
            auth: Auth::Basic {
                username: "aviary".into(),
                password: Secret::new(GRAPHITE_PASSWORD),
            },
            ..GraphiteConfig::default()
        },
    }
}

/// An analyzer whose vendors are all at `url` (the default Prometheus is never asked).
fn analyzer_at(url: &str) -> Analyzer {
    analyzer("http://127.0.0.1:1").with_vendors(vendors(url, url, url))
}

fn check(provider: &str, address: &str, query: &str) -> MetricCheck {
    MetricCheck {
        name: format!("{provider}-errors"),
        provider_type: provider.into(),
        provider_address: address.into(),
        query: query.into(),
        max: Some(1.0),
        ..MetricCheck::default()
    }
}

async fn judge(analyzer: &Analyzer, check: MetricCheck) -> (Verdict, MetricResult) {
    let verdict = analyzer
        .analyze(&request(START_MS, END_MS, vec![check]))
        .await;
    let result = verdict.metrics[0].clone();
    (verdict, result)
}

/// Every error reason must be free of every credential.
fn assert_no_secret(result: &MetricResult) {
    for secret in [DD_API_KEY, DD_APP_KEY, NR_KEY, GRAPHITE_PASSWORD] {
        assert!(
            !result.reason.contains(secret),
            "credential in the reason: {}",
            result.reason
        );
    }
}

const DD_QUERY: &str = "sum:envoy.cluster.upstream_rq_xx{envoy_cluster_name:{{ canary_cluster }},code_class:5}.as_rate()";
const DD_RENDERED: &str =
    "sum:envoy.cluster.upstream_rq_xx{envoy_cluster_name:test_podinfo-v2,code_class:5}.as_rate()";

#[tokio::test]
async fn datadog_query_api_request_and_last_point() {
    let dd = Vendor::start(
        200,
        r#"{"status":"ok","res_type":"time_series","query":"q","from_date":1700000000000,"to_date":1700000030000,
            "series":[{"metric":"envoy.cluster.upstream_rq_xx","scope":"envoy_cluster_name:test_podinfo-v2","aggr":"sum",
            "pointlist":[[1700000000000,3.0],[1700000010000,0.5],[1700000020000,null]]}]}"#,
    )
    .await;
    let analyzer = analyzer_at(&dd.url);
    let (verdict, m) = judge(&analyzer, check("datadog", &dd.url, DD_QUERY)).await;
    assert_eq!(m.value, Some(0.5), "{verdict:?}");
    assert_eq!(m.outcome(), Outcome::Pass, "{m:?}");

    let seen = dd.last();
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.path, "/api/v1/query");
    assert_eq!(seen.header("dd-api-key"), Some(DD_API_KEY));
    assert_eq!(seen.header("dd-application-key"), Some(DD_APP_KEY));
    assert_eq!(
        seen.params,
        BTreeMap::from([
            ("from".to_owned(), "1700000000".to_owned()),
            ("to".to_owned(), "1700000030".to_owned()),
            ("query".to_owned(), DD_RENDERED.to_owned()),
        ])
    );

    // A metric naming no address goes to the configured site, with the keys. (A fresh
    // analyzer: this one would answer the same query for the same window from its cache.)
    let (_, m) = judge(&analyzer_at(&dd.url), check("Datadog", "", DD_QUERY)).await;
    assert_eq!(m.value, Some(0.5), "{m:?}");
    assert_eq!(dd.seen().len(), 2);
}

#[tokio::test]
async fn datadog_no_data_many_series_and_http_errors() {
    let dd = Vendor::start(200, r#"{"status":"ok","series":[]}"#).await;
    let analyzer = analyzer_at(&dd.url);
    let (_, m) = judge(&analyzer, check("datadog", &dd.url, "sum:a{x:1}")).await;
    assert_eq!(m.outcome(), Outcome::Inconclusive, "{m:?}");
    assert_eq!(m.value, None);

    dd.answer(
        200,
        r#"{"status":"ok","series":[{"scope":"host:a","pointlist":[[1,1.0]]},{"scope":"host:b","pointlist":[[1,2.0]]}]}"#,
    );
    let (_, m) = judge(&analyzer, check("datadog", &dd.url, "avg:b{*} by {host}")).await;
    assert_eq!(m.outcome(), Outcome::Error, "{m:?}");
    assert!(m.reason.contains("2 series"), "{m:?}");

    dd.answer(403, r#"{"errors":["Forbidden"]}"#);
    let (_, m) = judge(&analyzer, check("datadog", &dd.url, "sum:c{*}")).await;
    assert_eq!(m.outcome(), Outcome::Error, "{m:?}");
    assert!(m.reason.contains("403"), "{m:?}");
    assert_no_secret(&m);

    dd.answer(503, "upstream unavailable");
    let (verdict, m) = judge(&analyzer, check("datadog", &dd.url, "sum:d{*}")).await;
    assert_eq!(m.outcome(), Outcome::Error, "{m:?}");
    assert!(m.reason.contains("503"), "{m:?}");
    // The echoed key was there, and was scrubbed.
    assert!(m.reason.contains("\"dd-api-key\": \"***\""), "{m:?}");
    assert_no_secret(&m);
    assert_eq!(verdict.outcome(), Outcome::Error);
}

const NRQL: &str = "SELECT percentage(count(*), WHERE httpResponseCode >= 500) FROM Transaction WHERE appName = '{{ canary }}'";

#[tokio::test]
async fn newrelic_nerdgraph_request_and_value() {
    let nr = Vendor::start(
        200,
        r#"{"data":{"actor":{"account":{"nrql":{"results":[{"percentage":0.75}]}}}}}"#,
    )
    .await;
    let analyzer = analyzer_at(&nr.url);
    let (verdict, m) = judge(&analyzer, check("newrelic", &nr.url, NRQL)).await;
    assert_eq!(m.value, Some(0.75), "{verdict:?}");
    assert_eq!(m.outcome(), Outcome::Pass, "{m:?}");

    let seen = nr.last();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path, "/graphql");
    assert_eq!(seen.header("api-key"), Some(NR_KEY));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "query": "query($accountId: Int!, $nrql: Nrql!) { actor { account(id: $accountId) { nrql(query: $nrql) { results } } } }",
            "variables": {
                "accountId": 1234567,
                "nrql": "SELECT percentage(count(*), WHERE httpResponseCode >= 500) FROM Transaction WHERE appName = 'podinfo-v2' SINCE 1700000000000 UNTIL 1700000030500",
            },
        })
    );
}

#[tokio::test]
async fn newrelic_no_data_graphql_errors_and_bad_keys() {
    let nr = Vendor::start(
        200,
        r#"{"data":{"actor":{"account":{"nrql":{"results":[]}}}}}"#,
    )
    .await;
    let analyzer = analyzer_at(&nr.url);
    let (_, m) = judge(&analyzer, check("newrelic", "", "SELECT count(*) FROM A")).await;
    assert_eq!(m.outcome(), Outcome::Inconclusive, "{m:?}");

    nr.answer(
        200,
        r#"{"data":{"actor":{"account":{"nrql":{"results":[{"facet":"a","count":1},{"facet":"b","count":2}]}}}}}"#,
    );
    let (_, m) = judge(
        &analyzer,
        check("newrelic", "", "SELECT count(*) FROM B FACET x"),
    )
    .await;
    assert_eq!(m.outcome(), Outcome::Error, "{m:?}");
    assert!(m.reason.contains("2 result rows"), "{m:?}");

    nr.answer(
        200,
        r#"{"errors":[{"message":"NRQL Syntax Error: Error at line 1 position 8","path":["actor","account","nrql"]}],"data":{"actor":{"account":{"nrql":null}}}}"#,
    );
    let (_, m) = judge(&analyzer, check("newrelic", "", "SELECT oops FROM")).await;
    assert_eq!(m.outcome(), Outcome::Error, "{m:?}");
    assert!(m.reason.contains("NRQL Syntax Error"), "{m:?}");

    nr.answer(401, r#"{"errors":[{"message":"Invalid API key"}]}"#);
    let (_, m) = judge(&analyzer, check("newrelic", "", "SELECT count(*) FROM C")).await;
    assert_eq!(m.outcome(), Outcome::Error, "{m:?}");
    assert!(m.reason.contains("401"), "{m:?}");
    assert!(m.reason.contains("\"api-key\": \"***\""), "{m:?}");
    assert_no_secret(&m);
}

#[tokio::test]
async fn graphite_render_request_and_last_point() {
    let gr = Vendor::start(
        200,
        r#"[{"target":"sumSeries(app.podinfo-v2.errors)","tags":{"name":"x"},"datapoints":[[4.0,1700000000],[0.25,1700000010],[null,1700000020]]}]"#,
    )
    .await;
    let analyzer = analyzer_at(&gr.url);
    let (verdict, m) = judge(
        &analyzer,
        check("graphite", &gr.url, "sumSeries(app.{{ canary }}.errors)"),
    )
    .await;
    assert_eq!(m.value, Some(0.25), "{verdict:?}");
    assert_eq!(m.outcome(), Outcome::Pass, "{m:?}");

    let seen = gr.last();
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.path, "/render");
    // base64("aviary:gr4phite-pw")
    assert_eq!(
        seen.header("authorization"),
        Some("Basic YXZpYXJ5OmdyNHBoaXRlLXB3")
    );
    assert_eq!(
        seen.params,
        BTreeMap::from([
            (
                "target".to_owned(),
                "sumSeries(app.podinfo-v2.errors)".to_owned()
            ),
            ("from".to_owned(), "1700000000".to_owned()),
            ("until".to_owned(), "1700000030".to_owned()),
            ("format".to_owned(), "json".to_owned()),
        ])
    );
}

#[tokio::test]
async fn graphite_no_data_many_targets_and_http_errors() {
    let gr = Vendor::start(200, "[]").await;
    let analyzer = analyzer_at(&gr.url);
    let (_, m) = judge(&analyzer, check("graphite", "", "app.none")).await;
    assert_eq!(m.outcome(), Outcome::Inconclusive, "{m:?}");

    gr.answer(
        200,
        r#"[{"target":"app.a.errors","datapoints":[[1.0,1]]},{"target":"app.b.errors","datapoints":[[2.0,1]]}]"#,
    );
    let (_, m) = judge(&analyzer, check("graphite", "", "app.*.errors")).await;
    assert_eq!(m.outcome(), Outcome::Error, "{m:?}");
    assert!(
        m.reason.contains("2 series") && m.reason.contains("app.b.errors"),
        "{m:?}"
    );

    gr.answer(401, "Unauthorized");
    let (_, m) = judge(&analyzer, check("graphite", "", "app.x")).await;
    assert_eq!(m.outcome(), Outcome::Error, "{m:?}");
    assert!(m.reason.contains("401"), "{m:?}");
    assert_no_secret(&m);

    gr.answer(500, "Internal Server Error");
    let (_, m) = judge(&analyzer, check("graphite", "", "app.y")).await;
    assert_eq!(m.outcome(), Outcome::Error, "{m:?}");
    assert!(m.reason.contains("500"), "{m:?}");
    assert_no_secret(&m);
}

#[tokio::test]
async fn credentials_go_only_to_the_configured_vendor_url() {
    let configured = Vendor::start(200, r#"{"status":"ok","series":[]}"#).await;
    let elsewhere = Vendor::start(200, r#"{"status":"ok","series":[]}"#).await;
    let analyzer = analyzer_at(&configured.url);
    judge(&analyzer, check("datadog", &elsewhere.url, "sum:a{*}")).await;
    judge(&analyzer, check("graphite", &elsewhere.url, "a")).await;
    judge(
        &analyzer,
        check("newrelic", &elsewhere.url, "SELECT 1 FROM A"),
    )
    .await;
    assert!(configured.seen().is_empty());
    let seen = elsewhere.seen();
    assert_eq!(seen.len(), 3);
    for s in seen {
        for header in [
            "dd-api-key",
            "dd-application-key",
            "api-key",
            "authorization",
        ] {
            assert_eq!(s.header(header), None, "{header} sent to {}", s.path);
        }
    }
}

#[tokio::test]
async fn what_only_promql_can_answer_is_an_error_on_other_vendors() {
    let dd = Vendor::start(200, r#"{"status":"ok","series":[]}"#).await;
    let analyzer = analyzer_at(&dd.url);
    // A built-in metric is PromQL.
    let (_, m) = judge(&analyzer, check("datadog", "", "")).await;
    assert_eq!(m.outcome(), Outcome::Error, "{m:?}");
    assert!(m.reason.contains("needs a query"), "{m:?}");
    let mut counted = check("graphite", "", "a.b");
    counted.min_requests = 10;
    let (_, m) = judge(&analyzer, counted).await;
    assert!(m.reason.contains("minRequests"), "{m:?}");
    // A missing variable is an error, never an empty string.
    let (_, m) = judge(&analyzer, check("datadog", "", "sum:a{x:{{ nope }}}")).await;
    assert_eq!(m.outcome(), Outcome::Error, "{m:?}");
    assert!(m.reason.contains("nope"), "{m:?}");
    let (_, m) = judge(&analyzer, check("influxdb", "", "x")).await;
    assert!(m.reason.contains("unsupported metrics provider"), "{m:?}");
    assert!(dd.seen().is_empty());
}
