//! Ownership of rollouts between scheduler replicas: one lease per rollout in the leases bucket.
//!
//! A lease is `{owner, expiresAtMs}`. A replica takes a lease that is absent or expired by a
//! compare-and-swap on its KV revision, renews it by CAS on the revision it last wrote, and loses
//! it the moment a renewal's CAS fails (someone else took it) — it then stops driving that rollout
//! at once. The revision of the last successful write is the fencing token: the driver only
//! writes the rollout record while its lease is unexpired by its own clock.

use aviary_bus::BusError;
use aviary_bus::kv::Bucket;
use serde::{Deserialize, Serialize};

/// The stored lease value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseValue {
    /// Replica id of the holder; empty when released.
    pub owner: String,
    /// Wall-clock expiry, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// A lease this replica holds, as of its last successful write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// KV key of the lease.
    pub key: String,
    /// Revision of our last write: the fencing token.
    pub revision: u64,
    /// When it expires unless renewed.
    pub expires_at_ms: u64,
}

/// What went wrong with a lease operation.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another replica holds an unexpired lease, or won the race for it.
    #[error("lease {key} is held by another replica")]
    Taken {
        /// The lease key.
        key: String,
    },
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Takes and renews leases for one replica.
#[derive(Clone, Debug)]
pub struct Leases {
    bucket: Bucket<LeaseValue>,
    owner: String,
    ttl_ms: u64,
}

impl Leases {
    /// Leases in `bucket` held under the replica id `owner`, each valid `ttl_ms` after a write.
    pub fn new(bucket: Bucket<LeaseValue>, owner: impl Into<String>, ttl_ms: u64) -> Self {
        Self {
            bucket,
            owner: owner.into(),
            ttl_ms,
        }
    }

    /// This replica's id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The lease period in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// Takes the lease at `key` if it is free, expired, or already ours.
    ///
    /// Errors: [`LeaseError::Taken`] when someone else holds it or wins the race for it.
    pub async fn acquire(&self, key: &str, now_ms: u64) -> Result<Held, LeaseError> {
        let value = LeaseValue {
            owner: self.owner.clone(),
            expires_at_ms: now_ms + self.ttl_ms,
        };
        let written = match self.bucket.get(key).await {
            Ok(Some(current)) => {
                let lease = &current.value;
                let free = lease.owner.is_empty()
                    || lease.owner == self.owner
                    || lease.expires_at_ms <= now_ms;
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
            Err(BusError::Decode { .. }) => {
                let revision = self
                    .bucket
                    .store()
                    .entry(key)
                    .await
                    .ok()
                    .flatten()
                    .map(|e| e.revision);
                match revision {
                    Some(revision) => self.bucket.update(key, &value, revision).await,
                    None => self.bucket.create(key, &value).await,
                }
            }
            Err(e) => return Err(e.into()),
        };
        self.held(key, written, value.expires_at_ms)
    }

    /// Extends a held lease by CAS on its revision.
    ///
    /// Errors: [`LeaseError::Taken`] when the revision moved on: the lease was lost.
    pub async fn renew(&self, held: &Held, now_ms: u64) -> Result<Held, LeaseError> {
        let value = LeaseValue {
            owner: self.owner.clone(),
            expires_at_ms: now_ms + self.ttl_ms,
        };
        let written = self.bucket.update(&held.key, &value, held.revision).await;
        self.held(&held.key, written, value.expires_at_ms)
    }

    /// Gives a lease up (on shutdown or when the rollout has nothing left to do), so another
    /// replica need not wait for it to expire. Losing the race is fine: someone else has it.
    pub async fn release(&self, held: &Held) {
        let value = LeaseValue {
            owner: String::new(),
            expires_at_ms: 0,
        };
        let _ = self.bucket.update(&held.key, &value, held.revision).await;
    }

    fn held(
        &self,
        key: &str,
        written: Result<u64, BusError>,
        expires_at_ms: u64,
    ) -> Result<Held, LeaseError> {
        match written {
            Ok(revision) => Ok(Held {
                key: key.to_owned(),
                revision,
                expires_at_ms,
            }),
            Err(BusError::Conflict { .. }) => Err(LeaseError::Taken {
                key: key.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}
