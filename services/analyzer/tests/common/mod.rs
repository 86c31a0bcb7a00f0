//! Shared fixtures: an in-test server exposing Envoy-shaped metrics whose rates the test sets,
//! analyzers and requests.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aviary_analyzer::analysis::{Analyzer, AnalyzerOptions};
use aviary_analyzer::builtin::Mesh;
use aviary_analyzer::metrics::AnalyzerMetrics;
use aviary_analyzer::provider::prometheus::PrometheusConfig;
use aviary_analyzer::webhook::WebhookClient;
use aviary_proto::{AnalysisRequest, MetricCheck, RolloutRef};
use axum::Router;
use axum::extract::State;
use axum::routing::get;

/// Histogram bucket bounds (ms), as Envoy's defaults start.
pub(crate) const BUCKETS: [f64; 5] = [10.0, 25.0, 50.0, 100.0, 250.0];

/// What one cluster serves per second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rates {
    pub ok_per_s: f64,
    pub err_per_s: f64,
    /// Observations per second in each bucket (not cumulative), same order as [`BUCKETS`].
    pub latency_per_s: [f64; 5],
}

impl Rates {
    /// `total` requests a second, `error_percent` of them 5xx, latency spread so p99 is 75 ms
    /// (50 % ≤ 10 ms, 48 % in (25, 50], 2 % in (50, 100]; rank 0.99 is halfway into the last).
    pub(crate) fn new(total: f64, error_percent: f64) -> Self {
        let err = total * error_percent / 100.0;
        Self {
            ok_per_s: total - err,
            err_per_s: err,
            latency_per_s: [total * 0.5, 0.0, total * 0.48, total * 0.02, 0.0],
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cluster {
    rates: Rates,
    ok: f64,
    err: f64,
    buckets: [f64; 5],
}

#[derive(Debug)]
struct FakeState {
    last: Instant,
    clusters: BTreeMap<String, Cluster>,
    scrapes: u64,
}

impl FakeState {
    fn advance(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        for c in self.clusters.values_mut() {
            c.ok += c.rates.ok_per_s * dt;
            c.err += c.rates.err_per_s * dt;
            for (b, r) in c.buckets.iter_mut().zip(c.rates.latency_per_s) {
                *b += r * dt;
            }
        }
    }
}

/// Serves `/metrics` in Envoy's shape for clusters whose rates the test controls. Counters
/// grow continuously with wall time at the set rates, so ratios over any window are exact.
#[derive(Clone)]
pub(crate) struct FakeEnvoyMetrics {
    state: Arc<Mutex<FakeState>>,
    pub addr: SocketAddr,
}

impl FakeEnvoyMetrics {
    pub(crate) async fn start(clusters: &[(&str, Rates)]) -> Self {
        let state = Arc::new(Mutex::new(FakeState {
            last: Instant::now(),
            clusters: clusters
                .iter()
                .map(|(name, rates)| {
                    (
                        (*name).to_owned(),
                        Cluster {
                            rates: *rates,
                            ok: 0.0,
                            err: 0.0,
                            buckets: [0.0; 5],
                        },
                    )
                })
                .collect(),
            scrapes: 0,
        }));
        let app = Router::new()
            .route("/metrics", get(render))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { state, addr }
    }

    /// Changes a cluster's rates from this instant on.
    pub(crate) fn set_rates(&self, cluster: &str, rates: Rates) {
        let mut s = self.state.lock().unwrap();
        s.advance();
        s.clusters.get_mut(cluster).unwrap().rates = rates;
    }

    /// Adds `ok` successes and `err` 5xx to a cluster's counters at this instant.
    pub(crate) fn add(&self, cluster: &str, ok: f64, err: f64) {
        let mut s = self.state.lock().unwrap();
        s.advance();
        let c = s.clusters.get_mut(cluster).unwrap();
        c.ok += ok;
        c.err += err;
        c.buckets[0] += ok + err;
    }

    /// Scrapes served so far.
    pub(crate) fn scrapes(&self) -> u64 {
        self.state.lock().unwrap().scrapes
    }

    /// Waits until `n` more scrapes have been served (polling, with a deadline).
    pub(crate) async fn wait_scrapes(&self, n: u64) {
        let target = self.scrapes() + n;
        aviary_testkit::eventually(Duration::from_secs(60), "scrapes", || async {
            (self.scrapes() >= target).then_some(())
        })
        .await;
    }
}

async fn render(State(state): State<Arc<Mutex<FakeState>>>) -> String {
    let mut s = state.lock().unwrap();
    s.advance();
    s.scrapes += 1;
    let mut out = String::from("# TYPE envoy_cluster_upstream_rq_xx counter\n");
    for (name, c) in &s.clusters {
        out.push_str(&format!(
            "envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"2\",envoy_cluster_name=\"{name}\"}} {}\n",
            c.ok
        ));
        // Like Envoy, the 5xx series exists only once a 5xx happened.
        if c.err > 0.0 {
            out.push_str(&format!(
                "envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"5\",envoy_cluster_name=\"{name}\"}} {}\n",
                c.err
            ));
        }
    }
    out.push_str("# TYPE envoy_cluster_upstream_rq_completed counter\n");
    for (name, c) in &s.clusters {
        out.push_str(&format!(
            "envoy_cluster_upstream_rq_completed{{envoy_cluster_name=\"{name}\"}} {}\n",
            c.ok + c.err
        ));
    }
    out.push_str("# TYPE envoy_cluster_upstream_rq_time histogram\n");
    for (name, c) in &s.clusters {
        let mut cumulative = 0.0;
        for (le, b) in BUCKETS.iter().zip(c.buckets) {
            cumulative += b;
            out.push_str(&format!(
                "envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name=\"{name}\",le=\"{le}\"}} {cumulative}\n"
            ));
        }
        out.push_str(&format!(
            "envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name=\"{name}\",le=\"+Inf\"}} {cumulative}\n"
        ));
        out.push_str(&format!(
            "envoy_cluster_upstream_rq_time_sum{{envoy_cluster_name=\"{name}\"}} {}\n",
            cumulative * 20.0
        ));
        out.push_str(&format!(
            "envoy_cluster_upstream_rq_time_count{{envoy_cluster_name=\"{name}\"}} {cumulative}\n"
        ));
    }
    out
}

pub(crate) fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

pub(crate) fn analyzer(prometheus_url: &str) -> Analyzer {
    analyzer_with(PrometheusConfig::new(prometheus_url))
}

pub(crate) fn analyzer_with(config: PrometheusConfig) -> Analyzer {
    Analyzer::new(
        AnalyzerOptions {
            prometheus: config,
            mesh: Mesh::Envoy,
            max_in_flight_per_backend: 8,
            webhooks: WebhookClient::new(None)
                .unwrap()
                .with_backoff(Duration::from_millis(10)),
        },
        AnalyzerMetrics::unregistered(),
    )
    .unwrap()
    // The testkit's Prometheus scrapes every second.
    .with_scrape_interval(Duration::from_secs(1))
}

/// A request for rollout test/podinfo: primary podinfo-v1, canary podinfo-v2.
pub(crate) fn request(
    window_start_ms: i64,
    window_end_ms: i64,
    metrics: Vec<MetricCheck>,
) -> AnalysisRequest {
    AnalysisRequest {
        idempotency_key: "test/podinfo/1/0".into(),
        rollout: Some(RolloutRef::new("test", "podinfo")),
        generation: 1,
        step: 0,
        window_start_ms,
        window_end_ms,
        metrics,
        webhooks: Vec::new(),
        variables: [("canary", "podinfo-v2"), ("primary", "podinfo-v1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        phase: "Progressing".into(),
        checksum: "abc123".into(),
    }
}

pub(crate) fn success_rate_min(min: f64) -> MetricCheck {
    MetricCheck {
        name: "request-success-rate".into(),
        min: Some(min),
        ..MetricCheck::default()
    }
}

pub(crate) fn duration_max(max: f64) -> MetricCheck {
    MetricCheck {
        name: "request-duration".into(),
        max: Some(max),
        ..MetricCheck::default()
    }
}
