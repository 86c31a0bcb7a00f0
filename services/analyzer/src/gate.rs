//! `aviary-gate`: durable manual gates, like Flagger's load-tester gates, with their state in
//! the NATS KV bucket `aviary_gates` so a restart (of the gate service or of NATS) keeps it.
//!
//! Every endpoint is a `POST` taking Flagger's webhook payload (`{name, namespace, …}`), so a
//! rollout's webhooks point straight at it:
//!
//! | endpoint | answer |
//! |---|---|
//! | `/gate/approve` | 200 always |
//! | `/gate/halt` | 403 always |
//! | `/gate/check` | 200 when the rollout's gate is open, else 403 (closed by default) |
//! | `/gate/open`, `/gate/close` | 200 after storing the gate's state |
//! | `/rollback/check` | 200 when a rollback was asked for (`/rollback/open`), else 403 |
//! | `/rollback/open`, `/rollback/close` | 200 after storing the state |
//!
//! A bad payload is 400. When the store cannot be read the answer is 503: a `confirm-*` hook
//! reads any non-2xx as "closed", so an outage halts rather than opens.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use aviary_bus::kv::Bucket;
use aviary_bus::{NatsArgs, names};
use aviary_runtime::CommonArgs;
use aviary_runtime::admin::{AdminServer, Readiness};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The gate service's flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aviary-gate",
    version,
    about = "Aviary durable gates for rollout webhooks"
)]
pub struct GateConfig {
    /// Admin server, logging, tracing, drain deadline.
    #[command(flatten)]
    pub common: CommonArgs,

    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,

    /// Address the gate endpoints listen on.
    #[arg(
        long,
        env = "AVIARY_GATE_LISTEN_ADDR",
        default_value = "127.0.0.1:8090"
    )]
    pub listen_addr: SocketAddr,
}

/// The two gates a rollout has here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The confirm gate (`/gate/*`).
    Confirm,
    /// The rollback request (`/rollback/*`).
    Rollback,
}

impl Gate {
    fn key_part(self) -> &'static str {
        match self {
            Self::Confirm => "confirm",
            Self::Rollback => "rollback",
        }
    }
}

/// A gate's stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateState {
    /// Open (confirm gate: advance; rollback gate: roll back).
    pub open: bool,
    /// When it was last changed, milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
}

/// The part of Flagger's payload the gates need.
#[derive(Debug, Deserialize)]
struct GatePayload {
    name: String,
    namespace: String,
}

#[derive(Clone)]
struct GateStore {
    bucket: Bucket<GateState>,
}

impl GateStore {
    fn key(payload: &GatePayload, gate: Gate) -> Result<String, StatusCode> {
        names::gate_key(&payload.namespace, &payload.name, gate.key_part())
            .map_err(|_| StatusCode::BAD_REQUEST)
    }

    async fn is_open(&self, payload: &GatePayload, gate: Gate) -> Result<bool, StatusCode> {
        let key = Self::key(payload, gate)?;
        match self.bucket.get(&key).await {
            Ok(entry) => Ok(entry.is_some_and(|e| e.value.open)),
            Err(error) => {
                tracing::warn!(%key, %error, "reading a gate");
                Err(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }

    async fn set(&self, payload: &GatePayload, gate: Gate, open: bool) -> StatusCode {
        let key = match Self::key(payload, gate) {
            Ok(key) => key,
            Err(code) => return code,
        };
        let state = GateState {
            open,
            updated_at_ms: now_ms(),
        };
        // A gate has one meaning per call ("open it now"), so last writer wins.
        match self.bucket.put(&key, &state).await {
            Ok(_) => {
                tracing::info!(%key, open, "gate set");
                StatusCode::OK
            }
            Err(error) => {
                tracing::warn!(%key, %error, "writing a gate");
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn parse(body: &[u8]) -> Result<GatePayload, StatusCode> {
    let payload: GatePayload = serde_json::from_slice(body).map_err(|_| StatusCode::BAD_REQUEST)?;
    if payload.name.is_empty() || payload.namespace.is_empty() {
        return Err(StatusCode::BAD_REQUEST);
    }
    Ok(payload)
}

async fn check(store: &GateStore, body: &[u8], gate: Gate) -> StatusCode {
    let payload = match parse(body) {
        Ok(p) => p,
        Err(code) => return code,
    };
    match store.is_open(&payload, gate).await {
        Ok(true) => StatusCode::OK,
        Ok(false) => StatusCode::FORBIDDEN,
        Err(code) => code,
    }
}

async fn set(store: &GateStore, body: &[u8], gate: Gate, open: bool) -> StatusCode {
    match parse(body) {
        Ok(payload) => store.set(&payload, gate, open).await,
        Err(code) => code,
    }
}

fn router(store: GateStore) -> Router {
    type S = State<GateStore>;
    Router::new()
        .route(
            "/gate/approve",
            post(|body: axum::body::Bytes| async move {
                parse(&body).map_or_else(|c| c, |_| StatusCode::OK)
            }),
        )
        .route(
            "/gate/halt",
            post(|body: axum::body::Bytes| async move {
                parse(&body).map_or_else(|c| c, |_| StatusCode::FORBIDDEN)
            }),
        )
        .route(
            "/gate/check",
            post(|State(s): S, b: axum::body::Bytes| async move { check(&s, &b, Gate::Confirm).await }),
        )
        .route(
            "/gate/open",
            post(|State(s): S, b: axum::body::Bytes| async move { set(&s, &b, Gate::Confirm, true).await }),
        )
        .route(
            "/gate/close",
            post(|State(s): S, b: axum::body::Bytes| async move { set(&s, &b, Gate::Confirm, false).await }),
        )
        .route(
            "/rollback/check",
            post(|State(s): S, b: axum::body::Bytes| async move { check(&s, &b, Gate::Rollback).await }),
        )
        .route(
            "/rollback/open",
            post(|State(s): S, b: axum::body::Bytes| async move { set(&s, &b, Gate::Rollback, true).await }),
        )
        .route(
            "/rollback/close",
            post(|State(s): S, b: axum::body::Bytes| async move { set(&s, &b, Gate::Rollback, false).await }),
        )
        .with_state(store)
}

/// A started gate service.
#[derive(Debug)]
pub struct RunningGate {
    /// Where the gate endpoints listen.
    pub addr: SocketAddr,
    /// Where the admin server listens.
    pub admin_addr: SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningGate {
    /// Waits until the service has stopped.
    ///
    /// # Errors
    /// When serving failed or the task panicked.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task
            .await
            .context("gate task panicked")?
            .context("serving gates")
    }
}

/// Connects to NATS, makes sure the buckets exist, and serves the gate endpoints in the
/// background until `shutdown` fires.
///
/// # Errors
/// When NATS cannot be reached, the bucket cannot be created or an address cannot be bound.
pub async fn start_gate(
    config: GateConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningGate> {
    let ready = Readiness::default();
    let admin_addr = AdminServer::spawn(
        config.common.admin_addr,
        aviary_runtime::admin::registry(),
        ready.clone(),
        shutdown.clone(),
    )
    .await
    .context("binding the admin server")?;
    let client = config
        .nats
        .connect("aviary-gate")
        .await
        .context("connecting to NATS")?;
    let js = async_nats::jetstream::new(client);
    aviary_bus::setup::ensure_all(&js)
        .await
        .context("creating the streams and buckets")?;
    let bucket = Bucket::open(&js, names::BUCKET_GATES)
        .await
        .context("opening the gates bucket")?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("binding {}", config.listen_addr))?;
    let addr = listener.local_addr()?;
    let app = router(GateStore { bucket });
    ready.set(true);
    tracing::info!(%addr, "gates listening");
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    Ok(RunningGate {
        addr,
        admin_addr,
        task,
    })
}

/// Runs the gate service until `shutdown` fires.
///
/// # Errors
/// As [`start_gate`].
pub async fn run_gate(config: GateConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    start_gate(config, shutdown).await?.wait().await
}
