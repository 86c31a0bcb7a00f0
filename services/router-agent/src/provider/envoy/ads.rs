//! A state-of-the-world ADS server for one ingress's Envoys.
//!
//! The current [`Snapshot`] lives in a `watch` channel; every Envoy stream pushes it when it
//! changes. Per stream and per type the server tracks the nonce and version it sent and the
//! version Envoy ACKed (or the error it NACKed with), and shares that in [`ProxyStatus`] so an
//! apply can wait for the read-back.
//!
//! Ordering: RDS is only sent once the stream ACKed the snapshot's CDS version, so Envoy never
//! holds routes that name clusters it does not have.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::resources::{cluster_type_url, route_type_url};
use crate::model::RouteSet;

/// Everything one ingress's Envoys should hold, with a version per type.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The routes the resources were built from (empty: no route yet).
    pub routes_served: RouteSet,
    /// CDS resources.
    pub clusters: Vec<Any>,
    /// Version of `clusters` (a content hash, so a restarted agent recognises Envoy's).
    pub cds_version: String,
    /// RDS resources as `(name, resource)`.
    pub routes: Vec<(String, Any)>,
    /// Version of `routes`.
    pub rds_version: String,
}

/// What one connected Envoy holds, as far as the server knows.
#[derive(Debug, Clone, Default)]
pub struct ProxyStatus {
    /// The node id Envoy reported.
    pub node: String,
    /// Last CDS version ACKed.
    pub cds_acked: Option<String>,
    /// Last RDS version ACKed.
    pub rds_acked: Option<String>,
    /// Last NACK as `(type_url, version rejected, Envoy's message)`.
    pub nack: Option<(String, String, String)>,
}

/// State shared by the server, its streams and the provider.
#[derive(Debug)]
pub struct XdsState {
    /// The snapshot every stream serves.
    pub snapshot: watch::Sender<Arc<Snapshot>>,
    proxies: Mutex<HashMap<u64, ProxyStatus>>,
    /// Bumped whenever any proxy's status changes.
    pub changes: watch::Sender<u64>,
    connected: Gauge,
    next_id: AtomicU64,
}

impl XdsState {
    /// A state serving an empty snapshot; `connected` counts open streams.
    pub fn new(connected: Gauge) -> Self {
        Self {
            snapshot: watch::Sender::new(Arc::new(Snapshot::default())),
            proxies: Mutex::new(HashMap::new()),
            changes: watch::Sender::new(0),
            connected,
            next_id: AtomicU64::new(1),
        }
    }

    /// The status of every connected Envoy.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ProxyStatus>> {
        // A panic while holding the lock cannot leave the map inconsistent (plain inserts).
        self.proxies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut ProxyStatus)) {
        if let Some(status) = self.lock().get_mut(&id) {
            f(status);
        }
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The tonic service.
pub struct AdsService {
    state: Arc<XdsState>,
    shutdown: CancellationToken,
}

impl AdsService {
    /// A service over `state`; streams end when `shutdown` fires.
    pub fn new(state: Arc<XdsState>, shutdown: CancellationToken) -> Self {
        Self { state, shutdown }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let state = self.state.clone();
        let shutdown = self.shutdown.clone();
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tokio::spawn(async move {
            let id = state.next_id.fetch_add(1, Ordering::Relaxed);
            state.lock().insert(id, ProxyStatus::default());
            state.connected.inc();
            tracing::info!(stream = id, %peer, "envoy connected");
            let mut stream = Stream {
                id,
                state: state.clone(),
                tx,
                cds: TypeState::default(),
                rds: TypeState::default(),
            };
            stream.run(request.into_inner(), shutdown).await;
            state.lock().remove(&id);
            state.connected.dec();
            state.changes.send_modify(|n| *n = n.wrapping_add(1));
            tracing::info!(stream = id, %peer, "envoy disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "this control plane serves state-of-the-world ADS only",
        ))
    }
}

/// Per stream, per type: what was requested, sent and acknowledged.
#[derive(Debug, Default)]
struct TypeState {
    subscribed: bool,
    names: Vec<String>,
    nonce: Option<String>,
    sent_version: Option<String>,
    acked_version: Option<String>,
}

struct Stream {
    id: u64,
    state: Arc<XdsState>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    cds: TypeState,
    rds: TypeState,
}

static NONCE: AtomicU64 = AtomicU64::new(1);

impl Stream {
    async fn run(&mut self, mut inbound: Streaming<DiscoveryRequest>, shutdown: CancellationToken) {
        let mut snapshots = self.state.snapshot.subscribe();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                message = inbound.message() => match message {
                    Ok(Some(request)) => self.on_request(request),
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(stream = self.id, %status, "xds stream ended");
                        return;
                    }
                },
                changed = snapshots.changed() => if changed.is_err() { return },
            }
            let snapshot = snapshots.borrow_and_update().clone();
            if self.push(&snapshot).await.is_err() {
                return;
            }
        }
    }

    fn on_request(&mut self, request: DiscoveryRequest) {
        let cds_url = cluster_type_url();
        let is_cds = request.type_url == cds_url;
        if !is_cds && request.type_url != route_type_url() {
            tracing::debug!(stream = self.id, type_url = %request.type_url, "unserved type");
            return;
        }
        if let Some(node) = &request.node {
            let node = node.id.clone();
            self.state.update(self.id, |s| s.node = node);
        }
        let ts = if is_cds { &mut self.cds } else { &mut self.rds };
        if request.response_nonce.is_empty() {
            // A (re)subscription. Envoy's version_info is what it already holds, e.g. from a
            // previous run of this agent: with content-hash versions it may already be current.
            ts.subscribed = true;
            ts.names = request.resource_names;
            ts.sent_version = None;
            if !request.version_info.is_empty() {
                ts.acked_version = Some(request.version_info.clone());
                let version = request.version_info;
                self.state.update(self.id, |s| {
                    if is_cds {
                        s.cds_acked = Some(version);
                    } else {
                        s.rds_acked = Some(version);
                    }
                });
            }
            return;
        }
        if ts.nonce.as_deref() != Some(request.response_nonce.as_str()) {
            // Answers a response that was superseded: ignore (xDS protocol, "stale nonce").
            return;
        }
        if let Some(error) = request.error_detail {
            let rejected = ts.sent_version.clone().unwrap_or_default();
            tracing::warn!(stream = self.id, type_url = %request.type_url, version = %rejected,
                error = %error.message, "envoy rejected configuration");
            let type_url = request.type_url;
            self.state.update(self.id, |s| {
                s.nack = Some((type_url, rejected, error.message));
            });
            return;
        }
        if ts.names != request.resource_names {
            ts.names = request.resource_names;
            ts.sent_version = None;
        }
        ts.acked_version = Some(request.version_info.clone());
        let version = request.version_info;
        self.state.update(self.id, |s| {
            if is_cds {
                s.cds_acked = Some(version);
            } else {
                s.rds_acked = Some(version);
            }
        });
    }

    async fn push(&mut self, snapshot: &Snapshot) -> Result<(), ()> {
        if self.cds.subscribed && self.cds.sent_version.as_ref() != Some(&snapshot.cds_version) {
            let response = response(
                cluster_type_url(),
                &snapshot.cds_version,
                snapshot.clusters.clone(),
            );
            self.cds.nonce = Some(response.nonce.clone());
            self.cds.sent_version = Some(snapshot.cds_version.clone());
            self.tx.send(Ok(response)).await.map_err(|_| ())?;
        }
        let clusters_held =
            !self.cds.subscribed || self.cds.acked_version.as_ref() == Some(&snapshot.cds_version);
        if self.rds.subscribed
            && clusters_held
            && self.rds.sent_version.as_ref() != Some(&snapshot.rds_version)
        {
            let resources = snapshot
                .routes
                .iter()
                .filter(|(name, _)| self.rds.names.is_empty() || self.rds.names.contains(name))
                .map(|(_, any)| any.clone())
                .collect();
            let response = response(route_type_url(), &snapshot.rds_version, resources);
            self.rds.nonce = Some(response.nonce.clone());
            self.rds.sent_version = Some(snapshot.rds_version.clone());
            self.tx.send(Ok(response)).await.map_err(|_| ())?;
        }
        Ok(())
    }
}

fn response(type_url: String, version: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.to_owned(),
        resources,
        type_url,
        nonce: NONCE.fetch_add(1, Ordering::Relaxed).to_string(),
        ..Default::default()
    }
}
