//! Streams and buckets: creation is idempotent, compatible existing ones are accepted,
//! incompatible ones are refused, and JetStream data survives a server restart.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use aviary_bus::kv::Bucket;
use aviary_bus::setup::{self, SetupOptions};
use aviary_bus::{BusErrorKind, names, typed};
use common::{DEADLINE, Ping, TestResult, nats, ping};
use serde::{Deserialize, Serialize};

#[tokio::test]
async fn ensure_all_twice_is_fine() -> TestResult {
    let (_server, _client, js) = nats().await?;
    setup::ensure_all(&js).await?;
    setup::ensure_all(&js).await?;

    let mut events = js.get_stream(names::STREAM_EVENTS).await?;
    let info = events.info().await?;
    assert_eq!(
        info.config.subjects,
        vec![names::EVENTS_SUBJECTS.to_owned()]
    );
    assert_eq!(info.config.storage, stream::StorageType::File);
    js.get_stream(names::STREAM_DEAD).await?;
    for bucket in [
        names::BUCKET_ROLLOUTS,
        names::BUCKET_ROUTES,
        names::BUCKET_LEASES,
        names::BUCKET_GATES,
        names::BUCKET_AGENTS,
    ] {
        js.get_key_value(bucket).await?;
    }
    let leases = js
        .get_stream(format!("KV_{}", names::BUCKET_LEASES))
        .await?;
    assert_eq!(
        leases.cached_info().config.max_age,
        SetupOptions::default().lease_max_age
    );
    Ok(())
}

#[tokio::test]
async fn replicas_racing_to_set_up_all_succeed() -> TestResult {
    let (server, _client, js) = nats().await?;
    let other = jetstream::new(server.client().await?);
    let (a, b) = tokio::join!(setup::ensure_all(&js), setup::ensure_all(&other));
    a?;
    b?;
    Ok(())
}

#[tokio::test]
async fn existing_streams_with_other_limits_are_kept() -> TestResult {
    let (_server, _client, js) = nats().await?;
    // An operator created the events stream with a shorter retention.
    let week = Duration::from_secs(7 * 24 * 3600);
    js.create_stream(stream::Config {
        name: names::STREAM_EVENTS.into(),
        subjects: vec![names::EVENTS_SUBJECTS.into()],
        storage: stream::StorageType::File,
        max_age: week,
        ..Default::default()
    })
    .await?;
    setup::ensure_all(&js).await?;
    let events = js.get_stream(names::STREAM_EVENTS).await?;
    assert_eq!(events.cached_info().config.max_age, week);
    Ok(())
}

#[tokio::test]
async fn an_incompatible_existing_stream_is_refused() -> TestResult {
    let (_server, _client, js) = nats().await?;
    js.create_stream(stream::Config {
        name: names::STREAM_EVENTS.into(),
        subjects: vec![names::EVENTS_SUBJECTS.into()],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await?;
    let err = setup::ensure_all(&js).await.expect_err("memory storage");
    assert_eq!(err.kind(), BusErrorKind::Incompatible);
    assert!(err.to_string().contains(names::STREAM_EVENTS), "{err}");
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    step: u32,
}

#[tokio::test]
async fn jetstream_data_survives_a_server_restart() -> TestResult {
    let (mut server, client, js) = nats().await?;
    setup::ensure_all(&js).await?;
    let subject = names::events_subject("test", "podinfo")?;
    let id = names::idempotency_key("test", "podinfo", 1, 1)?;
    let stored = typed::publish_dedup(&js, &subject, &id, &ping("before restart", 1)).await?;
    let rollouts: Bucket<Record> = Bucket::open(&js, names::BUCKET_ROLLOUTS).await?;
    let revision = rollouts.create("test.podinfo", &Record { step: 4 }).await?;

    server.restart().await?;

    // The old client reconnects by itself; poll until it has.
    let events = aviary_testkit::eventually(DEADLINE, "events stream readable", || {
        let js = js.clone();
        async move { js.get_stream(names::STREAM_EVENTS).await.ok() }
    })
    .await;
    let message = events.get_raw_message(stored.sequence).await?;
    let decoded: Ping = prost::Message::decode(message.payload)?;
    assert_eq!(decoded, ping("before restart", 1));

    let rollouts: Bucket<Record> = Bucket::open(&js, names::BUCKET_ROLLOUTS).await?;
    let entry = rollouts.get("test.podinfo").await?.ok_or("record lost")?;
    assert_eq!(
        (entry.value, entry.revision),
        (Record { step: 4 }, revision)
    );

    // Setup after a restart finds everything in place.
    setup::ensure_all(&js).await?;
    drop(client);
    Ok(())
}

#[tokio::test]
async fn the_events_stream_is_created_with_a_byte_limit() -> TestResult {
    let (_server, _client, js) = nats().await?;
    setup::ensure_all(&js).await?;
    let events = js.get_stream(names::STREAM_EVENTS).await?;
    let config = &events.cached_info().config;
    let defaults = SetupOptions::default();
    assert_eq!(config.max_bytes, 1 << 30);
    assert_eq!(config.max_bytes, defaults.events_max_bytes);
    assert_eq!(config.max_message_size, defaults.events_max_message_size);
    assert_eq!(config.max_age, defaults.events_max_age);
    Ok(())
}

#[tokio::test]
async fn the_events_byte_limit_is_configurable_and_an_existing_stream_keeps_its_own() -> TestResult
{
    let (_server, _client, js) = nats().await?;
    let options = SetupOptions {
        events_max_bytes: 64 << 20,
        events_max_message_size: 4096,
        ..SetupOptions::default()
    };
    setup::ensure_all_with(&js, &options).await?;
    let events = js.get_stream(names::STREAM_EVENTS).await?;
    assert_eq!(events.cached_info().config.max_bytes, 64 << 20);
    assert_eq!(events.cached_info().config.max_message_size, 4096);
    // Run again with the defaults: the stream exists, is compatible, and is left as it is.
    setup::ensure_all(&js).await?;
    let events = js.get_stream(names::STREAM_EVENTS).await?;
    assert_eq!(events.cached_info().config.max_bytes, 64 << 20);
    Ok(())
}
