//! Scheduler scale: N concurrent rollouts with 1 s intervals on one scheduler replica (the real
//! binary) over a real nats-server, with route acks and verdicts answered by in-process
//! responders on the real subjects.
//!
//! For each N: a fresh nats-server; N rollout records written straight to the rollouts bucket;
//! the scheduler started; once it owns every rollout and a warm-up passed, a measurement window.
//! Figures over the window: tick lag p50/p99 (due → decided, including the CAS write for the
//! decisions that are stored; from the scheduler's own `tick_lag` histogram, interpolated within
//! buckets), CPU seconds per 1 000 steps (utime+stime
//! from `/proc/<pid>/stat` against the `step_duration` count), peak RSS (`VmHWM`), KV writes per
//! step (messages added to the rollouts and leases buckets' streams) and bus messages per step
//! (the scheduler connection's messages in and out, from the server's `/connz`). Also the raw
//! NATS request round trip in the same run. Prints JSON lines `{"name", "value", "unit"}`; the
//! unsuffixed per-step figures are those of the largest size.
//!
//! `cargo bench -p aviary-scheduler --bench scale`; `SCHEDULER_BENCH_SIZES` (default
//! `100,1000,10000`) and `SCHEDULER_BENCH_WINDOW_S` (default 15) override.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // a bench: a panic is the failure report
#![allow(clippy::cast_precision_loss)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use aviary_bus::kv::Bucket;
use aviary_bus::names;
use aviary_proto as pb;
use aviary_scheduler::record::{Manifest, RolloutRecord};
use aviary_testkit::{NatsServer, Process, free_port};
use futures::StreamExt as _;
use support::*;
use tokio_util::sync::CancellationToken;

/// Enough steps that no rollout finishes inside a window (1 % per 1 s step).
fn manifest(name: &str) -> String {
    format!(
        r#"apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata: {{ name: {name}, namespace: bench }}
spec:
  ingresses: [{{ name: edge }}]
  primary: {{ name: app-v1, endpoints: ["127.0.0.1:9001"] }}
  canary: {{ name: app-v2, endpoints: ["127.0.0.1:9002"] }}
  progressDeadlineSeconds: 600
  analysis:
    interval: 1s
    threshold: 5
    maxWeight: 99
    stepWeight: 1
    metrics:
      - name: request-success-rate
        thresholdRange: {{ min: 99 }}
"#
    )
}

/// Messages ever stored in the rollouts and leases buckets (the last sequence of each stream).
async fn kv_writes(js: &async_nats::jetstream::Context) -> f64 {
    let mut total = 0;
    for bucket in [names::BUCKET_ROLLOUTS, names::BUCKET_LEASES] {
        let mut stream = js.get_stream(format!("KV_{bucket}")).await.unwrap();
        total += stream.info().await.unwrap().state.last_sequence;
    }
    total as f64
}

/// Messages the scheduler's connection published and was sent, by the server's count.
async fn bus_messages(http: &reqwest::Client, monitor: u16) -> f64 {
    let connz: serde_json::Value = http
        .get(format!("http://127.0.0.1:{monitor}/connz?limit=1024"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == "aviary-scheduler")
        .map(|c| c["in_msgs"].as_f64().unwrap_or(0.0) + c["out_msgs"].as_f64().unwrap_or(0.0))
        .sum()
}

/// Per-step costs of one size: `(kv writes, bus messages)` per step.
type Costs = (f64, f64);

async fn run_size(n: usize, window: Duration, ticks: f64, dir: &Path) -> Costs {
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    aviary_bus::setup::ensure_all(&js).await.unwrap();
    let stop = CancellationToken::new();
    let _routes = common::route_responder(client.clone(), "edge").await;
    let _verdicts =
        common::analyzer_responder(client.clone(), pb::Outcome::Pass, stop.clone()).await;

    let records: Bucket<RolloutRecord> = Bucket::open(&js, names::BUCKET_ROLLOUTS).await.unwrap();
    let template = manifest("r0");
    let rollout = aviary_core::parse_rollout(&template).unwrap();
    let created = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let records = records.clone();
            let mut rollout = rollout.clone();
            let name = format!("r{i}");
            rollout.metadata.name.clone_from(&name);
            async move {
                let record = RolloutRecord::new(Manifest::new(&manifest(&name)), rollout);
                let key = names::rollout_key("bench", &name).unwrap();
                records.create(&key, &record).await.unwrap();
            }
        })
        .buffer_unordered(256)
        .collect::<()>()
        .await;
    eprintln!("n={n}: {n} records written in {:?}", created.elapsed());

    let admin = free_port().unwrap();
    let args = [
        "--nats-url".to_owned(),
        nats.url(),
        "--grpc-addr".into(),
        format!("127.0.0.1:{}", free_port().unwrap()),
        "--admin-addr".into(),
        format!("127.0.0.1:{admin}"),
        "--replica-id".into(),
        "bench".into(),
        "--log".into(),
        "warn".into(),
    ];
    let binary = Path::new(env!("CARGO_BIN_EXE_aviary-scheduler"));
    let log = dir.join(format!("scheduler-{n}.log"));
    let mut scheduler = Process::spawn("scheduler", binary, args, &log).unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{admin}/readyz");
    scheduler
        .wait_ready(Duration::from_secs(30), || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await
        .unwrap();
    let pid = scheduler.pid().unwrap();

    // Ownership of every rollout; give up waiting (and measure what it reached) after 2 min.
    let started = Instant::now();
    let mut owned = 0.0;
    while started.elapsed() < Duration::from_secs(120) {
        owned = scrape(&http, admin)
            .await
            .get("aviary_scheduler_owned_rollouts")
            .copied()
            .unwrap_or(0.0);
        if owned >= n as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("n={n}: owns {owned} rollouts after {:?}", started.elapsed());
    // Warm-up: every rollout through its first steps.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let lag = "aviary_scheduler_tick_lag_seconds";
    let steps = "aviary_scheduler_step_duration_seconds_count";
    let before = scrape(&http, admin).await;
    let cpu_before = cpu_seconds(pid, ticks);
    let (kv_before, bus_before) = (
        kv_writes(&js).await,
        bus_messages(&http, nats.monitor_port()).await,
    );
    tokio::time::sleep(window).await;
    let after = scrape(&http, admin).await;
    let cpu = cpu_seconds(pid, ticks) - cpu_before;
    let (kv, bus) = (
        kv_writes(&js).await - kv_before,
        bus_messages(&http, nats.monitor_port()).await - bus_before,
    );
    let stepped =
        after.get(steps).copied().unwrap_or(0.0) - before.get(steps).copied().unwrap_or(0.0);
    let (b, a) = (buckets(&before, lag), buckets(&after, lag));
    let p50 = quantile(&b, &a, 0.5) * 1000.0;
    let p99 = quantile(&b, &a, 0.99) * 1000.0;
    let rss = status_mb(pid, "VmHWM:");
    eprintln!(
        "n={n}: resident now {:.1}MB (peak {rss:.1}MB)",
        status_mb(pid, "VmRSS:")
    );
    let leases_lost = after
        .get("aviary_scheduler_leases_lost_total")
        .copied()
        .unwrap_or(0.0);
    eprintln!(
        "n={n}: {stepped} steps in {window:?} ({:.0}/s), cpu {cpu:.2}s, lag p50 {p50:.1}ms p99 {p99:.1}ms, \
         peak rss {rss:.1}MB, leases lost {leases_lost}",
        stepped / window.as_secs_f64()
    );
    emit(&format!("scheduler_tick_lag_p50_ms_{n}"), p50, "ms");
    emit(&format!("scheduler_tick_lag_p99_ms_{n}"), p99, "ms");
    emit(&format!("scheduler_rss_mb_{n}"), rss, "MB");
    emit(
        &format!("scheduler_cpu_s_per_1k_steps_{n}"),
        if stepped > 0.0 {
            cpu / stepped * 1000.0
        } else {
            f64::NAN
        },
        "s",
    );
    emit(
        &format!("scheduler_steps_per_s_{n}"),
        stepped / window.as_secs_f64(),
        "steps/s",
    );
    let per_step = |x: f64| if stepped > 0.0 { x / stepped } else { f64::NAN };
    let costs = (per_step(kv), per_step(bus));
    eprintln!(
        "n={n}: {kv} kv writes, {bus} bus messages: {:.2} and {:.2} per step",
        costs.0, costs.1
    );
    emit(
        &format!("scheduler_kv_writes_per_step_{n}"),
        costs.0,
        "writes",
    );
    emit(
        &format!("scheduler_bus_msgs_per_step_{n}"),
        costs.1,
        "messages",
    );

    let _ = scheduler.stop(Duration::from_secs(10)).await;
    stop.cancel();
    costs
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = std::env::var("SCHEDULER_BENCH_SIZES")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let window = Duration::from_secs(env_or("SCHEDULER_BENCH_WINDOW_S", 15));
    let ticks = clock_ticks_per_s();
    let dir = tempfile::tempdir().unwrap();

    let nats = NatsServer::start().await.unwrap();
    let rtt = common::nats_rtt_p50_ms(&nats.client().await.unwrap()).await;
    drop(nats);
    let mut costs = None;
    for n in sizes {
        costs = Some(run_size(n, window, ticks, dir.path()).await);
    }
    if let Some((kv, bus)) = costs {
        emit("scheduler_kv_writes_per_step", kv, "writes");
        emit("scheduler_bus_msgs_per_step", bus, "messages");
    }
    emit("nats_rtt_p50_ms", rtt, "ms");
}
