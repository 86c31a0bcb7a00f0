//! The Aviary bus: everything a service needs to talk over NATS, in one place.
//!
//! - [`names`] — every subject, stream, KV bucket, consumer and queue group, and the key
//!   shapes, with token validation.
//! - [`connect`] — the `--nats-*` flags ([`NatsArgs`]) flattened into every service, and the
//!   connection they describe.
//! - [`setup`] — idempotent creation of the streams and buckets ([`setup::ensure_all`]), with
//!   the `--js-replicas` flag ([`JetStreamArgs`]).
//! - [`typed`] — protobuf publish / de-duplicated JetStream publish / request-reply, and
//!   subscribers and consumers that decode each message, skip and count malformed ones
//!   ([`BusMetrics`]), and open a span per message under the sender's trace.
//! - [`kv`] — typed KV buckets where every write is a compare-and-swap on the revision.
//! - [`permissions`] — one NATS identity per service with exactly its subjects, rendered as
//!   the nats-server configuration and the docs table.
//! - [`trace`] — W3C trace context in NATS headers.
//!
//! Flow of one message: `typed::publish` encodes the protobuf and injects the current span's
//! `traceparent` → NATS → `typed::Subscriber::next` decodes it (or counts and skips it) and
//! returns it with a span whose parent is the sender's.

pub mod connect;
mod error;
pub mod kv;
mod metrics;
pub mod names;
pub mod permissions;
pub mod setup;
pub mod trace;
pub mod typed;

pub use connect::{NatsArgs, Secret};
pub use error::{BusError, BusErrorKind};
pub use metrics::BusMetrics;
pub use setup::JetStreamArgs;
