//! Every request of a step counts: the built-in metrics, evaluated against a real Prometheus
//! whose scrapes fall inside the windows (not on their edges), see the errors that happened
//! between a window's edge and the nearest scrape, and two consecutive windows count each
//! request once.
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

mod common;

use std::time::Duration;

use aviary_proto::{MetricResult, Outcome};
use aviary_testkit::prometheus::{Prometheus, ScrapeTarget};
use common::*;

const CANARY: &str = "test_podinfo-v2";
const PRIMARY: &str = "test_podinfo-v1";

/// Errors injected at each edge.
const EDGE_ERRORS: f64 = 60.0;

fn success_rate(metrics: &[MetricResult]) -> f64 {
    metrics[0].value.expect("a measured success rate")
}

#[tokio::test]
async fn errors_just_inside_both_edges_of_a_window_are_counted_once() {
    // 100 good requests a second, no errors but those the test injects.
    let fake = FakeEnvoyMetrics::start(&[
        (CANARY, Rates::new(100.0, 0.0)),
        (PRIMARY, Rates::new(100.0, 0.0)),
    ])
    .await;
    let prom = Prometheus::start(&[ScrapeTarget::new("envoy", fake.addr.to_string())])
        .await
        .unwrap();
    prom.wait_for_data(
        &format!("count_over_time(envoy_cluster_upstream_rq_completed{{envoy_cluster_name=\"{CANARY}\"}}[1m]) >= 3"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let analyzer = analyzer(&prom.url());

    // Window one starts just after a scrape; errors land before the window's first scrape.
    fake.wait_scrapes(1).await;
    let start = now_ms();
    fake.add(CANARY, 0.0, EDGE_ERRORS);
    // Three scrapes inside; then errors after the window's last scrape, and the window ends.
    fake.wait_scrapes(3).await;
    fake.add(CANARY, 0.0, EDGE_ERRORS);
    let middle = now_ms();
    // Window two, tiling on from there: three more scrapes, no more errors.
    fake.wait_scrapes(3).await;
    let end = now_ms();
    // One more scrape: the one before `end` is surely stored.
    fake.wait_scrapes(1).await;

    let first = analyzer
        .analyze(&request(start, middle, vec![success_rate_min(99.0)]))
        .await;
    let second = analyzer
        .analyze(&request(middle, end, vec![success_rate_min(99.0)]))
        .await;
    let (a, b) = (success_rate(&first.metrics), success_rate(&second.metrics));
    // About 300 good requests and 60 errors in each window: ≈ 83 % success. Without the
    // widening both windows read 100 %: neither error burst falls between two of its scrapes.
    for (window, rate, verdict) in [("first", a, &first), ("second", b, &second)] {
        assert!(
            (70.0..92.0).contains(&rate),
            "{window} window counts one burst: {rate} ({verdict:?})"
        );
        assert_eq!(verdict.outcome(), Outcome::Fail, "{verdict:?}");
    }

    // Neither window counted the other's burst: each holds about one burst's errors.
    let errors = |rate: f64, good: f64| good * (100.0 / rate - 1.0);
    for rate in [a, b] {
        let e = errors(rate, 300.0);
        assert!(
            (EDGE_ERRORS * 0.6..EDGE_ERRORS * 1.4).contains(&e),
            "≈ {EDGE_ERRORS} errors per window, got {e} (rate {rate})"
        );
    }
    // Over both windows at once, both bursts count, once each.
    let whole = analyzer
        .analyze(&request(start, end, vec![success_rate_min(99.0)]))
        .await;
    let e = errors(success_rate(&whole.metrics), 600.0);
    assert!(
        (EDGE_ERRORS * 1.4..EDGE_ERRORS * 2.6).contains(&e),
        "≈ {} errors over both windows, got {e} ({whole:?})",
        2.0 * EDGE_ERRORS
    );
}
