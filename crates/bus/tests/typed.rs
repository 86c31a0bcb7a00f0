//! Typed messaging against a real nats-server: de-duplicated publish, distinct request
//! failures, malformed payloads skipped and counted.

mod common;

use std::time::Duration;

use aviary_bus::typed::{self, Subscriber};
use aviary_bus::{BusError, BusErrorKind, BusMetrics, names, setup};
use common::{DEADLINE, GARBAGE, NotPing, Ping, TestResult, nats, ping};
use prometheus_client::registry::Registry;

#[tokio::test]
async fn the_same_message_id_is_stored_once() -> TestResult {
    let (_server, _client, js) = nats().await?;
    setup::ensure_all(&js).await?;
    let subject = names::events_subject("test", "podinfo")?;
    let id = names::idempotency_key("test", "podinfo", 1, 3)?;

    let first = typed::publish_dedup(&js, &subject, &id, &ping("step 3", 3)).await?;
    let again = typed::publish_dedup(&js, &subject, &id, &ping("step 3", 3)).await?;
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(first.sequence, again.sequence);
    assert_eq!(first.stream, names::STREAM_EVENTS);

    let next_id = names::idempotency_key("test", "podinfo", 1, 4)?;
    let next = typed::publish_dedup(&js, &subject, &next_id, &ping("step 4", 4)).await?;
    assert!(!next.duplicate);

    let mut stream = js.get_stream(names::STREAM_EVENTS).await?;
    assert_eq!(stream.info().await?.state.messages, 2);
    let stored = stream.get_raw_message(first.sequence).await?;
    assert_eq!(
        stored.headers.get(typed::MSG_ID).map(|v| v.as_str()),
        Some("test.podinfo/1/3")
    );
    Ok(())
}

#[tokio::test]
async fn timeout_and_no_responders_are_distinct() -> TestResult {
    let (_server, client, _js) = nats().await?;

    // Nobody listens: NATS says so at once.
    let err = typed::request::<Ping, Ping>(&client, "aviary.test.nobody", &ping("hi", 1), DEADLINE)
        .await
        .expect_err("no responders");
    assert_eq!(
        err,
        BusError::NoResponders {
            subject: "aviary.test.nobody".into()
        }
    );

    // Someone listens but never answers.
    let _silent = client.subscribe("aviary.test.silent").await?;
    typed::sync(&client).await?;
    let err = typed::request::<Ping, Ping>(
        &client,
        "aviary.test.silent",
        &ping("hi", 1),
        Duration::from_millis(200),
    )
    .await
    .expect_err("timeout");
    assert_eq!(err.kind(), BusErrorKind::Timeout);
    assert!(err.is_transient());
    Ok(())
}

#[tokio::test]
async fn request_reply_round_trip_through_a_queue_group() -> TestResult {
    let (server, client, _js) = nats().await?;
    let metrics = BusMetrics::unregistered();
    let responder_client = server.client().await?;
    let mut requests: Subscriber<Ping> = Subscriber::queue_subscribe(
        &responder_client,
        names::ANALYSIS_REQUEST,
        names::QUEUE_ANALYZER,
        metrics.clone(),
    )
    .await?;
    typed::sync(&responder_client).await?;
    let responder = tokio::spawn(async move {
        while let Some(req) = requests.next().await {
            let answer = ping(&format!("re: {}", req.message.text), req.message.n + 1);
            req.respond(&responder_client, &answer).await?;
        }
        Ok::<_, BusError>(())
    });

    let reply: Ping = typed::request(
        &client,
        names::ANALYSIS_REQUEST,
        &ping("verdict?", 41),
        DEADLINE,
    )
    .await?;
    assert_eq!(reply, ping("re: verdict?", 42));

    // A request that does not decode is answered with an error, not dropped.
    let err = typed::request::<NotPing, Ping>(
        &client,
        names::ANALYSIS_REQUEST,
        &NotPing { text: 5 },
        DEADLINE,
    )
    .await
    .expect_err("malformed request");
    assert!(
        matches!(&err, BusError::Remote { code: 400, description, .. } if description.starts_with("malformed request")),
        "{err:?}"
    );
    assert_eq!(metrics.malformed(names::ANALYSIS_REQUEST), 1);
    responder.abort();
    Ok(())
}

#[tokio::test]
async fn malformed_payloads_are_skipped_and_counted() -> TestResult {
    let (_server, client, _js) = nats().await?;
    let mut registry = Registry::with_prefix("aviary");
    let metrics = BusMetrics::register(&mut registry);
    let subject = names::route_subject("edge")?;
    let mut sub: Subscriber<Ping> =
        Subscriber::subscribe(&client, &subject, metrics.clone()).await?;
    typed::sync(&client).await?;

    client.publish(subject.clone(), GARBAGE.into()).await?;
    typed::publish(&client, &subject, &ping("valid", 7)).await?;

    let got = tokio::time::timeout(DEADLINE, sub.next())
        .await?
        .ok_or("subscription ended")?;
    assert_eq!(got.message, ping("valid", 7));
    assert_eq!(got.subject, subject);
    assert_eq!(metrics.malformed(&subject), 1);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    assert!(
        text.contains("aviary_bus_malformed_messages_total{subject=\"aviary.route.edge\"} 1"),
        "{text}"
    );
    Ok(())
}
