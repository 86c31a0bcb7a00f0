//! Controller reconcile latency and footprint at 1 000 resources.
//!
//! The in-memory Kubernetes API (`aviary_testkit::kube::FakeKube`) is served over HTTP. The
//! real `aviary-controller` binary runs as its own process against it, through a kubeconfig,
//! with a real nats-server and the real scheduler, whose route commands are acked by a
//! responder. N `Rollout`s, each with its own target Deployment, are created and initialised
//! (each gets a primary, its Services, and a scaled-down target). Then, one at a time, a
//! target's image changes, and the time is taken from that write (the watch event the
//! controller gets) to the controller's write of the new revision into the resource's status.
//! Along the way the controller applies the new revision to the scheduler.
//!
//! Figures (JSON lines `{"name", "value", "unit"}`):
//! - `controller_reconcile_p50_ms_<N>` and `controller_reconcile_p99_ms_<N>`: that latency;
//! - `controller_rss_mb_<N>`: the controller's resident memory (`VmRSS`) once all N are
//!   initialised;
//! - `fake_kube_rtt_p50_ms`: the baseline of the same run, one GET round trip to the in-memory
//!   API over HTTP.
//!
//! `cargo bench -p aviary-controller --bench reconcile`; `CONTROLLER_BENCH_SIZE` (default
//! 1000) and `CONTROLLER_BENCH_SAMPLES` (default 200) override.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // a bench: a panic is the failure report
#![allow(clippy::cast_precision_loss)]

use std::time::{Duration, Instant};

use aviary_bus::kv::Bucket;
use aviary_bus::names;
use aviary_bus::typed::Proto;
use aviary_proto as pb;
use aviary_testkit::kube::FakeKube;
use aviary_testkit::{NatsServer, Process, free_port};
use clap::Parser as _;
use futures::StreamExt as _;
use prost::Message as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const NS: &str = "bench";
const INGRESS: &str = "bench";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn print(name: &str, value: f64, unit: &str) {
    println!("{}", json!({"name": name, "value": value, "unit": unit}));
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn deployment(i: usize, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": format!("app-{i}"), "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": format!("app-{i}")}},
            "template": {
                "metadata": {"labels": {"app": format!("app-{i}")}},
                "spec": {"containers": [{"name": "app", "image": image}]}
            }
        }
    })
}

fn rollout(i: usize) -> Value {
    json!({
        "apiVersion": "aviary.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": format!("app-{i}"), "namespace": NS},
        "spec": {
            "ingresses": [{"name": INGRESS}],
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("app-{i}")},
            "service": {"port": 8080},
            "analysis": {"interval": "1h", "threshold": 1, "maxWeight": 50, "stepWeight": 10}
        }
    })
}

fn status_field(fake: &FakeKube, i: usize, field: &str) -> Option<String> {
    fake.get(
        "aviary.dev/v1alpha1",
        "Rollout",
        Some(NS),
        &format!("app-{i}"),
    )?
    .pointer(&format!("/status/{field}"))?
    .as_str()
    .map(str::to_owned)
}

/// Acks every route command on `aviary.route.<INGRESS>` with the split asked for.
async fn route_responder(client: async_nats::Client) {
    let mut sub = client
        .subscribe(names::route_subject(INGRESS).unwrap())
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            let Ok(command) = pb::RouteCommand::decode(message.payload.clone()) else {
                continue;
            };
            let route = command.route.unwrap_or_default();
            let ack = pb::RouteAck {
                idempotency_key: command.idempotency_key,
                ingress: route.ingress,
                ok: true,
                primary_weight: route.primary_weight,
                canary_weight: route.canary_weight,
                mirror_percent: route.mirror_percent,
                error: String::new(),
                confirmed_at_ms: 0,
            };
            if let Some(reply) = message.reply {
                let _ = client.publish(reply, ack.encode_to_vec().into()).await;
            }
        }
    });
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() {
    let n = env_or("CONTROLLER_BENCH_SIZE", 1000);
    let samples = env_or("CONTROLLER_BENCH_SAMPLES", 200);
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    aviary_bus::setup::ensure_all(&js).await.unwrap();
    let agents: Bucket<pb::AgentCapabilities, Proto> =
        Bucket::open(&js, names::BUCKET_AGENTS).await.unwrap();
    agents
        .put(
            &names::agent_key(INGRESS).unwrap(),
            &pb::AgentCapabilities {
                ingress: INGRESS.into(),
                provider: "bench".into(),
                weights: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    route_responder(client.clone()).await;

    let stop = CancellationToken::new();
    let grpc = format!("127.0.0.1:{}", free_port().unwrap());
    let scheduler = aviary_scheduler::Config::parse_from([
        "aviary-scheduler",
        "--nats-url",
        &nats.url(),
        "--admin-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        &grpc,
        "--replica-id",
        "bench",
        "--log",
        "warn",
    ]);
    let scheduler_task = tokio::spawn(aviary_scheduler::run(scheduler, stop.clone()));

    let fake = FakeKube::new();
    for crd in aviary_controller::crd::aviary_crds() {
        fake.upsert(serde_json::to_value(crd).unwrap());
    }
    let addr = fake.serve_http().await.unwrap();
    // Baseline: one GET over HTTP to the in-memory API.
    let http = reqwest::Client::new();
    let mut rtt = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let _ = http
            .get(format!(
                "http://{addr}/api/v1/namespaces/{NS}/configmaps/none"
            ))
            .send()
            .await
            .unwrap()
            .bytes()
            .await;
        rtt.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    rtt.sort_by(f64::total_cmp);

    for i in 0..n {
        fake.upsert(deployment(i, "app:1"));
        fake.upsert(rollout(i));
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, FakeKube::kubeconfig(addr)).unwrap();
    let admin = format!("127.0.0.1:{}", free_port().unwrap());
    let scheduler_url = format!("http://{grpc}");
    let controller = Process::spawn(
        "aviary-controller",
        std::path::Path::new(env!("CARGO_BIN_EXE_aviary-controller")),
        [
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--nats-url",
            &nats.url(),
            "--scheduler",
            &scheduler_url,
            "--admin-addr",
            &admin,
            "--lease-namespace",
            NS,
            "--resync",
            "1h",
            "--log",
            "warn",
        ],
        &dir.path().join("controller.log"),
    )
    .unwrap();

    // Every resource initialised: its primary ready, its target at zero, its status written.
    let started = Instant::now();
    loop {
        let done = (0..n)
            .filter(|&i| status_field(&fake, i, "lastAppliedSpec").is_some())
            .count();
        if done == n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {done} of {n} initialised; see {}",
            dir.path().join("controller.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss = rss_mb(controller.pid().unwrap());

    // One watch event (a new image) to the controller's write of the new revision.
    let mut lat = Vec::new();
    for s in 0..samples {
        let i = (s * 7919) % n;
        let before = status_field(&fake, i, "lastAppliedSpec");
        let t = Instant::now();
        fake.upsert(deployment(i, &format!("app:{}", s + 2)));
        loop {
            if status_field(&fake, i, "lastAppliedSpec") != before {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no write for app-{i}"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    print("fake_kube_rtt_p50_ms", percentile(&rtt, 0.5), "ms");
    print(
        &format!("controller_reconcile_p50_ms_{n}"),
        percentile(&lat, 0.5),
        "ms",
    );
    print(
        &format!("controller_reconcile_p99_ms_{n}"),
        percentile(&lat, 0.99),
        "ms",
    );
    print(&format!("controller_rss_mb_{n}"), rss, "MB");
    print(
        &format!("controller_initialise_seconds_{n}"),
        started.elapsed().as_secs_f64(),
        "s",
    );
    drop(controller);
    stop.cancel();
    let _ = scheduler_task.await;
}
