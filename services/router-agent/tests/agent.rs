//! End to end: the agent binary over a real nats-server driving a real Envoy.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aviary_bus::kv::Bucket;
use aviary_bus::names;
use aviary_bus::typed::{self, Proto};
use aviary_proto::{AgentCapabilities, DesiredRoute, RouteAck, RouteCommand};
use aviary_testkit::envoy::{Envoy, EnvoyOptions};
use aviary_testkit::{NatsServer, Process, eventually, free_port};
use common::*;

const DEADLINE: Duration = Duration::from_secs(30);

struct Agent {
    process: Option<Process>,
    args: Vec<String>,
    admin: String,
    log: PathBuf,
}

impl Agent {
    async fn start(dir: &Path, nats_url: &str, xds_port: u16) -> Self {
        Self::start_with(dir, nats_url, xds_port, &[]).await
    }

    /// [`Agent::start`] with `extra` flags.
    async fn start_with(dir: &Path, nats_url: &str, xds_port: u16, extra: &[&str]) -> Self {
        let config = dir.join("agent.yaml");
        std::fs::write(
            &config,
            format!(
                "ingresses:\n  - name: edge\n    provider: envoy\n    xds_addr: 127.0.0.1:{xds_port}\n"
            ),
        )
        .unwrap();
        let admin_port = free_port().unwrap();
        let args = vec![
            "--config-file".into(),
            config.display().to_string(),
            "--nats-url".into(),
            nats_url.into(),
            "--admin-addr".into(),
            format!("127.0.0.1:{admin_port}"),
            "--reconcile-interval-ms".into(),
            "300".into(),
            "--log".into(),
            "info,aviary_router_agent=debug".into(),
        ];
        let args = args
            .into_iter()
            .chain(extra.iter().map(|a| (*a).to_owned()))
            .collect();
        let mut agent = Self {
            process: None,
            args,
            admin: format!("http://127.0.0.1:{admin_port}"),
            log: dir.join("agent.log"),
        };
        agent.launch().await;
        agent
    }

    async fn launch(&mut self) {
        let bin = Path::new(env!("CARGO_BIN_EXE_aviary-router-agent"));
        let mut process = Process::spawn("router-agent", bin, &self.args, &self.log).unwrap();
        let ready = format!("{}/readyz", self.admin);
        process
            .wait_ready(DEADLINE, || {
                let ready = ready.clone();
                async move {
                    client()
                        .get(ready)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            })
            .await
            .unwrap();
        self.process = Some(process);
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }
}

fn command(route: DesiredRoute, step: u32) -> RouteCommand {
    RouteCommand {
        idempotency_key: format!("test.podinfo/1/{step}"),
        generation: 1,
        step,
        route: Some(route),
    }
}

async fn canary_weight_in_envoy(envoy: &Envoy) -> Option<u64> {
    let routes = envoy.dynamic_routes().await.ok()?;
    let clusters = routes
        .first()?
        .pointer("/virtual_hosts/0/routes/0/route/weighted_clusters/clusters")?
        .as_array()?
        .clone();
    Some(
        clusters
            .iter()
            .find(|c| c["name"] == "test_podinfo-v2")
            .and_then(|c| c["weight"].as_u64())
            .unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_commands_over_nats_survive_an_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let primary = Backend::start("podinfo-v1").await;
    let canary = Backend::start("podinfo-v2").await;
    let xds_port = free_port().unwrap();
    let mut agent = Agent::start(dir.path(), &nats.url(), xds_port).await;
    let envoy = Envoy::start(EnvoyOptions::new(xds_port, "edge"))
        .await
        .unwrap();

    let js = async_nats::jetstream::new(client.clone());
    let agents: Bucket<AgentCapabilities, Proto> =
        Bucket::open(&js, names::BUCKET_AGENTS).await.unwrap();
    let caps = agents.get("edge").await.unwrap().unwrap().value;
    assert_eq!(caps.provider, "envoy");
    assert!(caps.mirror && caps.header_match && caps.session_affinity);

    // The scheduler's side: record the desired route, then command the agent.
    let routes: Bucket<DesiredRoute, Proto> =
        Bucket::open(&js, names::BUCKET_ROUTES).await.unwrap();
    let key = names::route_key("edge", "test", "podinfo").unwrap();
    let subject = names::route_subject("edge").unwrap();
    let route = desired("edge", &primary, &canary, 10);
    routes.put(&key, &route).await.unwrap();
    let ack: RouteAck = typed::request(&client, &subject, &command(route, 1), DEADLINE)
        .await
        .unwrap();
    assert!(ack.ok, "{ack:?}");
    assert_eq!((ack.primary_weight, ack.canary_weight), (90, 10));
    assert_eq!(ack.idempotency_key, "test.podinfo/1/1");
    assert!(ack.confirmed_at_ms > 0);
    let tally = traffic(&envoy.url(), 2000, &[]).await;
    assert_share(&tally, "podinfo-v2", 2000, 10.0, 3.0);

    // Bad input gets an answer, never a crash.
    let mut invalid = desired("edge", &primary, &canary, 10);
    invalid.primary_weight = 50;
    let ack: RouteAck = typed::request(&client, &subject, &command(invalid, 2), DEADLINE)
        .await
        .unwrap();
    assert!(
        !ack.ok && ack.error.contains("route.canary_weight"),
        "{ack:?}"
    );
    let garbage = client
        .request(
            subject.clone(),
            bytes::Bytes::from_static(b"\xff\xff not protobuf"),
        )
        .await
        .unwrap();
    assert!(
        garbage.headers.is_some(),
        "malformed request answered with an error"
    );
    let failed = typed::request::<_, RouteAck>(
        &client,
        &subject,
        &command(DesiredRoute::default(), 3),
        DEADLINE,
    )
    .await;
    assert!(
        matches!(failed, Ok(RouteAck { ok: false, .. })),
        "{failed:?}"
    );

    // Kill the agent: Envoy keeps serving its last configuration.
    agent.kill();
    let tally = traffic(&envoy.url(), 1000, &[]).await;
    assert_share(&tally, "podinfo-v2", 1000, 10.0, 4.0);

    // While it is down, the desired route changes in KV; a restart reconciles to it.
    routes
        .put(&key, &desired("edge", &primary, &canary, 50))
        .await
        .unwrap();
    agent.launch().await;
    eventually(
        DEADLINE,
        "envoy serving the route changed in KV",
        || async { (canary_weight_in_envoy(&envoy).await == Some(50)).then_some(()) },
    )
    .await;
    let tally = traffic(&envoy.url(), 1000, &[]).await;
    assert_share(&tally, "podinfo-v2", 1000, 50.0, 6.0);

    // And commands work again after the restart.
    let ack: RouteAck = typed::request(
        &client,
        &subject,
        &command(desired("edge", &primary, &canary, 100), 4),
        DEADLINE,
    )
    .await
    .unwrap();
    assert!(ack.ok && ack.canary_weight == 100, "{ack:?}");
    let tally = traffic(&envoy.url(), 100, &[]).await;
    assert_eq!(tally.count("podinfo-v2"), 100);
    let stored = routes.get(&key).await.unwrap().unwrap().value;
    assert_eq!(stored.canary_weight, 100);

    let metrics = client_text(&format!("{}/metrics", agent.admin)).await;
    assert!(
        metrics.contains("aviary_router_applies_total{provider=\"envoy\",outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("aviary_router_xds_connected_proxies{ingress=\"edge\"} 1"),
        "{metrics}"
    );
}

async fn client_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_of_a_member_cluster_takes_commands_on_its_clusters_subject_only() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let primary = Backend::start("podinfo-v1").await;
    let canary = Backend::start("podinfo-v2").await;
    let xds_port = free_port().unwrap();
    let _agent = Agent::start_with(dir.path(), &nats.url(), xds_port, &["--cluster", "eu"]).await;
    let envoy = Envoy::start(EnvoyOptions::new(xds_port, "edge"))
        .await
        .unwrap();

    let js = async_nats::jetstream::new(client.clone());
    let routes: Bucket<DesiredRoute, Proto> =
        Bucket::open(&js, names::BUCKET_ROUTES).await.unwrap();
    let route = desired("edge", &primary, &canary, 20);
    routes
        .put(
            &names::route_key("edge", "test", "podinfo").unwrap(),
            &route,
        )
        .await
        .unwrap();
    let subject = names::cluster_route_subject(Some("eu"), "edge").unwrap();
    let ack: RouteAck = typed::request(&client, &subject, &command(route.clone(), 1), DEADLINE)
        .await
        .unwrap();
    assert!(ack.ok, "{ack:?}");
    assert_eq!((ack.primary_weight, ack.canary_weight), (80, 20));
    let tally = traffic(&envoy.url(), 1000, &[]).await;
    assert_share(&tally, "podinfo-v2", 1000, 20.0, 5.0);

    for other in [
        names::route_subject("edge").unwrap(),
        names::cluster_route_subject(Some("us"), "edge").unwrap(),
    ] {
        let err = client
            .request(other.clone(), bytes::Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            async_nats::RequestErrorKind::NoResponders,
            "{other}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_the_hub_reach_a_member_clusters_agent_over_its_leaf_link() {
    let dir = tempfile::tempdir().unwrap();
    let hub = aviary_testkit::NatsHub::start().await.unwrap();
    let mut eu = hub.start_leaf("eu").await.unwrap();
    hub.wait_leaves(1).await.unwrap();
    let primary = Backend::start("podinfo-v1").await;
    let canary = Backend::start("podinfo-v2").await;
    let xds_port = free_port().unwrap();
    let _agent = Agent::start_with(dir.path(), &eu.url(), xds_port, &["--cluster", "eu"]).await;
    let envoy = Envoy::start(EnvoyOptions::new(xds_port, "edge"))
        .await
        .unwrap();

    // The agent keeps its routes in its own cluster's JetStream domain.
    let js = async_nats::jetstream::new(eu.client().await.unwrap());
    let routes: Bucket<DesiredRoute, Proto> =
        Bucket::open(&js, names::BUCKET_ROUTES).await.unwrap();
    let key = names::route_key("edge", "test", "podinfo").unwrap();
    let subject = names::cluster_route_subject(Some("eu"), "edge").unwrap();
    let hub_client = hub.server().client().await.unwrap();
    let send = |weight: u32, step: u32| {
        let (hub_client, subject) = (hub_client.clone(), subject.clone());
        let route = desired("edge", &primary, &canary, weight);
        async move {
            typed::request::<_, RouteAck>(&hub_client, &subject, &command(route, step), DEADLINE)
                .await
        }
    };
    routes
        .put(&key, &desired("edge", &primary, &canary, 10))
        .await
        .unwrap();
    let ack = eventually(DEADLINE, "an ack from eu over the leaf link", || async {
        send(10, 1).await.ok()
    })
    .await;
    assert!(ack.ok, "{ack:?}");
    assert_eq!(ack.canary_weight, 10);
    let tally = traffic(&envoy.url(), 1000, &[]).await;
    assert_share(&tally, "podinfo-v2", 1000, 10.0, 4.0);

    // The link is cut: the hub's command gets no ack (the scheduler would halt the step), and
    // Envoy keeps serving the last split.
    eu.kill();
    hub.wait_leaves(0).await.unwrap();
    assert!(send(30, 2).await.is_err(), "no ack while eu's link is down");
    let tally = traffic(&envoy.url(), 1000, &[]).await;
    assert_share(&tally, "podinfo-v2", 1000, 10.0, 4.0);

    // The link returns (the agent reconnects to its leaf): the same command is acked again.
    eu.start_again().await.unwrap();
    hub.wait_leaves(1).await.unwrap();
    let ack = eventually(
        DEADLINE,
        "an ack from eu after the link returned",
        || async { send(30, 2).await.ok() },
    )
    .await;
    assert!(ack.ok, "{ack:?}");
    assert_eq!(ack.canary_weight, 30);
    eventually(DEADLINE, "envoy serving 30 %", || async {
        (canary_weight_in_envoy(&envoy).await == Some(30)).then_some(())
    })
    .await;
}
