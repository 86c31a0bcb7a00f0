//! A whole workload-mode Aviary for controller scenarios: a real nats-server, the real
//! scheduler, analyzer and router agent (Gateway API provider) in this process, the in-memory
//! Kubernetes API of `aviary_testkit::kube` standing in for the API server (no API server can
//! run here), a local webhook that passes or fails the canary's checks, and the controller.
//!
//! Flow of a scenario: `World::start()` → `world.deployment(image)` (or `world.daemonset(image)`)
//! and `world.rollout(..)` → `world.wait_phase(..)` (polling with deadlines) → assertions on
//! what the fake API stores (Deployments, DaemonSets, Services, the HTTPRoute the router agent
//! wrote) and on the resource's status and Events.

#![allow(clippy::unwrap_used, dead_code)] // test fixtures: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aviary_bus::kv::Bucket;
use aviary_bus::typed::Proto;
use aviary_bus::{BusMetrics, NatsArgs, names};
use aviary_proto::{AgentCapabilities, DesiredRoute};
use aviary_router_agent::agent::Ingress;
use aviary_router_agent::provider::Provider;
use aviary_router_agent::provider::kube::{KubeKind, KubeProvider, KubeSettings};
use aviary_testkit::kube::FakeKube;
use aviary_testkit::{NatsServer, eventually, free_port};
use clap::Parser as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Namespace of every scenario.
pub(crate) const NS: &str = "test";
/// The target Deployment and the resource's name.
pub(crate) const NAME: &str = "podinfo";
/// The ingress (router agent) of the scenarios.
pub(crate) const INGRESS: &str = "mesh";
/// How long a scenario step may take: seconds normally, the rest is margin for busy cores.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

/// Whether the canary's `rollout` webhook passes.
#[derive(Clone, Default)]
pub(crate) struct Hook(Arc<AtomicBool>);

impl Hook {
    /// Makes the checks fail (`true`) or pass.
    pub(crate) fn failing(&self, fail: bool) {
        self.0.store(fail, Ordering::SeqCst);
    }
}

/// One controller replica in this process.
pub(crate) struct Controller {
    /// Its handle.
    pub running: aviary_controller::Running,
    stop: CancellationToken,
}

impl Controller {
    /// Stops it and waits until it let go (it releases the Lease).
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        self.running.wait().await.unwrap();
    }

    /// Whether it leads now.
    pub(crate) fn leads(&self) -> bool {
        *self.running.leader.borrow()
    }
}

/// Everything a scenario needs.
pub(crate) struct World {
    /// The bus.
    pub nats: NatsServer,
    /// The in-memory Kubernetes API.
    pub kube: FakeKube,
    /// The canary's checks.
    pub hook: Hook,
    hook_url: String,
    scheduler_url: String,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl World {
    /// Starts NATS, the scheduler, the analyzer, the router agent and the webhook; installs the
    /// CRDs in the fake API. The controller is started by [`World::controller`].
    pub(crate) async fn start() -> World {
        Self::start_for(INGRESS).await
    }

    /// [`World::start`] with the router agent serving `ingress`.
    pub(crate) async fn start_for(ingress: &str) -> World {
        Self::start_with(ingress, KubeKind::GatewayApi).await
    }

    /// [`World::start`] with the router agent serving `ingress` through provider `kind`.
    pub(crate) async fn start_with(ingress: &str, provider_kind: KubeKind) -> World {
        // Logs of every service, shown for a failing test (`AVIARY_TEST_LOG` to filter).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("AVIARY_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .with_test_writer()
            .try_init();
        let nats = NatsServer::start().await.unwrap();
        let kube = FakeKube::new();
        for crd in aviary_controller::crd::aviary_crds()
            .into_iter()
            .chain(aviary_controller::crd::flagger_crds())
        {
            kube.upsert(serde_json::to_value(crd).unwrap());
        }
        for (group, version, kind, plural) in [
            ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
            (
                "networking.istio.io",
                "v1",
                "VirtualService",
                "virtualservices",
            ),
            (
                "split.smi-spec.io",
                "v1alpha2",
                "TrafficSplit",
                "trafficsplits",
            ),
        ] {
            kube.register(aviary_testkit::kube::Kind {
                group: group.into(),
                version: version.into(),
                kind: kind.into(),
                plural: plural.into(),
                namespaced: true,
                status_subresource: true,
            });
        }
        // NGINX-ingress clones the user's Ingress, which sends the apex name to the primary.
        kube.upsert(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": NAME, "namespace": NS},
            "spec": {"rules": [{"host": "podinfo.example.com", "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": NAME, "port": {"number": 9898}}}
            }]}}]}
        }));
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();

        // The canary's checks: a `rollout` webhook, 200 or 500.
        let hook = Hook::default();
        let h = hook.clone();
        let app = axum::Router::new().route(
            "/check",
            axum::routing::post(move || {
                let h = h.clone();
                async move {
                    if h.0.load(Ordering::SeqCst) {
                        (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "failing")
                    } else {
                        (axum::http::StatusCode::OK, "ok")
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook_url = format!("http://{}/check", listener.local_addr().unwrap());
        let s = stop.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await;
        }));

        // The scheduler.
        let grpc = free_port().unwrap();
        let grpc_addr = format!("127.0.0.1:{grpc}");
        let scheduler = aviary_scheduler::Config::parse_from([
            "aviary-scheduler",
            "--nats-url",
            &nats.url(),
            "--admin-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            &grpc_addr,
            "--replica-id",
            "a",
            "--lease-ttl-ms",
            "1500",
            "--route-timeout-ms",
            "3000",
            "--analysis-timeout-ms",
            "5000",
        ]);
        let s = stop.clone();
        tasks.push(tokio::spawn(async move {
            aviary_scheduler::run(scheduler, s).await.unwrap();
        }));

        // The analyzer.
        let mut analyzer = aviary_analyzer::Config::parse_from([
            "aviary-analyzer",
            "--admin-addr",
            "127.0.0.1:0",
            "--prometheus-url",
            "http://127.0.0.1:1",
        ]);
        analyzer.nats = NatsArgs::for_url(nats.url());
        let running = aviary_analyzer::start(analyzer, stop.clone())
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            running.wait().await.unwrap();
        }));

        // The router agent: a Gateway API HTTPRoute in the fake API, Service names taken from
        // the route (the controller's `-primary` and `-canary`).
        let client = nats.client().await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        aviary_bus::setup::ensure_all(&js).await.unwrap();
        let routes: Bucket<DesiredRoute, Proto> =
            Bucket::open(&js, names::BUCKET_ROUTES).await.unwrap();
        let agents: Bucket<AgentCapabilities, Proto> =
            Bucket::open(&js, names::BUCKET_AGENTS).await.unwrap();
        let settings = KubeSettings {
            namespace: NS.into(),
            route: NAME.into(),
            port: Some(9898),
            parent_refs: vec!["public".into()],
            ..KubeSettings::default()
        };
        let provider = Provider::Kube(KubeProvider::new(
            provider_kind,
            settings,
            kube.client(),
            Duration::from_secs(5),
        ));
        agents
            .put(
                &names::agent_key(ingress).unwrap(),
                &provider.capabilities().to_proto(ingress, provider.kind()),
            )
            .await
            .unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let ingress = Arc::new(Ingress::new(
            ingress.into(),
            provider,
            routes,
            aviary_router_agent::metrics::Metrics::register(&mut registry),
        ));
        let s = stop.clone();
        tasks.push(tokio::spawn(async move {
            let _ = ingress
                .serve(
                    client,
                    BusMetrics::unregistered(),
                    Duration::from_secs(1),
                    s,
                )
                .await;
        }));

        let scheduler_url = format!("http://{grpc_addr}");
        eventually(DEADLINE, "control API listening", || {
            let url = scheduler_url.clone();
            async move {
                aviary_proto::rollout_service_client::RolloutServiceClient::connect(url)
                    .await
                    .ok()
            }
        })
        .await;
        World {
            nats,
            kube,
            hook,
            hook_url,
            scheduler_url,
            stop,
            tasks,
        }
    }

    /// Starts a controller replica named `identity`, watching Flagger's kinds too.
    pub(crate) async fn controller(&self, identity: &str) -> Controller {
        let mut config = aviary_controller::Config::parse_from([
            "aviary-controller",
            "--admin-addr",
            "127.0.0.1:0",
            "--scheduler",
            &self.scheduler_url,
            "--identity",
            identity,
            "--lease-duration",
            "3s",
            "--resync",
            "2s",
            "--flagger",
        ]);
        config.nats = NatsArgs::for_url(self.nats.url());
        let stop = self.stop.child_token();
        let running = aviary_controller::start(config, self.kube.client(), stop.clone())
            .await
            .unwrap();
        Controller { running, stop }
    }

    /// Creates or updates the target Deployment with `image` and the env `config` ConfigMap.
    pub(crate) fn deployment(&self, image: &str) {
        self.kube.upsert(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": NS, "labels": {"team": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": NAME}},
                "template": {
                    "metadata": {"labels": {"app": NAME}},
                    "spec": {"containers": [{
                        "name": "app",
                        "image": image,
                        "envFrom": [{"configMapRef": {"name": "podinfo-env"}}]
                    }]}
                }
            }
        }));
    }

    /// Creates or updates the target DaemonSet with `image` and the env `config` ConfigMap.
    /// Like `kubectl apply` (whose three-way merge keeps what it did not write), an update
    /// keeps the node selector the controller put on the pod template to scale it to zero.
    pub(crate) fn daemonset(&self, image: &str) {
        let mut pod = json!({"containers": [{
            "name": "app",
            "image": image,
            "envFrom": [{"configMapRef": {"name": "podinfo-env"}}]
        }]});
        let scaled_to_zero = self.get_daemonset(NAME).and_then(|d| {
            d.pointer("/spec/template/spec/nodeSelector/aviary.dev~1scale-to-zero")
                .cloned()
        });
        if let Some(value) = scaled_to_zero {
            pod["nodeSelector"] = json!({"aviary.dev/scale-to-zero": value});
        }
        self.kube.upsert(json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": NAME, "namespace": NS, "labels": {"team": "web"}},
            "spec": {
                "selector": {"matchLabels": {"app": NAME}},
                "template": {
                    "metadata": {"labels": {"app": NAME}},
                    "spec": pod
                }
            }
        }));
    }

    /// [`World::rollout_spec`] with the DaemonSet `podinfo` as the target.
    pub(crate) fn daemonset_rollout_spec(&self, threshold: u32) -> Value {
        let mut spec = self.rollout_spec(threshold);
        spec["targetRef"]["kind"] = json!("DaemonSet");
        spec
    }

    /// Creates or updates the ConfigMap the pods use.
    pub(crate) fn config_map(&self, value: &str) {
        self.kube.upsert(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "podinfo-env", "namespace": NS},
            "data": {"GREETING": value}
        }));
    }

    /// The spec of the scenarios' `Rollout`: Gateway API, 1 s interval, two steps of 25 %,
    /// the webhook as the check, `threshold` failed checks to roll back.
    pub(crate) fn rollout_spec(&self, threshold: u32) -> Value {
        json!({
            "ingresses": [{"name": INGRESS}],
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
            "service": {"port": 9898},
            "provider": "gateway-api",
            "progressDeadlineSeconds": 60,
            "analysis": {
                "interval": "1s",
                "threshold": threshold,
                "maxWeight": 50,
                "stepWeight": 25,
                "webhooks": [{"name": "check", "type": "rollout", "url": self.hook_url, "timeout": "5s"}]
            }
        })
    }

    /// The URL of the checks' webhook.
    pub(crate) fn hook_url(&self) -> &str {
        &self.hook_url
    }

    /// Creates or updates the `Rollout` resource with `spec`.
    pub(crate) fn rollout(&self, spec: Value) {
        self.kube.upsert(json!({
            "apiVersion": "aviary.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": NAME, "namespace": NS},
            "spec": spec
        }));
    }

    /// A Deployment as the fake API stores it.
    pub(crate) fn get_deployment(&self, name: &str) -> Option<Value> {
        self.kube.get("apps/v1", "Deployment", Some(NS), name)
    }

    /// The image of Deployment `name`.
    pub(crate) fn image(&self, name: &str) -> Option<String> {
        self.get_deployment(name)?
            .pointer("/spec/template/spec/containers/0/image")?
            .as_str()
            .map(str::to_owned)
    }

    /// `spec.replicas` of Deployment `name`.
    pub(crate) fn replicas(&self, name: &str) -> Option<i64> {
        self.get_deployment(name)?
            .pointer("/spec/replicas")?
            .as_i64()
    }

    /// A DaemonSet as the fake API stores it.
    pub(crate) fn get_daemonset(&self, name: &str) -> Option<Value> {
        self.kube.get("apps/v1", "DaemonSet", Some(NS), name)
    }

    /// The image of DaemonSet `name`.
    pub(crate) fn daemonset_image(&self, name: &str) -> Option<String> {
        self.get_daemonset(name)?
            .pointer("/spec/template/spec/containers/0/image")?
            .as_str()
            .map(str::to_owned)
    }

    /// Whether DaemonSet `name` is scaled to zero: its pods select the node label no node
    /// has, and it is scheduled on no node.
    pub(crate) fn daemonset_at_zero(&self, name: &str) -> bool {
        self.get_daemonset(name).is_some_and(|d| {
            d.pointer("/spec/template/spec/nodeSelector/aviary.dev~1scale-to-zero")
                == Some(&json!("true"))
                && d.pointer("/status/desiredNumberScheduled") == Some(&json!(0))
        })
    }

    /// The status of the resource of `api_version`/`kind`.
    pub(crate) fn status(&self, api_version: &str, kind: &str) -> Value {
        self.kube
            .get(api_version, kind, Some(NS), NAME)
            .and_then(|o| o.get("status").cloned())
            .unwrap_or(Value::Null)
    }

    /// Waits until the resource's `status.phase` is `phase`.
    pub(crate) async fn wait_phase(&self, api_version: &str, kind: &str, phase: &str) -> Value {
        eventually(DEADLINE, &format!("{kind} reaches {phase}"), || {
            let status = self.status(api_version, kind);
            async move { (status["phase"] == phase).then_some(status) }
        })
        .await
    }

    /// `(service, weight)` of each backend of the HTTPRoute the router agent wrote.
    pub(crate) fn route_backends(&self) -> Vec<(String, i64)> {
        let Some(route) =
            self.kube
                .get("gateway.networking.k8s.io/v1", "HTTPRoute", Some(NS), NAME)
        else {
            return Vec::new();
        };
        let rules = route
            .pointer("/spec/rules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let Some(rule) = rules.last() else {
            return Vec::new();
        };
        rule["backendRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                (
                    b["name"].as_str().unwrap_or_default().to_owned(),
                    b["weight"].as_i64().unwrap_or(1),
                )
            })
            .collect()
    }

    /// `(service, weight)` of the split the router agent's object expresses, whatever the
    /// provider: HTTPRoute backendRefs, VirtualService routes, TrafficSplit backends, or the
    /// NGINX-ingress canary clone's weight annotation (the rest going to the apex Service,
    /// which selects the primary's pods).
    pub(crate) fn served_split(&self, kind: KubeKind) -> Vec<(String, i64)> {
        let get = |api_version: &str, k: &str, name: &str| {
            self.kube
                .get(api_version, k, Some(NS), name)
                .unwrap_or(Value::Null)
        };
        let pairs = |items: &Value, name: &str, weight: &str| -> Vec<(String, i64)> {
            items
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    (
                        b.pointer(name)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        b[weight].as_i64().unwrap_or(1),
                    )
                })
                .collect()
        };
        match kind {
            KubeKind::GatewayApi => self.route_backends(),
            KubeKind::Istio => {
                let vs = get("networking.istio.io/v1", "VirtualService", NAME);
                let routes = vs
                    .pointer("/spec/http")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                routes.last().map_or_else(Vec::new, |r| {
                    pairs(&r["route"], "/destination/host", "weight")
                })
            }
            KubeKind::Smi => {
                let ts = get("split.smi-spec.io/v1alpha2", "TrafficSplit", NAME);
                pairs(&ts["spec"]["backends"], "/service", "weight")
            }
            KubeKind::NginxIngress => {
                let canary = get("networking.k8s.io/v1", "Ingress", "podinfo-canary");
                let weight: i64 = canary
                    .pointer("/metadata/annotations/nginx.ingress.kubernetes.io~1canary-weight")
                    .and_then(Value::as_str)
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(-1);
                let service = canary
                    .pointer("/spec/rules/0/http/paths/0/backend/service/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                vec![(NAME.to_owned(), 100 - weight), (service, weight)]
            }
        }
    }

    /// The reasons of the Events recorded on the resource, in order.
    pub(crate) fn event_reasons(&self, kind: &str) -> Vec<String> {
        let mut events = self.kube.list("v1", "Event", Some(NS));
        events.retain(|e| e.pointer("/involvedObject/kind") == Some(&json!(kind)));
        events.sort_by_key(|e| {
            e.pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        });
        events
            .iter()
            .filter_map(|e| e["reason"].as_str().map(str::to_owned))
            .collect()
    }

    /// Stops everything.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
