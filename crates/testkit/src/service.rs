//! Aviary's own service binaries as test components: started with an admin port, ready when
//! `/readyz` answers 200, stopped with SIGTERM and expected to exit 0 after draining.

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Process, Result, free_port};

/// A running Aviary service.
#[derive(Debug)]
pub struct Service {
    process: Process,
    admin_port: u16,
}

impl Service {
    /// Starts `binary` with `args` plus `--admin-addr 127.0.0.1:<free port>`, logging to
    /// `<dir>/<name>.log`, and waits up to `deadline` for `/readyz` to answer 200.
    ///
    /// # Errors
    /// When the binary cannot be spawned, exits, or is not ready in time (the log is included).
    pub async fn start(
        name: &str,
        binary: &Path,
        args: &[String],
        dir: &Path,
        deadline: Duration,
    ) -> Result<Self> {
        let admin_port = free_port()?;
        let mut all = args.to_vec();
        all.extend(["--admin-addr".to_owned(), format!("127.0.0.1:{admin_port}")]);
        let mut process = Process::spawn(name, binary, all, &dir.join(format!("{name}.log")))?;
        process
            .wait_ready(deadline, || async move {
                http_status(admin_port, "/readyz").await == Some(200)
            })
            .await?;
        Ok(Self {
            process,
            admin_port,
        })
    }

    /// The admin port (`/healthz`, `/readyz`, `/metrics`).
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The process, for signals and logs.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Status code of `GET <path>` on the admin port, `None` when it does not answer.
    pub async fn admin_status(&self, path: &str) -> Option<u16> {
        http_status(self.admin_port, path).await
    }

    /// Sends SIGTERM and waits up to `deadline` for the process to exit; returns its status.
    ///
    /// # Errors
    /// When the signal cannot be sent, or the process is still running after `deadline` (it is
    /// then killed).
    pub async fn terminate(&mut self, deadline: Duration) -> Result<ExitStatus> {
        self.process.signal(nix::sys::signal::Signal::SIGTERM)?;
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.process.exit_status() {
                return Ok(status);
            }
            if started.elapsed() > deadline {
                let log = self.process.log();
                self.process.kill();
                return Err(crate::TestkitError::NotReady {
                    name: format!("{} (still running after SIGTERM)", self.process.name()),
                    after: deadline,
                    log,
                });
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
    }
}

async fn http_status(port: u16, path: &str) -> Option<u16> {
    let request = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), request)
        .await
        .ok()
        .flatten()
}
