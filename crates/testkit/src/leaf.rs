//! A hub nats-server and leaf-node nats-servers on loopback, one leaf per member cluster, for
//! multi-cluster tests: the hub (JetStream, the scheduler's state) listens for leaf
//! connections; each leaf ([`NatsServer`], JetStream in its own domain named after its cluster)
//! dials the hub, so subjects published on a leaf reach hub subscribers and back.
//!
//! A leaf's link is cut by killing or stopping that leaf ([`NatsServer::kill`]) and comes back
//! with [`NatsServer::start_again`]; [`NatsHub::wait_leaves`] polls the hub's `/leafz` until it
//! sees the expected number of leaf connections.
//!
//! [`NatsHub::start_with_config`] adds configuration to the hub (its client users, say) and
//! makes every leaf link log in as one leaf user; [`NatsHub::start_leaf_with_config`] adds
//! configuration to a leaf.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::free_port;
use crate::{NatsServer, Result, TestkitError};

/// How long a leaf link may take to (re)connect. The leaf dials at once and then every second;
/// the margin is for a machine busy compiling on two cores.
const LINK_DEADLINE: Duration = Duration::from_secs(30);

/// How often the hub's `/leafz` is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long one `/leafz` probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The hub of a multi-cluster test: a nats-server with JetStream that accepts leaf nodes.
///
/// ```no_run
/// # async fn t() -> aviary_testkit::Result<()> {
/// let hub = aviary_testkit::NatsHub::start().await?;
/// let eu = hub.start_leaf("eu").await?;
/// let us = hub.start_leaf("us").await?;
/// hub.wait_leaves(2).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NatsHub {
    server: NatsServer,
    leaf_port: u16,
    /// The user and password each leaf link logs in with, when the hub requires one.
    leaf_login: Option<(String, String)>,
}

impl NatsHub {
    /// Starts the hub and waits until it serves clients and JetStream.
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub async fn start() -> Result<Self> {
        Self::start_with_config("", None).await
    }

    /// [`NatsHub::start`] with `config` added to the hub's configuration file (for example an
    /// `authorization` block) and, with `leaf_login` (user, password), leaf links refused
    /// unless they log in as that user; [`NatsHub::start_leaf`] logs in with it.
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub async fn start_with_config(config: &str, leaf_login: Option<(&str, &str)>) -> Result<Self> {
        let leaf_port = free_port()?;
        let authorization = leaf_login.map_or(String::new(), |(user, password)| {
            format!(
                "  authorization {{\n    user: \"{user}\"\n    password: \"{password}\"\n  }}\n"
            )
        });
        let config = format!(
            "{config}\nleafnodes {{\n  listen: \"127.0.0.1:{leaf_port}\"\n{authorization}}}\n"
        );
        let server = NatsServer::start_with_config(&config).await?;
        Ok(Self {
            server,
            leaf_port,
            leaf_login: leaf_login.map(|(u, p)| (u.to_owned(), p.to_owned())),
        })
    }

    /// The hub's server (its client URL, `kill`, `restart`).
    pub fn server(&self) -> &NatsServer {
        &self.server
    }

    /// The hub's server, mutably (to kill or restart it).
    pub fn server_mut(&mut self) -> &mut NatsServer {
        &mut self.server
    }

    /// The port leaf nodes dial.
    pub fn leaf_port(&self) -> u16 {
        self.leaf_port
    }

    /// Starts a leaf nats-server for member cluster `cluster` (JetStream domain `cluster`)
    /// that dials this hub; waits until the leaf serves clients, not until its link is up
    /// (see [`NatsHub::wait_leaves`]).
    ///
    /// # Errors
    /// As [`NatsServer::start`]; [`TestkitError::Exited`] when `cluster` is not a valid domain.
    pub async fn start_leaf(&self, cluster: &str) -> Result<NatsServer> {
        self.start_leaf_with_config(cluster, "").await
    }

    /// [`NatsHub::start_leaf`] with `config` added to the leaf's configuration file (for
    /// example the member cluster's own `authorization` block).
    ///
    /// # Errors
    /// As [`NatsHub::start_leaf`].
    pub async fn start_leaf_with_config(&self, cluster: &str, config: &str) -> Result<NatsServer> {
        let login = self
            .leaf_login
            .as_ref()
            .map_or(String::new(), |(user, password)| {
                format!("{user}:{password}@")
            });
        let config = format!(
            "{config}\njetstream {{\n  domain: \"{cluster}\"\n}}\nleafnodes {{\n  reconnect: \"1s\"\n  \
             remotes = [ {{ url: \"nats-leaf://{login}127.0.0.1:{}\" }} ]\n}}\n",
            self.leaf_port
        );
        NatsServer::start_with_config(&config).await
    }

    /// How many leaf nodes are connected to the hub now (its `/leafz`).
    ///
    /// # Errors
    /// [`TestkitError::Io`] when the monitoring endpoint does not answer with JSON.
    pub async fn leaf_count(&self) -> Result<usize> {
        let body = get(self.server.monitor_port(), "/leafz")
            .await
            .map_err(|e| TestkitError::io("reading the hub's /leafz", e))?;
        let json: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| TestkitError::io("decoding the hub's /leafz", e.into()))?;
        let count = json.get("leafnodes").and_then(serde_json::Value::as_u64);
        Ok(usize::try_from(count.unwrap_or(0)).unwrap_or(usize::MAX))
    }

    /// Polls until exactly `count` leaf nodes are connected to the hub.
    ///
    /// # Errors
    /// [`TestkitError::NotReady`] when that does not happen within 30 s.
    pub async fn wait_leaves(&self, count: usize) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < LINK_DEADLINE {
            if self.leaf_count().await.ok() == Some(count) {
                return Ok(());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Err(TestkitError::NotReady {
            name: format!("{count} leaf links to the hub"),
            after: LINK_DEADLINE,
            log: self.server.log(),
        })
    }
}

/// The body of `GET <path>` on a loopback monitoring port.
async fn get(port: u16, path: &str) -> std::io::Result<String> {
    let probe = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        match response.split_once("\r\n\r\n") {
            Some((_, body)) => Ok(body.to_owned()),
            None => Err(std::io::Error::other("no HTTP body")),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("timed out")))
}
