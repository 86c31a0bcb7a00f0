//! Scheduler scale-out: N rollouts over three replicas (the real binary) on one nats-server, route
//! acks and verdicts answered by in-process responders on the real subjects.
//!
//! N rollout records are written straight to the rollouts bucket and three replicas started
//! together. Once they own every rollout between them and the shares have settled:
//! - `scheduler_share_max_min_ratio_<N>_3`: the largest share over the smallest;
//! - the replica with the largest share is SIGKILLed; `scheduler_takeover_seconds_<K>` (K: its
//!   share, rounded to the nearest thousand) is the time from the kill until the two survivors
//!   own every rollout again;
//! - `scheduler_tick_lag_p99_ms_after_takeover_<K>`: the survivors' tick lag p99 (both
//!   histograms summed) over the window that follows;
//! - the audit stream is then read once, in order, for the killed replica's rollouts: each
//!   rollout's `step-advanced` weights must go up one step at a time from the first, none twice
//!   and none missing (the bench fails otherwise), printed as `scheduler_takeover_steps_checked`.
//!
//! Intervals are 10 s so that two cores keep up with 30 000 rollouts (3 000 steps/s in all);
//! `SCHEDULER_SCALE_OUT_ROLLOUTS` (default 30000), `SCHEDULER_SCALE_OUT_INTERVAL` (default 10s)
//! and `SCHEDULER_SCALE_OUT_WINDOW_S` (default 60) override.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // a bench: a panic is the failure report
#![allow(clippy::cast_precision_loss)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use aviary_bus::kv::Bucket;
use aviary_bus::names;
use aviary_proto as pb;
use aviary_scheduler::lease::LeaseValue;
use aviary_scheduler::record::{Manifest, RolloutRecord};
use aviary_testkit::{NatsServer, Process, free_port};
use futures::StreamExt as _;
use support::*;
use tokio_util::sync::CancellationToken;

/// Lease period of the replicas (the default): takeover is due within two of these.
const LEASE_TTL_MS: u64 = 5_000;

fn manifest(name: &str, interval: &str) -> String {
    format!(
        r#"apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata: {{ name: {name}, namespace: bench }}
spec:
  ingresses: [{{ name: edge }}]
  primary: {{ name: app-v1, endpoints: ["127.0.0.1:9001"] }}
  canary: {{ name: app-v2, endpoints: ["127.0.0.1:9002"] }}
  progressDeadlineSeconds: 3600
  analysis:
    interval: {interval}
    threshold: 5
    maxWeight: 99
    stepWeight: 1
    metrics:
      - name: request-success-rate
        thresholdRange: {{ min: 99 }}
"#
    )
}

struct Replica {
    id: String,
    admin: u16,
    process: Process,
}

fn spawn(nats: &NatsServer, id: &str, dir: &Path) -> Replica {
    let admin = free_port().unwrap();
    let args = [
        "--nats-url".to_owned(),
        nats.url(),
        "--grpc-addr".into(),
        format!("127.0.0.1:{}", free_port().unwrap()),
        "--admin-addr".into(),
        format!("127.0.0.1:{admin}"),
        "--replica-id".into(),
        id.into(),
        "--lease-ttl-ms".into(),
        LEASE_TTL_MS.to_string(),
        "--log".into(),
        "warn".into(),
    ];
    let binary = Path::new(env!("CARGO_BIN_EXE_aviary-scheduler"));
    let process = Process::spawn(id, binary, args, &dir.join(format!("{id}.log"))).unwrap();
    Replica {
        id: id.to_owned(),
        admin,
        process,
    }
}

async fn owned(http: &reqwest::Client, admin: u16) -> f64 {
    scrape(http, admin)
        .await
        .get("aviary_scheduler_owned_rollouts")
        .copied()
        .unwrap_or(0.0)
}

/// Polls every 100 ms until `done` of the replicas' owned counts, or `limit`; the counts then.
async fn wait_owned(
    http: &reqwest::Client,
    admins: &[u16],
    limit: Duration,
    done: impl Fn(&[f64]) -> bool,
) -> (Vec<f64>, Duration) {
    let started = Instant::now();
    loop {
        let mut counts = Vec::new();
        for admin in admins {
            counts.push(owned(http, *admin).await);
        }
        if done(&counts) || started.elapsed() > limit {
            return (counts, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each rollout's `step-advanced` weights, in stream order, for the keys in `keys`.
async fn audited_steps(
    client: &async_nats::Client,
    keys: &HashSet<String>,
) -> BTreeMap<String, Vec<u64>> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(names::STREAM_EVENTS).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let consumer = stream
        .create_consumer(OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    // Events of `<namespace>/<name>` go to its own subject.
    let subjects: std::collections::HashMap<String, String> = keys
        .iter()
        .map(|key| {
            let (namespace, name) = key.split_once('.').unwrap();
            (names::events_subject(namespace, name).unwrap(), key.clone())
        })
        .collect();
    let mut steps: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let seq = message.info().unwrap().stream_sequence;
        let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        if event["type"] == "dev.aviary.rollout.step-advanced"
            && let Some(key) = subjects.get(message.subject.as_str())
        {
            steps
                .entry(key.clone())
                .or_default()
                .push(event["data"]["canaryWeight"].as_u64().unwrap());
        }
        if seq >= last {
            break;
        }
    }
    steps
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = env_or("SCHEDULER_SCALE_OUT_ROLLOUTS", 30_000);
    let interval: String = env_or("SCHEDULER_SCALE_OUT_INTERVAL", "10s".to_owned());
    let window = Duration::from_secs(env_or("SCHEDULER_SCALE_OUT_WINDOW_S", 60));
    let dir = tempfile::tempdir().unwrap();

    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let rtt = common::nats_rtt_p50_ms(&client).await;
    let js = async_nats::jetstream::new(client.clone());
    aviary_bus::setup::ensure_all(&js).await.unwrap();
    let stop = CancellationToken::new();
    let _routes = common::route_responder(client.clone(), "edge").await;
    let _verdicts =
        common::analyzer_responder(client.clone(), pb::Outcome::Pass, stop.clone()).await;

    let records: Bucket<RolloutRecord> = Bucket::open(&js, names::BUCKET_ROLLOUTS).await.unwrap();
    let leases: Bucket<LeaseValue> = Bucket::open(&js, names::BUCKET_LEASES).await.unwrap();
    let rollout = aviary_core::parse_rollout(&manifest("r0", &interval)).unwrap();
    let written = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (records, interval) = (records.clone(), interval.clone());
            let mut rollout = rollout.clone();
            let name = format!("r{i}");
            rollout.metadata.name.clone_from(&name);
            async move {
                let record =
                    RolloutRecord::new(Manifest::new(&manifest(&name, &interval)), rollout);
                let key = names::rollout_key("bench", &name).unwrap();
                records.create(&key, &record).await.unwrap();
            }
        })
        .buffer_unordered(256)
        .collect::<()>()
        .await;
    eprintln!("{n} records written in {:?}", written.elapsed());

    let http = reqwest::Client::new();
    let mut replicas: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|id| spawn(&nats, id, dir.path()))
        .collect();
    for replica in &mut replicas {
        let url = format!("http://127.0.0.1:{}/readyz", replica.admin);
        replica
            .process
            .wait_ready(Duration::from_secs(30), || {
                let (http, url) = (http.clone(), url.clone());
                async move { http.get(&url).send().await.is_ok_and(|r| r.status() == 200) }
            })
            .await
            .unwrap();
    }
    let admins: Vec<u16> = replicas.iter().map(|r| r.admin).collect();
    let total = n as f64;
    let (counts, took) = wait_owned(&http, &admins, Duration::from_secs(300), |c| {
        c.iter().sum::<f64>() >= total
    })
    .await;
    eprintln!("all owned after {took:?}: {counts:?}");
    // Settled: a third each (the shares are ceilings, so each is within one of it).
    let third = total / 3.0;
    let (counts, took) = wait_owned(&http, &admins, Duration::from_secs(300), |c| {
        c.iter().sum::<f64>() >= total && c.iter().all(|x| (x - third).abs() <= 1.0)
    })
    .await;
    eprintln!("shares settled after {took:?} more: {counts:?}");
    let max = counts.iter().copied().fold(0.0, f64::max);
    let min = counts.iter().copied().fold(f64::INFINITY, f64::min);
    emit(
        &format!("scheduler_share_max_min_ratio_{n}_3"),
        max / min,
        "ratio",
    );

    // SIGKILL the largest share.
    let victim = (0..3)
        .max_by(|a, b| counts[*a].total_cmp(&counts[*b]))
        .unwrap();
    let share = counts[victim];
    let label = ((share / 1000.0).round() * 1000.0) as u64;
    let mut victim_keys = HashSet::new();
    for key in leases.keys().await.unwrap() {
        if let Ok(Some(lease)) = leases.get(&key).await
            && lease.value.owner == replicas[victim].id
            && !key.starts_with(aviary_scheduler::lease::REPLICA_PREFIX)
        {
            victim_keys.insert(key);
        }
    }
    let mut killed = replicas.remove(victim);
    let survivors: Vec<u16> = replicas.iter().map(|r| r.admin).collect();
    let lag = "aviary_scheduler_tick_lag_seconds";
    killed.process.kill();
    let killed_at = Instant::now();
    let (counts, took) = wait_owned(&http, &survivors, Duration::from_secs(120), |c| {
        c.iter().sum::<f64>() >= total
    })
    .await;
    let takeover = took.as_secs_f64();
    eprintln!(
        "killed {} ({share} rollouts, {} leases); survivors own {counts:?} after {takeover:.2}s \
         (two lease periods: {}s)",
        killed.id,
        victim_keys.len(),
        2 * LEASE_TTL_MS / 1000
    );
    emit(
        &format!("scheduler_takeover_seconds_{label}"),
        takeover,
        "s",
    );

    let mut before = Vec::new();
    for admin in &survivors {
        before.push(buckets(&scrape(&http, *admin).await, lag));
    }
    tokio::time::sleep(window).await;
    let mut after = Vec::new();
    for admin in &survivors {
        after.push(buckets(&scrape(&http, *admin).await, lag));
    }
    let p99 = quantile(&sum_buckets(&before), &sum_buckets(&after), 0.99) * 1000.0;
    eprintln!(
        "tick lag p99 {p99:.1} ms over {window:?} after the takeover ({:?} after the kill)",
        killed_at.elapsed()
    );
    emit(
        &format!("scheduler_tick_lag_p99_ms_after_takeover_{label}"),
        p99,
        "ms",
    );

    // The audit stream: each of the killed replica's rollouts stepped 1, 2, 3, … with no gap and
    // no repeat across the kill.
    let steps = audited_steps(&client, &victim_keys).await;
    let mut checked = 0;
    for (key, weights) in &steps {
        let expected: Vec<u64> = (1..=weights.len() as u64).collect();
        assert_eq!(weights, &expected, "steps of {key} across the takeover");
        checked += weights.len();
    }
    assert_eq!(
        steps.len(),
        victim_keys.len(),
        "every taken-over rollout stepped"
    );
    eprintln!(
        "audit: {checked} steps of {} rollouts, none skipped or doubled",
        steps.len()
    );
    emit("scheduler_takeover_steps_checked", checked as f64, "steps");

    for mut replica in replicas {
        let _ = replica.process.stop(Duration::from_secs(20)).await;
    }
    stop.cancel();
    emit("nats_rtt_p50_ms", rtt, "ms");
}
