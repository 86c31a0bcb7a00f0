//! `aviary-load`: sends requests at a fixed rate and counts what came back, by the version each
//! response reports and by status code. Prints a JSON summary when it stops.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// What to send.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadConfig {
    /// URL to request.
    #[arg(long, env = "LOAD_URL", default_value = "http://127.0.0.1:10000/")]
    pub url: String,
    /// Requests per second.
    #[arg(long, env = "LOAD_RPS", default_value_t = 50)]
    pub rps: u32,
    /// Stop after this many seconds (0: until interrupted).
    #[arg(long, env = "LOAD_DURATION_S", default_value_t = 0)]
    pub duration_s: u64,
    /// Per-request timeout in milliseconds.
    #[arg(long, env = "LOAD_TIMEOUT_MS", default_value_t = 2_000)]
    pub timeout_ms: u64,
    /// Extra request header `name: value` (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,
}

/// What the traffic saw.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Requests sent.
    pub sent: u64,
    /// Responses by reported version (the `x-version` header), `none` when absent.
    pub by_version: BTreeMap<String, u64>,
    /// Responses by HTTP status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests that got no response (connection error or timeout).
    pub errors: u64,
}

/// Sends load until `shutdown` fires or the duration passes; returns the summary.
///
/// Fails when the HTTP client cannot be built or a header is malformed.
pub async fn run(config: LoadConfig, shutdown: CancellationToken) -> anyhow::Result<Summary> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.timeout_ms))
        .build()?;
    let mut headers = reqwest::header::HeaderMap::new();
    for raw in &config.headers {
        let (name, value) = raw
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("header {raw:?}: expected name: value"))?;
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())?,
            reqwest::header::HeaderValue::from_str(value.trim())?,
        );
    }
    let summary = Arc::new(Mutex::new(Summary::default()));
    let period = Duration::from_secs_f64(1.0 / f64::from(config.rps.max(1)));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = (config.duration_s > 0)
        .then(|| tokio::time::Instant::now() + Duration::from_secs(config.duration_s));
    let in_flight = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let request = client.get(&config.url).headers(headers.clone());
        let summary = summary.clone();
        in_flight.spawn(async move {
            let outcome = request.send().await;
            let mut s = summary
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.sent += 1;
            match outcome {
                Ok(response) => {
                    let version = response
                        .headers()
                        .get("x-version")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_owned();
                    *s.by_version.entry(version).or_default() += 1;
                    *s.by_status.entry(response.status().as_u16()).or_default() += 1;
                }
                Err(_) => s.errors += 1,
            }
        });
    }
    in_flight.close();
    in_flight.wait().await;
    let summary = summary
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(summary)
}
