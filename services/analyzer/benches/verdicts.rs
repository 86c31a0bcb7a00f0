//! Verdict throughput against a real Prometheus scraping an Envoy-shaped target.
//!
//! Prints JSON lines `{"name","value","unit"}`:
//! - `analyzer_verdicts_per_s_1` / `_2`: verdicts (two built-in metrics each, distinct windows
//!   so nothing is de-duplicated) per second with 1 and 2 requests in flight;
//! - `analyzer_dedupe_ratio`: share of queries answered without a backend call when 32
//!   identical requests arrive at once.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // a bench, like a test, stops at the first broken fixture

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aviary_proto::Outcome;
use aviary_testkit::prometheus::{Prometheus, ScrapeTarget};
use common::*;

const MEASURE: Duration = Duration::from_secs(3);

fn line(name: &str, value: f64, unit: &str) {
    println!(
        "{}",
        serde_json::json!({"name": name, "value": value, "unit": unit})
    );
}

async fn throughput(
    analyzer: Arc<aviary_analyzer::analysis::Analyzer>,
    in_flight: usize,
    end: i64,
) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..in_flight {
        let analyzer = analyzer.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut i = 0i64;
            while started.elapsed() < MEASURE {
                // A distinct window per request (1 ms apart), so every query hits Prometheus.
                let at = end - (i * in_flight as i64 + worker as i64);
                let v = analyzer
                    .analyze(&request(
                        at - 4_000,
                        at,
                        vec![success_rate_min(90.0), duration_max(500.0)],
                    ))
                    .await;
                assert_eq!(v.outcome(), Outcome::Pass, "{v:?}");
                done += 1;
                i += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("bench task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let fake = FakeEnvoyMetrics::start(&[
        ("test_podinfo-v2", Rates::new(1000.0, 1.0)),
        ("test_podinfo-v1", Rates::new(1000.0, 0.0)),
    ])
    .await;
    let prom = Prometheus::start(&[ScrapeTarget::new("envoy", fake.addr.to_string())])
        .await
        .expect("prometheus");
    prom.wait_for_data(
        r#"count_over_time(envoy_cluster_upstream_rq_xx{envoy_cluster_name="test_podinfo-v2"}[1m]) >= 8"#,
        Duration::from_secs(60),
    )
    .await
    .expect("data");
    let end = now_ms() - 500;
    let analyzer = Arc::new(analyzer(&prom.url()));
    // Warm up the connection pool.
    throughput(analyzer.clone(), 1, end).await;
    line(
        "analyzer_verdicts_per_s_1",
        throughput(analyzer.clone(), 1, end).await,
        "verdicts/s",
    );
    line(
        "analyzer_verdicts_per_s_2",
        throughput(analyzer.clone(), 2, end).await,
        "verdicts/s",
    );

    let fresh = Arc::new(common::analyzer(&prom.url()));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let a = fresh.clone();
            tokio::spawn(async move {
                a.analyze(&request(
                    end - 4_000,
                    end,
                    vec![success_rate_min(90.0), duration_max(500.0)],
                ))
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("dedupe task");
    }
    let m = fresh.metrics();
    let dedup = m.deduplicated.get() as f64;
    let total = 32.0 * 2.0;
    line("analyzer_dedupe_ratio", dedup / total, "ratio");
}
