//! Route-apply latency: route command published → ack with the confirmed split, for Envoy,
//! NGINX and HAProxy behind one in-process agent over a real nats-server, plus the raw NATS
//! request round trip in the same run. Prints JSON lines `{"name", "value", "unit"}`.
//!
//! `cargo bench -p aviary-router-agent --bench apply` (ROUTER_BENCH_CHANGES overrides 200).
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use aviary_bus::names;
use aviary_bus::typed;
use aviary_proto::{Backend, DesiredRoute, RolloutRef, RouteAck, RouteCommand};
use aviary_router_agent::Config;
use aviary_testkit::envoy::{Envoy, EnvoyOptions};
use aviary_testkit::haproxy::{BACKEND, Haproxy};
use aviary_testkit::nginx::Nginx;
use aviary_testkit::{NatsServer, free_port};
use clap::Parser as _;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(20);

fn desired(ingress: &str, primary: &str, canary: &str, canary_weight: u32) -> DesiredRoute {
    DesiredRoute {
        rollout: Some(RolloutRef::new("bench", "app")),
        ingress: ingress.into(),
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
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn emit(name: &str, value: f64) {
    println!("{{\"name\":\"{name}\",\"value\":{value:.3},\"unit\":\"ms\"}}");
}

async fn measure(
    client: &async_nats::Client,
    ingress: &str,
    changes: usize,
    primary: &str,
    canary: &str,
) -> Vec<f64> {
    let subject = names::route_subject(ingress).expect("subject");
    let mut samples = Vec::with_capacity(changes);
    for i in 0..changes {
        let weight = [5, 10, 20, 50][i % 4];
        let command = RouteCommand {
            idempotency_key: format!("bench.app/1/{i}"),
            generation: 1,
            step: u32::try_from(i).unwrap_or(u32::MAX),
            route: Some(desired(ingress, primary, canary, weight)),
        };
        let started = Instant::now();
        let ack: RouteAck = typed::request(client, &subject, &command, TIMEOUT)
            .await
            .expect("route ack");
        assert!(ack.ok && ack.canary_weight == weight, "{ack:?}");
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    samples
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let changes: usize = std::env::var("ROUTER_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let nats = NatsServer::start().await.expect("nats-server");
    let client = nats.client().await.expect("nats client");
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
    let xds_port = free_port().expect("port");
    let nginx = Nginx::start().await.expect("nginx");
    let haproxy = Haproxy::start(&p, &c).await.expect("haproxy");
    let file = dir.path().join("agent.yaml");
    std::fs::write(
        &file,
        format!(
            "ingresses:\n\
             - {{name: edge, provider: envoy, xds_addr: '127.0.0.1:{xds_port}'}}\n\
             - {{name: web, provider: nginx, bin: '{}', main_conf: '{}', include_path: '{}', prefix: '{}', listen: '{}', pid_file: '{}'}}\n\
             - {{name: lb, provider: haproxy, stats_socket: '{}', backend: {BACKEND}}}\n",
            nginx.bin().display(),
            nginx.main_conf().display(),
            nginx.include_path().display(),
            nginx.prefix().display(),
            nginx.listen(),
            nginx.prefix().join("nginx.pid").display(),
            haproxy.stats_socket().display(),
        ),
    )
    .expect("write config");
    let config = Config::parse_from([
        "aviary-router-agent",
        "--config-file",
        &file.display().to_string(),
        "--nats-url",
        &nats.url(),
        "--admin-addr",
        "127.0.0.1:0",
        "--reconcile-interval-ms",
        "3600000",
    ]);
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(aviary_router_agent::run(config, shutdown.clone()));
    let envoy = Envoy::start(EnvoyOptions::new(xds_port, "edge"))
        .await
        .expect("envoy");
    wait_for_responders(&client).await;

    // Raw NATS request RTT against an echo responder.
    let mut echo = client.subscribe("bench.echo").await.expect("subscribe");
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(msg) = echo.next().await {
            if let Some(reply) = msg.reply {
                let _ = responder.publish(reply, msg.payload).await;
            }
        }
    });
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

    let envoy_samples = measure(&client, "edge", changes, &p, &c).await;
    let nginx_samples = measure(&client, "web", changes, &p, &c).await;
    let haproxy_samples = measure(&client, "lb", changes, &p, &c).await;

    emit("router_apply_p50_ms_envoy", percentile(&envoy_samples, 0.5));
    emit(
        "router_apply_p99_ms_envoy",
        percentile(&envoy_samples, 0.99),
    );
    emit("router_apply_p50_ms_nginx", percentile(&nginx_samples, 0.5));
    emit(
        "router_apply_p99_ms_nginx",
        percentile(&nginx_samples, 0.99),
    );
    emit(
        "router_apply_p50_ms_haproxy",
        percentile(&haproxy_samples, 0.5),
    );
    emit(
        "router_apply_p99_ms_haproxy",
        percentile(&haproxy_samples, 0.99),
    );
    emit("nats_rtt_p50_ms", percentile(&rtt, 0.5));

    shutdown.cancel();
    let _ = agent.await;
    drop(envoy);
}

async fn wait_for_responders(client: &async_nats::Client) {
    aviary_testkit::eventually(TIMEOUT, "agent subscribed", || async {
        let mut all = true;
        for ingress in ["edge", "web", "lb"] {
            let subject = names::route_subject(ingress).expect("subject");
            // An empty payload is malformed: the agent answers with an error, which proves it
            // listens; "no responders" means not yet.
            let answered = client.request(subject, bytes::Bytes::new()).await.is_ok();
            all &= answered;
        }
        all.then_some(())
    })
    .await;
}
