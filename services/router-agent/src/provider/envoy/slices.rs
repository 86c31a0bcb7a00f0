//! Following Kubernetes EndpointSlices (workload mode): an Envoy ingress outside a mesh sends
//! traffic straight to the pods behind the primary and canary Services, not through their
//! ClusterIPs.
//!
//! Consumes the `discovery.k8s.io/v1` EndpointSlices of one namespace (those labelled
//! `kubernetes.io/service-name`) through a `kube::runtime::watcher`. The Envoy provider asks
//! [`EndpointSlices::resolve`] for each backend's endpoints whenever it builds clusters.
//!
//! Flow: watch event → [`Slices::apply`] (pure) → a change → the provider rebuilds its clusters
//! from the route it serves and pushes them (CDS only; the routes stay as they are).
//!
//! A backend is resolved when its name is a Service with slices. Its endpoints are then the
//! ready endpoints' addresses, each with its slice's port that equals the route's port, or the
//! slice's only port. A Service left without a ready endpoint keeps the last set it had, and
//! that is reported (a log line and a gauge): Envoy is never handed an empty cluster. A backend
//! that no slice names keeps the route's own endpoints, as without this option.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use futures::Stream;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::model::{Backend, Endpoint};

/// The label the EndpointSlice controller sets to the name of the slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `endpoint_slices` of an Envoy ingress in the agent's config file.
///
/// ```yaml
/// endpoint_slices:
///   namespace: test                       # where the primary and canary Services live
///   kubeconfig: /etc/aviary/kubeconfig    # else in-cluster or the usual inference
///   context: prod                         # in the kubeconfig
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSliceSettings {
    /// Namespace of the Services (and so of their EndpointSlices).
    pub namespace: String,
    /// Kubeconfig file; without it, in-cluster configuration or the usual inference.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig.
    #[serde(default)]
    pub context: Option<String>,
}

/// What Aviary reads from one EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceView {
    /// The Service it belongs to (its `kubernetes.io/service-name` label).
    pub service: String,
    /// Its port numbers.
    pub ports: Vec<u16>,
    /// IP addresses of its ready endpoints.
    pub ready: Vec<String>,
}

impl SliceView {
    /// The view of `slice`; `None` for a slice without the service label, or one of address
    /// type `FQDN` (deprecated, and never written by the EndpointSlice controller).
    pub fn of(slice: &EndpointSlice) -> Option<Self> {
        let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            return None;
        }
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port.and_then(|n| u16::try_from(n).ok()))
            .filter(|&n| n != 0)
            .collect();
        let ready = slice
            .endpoints
            .iter()
            // The API: a ready condition that is not set means ready.
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .flat_map(|e| &e.addresses)
            .filter(|a| a.parse::<IpAddr>().is_ok())
            .cloned()
            .collect();
        Some(Self {
            service: service.clone(),
            ports,
            ready,
        })
    }
}

/// The port of a slice with `ports` that serves the route's `port`: the same number, else the
/// slice's only port (a Service port mapped to another target port).
pub fn slice_port(ports: &[u16], port: u16) -> Option<u16> {
    if ports.contains(&port) {
        return Some(port);
    }
    match ports {
        [only] => Some(*only),
        _ => None,
    }
}

/// The ready endpoints of `slices` for the route's `port`, sorted and without duplicates.
pub fn ready_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a SliceView>,
    port: u16,
) -> Vec<Endpoint> {
    let mut endpoints: Vec<Endpoint> = slices
        .into_iter()
        .filter_map(|s| slice_port(&s.ports, port).map(|p| (s, p)))
        .flat_map(|(s, p)| {
            s.ready.iter().map(move |host| Endpoint {
                host: host.clone(),
                port: p,
            })
        })
        .collect();
    endpoints.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
    endpoints.dedup();
    endpoints
}

/// Where a backend's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The Service's ready endpoints.
    Ready(Vec<Endpoint>),
    /// The Service has no ready endpoint for the port: the last set it had.
    Held(Vec<Endpoint>),
    /// The Service has slices but never had a ready endpoint for the port since the agent
    /// started: the route's own endpoints.
    Unready,
    /// No slice names the backend: the route's own endpoints.
    NotAService,
}

/// The EndpointSlices of one namespace as the watch delivered them; pure, changed only by
/// [`Slices::apply`].
#[derive(Debug, Default)]
pub struct Slices {
    /// By slice name.
    live: BTreeMap<String, SliceView>,
    /// Filled during a relist, swapped in whole when it is done.
    relist: Option<BTreeMap<String, SliceView>>,
    /// Per Service: its slices when it last had a ready endpoint.
    held: BTreeMap<String, Vec<SliceView>>,
}

impl Slices {
    /// Applies one watch event; whether what is known changed.
    pub fn apply(&mut self, event: watcher::Event<EndpointSlice>) -> bool {
        let changed = match event {
            watcher::Event::Apply(slice) => {
                let name = slice.metadata.name.clone().unwrap_or_default();
                match SliceView::of(&slice) {
                    Some(view) => self.live.insert(name, view.clone()) != Some(view),
                    None => self.live.remove(&name).is_some(),
                }
            }
            watcher::Event::Delete(slice) => {
                let name = slice.metadata.name.unwrap_or_default();
                self.live.remove(&name).is_some()
            }
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(slice) => {
                if let (Some(relist), Some(view)) = (self.relist.as_mut(), SliceView::of(&slice)) {
                    relist.insert(slice.metadata.name.unwrap_or_default(), view);
                }
                false
            }
            watcher::Event::InitDone => match self.relist.take() {
                Some(relist) if relist != self.live => {
                    self.live = relist;
                    true
                }
                _ => false,
            },
        };
        if changed {
            self.hold();
        }
        changed
    }

    /// Remembers the slices of every Service that has a ready endpoint.
    fn hold(&mut self) {
        let mut ready: BTreeMap<&str, Vec<SliceView>> = BTreeMap::new();
        for view in self.live.values() {
            ready.entry(&view.service).or_default().push(view.clone());
        }
        for (service, views) in ready {
            if views.iter().any(|v| !v.ready.is_empty()) {
                self.held.insert(service.to_owned(), views);
            }
        }
    }

    /// The endpoints of Service `service` for the route's `port`.
    pub fn resolve(&self, service: &str, port: u16) -> Resolution {
        let live: Vec<&SliceView> = self
            .live
            .values()
            .filter(|v| v.service == service)
            .collect();
        let ready = ready_endpoints(live.iter().copied(), port);
        if !ready.is_empty() {
            return Resolution::Ready(ready);
        }
        match self.held.get(service) {
            Some(held) => match ready_endpoints(held, port) {
                held if !held.is_empty() => Resolution::Held(held),
                _ => Resolution::Unready,
            },
            None if live.is_empty() => Resolution::NotAService,
            None => Resolution::Unready,
        }
    }
}

/// Labels of a followed Service.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// Ingress name.
    pub ingress: String,
    /// Service name.
    pub service: String,
}

/// Gauges of the followed Services (registered under `aviary_router_endpoint_slice_…`).
#[derive(Debug, Clone, Default)]
pub struct SliceMetrics {
    /// Endpoints from EndpointSlices in the Service's cluster (0: the route's own endpoints).
    pub endpoints: Family<ServiceLabels, Gauge>,
    /// 1 while the Service has no ready endpoint and Envoy keeps what it had.
    pub unready: Family<ServiceLabels, Gauge>,
}

impl SliceMetrics {
    /// Creates the gauges and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("router");
        r.register(
            "endpoint_slice_endpoints",
            "Endpoints from a Service's EndpointSlices in its Envoy cluster",
            metrics.endpoints.clone(),
        );
        r.register(
            "endpoint_slice_unready",
            "1 while a Service has no ready endpoint and Envoy keeps its last known set",
            metrics.unready.clone(),
        );
        metrics
    }
}

/// One Envoy ingress's view of a namespace's EndpointSlices, shared by its watch and its
/// provider.
pub struct EndpointSlices {
    ingress: String,
    namespace: String,
    client: kube::Client,
    state: Mutex<State>,
    metrics: SliceMetrics,
}

#[derive(Default)]
struct State {
    slices: Slices,
    /// Services reported without ready endpoints (so each change is logged once).
    unready: BTreeSet<String>,
}

impl EndpointSlices {
    /// Follows the EndpointSlices in `namespace` through `client` for the Envoy ingress
    /// `ingress`. Nothing is requested until [`EndpointSlices::events`] is polled.
    pub fn new(
        ingress: impl Into<String>,
        namespace: impl Into<String>,
        client: kube::Client,
        metrics: SliceMetrics,
    ) -> Self {
        Self {
            ingress: ingress.into(),
            namespace: namespace.into(),
            client,
            state: Mutex::new(State::default()),
            metrics,
        }
    }

    /// The ingress these slices are followed for.
    pub fn ingress(&self) -> &str {
        &self.ingress
    }

    /// The namespace followed.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The watch on the namespace's labelled EndpointSlices; it relists after a failure, with
    /// kube's default backoff. Errors are the watcher's: the stream goes on after them.
    pub fn events(
        &self,
    ) -> impl Stream<Item = Result<watcher::Event<EndpointSlice>, watcher::Error>> + Send + 'static
    {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.namespace);
        watcher(api, watcher::Config::default().labels(SERVICE_NAME_LABEL)).default_backoff()
    }

    /// Applies one watch event; whether the clusters may have to change.
    pub fn observe(&self, event: watcher::Event<EndpointSlice>) -> bool {
        self.lock().slices.apply(event)
    }

    /// `backend` with its endpoints taken from its Service's slices (see the
    /// [module docs](self)); never with an empty set.
    pub fn resolve(&self, backend: &Backend) -> Backend {
        let Some(port) = backend.endpoints.first().map(|e| e.port) else {
            return backend.clone();
        };
        let mut state = self.lock();
        let resolution = state.slices.resolve(&backend.name, port);
        let labels = ServiceLabels {
            ingress: self.ingress.clone(),
            service: backend.name.clone(),
        };
        let (endpoints, unready) = match resolution {
            Resolution::NotAService => return backend.clone(),
            Resolution::Ready(endpoints) => {
                if state.unready.remove(&backend.name) {
                    tracing::info!(ingress = %self.ingress, service = %backend.name,
                        endpoints = endpoints.len(), "service has ready endpoints again");
                }
                (Some(endpoints), false)
            }
            Resolution::Held(endpoints) => {
                if state.unready.insert(backend.name.clone()) {
                    tracing::warn!(ingress = %self.ingress, service = %backend.name,
                        endpoints = endpoints.len(),
                        "service has no ready endpoints; keeping the last known set");
                }
                (Some(endpoints), true)
            }
            Resolution::Unready => {
                if state.unready.insert(backend.name.clone()) {
                    tracing::warn!(ingress = %self.ingress, service = %backend.name,
                        "service has no ready endpoints and none are known; using the route's endpoints");
                }
                (None, true)
            }
        };
        let served = endpoints.as_ref().map_or(0, Vec::len);
        self.metrics
            .endpoints
            .get_or_create(&labels)
            .set(i64::try_from(served).unwrap_or(i64::MAX));
        self.metrics
            .unready
            .get_or_create(&labels)
            .set(i64::from(unready));
        match endpoints {
            Some(endpoints) => Backend {
                endpoints,
                ..backend.clone()
            },
            None => backend.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every write is a single insert or swap: a panic cannot leave the state half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(
        name: &str,
        service: &str,
        ports: &[u16],
        endpoints: &[(&str, Option<bool>)],
    ) -> EndpointSlice {
        let endpoints: Vec<_> = endpoints
            .iter()
            .map(|(address, ready)| match ready {
                Some(ready) => json!({"addresses": [address], "conditions": {"ready": ready}}),
                None => json!({"addresses": [address]}),
            })
            .collect();
        let ports: Vec<_> = ports.iter().map(|p| json!({"port": p})).collect();
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "test",
                "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn endpoints(list: &[(&str, u16)]) -> Vec<Endpoint> {
        list.iter()
            .map(|(host, port)| Endpoint {
                host: (*host).into(),
                port: *port,
            })
            .collect()
    }

    #[test]
    fn ready_endpoints_on_the_matching_or_only_port() {
        let mut s = Slices::default();
        s.apply(watcher::Event::Apply(slice(
            "a",
            "web",
            &[9797, 9898],
            &[
                ("10.0.0.2", Some(true)),
                ("10.0.0.1", None),
                ("10.0.0.3", Some(false)),
            ],
        )));
        s.apply(watcher::Event::Apply(slice(
            "b",
            "web",
            &[8080],
            &[("10.0.1.1", Some(true))],
        )));
        s.apply(watcher::Event::Apply(slice(
            "c",
            "web",
            &[1, 2],
            &[("10.0.2.1", Some(true))],
        )));
        assert_eq!(
            s.resolve("web", 9898),
            Resolution::Ready(endpoints(&[
                ("10.0.0.1", 9898),
                ("10.0.0.2", 9898),
                ("10.0.1.1", 8080)
            ]))
        );
        assert_eq!(s.resolve("other", 9898), Resolution::NotAService);
    }

    #[test]
    fn no_ready_endpoint_keeps_the_last_set() {
        let mut s = Slices::default();
        s.apply(watcher::Event::Apply(slice(
            "a",
            "web",
            &[80],
            &[("10.0.0.1", Some(false))],
        )));
        assert_eq!(s.resolve("web", 80), Resolution::Unready);
        assert!(s.apply(watcher::Event::Apply(slice(
            "a",
            "web",
            &[80],
            &[("10.0.0.1", Some(true))]
        ))));
        assert!(!s.apply(watcher::Event::Apply(slice(
            "a",
            "web",
            &[80],
            &[("10.0.0.1", Some(true))]
        ))));
        assert!(s.apply(watcher::Event::Apply(slice(
            "a",
            "web",
            &[80],
            &[("10.0.0.1", Some(false))]
        ))));
        assert_eq!(
            s.resolve("web", 80),
            Resolution::Held(endpoints(&[("10.0.0.1", 80)]))
        );
        assert!(s.apply(watcher::Event::Delete(slice("a", "web", &[80], &[]))));
        assert_eq!(
            s.resolve("web", 80),
            Resolution::Held(endpoints(&[("10.0.0.1", 80)]))
        );
        s.apply(watcher::Event::Apply(slice(
            "b",
            "web",
            &[80],
            &[("10.0.0.9", None)],
        )));
        assert_eq!(
            s.resolve("web", 80),
            Resolution::Ready(endpoints(&[("10.0.0.9", 80)]))
        );
    }

    #[test]
    fn a_relist_replaces_the_slices_at_once() {
        let mut s = Slices::default();
        s.apply(watcher::Event::Apply(slice(
            "a",
            "web",
            &[80],
            &[("10.0.0.1", None)],
        )));
        assert!(!s.apply(watcher::Event::Init));
        assert!(!s.apply(watcher::Event::InitApply(slice(
            "b",
            "web",
            &[80],
            &[("10.0.0.2", None)]
        ))));
        // Until the relist is done, the slices from before it are served.
        assert_eq!(
            s.resolve("web", 80),
            Resolution::Ready(endpoints(&[("10.0.0.1", 80)]))
        );
        assert!(s.apply(watcher::Event::InitDone));
        assert_eq!(
            s.resolve("web", 80),
            Resolution::Ready(endpoints(&[("10.0.0.2", 80)]))
        );
    }

    #[test]
    fn slices_without_the_label_or_with_fqdns_are_ignored() {
        let mut unlabelled = slice("a", "web", &[80], &[("10.0.0.1", None)]);
        unlabelled.metadata.labels = None;
        assert_eq!(SliceView::of(&unlabelled), None);
        let mut fqdn = slice("a", "web", &[80], &[("10.0.0.1", None)]);
        fqdn.address_type = "FQDN".into();
        assert_eq!(SliceView::of(&fqdn), None);
        assert_eq!(slice_port(&[1, 2], 3), None);
        assert_eq!(slice_port(&[7], 3), Some(7));
    }
}
