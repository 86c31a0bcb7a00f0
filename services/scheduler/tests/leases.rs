//! Leases and fencing, decision by decision, against a real nats-server's KV bucket. Time is
//! passed in explicitly (the `now_ms` every lease call takes), so expiry is exercised without
//! waiting for it.
#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::sync::Arc;

use aviary_bus::kv::Bucket;
use aviary_bus::{names, setup};
use aviary_scheduler::lease::{Epoch, LeaseError, LeaseValue, Leases, Owners, REPLICA_PREFIX};
use aviary_testkit::NatsServer;

const TTL: u64 = 5_000;
const KEY: &str = "shop.checkout";

async fn bucket(nats: &NatsServer) -> Bucket<LeaseValue> {
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    setup::ensure_all(&js).await.unwrap();
    Bucket::open(&js, names::BUCKET_LEASES).await.unwrap()
}

/// The wall clock now: renewals check their confirmation against it.
fn now() -> u64 {
    aviary_runtime::clock::now_ms()
}

fn taken<T: std::fmt::Debug>(result: Result<T, LeaseError>) -> bool {
    matches!(result, Err(LeaseError::Taken { .. }))
}

async fn replica(bucket: &Bucket<LeaseValue>, id: &str, at: u64) -> (Leases, Arc<Epoch>) {
    let leases = Leases::new(bucket.clone(), id, TTL);
    let epoch = leases.acquire_replica(at).await.unwrap();
    (leases, epoch)
}

#[tokio::test]
async fn a_live_owner_keeps_its_rollout_and_a_dead_ones_is_taken_and_fenced() {
    let nats = NatsServer::start().await.unwrap();
    let bucket = bucket(&nats).await;
    let t0 = now();
    let (a, epoch_a) = replica(&bucket, "a", t0).await;
    let (b, epoch_b) = replica(&bucket, "b", t0).await;
    assert_ne!(epoch_a.id(), epoch_b.id());

    let held = a
        .acquire(KEY, t0, &epoch_a, &Owners::default())
        .await
        .unwrap();
    assert_eq!(held.epoch.id(), epoch_a.id());
    // Taking it again under the same epoch is a no-op that returns the same holding.
    let again = a
        .acquire(KEY, t0 + 1, &epoch_a, &Owners::default())
        .await
        .unwrap();
    assert_eq!(again.revision, held.revision);

    // While a's replica lease is unexpired, b cannot take the rollout.
    assert!(taken(
        b.acquire(KEY, t0 + TTL - 1, &epoch_b, &Owners::default())
            .await
    ));
    let stored = bucket.get(KEY).await.unwrap().unwrap().value;
    assert_eq!((stored.owner.as_str(), stored.epoch), ("a", epoch_a.id()));

    // Past a's expiry (b renewed meanwhile), b takes it, deleting a's replica lease first.
    let later = t0 + TTL + 1;
    b.renew_replica(&epoch_b, t0 + 1).await.unwrap();
    let took = b
        .acquire(KEY, later, &epoch_b, &Owners::default())
        .await
        .unwrap();
    assert_eq!(took.epoch.id(), epoch_b.id());
    let stored = bucket.get(KEY).await.unwrap().unwrap().value;
    assert_eq!((stored.owner.as_str(), stored.epoch), ("b", epoch_b.id()));
    assert!(
        bucket
            .get(&format!("{REPLICA_PREFIX}a"))
            .await
            .unwrap()
            .is_none(),
        "the dead owner's replica lease is gone"
    );

    // a comes back late: its renewal fails on the deleted lease, its epoch is lost, and its
    // drivers (which watch `lost`) stop; it no longer counts as valid at any time.
    assert!(!epoch_a.lost().is_cancelled());
    assert!(taken(a.renew_replica(&epoch_a, t0 + 2).await));
    assert!(epoch_a.lost().is_cancelled());
    assert!(!epoch_a.valid(t0 + 3));
    assert!(a.epoch(t0 + 3).is_none());
    // Its old holding cannot be re-stamped: the revision moved on.
    assert!(taken(a.restamp(&held).await));
}

#[tokio::test]
async fn a_released_rollout_is_taken_at_once_and_a_stale_release_changes_nothing() {
    let nats = NatsServer::start().await.unwrap();
    let bucket = bucket(&nats).await;
    let t0 = now();
    let (a, epoch_a) = replica(&bucket, "a", t0).await;
    let (b, epoch_b) = replica(&bucket, "b", t0).await;
    let held = a
        .acquire(KEY, t0, &epoch_a, &Owners::default())
        .await
        .unwrap();
    a.release(&held).await;
    // a's replica lease is alive, but the rollout was released: b need not wait.
    let took = b
        .acquire(KEY, t0 + 1, &epoch_b, &Owners::default())
        .await
        .unwrap();
    // a releasing again with its old revision loses the race and leaves b's holding alone.
    a.release(&held).await;
    let stored = bucket.get(KEY).await.unwrap().unwrap();
    assert_eq!(stored.value.owner, "b");
    assert_eq!(stored.revision, took.revision);
}

#[tokio::test]
async fn an_epoch_expired_by_its_own_clock_is_lost_rather_than_renewed() {
    let nats = NatsServer::start().await.unwrap();
    let bucket = bucket(&nats).await;
    let t0 = now();
    let (a, epoch) = replica(&bucket, "a", t0).await;
    assert!(epoch.valid(t0 + TTL - 1));
    assert!(!epoch.valid(t0 + TTL));
    // Renewing after the expiry (a paused process waking up): refused, and the epoch is lost
    // even though nobody else wrote the lease.
    assert!(taken(a.renew_replica(&epoch, t0 + TTL).await));
    assert!(epoch.lost().is_cancelled());
    // A fresh epoch can be taken, under a new id.
    let fresh = a.acquire_replica(t0 + TTL + 1).await.unwrap();
    assert_ne!(fresh.id(), epoch.id());
    assert!(fresh.valid(t0 + TTL + 2));
}

#[tokio::test]
async fn a_restarted_replica_with_the_same_id_fences_its_previous_epoch() {
    let nats = NatsServer::start().await.unwrap();
    let bucket = bucket(&nats).await;
    let t0 = now();
    let first = Leases::new(bucket.clone(), "a", TTL);
    let epoch = first.acquire_replica(t0).await.unwrap();
    let second = Leases::new(bucket.clone(), "a", TTL);
    // The same replica id (a restart before the old lease expired) takes the lease over at
    // once, under a new epoch; the old process loses its next renewal.
    let restarted = second.acquire_replica(t0 + 1).await.unwrap();
    assert_ne!(restarted.id(), epoch.id());
    assert!(taken(first.renew_replica(&epoch, t0 + 2).await));
    assert!(epoch.lost().is_cancelled());
    second.renew_replica(&restarted, t0 + 3).await.unwrap();
}
