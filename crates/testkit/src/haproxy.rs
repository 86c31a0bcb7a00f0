//! A real HAProxy for one test: one frontend on an ephemeral loopback port, one backend with a
//! primary and a canary server (round robin, weights changeable at run time), and an admin
//! stats socket in a temporary directory. [`Haproxy::start_with_backends`] gives several such
//! backends, each chosen by host and path prefix, as an edge carrying many services is set up.
//!
//! Readiness: the stats socket answers `show info` and the frontend accepts connections.

use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::process::{Process, free_port, tool_path};
use crate::{Result, TestkitError};

const READY_DEADLINE: Duration = Duration::from_secs(30);

/// Name of the backend holding the two servers.
pub const BACKEND: &str = "app";

/// One backend of [`Haproxy::start_with_backends`]: its primary and canary servers, and the
/// requests the frontend sends it.
#[derive(Debug, Clone)]
pub struct HaproxyBackend {
    /// Backend name.
    pub name: String,
    /// Hosts it takes (the Host header without its port); empty: any host.
    pub hosts: Vec<String>,
    /// Path prefix it takes; `None`: any path.
    pub path_prefix: Option<String>,
    /// The primary server's `host:port` (weight 100).
    pub primary: String,
    /// The canary server's `host:port` (weight 0).
    pub canary: String,
}

/// A running HAProxy.
#[derive(Debug)]
pub struct Haproxy {
    _process: Process,
    port: u16,
    dir: TempDir,
}

impl Haproxy {
    /// Starts HAProxy with servers `primary` (weight 100) and `canary` (weight 0) at the given
    /// `host:port` addresses.
    ///
    /// # Errors
    /// [`TestkitError::ToolNotFound`], [`TestkitError::Exited`], [`TestkitError::NotReady`].
    pub async fn start(primary: &str, canary: &str) -> Result<Self> {
        Self::start_with_backends(&[HaproxyBackend {
            name: BACKEND.into(),
            hosts: Vec::new(),
            path_prefix: None,
            primary: primary.into(),
            canary: canary.into(),
        }])
        .await
    }

    /// Starts HAProxy with `backends`, tried in order: the first whose hosts and path prefix
    /// take a request serves it (one without either is the default backend).
    ///
    /// # Errors
    /// As [`Haproxy::start`].
    pub async fn start_with_backends(backends: &[HaproxyBackend]) -> Result<Self> {
        let bin = tool_path("haproxy")?;
        let dir = tempfile::Builder::new()
            .prefix("aviary-haproxy-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating a temp dir", e))?;
        let port = free_port()?;
        let socket = dir.path().join("admin.sock");
        let mut config = format!(
            "global\n    stats socket {socket} mode 600 level admin\n    maxconn 2000\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    \
             timeout server 10s\n\
             frontend ingress\n    bind 127.0.0.1:{port}\n",
            socket = socket.display()
        );
        for (i, b) in backends.iter().enumerate() {
            let mut conditions = Vec::new();
            if !b.hosts.is_empty() {
                config.push_str(&format!(
                    "    acl host_{i} hdr(host),field(1,:) -i {}\n",
                    b.hosts.join(" ")
                ));
                conditions.push(format!("host_{i}"));
            }
            if let Some(prefix) = &b.path_prefix {
                config.push_str(&format!("    acl path_{i} path_beg {prefix}\n"));
                conditions.push(format!("path_{i}"));
            }
            if conditions.is_empty() {
                config.push_str(&format!("    default_backend {}\n", b.name));
            } else {
                config.push_str(&format!(
                    "    use_backend {} if {}\n",
                    b.name,
                    conditions.join(" ")
                ));
            }
        }
        for b in backends {
            config.push_str(&format!(
                "backend {}\n    balance roundrobin\n    server primary {} weight 100\n    \
                 server canary {} weight 0\n",
                b.name, b.primary, b.canary
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).map_err(|e| TestkitError::io("writing haproxy.cfg", e))?;
        let args: Vec<std::ffi::OsString> = vec!["-db".into(), "-f".into(), path.into()];
        let mut process = Process::spawn("haproxy", &bin, args, &dir.path().join("haproxy.log"))?;
        let probe_socket = socket.clone();
        process
            .wait_ready(READY_DEADLINE, || {
                let socket = probe_socket.clone();
                async move {
                    TcpStream::connect(("127.0.0.1", port)).await.is_ok()
                        && show_info(&socket).await
                }
            })
            .await?;
        Ok(Self {
            _process: process,
            port,
            dir,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The admin stats socket.
    pub fn stats_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }
}

async fn show_info(socket: &std::path::Path) -> bool {
    let probe = async {
        let mut stream = UnixStream::connect(socket).await?;
        stream.write_all(b"show info\n").await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok::<_, std::io::Error>(answer.contains("Name:"))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), probe).await,
        Ok(Ok(true))
    )
}
