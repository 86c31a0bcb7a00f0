//! Which rollouts this replica drives: holds the replica lease (one task renews it), watches the
//! rollouts bucket and the leases bucket, takes the leases of rollouts that need an owner and
//! have none (or one whose owner's replica lease is gone or expired) up to its fair share of
//! them, hands a surplus over in bounded batches when another replica joins, and runs a driver
//! for each rollout it holds.
//!
//! Every replica scans at least once per third of a lease period, and at once when a lease is
//! released, so a dead replica's rollouts are taken over within two lease periods (one for its
//! replica lease to expire, less than one to notice), and a stopping replica's (it releases
//! every lease before it exits) within moments.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use aviary_bus::names;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::convert::now_ms;
use crate::driver::{self, Exit, Handle, Shared};
use crate::metrics::{PhaseLabel, RolloutLabel};
use crate::record::RecordSummary;
use crate::share;

/// Lease acquisitions in flight at once during a scan.
const ACQUIRE_CONCURRENCY: usize = 64;

/// How long after another replica's lease expiry its rollouts are scanned for: enough for our
/// clock to agree it has passed.
const EXPIRY_MARGIN_MS: u64 = 20;

/// How soon a scan that lost races for leases is followed by another.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// What the watch has seen of each rollout: whether it needs an owner.
type Index = Arc<Mutex<HashMap<String, bool>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs until `shutdown`: the watch, the wake-up listener and the scan loop.
///
/// Fails when the bucket cannot be watched or the wake subject subscribed.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let index: Index = Arc::default();
    let drivers: Arc<Mutex<HashMap<String, Handle>>> = Arc::default();
    let (exits_tx, mut exits) = tokio::sync::mpsc::unbounded_channel::<(String, Exit)>();
    let scan_now = Arc::new(tokio::sync::Notify::new());

    let mut watch = shared.records.store().watch_with_history(">").await?;
    let watcher = {
        let index = index.clone();
        let scan_now = scan_now.clone();
        let drivers = drivers.clone();
        let metrics = shared.metrics.clone();
        let shutdown = shutdown.clone();
        let mut phases: HashMap<String, String> = HashMap::new();
        tokio::spawn(async move {
            loop {
                let entry = tokio::select! {
                    () = shutdown.cancelled() => return,
                    entry = watch.next() => entry,
                };
                let Some(Ok(entry)) = entry else {
                    warn!("rollouts watch ended");
                    return;
                };
                let key = entry.key.clone();
                let needs = match entry.operation {
                    kv::Operation::Put => {
                        match serde_json::from_slice::<RecordSummary>(&entry.value) {
                            Ok(record) => {
                                let phase = record.status.phase.to_string();
                                if let Some(old) = phases.insert(key.clone(), phase.clone()) {
                                    metrics
                                        .rollouts
                                        .get_or_create(&PhaseLabel { phase: old })
                                        .dec();
                                }
                                metrics.rollouts.get_or_create(&PhaseLabel { phase }).inc();
                                metrics
                                    .canary_weight
                                    .get_or_create(&RolloutLabel {
                                        // Keys are `<namespace>.<name>`, neither with a dot.
                                        rollout: key.replacen('.', "/", 1),
                                    })
                                    .set(i64::from(record.status.canary_weight));
                                record.needs_driver()
                            }
                            Err(error) => {
                                warn!(%key, %error, "unreadable rollout record skipped");
                                false
                            }
                        }
                    }
                    // Deleted (or purged): no longer counted in any phase.
                    _ => {
                        if let Some(old) = phases.remove(&key) {
                            metrics
                                .rollouts
                                .get_or_create(&PhaseLabel { phase: old })
                                .dec();
                        }
                        metrics.canary_weight.remove(&RolloutLabel {
                            rollout: key.replacen('.', "/", 1),
                        });
                        false
                    }
                };
                let was = index
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key.clone(), needs);
                let driven = drivers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&key)
                    .map(|h| h.seen.clone());
                if let Some(seen) = driven {
                    let revision = entry.revision;
                    seen.send_if_modified(|latest| {
                        let newer = revision > *latest;
                        if newer {
                            *latest = revision;
                        }
                        newer
                    });
                } else if needs && was != Some(true) {
                    scan_now.notify_one();
                }
            }
        })
    };

    let view: Arc<Mutex<share::View>> = Arc::default();
    let mut lease_watch = shared
        .leases
        .bucket()
        .store()
        .watch_with_history(">")
        .await?;
    let lease_watcher = {
        let view = view.clone();
        let scan_now = scan_now.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let entry = tokio::select! {
                    () = shutdown.cancelled() => return,
                    entry = lease_watch.next() => entry,
                };
                let Some(Ok(entry)) = entry else {
                    warn!("leases watch ended");
                    return;
                };
                let value = match entry.operation {
                    kv::Operation::Put => {
                        match serde_json::from_slice::<crate::lease::LeaseValue>(&entry.value) {
                            Ok(value) => Some(value),
                            // Unreadable: as good as free (taking it overwrites it).
                            Err(error) => {
                                warn!(key = %entry.key, %error, "unreadable lease skipped");
                                None
                            }
                        }
                    }
                    _ => None,
                };
                if lock(&view).apply(&entry.key, value) == share::Change::Freed {
                    scan_now.notify_one();
                }
            }
        })
    };

    let mut wakes = shared.effects.client().subscribe(names::WAKE_ALL).await?;
    let waker = {
        let drivers = drivers.clone();
        let scan_now = scan_now.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = shutdown.cancelled() => return,
                    message = wakes.next() => message,
                };
                let Some(message) = message else { return };
                let Some(rest) = message
                    .subject
                    .as_str()
                    .strip_prefix(&format!("{}.", names::WAKE_PREFIX))
                else {
                    continue;
                };
                let wake = drivers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(rest)
                    .map(|h| h.wake.clone());
                match wake {
                    Some(wake) => {
                        let _ = wake.try_send(());
                    }
                    None => scan_now.notify_one(),
                }
            }
        })
    };

    let period = Duration::from_millis(shared.leases.ttl_ms() / 3).max(Duration::from_millis(50));
    let replica = tokio::spawn(hold_replica_lease(
        shared.clone(),
        period,
        scan_now.clone(),
        shutdown.clone(),
    ));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    // Each driver's own stop token, and those told to stop to hand their rollout over.
    let mut tokens: HashMap<String, CancellationToken> = HashMap::new();
    let mut handing_over: std::collections::HashSet<String> = std::collections::HashSet::new();
    let me = shared.leases.owner().to_owned();
    // A scan soon after one that lost races for leases while under its share: the winners'
    // leases are in the view by then, so it tries only the ones still free.
    let mut retry: Option<tokio::time::Instant> = None;
    loop {
        // A scan the moment another replica's lease runs out (if it was not renewed, its
        // rollouts are orphans), a little after so that our clock agrees it has expired.
        let expiry = lock(&view).next_expiry(&me, now_ms()).map(|at| {
            tokio::time::Instant::now()
                + Duration::from_millis(at.saturating_sub(now_ms()) + EXPIRY_MARGIN_MS)
        });
        let expiry = match (expiry, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
            () = scan_now.notified() => {}
            () = sleep_until_some(expiry) => {}
            Some((key, exit)) = exits.recv() => {
                debug!(%key, ?exit, "driver stopped");
                lock(&drivers).remove(&key);
                tokens.remove(&key);
                handing_over.remove(&key);
                shared.metrics.owned.dec();
                continue;
            }
        }
        retry = None; // this is the scan
        let now = now_ms();
        let Some(epoch) = shared.leases.epoch(now) else {
            continue; // no replica lease: nothing may be taken until it is back
        };
        let (wanted, mut candidates, live) = {
            let index = lock(&index);
            let driven = lock(&drivers);
            let view = lock(&view);
            let candidates: Vec<String> = index
                .iter()
                .filter(|(k, needs)| {
                    **needs && !driven.contains_key(*k) && !view.held_elsewhere(k, &me, now)
                })
                .map(|(k, _)| k.clone())
                .collect();
            (
                index.values().filter(|needs| **needs).count(),
                candidates,
                view.live(&me, now),
            )
        };
        let fair = share::fair_share(wanted, live);
        let owned = tokens.len() - handing_over.len();
        let surplus = share::to_hand_over(owned, fair);
        if surplus > 0 {
            // Stopped drivers release their leases (between steps) for a replica under its
            // share to take; this one takes none back while it is over.
            let chosen: Vec<String> = tokens
                .keys()
                .filter(|k| !handing_over.contains(*k))
                .take(surplus)
                .cloned()
                .collect();
            debug!(surplus, fair, live, "handing rollouts over");
            for key in chosen {
                if let Some(token) = tokens.get(&key) {
                    token.cancel();
                }
                handing_over.insert(key);
            }
            shared.metrics.handed_over.inc_by(surplus as u64);
        }
        let room = fair.saturating_sub(owned);
        if candidates.len() > room {
            // A random pick, so replicas under their share do not all race for the same keys.
            rand::seq::SliceRandom::shuffle(candidates.as_mut_slice(), &mut rand::rng());
            candidates.truncate(room);
        }
        // Leases are taken concurrently: after a replica dies, the survivors must take over
        // thousands of rollouts within a lease period, which one round trip at a time cannot.
        let owners = Arc::new(crate::lease::Owners::default());
        let mut acquired = futures::stream::iter(candidates)
            .map(|key| {
                let shared = shared.clone();
                let epoch = epoch.clone();
                let owners = owners.clone();
                async move {
                    let result = shared.leases.acquire(&key, now, &epoch, &owners).await;
                    (key, result)
                }
            })
            .buffer_unordered(ACQUIRE_CONCURRENCY);
        let mut lost_races = 0_usize;
        while let Some((key, result)) = acquired.next().await {
            match result {
                Ok(held) => {
                    debug!(rollout = %key, "lease acquired");
                    let token = shutdown.child_token();
                    let (handle, task) =
                        driver::spawn(key.clone(), shared.clone(), held, token.clone());
                    lock(&drivers).insert(key.clone(), handle);
                    tokens.insert(key.clone(), token);
                    shared.metrics.owned.inc();
                    let exits = exits_tx.clone();
                    tasks.spawn(async move {
                        let exit = task.await.unwrap_or(Exit::Gone);
                        let _ = exits.send((key, exit));
                    });
                }
                Err(crate::lease::LeaseError::Taken { .. }) => lost_races += 1,
                Err(error) => warn!(rollout = %key, %error, "cannot take lease"),
            }
        }
        if lost_races > 0 {
            retry = Some(tokio::time::Instant::now() + RETRY_AFTER);
        }
    }
    // Drivers see the same token and release their leases; the replica lease goes last.
    while tasks.join_next().await.is_some() {}
    let _ = replica.await;
    shared.leases.release_replica().await;
    watcher.abort();
    lease_watcher.abort();
    waker.abort();
    Ok(())
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Takes the replica lease and renews it every `period` until `shutdown`; when it is lost (every
/// driver of it stops at once), takes it again under a new epoch and asks for a scan.
async fn hold_replica_lease(
    shared: Arc<Shared>,
    period: Duration,
    scan_now: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let leases = &shared.leases;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut epoch: Option<Arc<crate::lease::Epoch>> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = now_ms();
        match &epoch {
            Some(held) => match leases.renew_replica(held, now).await {
                Ok(()) => {}
                Err(crate::lease::LeaseError::Taken { .. }) => {
                    warn!("replica lease lost; all drivers stop");
                    epoch = None;
                }
                Err(error) => {
                    warn!(%error, "cannot renew replica lease");
                    if !held.valid(now_ms()) {
                        leases.lose(held);
                        epoch = None;
                    }
                }
            },
            None => match leases.acquire_replica(now).await {
                Ok(held) => {
                    debug!(epoch = held.id(), "replica lease taken");
                    epoch = Some(held);
                    scan_now.notify_one();
                }
                Err(error) => warn!(%error, "cannot take replica lease"),
            },
        }
    }
}
