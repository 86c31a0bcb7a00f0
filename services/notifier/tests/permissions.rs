//! The notifier under its own NATS identity (`aviary_bus::permissions`) on a permissioned
//! nats-server: it sets up its streams and buckets, consumes the audit stream, posts,
//! dead-letters a post it gives up on, skips what does not decode, and the server refuses
//! nothing it does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use async_nats::jetstream;
use aviary_bus::{names, permissions};
use aviary_proto::events::EventKind;
use aviary_testkit::{NatsServer, eventually};

use common::*;

fn password(user: &str) -> String {
    format!("pw-{user}")
}

/// A JetStream context of `user`, connected as its service connects (its inbox prefix).
async fn js_as(server: &NatsServer, user: &str) -> jetstream::Context {
    let identity = permissions::identity(user).unwrap();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
        .custom_inbox_prefix(identity.inbox_prefix)
        .connect(server.url())
        .await
        .unwrap();
    jetstream::new(client)
}

#[tokio::test]
async fn the_notifier_posts_and_dead_letters_under_its_own_identity() {
    let config = permissions::nats_authorization(|user| format!("\"{}\"", password(user)));
    let nats = NatsServer::start_with_config(&config).await.unwrap();
    let rx = Receiver::start().await;
    rx.set("/gone", Mode::Status(404));
    let yaml = format!(
        r#"
retry: {{ initialBackoff: 50ms, maxBackoff: 100ms, maxAttempts: 2, maxElapsed: 60s }}
providers:
  - {{ name: hook, type: webhook, url: "{}" }}
  - {{ name: gone, type: webhook, url: "{}" }}
rollouts:
  test/podinfo:
    - {{ provider: hook }}
    - {{ provider: gone }}
"#,
        rx.url("/hook"),
        rx.url("/gone"),
    );
    let notifier_password = password("notifier");
    let mut notifier = Notifier::start_with(
        &nats,
        &yaml,
        &[
            "--nats-user",
            "notifier",
            "--nats-password",
            &notifier_password,
        ],
    )
    .await;

    // The scheduler writes the audit stream; the notifier only reads it.
    let scheduler = js_as(&nats, "scheduler").await;
    publish(&scheduler, &event(EventKind::Started, "podinfo", 1)).await;
    publish_raw(
        &scheduler,
        "aviary.events.test.podinfo",
        "garbage-1",
        b"not json {".to_vec(),
    )
    .await;
    eventually(DEADLINE, "the event posted", || async {
        (!rx.delivered("/hook").is_empty()).then_some(())
    })
    .await;
    let operator = js_as(&nats, "cli-operator").await;
    // The post the provider refuses is given up and dead-lettered, and so is the garbage.
    eventually(
        DEADLINE,
        "the refused post and the garbage dead-lettered",
        || async {
            let mut dead = operator.get_stream(names::STREAM_DEAD).await.ok()?;
            (dead.info().await.ok()?.state.messages == 2).then_some(())
        },
    )
    .await;
    all_acked(&operator).await;
    assert_eq!(notifier.metrics().invalid_events("json"), 1);
    notifier.stop().await;

    let log = nats.log();
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(violations.is_empty(), "refused: {violations:#?}");
}
