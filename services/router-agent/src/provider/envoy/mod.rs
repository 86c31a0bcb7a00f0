//! The Envoy provider (the default): an ADS control plane serving CDS and RDS for one ingress.
//!
//! The listener and the `xds` cluster are static in Envoy's bootstrap (see
//! `deploy/envoy/bootstrap.yaml`); the listener's HTTP connection manager takes its routes over
//! RDS by the name `route_config_name`.
//!
//! apply: snapshot with old ∪ new clusters and the new routes → wait for every connected Envoy
//! to ACK both versions (CDS first, RDS once CDS is held) → drop clusters no longer used → ACK.
//! A NACK fails the apply with Envoy's message and restores the previous snapshot.

pub mod ads;
pub mod resources;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::ads::{AdsService, Snapshot, XdsState};
use super::{ApplyError, Capabilities};
use crate::model::{Observed, Route};

/// Envoy expresses everything Aviary asks for.
pub const CAPABILITIES: Capabilities = Capabilities {
    weights: true,
    header_match: true,
    cookie_match: true,
    mirror: true,
    session_affinity: true,
};

const KIND: &str = "envoy";

/// Settings of an Envoy ingress in the agent's config file.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct EnvoySettings {
    /// Where the ADS server listens (Envoy's bootstrap `xds` cluster points here).
    pub xds_addr: SocketAddr,
    /// RDS name the listener asks for; defaults to the ingress name.
    #[serde(default)]
    pub route_config_name: Option<String>,
}

/// An ADS control plane for one ingress.
pub struct EnvoyProvider {
    route_config_name: String,
    state: Arc<XdsState>,
    apply_timeout: Duration,
    apply_lock: tokio::sync::Mutex<()>,
}

impl EnvoyProvider {
    /// A provider serving RDS as `route_config_name`; applies wait up to `apply_timeout`.
    pub fn new(route_config_name: impl Into<String>, apply_timeout: Duration) -> Self {
        Self::with_gauge(route_config_name, apply_timeout, Gauge::default())
    }

    /// As [`EnvoyProvider::new`], counting connected Envoys in `connected`.
    pub fn with_gauge(
        route_config_name: impl Into<String>,
        apply_timeout: Duration,
        connected: Gauge,
    ) -> Self {
        let route_config_name = route_config_name.into();
        let state = Arc::new(XdsState::new(connected));
        state
            .snapshot
            .send_replace(Arc::new(build(&route_config_name, None, &[])));
        Self {
            route_config_name,
            state,
            apply_timeout,
            apply_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Sets what Envoys are served without waiting for them: used on start, before the server
    /// accepts connections, so a reconnecting Envoy is handed the stored route and not an empty
    /// configuration.
    pub fn seed(&self, route: Option<&Route>) {
        self.state
            .snapshot
            .send_replace(Arc::new(build(&self.route_config_name, route, &[])));
    }

    /// Serves ADS on `listener` until `shutdown` fires (open streams end then too).
    ///
    /// Fails when the gRPC server fails.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), tonic::transport::Error> {
        let service = AdsService::new(self.state.clone(), shutdown.clone());
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown.cancelled_owned(),
            )
            .await
    }

    /// How many Envoys hold an ADS stream.
    pub fn connected_proxies(&self) -> usize {
        self.state.proxies().len()
    }

    /// Waits until at least one Envoy is connected, up to `timeout`; whether one is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut changes = self.state.changes.subscribe();
        tokio::time::timeout(timeout, async {
            while self.connected_proxies() == 0 {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
            && self.connected_proxies() > 0
    }

    /// Whether every connected Envoy holds the snapshot built from `route`.
    pub fn in_sync(&self, route: &Route) -> bool {
        let snapshot = self.state.snapshot.borrow().clone();
        if snapshot.route.as_ref() != Some(route) {
            return false;
        }
        let proxies = self.state.proxies();
        proxies.iter().all(|p| {
            p.cds_acked.as_ref() == Some(&snapshot.cds_version)
                && p.rds_acked.as_ref() == Some(&snapshot.rds_version)
        })
    }

    /// Pushes `route` to every connected Envoy and waits for their ACKs.
    ///
    /// Errors: [`ApplyError::Rejected`] with Envoy's message on a NACK;
    /// [`ApplyError::Unconfirmed`] when no Envoy is connected or not all ACK in time.
    pub async fn apply(&self, route: &Route) -> Result<Observed, ApplyError> {
        let _guard = self.apply_lock.lock().await;
        let previous = self.state.snapshot.borrow().clone();
        let deadline = tokio::time::Instant::now() + self.apply_timeout;
        // Phase 1: keep the clusters the old routes use until Envoy holds the new routes.
        let old_clusters: Vec<Cluster> = previous
            .route
            .as_ref()
            .map(|r| {
                vec![
                    resources::cluster(&r.primary),
                    resources::cluster(&r.canary),
                ]
            })
            .unwrap_or_default();
        let transitional = Arc::new(build(&self.route_config_name, Some(route), &old_clusters));
        let final_snapshot = Arc::new(build(&self.route_config_name, Some(route), &[]));
        let phases = if transitional.cds_version == final_snapshot.cds_version {
            vec![final_snapshot]
        } else {
            vec![transitional, final_snapshot]
        };
        for snapshot in phases {
            let (cds, rds) = (snapshot.cds_version.clone(), snapshot.rds_version.clone());
            self.state.snapshot.send_replace(snapshot);
            if let Err(error) = self.wait_acked(&cds, &rds, deadline).await {
                // Envoy keeps its last good configuration; serve that again so newly
                // connecting Envoys get it too.
                self.state.snapshot.send_replace(previous);
                return Err(error);
            }
        }
        Ok(route.expected())
    }

    async fn wait_acked(
        &self,
        cds: &str,
        rds: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApplyError> {
        let mut changes = self.state.changes.subscribe();
        loop {
            let proxies = self.state.proxies();
            for proxy in &proxies {
                if let Some((type_url, version, message)) = &proxy.nack
                    && (version == cds || version == rds)
                {
                    let what = type_url.rsplit('.').next().unwrap_or(type_url);
                    return Err(ApplyError::Rejected {
                        provider: KIND.into(),
                        detail: format!("{what} NACK from node {:?}: {message}", proxy.node),
                    });
                }
            }
            let pending: Vec<&str> = proxies
                .iter()
                .filter(|p| {
                    p.cds_acked.as_deref() != Some(cds) || p.rds_acked.as_deref() != Some(rds)
                })
                .map(|p| p.node.as_str())
                .collect();
            if !proxies.is_empty() && pending.is_empty() {
                return Ok(());
            }
            let timed_out = tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err();
            if timed_out {
                let detail = if proxies.is_empty() {
                    "no Envoy connected to the xDS server".to_owned()
                } else {
                    format!("waiting for ACKs from {pending:?}")
                };
                return Err(ApplyError::Unconfirmed {
                    provider: KIND.into(),
                    after: self.apply_timeout,
                    detail,
                });
            }
        }
    }
}

/// The snapshot for `route` plus `extra` clusters (deduplicated by name).
fn build(route_config_name: &str, route: Option<&Route>, extra: &[Cluster]) -> Snapshot {
    let mut clusters: BTreeMap<String, Cluster> =
        extra.iter().map(|c| (c.name.clone(), c.clone())).collect();
    if let Some(route) = route {
        for backend in [&route.primary, &route.canary] {
            clusters.insert(backend.cluster.clone(), resources::cluster(backend));
        }
    }
    let clusters: Vec<_> = clusters.values().map(resources::to_any).collect();
    let config = resources::route_configuration(route_config_name, route);
    let routes = vec![(config.name.clone(), resources::to_any(&config))];
    Snapshot {
        route: route.cloned(),
        cds_version: version(clusters.iter().map(|a| a.encode_to_vec())),
        clusters,
        rds_version: version(routes.iter().map(|(_, a)| a.encode_to_vec())),
        routes,
    }
}

/// A content hash: the same resources give the same version, also across agent restarts.
fn version(encoded: impl Iterator<Item = Vec<u8>>) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    for bytes in encoded {
        bytes.hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}
