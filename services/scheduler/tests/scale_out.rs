//! Many rollouts over three replicas (the real binary): the replicas split them evenly, a
//! replica asked to stop hands its share over, and when a replica is SIGKILLed every one of its
//! rollouts is owned again and runs to promotion with each step audited exactly once.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use aviary_bus::kv::Bucket;
use aviary_bus::names;
use aviary_proto as pb;
use aviary_scheduler::lease::LeaseValue;
use aviary_scheduler::record::{Manifest, RolloutRecord};
use aviary_testkit::{NatsServer, Process, free_port};
use common::*;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

/// Enough to spread over three replicas and keep a kill busy, few enough for two cores.
const ROLLOUTS: usize = 150;
/// Weights of each rollout's steps: 10, 20, …, 90, then promotion.
const STEPS: [u64; 9] = [10, 20, 30, 40, 50, 60, 70, 80, 90];

struct Replica {
    id: &'static str,
    admin: u16,
    process: Process,
}

fn spawn(nats: &NatsServer, id: &'static str, dir: &Path) -> Replica {
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
        "1500".into(),
        "--route-timeout-ms".into(),
        "3000".into(),
        // Long: the first test holds the verdicts while the shares settle.
        "--analysis-timeout-ms".into(),
        "60000".into(),
        "--log".into(),
        "warn".into(),
    ];
    let binary = Path::new(env!("CARGO_BIN_EXE_aviary-scheduler"));
    let log = dir.join(format!("{id}.log"));
    Replica {
        id,
        admin,
        process: Process::spawn(id, binary, args, &log).unwrap(),
    }
}

/// The replica's `aviary_scheduler_owned_rollouts`, or `None` while its admin port is down.
async fn owned(http: &reqwest::Client, admin: u16) -> Option<usize> {
    let body = http
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("aviary_scheduler_owned_rollouts "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as usize)
}

/// Rollout key → owner of its lease (released leases left out).
async fn owners(leases: &Bucket<LeaseValue>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for key in leases.keys().await.unwrap() {
        if key.starts_with(aviary_scheduler::lease::REPLICA_PREFIX) {
            continue;
        }
        if let Ok(Some(lease)) = leases.get(&key).await
            && !lease.value.owner.is_empty()
        {
            out.insert(key, lease.value.owner);
        }
    }
    out
}

/// Each rollout of `names` not yet promoted, as a line saying where it stands and who holds it;
/// empty when all are.
async fn unfinished(
    records: &Bucket<RolloutRecord>,
    leases: &Bucket<LeaseValue>,
    names: &[String],
) -> Vec<String> {
    let mut left = Vec::new();
    for name in names {
        let key = names::rollout_key("test", name).unwrap();
        let Ok(Some(record)) = records.get(&key).await else {
            left.push(format!("{name}: record unreadable"));
            continue;
        };
        let status = &record.value.status;
        if status.phase.to_string() == "Succeeded" {
            continue;
        }
        let owner = match leases.get(&key).await {
            Ok(Some(lease)) => lease.value.owner,
            _ => "none".to_owned(),
        };
        left.push(format!(
            "{name}: phase {} weight {} seq {} wait {:?} owner {owner:?}",
            status.phase, status.canary_weight, status.seq, status.wait
        ));
    }
    left
}

/// Every audit event of the stream, as `(rollout subject, event)`, read once in order.
async fn all_events(client: &async_nats::Client) -> Vec<(String, serde_json::Value)> {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(names::STREAM_EVENTS).await.unwrap();
    let last = stream.clone().info().await.unwrap().state.last_sequence;
    futures::stream::iter(1..=last)
        .map(|seq| {
            let stream = stream.clone();
            async move { stream.get_raw_message(seq).await.ok() }
        })
        .buffered(32)
        .filter_map(|m| async move { m })
        .map(|m| {
            (
                m.subject.to_string(),
                serde_json::from_slice(&m.payload).unwrap(),
            )
        })
        .collect()
        .await
}

#[tokio::test]
async fn replicas_share_evenly_and_a_killed_ones_rollouts_lose_and_double_no_step() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    aviary_bus::setup::ensure_all(&js).await.unwrap();
    let _routes = route_responder(client.clone(), "edge").await;
    // Verdicts wait until the shares are checked, so that no rollout finishes before then
    // however slow the machine.
    let (release, held) = tokio::sync::watch::channel(false);
    let _verdicts = held_analyzer_responder(
        client.clone(),
        pb::Outcome::Pass,
        held,
        CancellationToken::new(),
    )
    .await;

    let records: Bucket<RolloutRecord> = Bucket::open(&js, names::BUCKET_ROLLOUTS).await.unwrap();
    let leases: Bucket<LeaseValue> = Bucket::open(&js, names::BUCKET_LEASES).await.unwrap();
    let names_: Vec<String> = (0..ROLLOUTS).map(|i| format!("r{i}")).collect();
    for name in &names_ {
        let text = canary_manifest(name, 10, 90, 2).replace("300ms", "1s");
        let rollout = aviary_core::parse_rollout(&text).unwrap();
        let record = RolloutRecord::new(Manifest::new(&text), rollout);
        records
            .create(&names::rollout_key("test", name).unwrap(), &record)
            .await
            .unwrap();
    }

    // One replica first: it takes them all; the two that join take a third each from it.
    let http = reqwest::Client::new();
    let mut replicas = vec![spawn(&nats, "a", dir.path())];
    aviary_testkit::eventually(Duration::from_secs(30), "a owns every rollout", || {
        let http = http.clone();
        let admin = replicas[0].admin;
        async move { (owned(&http, admin).await == Some(ROLLOUTS)).then_some(()) }
    })
    .await;
    replicas.push(spawn(&nats, "b", dir.path()));
    replicas.push(spawn(&nats, "c", dir.path()));
    let share = ROLLOUTS / 3;
    let admins: Vec<u16> = replicas.iter().map(|r| r.admin).collect();
    aviary_testkit::eventually(Duration::from_secs(30), "a third each", || {
        let (http, admins) = (http.clone(), admins.clone());
        async move {
            let mut counts = Vec::new();
            for admin in admins {
                counts.push(owned(&http, admin).await?);
            }
            counts.iter().all(|n| *n == share).then_some(())
        }
    })
    .await;
    let held = owners(&leases).await;
    for replica in &replicas {
        let n = held.values().filter(|o| **o == replica.id).count();
        assert_eq!(n, share, "leases of {}: {held:?}", replica.id);
    }

    // SIGKILL the first replica a few steps into the walk.
    release.send(true).unwrap();
    aviary_testkit::eventually(Duration::from_secs(60), "a rollout at 30 %", || {
        let records = records.clone();
        async move {
            let key = names::rollout_key("test", "r0").unwrap();
            let record = records.get(&key).await.ok()??;
            (record.value.status.canary_weight >= 30).then_some(())
        }
    })
    .await;
    let victim: HashSet<String> = held
        .iter()
        .filter(|(_, o)| o.as_str() == "a")
        .map(|(k, _)| k.clone())
        .collect();
    let mut a = replicas.remove(0);
    a.process.kill();
    let survivors = ["b", "c"];
    aviary_testkit::eventually(Duration::from_secs(30), "a's rollouts owned again", || {
        let (leases, records, victim) = (leases.clone(), records.clone(), victim.clone());
        async move {
            let held = owners(&leases).await;
            for key in &victim {
                let owner = held.get(key).map(String::as_str);
                if owner.is_some_and(|o| survivors.contains(&o)) {
                    continue;
                }
                // Released only because it finished.
                let record = records.get(key).await.ok()??;
                if record.value.status.phase.to_string() != "Succeeded" {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;

    // Every rollout promoted; if not, the report names each one left, where it stands and who
    // holds it, with the replicas' logs.
    let left = aviary_testkit::eventually_or(Duration::from_secs(90), || {
        let (records, leases, names_) = (records.clone(), leases.clone(), names_.clone());
        async move {
            let left = unfinished(&records, &leases, &names_).await;
            if left.is_empty() { Ok(()) } else { Err(left) }
        }
    })
    .await;
    if let Err(left) = left {
        let logs: String = replicas
            .iter()
            .map(|r| format!("--- {} ---\n{}", r.id, r.process.log()))
            .collect();
        panic!(
            "{} rollouts not promoted after 90 s:\n{}\n{logs}\n--- a (killed) ---\n{}",
            left.len(),
            left.join("\n"),
            a.process.log()
        );
    }

    // …with each step announced once, in order, none missing, and one success.
    let mut steps: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut succeeded: HashMap<String, usize> = HashMap::new();
    let mut ids = HashSet::new();
    for (subject, event) in all_events(&client).await {
        assert!(ids.insert(event["id"].as_str().unwrap().to_owned()));
        match event["type"].as_str().unwrap_or_default() {
            "dev.aviary.rollout.step-advanced" => steps
                .entry(subject)
                .or_default()
                .push(event["data"]["canaryWeight"].as_u64().unwrap()),
            "dev.aviary.rollout.succeeded" => *succeeded.entry(subject).or_default() += 1,
            _ => {}
        }
    }
    assert_eq!(steps.len(), ROLLOUTS);
    for (subject, weights) in &steps {
        assert_eq!(weights, &STEPS, "steps of {subject}");
        assert_eq!(succeeded.get(subject), Some(&1), "{subject} succeeded once");
    }

    for mut replica in replicas {
        let _ = replica.process.stop(Duration::from_secs(10)).await;
    }
}

#[tokio::test]
async fn a_replica_stopped_with_sigterm_hands_its_rollouts_over_before_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    aviary_bus::setup::ensure_all(&js).await.unwrap();
    let _routes = route_responder(client.clone(), "edge").await;
    // Verdicts never come: the rollouts stay in progress for as long as the test runs.
    let (_release, held) = tokio::sync::watch::channel(false);
    let _verdicts = held_analyzer_responder(
        client.clone(),
        pb::Outcome::Pass,
        held,
        CancellationToken::new(),
    )
    .await;
    let records: Bucket<RolloutRecord> = Bucket::open(&js, names::BUCKET_ROLLOUTS).await.unwrap();
    let leases: Bucket<LeaseValue> = Bucket::open(&js, names::BUCKET_LEASES).await.unwrap();
    const N: usize = 40;
    for i in 0..N {
        let name = format!("s{i}");
        let text = canary_manifest(&name, 10, 90, 2);
        let rollout = aviary_core::parse_rollout(&text).unwrap();
        let record = RolloutRecord::new(Manifest::new(&text), rollout);
        records
            .create(&names::rollout_key("test", &name).unwrap(), &record)
            .await
            .unwrap();
    }
    let http = reqwest::Client::new();
    let mut a = spawn(&nats, "a", dir.path());
    let mut b = spawn(&nats, "b", dir.path());
    let admins = [a.admin, b.admin];
    aviary_testkit::eventually(Duration::from_secs(30), "half each", || {
        let http = http.clone();
        async move {
            let x = owned(&http, admins[0]).await?;
            let y = owned(&http, admins[1]).await?;
            (x == N / 2 && y == N / 2).then_some(())
        }
    })
    .await;

    a.process.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = aviary_testkit::eventually(Duration::from_secs(20), "a exits", || {
        let status = a.process.exit_status();
        async move { status }
    })
    .await;
    assert!(status.success(), "{}", a.process.log());
    // By the time it exited it had released every lease and its replica lease: none names it.
    let held = owners(&leases).await;
    assert!(held.values().all(|o| o != "a"), "{held:?}");
    assert!(
        leases.get("_replica.a").await.unwrap().is_none(),
        "replica lease of a left behind"
    );
    aviary_testkit::eventually(Duration::from_secs(20), "b owns them all", || {
        let http = http.clone();
        async move { (owned(&http, admins[1]).await == Some(N)).then_some(()) }
    })
    .await;
    let _ = b.process.stop(Duration::from_secs(10)).await;
}
