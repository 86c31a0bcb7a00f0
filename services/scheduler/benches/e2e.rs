//! End-to-end figures on the real stack (nats-server, the service binaries, a real Envoy):
//!
//! - `e2e_step_latency_p50_ms` / `_p99_ms`: a `SetWeight` call to the control API → the first
//!   request through Envoy answered by the backend the new split sends everything to. Each
//!   sample flips the canary between 0 % and 100 %, so one request tells which split Envoy
//!   serves. The path is API → record (CAS) → owning scheduler decides → routes bucket + route
//!   command → router agent → xDS → Envoy.
//! - `nats_rtt_p50_ms`: the raw NATS request round trip in the same run, as a baseline.
//! - `rss_idle_mb_<service>`: each service binary started alone against nats-server, ready
//!   (`/readyz`) and polled idle for a moment, then its `VmRSS`.
//!
//! The analyzer is an in-process responder (verdicts do not matter here). The other services'
//! binaries are taken from the directory of the scheduler's (`scripts/bench.sh` builds them);
//! a missing one is reported and its figure skipped.
//!
//! `cargo bench -p aviary-scheduler --bench e2e` (`E2E_BENCH_SAMPLES` overrides 40).
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // a bench: a panic is the failure report

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aviary_proto as pb;
use aviary_testkit::envoy::{Envoy, EnvoyOptions};
use aviary_testkit::{NatsServer, Process, free_port};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);

fn emit(name: &str, value: f64, unit: &str) {
    println!("{{\"name\":\"{name}\",\"value\":{value:.3},\"unit\":\"{unit}\"}}");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn binary(name: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_BIN_EXE_aviary-scheduler")).parent()?;
    let path = dir.join(name);
    path.exists().then_some(path)
}

/// An HTTP/1.1 backend that answers every request with `body`, keeping connections open.
async fn backend(body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut pending = Vec::new();
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn wait_ready(process: &mut Process, admin: u16) {
    let url = format!("http://127.0.0.1:{admin}/readyz");
    process
        .wait_ready(DEADLINE, || {
            let url = url.clone();
            async move { reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) }
        })
        .await
        .unwrap();
}

fn vm_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Arguments that start `service` against `nats` with its admin port on `admin`.
fn service_args(service: &str, nats: &str, admin: u16, dir: &Path, xds: u16) -> Vec<String> {
    let mut args = vec![
        "--nats-url".to_owned(),
        nats.to_owned(),
        "--admin-addr".into(),
        format!("127.0.0.1:{admin}"),
        "--log".into(),
        "warn".into(),
    ];
    match service {
        "scheduler" => args.extend([
            "--grpc-addr".into(),
            format!("127.0.0.1:{}", free_port().unwrap()),
            "--replica-id".into(),
            "bench".into(),
        ]),
        "analyzer" => args.extend([
            "--prometheus-url".into(),
            // Nothing is queried while idle.
            "http://127.0.0.1:9".into(),
        ]),
        "router-agent" => {
            let file = dir.join("agent.yaml");
            std::fs::write(
                &file,
                format!(
                    "ingresses:\n  - {{name: edge, provider: envoy, xds_addr: '127.0.0.1:{xds}'}}\n"
                ),
            )
            .unwrap();
            args.extend([
                "--config-file".into(),
                file.display().to_string(),
                "--reconcile-interval-ms".into(),
                "3600000".into(),
            ]);
        }
        "notifier" => {
            let file = dir.join("notifier.yaml");
            std::fs::write(
                &file,
                "defaultProvider: sink\nproviders:\n  - name: sink\n    type: webhook\n    url: http://127.0.0.1:9/hook\n",
            )
            .unwrap();
            args.extend(["--config".into(), file.display().to_string()]);
        }
        _ => {}
    }
    args
}

async fn idle_rss(nats: &NatsServer, dir: &Path) {
    for service in ["scheduler", "analyzer", "router-agent", "notifier"] {
        let Some(bin) = binary(&format!("aviary-{service}")) else {
            eprintln!("aviary-{service} not built: rss_idle_mb_{service} skipped");
            continue;
        };
        let admin = free_port().unwrap();
        let args = service_args(service, &nats.url(), admin, dir, free_port().unwrap());
        let log = dir.join(format!("{service}-idle.log"));
        let mut process = Process::spawn(service, &bin, args, &log).unwrap();
        wait_ready(&mut process, admin).await;
        // Idle: ready, and still ready a moment later with nothing to do.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            wait_ready(&mut process, admin).await;
        }
        let rss = vm_rss_mb(process.pid().unwrap());
        emit(
            &format!("rss_idle_mb_{}", service.replace('-', "_")),
            rss,
            "MB",
        );
        let _ = process.stop(Duration::from_secs(10)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let samples: usize = std::env::var("E2E_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    idle_rss(&nats, dir.path()).await;

    let Some(agent_bin) = binary("aviary-router-agent") else {
        eprintln!("aviary-router-agent not built: e2e_step_latency skipped");
        return;
    };
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let stop = CancellationToken::new();
    let _verdicts =
        common::analyzer_responder(client.clone(), pb::Outcome::Pass, stop.clone()).await;
    let xds = free_port().unwrap();
    let agent_admin = free_port().unwrap();
    let mut agent = Process::spawn(
        "router-agent",
        &agent_bin,
        service_args("router-agent", &nats.url(), agent_admin, dir.path(), xds),
        &dir.path().join("router-agent.log"),
    )
    .unwrap();
    wait_ready(&mut agent, agent_admin).await;
    let envoy = Envoy::start(EnvoyOptions::new(xds, "edge")).await.unwrap();

    let admin = free_port().unwrap();
    let mut args = service_args("scheduler", &nats.url(), admin, dir.path(), xds);
    let grpc = args[args.iter().position(|a| a == "--grpc-addr").unwrap() + 1].clone();
    args.extend(["--lease-ttl-ms".into(), "3000".into()]);
    let mut scheduler = Process::spawn(
        "scheduler",
        Path::new(env!("CARGO_BIN_EXE_aviary-scheduler")),
        args,
        &dir.path().join("scheduler.log"),
    )
    .unwrap();
    wait_ready(&mut scheduler, admin).await;
    let port: u16 = grpc.rsplit(':').next().unwrap().parse().unwrap();
    let mut api = common::api(port).await;
    let manifest = format!(
        r#"apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata: {{ name: e2e, namespace: test }}
spec:
  ingresses: [{{ name: edge }}]
  primary: {{ name: app-v1, endpoints: ["{v1}"] }}
  canary: {{ name: app-v2, endpoints: ["{v2}"] }}
  progressDeadlineSeconds: 3600
  analysis:
    interval: 1h
    threshold: 5
    maxWeight: 50
    stepWeight: 10
"#
    );
    api.apply(pb::ApplyRequest { manifest }).await.unwrap();
    common::wait_phase(&api, "e2e", pb::Phase::Progressing, DEADLINE).await;

    let http = reqwest::Client::new();
    let url = envoy.url();
    let served = |http: reqwest::Client, url: String| async move {
        let response = http.get(&url).send().await.ok()?;
        response.text().await.ok()
    };
    let mut latencies = Vec::with_capacity(samples);
    let mut api_ms = Vec::with_capacity(samples);
    for i in 0..samples {
        let (weight, want) = if i % 2 == 0 { (100, "v2") } else { (0, "v1") };
        let started = Instant::now();
        api.set_weight(pb::SetWeightRequest {
            r#ref: Some(pb::RolloutRef::new("test", "e2e")),
            weight,
        })
        .await
        .unwrap();
        api_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        loop {
            if served(http.clone(), url.clone()).await.as_deref() == Some(want) {
                break;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "Envoy never served {want}\n{}",
                scheduler.log()
            );
        }
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    api_ms.sort_by(f64::total_cmp);
    eprintln!(
        "SetWeight call returned after {:.1} ms (p50)",
        percentile(&api_ms, 0.5)
    );
    // Where the time goes: the scheduler's own decision → every ingress acked.
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let ack = "aviary_scheduler_route_ack_latency_seconds";
    eprintln!(
        "route decision → acked by the router agent: mean {:.1} ms over {} routes",
        value(&format!("{ack}_sum ")) / value(&format!("{ack}_count ")) * 1000.0,
        value(&format!("{ack}_count "))
    );
    let rtt = common::nats_rtt_p50_ms(&client).await;
    emit("e2e_step_latency_p50_ms", percentile(&latencies, 0.5), "ms");
    emit(
        "e2e_step_latency_p99_ms",
        percentile(&latencies, 0.99),
        "ms",
    );
    emit("nats_rtt_p50_ms", rtt, "ms");

    stop.cancel();
    let _ = scheduler.stop(Duration::from_secs(10)).await;
    let _ = agent.stop(Duration::from_secs(10)).await;
    drop(envoy);
}
