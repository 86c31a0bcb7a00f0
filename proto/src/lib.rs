//! Aviary's contracts: every bus message and the gRPC control API, package `aviary.v1`.
//!
//! Generated from `proto/aviary/v1/*.proto` at build time. Types stay at the edges: services
//! convert them into `aviary-core` types with `TryFrom` that names the bad field.

/// Package `aviary.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("aviary.v1");

    /// Encoded file descriptor set of `aviary.v1`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("aviary_v1_descriptor");
}

pub mod bearer;
pub mod events;
pub mod naming;

pub use v1::*;

impl v1::RolloutRef {
    /// Builds a reference from a namespace and a name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl v1::WebhookCheck {
    /// One attempt's timeout, `None` when the spec gives none (`timeout_ms` 0).
    pub fn attempt_timeout(&self) -> Option<std::time::Duration> {
        (self.timeout_ms > 0).then(|| std::time::Duration::from_millis(self.timeout_ms))
    }
}

impl std::fmt::Display for v1::RolloutRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
