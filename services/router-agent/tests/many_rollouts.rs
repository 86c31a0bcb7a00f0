//! One ingress, many rollouts: route commands of several rollouts on one real Envoy listener
//! (and one real NGINX), each selecting its hosts and path prefix, through the agent's own
//! command path over a real nats-server's routes bucket. Clients of each host see only their
//! own service's split; a route taking what another rollout holds is refused, naming it.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aviary_bus::kv::Bucket;
use aviary_bus::names;
use aviary_proto::{DesiredRoute, RolloutRef, RouteAck, RouteCommand};
use aviary_router_agent::agent::Ingress;
use aviary_router_agent::metrics::Metrics;
use aviary_router_agent::provider::Provider;
use aviary_router_agent::provider::envoy::EnvoyProvider;
use aviary_router_agent::provider::nginx::{NginxProvider, NginxSettings};
use aviary_testkit::NatsServer;
use aviary_testkit::envoy::{Envoy, EnvoyOptions};
use aviary_testkit::nginx::Nginx;
use common::*;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(20);

/// A service behind the ingress: its primary and canary backends.
struct Service {
    name: &'static str,
    primary: Backend,
    canary: Backend,
}

impl Service {
    async fn start(name: &'static str) -> Self {
        Self {
            name,
            primary: Backend::start(&format!("{name}-v1")).await,
            canary: Backend::start(&format!("{name}-v2")).await,
        }
    }

    /// The route of this service's rollout (named after it) on `ingress`.
    fn route(&self, ingress: &str, hosts: &[&str], prefix: &str, canary: u32) -> DesiredRoute {
        let mut d = desired(ingress, &self.primary, &self.canary, canary);
        d.rollout = Some(RolloutRef::new("test", self.name));
        d.hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
        d.path_prefix = prefix.into();
        d
    }
}

async fn ingress(name: &str, provider: Provider, nats: &NatsServer) -> Ingress {
    let client = nats.client().await.unwrap();
    let js = async_nats::jetstream::new(client);
    aviary_bus::setup::ensure_all(&js).await.unwrap();
    let routes = Bucket::open(&js, names::BUCKET_ROUTES).await.unwrap();
    let metrics = Metrics::register(&mut prometheus_client::registry::Registry::default());
    Ingress::new(name.into(), provider, routes, metrics)
}

/// Sends `route` the way the scheduler does: stored in KV first, then commanded.
async fn command(ingress: &Ingress, route: DesiredRoute) -> RouteAck {
    let rollout = route.rollout.clone().unwrap();
    let key = names::route_key(&ingress.name, &rollout.namespace, &rollout.name).unwrap();
    ingress.routes.put(&key, &route).await.unwrap();
    let command = RouteCommand {
        idempotency_key: format!("{}/1/r{}", rollout.name, route.canary_weight),
        route: Some(route),
        ..Default::default()
    };
    ingress.handle(&command).await
}

fn ok(ack: &RouteAck) -> (u32, u32) {
    assert!(ack.ok, "{ack:?}");
    (ack.primary_weight, ack.canary_weight)
}

/// Only `service`'s two versions answered, the canary `percent` ± `tolerance` of them. Envoy
/// and NGINX pick each request's side at random, so the tolerances are about 4.5 standard
/// deviations of the share over the sample.
fn assert_own_split(tally: &Tally, service: &Service, n: usize, percent: f64, tolerance: f64) {
    let own = tally.count(&service.primary.version) + tally.count(&service.canary.version);
    assert_eq!(
        own, n,
        "another service answered {}'s clients: {tally:?}",
        service.name
    );
    assert_share(tally, &service.canary.version, n, percent, tolerance);
}

/// An Envoy ingress `edge` whose xDS server runs until `shutdown`, and its Envoy.
async fn envoy_ingress(nats: &NatsServer, shutdown: &CancellationToken) -> (Arc<Ingress>, Envoy) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_port = listener.local_addr().unwrap().port();
    let provider = Provider::Envoy(EnvoyProvider::new("edge", TIMEOUT));
    let edge = Arc::new(ingress("edge", provider, nats).await);
    let (serving, token) = (edge.clone(), shutdown.clone());
    tokio::spawn(async move {
        if let Provider::Envoy(envoy) = &serving.provider {
            envoy.serve(listener, token).await.unwrap();
        }
    });
    let envoy = Envoy::start(EnvoyOptions::new(xds_port, "edge"))
        .await
        .unwrap();
    (edge, envoy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_on_one_envoy_listener_each_split_only_their_hosts() {
    let nats = NatsServer::start().await.unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let (edge, envoy) = envoy_ingress(&nats, &shutdown).await;
    let (shop, blog, web) = (
        Service::start("shop").await,
        Service::start("blog").await,
        Service::start("web").await,
    );
    let url = envoy.url();
    let shop_client = [("host", "shop.example")];
    let blog_client = [("host", "blog.example:8080")];
    let web_client = [("host", "www.example")];

    // Two rollouts on two hosts, and a catch-all taking every other host.
    assert_eq!(
        ok(&command(&edge, shop.route("edge", &["shop.example"], "/", 20)).await),
        (80, 20)
    );
    assert_eq!(
        ok(&command(&edge, blog.route("edge", &["blog.example"], "/", 0)).await),
        (100, 0)
    );
    assert_eq!(
        ok(&command(&edge, web.route("edge", &[], "/", 100)).await),
        (0, 100)
    );
    assert_own_split(
        &traffic(&url, 1000, &shop_client).await,
        &shop,
        1000,
        20.0,
        6.0,
    );
    assert_own_split(
        &traffic(&url, 200, &blog_client).await,
        &blog,
        200,
        0.0,
        0.0,
    );
    assert_own_split(
        &traffic(&url, 200, &web_client).await,
        &web,
        200,
        100.0,
        0.0,
    );

    // Each progresses on its own: the blog's steps leave the shop's split as it was.
    assert_eq!(
        ok(&command(&edge, blog.route("edge", &["blog.example"], "/", 50)).await),
        (50, 50)
    );
    assert_own_split(
        &traffic(&url, 1000, &blog_client).await,
        &blog,
        1000,
        50.0,
        7.0,
    );
    assert_own_split(
        &traffic(&url, 1000, &shop_client).await,
        &shop,
        1000,
        20.0,
        6.0,
    );

    // A longer path prefix on the shop's host is another selection: /api goes to its own route.
    let api = Service::start("api").await;
    assert_eq!(
        ok(&command(&edge, api.route("edge", &["shop.example"], "/api", 0)).await),
        (100, 0)
    );
    let api_tally = traffic(&format!("{url}/api"), 200, &shop_client).await;
    assert_own_split(&api_tally, &api, 200, 0.0, 0.0);
    assert_own_split(
        &traffic(&url, 500, &shop_client).await,
        &shop,
        500,
        20.0,
        8.0,
    );

    // A second rollout on the shop's host and path is refused, naming the holder; nothing
    // it asked for is served.
    let intruder = Service::start("intruder").await;
    let refused = command(&edge, intruder.route("edge", &["shop.example"], "/", 100)).await;
    assert!(!refused.ok);
    assert!(refused.error.contains("test/shop"), "{refused:?}");
    assert!(refused.error.contains("shop.example"), "{refused:?}");
    let refused = command(&edge, intruder.route("edge", &[], "/", 100)).await;
    assert!(refused.error.contains("test/web"), "{refused:?}");
    assert_own_split(
        &traffic(&url, 500, &shop_client).await,
        &shop,
        500,
        20.0,
        8.0,
    );

    // The rollouts end independently: the shop is promoted, the blog rolled back.
    assert_eq!(
        ok(&command(&edge, shop.route("edge", &["shop.example"], "/", 100)).await),
        (0, 100)
    );
    assert_eq!(
        ok(&command(&edge, blog.route("edge", &["blog.example"], "/", 0)).await),
        (100, 0)
    );
    assert_own_split(
        &traffic(&url, 200, &shop_client).await,
        &shop,
        200,
        100.0,
        0.0,
    );
    assert_own_split(
        &traffic(&url, 200, &blog_client).await,
        &blog,
        200,
        0.0,
        0.0,
    );
    assert_own_split(
        &traffic(&url, 200, &web_client).await,
        &web,
        200,
        100.0,
        0.0,
    );

    // The routes stored in KV are what the data plane serves: a reconcile finds no drift. The
    // intruder's route is stored too (the scheduler writes before it sends), but an agent
    // reading KV afresh keeps the rollouts that held the host and path first.
    assert_eq!(edge.reconcile().await, Ok(false));
    let stored = edge.desired(&Default::default()).await.unwrap();
    let rollouts: Vec<&str> = stored.values().map(|r| r.rollout.as_str()).collect();
    assert_eq!(rollouts, ["api", "blog", "shop", "web"]);
}

fn nginx_provider(nginx: &Nginx) -> Provider {
    Provider::Nginx(NginxProvider::new(
        NginxSettings {
            bin: nginx.bin().to_owned(),
            main_conf: nginx.main_conf(),
            include_path: nginx.include_path(),
            prefix: Some(nginx.prefix()),
            listen: nginx.listen(),
            pid_file: Some(nginx.prefix().join("nginx.pid")),
        },
        TIMEOUT,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_on_one_nginx_each_split_only_their_hosts_and_paths() {
    let nats = NatsServer::start().await.unwrap();
    let nginx = Nginx::start().await.unwrap();
    let internal = ingress("internal", nginx_provider(&nginx), &nats).await;
    let (shop, api, web) = (
        Service::start("shop").await,
        Service::start("api").await,
        Service::start("web").await,
    );
    let url = nginx.url();
    let shop_client = [("host", "shop.example")];

    assert_eq!(
        ok(&command(
            &internal,
            shop.route("internal", &["shop.example"], "/", 30)
        )
        .await),
        (70, 30)
    );
    assert_eq!(
        ok(&command(
            &internal,
            api.route("internal", &["shop.example"], "/api", 0)
        )
        .await),
        (100, 0)
    );
    assert_eq!(
        ok(&command(&internal, web.route("internal", &[], "/", 100)).await),
        (0, 100)
    );
    let tally = traffic(&url, 1000, &shop_client).await;
    if tally.errors > 0 {
        eprintln!(
            "{}\n{}",
            std::fs::read_to_string(nginx.include_path()).unwrap(),
            nginx.error_log()
        );
    }
    assert_own_split(&tally, &shop, 1000, 30.0, 7.0);
    assert_own_split(
        &traffic(&format!("{url}/api"), 200, &shop_client).await,
        &api,
        200,
        0.0,
        0.0,
    );
    assert_own_split(
        &traffic(&url, 200, &[("host", "other.example")]).await,
        &web,
        200,
        100.0,
        0.0,
    );

    // One rollout's step leaves the others' splits alone.
    assert_eq!(
        ok(&command(
            &internal,
            api.route("internal", &["shop.example"], "/api", 100)
        )
        .await),
        (0, 100)
    );
    assert_own_split(
        &traffic(&format!("{url}/api"), 200, &shop_client).await,
        &api,
        200,
        100.0,
        0.0,
    );
    assert_own_split(
        &traffic(&url, 1000, &shop_client).await,
        &shop,
        1000,
        30.0,
        7.0,
    );

    let intruder = Service::start("intruder").await;
    let refused = command(
        &internal,
        intruder.route("internal", &["shop.example"], "/api", 0),
    )
    .await;
    assert!(refused.error.contains("test/api"), "{refused:?}");
    assert_eq!(internal.reconcile().await, Ok(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_on_one_haproxy_drive_each_selections_backend() {
    use aviary_router_agent::provider::haproxy::{HaproxyProvider, HaproxyRoute, HaproxySettings};
    use aviary_testkit::haproxy::{Haproxy, HaproxyBackend};

    let nats = NatsServer::start().await.unwrap();
    let (shop, api, web) = (
        Service::start("shop").await,
        Service::start("api").await,
        Service::start("web").await,
    );
    let backend =
        |name: &str, service: &Service, hosts: &[&str], prefix: Option<&str>| HaproxyBackend {
            name: name.into(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            path_prefix: prefix.map(str::to_owned),
            primary: service.primary.endpoint(),
            canary: service.canary.endpoint(),
        };
    // The operator's configuration: the most specific selection first.
    let haproxy = Haproxy::start_with_backends(&[
        backend("be_api", &api, &["shop.example"], Some("/api")),
        backend("be_shop", &shop, &["shop.example"], None),
        backend("be_web", &web, &[], None),
    ])
    .await
    .unwrap();
    let route = |hosts: &[&str], prefix: Option<&str>, backend: &str| HaproxyRoute {
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        path_prefix: prefix.map(str::to_owned),
        backend: backend.into(),
    };
    let provider = Provider::Haproxy(HaproxyProvider::new(
        HaproxySettings {
            stats_socket: haproxy.stats_socket(),
            backend: Some("be_web".into()),
            primary_server: "primary".into(),
            canary_server: "canary".into(),
            routes: vec![
                route(&["shop.example"], None, "be_shop"),
                route(&["shop.example"], Some("/api"), "be_api"),
            ],
        },
        TIMEOUT,
    ));
    let lb = ingress("lb", provider, &nats).await;
    let url = haproxy.url();
    let shop_client = [("host", "shop.example")];

    assert_eq!(
        ok(&command(&lb, shop.route("lb", &["shop.example"], "/", 20)).await),
        (80, 20)
    );
    assert_eq!(
        ok(&command(&lb, api.route("lb", &["shop.example"], "/api", 100)).await),
        (0, 100)
    );
    assert_eq!(
        ok(&command(&lb, web.route("lb", &[], "/", 0)).await),
        (100, 0)
    );
    assert_own_split(
        &traffic(&url, 1000, &shop_client).await,
        &shop,
        1000,
        20.0,
        6.0,
    );
    assert_own_split(
        &traffic(&format!("{url}/api"), 200, &shop_client).await,
        &api,
        200,
        100.0,
        0.0,
    );
    assert_own_split(
        &traffic(&url, 200, &[("host", "other.example")]).await,
        &web,
        200,
        0.0,
        0.0,
    );

    // A selection no backend is configured for is refused with the reason.
    let blog = Service::start("blog").await;
    let refused = command(&lb, blog.route("lb", &["blog.example"], "/", 10)).await;
    assert!(
        refused.error.contains("no backend is configured"),
        "{refused:?}"
    );
    assert_eq!(
        lb.reconcile().await,
        Ok(false),
        "the routes served are the ones stored"
    );
}
