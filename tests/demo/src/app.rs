//! `aviary-demo-app`: answers `GET /` with its version, fails a configured share of requests
//! with HTTP 500, adds a configured latency, and exposes Prometheus metrics on `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rand::Rng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How the app behaves.
#[derive(Debug, Clone, clap::Args)]
pub struct AppConfig {
    /// Address to listen on.
    #[arg(long, env = "DEMO_LISTEN", default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// Version string the app reports (`GET /` answers `<version>`).
    #[arg(long, env = "DEMO_VERSION", default_value = "v1")]
    pub version: String,
    /// Share of requests answered with HTTP 500, from 0.0 to 1.0.
    #[arg(long, env = "DEMO_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,
    /// Latency added to every request, in milliseconds.
    #[arg(long, env = "DEMO_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: u16,
}

struct AppState {
    config: AppConfig,
    requests: Family<CodeLabels, Counter>,
    mirrored: Counter,
    duration: Histogram,
    registry: Registry,
}

/// Serves the app on an already bound listener until `shutdown` fires.
///
/// Fails when the server cannot accept connections.
pub async fn serve(
    listener: TcpListener,
    config: AppConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut registry = Registry::with_prefix("demo");
    let requests = Family::<CodeLabels, Counter>::default();
    let mirrored = Counter::default();
    let duration = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]);
    registry.register(
        "http_requests",
        "Requests served, by status code",
        requests.clone(),
    );
    registry.register(
        "mirrored_requests",
        "Requests that arrived as mirrored copies",
        mirrored.clone(),
    );
    registry.register(
        "http_request_duration_seconds",
        "Time to answer",
        duration.clone(),
    );
    let state = Arc::new(AppState {
        config,
        requests,
        mirrored,
        duration,
        registry,
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(handle)
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn handle(State(state): State<Arc<AppState>>, headers: HeaderMap) -> impl IntoResponse {
    let started = Instant::now();
    if state.config.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(state.config.latency_ms)).await;
    }
    // Envoy marks mirrored copies by appending `-shadow` to the authority.
    let shadow = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.contains("-shadow"));
    if shadow {
        state.mirrored.inc();
    }
    let fail =
        state.config.error_rate > 0.0 && rand::rng().random::<f64>() < state.config.error_rate;
    let code = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    state
        .requests
        .get_or_create(&CodeLabels {
            code: code.as_u16(),
        })
        .inc();
    state.duration.observe(started.elapsed().as_secs_f64());
    (
        code,
        [("x-version", state.config.version.clone())],
        format!("{}\n", state.config.version),
    )
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (StatusCode::OK, body),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
