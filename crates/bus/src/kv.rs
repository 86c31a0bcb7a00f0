//! Typed KV buckets where every write is a compare-and-swap on the key's revision.
//!
//! A writer reads a value with its revision, decides, and writes back *at that revision*; if
//! someone wrote in between, it gets [`BusError::Conflict`] and must re-read and re-decide —
//! it never overwrites. [`Bucket::update_with`] packages that loop.
//!
//! Values are JSON by default (`Bucket<Record>`), or protobuf (`Bucket<Msg, Proto>`), or any
//! other [`Codec`].

use std::marker::PhantomData;

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;

use crate::BusError;
use crate::typed::{Codec, Json};

/// How many times [`Bucket::update_with`] re-reads and retries after losing a race. Each loss
/// means another writer made progress; this many in a row means heavy contention on one key,
/// which the caller should see rather than spin on.
pub const UPDATE_WITH_ATTEMPTS: usize = 16;

/// A value read from a bucket, with the revision to write back at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    /// The key.
    pub key: String,
    /// The decoded value.
    pub value: T,
    /// The key's revision (bucket-wide sequence) when read.
    pub revision: u64,
}

/// A KV bucket holding values of type `T` encoded with `C`.
pub struct Bucket<T, C = Json> {
    store: kv::Store,
    name: String,
    _codec: PhantomData<fn() -> (T, C)>,
}

impl<T, C> Clone for Bucket<T, C> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            name: self.name.clone(),
            _codec: PhantomData,
        }
    }
}

impl<T, C> std::fmt::Debug for Bucket<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("name", &self.name).finish()
    }
}

/// The latest state of a key: its revision, and its value unless it was deleted.
struct Current {
    revision: u64,
    value: Option<bytes::Bytes>,
}

impl<T, C: Codec<T>> Bucket<T, C> {
    /// Opens an existing bucket (see [`crate::setup::ensure_all`]).
    ///
    /// # Errors
    /// [`BusError::Nats`] when it does not exist or JetStream is unavailable.
    pub async fn open(js: &jetstream::Context, bucket: &str) -> Result<Self, BusError> {
        let store = js
            .get_key_value(bucket)
            .await
            .map_err(|e| BusError::nats("open bucket", bucket, e))?;
        Ok(Self::new(store))
    }

    /// Wraps an opened store.
    pub fn new(store: kv::Store) -> Self {
        let name = store.name.clone();
        Self {
            store,
            name,
            _codec: PhantomData,
        }
    }

    /// The underlying store, e.g. to `watch` keys.
    pub fn store(&self) -> &kv::Store {
        &self.store
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn target(&self, key: &str) -> String {
        format!("{}/{key}", self.name)
    }

    fn decode(&self, key: &str, bytes: &[u8]) -> Result<T, BusError> {
        C::decode(bytes).map_err(|reason| BusError::Decode {
            subject: self.target(key),
            reason,
        })
    }

    fn encode(&self, key: &str, value: &T) -> Result<bytes::Bytes, BusError> {
        C::encode(value).map_err(|reason| BusError::Encode {
            subject: self.target(key),
            reason,
        })
    }

    async fn current(&self, key: &str) -> Result<Option<Current>, BusError> {
        let entry = self
            .store
            .entry(key)
            .await
            .map_err(|e| BusError::nats("kv get", self.target(key), e))?;
        Ok(entry.map(|e| Current {
            revision: e.revision,
            value: matches!(e.operation, kv::Operation::Put).then_some(e.value),
        }))
    }

    async fn conflict(&self, key: &str) -> BusError {
        let current_revision = match self.current(key).await {
            Ok(Some(current)) => current.revision,
            _ => 0,
        };
        BusError::Conflict {
            key: self.target(key),
            current_revision,
        }
    }

    /// The value at `key` and its revision; `None` if absent or deleted.
    ///
    /// # Errors
    /// [`BusError::Decode`] when the stored value does not decode; [`BusError::Nats`].
    pub async fn get(&self, key: &str) -> Result<Option<Entry<T>>, BusError> {
        match self.current(key).await? {
            Some(Current {
                revision,
                value: Some(bytes),
            }) => Ok(Some(Entry {
                key: key.to_owned(),
                value: self.decode(key, &bytes)?,
                revision,
            })),
            _ => Ok(None),
        }
    }

    /// Creates `key`; fails if it exists. Returns the new revision.
    ///
    /// # Errors
    /// [`BusError::Conflict`] if the key exists (with its revision); [`BusError::Encode`];
    /// [`BusError::Nats`].
    pub async fn create(&self, key: &str, value: &T) -> Result<u64, BusError> {
        let bytes = self.encode(key, value)?;
        match self.store.create(key, bytes).await {
            Ok(revision) => Ok(revision),
            Err(e) => match e.kind() {
                kv::CreateErrorKind::AlreadyExists => Err(self.conflict(key).await),
                _ => Err(BusError::nats("kv create", self.target(key), e)),
            },
        }
    }

    /// Writes `value` if `key` is still at `expected_revision`. Returns the new revision.
    ///
    /// # Errors
    /// [`BusError::Conflict`] with the current revision when someone wrote in between;
    /// [`BusError::Encode`]; [`BusError::Nats`].
    pub async fn update(
        &self,
        key: &str,
        value: &T,
        expected_revision: u64,
    ) -> Result<u64, BusError> {
        let bytes = self.encode(key, value)?;
        match self.store.update(key, bytes, expected_revision).await {
            Ok(revision) => Ok(revision),
            Err(e) => match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => Err(self.conflict(key).await),
                _ => Err(BusError::nats("kv update", self.target(key), e)),
            },
        }
    }

    /// Reads `key`, lets `decide` compute the new value from the current one (`None` when
    /// absent), and writes it by CAS; on a lost race, re-reads and decides again, up to
    /// [`UPDATE_WITH_ATTEMPTS`] times. `decide` returning `None` writes nothing.
    ///
    /// Returns the entry as it now stands: the one written, or the current one when `decide`
    /// wrote nothing (`None` if the key is absent).
    ///
    /// # Errors
    /// [`BusError::Conflict`] after losing every attempt; [`BusError::Decode`] when the stored
    /// value does not decode (it is never overwritten blindly); [`BusError::Encode`];
    /// [`BusError::Nats`].
    pub async fn update_with<F>(
        &self,
        key: &str,
        mut decide: F,
    ) -> Result<Option<Entry<T>>, BusError>
    where
        F: FnMut(Option<T>) -> Option<T>,
    {
        let mut last_conflict = None;
        for _ in 0..UPDATE_WITH_ATTEMPTS {
            let current = self.get(key).await?;
            let revision = current.as_ref().map(|e| e.revision);
            let Some(next) = decide(current.map(|e| e.value)) else {
                return self.get(key).await;
            };
            let written = match revision {
                Some(revision) => self.update(key, &next, revision).await,
                None => self.create(key, &next).await,
            };
            match written {
                Ok(revision) => {
                    return Ok(Some(Entry {
                        key: key.to_owned(),
                        value: next,
                        revision,
                    }));
                }
                Err(e @ BusError::Conflict { .. }) => last_conflict = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_conflict.unwrap_or_else(|| BusError::Conflict {
            key: self.target(key),
            current_revision: 0,
        }))
    }

    /// Writes `value` whatever the current revision. Only for state with a single writer
    /// that is not a decision (e.g. an agent publishing its own capabilities); rollout
    /// records, routes and leases are written by CAS.
    ///
    /// # Errors
    /// [`BusError::Encode`]; [`BusError::Nats`].
    pub async fn put(&self, key: &str, value: &T) -> Result<u64, BusError> {
        let bytes = self.encode(key, value)?;
        self.store
            .put(key, bytes)
            .await
            .map_err(|e| BusError::nats("kv put", self.target(key), e))
    }

    /// Deletes `key`, only if it is still at `expected_revision` when one is given.
    ///
    /// # Errors
    /// [`BusError::Conflict`] when it moved on; [`BusError::Nats`].
    pub async fn delete(&self, key: &str, expected_revision: Option<u64>) -> Result<(), BusError> {
        match self
            .store
            .delete_expect_revision(key, expected_revision)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => {
                Err(self.conflict(key).await)
            }
            Err(e) => Err(BusError::nats("kv delete", self.target(key), e)),
        }
    }

    /// Every key currently holding a value.
    ///
    /// # Errors
    /// [`BusError::Nats`].
    pub async fn keys(&self) -> Result<Vec<String>, BusError> {
        let keys = self
            .store
            .keys()
            .await
            .map_err(|e| BusError::nats("kv keys", self.name.clone(), e))?;
        keys.try_collect()
            .await
            .map_err(|e| BusError::nats("kv keys", self.name.clone(), e))
    }
}
