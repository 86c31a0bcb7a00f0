//! The admin HTTP server every service runs: liveness (`/healthz`), readiness (`/readyz`) and
//! Prometheus metrics (`/metrics`, OpenMetrics text) from the service's own registry.
//!
//! Readiness is the service's own flag ([`Readiness::set`]: started, not draining) and every
//! [`Condition`] it depends on, such as its NATS connection: `/readyz` answers 200 only while
//! all hold, and names the conditions that do not.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
pub struct Readiness(Arc<ReadinessInner>);

#[derive(Debug, Default)]
struct ReadinessInner {
    ready: AtomicBool,
    conditions: Mutex<Vec<Condition>>,
}

impl Readiness {
    /// Marks the service ready (or not). It is reported ready only while its conditions hold
    /// too.
    pub fn set(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Release);
    }

    /// Whether the service reported itself ready and every condition holds.
    pub fn get(&self) -> bool {
        self.0.ready.load(Ordering::Acquire) && self.unmet().is_empty()
    }

    /// A new condition the service's readiness depends on, named `name` in `/readyz`. It
    /// starts unmet.
    pub fn condition(&self, name: &'static str) -> Condition {
        let condition = Condition {
            name,
            met: Arc::new(AtomicBool::new(false)),
        };
        self.0
            .conditions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(condition.clone());
        condition
    }

    /// The names of the conditions that do not hold.
    pub fn unmet(&self) -> Vec<&'static str> {
        self.0
            .conditions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|c| !c.get())
            .map(|c| c.name)
            .collect()
    }
}

/// One thing readiness depends on (e.g. `nats`: the connection is up); see
/// [`Readiness::condition`]. Clones share the state.
#[derive(Debug, Clone)]
pub struct Condition {
    name: &'static str,
    met: Arc<AtomicBool>,
}

impl Condition {
    /// Records whether the condition holds.
    pub fn set(&self, met: bool) {
        self.met.store(met, Ordering::Release);
    }

    /// Whether it holds.
    pub fn get(&self) -> bool {
        self.met.load(Ordering::Acquire)
    }

    /// A callback recording whether the condition holds, for code that reports through one
    /// (e.g. `aviary_bus::NatsArgs::connect_reporting`).
    pub fn reporter(&self) -> impl Fn(bool) + Send + Sync + 'static {
        let condition = self.clone();
        move |met| condition.set(met)
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
    let unmet = state.ready.unmet();
    if state.ready.get() {
        (StatusCode::OK, "ready\n".to_owned())
    } else if unmet.is_empty() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {} down\n", unmet.join(", ")),
        )
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

        // A condition that stops holding takes readiness away, and names itself.
        let nats = ready.condition("nats");
        let down = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(down.status(), 503);
        assert_eq!(down.text().await.unwrap(), "not ready: nats down\n");
        nats.set(true);
        let up = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(up.status(), 200);
        nats.set(false);
        assert!(!ready.get());
        nats.set(true);
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
