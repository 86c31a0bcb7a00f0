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
//!
//! With `--tokens-file` (the scheduler's format: `<token> <read|operator> <identity>` per
//! line) the writes (`open`, `close`) need `Authorization: Bearer <operator token>`: 401
//! without a known token, 403 for a `read` token. The queries (`check`, `approve`, `halt`) stay
//! open to any caller, since the analyzer's webhooks that call them carry no bearer token.
//! Without a tokens file every caller may write, and the service says so at start.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use aviary_bus::kv::Bucket;
use aviary_bus::{NatsArgs, names};
use aviary_runtime::CommonArgs;
use aviary_runtime::admin::{AdminServer, Readiness};
use aviary_runtime::clock::now_ms_i64 as now_ms;
use aviary_runtime::tokens::{AuthError, Role, Tokens};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
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

    /// Replicas of the JetStream streams and buckets created at start.
    #[command(flatten)]
    pub jetstream: aviary_bus::JetStreamArgs,

    /// Address the gate endpoints listen on.
    #[arg(
        long,
        env = "AVIARY_GATE_LISTEN_ADDR",
        default_value = "127.0.0.1:8090"
    )]
    pub listen_addr: SocketAddr,

    /// Bearer tokens file (`<token> <read|operator> <identity>` per line, as the scheduler's):
    /// opening and closing gates then needs an operator token. Open to every caller when unset.
    #[arg(long, env = "AVIARY_GATE_TOKENS_FILE", value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
}

/// The caller's identity when its `Authorization` header names a token whose role is at
/// least `needs` (`anonymous` when authentication is off).
///
/// # Errors
/// 401 for a missing or unknown token, 403 for a role below `needs`.
pub fn authorize(tokens: &Tokens, headers: &HeaderMap, needs: Role) -> Result<String, StatusCode> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    match tokens.authorize(header, "gate write", needs) {
        Ok(caller) => Ok(caller.identity),
        Err(AuthError::Unauthenticated) => Err(StatusCode::UNAUTHORIZED),
        Err(AuthError::PermissionDenied { identity, role, .. }) => {
            tracing::warn!(%identity, ?role, "gate write refused: needs operator");
            Err(StatusCode::FORBIDDEN)
        }
    }
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
    tokens: Tokens,
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

    async fn set(&self, payload: &GatePayload, gate: Gate, open: bool, actor: &str) -> StatusCode {
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
                tracing::info!(%key, open, %actor, "gate set");
                StatusCode::OK
            }
            Err(error) => {
                tracing::warn!(%key, %error, "writing a gate");
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
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

async fn set(
    store: &GateStore,
    headers: &HeaderMap,
    body: &[u8],
    gate: Gate,
    open: bool,
) -> StatusCode {
    let actor = match authorize(&store.tokens, headers, Role::Operator) {
        Ok(actor) => actor,
        Err(code) => return code,
    };
    match parse(body) {
        Ok(payload) => store.set(&payload, gate, open, &actor).await,
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
            post(|State(s): S, h: HeaderMap, b: axum::body::Bytes| async move {
                set(&s, &h, &b, Gate::Confirm, true).await
            }),
        )
        .route(
            "/gate/close",
            post(|State(s): S, h: HeaderMap, b: axum::body::Bytes| async move {
                set(&s, &h, &b, Gate::Confirm, false).await
            }),
        )
        .route(
            "/rollback/check",
            post(|State(s): S, b: axum::body::Bytes| async move { check(&s, &b, Gate::Rollback).await }),
        )
        .route(
            "/rollback/open",
            post(|State(s): S, h: HeaderMap, b: axum::body::Bytes| async move {
                set(&s, &h, &b, Gate::Rollback, true).await
            }),
        )
        .route(
            "/rollback/close",
            post(|State(s): S, h: HeaderMap, b: axum::body::Bytes| async move {
                set(&s, &h, &b, Gate::Rollback, false).await
            }),
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
/// When the tokens file cannot be used, NATS cannot be reached, the bucket cannot be created or
/// an address cannot be bound.
pub async fn start_gate(
    config: GateConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningGate> {
    let tokens = match &config.tokens_file {
        Some(path) => {
            Tokens::load(path).with_context(|| format!("tokens file {}", path.display()))?
        }
        None => {
            tracing::warn!("no tokens file: every caller may open and close gates");
            Tokens::default()
        }
    };
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
        .connect_reporting("aviary-gate", ready.condition("nats").reporter())
        .await
        .context("connecting to NATS")?;
    let js = async_nats::jetstream::new(client);
    aviary_bus::setup::ensure_all_with(&js, &config.jetstream.options())
        .await
        .context("creating the streams and buckets")?;
    let bucket = Bucket::open(&js, names::BUCKET_GATES)
        .await
        .context("opening the gates bucket")?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("binding {}", config.listen_addr))?;
    let addr = listener.local_addr()?;
    let app = router(GateStore { bucket, tokens });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_need_an_operator_token() {
        let tokens = Tokens::parse("r read auditor\nop operator alice\n").unwrap_or_default();
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            if let Ok(v) = value.parse() {
                headers.insert(axum::http::header::AUTHORIZATION, v);
            }
            headers
        };
        assert_eq!(
            authorize(&tokens, &HeaderMap::new(), Role::Operator),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            authorize(&tokens, &with("Bearer nope"), Role::Operator),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            authorize(&tokens, &with("Bearer r"), Role::Operator),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            authorize(&tokens, &with("Bearer op"), Role::Operator),
            Ok("alice".to_owned())
        );
        assert_eq!(
            authorize(&Tokens::default(), &HeaderMap::new(), Role::Operator),
            Ok("anonymous".to_owned())
        );
    }
}
