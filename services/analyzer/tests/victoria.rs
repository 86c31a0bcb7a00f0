//! The analyzer's `victoriametrics` provider against a real single-node VictoriaMetrics
//! scraping an in-test target whose rates the test sets: a second PromQL backend, with its own
//! rate() semantics, giving the same verdicts as Prometheus.
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

mod common;

use std::time::Duration;

use aviary_analyzer::metrics::ProviderLabels;
use aviary_proto::{MetricCheck, Outcome};
use aviary_testkit::prometheus::ScrapeTarget;
use aviary_testkit::victoria::VictoriaMetrics;
use common::*;

const CANARY: &str = "test_podinfo-v2";
const PRIMARY: &str = "test_podinfo-v1";

fn on_victoria(mut check: MetricCheck, url: &str) -> MetricCheck {
    check.provider_type = "victoriametrics".into();
    check.provider_address = url.to_owned();
    check
}

#[tokio::test]
async fn victoriametrics_metrics_are_judged_from_real_scraped_data() {
    let fake = FakeEnvoyMetrics::start(&[
        (CANARY, Rates::new(1000.0, 2.0)),
        (PRIMARY, Rates::new(1000.0, 0.0)),
    ])
    .await;
    let vm = VictoriaMetrics::start(&[ScrapeTarget::new("envoy", fake.addr.to_string())])
        .await
        .unwrap();
    vm.wait_for_data(
        &format!("count_over_time(envoy_cluster_upstream_rq_xx{{envoy_cluster_name=\"{CANARY}\",envoy_response_code_class=\"2\"}}[1m]) >= 5"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();

    // The default backend is elsewhere (and unreachable): the metric's address picks VM.
    let closed = aviary_testkit::free_port().unwrap();
    let analyzer = analyzer(&format!("http://127.0.0.1:{closed}"));
    let end = now_ms();
    let url = vm.url();
    let verdict = analyzer
        .analyze(&request(
            end - 4_000,
            end,
            vec![
                on_victoria(success_rate_min(99.0), &url),
                on_victoria(success_rate_min(97.0), &url),
                on_victoria(duration_max(500.0), &url),
                on_victoria(
                    MetricCheck {
                        name: "request-success-rate".into(),
                        max_delta: Some(1.0),
                        ..MetricCheck::default()
                    },
                    &url,
                ),
            ],
        ))
        .await;
    let m = &verdict.metrics;
    assert_eq!(m.len(), 4, "{verdict:?}");
    // 2 % of requests fail: the ratio of two rates is exact whatever rate() extrapolates.
    let close = |v: Option<f64>, want: f64, tol: f64| v.is_some_and(|v| (v - want).abs() < tol);
    assert!(close(m[0].value, 98.0, 1e-6), "{:?}", m[0]);
    assert_eq!(m[0].outcome(), Outcome::Fail, "{:?}", m[0]);
    assert_eq!(m[1].outcome(), Outcome::Pass, "{:?}", m[1]);
    // p99 is halfway into the (50, 100] bucket.
    assert!(close(m[2].value, 75.0, 1.0), "{:?}", m[2]);
    assert_eq!(m[2].outcome(), Outcome::Pass, "{:?}", m[2]);
    // Against the primary (100 %), 2 points worse than a 1-point budget.
    assert!(close(m[3].primary_value, 100.0, 1e-6), "{:?}", m[3]);
    assert_eq!(m[3].outcome(), Outcome::Fail, "{:?}", m[3]);
    assert_eq!(verdict.outcome(), Outcome::Fail);
    // Canary success rate (once for both thresholds), p99, primary success rate.
    let calls = analyzer
        .metrics()
        .backend_calls
        .get_or_create(&ProviderLabels {
            provider: "victoriametrics".into(),
        })
        .get();
    assert_eq!(calls, 3);
}
