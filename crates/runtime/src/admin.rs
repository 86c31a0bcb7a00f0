//! The admin HTTP server every service runs: liveness (`/healthz`), readiness (`/readyz`) and
//! Prometheus metrics (`/metrics`, OpenMetrics text) from the service's own registry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Whether the service is ready to take work; shared between the service and its admin server.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the service ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the service reported itself ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    ready: Readiness,
}

/// A bound admin server; `serve` runs it until the shutdown token fires.
pub struct AdminServer {
    listener: TcpListener,
    state: AdminState,
}

impl AdminServer {
    /// Binds the admin address. Port 0 picks a free port (see [`AdminServer::local_addr`]).
    ///
    /// Fails when the address cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        registry: Registry,
        ready: Readiness,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            state: AdminState {
                registry: Arc::new(registry),
                ready,
            },
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.state);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }

    /// Spawns [`AdminServer::serve`] and returns the bound address.
    ///
    /// Fails when the address cannot be bound.
    pub async fn spawn(
        addr: SocketAddr,
        registry: Registry,
        ready: Readiness,
        shutdown: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let server = Self::bind(addr, registry, ready).await?;
        let local = server.local_addr()?;
        tracing::info!(addr = %local, "admin server listening");
        tokio::spawn(async move {
            if let Err(error) = server.serve(shutdown).await {
                tracing::error!(%error, "admin server failed");
            }
        });
        Ok(local)
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// A fresh registry whose metrics all carry the `aviary_` prefix.
pub fn registry() -> Registry {
    Registry::with_prefix("aviary")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[tokio::test]
    async fn serves_health_readiness_and_metrics() {
        let mut registry = registry();
        let counter: Counter = Counter::default();
        registry.register("test_things", "Things counted by the test", counter.clone());
        counter.inc_by(3);
        let ready = Readiness::default();
        let shutdown = CancellationToken::new();
        let addr = AdminServer::spawn(
            "127.0.0.1:0".parse().unwrap(),
            registry,
            ready.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let base = format!("http://{addr}");
        let client = reqwest::Client::new();

        let health = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        let not_ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(not_ready.status(), 503);
        ready.set(true);
        let now_ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(now_ready.status(), 200);
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("aviary_test_things_total 3"), "{metrics}");

        shutdown.cancel();
    }
}
