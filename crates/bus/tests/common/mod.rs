//! Shared fixtures for the bus tests: a real nats-server and small protobuf messages.

#![allow(dead_code)]

use std::time::Duration;

use async_nats::{Client, jetstream};
use aviary_testkit::NatsServer;

/// Generous for a busy two-core machine; tests poll, so they finish as soon as they can.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A test message, standing in for the generated `aviary.v1` types.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Ping {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint64, tag = "2")]
    pub n: u64,
}

/// Encodes field 1 as a varint, where [`Ping`] has a string: never decodes as a `Ping`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct NotPing {
    #[prost(uint64, tag = "1")]
    pub text: u64,
}

pub(crate) fn ping(text: &str, n: u64) -> Ping {
    Ping {
        text: text.to_owned(),
        n,
    }
}

/// Bytes that are not a protobuf message at all (wire type 7 does not exist).
pub(crate) const GARBAGE: &[u8] = &[0x0f, 0xff, 0xff];

pub(crate) async fn nats()
-> Result<(NatsServer, Client, jetstream::Context), aviary_testkit::TestkitError> {
    let server = NatsServer::start().await?;
    let client = server.client().await?;
    let js = jetstream::new(client.clone());
    Ok((server, client, js))
}
