//! A real `nats-server` with JetStream for one test: loopback, ephemeral ports, file store in a
//! temporary directory; killed and cleaned up on drop.
//!
//! Readiness is "the client port greets with *our* server's INFO and the monitoring endpoint's
//! `/healthz` answers 200" (JetStream, including file-store recovery after a restart, is up),
//! polled against a deadline.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::process::{Process, free_port, tool_path};
use crate::{Result, TestkitError};

/// How long a starting server may take to be ready. It normally takes tens of milliseconds;
/// the margin is for a machine busy compiling on two cores.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// How long a graceful stop may take before the server is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long one probe connection may take; a hung probe must not eat the whole deadline.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Attempts at finding free ports when another process takes one between probe and bind.
const PORT_ATTEMPTS: usize = 5;

/// A running nats-server with JetStream enabled.
///
/// ```no_run
/// # async fn t() -> aviary_testkit::Result<()> {
/// let nats = aviary_testkit::NatsServer::start().await?;
/// let client = nats.client().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NatsServer {
    // Declared before `dir` so the process is killed before its store is removed.
    process: Option<Process>,
    bin: PathBuf,
    port: u16,
    monitor_port: u16,
    server_name: String,
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server and waits until it serves clients and JetStream.
    ///
    /// The binary is `$AVIARY_NATS_SERVER`, else `<workspace>/.tools/bin/nats-server`, else
    /// `nats-server` on the system (see [`tool_path`]).
    ///
    /// # Errors
    /// [`TestkitError::ToolNotFound`] when there is no nats-server (run
    /// `scripts/bootstrap.sh`); [`TestkitError::Exited`] / [`TestkitError::NotReady`] when it
    /// does not come up.
    pub async fn start() -> Result<Self> {
        let bin = tool_path("nats-server")?;
        let dir = tempfile::Builder::new()
            .prefix("aviary-nats-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating a temp dir", e))?;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let server_name = format!(
            "aviary-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let log_path = dir.path().join("nats-server.log");
        let store_dir = dir.path().join("jetstream");
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let (port, monitor_port) = (free_port()?, free_port()?);
            match launch(
                &bin,
                port,
                monitor_port,
                &server_name,
                &store_dir,
                &log_path,
            )
            .await
            {
                Ok(process) => {
                    return Ok(Self {
                        process: Some(process),
                        bin,
                        port,
                        monitor_port,
                        server_name,
                        dir,
                    });
                }
                Err(e @ TestkitError::Exited { .. }) if is_port_clash(&e) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            TestkitError::io(
                "finding free ports",
                std::io::Error::other("no attempts made"),
            )
        }))
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The monitoring (HTTP) port, for `/varz`, `/jsz`, `/healthz`.
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The JetStream store directory (survives [`NatsServer::restart`]).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// Everything the server has logged so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A client connected to this server.
    ///
    /// # Errors
    /// [`TestkitError::Connect`] when the connection fails (e.g. the server was killed).
    pub async fn client(&self) -> Result<async_nats::Client> {
        let url = self.url();
        async_nats::connect(&url)
            .await
            .map_err(|e| TestkitError::Connect {
                url,
                reason: e.to_string(),
            })
    }

    /// Kills the server with SIGKILL (a crash: no flush, no goodbye to clients). Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Stops the server gracefully (SIGTERM), killing it if it takes longer than 10 s.
    ///
    /// # Errors
    /// [`TestkitError::Io`] when it cannot be signalled (it is killed anyway).
    pub async fn stop(&mut self) -> Result<()> {
        match self.process.take() {
            Some(mut process) => process.stop(STOP_GRACE).await,
            None => Ok(()),
        }
    }

    /// Starts the server again on the same port with the same store directory, so clients
    /// reconnect and JetStream file-store data survives. Stops it gracefully first if it runs.
    ///
    /// # Errors
    /// As [`NatsServer::start`]; also fails if the old port was taken meanwhile.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.launch().await
    }

    async fn launch(&mut self) -> Result<()> {
        let process = launch(
            &self.bin,
            self.port,
            self.monitor_port,
            &self.server_name,
            &self.store_dir(),
            &self.log_path(),
        )
        .await?;
        self.process = Some(process);
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- nats-server {} log:\n{}", self.url(), self.log());
        }
        self.kill();
    }
}

/// Spawns nats-server and waits until it is ready.
async fn launch(
    bin: &Path,
    port: u16,
    monitor_port: u16,
    server_name: &str,
    store_dir: &Path,
    log_path: &Path,
) -> Result<Process> {
    let args: Vec<OsString> = vec![
        "-js".into(),
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string().into(),
        "-m".into(),
        monitor_port.to_string().into(),
        "--store_dir".into(),
        store_dir.into(),
        "-n".into(),
        server_name.into(),
    ];
    let mut process = Process::spawn("nats-server", bin, args, log_path)?;
    process
        .wait_ready(READY_DEADLINE, || async move {
            greets_as(port, server_name).await.unwrap_or(false)
                && healthz_ok(monitor_port).await.unwrap_or(false)
        })
        .await?;
    Ok(process)
}

/// Whether the server failed because one of its ports was taken after [`free_port`] chose it.
fn is_port_clash(error: &TestkitError) -> bool {
    matches!(error, TestkitError::Exited { log, .. } if log.contains("address already in use"))
}

/// Whether the client port greets with an INFO line naming our server, so a probe cannot be
/// fooled by another process that grabbed the port.
async fn greets_as(port: u16, server_name: &str) -> std::io::Result<bool> {
    let probe = async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        let Some(json) = line.strip_prefix("INFO ") else {
            return Ok(false);
        };
        let info: serde_json::Value = serde_json::from_str(json.trim())?;
        Ok(info.get("server_name").and_then(|v| v.as_str()) == Some(server_name))
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .unwrap_or(Ok(false))
}

/// Whether `GET /healthz` on the monitoring port answers 200: the server, JetStream and its
/// recovered streams are ready.
async fn healthz_ok(port: u16) -> std::io::Result<bool> {
    let probe = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let status_line = response.split(|b| *b == b'\n').next().unwrap_or_default();
        Ok(status_line.starts_with(b"HTTP/1.1 200") || status_line.starts_with(b"HTTP/1.0 200"))
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .unwrap_or(Ok(false))
}
