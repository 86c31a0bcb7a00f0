//! The Envoy provider (the default): an ADS control plane serving CDS and RDS for one ingress.
//!
//! The listener and the `xds` cluster are static in Envoy's bootstrap (see
//! `deploy/envoy/bootstrap.yaml`); the listener's HTTP connection manager takes its routes over
//! RDS by the name `route_config_name`.
//!
//! Every rollout routing the ingress is served at once: one virtual host per host name the
//! routes name (and `*`), each with the routes that take it, most specific first
//! ([`resources::route_configuration`]).
//!
//! apply: snapshot with old ∪ new clusters and the new routes → wait for every connected Envoy
//! to ACK both versions (CDS first, RDS once CDS is held) → drop clusters no longer used → ACK.
//! A NACK fails the apply with Envoy's message and restores the previous snapshot.
//!
//! With `endpoint_slices` (workload mode, [`slices`]), a backend that is a Service gets its
//! ready pods' addresses from the Service's EndpointSlices instead of the route's cluster DNS
//! name, and the clusters are pushed again whenever the slices change.

pub mod ads;
pub mod resources;
pub mod slices;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use futures::StreamExt;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::ads::{AdsService, Snapshot, XdsState};
use self::slices::{EndpointSliceSettings, EndpointSlices};
use super::{ApplyError, Capabilities};
use crate::model::{Observed, Route, RouteSet};

/// Envoy expresses everything Aviary asks for.
pub const CAPABILITIES: Capabilities = Capabilities {
    weights: true,
    header_match: true,
    cookie_match: true,
    mirror: true,
    session_affinity: true,
    primary_affinity: true,
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
    /// Follow the backends' Services' EndpointSlices in a namespace (workload mode); without
    /// it, a backend's endpoints are the route's.
    #[serde(default)]
    pub endpoint_slices: Option<EndpointSliceSettings>,
}

/// An ADS control plane for one ingress.
pub struct EnvoyProvider {
    route_config_name: String,
    state: Arc<XdsState>,
    apply_timeout: Duration,
    apply_lock: tokio::sync::Mutex<()>,
    slices: Option<EndpointSlices>,
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
        state.snapshot.send_replace(Arc::new(build(
            &route_config_name,
            &RouteSet::new(),
            Vec::new(),
        )));
        Self {
            route_config_name,
            state,
            apply_timeout,
            apply_lock: tokio::sync::Mutex::new(()),
            slices: None,
        }
    }

    /// This provider, taking the endpoints of backends that are Services from `slices`; they
    /// are followed once [`EnvoyProvider::follow_endpoint_slices`] runs.
    pub fn with_endpoint_slices(mut self, slices: EndpointSlices) -> Self {
        self.slices = Some(slices);
        self
    }

    /// Sets what Envoys are served without waiting for them: used on start, before the server
    /// accepts connections, so a reconnecting Envoy is handed the stored routes and not an
    /// empty configuration.
    pub fn seed(&self, routes: &RouteSet) {
        let clusters = self.clusters(routes);
        self.state.snapshot.send_replace(Arc::new(build(
            &self.route_config_name,
            routes,
            clusters,
        )));
    }

    /// The clusters of every route's two backends, with endpoints from the EndpointSlices when
    /// they are followed.
    fn clusters(&self, routes: &RouteSet) -> Vec<Cluster> {
        routes
            .values()
            .flat_map(|route| [&route.primary, &route.canary])
            .map(|backend| match &self.slices {
                Some(slices) => resources::cluster(&slices.resolve(backend)),
                None => resources::cluster(backend),
            })
            .collect()
    }

    /// Follows the EndpointSlices given to [`EnvoyProvider::with_endpoint_slices`] until
    /// `shutdown` fires, pushing the clusters again whenever their endpoints change; returns at
    /// once without them. A failing watch is logged and resumed with backoff.
    pub async fn follow_endpoint_slices(&self, shutdown: CancellationToken) {
        let Some(slices) = &self.slices else {
            return;
        };
        tracing::info!(ingress = %slices.ingress(), namespace = %slices.namespace(),
            "following EndpointSlices");
        let mut events = std::pin::pin!(slices.events());
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => break,
                event = events.next() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            match event {
                Ok(event) => {
                    if slices.observe(event) {
                        self.push_clusters().await;
                    }
                }
                Err(error) => {
                    tracing::warn!(ingress = %slices.ingress(), namespace = %slices.namespace(),
                        %error, "EndpointSlice watch failed; retrying");
                }
            }
        }
    }

    /// Rebuilds the clusters of the route being served and pushes them when they changed.
    /// Not waiting for the ACKs: an apply that follows builds on this snapshot and waits.
    async fn push_clusters(&self) {
        let _guard = self.apply_lock.lock().await;
        let current = self.state.snapshot.borrow().clone();
        let routes = &current.routes_served;
        if routes.is_empty() {
            return;
        }
        let next = build(&self.route_config_name, routes, self.clusters(routes));
        if next.cds_version != current.cds_version {
            tracing::info!(ingress = %self.route_config_name, cds_version = %next.cds_version,
                "endpoints changed; pushing clusters");
            self.state.snapshot.send_replace(Arc::new(next));
        }
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

    /// [`EnvoyProvider::in_sync_routes`] with `route` as the ingress's only route.
    pub fn in_sync(&self, route: &Route) -> bool {
        self.in_sync_routes(&crate::model::alone(route))
    }

    /// Whether every connected Envoy holds the snapshot built from `routes`.
    pub fn in_sync_routes(&self, routes: &RouteSet) -> bool {
        let snapshot = self.state.snapshot.borrow().clone();
        if &snapshot.routes_served != routes {
            return false;
        }
        let proxies = self.state.proxies();
        proxies.iter().all(|p| {
            p.cds_acked.as_ref() == Some(&snapshot.cds_version)
                && p.rds_acked.as_ref() == Some(&snapshot.rds_version)
        })
    }

    /// [`EnvoyProvider::apply_routes`] with `route` as the ingress's only route.
    ///
    /// Errors: as [`EnvoyProvider::apply_routes`].
    pub async fn apply(&self, route: &Route) -> Result<Observed, ApplyError> {
        self.apply_routes(&crate::model::alone(route), route).await
    }

    /// Pushes `routes` to every connected Envoy, waits for their ACKs, and returns the split
    /// served for `route` (one of them).
    ///
    /// Errors: [`ApplyError::Rejected`] with Envoy's message on a NACK;
    /// [`ApplyError::Unconfirmed`] when no Envoy is connected or not all ACK in time.
    pub async fn apply_routes(
        &self,
        routes: &RouteSet,
        route: &Route,
    ) -> Result<Observed, ApplyError> {
        let _guard = self.apply_lock.lock().await;
        let previous = self.state.snapshot.borrow().clone();
        let deadline = tokio::time::Instant::now() + self.apply_timeout;
        // Phase 1: keep the clusters the old routes use until Envoy holds the new routes.
        let mut transitional_clusters = self.clusters(&previous.routes_served);
        let clusters = self.clusters(routes);
        transitional_clusters.extend(clusters.iter().cloned());
        let transitional = Arc::new(build(
            &self.route_config_name,
            routes,
            transitional_clusters,
        ));
        let final_snapshot = Arc::new(build(&self.route_config_name, routes, clusters));
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

/// The snapshot serving `routes` with `clusters` (deduplicated by name, the last one winning).
fn build(route_config_name: &str, routes_served: &RouteSet, clusters: Vec<Cluster>) -> Snapshot {
    let clusters: BTreeMap<String, Cluster> =
        clusters.into_iter().map(|c| (c.name.clone(), c)).collect();
    let clusters: Vec<_> = clusters.values().map(resources::to_any).collect();
    let config = resources::route_configuration(route_config_name, routes_served);
    let routes = vec![(config.name.clone(), resources::to_any(&config))];
    Snapshot {
        routes_served: routes_served.clone(),
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
