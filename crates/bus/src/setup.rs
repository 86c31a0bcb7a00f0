//! Creates the streams and KV buckets of [`crate::names`], idempotently: each service calls
//! [`ensure_all`] at start, any number of times, from any number of replicas at once.
//!
//! A stream or bucket that already exists is left as it is (an operator may have raised its
//! replicas or limits) as long as this code can work with it: same storage type and, for
//! streams, covering our subjects. Otherwise [`BusError::Incompatible`] says what differs.
//! One that has fewer replicas than asked for is kept too, with a warning naming it: changing
//! the replication of live state is an operator's decision, not a side effect of a restart.
//!
//! Replicas come from [`JetStreamArgs`] (`--js-replicas`), flattened into every service that
//! calls [`ensure_all_with`]: 1 for a single server, 3 (or 5) for a JetStream cluster.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{
    self, context::CreateStreamErrorKind, context::GetStreamErrorKind, kv,
};

use crate::BusError;
use crate::names;

/// The `--js-replicas` flag of every service that creates streams and buckets
/// (`#[command(flatten)]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct JetStreamArgs {
    /// Replicas of each JetStream stream and KV bucket created at start: 1 for a single
    /// nats-server, 3 (or 5) for a JetStream cluster of at least that many servers. Existing
    /// streams and buckets keep theirs.
    #[arg(
        long = "js-replicas",
        env = "AVIARY_JS_REPLICAS",
        default_value = "1",
        value_parser = parse_replicas
    )]
    pub replicas: usize,
}

impl Default for JetStreamArgs {
    fn default() -> Self {
        Self { replicas: 1 }
    }
}

impl JetStreamArgs {
    /// The default [`SetupOptions`] with these replicas.
    pub fn options(&self) -> SetupOptions {
        SetupOptions {
            replicas: self.replicas,
            ..SetupOptions::default()
        }
    }
}

/// The replica counts JetStream can use: one copy, or a Raft group that survives the loss of
/// a minority (an even count survives no more than the odd count below it, and JetStream
/// allows at most 5).
pub const VALID_REPLICAS: [usize; 3] = [1, 3, 5];

/// Parses `--js-replicas`: 1, 3 or 5.
///
/// # Errors
/// A sentence naming the flag and the accepted values.
pub fn parse_replicas(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("--js-replicas: {s:?} is not a number (use 1, 3 or 5)"))?;
    if VALID_REPLICAS.contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "--js-replicas: {n} is not 1, 3 or 5 (1 for a single server; an odd count of up \
             to 5 for a cluster, so a majority survives a lost server)"
        ))
    }
}

/// Settings of the streams and buckets that a deployment may want to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupOptions {
    /// How long audit events are kept. The notifier must catch up within this.
    pub events_max_age: Duration,
    /// Bytes the events stream may hold; past it the oldest events are dropped, so a flood of
    /// events cannot fill the server's disk (and starve every other stream) before
    /// `events_max_age` would have removed them.
    pub events_max_bytes: i64,
    /// Largest single audit event the events stream accepts; a publish above it is refused.
    pub events_max_message_size: i32,
    /// How long dead letters are kept for inspection.
    pub dead_max_age: Duration,
    /// Window in which a repeated `Nats-Msg-Id` is dropped as a duplicate. Longer than any
    /// retry loop of a publisher, so a retried publish is never stored twice.
    pub duplicate_window: Duration,
    /// Age after which a lease that was not renewed disappears from the leases bucket. Must
    /// be longer than the scheduler's renewal interval; the lease's own expiry time in its
    /// value decides ownership, this only cleans up after dead owners. Each live rollout
    /// lease is re-stamped every half of it, so a longer age costs fewer writes (at 10 000
    /// rollouts, 60 s would be 333 re-stamps a second; 10 min is 33) and only delays the
    /// removal of a dead owner's leftovers, which the survivors take over by expiry anyway.
    pub lease_max_age: Duration,
    /// Revisions kept per rollout record, for debugging a history of decisions.
    pub rollout_history: i64,
    /// Replicas of every stream and bucket (1 for a single server; 3 for a cluster). See
    /// [`VALID_REPLICAS`].
    pub replicas: usize,
}

impl Default for SetupOptions {
    fn default() -> Self {
        Self {
            events_max_age: Duration::from_secs(30 * 24 * 3600),
            // 1 GiB: months of events for hundreds of rollouts (an event is ~1-2 KiB), small
            // next to a JetStream server's disk.
            events_max_bytes: 1 << 30,
            // 256 KiB: a generous event (a long reason and every metric) is a few tens of KiB;
            // below the server's default 1 MiB max payload.
            events_max_message_size: 256 << 10,
            dead_max_age: Duration::from_secs(14 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            lease_max_age: Duration::from_secs(600),
            rollout_history: 5,
            replicas: 1,
        }
    }
}

/// The stream configurations [`ensure_all_with`] creates.
pub fn stream_configs(options: &SetupOptions) -> Vec<stream::Config> {
    vec![
        stream::Config {
            name: names::STREAM_EVENTS.into(),
            description: Some("Aviary audit events (CloudEvents JSON), per rollout".into()),
            subjects: vec![names::EVENTS_SUBJECTS.into()],
            storage: StorageType::File,
            max_age: options.events_max_age,
            max_bytes: options.events_max_bytes,
            max_message_size: options.events_max_message_size,
            duplicate_window: options.duplicate_window,
            num_replicas: options.replicas,
            ..Default::default()
        },
        stream::Config {
            name: names::STREAM_DEAD.into(),
            description: Some("Aviary dead letters: messages that could not be processed".into()),
            subjects: vec![names::DEAD_SUBJECTS.into()],
            storage: StorageType::File,
            max_age: options.dead_max_age,
            duplicate_window: options.duplicate_window,
            num_replicas: options.replicas,
            ..Default::default()
        },
    ]
}

/// The KV bucket configurations [`ensure_all_with`] creates.
pub fn bucket_configs(options: &SetupOptions) -> Vec<kv::Config> {
    let bucket = |name: &str, description: &str| kv::Config {
        bucket: name.into(),
        description: description.into(),
        history: 1,
        storage: StorageType::File,
        num_replicas: options.replicas,
        ..Default::default()
    };
    vec![
        kv::Config {
            history: options.rollout_history,
            ..bucket(names::BUCKET_ROLLOUTS, "Aviary rollout records (CAS only)")
        },
        bucket(names::BUCKET_ROUTES, "Aviary desired routes per ingress"),
        kv::Config {
            max_age: options.lease_max_age,
            ..bucket(names::BUCKET_LEASES, "Aviary rollout ownership leases")
        },
        bucket(names::BUCKET_GATES, "Aviary gate state"),
        bucket(names::BUCKET_AGENTS, "Aviary router-agent capabilities"),
    ]
}

/// [`ensure_all_with`] the default [`SetupOptions`].
///
/// # Errors
/// As [`ensure_all_with`].
pub async fn ensure_all(js: &jetstream::Context) -> Result<(), BusError> {
    ensure_all_with(js, &SetupOptions::default()).await
}

/// Creates every stream and bucket that does not exist yet, and checks the ones that do.
///
/// # Errors
/// [`BusError::Config`] when `options.replicas` is not in [`VALID_REPLICAS`];
/// [`BusError::Incompatible`] when one exists with another storage type or without our
/// subjects; [`BusError::Nats`] when JetStream is unavailable or refuses (with more replicas
/// than the cluster has servers, the reason says so).
pub async fn ensure_all_with(
    js: &jetstream::Context,
    options: &SetupOptions,
) -> Result<(), BusError> {
    if !VALID_REPLICAS.contains(&options.replicas) {
        return Err(BusError::Config(format!(
            "{} JetStream replicas asked for; use 1, 3 or 5",
            options.replicas
        )));
    }
    for config in stream_configs(options) {
        let required = config.subjects.clone();
        let storage = config.storage;
        let name = config.name.clone();
        if existing(js, &name).await?.is_none() {
            match js.create_stream(config).await {
                Ok(_) => continue,
                // Another replica created it between our look and our create.
                Err(e) if is_code(&e, ErrorCode::STREAM_NAME_EXIST) => {}
                Err(e) => {
                    return Err(BusError::nats(
                        "create stream",
                        name,
                        with_replica_hint(e, options.replicas),
                    ));
                }
            }
        }
        let info = existing(js, &name).await?.ok_or_else(|| {
            BusError::nats("get stream", name.clone(), "vanished while being created")
        })?;
        check(&name, &info, storage, &required)?;
        warn_if_fewer_replicas(&name, &info, options.replicas);
    }
    for config in bucket_configs(options) {
        let stream_name = format!("KV_{}", config.bucket);
        let storage = config.storage;
        if existing(js, &stream_name).await?.is_none() {
            match js.create_key_value(config).await {
                Ok(_) => continue,
                Err(e) => {
                    // Lost a race with another replica? Then the bucket is there now.
                    if existing(js, &stream_name).await?.is_none() {
                        return Err(BusError::nats(
                            "create bucket",
                            stream_name,
                            with_replica_hint(e, options.replicas),
                        ));
                    }
                }
            }
        }
        let info = existing(js, &stream_name).await?.ok_or_else(|| {
            BusError::nats(
                "get bucket",
                stream_name.clone(),
                "vanished while being created",
            )
        })?;
        check(&stream_name, &info, storage, &[])?;
        warn_if_fewer_replicas(&stream_name, &info, options.replicas);
    }
    Ok(())
}

async fn existing(js: &jetstream::Context, name: &str) -> Result<Option<stream::Config>, BusError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().config.clone())),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(err)
                if err.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(BusError::nats("get stream", name, e)),
        },
    }
}

fn is_code(error: &async_nats::jetstream::context::CreateStreamError, code: ErrorCode) -> bool {
    matches!(error.kind(), CreateStreamErrorKind::JetStream(err) if err.error_code() == code)
}

/// The server's refusal, plus what to do when it is a replica count the cluster cannot place.
fn with_replica_hint(error: impl std::fmt::Display, replicas: usize) -> String {
    if replicas > 1 {
        format!(
            "{error} (asked for {replicas} replicas: JetStream needs a cluster of at least \
             {replicas} servers with JetStream enabled; use --js-replicas 1 for a single server)"
        )
    } else {
        error.to_string()
    }
}

/// Existing state with fewer copies than asked for survives fewer server losses than the
/// operator expects; say so, and how to change it, but leave it (see the module docs).
fn warn_if_fewer_replicas(name: &str, existing: &stream::Config, replicas: usize) {
    if existing.num_replicas < replicas {
        tracing::warn!(
            stream = name,
            existing = existing.num_replicas,
            asked = replicas,
            "stream has fewer replicas than --js-replicas; kept as it is \
             (raise it with `nats stream edit {name} --replicas {replicas}`)"
        );
    }
}

fn check(
    name: &str,
    existing: &stream::Config,
    storage: StorageType,
    required_subjects: &[String],
) -> Result<(), BusError> {
    if existing.storage != storage {
        return Err(BusError::Incompatible {
            what: name.to_owned(),
            reason: format!("storage is {:?}, need {storage:?}", existing.storage),
        });
    }
    let missing: Vec<&String> = required_subjects
        .iter()
        .filter(|s| !existing.subjects.contains(s))
        .collect();
    if !missing.is_empty() {
        return Err(BusError::Incompatible {
            what: name.to_owned(),
            reason: format!(
                "subjects {:?} do not include {missing:?}",
                existing.subjects
            ),
        });
    }
    Ok(())
}
