//! A real `nats-server` with JetStream for one test: loopback, ephemeral ports, file store in a
//! temporary directory; killed and cleaned up on drop. [`NatsCluster`] is several of them
//! routed into one JetStream cluster, each with its own store, for replication and fault tests.
//!
//! Readiness is "the client port greets with *our* server's INFO and the monitoring endpoint's
//! `/healthz` answers 200" (JetStream, including file-store recovery after a restart, is up;
//! in a cluster also: the node knows the meta leader and its streams have caught up), polled
//! against a deadline.

use std::ffi::OsString;
use std::path::PathBuf;
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
    cluster: Option<Routes>,
    dir: TempDir,
}

/// How a cluster node finds its peers.
#[derive(Debug, Clone)]
struct Routes {
    /// The cluster's name (the same on every node).
    name: String,
    /// This node's route port.
    port: u16,
    /// The other nodes' route ports.
    peers: Vec<u16>,
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
        Self::start_with_config("").await
    }

    /// [`NatsServer::start`] with `config` (nats-server configuration text, e.g. an
    /// `authorization { users = [...] }` block) in its configuration file; ports, store and
    /// name still come from the testkit.
    ///
    /// # Errors
    /// As [`NatsServer::start`]; [`TestkitError::Exited`] with the server's complaint when it
    /// rejects `config`.
    pub async fn start_with_config(config: &str) -> Result<Self> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let mut server = Self::new(free_port()?, free_port()?, None)?;
            if !config.is_empty() {
                let path = server.config_path();
                std::fs::write(&path, config)
                    .map_err(|e| TestkitError::io(format!("writing {}", path.display()), e))?;
            }
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e @ TestkitError::Exited { .. }) if is_port_clash(&e) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(no_attempts))
    }

    /// A server that is not started yet, with its own name and store.
    fn new(port: u16, monitor_port: u16, cluster: Option<Routes>) -> Result<Self> {
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
        Ok(Self {
            process: None,
            bin,
            port,
            monitor_port,
            server_name,
            cluster,
            dir,
        })
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

    /// The server's name (`server_name`), as JetStream names stream leaders and peers.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// Whether the server process runs (it was not killed or stopped).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
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

    /// Starts the server (after [`NatsServer::kill`] or [`NatsServer::stop`]) on the same
    /// ports and store, without stopping anything first; a cluster node rejoins its peers.
    ///
    /// # Errors
    /// As [`NatsServer::restart`].
    pub async fn start_again(&mut self) -> Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        self.launch().await
    }

    async fn launch(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_ready().await
    }

    /// Spawns the process without waiting for it: the nodes of a new cluster are only ready
    /// once enough of them run to elect a JetStream meta leader.
    fn spawn(&mut self) -> Result<()> {
        let mut args: Vec<OsString> = Vec::new();
        if self.config_path().exists() {
            args.extend(["-c".into(), self.config_path().into()]);
        }
        args.extend::<[OsString; 11]>([
            "-js".into(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string().into(),
            "-m".into(),
            self.monitor_port.to_string().into(),
            "--store_dir".into(),
            self.store_dir().into(),
            "-n".into(),
            (&self.server_name).into(),
        ]);
        if let Some(routes) = &self.cluster {
            let peers: Vec<String> = routes
                .peers
                .iter()
                .map(|port| format!("nats://127.0.0.1:{port}"))
                .collect();
            args.extend([
                "--cluster_name".into(),
                (&routes.name).into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", routes.port).into(),
                "--routes".into(),
                peers.join(",").into(),
            ]);
        }
        self.process = Some(Process::spawn(
            "nats-server",
            &self.bin,
            args,
            &self.log_path(),
        )?);
        Ok(())
    }

    /// Waits until the spawned process is ready (see the module docs).
    async fn wait_ready(&mut self) -> Result<()> {
        let (port, monitor_port) = (self.port, self.monitor_port);
        let server_name = self.server_name.clone();
        let Some(process) = self.process.as_mut() else {
            return Ok(());
        };
        let ready = process
            .wait_ready(READY_DEADLINE, || {
                let server_name = server_name.clone();
                async move {
                    greets_as(port, &server_name).await.unwrap_or(false)
                        && healthz_ok(monitor_port).await.unwrap_or(false)
                }
            })
            .await;
        if ready.is_err() {
            // `wait_ready` already took an exited child; a hung one is killed here.
            self.kill();
        }
        ready
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.conf")
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

fn no_attempts() -> TestkitError {
    TestkitError::io(
        "finding free ports",
        std::io::Error::other("no attempts made"),
    )
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

/// How long one JetStream API request of [`NatsCluster`] may take: a stream without a leader
/// does not answer, and the caller polls again.
const API_TIMEOUT: Duration = Duration::from_secs(2);

/// A JetStream cluster of nats-servers on loopback: each node with its own client, route and
/// monitoring ports and its own store directory, all routed to each other. Each node is a
/// [`NatsServer`], so one can be killed ([`NatsServer::kill`]) and started again
/// ([`NatsServer::start_again`]) to rejoin.
///
/// ```no_run
/// # async fn t() -> aviary_testkit::Result<()> {
/// let mut cluster = aviary_testkit::NatsCluster::start(3).await?;
/// let client = cluster.client().await?;
/// // … create an R3 stream "S" …
/// let leader = cluster.stream_leader("S").await.expect("a leader");
/// cluster.node_mut(leader).kill();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes (3 or 5 for a cluster that survives losing a minority) and waits
    /// until every one is ready: routed, JetStream meta leader elected.
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub async fn start(size: usize) -> Result<Self> {
        Self::start_with_config(size, "").await
    }

    /// [`NatsCluster::start`] with `config` (nats-server configuration text, e.g. an
    /// `authorization { users = [...] }` block) in every node's configuration file; ports,
    /// routes, stores and names still come from the testkit.
    ///
    /// # Errors
    /// As [`NatsServer::start_with_config`].
    pub async fn start_with_config(size: usize, config: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "aviary-test-cluster-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let route_ports = (0..size).map(|_| free_port()).collect::<Result<Vec<_>>>()?;
            let mut nodes = Vec::with_capacity(size);
            for (i, port) in route_ports.iter().enumerate() {
                let routes = Routes {
                    name: name.clone(),
                    port: *port,
                    peers: [&route_ports[..i], &route_ports[i + 1..]].concat(),
                };
                let node = NatsServer::new(free_port()?, free_port()?, Some(routes))?;
                if !config.is_empty() {
                    let path = node.config_path();
                    std::fs::write(&path, config)
                        .map_err(|e| TestkitError::io(format!("writing {}", path.display()), e))?;
                }
                nodes.push(node);
            }
            let mut cluster = Self { nodes };
            match cluster.launch_all().await {
                Ok(()) => return Ok(cluster),
                Err(e @ TestkitError::Exited { .. }) if is_port_clash(&e) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(no_attempts))
    }

    async fn launch_all(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            node.spawn()?;
        }
        for node in &mut self.nodes {
            node.wait_ready().await?;
        }
        Ok(())
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// Node `i`.
    ///
    /// # Panics
    /// When there is no node `i`.
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Node `i`, to kill, stop or start again.
    ///
    /// # Panics
    /// When there is no node `i`.
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// The index of the node named `server_name`.
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.server_name() == server_name)
    }

    /// Every node's client URL, comma-separated (the form `--nats-url` takes), so a client
    /// fails over to any node.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client that knows every node and reconnects to another when its node goes.
    ///
    /// # Errors
    /// [`TestkitError::Connect`] when no node accepts the connection.
    pub async fn client(&self) -> Result<async_nats::Client> {
        let urls: Vec<String> = self.nodes.iter().map(NatsServer::url).collect();
        self.connect(&urls, async_nats::ConnectOptions::new()).await
    }

    /// A client of the running nodes only, that fails fast: for one look at the cluster.
    async fn probe_client(&self) -> Result<async_nats::Client> {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(NatsServer::url)
            .collect();
        let options = async_nats::ConnectOptions::new()
            .connection_timeout(API_TIMEOUT)
            .request_timeout(Some(API_TIMEOUT));
        self.connect(&urls, options).await
    }

    async fn connect(
        &self,
        urls: &[String],
        options: async_nats::ConnectOptions,
    ) -> Result<async_nats::Client> {
        let joined = urls.join(",");
        let addrs = urls
            .iter()
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| TestkitError::Connect {
                url: joined.clone(),
                reason: e.to_string(),
            })?;
        options
            .connect(addrs)
            .await
            .map_err(|e| TestkitError::Connect {
                url: joined,
                reason: e.to_string(),
            })
    }

    /// The cluster part of `$JS.API.STREAM.INFO.<stream>` (a KV bucket's stream is
    /// `KV_<bucket>`), asked of a running node; `None` while the stream has no leader to
    /// answer (an election, or no quorum) or no node runs.
    pub async fn stream_cluster(
        &self,
        stream: &str,
    ) -> Option<async_nats::jetstream::stream::ClusterInfo> {
        let client = self.probe_client().await.ok()?;
        let js = async_nats::jetstream::new(client);
        let info = tokio::time::timeout(API_TIMEOUT, async {
            js.get_stream(stream).await.ok()?.info().await.ok().cloned()
        })
        .await
        .ok()??;
        info.cluster.filter(|c| c.leader.is_some())
    }

    /// The index of the node leading `stream` (a KV bucket's stream is `KV_<bucket>`), or
    /// `None` while it has none.
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        let cluster = self.stream_cluster(stream).await?;
        self.index_of(cluster.leader.as_deref()?)
    }

    /// Whether `stream` has a leader and every other replica is online and current: after a
    /// node rejoins, it has caught up.
    pub async fn stream_current(&self, stream: &str, replicas: usize) -> bool {
        self.stream_cluster(stream).await.is_some_and(|c| {
            c.replicas.len() + 1 == replicas && c.replicas.iter().all(|p| p.current && !p.offline)
        })
    }
}
