//! Ownership of rollouts between scheduler replicas: one lease per replica, renewed; one lease
//! per rollout, written only when taken.
//!
//! The replica lease `replica.<id>` is `{owner, expiresAtMs, epoch}`. One task per replica takes
//! it (when absent, expired or its own) with a fresh random epoch and renews it by CAS on its
//! revision every third of the lease period. The epoch is lost the moment a renewal's CAS fails
//! (another replica fenced it) or the lease could not be renewed before its expiry by this
//! replica's own clock; every driver of that epoch then stops at once.
//!
//! A rollout lease (`<namespace>.<name>`) is `{owner, epoch}`: the replica and the epoch of its
//! replica lease it was taken under. It is written by CAS only when taken, when released, and
//! (when the bucket has a max age) re-stamped once per half max age so it does not age out
//! under a live owner. Another replica may take it only when it is absent or released, or the
//! named owner's replica lease is gone, expired, or of another epoch. Before taking rollouts
//! from an expired replica lease, the taker deletes that replica lease by CAS on its revision:
//! a late renewal by the old owner then fails instead of reviving its drivers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use aviary_bus::BusError;
use aviary_bus::kv::Bucket;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Prefix of replica lease keys in the leases bucket. Rollout leases are `<namespace>.<name>`
/// and namespaces are DNS labels, which never contain `_`, so the two kinds of key cannot clash.
pub const REPLICA_PREFIX: &str = "_replica.";

/// The stored lease value (replica and rollout leases alike).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseValue {
    /// Replica id of the holder; empty when released.
    pub owner: String,
    /// Replica lease: wall-clock expiry, milliseconds since the Unix epoch. Rollout lease: 0
    /// (ownership follows the owner's replica lease).
    #[serde(default)]
    pub expires_at_ms: u64,
    /// Replica lease: its epoch. Rollout lease: the epoch of the owner's replica lease it was
    /// taken under. 0 only in a released lease.
    #[serde(default)]
    pub epoch: u64,
}

/// One continuous holding of this replica's lease. Every driver shares it: it is valid while
/// unexpired by this replica's clock and not lost.
#[derive(Debug)]
pub struct Epoch {
    id: u64,
    revision: AtomicU64,
    expires_at_ms: AtomicU64,
    lost: CancellationToken,
}

impl Epoch {
    /// The epoch id written into the replica lease and every rollout lease taken under it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether drivers of this epoch may still write: not lost, and unexpired at `now_ms`.
    pub fn valid(&self, now_ms: u64) -> bool {
        !self.lost.is_cancelled() && self.expires_at_ms.load(Ordering::Acquire) > now_ms
    }

    /// Fires when the epoch is lost.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    fn lose(&self) {
        self.expires_at_ms.store(0, Ordering::Release);
        self.lost.cancel();
    }
}

/// A rollout lease this replica holds, as of its last successful write.
#[derive(Debug, Clone)]
pub struct Held {
    /// KV key of the lease.
    pub key: String,
    /// Revision of our last write.
    pub revision: u64,
    /// The replica-lease epoch it was taken under: the fencing token drivers check.
    pub epoch: Arc<Epoch>,
}

/// What went wrong with a lease operation.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another replica holds it, or won the race for it.
    #[error("lease {key} is held by another replica")]
    Taken {
        /// The lease key.
        key: String,
    },
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Replica leases seen during one scan, by owner: `Some(epoch)` while alive, `None` when gone
/// (absent, released, or expired and fenced). Saves one read per rollout on a takeover.
#[derive(Debug, Default)]
pub struct Owners(Mutex<HashMap<String, Option<u64>>>);

/// Takes and renews leases for one replica.
#[derive(Clone, Debug)]
pub struct Leases {
    bucket: Bucket<LeaseValue>,
    owner: String,
    ttl_ms: u64,
    restamp_ms: Option<u64>,
    current: Arc<Mutex<Option<Arc<Epoch>>>>,
}

impl Leases {
    /// Leases in `bucket` held under the replica id `owner`; the replica lease is valid `ttl_ms`
    /// after a write.
    pub fn new(bucket: Bucket<LeaseValue>, owner: impl Into<String>, ttl_ms: u64) -> Self {
        Self {
            bucket,
            owner: owner.into(),
            ttl_ms,
            restamp_ms: None,
            current: Arc::default(),
        }
    }

    /// The bucket's max age (zero: none): a rollout lease is then re-stamped every half of it,
    /// so it never ages out under a live owner.
    pub fn with_bucket_max_age(mut self, max_age: std::time::Duration) -> Self {
        let max_age = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        self.restamp_ms = (max_age > 0).then(|| (max_age / 2).max(1));
        self
    }

    /// The leases bucket (watched to see which replicas are alive and who holds what).
    pub fn bucket(&self) -> &Bucket<LeaseValue> {
        &self.bucket
    }

    /// This replica's id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The lease period in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// How often a driver re-stamps its rollout lease, if ever.
    pub fn restamp_ms(&self) -> Option<u64> {
        self.restamp_ms
    }

    /// The key of this replica's lease.
    pub fn replica_key(&self) -> String {
        format!("{REPLICA_PREFIX}{}", self.owner)
    }

    /// The current epoch, while valid at `now_ms`.
    pub fn epoch(&self, now_ms: u64) -> Option<Arc<Epoch>> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|e| e.valid(now_ms))
    }

    /// Takes this replica's lease if it is free, expired, or already ours, under a new epoch.
    ///
    /// Errors: [`LeaseError::Taken`] when another process with the same id holds it.
    pub async fn acquire_replica(&self, now_ms: u64) -> Result<Arc<Epoch>, LeaseError> {
        let key = self.replica_key();
        let id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        let value = LeaseValue {
            owner: self.owner.clone(),
            expires_at_ms: now_ms + self.ttl_ms,
            epoch: id,
        };
        let written = match self.bucket.get(&key).await {
            Ok(Some(current)) => {
                let lease = &current.value;
                if !lease.owner.is_empty()
                    && lease.owner != self.owner
                    && lease.expires_at_ms > now_ms
                {
                    return Err(LeaseError::Taken { key });
                }
                self.bucket.update(&key, &value, current.revision).await
            }
            Ok(None) => self.bucket.create(&key, &value).await,
            Err(BusError::Decode { .. }) => self.overwrite(&key, &value).await,
            Err(e) => return Err(e.into()),
        };
        let revision = taken(&key, written)?;
        let epoch = Arc::new(Epoch {
            id,
            revision: AtomicU64::new(revision),
            expires_at_ms: AtomicU64::new(value.expires_at_ms),
            lost: CancellationToken::new(),
        });
        let previous = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(epoch.clone());
        if let Some(previous) = previous {
            previous.lose();
        }
        Ok(epoch)
    }

    /// Extends this replica's lease by CAS on its revision.
    ///
    /// Errors: [`LeaseError::Taken`] when the epoch is lost (the CAS failed, or the lease
    /// expired by our clock before the renewal was confirmed): every driver of it has been told
    /// to stop. [`LeaseError::Bus`] when NATS failed; the epoch stays valid until it expires.
    pub async fn renew_replica(&self, epoch: &Epoch, now_ms: u64) -> Result<(), LeaseError> {
        let key = self.replica_key();
        let before = epoch.expires_at_ms.load(Ordering::Acquire);
        if !epoch.valid(now_ms) {
            self.lose(epoch);
            return Err(LeaseError::Taken { key });
        }
        let value = LeaseValue {
            owner: self.owner.clone(),
            expires_at_ms: now_ms + self.ttl_ms,
            epoch: epoch.id,
        };
        let written = self
            .bucket
            .update(&key, &value, epoch.revision.load(Ordering::Acquire))
            .await;
        match taken(&key, written) {
            // Confirmed only after the old expiry: drivers may already have seen the epoch
            // expire, so it stays lost rather than coming back to life.
            Ok(_) if crate::convert::now_ms() >= before => {
                self.lose(epoch);
                Err(LeaseError::Taken { key })
            }
            Ok(revision) => {
                epoch.revision.store(revision, Ordering::Release);
                epoch
                    .expires_at_ms
                    .store(value.expires_at_ms, Ordering::Release);
                Ok(())
            }
            Err(e @ LeaseError::Taken { .. }) => {
                self.lose(epoch);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Marks `epoch` lost: its drivers stop at once.
    pub fn lose(&self, epoch: &Epoch) {
        epoch.lose();
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| c.id == epoch.id) {
            *current = None;
        }
    }

    /// Gives this replica's lease up on shutdown (after its drivers released their rollouts).
    pub async fn release_replica(&self) {
        let epoch = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(epoch) = epoch {
            epoch.lose();
            let revision = epoch.revision.load(Ordering::Acquire);
            let _ = self
                .bucket
                .delete(&self.replica_key(), Some(revision))
                .await;
        }
    }

    /// Takes the rollout lease at `key` under `epoch` if it is absent or released, ours, or its
    /// owner's replica lease is gone, expired or of another epoch.
    ///
    /// Errors: [`LeaseError::Taken`] when someone else holds it or wins the race for it.
    pub async fn acquire(
        &self,
        key: &str,
        now_ms: u64,
        epoch: &Arc<Epoch>,
        owners: &Owners,
    ) -> Result<Held, LeaseError> {
        let value = LeaseValue {
            owner: self.owner.clone(),
            expires_at_ms: 0,
            epoch: epoch.id,
        };
        let written = match self.bucket.get(key).await {
            Ok(Some(current)) => {
                let lease = &current.value;
                if lease.owner == self.owner && lease.epoch == epoch.id {
                    return Ok(Held {
                        key: key.to_owned(),
                        revision: current.revision,
                        epoch: epoch.clone(),
                    });
                }
                let free = if lease.owner.is_empty() || lease.owner == self.owner {
                    true
                } else if lease.epoch == 0 {
                    // A per-rollout lease written by an older scheduler: its own expiry rules.
                    lease.expires_at_ms <= now_ms
                } else {
                    match self.alive(&lease.owner, now_ms, owners).await? {
                        Some(live) => live != lease.epoch,
                        None => true,
                    }
                };
                if !free {
                    return Err(LeaseError::Taken {
                        key: key.to_owned(),
                    });
                }
                self.bucket.update(key, &value, current.revision).await
            }
            Ok(None) => self.bucket.create(key, &value).await,
            // An unreadable lease is overwritten by whoever gets there first, rather than
            // blocking the rollout forever.
            Err(BusError::Decode { .. }) => self.overwrite(key, &value).await,
            Err(e) => return Err(e.into()),
        };
        Ok(Held {
            key: key.to_owned(),
            revision: taken(key, written)?,
            epoch: epoch.clone(),
        })
    }

    /// The epoch of `owner`'s replica lease while it is alive at `now_ms`; `None` once it is
    /// gone. An expired one is deleted by CAS first, so its holder cannot renew it any more.
    async fn alive(
        &self,
        owner: &str,
        now_ms: u64,
        owners: &Owners,
    ) -> Result<Option<u64>, LeaseError> {
        if let Some(state) = owners
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(owner)
        {
            return Ok(*state);
        }
        let key = format!("{REPLICA_PREFIX}{owner}");
        let state = match self.bucket.get(&key).await {
            Ok(None) | Err(BusError::Decode { .. }) => None,
            Ok(Some(lease)) if lease.value.expires_at_ms > now_ms => Some(lease.value.epoch),
            Ok(Some(lease)) => match self.bucket.delete(&key, Some(lease.revision)).await {
                Ok(()) => None,
                // Renewed in between: it is alive after all.
                Err(BusError::Conflict { .. }) => return Err(LeaseError::Taken { key }),
                Err(e) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        owners
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(owner.to_owned(), state);
        Ok(state)
    }

    /// Rewrites a held rollout lease unchanged by CAS, so the bucket's max age never removes
    /// it under a live owner.
    ///
    /// Errors: [`LeaseError::Taken`] when the revision moved on: the lease was lost.
    pub async fn restamp(&self, held: &Held) -> Result<Held, LeaseError> {
        let value = LeaseValue {
            owner: self.owner.clone(),
            expires_at_ms: 0,
            epoch: held.epoch.id,
        };
        let written = self.bucket.update(&held.key, &value, held.revision).await;
        Ok(Held {
            key: held.key.clone(),
            revision: taken(&held.key, written)?,
            epoch: held.epoch.clone(),
        })
    }

    /// Gives a rollout lease up (on shutdown or when the rollout has nothing left to do), so
    /// another replica need not wait. Losing the race is fine: someone else has it.
    pub async fn release(&self, held: &Held) {
        let value = LeaseValue {
            owner: String::new(),
            expires_at_ms: 0,
            epoch: 0,
        };
        let _ = self.bucket.update(&held.key, &value, held.revision).await;
    }

    async fn overwrite(&self, key: &str, value: &LeaseValue) -> Result<u64, BusError> {
        let revision = self
            .bucket
            .store()
            .entry(key)
            .await
            .ok()
            .flatten()
            .map(|e| e.revision);
        match revision {
            Some(revision) => self.bucket.update(key, value, revision).await,
            None => self.bucket.create(key, value).await,
        }
    }
}

fn taken(key: &str, written: Result<u64, BusError>) -> Result<u64, LeaseError> {
    match written {
        Ok(revision) => Ok(revision),
        Err(BusError::Conflict { .. }) => Err(LeaseError::Taken {
            key: key.to_owned(),
        }),
        Err(e) => Err(e.into()),
    }
}
