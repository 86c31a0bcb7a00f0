//! A real single-node VictoriaMetrics for one test: loopback, an ephemeral port, its storage in
//! a temporary directory, scraping the targets the test gives every second; killed and cleaned
//! on drop. Its HTTP API is Prometheus-compatible (`/api/v1/query`), which is what the
//! analyzer's `victoriametrics` provider relies on.
//!
//! Readiness is `GET /health` answering 200. As with [`Prometheus`](crate::prometheus), data is
//! not there at once: [`VictoriaMetrics::wait_for_data`] polls until a query returns a series.
//!
//! ```no_run
//! # async fn t() -> aviary_testkit::Result<()> {
//! use aviary_testkit::prometheus::ScrapeTarget;
//! use aviary_testkit::victoria::VictoriaMetrics;
//! let vm = VictoriaMetrics::start(&[ScrapeTarget::new("app", "127.0.0.1:9901")]).await?;
//! vm.wait_for_data("up", std::time::Duration::from_secs(30)).await?;
//! # Ok(()) }
//! ```

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{Process, free_port, tool_path};
use crate::prometheus::{ScrapeTarget, http_get, percent_encode};
use crate::{POLL_INTERVAL, Result, TestkitError};

/// How long a starting VictoriaMetrics may take to be ready (well under a second; the margin is
/// for a machine busy compiling).
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Attempts at finding a free port when another process takes it first.
const PORT_ATTEMPTS: usize = 5;

/// The scrape interval: short, so tests wait seconds, not minutes.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// A running VictoriaMetrics.
#[derive(Debug)]
pub struct VictoriaMetrics {
    // Declared before `dir` so the process is killed before its storage is removed.
    process: Process,
    port: u16,
    dir: TempDir,
}

impl VictoriaMetrics {
    /// Starts VictoriaMetrics scraping `targets` every [`SCRAPE_INTERVAL`], and waits until it
    /// is ready.
    ///
    /// The binary is `$AVIARY_VICTORIA_METRICS`, else `<workspace>/.tools/bin/victoria-metrics`,
    /// else the system's (Debian package `victoria-metrics`).
    ///
    /// # Errors
    /// [`TestkitError::ToolNotFound`] without a binary; [`TestkitError::Exited`] /
    /// [`TestkitError::NotReady`] when it does not come up.
    pub async fn start(targets: &[ScrapeTarget]) -> Result<Self> {
        let bin = tool_path("victoria-metrics")?;
        let dir = tempfile::Builder::new()
            .prefix("aviary-victoria-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating a temp dir", e))?;
        let config = dir.path().join("scrape.yml");
        std::fs::write(&config, config_yaml(targets))
            .map_err(|e| TestkitError::io("writing scrape.yml", e))?;
        let mut last_error = None;
        for attempt in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let log = dir.path().join(format!("victoria-{attempt}.log"));
            match launch(&bin, port, &config, &dir.path().join("data"), &log).await {
                Ok(process) => return Ok(Self { process, port, dir }),
                Err(e @ TestkitError::Exited { .. }) if is_port_clash(&e) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            TestkitError::io(
                "finding a free port",
                std::io::Error::other("no attempts made"),
            )
        }))
    }

    /// `http://127.0.0.1:<port>`: the base URL of its Prometheus-compatible API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the scrape config and the storage.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything VictoriaMetrics has logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Runs an instant query now and returns the API's JSON answer.
    ///
    /// # Errors
    /// [`TestkitError::Io`] when the request fails or the answer is not JSON.
    pub async fn query(&self, promql: &str) -> Result<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = http_get(self.port, &path)
            .await
            .map_err(|e| TestkitError::io(format!("querying {promql}"), e))?;
        serde_json::from_slice(&body).map_err(|e| {
            TestkitError::io(
                format!("decoding the answer (HTTP {status}) to {promql}"),
                std::io::Error::other(e),
            )
        })
    }

    /// Polls `promql` until it returns at least one series, and returns the answer's
    /// `data.result`.
    ///
    /// # Errors
    /// [`TestkitError::NotReady`] (with the log) when `deadline` passes first.
    pub async fn wait_for_data(
        &self,
        promql: &str,
        deadline: Duration,
    ) -> Result<Vec<serde_json::Value>> {
        let started = Instant::now();
        loop {
            if let Ok(answer) = self.query(promql).await
                && let Some(result) = answer.pointer("/data/result").and_then(|r| r.as_array())
                && !result.is_empty()
            {
                return Ok(result.clone());
            }
            if started.elapsed() >= deadline {
                return Err(TestkitError::NotReady {
                    name: format!("victoria-metrics data for `{promql}`"),
                    after: deadline,
                    log: self.log(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL.max(Duration::from_millis(100))).await;
        }
    }
}

/// A Prometheus-style scrape config. VictoriaMetrics rejects fields it does not know
/// (`evaluation_interval`), so this is not the Prometheus harness's file.
fn config_yaml(targets: &[ScrapeTarget]) -> String {
    let secs = SCRAPE_INTERVAL.as_secs();
    let mut yaml = format!(
        "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {secs}s\nscrape_configs:\n"
    );
    for t in targets {
        // JSON strings are valid YAML scalars, so names and paths need no further escaping.
        yaml.push_str(&format!(
            "  - job_name: {}\n    metrics_path: {}\n    static_configs:\n      - targets: [{}]\n",
            serde_json::Value::from(t.job.as_str()),
            serde_json::Value::from(t.metrics_path.as_str()),
            serde_json::Value::from(t.address.as_str()),
        ));
    }
    yaml
}

async fn launch(
    bin: &Path,
    port: u16,
    config: &Path,
    data: &Path,
    log_path: &Path,
) -> Result<Process> {
    let args: Vec<OsString> = vec![
        format!("-httpListenAddr=127.0.0.1:{port}").into(),
        format!("-storageDataPath={}", data.display()).into(),
        format!("-promscrape.config={}", config.display()).into(),
        // By default the newest 30 s are hidden from queries (for late samples from remote
        // writers); tests query data scraped a second ago.
        "-search.latencyOffset=0s".into(),
        // Repeated queries over a moving window must see new samples, not a cached answer.
        "-search.disableCache".into(),
        "-loggerLevel=WARN".into(),
    ];
    let mut process = Process::spawn("victoria-metrics", bin, args, log_path)?;
    process
        .wait_ready(READY_DEADLINE, || async move {
            matches!(http_get(port, "/health").await, Ok((200, _)))
        })
        .await?;
    Ok(process)
}

fn is_port_clash(error: &TestkitError) -> bool {
    matches!(error, TestkitError::Exited { log, .. } if log.contains("address already in use"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_no_prometheus_only_fields() {
        let yaml = config_yaml(&[ScrapeTarget::new("app", "127.0.0.1:1").metrics_path("/m")]);
        assert!(yaml.contains("scrape_interval: 1s"), "{yaml}");
        assert!(!yaml.contains("evaluation_interval"), "{yaml}");
        assert!(yaml.contains("metrics_path: \"/m\""), "{yaml}");
        assert!(yaml.contains("targets: [\"127.0.0.1:1\"]"), "{yaml}");
    }
}
