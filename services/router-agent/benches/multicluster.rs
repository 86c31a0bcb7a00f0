//! Multi-cluster step latency: a hub nats-server and two leaf nats-servers (member clusters
//! `eu` and `us`), each leaf with its own router agent (`--cluster`) and Envoy. One sample is a
//! step decided on the hub: both clusters' route commands published at once → both acks, each
//! confirming that cluster's Envoy serves the split. Beside it, the raw NATS request round trip
//! from the hub to a responder on a leaf, over the leaf link, in the same run. Prints JSON lines
//! `{"name", "value", "unit"}`.
//!
//! `cargo bench -p aviary-router-agent --bench multicluster` (ROUTER_BENCH_CHANGES overrides 200).
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use aviary_bus::names;
use aviary_bus::typed;
use aviary_proto::{Backend, DesiredRoute, RolloutRef, RouteAck, RouteCommand};
use aviary_router_agent::Config;
use aviary_testkit::envoy::{Envoy, EnvoyOptions};
use aviary_testkit::{NatsHub, NatsServer, free_port};
use clap::Parser as _;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(20);
const CLUSTERS: [&str; 2] = ["eu", "us"];

fn command(step: usize, primary: &str, canary: &str, canary_weight: u32) -> RouteCommand {
    RouteCommand {
        idempotency_key: format!("bench.app/1/{step}"),
        generation: 1,
        step: u32::try_from(step).unwrap_or(u32::MAX),
        route: Some(DesiredRoute {
            rollout: Some(RolloutRef::new("bench", "app")),
            ingress: "edge".into(),
            primary: Some(Backend {
                name: "app-v1".into(),
                endpoints: vec![primary.into()],
            }),
            canary: Some(Backend {
                name: "app-v2".into(),
                endpoints: vec![canary.into()],
            }),
            primary_weight: 100 - canary_weight,
            canary_weight,
            ..Default::default()
        }),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn emit(name: &str, value: f64) {
    println!("{{\"name\":\"{name}\",\"value\":{value:.3},\"unit\":\"ms\"}}");
}

/// Starts cluster `cluster`'s router agent on `leaf` with one Envoy ingress, `edge`.
async fn member(
    leaf: &NatsServer,
    cluster: &str,
    dir: &std::path::Path,
    shutdown: &CancellationToken,
) -> Envoy {
    let xds_port = free_port().expect("port");
    let file = dir.join(format!("agent-{cluster}.yaml"));
    std::fs::write(
        &file,
        format!(
            "ingresses:\n- {{name: edge, provider: envoy, xds_addr: '127.0.0.1:{xds_port}'}}\n"
        ),
    )
    .expect("write config");
    let config = Config::parse_from([
        "aviary-router-agent",
        "--config-file",
        &file.display().to_string(),
        "--nats-url",
        &leaf.url(),
        "--admin-addr",
        "127.0.0.1:0",
        "--reconcile-interval-ms",
        "3600000",
        "--cluster",
        cluster,
    ]);
    tokio::spawn(aviary_router_agent::run(config, shutdown.clone()));
    Envoy::start(EnvoyOptions::new(xds_port, "edge"))
        .await
        .expect("envoy")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let changes: usize = std::env::var("ROUTER_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let hub = NatsHub::start().await.expect("hub nats-server");
    let eu = hub.start_leaf("eu").await.expect("eu leaf");
    let us = hub.start_leaf("us").await.expect("us leaf");
    hub.wait_leaves(2).await.expect("leaf links");
    let client = hub.server().client().await.expect("nats client");
    let dir = tempfile::tempdir().expect("temp dir");
    // Backends: anything listening works, the bench measures the apply, not traffic.
    let primary = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let canary = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (p, c) = (
        primary.local_addr().expect("addr").to_string(),
        canary.local_addr().expect("addr").to_string(),
    );
    let shutdown = CancellationToken::new();
    let _envoys = [
        member(&eu, "eu", dir.path(), &shutdown).await,
        member(&us, "us", dir.path(), &shutdown).await,
    ];
    let subjects: Vec<String> = CLUSTERS
        .iter()
        .map(|cluster| names::cluster_route_subject(Some(cluster), "edge").expect("subject"))
        .collect();
    aviary_testkit::eventually(TIMEOUT, "both agents reachable from the hub", || async {
        let mut all = true;
        for subject in &subjects {
            // An empty payload is malformed: the agent answers with an error, which proves it
            // listens across the link; "no responders" means not yet.
            all &= client
                .request(subject.clone(), bytes::Bytes::new())
                .await
                .is_ok();
        }
        all.then_some(())
    })
    .await;

    // Raw NATS request RTT from the hub to an echo responder on the eu leaf.
    let eu_client = eu.client().await.expect("eu client");
    let mut echo = eu_client.subscribe("bench.echo").await.expect("subscribe");
    eu_client.flush().await.expect("flush");
    let responder = eu_client.clone();
    tokio::spawn(async move {
        while let Some(msg) = echo.next().await {
            if let Some(reply) = msg.reply {
                let _ = responder.publish(reply, msg.payload).await;
            }
        }
    });
    aviary_testkit::eventually(TIMEOUT, "the echo reachable from the hub", || async {
        client
            .request("bench.echo", bytes::Bytes::from_static(b"x"))
            .await
            .ok()
    })
    .await;
    let mut rtt = Vec::with_capacity(changes);
    for _ in 0..changes {
        let started = Instant::now();
        client
            .request("bench.echo", bytes::Bytes::from_static(b"x"))
            .await
            .expect("echo");
        rtt.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    rtt.sort_by(f64::total_cmp);

    let mut steps = Vec::with_capacity(changes);
    for i in 0..changes {
        let weight = [5, 10, 20, 50][i % 4];
        let command = command(i, &p, &c, weight);
        let started = Instant::now();
        let acks = futures::future::join_all(
            subjects
                .iter()
                .map(|subject| typed::request::<_, RouteAck>(&client, subject, &command, TIMEOUT)),
        )
        .await;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        for ack in acks {
            let ack = ack.expect("route ack");
            assert!(ack.ok && ack.canary_weight == weight, "{ack:?}");
        }
        steps.push(elapsed);
    }
    steps.sort_by(f64::total_cmp);

    emit("multicluster_step_latency_p99_ms", percentile(&steps, 0.99));
    emit("nats_rtt_p50_ms", percentile(&rtt, 0.5));
    shutdown.cancel();
}
