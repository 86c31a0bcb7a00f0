//! A real single-node VictoriaMetrics for one test: loopback, an ephemeral port, its storage in
//! a temporary directory, scraping the targets the test gives every second; killed and cleaned
//! on drop. Its HTTP API is Prometheus-compatible (`/api/v1/query`), which is what the
//! analyzer's `victoriametrics` provider relies on.
//!
//! Readiness is `GET /health` answering 200. As with [`Prometheus`](crate::prometheus), data is
//! not there at once: [`QueryServer::wait_for_data`](crate::prometheus::QueryServer::wait_for_data) polls until a query returns a series.
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
use std::time::Duration;

use crate::Result;
use crate::process::Process;
use crate::prometheus::{QueryServer, ScrapeTarget, http_get};

/// How long a starting VictoriaMetrics may take to be ready (well under a second; the margin is
/// for a machine busy compiling).
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// The scrape interval: short, so tests wait seconds, not minutes.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// A running VictoriaMetrics (see [`QueryServer`] for its methods).
#[derive(Debug)]
pub struct VictoriaMetrics(QueryServer);

impl std::ops::Deref for VictoriaMetrics {
    type Target = QueryServer;

    fn deref(&self) -> &QueryServer {
        &self.0
    }
}

impl VictoriaMetrics {
    /// Starts VictoriaMetrics scraping `targets` every [`SCRAPE_INTERVAL`], and waits until it
    /// is ready.
    ///
    /// The binary is `$AVIARY_VICTORIA_METRICS`, else `<workspace>/.tools/bin/victoria-metrics`,
    /// else the system's (Debian package `victoria-metrics`).
    ///
    /// # Errors
    /// [`crate::TestkitError::ToolNotFound`] without a binary; [`crate::TestkitError::Exited`]
    /// / [`crate::TestkitError::NotReady`] when it does not come up.
    pub async fn start(targets: &[ScrapeTarget]) -> Result<Self> {
        let config = config_yaml(targets);
        QueryServer::start("victoria-metrics", "victoria-metrics", "scrape.yml", config, |bin, port, config, data, log| async move {
            launch(&bin, port, &config, &data, &log).await
        })
        .await
        .map(Self)
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
