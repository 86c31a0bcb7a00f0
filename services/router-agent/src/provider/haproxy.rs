//! The HAProxy provider: one backend with a primary and a canary server whose weights are set
//! through the runtime API on the stats socket (`set weight`), and read back with `get weight`.
//! No reload, so no dropped connections.
//!
//! HAProxy's runtime API cannot add routing rules or mirroring, so only weighted splits are
//! expressed; anything else is rejected with the feature named (see [`CAPABILITIES`]).

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{ApplyError, Capabilities};
use crate::model::{Observed, Route};

/// Weights only: matches, mirroring and affinity need configuration HAProxy's runtime API
/// cannot change.
pub const CAPABILITIES: Capabilities = Capabilities {
    weights: true,
    header_match: false,
    cookie_match: false,
    mirror: false,
    session_affinity: false,
};

const KIND: &str = "haproxy";

/// Settings of an HAProxy ingress in the agent's config file.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct HaproxySettings {
    /// The stats socket, at `level admin`.
    pub stats_socket: PathBuf,
    /// The backend holding the two servers.
    pub backend: String,
    /// The server that is the primary.
    #[serde(default = "default_primary")]
    pub primary_server: String,
    /// The server that is the canary.
    #[serde(default = "default_canary")]
    pub canary_server: String,
}

fn default_primary() -> String {
    "primary".into()
}

fn default_canary() -> String {
    "canary".into()
}

/// Drives one HAProxy ingress.
pub struct HaproxyProvider {
    settings: HaproxySettings,
    timeout: Duration,
    apply_lock: tokio::sync::Mutex<()>,
}

impl HaproxyProvider {
    /// A provider for `settings`; each runtime-API exchange may take up to `timeout`.
    pub fn new(settings: HaproxySettings, timeout: Duration) -> Self {
        Self {
            settings,
            timeout,
            apply_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends one runtime-API command and returns HAProxy's answer.
    ///
    /// Errors: [`ApplyError::Io`] when the socket cannot be used.
    pub async fn command(&self, command: &str) -> Result<String, ApplyError> {
        let exchange = async {
            let mut stream = UnixStream::connect(&self.settings.stats_socket).await?;
            stream.write_all(format!("{command}\n").as_bytes()).await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer.trim().to_owned()),
            Ok(Err(e)) => Err(io(format!(
                "{} ({}): {e}",
                command,
                self.settings.stats_socket.display()
            ))),
            Err(_) => Err(io(format!(
                "{command}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    fn server(&self, name: &str) -> String {
        format!("{}/{name}", self.settings.backend)
    }

    /// The current `(primary, canary)` weights.
    ///
    /// Errors: [`ApplyError::Rejected`] when HAProxy does not know the servers.
    pub async fn weights(&self) -> Result<(u32, u32), ApplyError> {
        let primary = self.weight(&self.settings.primary_server).await?;
        let canary = self.weight(&self.settings.canary_server).await?;
        Ok((primary, canary))
    }

    async fn weight(&self, server: &str) -> Result<u32, ApplyError> {
        let answer = self
            .command(&format!("get weight {}", self.server(server)))
            .await?;
        // "10 (initial 1)"
        answer
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| rejected(format!("get weight {server}: {answer}")))
    }

    /// Whether the servers carry `route`'s weights.
    pub async fn in_sync(&self, route: &Route) -> bool {
        self.weights()
            .await
            .is_ok_and(|w| w == (route.primary_weight, route.canary_weight))
    }

    /// Points the servers at the route's endpoints, sets their weights, and reads them back.
    ///
    /// Errors: [`ApplyError::Unsupported`] for backends with several endpoints;
    /// [`ApplyError::Rejected`] with HAProxy's answer; [`ApplyError::Io`].
    pub async fn apply(&self, route: &Route) -> Result<Observed, ApplyError> {
        let _guard = self.apply_lock.lock().await;
        for (server, backend) in [
            (&self.settings.primary_server, &route.primary),
            (&self.settings.canary_server, &route.canary),
        ] {
            let [endpoint] = backend.endpoints.as_slice() else {
                return Err(ApplyError::Unsupported {
                    provider: KIND.into(),
                    feature: "more than one endpoint per backend",
                });
            };
            let answer = self
                .command(&format!(
                    "set server {} addr {} port {}",
                    self.server(server),
                    endpoint.host,
                    endpoint.port
                ))
                .await?;
            if !(answer.contains("changed") || answer.contains("no need")) {
                return Err(rejected(format!("set server {server} addr: {answer}")));
            }
        }
        for (server, weight) in [
            (&self.settings.primary_server, route.primary_weight),
            (&self.settings.canary_server, route.canary_weight),
        ] {
            let answer = self
                .command(&format!("set weight {} {weight}", self.server(server)))
                .await?;
            if !answer.is_empty() {
                return Err(rejected(format!("set weight {server} {weight}: {answer}")));
            }
        }
        let (primary, canary) = self.weights().await?;
        if (primary, canary) != (route.primary_weight, route.canary_weight) {
            return Err(rejected(format!(
                "weights read back as {primary}/{canary}, want {}/{}",
                route.primary_weight, route.canary_weight
            )));
        }
        Ok(Observed {
            primary_weight: primary,
            canary_weight: canary,
            mirror_percent: 0,
        })
    }
}

fn io(detail: String) -> ApplyError {
    ApplyError::Io {
        provider: KIND.into(),
        detail,
    }
}

fn rejected(detail: String) -> ApplyError {
    ApplyError::Rejected {
        provider: KIND.into(),
        detail,
    }
}
