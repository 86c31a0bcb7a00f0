//! The analyzer against a real Prometheus scraping an in-test target whose rates the test
//! sets, so every expected value is known exactly.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

mod common;

use std::time::{Duration, Instant};

use aviary_analyzer::judge::Sample;
use aviary_analyzer::provider::prometheus::{Prometheus as PromClient, PrometheusConfig};
use aviary_analyzer::provider::{Auth, ProviderError, Secret};
use aviary_proto::{MetricCheck, Outcome};
use aviary_testkit::prometheus::{Prometheus, ScrapeTarget};
use common::*;

const CANARY: &str = "test_podinfo-v2";
const PRIMARY: &str = "test_podinfo-v1";

async fn stack(canary: Rates, primary: Rates) -> (FakeEnvoyMetrics, Prometheus) {
    let fake = FakeEnvoyMetrics::start(&[(CANARY, canary), (PRIMARY, primary)]).await;
    let prom = Prometheus::start(&[ScrapeTarget::new("envoy", fake.addr.to_string())])
        .await
        .unwrap();
    // Enough samples for rate() over a few seconds.
    prom.wait_for_data(
        &format!("count_over_time(envoy_cluster_upstream_rq_xx{{envoy_cluster_name=\"{CANARY}\",envoy_response_code_class=\"2\"}}[1m]) >= 5"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    (fake, prom)
}

fn close(actual: Option<f64>, expected: f64) -> bool {
    actual.is_some_and(|a| (a - expected).abs() < 1e-6)
}

#[tokio::test]
async fn builtins_measure_the_canary_and_judge_it() {
    let (_fake, prom) = stack(Rates::new(1000.0, 2.0), Rates::new(1000.0, 0.0)).await;
    let analyzer = analyzer(&prom.url());
    let end = now_ms();
    let verdict = analyzer
        .analyze(&request(
            end - 4_000,
            end,
            vec![
                success_rate_min(99.0),
                duration_max(500.0),
                MetricCheck {
                    name: "request-success-rate".into(),
                    max_delta: Some(1.0),
                    ..MetricCheck::default()
                },
                MetricCheck {
                    name: "request-success-rate".into(),
                    max_delta: Some(5.0),
                    ..MetricCheck::default()
                },
            ],
        ))
        .await;
    let m = &verdict.metrics;
    assert_eq!(m.len(), 4, "{verdict:?}");
    // 98 % success: below min 99.
    assert!(close(m[0].value, 98.0), "{:?}", m[0]);
    assert_eq!(m[0].outcome(), Outcome::Fail, "{:?}", m[0]);
    // p99 is exactly halfway into the (50, 100] bucket.
    assert!(close(m[1].value, 75.0), "{:?}", m[1]);
    assert_eq!(m[1].outcome(), Outcome::Pass, "{:?}", m[1]);
    // Against the primary (100 %): 2 points worse.
    assert!(close(m[2].primary_value, 100.0), "{:?}", m[2]);
    assert_eq!(m[2].outcome(), Outcome::Fail, "{:?}", m[2]);
    assert_eq!(m[3].outcome(), Outcome::Pass, "{:?}", m[3]);
    assert_eq!(verdict.outcome(), Outcome::Fail);
    assert_eq!(verdict.rollout.as_ref().unwrap().name, "podinfo");

    // The healthy primary, measured as if it were the canary, passes.
    let mut req = request(
        end - 4_000,
        end,
        vec![success_rate_min(99.0), duration_max(500.0)],
    );
    req.variables.insert("canary".into(), "podinfo-v1".into());
    let verdict = analyzer.analyze(&req).await;
    assert_eq!(verdict.outcome(), Outcome::Pass, "{verdict:?}");
    assert!(close(verdict.metrics[0].value, 100.0), "{verdict:?}");
}

#[tokio::test]
async fn a_canary_failing_every_request_is_zero_percent_not_no_data() {
    let (_fake, prom) = stack(Rates::new(100.0, 100.0), Rates::new(100.0, 0.0)).await;
    let end = now_ms();
    let verdict = analyzer(&prom.url())
        .analyze(&request(end - 4_000, end, vec![success_rate_min(99.0)]))
        .await;
    assert!(close(verdict.metrics[0].value, 0.0), "{verdict:?}");
    assert_eq!(verdict.outcome(), Outcome::Fail);
}

/// A built-in metric's window reaches back one scrape interval (to the last scrape at or before
/// its start) and no further: a window starting a scrape interval after a change reads only the
/// new rates, one starting at the change at most one interval of the old, and one ending before
/// the change only the old.
#[tokio::test]
async fn windows_reach_back_one_scrape_and_no_further() {
    let (fake, prom) = stack(Rates::new(1000.0, 2.0), Rates::new(1000.0, 0.0)).await;
    fake.wait_scrapes(2).await;
    fake.set_rates(CANARY, Rates::new(1000.0, 50.0));
    // Every sample stamped after this holds only the new rates' increments.
    let switched = now_ms();
    fake.wait_scrapes(5).await;
    // At least four samples after the switch are in Prometheus; the window ends after them.
    prom.wait_for_data(
        &format!(
            "count_over_time(envoy_cluster_upstream_rq_xx{{envoy_cluster_name=\"{CANARY}\",envoy_response_code_class=\"5\"}}[{}ms]) >= 4",
            now_ms() - switched
        ),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let end = now_ms();
    let analyzer = analyzer(&prom.url());
    let after = analyzer
        .analyze(&request(
            switched + 1_000,
            end,
            vec![success_rate_min(99.0)],
        ))
        .await;
    assert!(close(after.metrics[0].value, 50.0), "{after:?}");
    let from_switch = analyzer
        .analyze(&request(switched, end, vec![success_rate_min(99.0)]))
        .await;
    let mixed = from_switch.metrics[0].value.unwrap();
    // At least four seconds at 50 % and at most one at 98 %.
    assert!((50.0..=60.0).contains(&mixed), "{from_switch:?}");
    let before = analyzer
        .analyze(&request(
            switched - 6_000,
            switched - 1_000,
            vec![success_rate_min(90.0)],
        ))
        .await;
    assert!(close(before.metrics[0].value, 98.0), "{before:?}");
    assert_eq!(before.outcome(), Outcome::Pass);
}

/// Envoy creates a cluster's 5xx counter with its first 5xx: a window in which errors begin
/// holds too few samples of that series for `rate()`. The success rate must still see them
/// (it divides successes by the always-present completed counter), never read 100 %.
#[tokio::test]
async fn errors_that_begin_inside_the_window_are_not_hidden() {
    let (fake, prom) = stack(Rates::new(1000.0, 0.0), Rates::new(1000.0, 0.0)).await;
    fake.wait_scrapes(2).await;
    let switched = now_ms();
    fake.set_rates(CANARY, Rates::new(1000.0, 50.0));
    // The first sample of the new 5xx series has arrived: exactly the case `rate()` cannot see.
    prom.wait_for_data(
        &format!(
            "count_over_time(envoy_cluster_upstream_rq_xx{{envoy_cluster_name=\"{CANARY}\",envoy_response_code_class=\"5\"}}[1m]) >= 1"
        ),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let end = now_ms();
    let verdict = analyzer(&prom.url())
        .analyze(&request(
            switched - 3_000,
            end,
            vec![success_rate_min(99.0)],
        ))
        .await;
    assert!(
        verdict.metrics[0].value.is_some_and(|v| v < 99.0),
        "{verdict:?}"
    );
    assert_eq!(verdict.outcome(), Outcome::Fail, "{verdict:?}");
}

#[tokio::test]
async fn no_data_too_few_requests_and_unusable_results() {
    let (_fake, prom) = stack(Rates::new(100.0, 0.0), Rates::new(100.0, 0.0)).await;
    let analyzer = analyzer(&prom.url());
    let end = now_ms();

    // A canary nobody has sent traffic to: no series.
    let mut req = request(end - 4_000, end, vec![success_rate_min(99.0)]);
    req.variables.insert("canary".into(), "podinfo-v3".into());
    let v = analyzer.analyze(&req).await;
    assert_eq!(v.metrics[0].outcome(), Outcome::Inconclusive, "{v:?}");
    assert_eq!(v.metrics[0].value, None);
    assert_eq!(v.outcome(), Outcome::Inconclusive);
    req.metrics[0].on_no_data = "fail".into();
    assert_eq!(analyzer.analyze(&req).await.outcome(), Outcome::Fail);

    // ~400 requests in the window, fewer than asked for.
    let mut check = success_rate_min(99.0);
    check.min_requests = 1_000_000;
    let v = analyzer
        .analyze(&request(end - 4_000, end, vec![check.clone()]))
        .await;
    assert_eq!(v.metrics[0].outcome(), Outcome::Inconclusive, "{v:?}");
    assert!(v.metrics[0].reason.contains("minRequests"), "{v:?}");
    check.min_requests = 100;
    let v = analyzer
        .analyze(&request(end - 4_000, end, vec![check]))
        .await;
    assert_eq!(v.metrics[0].outcome(), Outcome::Pass, "{v:?}");

    // A custom query returning one series per cluster and class is an error, with the reason.
    let many = MetricCheck {
        name: "raw".into(),
        query: "envoy_cluster_upstream_rq_xx".into(),
        max: Some(1.0),
        ..MetricCheck::default()
    };
    let matrix = MetricCheck {
        name: "matrix".into(),
        query: "envoy_cluster_upstream_rq_xx[{{ interval }}]".into(),
        max: Some(1.0),
        ..MetricCheck::default()
    };
    let missing = MetricCheck {
        name: "missing".into(),
        query: "sum(x{a=\"{{ nope }}\"})".into(),
        max: Some(1.0),
        ..MetricCheck::default()
    };
    let custom = MetricCheck {
        name: "errors".into(),
        // Envoy has no 5xx series until the first 5xx, so "no errors" is written with a default.
        query: "sum(increase(envoy_cluster_upstream_rq_xx{envoy_cluster_name=\"{{ canary_cluster }}\",envoy_response_code_class=\"5\"}[{{ window }}])) or vector(0)".into(),
        max: Some(0.0),
        ..MetricCheck::default()
    };
    let v = analyzer
        .analyze(&request(
            end - 4_000,
            end,
            vec![many, matrix, missing, custom],
        ))
        .await;
    assert_eq!(v.metrics[0].outcome(), Outcome::Error);
    assert!(v.metrics[0].reason.contains("series"), "{v:?}");
    assert_eq!(v.metrics[1].outcome(), Outcome::Error);
    assert!(v.metrics[1].reason.contains("matrix"), "{v:?}");
    assert_eq!(v.metrics[2].outcome(), Outcome::Error);
    assert!(v.metrics[2].reason.contains("nope"), "{v:?}");
    assert_eq!(v.metrics[3].outcome(), Outcome::Pass, "{v:?}");
    assert_eq!(v.metrics[3].value, Some(0.0));
    assert_eq!(v.outcome(), Outcome::Error);
}

#[tokio::test]
async fn unreachable_backends_are_errors_within_the_timeout() {
    // Closed port: refused at once.
    let closed = aviary_testkit::free_port().unwrap();
    let end = now_ms();
    let v = analyzer(&format!("http://127.0.0.1:{closed}"))
        .analyze(&request(end - 4_000, end, vec![success_rate_min(99.0)]))
        .await;
    assert_eq!(v.outcome(), Outcome::Error, "{v:?}");
    assert!(v.metrics[0].reason.contains("transport"), "{v:?}");

    // A backend that accepts connections and never answers: the timeout ends it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = PrometheusConfig::new(format!("http://{}", silent.local_addr().unwrap()));
    config.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let v = analyzer_with(config)
        .analyze(&request(end - 4_000, end, vec![success_rate_min(99.0)]))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(v.outcome(), Outcome::Error, "{v:?}");
    assert!(v.metrics[0].reason.contains("no answer within"), "{v:?}");
}

#[tokio::test]
async fn the_client_sends_auth_and_headers_and_reads_real_answers() {
    let (_fake, prom) = stack(Rates::new(100.0, 0.0), Rates::new(100.0, 0.0)).await;
    // Prometheus ignores credentials it does not require: this checks they do not break the
    // real API; the exact headers are checked against a recording server below.
    let mut config = PrometheusConfig::new(prom.url());
    config.auth = Auth::Bearer(Secret::new("t0ken"));
    config.headers = vec![("X-Scope-OrgID".into(), "team-a".into())];
    let client = PromClient::new(&config).unwrap();
    assert_eq!(
        client.query("1 + 1", now_ms()).await,
        Ok(Sample::Value(2.0))
    );
    assert!(matches!(
        client.query("sum(", now_ms()).await,
        Err(ProviderError::Query { .. })
    ));
}

/// The canary's latency shifted up: half its requests slower than 50 ms (the primary: 2 %),
/// 20 % slower than 100 ms, where the primary has none: its p99 is 242.5 ms.
fn slow(total: f64) -> Rates {
    Rates {
        latency_per_s: [0.0, 0.0, total * 0.5, total * 0.3, total * 0.2],
        ..Rates::new(total, 0.0)
    }
}

fn sequential_duration(end: i64, run_start: i64) -> aviary_proto::AnalysisRequest {
    let mut req = request(
        end - 4_000,
        end,
        vec![MetricCheck {
            name: "request-duration".into(),
            judge: "sequential".into(),
            ..MetricCheck::default()
        }],
    );
    req.variables
        .insert("run_start_ms".into(), run_start.to_string());
    req
}

#[tokio::test]
async fn sequential_latency_fails_a_slower_canary_at_once() {
    let run_start = now_ms();
    let (_fake, prom) = stack(slow(1000.0), Rates::new(1000.0, 0.0)).await;
    let end = now_ms();
    let v = analyzer(&prom.url())
        .analyze(&sequential_duration(end, run_start))
        .await;
    let m = &v.metrics[0];
    assert_eq!(m.outcome(), Outcome::Fail, "{v:?}");
    assert!(v.decisive, "a sequential fail is decisive: {v:?}");
    // The canary's p99 is in (100, 250] (242.5 ms interpolated), the primary's 75 ms: above
    // 1.5 × the primary's.
    assert!(m.reason.contains("above 1.5 × the primary's"), "{v:?}");
    assert!(m.value.is_some_and(|p| (p - 242.5).abs() < 5.0), "{v:?}");
    assert!(
        m.primary_value.is_some_and(|p| (p - 75.0).abs() < 5.0),
        "{v:?}"
    );
}

#[tokio::test]
async fn sequential_latency_does_not_fail_equal_distributions() {
    let run_start = now_ms();
    let (fake, prom) = stack(Rates::new(1000.0, 0.0), Rates::new(1000.0, 0.0)).await;
    // Thousands of requests a side: enough for the tail to be judged equal, not just "no
    // evidence yet".
    fake.wait_scrapes(3).await;
    let analyzer = analyzer(&prom.url());
    let end = now_ms();
    let v = analyzer.analyze(&sequential_duration(end, run_start)).await;
    let m = &v.metrics[0];
    assert_ne!(m.outcome(), Outcome::Fail, "{v:?}");
    assert!(m.reason.starts_with("sequential: "), "{v:?}");
    // Both p99s interpolated at 75 ms (halfway into the (50, 100] bucket).
    assert!(
        m.primary_value.is_some_and(|p| (p - 75.0).abs() < 5.0),
        "{v:?}"
    );
    assert!(m.value.is_some_and(|p| (p - 75.0).abs() < 5.0), "{v:?}");

    // A window threshold on the same metric judges the window while the judge continues, and
    // a sequential success rate beside it shares α; neither fails equal versions.
    let mut req = sequential_duration(end, run_start);
    req.metrics[0].max = Some(500.0);
    req.metrics.push(MetricCheck {
        name: "request-success-rate".into(),
        judge: "sequential".into(),
        ..MetricCheck::default()
    });
    let v = analyzer.analyze(&req).await;
    assert_ne!(v.outcome(), Outcome::Fail, "{v:?}");
    assert!(
        v.metrics.iter().all(|m| m.outcome() != Outcome::Error),
        "{v:?}"
    );
    // The success rate was counted per slice of the run, from Prometheus: every request a
    // success on both sides, but fewer than six slices, so no decision, which holds the step
    // (inconclusive), never passes it.
    let rate = &v.metrics[1];
    assert_eq!(rate.outcome(), Outcome::Inconclusive, "{v:?}");
    assert!(rate.reason.contains("no decision yet"), "{v:?}");
    assert!(
        close(rate.value, 100.0) && close(rate.primary_value, 100.0),
        "{v:?}"
    );
    assert!(!v.decisive, "{v:?}");
    assert!(rate.judge_undecided, "{v:?}");

    // With a thresholdRange the undecided rate is judged on its window alone, and says so:
    // such a pass passes a step but does not end the walk before inconclusiveHold.
    req.metrics[1].min = Some(99.0);
    let v = analyzer.analyze(&req).await;
    let rate = &v.metrics[1];
    assert_eq!(rate.outcome(), Outcome::Pass, "{v:?}");
    assert!(rate.judge_undecided, "{v:?}");
    assert!(!v.decisive, "{v:?}");
}
