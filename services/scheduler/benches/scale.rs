//! Scheduler scale: N concurrent rollouts with 1 s intervals on one scheduler replica (the real
//! binary) over a real nats-server, with route acks and verdicts answered by in-process
//! responders on the real subjects.
//!
//! For each N: a fresh nats-server; N rollout records written straight to the rollouts bucket;
//! the scheduler started; once it owns every rollout and a warm-up passed, a measurement window.
//! Figures over the window: tick lag p50/p99 (due → decided, including the CAS write for the
//! decisions that are stored; from the scheduler's own `tick_lag` histogram, interpolated within
//! buckets), CPU seconds per 1 000 steps (utime+stime
//! from `/proc/<pid>/stat` against the `step_duration` count), and peak RSS (`VmHWM`). Also the
//! raw NATS request round trip in the same run. Prints JSON lines `{"name", "value", "unit"}`.
//!
//! `cargo bench -p aviary-scheduler --bench scale`; `SCHEDULER_BENCH_SIZES` (default
//! `100,1000,10000`) and `SCHEDULER_BENCH_WINDOW_S` (default 15) override.

#![allow(clippy::unwrap_used)] // a bench: a panic is the failure report
#![allow(clippy::cast_precision_loss)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use aviary_bus::kv::Bucket;
use aviary_bus::names;
use aviary_core::machine::RolloutStatus;
use aviary_proto as pb;
use aviary_scheduler::record::{Manifest, RolloutRecord};
use aviary_testkit::{NatsServer, Process, free_port};
use futures::StreamExt as _;
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

fn emit(name: &str, value: f64, unit: &str) {
    println!("{{\"name\":\"{name}\",\"value\":{value:.3},\"unit\":\"{unit}\"}}");
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The scheduler's `/metrics`, as `name{labels}` → value.
async fn scrape(http: &reqwest::Client, admin: u16) -> BTreeMap<String, f64> {
    let body = http
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Cumulative histogram buckets `(upper bound, count)` of `name`, sorted by bound.
fn buckets(metrics: &BTreeMap<String, f64>, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut out: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, *v))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile of the observations between two scrapes, interpolated linearly inside the
/// bucket it falls in (as Prometheus' `histogram_quantile` does).
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .map(|(bound, n)| {
            let was = before
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0.0, |(_, n)| *n);
            (*bound, n - was)
        })
        .collect();
    let total = counts.last().map_or(0.0, |(_, n)| *n);
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (bound, n) in &counts {
        if *n >= rank {
            if bound.is_infinite() {
                return lower.0;
            }
            let width = n - lower.1;
            let into = if width > 0.0 {
                (rank - lower.1) / width
            } else {
                1.0
            };
            return lower.0 + (bound - lower.0) * into;
        }
        lower = (*bound, *n);
    }
    lower.0
}

fn clock_ticks_per_s() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields[11].parse().unwrap();
    let stime: f64 = fields[12].parse().unwrap();
    (utime + stime) / ticks
}

/// A `/proc/<pid>/status` field in kB, as MB.
fn status_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

async fn run_size(n: usize, window: Duration, ticks: f64, dir: &Path) {
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
                let record = RolloutRecord {
                    manifest: Manifest::new(&manifest(&name)),
                    status: RolloutStatus::new(&rollout.spec, 1),
                    rollout,
                    generation: 1,
                    commands: Vec::new(),
                    outbox: Vec::new(),
                    event_seq: 0,
                    last_checks: Vec::new(),
                };
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
    tokio::time::sleep(window).await;
    let after = scrape(&http, admin).await;
    let cpu = cpu_seconds(pid, ticks) - cpu_before;
    let stepped =
        after.get(steps).copied().unwrap_or(0.0) - before.get(steps).copied().unwrap_or(0.0);
    let (b, a) = (buckets(&before, lag), buckets(&after, lag));
    let p50 = quantile(&b, &a, 0.5) * 1000.0;
    let p99 = quantile(&b, &a, 0.99) * 1000.0;
    let rss = status_mb(pid, "VmHWM:");
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

    let _ = scheduler.stop(Duration::from_secs(10)).await;
    stop.cancel();
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
    for n in sizes {
        run_size(n, window, ticks, dir.path()).await;
    }
    emit("nats_rtt_p50_ms", rtt, "ms");
}
