//! The HAProxy provider: one backend with a primary and a canary server whose weights are set
//! through the runtime API on the stats socket (`set weight`), and read back with `get weight`.
//! No reload, so no dropped connections.
//!
//! HAProxy's runtime API cannot add routing rules or mirroring, so only weighted splits are
//! expressed; anything else is rejected with the feature named (see [`CAPABILITIES`]).
//!
//! Many rollouts on one HAProxy: the configuration the operator writes sends each host and
//! path prefix to its own backend (`use_backend` on `hdr(host)` and `path_beg` ACLs), and
//! `routes` in the settings says which backend serves which selection. A rollout's route
//! drives the backend of exactly its selection (hosts and path prefix); `backend` is the one
//! for a rollout that takes every host and path. A selection no backend is configured for is
//! refused, naming it.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use aviary_core::route::{DEFAULT_PATH_PREFIX, RouteSelector};

use super::{ApplyError, Capabilities};
use crate::model::{Observed, Route, RouteSet};

/// Weights only: matches, mirroring and affinity need configuration HAProxy's runtime API
/// cannot change.
pub const CAPABILITIES: Capabilities = Capabilities {
    weights: true,
    header_match: false,
    cookie_match: false,
    mirror: false,
    session_affinity: false,
    primary_affinity: false,
};

const KIND: &str = "haproxy";

/// Settings of an HAProxy ingress in the agent's config file.
///
/// ```yaml
/// stats_socket: /run/haproxy/admin.sock
/// backend: be_default               # a rollout taking every host and path
/// routes:                           # the backends of other selections
///   - { hosts: [shop.example.com], backend: be_shop }
///   - { hosts: [shop.example.com], path_prefix: /api, backend: be_shop_api }
/// ```
#[derive(Debug, Clone, serde::Deserialize)]
pub struct HaproxySettings {
    /// The stats socket, at `level admin`.
    pub stats_socket: PathBuf,
    /// The backend (holding the two servers) of a rollout that takes every host and path.
    #[serde(default)]
    pub backend: Option<String>,
    /// The server that is the primary.
    #[serde(default = "default_primary")]
    pub primary_server: String,
    /// The server that is the canary.
    #[serde(default = "default_canary")]
    pub canary_server: String,
    /// The backends of other host and path selections.
    #[serde(default)]
    pub routes: Vec<HaproxyRoute>,
}

/// The backend HAProxy's configuration sends one host and path selection to.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyRoute {
    /// The hosts (empty: any host).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The path prefix (default `/`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The backend holding the selection's primary and canary servers.
    pub backend: String,
}

impl HaproxySettings {
    /// The backend serving `selector`, if one is configured.
    pub fn backend_for(&self, selector: &RouteSelector) -> Option<&str> {
        if *selector == RouteSelector::default()
            && let Some(backend) = &self.backend
        {
            return Some(backend);
        }
        self.routes
            .iter()
            .find(|r| {
                let mut hosts = r.hosts.clone();
                hosts.sort();
                hosts.dedup();
                let prefix = r.path_prefix.as_deref().unwrap_or(DEFAULT_PATH_PREFIX);
                hosts == selector.hosts && prefix == selector.path_prefix
            })
            .map(|r| r.backend.as_str())
    }
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

    /// The backend of `route`'s selection.
    ///
    /// Errors: [`ApplyError::Unsupported`] when no backend is configured for it.
    fn backend(&self, route: &Route) -> Result<&str, ApplyError> {
        self.settings
            .backend_for(&route.selector)
            .ok_or(ApplyError::Unsupported {
                provider: KIND.into(),
                feature: "this host and path selection: no backend is configured for it \
                          (backend, or routes in the ingress settings)",
            })
    }

    /// Whether a backend is configured for `route`'s selection.
    ///
    /// Errors: [`ApplyError::Unsupported`] when none is.
    pub fn can_serve(&self, route: &Route) -> Result<(), ApplyError> {
        self.backend(route).map(|_| ())
    }

    /// The current `(primary, canary)` weights of `backend`'s servers.
    ///
    /// Errors: [`ApplyError::Rejected`] when HAProxy does not know the servers.
    pub async fn weights(&self, backend: &str) -> Result<(u32, u32), ApplyError> {
        let primary = self.weight(backend, &self.settings.primary_server).await?;
        let canary = self.weight(backend, &self.settings.canary_server).await?;
        Ok((primary, canary))
    }

    async fn weight(&self, backend: &str, server: &str) -> Result<u32, ApplyError> {
        let answer = self
            .command(&format!("get weight {backend}/{server}"))
            .await?;
        // "10 (initial 1)"
        answer
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| rejected(format!("get weight {server}: {answer}")))
    }

    /// Whether the servers of every route's backend carry its weights.
    pub async fn in_sync(&self, routes: &RouteSet) -> bool {
        for route in routes.values() {
            let Ok(backend) = self.backend(route) else {
                return false;
            };
            let weights = self.weights(backend).await;
            if !weights.is_ok_and(|w| w == (route.primary_weight, route.canary_weight)) {
                return false;
            }
        }
        true
    }

    /// Points the servers of `route`'s backend at its endpoints, sets their weights, and reads
    /// them back. The other routes of the ingress are on other backends and left alone.
    ///
    /// Errors: [`ApplyError::Unsupported`] for backends with several endpoints or a selection
    /// without a backend; [`ApplyError::Rejected`] with HAProxy's answer; [`ApplyError::Io`].
    pub async fn apply(&self, _routes: &RouteSet, route: &Route) -> Result<Observed, ApplyError> {
        let _guard = self.apply_lock.lock().await;
        let backend = self.backend(route)?;
        for (server, side) in [
            (&self.settings.primary_server, &route.primary),
            (&self.settings.canary_server, &route.canary),
        ] {
            let [endpoint] = side.endpoints.as_slice() else {
                return Err(ApplyError::Unsupported {
                    provider: KIND.into(),
                    feature: "more than one endpoint per backend",
                });
            };
            let answer = self
                .command(&format!(
                    "set server {backend}/{server} addr {} port {}",
                    endpoint.host, endpoint.port
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
                .command(&format!("set weight {backend}/{server} {weight}"))
                .await?;
            if !answer.is_empty() {
                return Err(rejected(format!("set weight {server} {weight}: {answer}")));
            }
        }
        let (primary, canary) = self.weights(backend).await?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings() -> HaproxySettings {
        serde_yaml::from_str(
            "stats_socket: /run/haproxy/admin.sock
backend: be_default
routes:
  - { hosts: [shop.example], backend: be_shop }
  - { hosts: [shop.example], path_prefix: /api, backend: be_shop_api }
",
        )
        .unwrap()
    }

    fn selector(hosts: &[&str], prefix: &str) -> RouteSelector {
        RouteSelector {
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            path_prefix: prefix.into(),
        }
    }

    #[test]
    fn each_selection_drives_its_own_backend() {
        let s = settings();
        assert_eq!(s.backend_for(&RouteSelector::default()), Some("be_default"));
        assert_eq!(
            s.backend_for(&selector(&["shop.example"], "/")),
            Some("be_shop")
        );
        assert_eq!(
            s.backend_for(&selector(&["shop.example"], "/api")),
            Some("be_shop_api")
        );
        assert_eq!(s.backend_for(&selector(&["blog.example"], "/")), None);
    }
}
