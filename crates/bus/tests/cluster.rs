//! Replicated state on a three-node JetStream cluster: `--js-replicas 3` creates every stream
//! and bucket with three copies, and a bucket keeps its records and takes writes after the
//! node leading it is killed; the node rejoins and catches up. On a single server, asking for
//! three replicas fails with an error that says why.

mod common;

use async_nats::jetstream;
use aviary_bus::kv::Bucket;
use aviary_bus::setup::{self, JetStreamArgs, SetupOptions};
use aviary_bus::{BusErrorKind, names};
use aviary_testkit::{NatsCluster, eventually};
use clap::Parser as _;
use common::{DEADLINE, TestResult, nats};
use serde::{Deserialize, Serialize};

/// A leader election after a SIGKILL takes a few seconds (the Raft election timeouts);
/// generous for a busy two-core machine.
const ELECTION: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    step: u32,
}

fn all_streams() -> Vec<String> {
    let mut streams = vec![
        names::STREAM_EVENTS.to_owned(),
        names::STREAM_DEAD.to_owned(),
    ];
    for bucket in [
        names::BUCKET_ROLLOUTS,
        names::BUCKET_ROUTES,
        names::BUCKET_LEASES,
        names::BUCKET_GATES,
        names::BUCKET_AGENTS,
    ] {
        streams.push(format!("KV_{bucket}"));
    }
    streams
}

#[tokio::test]
async fn r3_state_survives_its_leader_being_killed_and_the_node_rejoins() -> TestResult {
    let mut cluster = NatsCluster::start(3).await?;
    let client = cluster.client().await?;
    let js = jetstream::new(client.clone());
    let options = SetupOptions {
        replicas: 3,
        ..SetupOptions::default()
    };
    setup::ensure_all_with(&js, &options).await?;
    for stream in all_streams() {
        let info = js.get_stream(&stream).await?.info().await?.clone();
        assert_eq!(info.config.num_replicas, 3, "{stream}");
        let peers = info.cluster.ok_or("no cluster info")?;
        assert_eq!(peers.replicas.len(), 2, "{stream}: {peers:?}");
    }
    // Setup again (another service starting) accepts what is there.
    setup::ensure_all_with(&js, &options).await?;

    let rollouts: Bucket<Record> = Bucket::open(&js, names::BUCKET_ROLLOUTS).await?;
    let revision = rollouts.create("test.podinfo", &Record { step: 2 }).await?;
    let stream = format!("KV_{}", names::BUCKET_ROLLOUTS);
    let leader = eventually(DEADLINE, "the rollouts bucket has a leader", || {
        cluster.stream_leader(&stream)
    })
    .await;

    cluster.node_mut(leader).kill();

    let new_leader = eventually(ELECTION, "a new leader of the rollouts bucket", || {
        cluster.stream_leader(&stream)
    })
    .await;
    assert_ne!(new_leader, leader);
    let entry = eventually(ELECTION, "the record read after the failover", || {
        let rollouts = rollouts.clone();
        async move { rollouts.get("test.podinfo").await.ok() }
    })
    .await
    .ok_or("record lost")?;
    assert_eq!(
        (entry.value, entry.revision),
        (Record { step: 2 }, revision)
    );
    // A CAS write on the old revision goes through the new leader; a stale one still loses.
    // (A write whose answer was lost shows as a conflict with our own value in place.)
    let next = eventually(ELECTION, "a CAS write after the failover", || {
        let rollouts = rollouts.clone();
        async move {
            match rollouts
                .update("test.podinfo", &Record { step: 3 }, revision)
                .await
            {
                Ok(next) => Some(next),
                Err(e) if e.kind() == BusErrorKind::Conflict => rollouts
                    .get("test.podinfo")
                    .await
                    .ok()
                    .flatten()
                    .filter(|entry| entry.value == Record { step: 3 })
                    .map(|entry| entry.revision),
                Err(_) => None,
            }
        }
    })
    .await;
    let stale = rollouts
        .update("test.podinfo", &Record { step: 9 }, revision)
        .await
        .expect_err("a stale revision");
    assert_eq!(stale.kind(), BusErrorKind::Conflict);

    cluster.node_mut(leader).start_again().await?;
    eventually(ELECTION, "the restarted node has caught up", || async {
        cluster.stream_current(&stream, 3).await.then_some(())
    })
    .await;
    // A client of the restarted node alone sees the write made while it was down.
    let direct = cluster.node(leader).client().await?;
    let on_rejoined: Bucket<Record> =
        Bucket::open(&jetstream::new(direct), names::BUCKET_ROLLOUTS).await?;
    let entry = on_rejoined
        .get("test.podinfo")
        .await?
        .ok_or("record lost")?;
    assert_eq!((entry.value, entry.revision), (Record { step: 3 }, next));
    Ok(())
}

#[tokio::test]
async fn three_replicas_on_a_single_server_fail_with_a_hint() -> TestResult {
    let (_server, _client, js) = nats().await?;
    let options = SetupOptions {
        replicas: 3,
        ..SetupOptions::default()
    };
    let err = setup::ensure_all_with(&js, &options)
        .await
        .expect_err("a single server cannot hold three replicas");
    assert_eq!(err.kind(), BusErrorKind::Nats);
    let shown = err.to_string();
    assert!(shown.contains("--js-replicas 1"), "{shown}");
    assert!(shown.contains(names::STREAM_EVENTS), "{shown}");
    Ok(())
}

#[tokio::test]
async fn replicas_other_than_1_3_or_5_are_refused() -> TestResult {
    let (_server, _client, js) = nats().await?;
    let err = setup::ensure_all_with(
        &js,
        &SetupOptions {
            replicas: 2,
            ..SetupOptions::default()
        },
    )
    .await
    .expect_err("two replicas");
    assert_eq!(err.kind(), BusErrorKind::Config);
    // Nothing was created on the way to the refusal.
    assert!(js.get_stream(names::STREAM_EVENTS).await.is_err());
    Ok(())
}

#[derive(clap::Parser, Debug)]
struct Cli {
    #[command(flatten)]
    jetstream: JetStreamArgs,
}

#[test]
fn the_flag_defaults_to_one_and_takes_only_1_3_or_5() {
    let default = Cli::try_parse_from(["svc"]).expect("parses");
    assert_eq!(default.jetstream.options().replicas, 1);
    let three = Cli::try_parse_from(["svc", "--js-replicas", "3"]).expect("parses");
    assert_eq!(
        three.jetstream.options(),
        SetupOptions {
            replicas: 3,
            ..SetupOptions::default()
        }
    );
    for bad in ["0", "2", "4", "7", "three"] {
        let err = Cli::try_parse_from(["svc", "--js-replicas", bad]).expect_err(bad);
        let shown = err.to_string();
        assert!(shown.contains("1, 3 or 5"), "{bad}: {shown}");
    }
}
