//! Test harness for Aviary: the real infrastructure, on loopback, on ephemeral ports, in
//! temporary directories.
//!
//! - [`NatsServer`] runs a real `nats-server` with JetStream, for bus, KV and stream tests,
//!   with [`NatsServer::kill`], [`NatsServer::stop`] and [`NatsServer::restart`] for fault tests;
//!   [`NatsCluster`] routes several into one JetStream cluster and finds a stream's leader;
//!   [`NatsHub`] is a hub with leaf-node servers, one per member cluster.
//! - [`Process`] is the building block for every such component (nats-server today; Envoy,
//!   Prometheus, NGINX and HAProxy the same way): spawn with arguments, capture its output to a
//!   log file that is printed when something fails, poll a readiness probe against a deadline,
//!   kill on drop.
//! - [`browser::Browser`] is a headless Chromium behind its own chromedriver, driven over W3C
//!   WebDriver, for tests of web pages.
//! - [`kube::FakeKube`] is an in-memory Kubernetes API server that a real `kube::Client` talks
//!   to, for controller tests.
//! - [`otlp::OtlpReceiver`] takes the spans services export over OTLP/gRPC, for trace tests.
//! - [`free_port`] and [`tool_path`] find a port and a binary; [`eventually`] polls a condition
//!   in a test instead of sleeping.
//!
//! Binaries come from `scripts/bootstrap.sh` (`<workspace>/.tools/bin`), or from the system.
// Real processes on real time: deadlines here are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]

pub mod browser;
pub mod envoy;
pub mod haproxy;
pub mod kube;
mod leaf;
mod nats;
pub mod nginx;
pub mod otlp;
mod process;
pub mod prometheus;
mod service;
pub mod tls;
pub mod victoria;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use leaf::NatsHub;
pub use nats::{NatsCluster, NatsServer};
pub use process::{Process, free_port, tool_path};
pub use service::Service;

/// What can go wrong while starting or driving a test component.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// The binary was found nowhere; `hint` says how to install it.
    #[error("{name} not found (looked in {searched:?}); {hint}")]
    ToolNotFound {
        /// The binary's name, e.g. `nats-server`.
        name: String,
        /// Every place that was looked at.
        searched: Vec<PathBuf>,
        /// How to get it.
        hint: String,
    },
    /// The process could not be spawned, signalled or its files written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The process exited before it became ready.
    #[error("{name} exited before it was ready ({status}); log:\n{log}")]
    Exited {
        /// The component.
        name: String,
        /// Its exit status.
        status: String,
        /// Its captured output.
        log: String,
    },
    /// The readiness probe did not pass before the deadline.
    #[error("{name} not ready after {after:?}; log:\n{log}")]
    NotReady {
        /// The component.
        name: String,
        /// The deadline that passed.
        after: Duration,
        /// Its captured output.
        log: String,
    },
    /// A WebDriver command failed.
    #[error("WebDriver {command}: {error}: {message}")]
    WebDriver {
        /// The command's path.
        command: String,
        /// WebDriver's error code, e.g. `no such element`.
        error: String,
        /// Its message.
        message: String,
    },
    /// A client could not connect to a component that was started.
    #[error("connecting to {url}: {reason}")]
    Connect {
        /// Where.
        url: String,
        /// Why not.
        reason: String,
    },
}

impl TestkitError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = TestkitError> = std::result::Result<T, E>;

/// How often [`eventually`] and readiness probes poll: fast enough that tests do not wait on
/// the poll, slow enough not to starve two cores.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Polls `f` every [`POLL_INTERVAL`] until it returns `Ok`, and returns that; when `deadline`
/// (wall-clock time) passes first, returns the last `Err`, so that the test can report what was
/// still wrong rather than only that time ran out.
pub async fn eventually_or<F, Fut, T, E>(deadline: Duration, mut f: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    loop {
        let last = f().await;
        if last.is_ok() || started.elapsed() >= deadline {
            return last;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls `f` every [`POLL_INTERVAL`] until it returns `Some`, and returns that value.
///
/// # Panics
/// Panics with `what` when `deadline` (wall-clock time, so a paused tokio clock does not cut it
/// short) passes without a `Some`.
pub async fn eventually<F, Fut, T>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = f().await {
            return value;
        }
        if started.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
