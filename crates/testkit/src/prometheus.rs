//! A real Prometheus for one test: loopback, an ephemeral port, its TSDB in a temporary
//! directory, scraping the targets the test gives every second; killed and cleaned on drop.
//!
//! Readiness is `GET /-/ready` answering 200. Data is not there at once: use
//! [`QueryServer::wait_for_data`] to poll the query API until a query returns a series.
//!
//! ```no_run
//! # async fn t() -> aviary_testkit::Result<()> {
//! use aviary_testkit::prometheus::{Prometheus, ScrapeTarget};
//! let prom = Prometheus::start(&[ScrapeTarget::new("envoy", "127.0.0.1:9901")
//!     .metrics_path("/stats/prometheus")])
//! .await?;
//! prom.wait_for_data("envoy_cluster_upstream_rq_xx", std::time::Duration::from_secs(30)).await?;
//! # Ok(()) }
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::{Process, free_port, tool_path};
use crate::{POLL_INTERVAL, Result, TestkitError};

/// How long a starting Prometheus may take to be ready (it takes about a second; the margin is
/// for a machine busy compiling).
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// How long one probe or query may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Attempts at finding a free port when another process takes it first.
pub(crate) const PORT_ATTEMPTS: usize = 5;

/// The scrape (and evaluation) interval: short, so tests wait seconds, not minutes.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// Something for Prometheus to scrape.
#[derive(Debug, Clone)]
pub struct ScrapeTarget {
    pub(crate) job: String,
    pub(crate) address: String,
    pub(crate) metrics_path: String,
}

impl ScrapeTarget {
    /// Scrapes `http://<address>/metrics` as job `job`.
    pub fn new(job: impl Into<String>, address: impl Into<String>) -> Self {
        Self {
            job: job.into(),
            address: address.into(),
            metrics_path: "/metrics".into(),
        }
    }

    /// Scrapes another path (Envoy: `/stats/prometheus`).
    pub fn metrics_path(mut self, path: impl Into<String>) -> Self {
        self.metrics_path = path.into();
        self
    }
}

/// A running metrics server with a Prometheus-compatible query API (Prometheus itself, or
/// VictoriaMetrics): its process, port and temporary directory, and the queries tests need.
#[derive(Debug)]
pub struct QueryServer {
    // Declared before `dir` so the process is killed before its storage is removed.
    process: Process,
    port: u16,
    dir: TempDir,
    name: &'static str,
}

impl QueryServer {
    /// Writes `config` as `<dir>/<config_name>` in a new temp dir and starts the server with
    /// `launch(binary, port, config, data dir, log)` on a free port, trying another port when
    /// one is taken between finding and binding it.
    pub(crate) async fn start<F, Fut>(
        name: &'static str,
        tool: &str,
        config_name: &str,
        config: String,
        launch: F,
    ) -> Result<Self>
    where
        F: Fn(PathBuf, u16, PathBuf, PathBuf, PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<Process>>,
    {
        let bin = tool_path(tool)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("aviary-{name}-"))
            .tempdir()
            .map_err(|e| TestkitError::io("creating a temp dir", e))?;
        let config_path = dir.path().join(config_name);
        std::fs::write(&config_path, config)
            .map_err(|e| TestkitError::io(format!("writing {config_name}"), e))?;
        let mut last_error = None;
        for attempt in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let log = dir.path().join(format!("{name}-{attempt}.log"));
            match launch(
                bin.clone(),
                port,
                config_path.clone(),
                dir.path().join("data"),
                log,
            )
            .await
            {
                Ok(process) => {
                    return Ok(Self {
                        process,
                        port,
                        dir,
                        name,
                    });
                }
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

    /// `http://127.0.0.1:<port>`: the base URL of the query API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the config and the storage.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the server has logged so far.
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

    /// Polls `promql` until it returns at least one series (scrapes take a moment to land),
    /// and returns the series.
    ///
    /// # Errors
    /// [`TestkitError::NotReady`] with the server's log when `deadline` passes first.
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
                    name: format!("{} data for `{promql}`", self.name),
                    after: deadline,
                    log: self.log(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL.max(Duration::from_millis(100))).await;
        }
    }
}

/// A running Prometheus (see [`QueryServer`] for its methods).
#[derive(Debug)]
pub struct Prometheus(QueryServer);

impl std::ops::Deref for Prometheus {
    type Target = QueryServer;

    fn deref(&self) -> &QueryServer {
        &self.0
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` every [`SCRAPE_INTERVAL`], and waits until it is
    /// ready.
    ///
    /// # Errors
    /// [`TestkitError::ToolNotFound`] without a binary; [`TestkitError::Exited`] /
    /// [`TestkitError::NotReady`] when it does not come up.
    pub async fn start(targets: &[ScrapeTarget]) -> Result<Self> {
        let config = config_yaml(targets);
        QueryServer::start("prometheus", "prometheus", "prometheus.yml", config, |bin, port, config, data, log| async move {
            launch(&bin, port, &config, &data, &log).await
        })
        .await
        .map(Self)
    }
}

fn config_yaml(targets: &[ScrapeTarget]) -> String {
    let secs = SCRAPE_INTERVAL.as_secs();
    let mut yaml = format!(
        "global:\n  scrape_interval: {secs}s\n  evaluation_interval: {secs}s\n  scrape_timeout: {secs}s\nscrape_configs:\n"
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
        format!("--config.file={}", config.display()).into(),
        format!("--storage.tsdb.path={}", data.display()).into(),
        format!("--web.listen-address=127.0.0.1:{port}").into(),
        // Short lookback so a target that stops reporting reads as "no data" quickly.
        "--query.lookback-delta=30s".into(),
        "--log.level=warn".into(),
    ];
    let mut process = Process::spawn("prometheus", bin, args, log_path)?;
    process
        .wait_ready(READY_DEADLINE, || async move {
            matches!(http_get(port, "/-/ready").await, Ok((200, _)))
        })
        .await?;
    Ok(process)
}

pub(crate) fn is_port_clash(error: &TestkitError) -> bool {
    matches!(error, TestkitError::Exited { log, .. } if log.contains("address already in use"))
}

/// A minimal HTTP/1.0 GET (the server closes the connection, so the body is the rest of the
/// stream): the testkit needs no HTTP client dependency for two endpoints.
pub(crate) async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let fetch = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no end of headers"))?;
        let status = std::str::from_utf8(&response[..split])
            .ok()
            .and_then(|head| head.split_whitespace().nth(1))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::other("no status line"))?;
        Ok((status, response[split + 4..].to_vec()))
    };
    tokio::time::timeout(PROBE_TIMEOUT, fetch)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("timed out")))
}

pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The Prometheus data directory of a harness, for tests that inspect it.
pub fn data_dir(prometheus: &Prometheus) -> PathBuf {
    prometheus.dir().join("data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_every_target() {
        let yaml = config_yaml(&[
            ScrapeTarget::new("app", "127.0.0.1:1"),
            ScrapeTarget::new("envoy", "127.0.0.1:2").metrics_path("/stats/prometheus"),
        ]);
        assert!(yaml.contains("scrape_interval: 1s"), "{yaml}");
        assert!(yaml.contains("job_name: \"envoy\""), "{yaml}");
        assert!(
            yaml.contains("metrics_path: \"/stats/prometheus\""),
            "{yaml}"
        );
        assert!(yaml.contains("targets: [\"127.0.0.1:1\"]"), "{yaml}");
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(percent_encode(r#"up{a="b"}"#), "up%7Ba%3D%22b%22%7D");
    }

    #[tokio::test]
    async fn scrapes_itself() {
        let port_hint = ScrapeTarget::new("self", "127.0.0.1:1");
        let prom = Prometheus::start(&[port_hint])
            .await
            .expect("prometheus starts");
        let answer = prom.query("1+1").await.expect("query answers");
        assert_eq!(answer["status"], "success", "{answer}");
        assert_eq!(answer["data"]["result"][1], "2", "{answer}");
        // The unreachable target still yields an `up` series (value 0) once scraped.
        let up = prom
            .wait_for_data("up{job=\"self\"}", Duration::from_secs(30))
            .await
            .expect("up series appears");
        assert_eq!(up[0]["value"][1], "0", "{up:?}");
        assert!(data_dir(&prom).exists());
    }
}
