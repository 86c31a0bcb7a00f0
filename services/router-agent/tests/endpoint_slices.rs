//! Envoy as a non-mesh edge in workload mode: the primary and canary Services' EndpointSlices,
//! served by the in-memory Kubernetes API, decide where a real Envoy sends real traffic.
//!
//! Routes are shaped as the controller writes them: backends `podinfo-primary` and
//! `podinfo-canary` at `<service>.test:9898`. Those names do not resolve here, so every
//! answer that arrives came through an endpoint taken from a slice.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aviary_proto::{Backend as PBackend, DesiredRoute, RolloutRef};
use aviary_router_agent::provider::envoy::EnvoyProvider;
use aviary_router_agent::provider::envoy::slices::{EndpointSlices, ServiceLabels, SliceMetrics};
use aviary_testkit::envoy::{Envoy, EnvoyOptions};
use aviary_testkit::eventually;
use aviary_testkit::kube::{FakeKube, Kind};
use common::*;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);
const PRIMARY: &str = "podinfo-primary";
const CANARY: &str = "podinfo-canary";

/// The in-memory API server, serving EndpointSlices too.
fn fake_kube() -> FakeKube {
    let kube = FakeKube::new();
    kube.register(Kind {
        group: "discovery.k8s.io".into(),
        version: "v1".into(),
        kind: "EndpointSlice".into(),
        plural: "endpointslices".into(),
        namespaced: true,
        status_subresource: false,
    });
    kube
}

/// The slice `name` of Service `service` in `test`: `backend` on its port, ready or not.
fn slice(name: &str, service: &str, backend: &Backend, ready: bool) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "test",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": backend.addr.port(), "protocol": "TCP"}],
        "endpoints": [{
            "addresses": [backend.addr.ip().to_string()],
            "conditions": {"ready": ready, "serving": ready, "terminating": false},
        }],
    })
}

/// A route as the scheduler sends it in workload mode.
fn workload_route(canary_weight: u32) -> DesiredRoute {
    let side = |service: &str| PBackend {
        name: service.into(),
        endpoints: vec![format!("{service}.test:9898")],
    };
    DesiredRoute {
        rollout: Some(RolloutRef::new("test", "podinfo")),
        ingress: "edge".into(),
        primary: Some(side(PRIMARY)),
        canary: Some(side(CANARY)),
        primary_weight: 100 - canary_weight,
        canary_weight,
        ..Default::default()
    }
}

struct Fixture {
    kube: FakeKube,
    provider: Arc<EnvoyProvider>,
    envoy: Envoy,
    metrics: SliceMetrics,
    primary: Backend,
    canary: Backend,
    shutdown: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Fixture {
    fn gauge(&self, service: &str) -> (i64, i64) {
        let labels = ServiceLabels {
            ingress: "edge".into(),
            service: service.into(),
        };
        (
            self.metrics.endpoints.get_or_create(&labels).get(),
            self.metrics.unready.get_or_create(&labels).get(),
        )
    }
}

/// Two Services with a slice each, an Envoy provider following them, and a real Envoy.
async fn fixture() -> Fixture {
    let kube = fake_kube();
    let primary = Backend::start("primary").await;
    let canary = Backend::start("canary").await;
    kube.upsert(slice("podinfo-primary-a1", PRIMARY, &primary, true));
    kube.upsert(slice("podinfo-canary-b1", CANARY, &canary, true));
    let metrics = SliceMetrics::default();
    let slices = EndpointSlices::new("edge", "test", kube.client(), metrics.clone());
    let provider =
        Arc::new(EnvoyProvider::new("edge", Duration::from_secs(20)).with_endpoint_slices(slices));
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (serving, token) = (provider.clone(), shutdown.clone());
    tokio::spawn(async move { serving.serve(listener, token).await.unwrap() });
    let (following, token) = (provider.clone(), shutdown.clone());
    tokio::spawn(async move { following.follow_endpoint_slices(token).await });
    // The watcher opens its watch after it has listed and handed over every slice.
    eventually(DEADLINE, "the EndpointSlice watch", || async {
        (kube.open_watches() > 0).then_some(())
    })
    .await;
    let envoy = Envoy::start(EnvoyOptions::new(port, "edge")).await.unwrap();
    Fixture {
        kube,
        provider,
        envoy,
        metrics,
        primary,
        canary,
        shutdown,
    }
}

/// The active dynamic cluster `name` in Envoy's config dump.
async fn envoy_cluster(envoy: &Envoy, name: &str) -> Option<Value> {
    let dump = envoy.config_dump().await.ok()?;
    dump["configs"]
        .as_array()?
        .iter()
        .filter_map(|c| c["dynamic_active_clusters"].as_array())
        .flatten()
        .map(|entry| entry["cluster"].clone())
        .find(|cluster| cluster["name"] == name)
}

/// `(address, port)` of every endpoint of a cluster from the config dump.
fn cluster_endpoints(cluster: &Value) -> Vec<(String, u64)> {
    let mut endpoints: Vec<_> = cluster
        .pointer("/load_assignment/endpoints/0/lb_endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let socket = e.pointer("/endpoint/address/socket_address")?;
            Some((
                socket["address"].as_str()?.to_owned(),
                socket["port_value"].as_u64()?,
            ))
        })
        .collect();
    endpoints.sort();
    endpoints
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic_between_the_services_pods() {
    let f = fixture().await;
    let observed = f.provider.apply(&route(&workload_route(0))).await.unwrap();
    assert_eq!((observed.primary_weight, observed.canary_weight), (100, 0));
    let tally = traffic(&f.envoy.url(), 200, &[]).await;
    assert_eq!(tally.count("primary"), 200, "{tally:?}");

    // Envoy holds STATIC clusters with the slices' addresses and ports, not the DNS names.
    let cluster = envoy_cluster(&f.envoy, "test_podinfo-primary")
        .await
        .unwrap();
    assert_eq!(cluster["type"], "STATIC", "{cluster}");
    assert_eq!(
        cluster_endpoints(&cluster),
        [("127.0.0.1".to_owned(), u64::from(f.primary.addr.port()))]
    );
    assert_eq!(f.gauge(PRIMARY), (1, 0));

    f.provider.apply(&route(&workload_route(50))).await.unwrap();
    let tally = traffic(&f.envoy.url(), 1000, &[]).await;
    assert_share(&tally, "canary", 1000, 50.0, 6.0);
    assert_eq!(f.gauge(CANARY), (1, 0));

    f.provider
        .apply(&route(&workload_route(100)))
        .await
        .unwrap();
    let tally = traffic(&f.envoy.url(), 200, &[]).await;
    assert_eq!(tally.count("canary"), 200, "{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_endpoint_moves_traffic_without_a_route_command() {
    let f = fixture().await;
    let d = workload_route(0);
    f.provider.apply(&route(&d)).await.unwrap();
    let tally = traffic(&f.envoy.url(), 100, &[]).await;
    assert_eq!(tally.count("primary"), 100, "{tally:?}");

    // The primary's pod is replaced: the slice now names a third server.
    let moved = Backend::start("primary").await;
    f.kube
        .upsert(slice("podinfo-primary-a1", PRIMARY, &moved, true));
    eventually(DEADLINE, "primary traffic on the new pod only", || async {
        let before = f.primary.hits();
        let tally = traffic(&f.envoy.url(), 20, &[]).await;
        (tally.count("primary") == 20 && f.primary.hits() == before).then_some(())
    })
    .await;
    let tally = traffic(&f.envoy.url(), 200, &[]).await;
    assert_eq!(tally.count("primary"), 200, "{tally:?}");
    assert!(moved.hits() >= 200);

    // Envoy ACKed the new clusters: the provider reports the route in sync, so the agent's
    // reconcile does not re-apply it.
    eventually(DEADLINE, "the pushed clusters acknowledged", || async {
        f.provider.in_sync(&route(&d)).then_some(())
    })
    .await;

    // A second slice of the same Service adds its endpoint to the cluster.
    f.kube
        .upsert(slice("podinfo-primary-a2", PRIMARY, &f.primary, true));
    eventually(DEADLINE, "primary traffic on both pods", || async {
        let (old, new) = (f.primary.hits(), moved.hits());
        let tally = traffic(&f.envoy.url(), 50, &[]).await;
        (tally.count("primary") == 50 && f.primary.hits() > old && moved.hits() > new).then_some(())
    })
    .await;
    assert_eq!(f.gauge(PRIMARY), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_without_ready_endpoints_keeps_the_last_set() {
    let f = fixture().await;
    f.provider.apply(&route(&workload_route(50))).await.unwrap();
    let tally = traffic(&f.envoy.url(), 400, &[]).await;
    assert_share(&tally, "canary", 400, 50.0, 12.0);

    // The canary's only endpoint turns unready: Envoy keeps it, and that is reported.
    f.kube
        .upsert(slice("podinfo-canary-b1", CANARY, &f.canary, false));
    eventually(DEADLINE, "the canary reported unready", || async {
        (f.gauge(CANARY) == (1, 1)).then_some(())
    })
    .await;
    let cluster = envoy_cluster(&f.envoy, "test_podinfo-canary")
        .await
        .unwrap();
    assert_eq!(
        cluster_endpoints(&cluster),
        [("127.0.0.1".to_owned(), u64::from(f.canary.addr.port()))]
    );
    let tally = traffic(&f.envoy.url(), 400, &[]).await;
    assert_share(&tally, "canary", 400, 50.0, 12.0);

    // Its slice goes away altogether: still the last known set.
    let slices: kube::Api<EndpointSlice> = kube::Api::namespaced(f.kube.client(), "test");
    slices
        .delete("podinfo-canary-b1", &Default::default())
        .await
        .unwrap();
    let tally = traffic(&f.envoy.url(), 400, &[]).await;
    assert_share(&tally, "canary", 400, 50.0, 12.0);
    assert_eq!(f.gauge(CANARY), (1, 1));
    // A route applied meanwhile is served with the last known set too.
    f.provider.apply(&route(&workload_route(80))).await.unwrap();
    let tally = traffic(&f.envoy.url(), 400, &[]).await;
    assert_share(&tally, "canary", 400, 80.0, 10.0);

    // A new canary pod becomes ready: traffic follows, and the report clears.
    let fresh = Backend::start("canary").await;
    f.kube
        .upsert(slice("podinfo-canary-c1", CANARY, &fresh, true));
    eventually(DEADLINE, "canary traffic on the new pod", || async {
        let before = f.canary.hits();
        let tally = traffic(&f.envoy.url(), 50, &[]).await;
        (tally.errors == 0 && tally.count("canary") > 0 && f.canary.hits() == before).then_some(())
    })
    .await;
    assert_eq!(f.gauge(CANARY), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_without_slices_keep_the_routes_endpoints() {
    let f = fixture().await;
    // Endpoint mode on the same ingress: no slice names these backends.
    let v1 = Backend::start("podinfo-v1").await;
    let v2 = Backend::start("podinfo-v2").await;
    f.provider
        .apply(&route(&desired("edge", &v1, &v2, 100)))
        .await
        .unwrap();
    let tally = traffic(&f.envoy.url(), 100, &[]).await;
    assert_eq!(tally.count("podinfo-v2"), 100, "{tally:?}");
    let cluster = envoy_cluster(&f.envoy, "test_podinfo-v2").await.unwrap();
    assert_eq!(
        cluster_endpoints(&cluster),
        [("127.0.0.1".to_owned(), u64::from(v2.addr.port()))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_endpoint_slices_from_its_config_file() {
    use aviary_bus::typed;
    use aviary_proto::{RouteAck, RouteCommand};
    use clap::Parser as _;

    let dir = tempfile::tempdir().unwrap();
    let kube = fake_kube();
    let primary = Backend::start("primary").await;
    let canary = Backend::start("canary").await;
    kube.upsert(slice("podinfo-primary-a1", PRIMARY, &primary, true));
    kube.upsert(slice("podinfo-canary-b1", CANARY, &canary, true));
    let api = kube.serve_http().await.unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, FakeKube::kubeconfig(api)).unwrap();
    let xds_port = aviary_testkit::free_port().unwrap();
    let admin_port = aviary_testkit::free_port().unwrap();
    let config_file = dir.path().join("agent.yaml");
    std::fs::write(
        &config_file,
        format!(
            "ingresses:\n  - name: edge\n    provider: envoy\n    xds_addr: 127.0.0.1:{xds_port}\n    \
             endpoint_slices: {{ namespace: test, kubeconfig: {} }}\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    let nats = aviary_testkit::NatsServer::start().await.unwrap();
    let config = aviary_router_agent::Config::try_parse_from([
        "aviary-router-agent".to_owned(),
        "--config-file".into(),
        config_file.display().to_string(),
        "--nats-url".into(),
        nats.url(),
        "--admin-addr".into(),
        format!("127.0.0.1:{admin_port}"),
    ])
    .unwrap();
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(aviary_router_agent::run(config, shutdown.clone()));
    let admin = format!("http://127.0.0.1:{admin_port}");
    eventually(DEADLINE, "the agent ready", || async {
        let ready = client().get(format!("{admin}/readyz")).send().await;
        ready.is_ok_and(|r| r.status().is_success()).then_some(())
    })
    .await;
    let envoy = Envoy::start(EnvoyOptions::new(xds_port, "edge"))
        .await
        .unwrap();

    let nats_client = nats.client().await.unwrap();
    let subject = aviary_bus::names::route_subject("edge").unwrap();
    let command = |canary_weight: u32, step: u32| RouteCommand {
        idempotency_key: format!("test.podinfo/1/{step}"),
        generation: 1,
        step,
        route: Some(workload_route(canary_weight)),
    };
    for (step, weight) in [(1, 0), (2, 50)] {
        let ack: RouteAck =
            typed::request(&nats_client, &subject, &command(weight, step), DEADLINE)
                .await
                .unwrap();
        assert!(ack.ok, "{ack:?}");
    }
    // The first route may have been pushed before the first list: wait for the slices.
    eventually(DEADLINE, "traffic on the slices' endpoints", || async {
        let tally = traffic(&envoy.url(), 40, &[]).await;
        (tally.errors == 0).then_some(())
    })
    .await;
    let tally = traffic(&envoy.url(), 1000, &[]).await;
    assert_share(&tally, "canary", 1000, 50.0, 6.0);

    let moved = Backend::start("primary").await;
    kube.upsert(slice("podinfo-primary-a1", PRIMARY, &moved, true));
    eventually(DEADLINE, "primary traffic on the new pod", || async {
        let before = primary.hits();
        let tally = traffic(&envoy.url(), 40, &[]).await;
        (tally.errors == 0 && tally.count("primary") > 0 && primary.hits() == before).then_some(())
    })
    .await;

    let metrics = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "aviary_router_endpoint_slice_endpoints{ingress=\"edge\",service=\"podinfo-primary\"} 1"
        ) && metrics.contains(
            "aviary_router_endpoint_slice_unready{ingress=\"edge\",service=\"podinfo-canary\"} 0"
        ),
        "{metrics}"
    );
    shutdown.cancel();
    agent.await.unwrap().unwrap();
}
