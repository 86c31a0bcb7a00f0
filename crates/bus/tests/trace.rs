//! Trace context crosses the bus: two tracer providers stand for two services; the span the
//! receiver records belongs to the sender's trace, with the sender's span as parent.

mod common;

use std::time::Duration;

use aviary_bus::typed::{self, Subscriber};
use aviary_bus::{BusMetrics, names};
use aviary_testkit::eventually;
use common::{DEADLINE, Ping, TestResult, nats, ping};
use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::instrument::WithSubscriber;
use tracing::{Dispatch, Instrument};
use tracing_subscriber::layer::SubscriberExt;

/// One "service": its own tracer provider exporting to memory, and a `tracing` dispatcher.
struct Service {
    exporter: InMemorySpanExporter,
    _provider: SdkTracerProvider,
    dispatch: Dispatch,
}

fn service(name: &'static str) -> Service {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer(name)));
    Service {
        exporter,
        _provider: provider,
        dispatch: Dispatch::new(subscriber),
    }
}

fn finished(exporter: &InMemorySpanExporter, name: &str) -> Option<SpanData> {
    exporter
        .get_finished_spans()
        .ok()?
        .into_iter()
        .find(|s| s.name == name)
}

#[tokio::test]
async fn the_receiver_span_continues_the_sender_trace() -> TestResult {
    let (server, sender_client, _js) = nats().await?;
    let receiver_client = server.client().await?;
    let scheduler = service("scheduler");
    let agent = service("router-agent");
    let subject = names::route_subject("edge")?;

    let mut sub: Subscriber<Ping> =
        Subscriber::subscribe(&receiver_client, &subject, BusMetrics::unregistered()).await?;
    typed::sync(&receiver_client).await?;

    let receiver = tokio::spawn(
        async move {
            let got = tokio::time::timeout(DEADLINE, sub.next()).await.ok()??;
            // The handler's work happens inside the message span, then the span closes.
            async { tracing::info_span!("apply_route").in_scope(|| ()) }
                .instrument(got.span.clone())
                .await;
            Some(got.message)
        }
        .with_subscriber(agent.dispatch.clone()),
    );

    let publish_subject = subject.clone();
    let client = sender_client.clone();
    async move {
        typed::publish(&client, &publish_subject, &ping("set weight 20", 20))
            .instrument(tracing::info_span!("send_route"))
            .await
    }
    .with_subscriber(scheduler.dispatch.clone())
    .await?;

    let received = receiver.await?.ok_or("nothing received")?;
    assert_eq!(received, ping("set weight 20", 20));

    let sent = eventually(DEADLINE, "sender span exported", || async {
        finished(&scheduler.exporter, "send_route")
    })
    .await;
    let receive = eventually(DEADLINE, "receiver span exported", || async {
        finished(&agent.exporter, "bus.receive")
    })
    .await;
    assert_ne!(
        sent.span_context.trace_id(),
        opentelemetry::trace::TraceId::INVALID
    );
    assert_eq!(
        receive.span_context.trace_id(),
        sent.span_context.trace_id()
    );
    assert_eq!(receive.parent_span_id, sent.span_context.span_id());
    assert!(receive.parent_span_is_remote);

    // The handler's own span nests under the message span, in the same trace.
    let apply = eventually(DEADLINE, "handler span exported", || async {
        finished(&agent.exporter, "apply_route")
    })
    .await;
    assert_eq!(apply.span_context.trace_id(), sent.span_context.trace_id());
    assert_eq!(apply.parent_span_id, receive.span_context.span_id());
    Ok(())
}

#[tokio::test]
async fn request_and_reply_carry_the_trace_both_ways() -> TestResult {
    let (server, client, _js) = nats().await?;
    let responder_client = server.client().await?;
    let scheduler = service("scheduler");
    let analyzer = service("analyzer");

    let mut sub: Subscriber<Ping> = Subscriber::queue_subscribe(
        &responder_client,
        names::ANALYSIS_REQUEST,
        names::QUEUE_ANALYZER,
        BusMetrics::unregistered(),
    )
    .await?;
    typed::sync(&responder_client).await?;
    let responder = tokio::spawn(
        async move {
            let req = sub.next().await?;
            req.respond(&responder_client, &ping("pass", req.message.n))
                .await
                .ok()?;
            // Publishing only queues the reply; it must leave before the client is dropped.
            typed::sync(&responder_client).await.ok()
        }
        .with_subscriber(analyzer.dispatch.clone()),
    );

    let reply: Ping = async {
        typed::request(
            &client,
            names::ANALYSIS_REQUEST,
            &ping("analyse", 3),
            DEADLINE,
        )
        .instrument(tracing::info_span!("request_analysis"))
        .await
    }
    .with_subscriber(scheduler.dispatch.clone())
    .await?;
    assert_eq!(reply, ping("pass", 3));
    responder.await?.ok_or("responder failed")?;

    let sent = eventually(DEADLINE, "request span", || async {
        finished(&scheduler.exporter, "request_analysis")
    })
    .await;
    let handled = eventually(DEADLINE, "analyzer span", || async {
        finished(&analyzer.exporter, "bus.receive")
    })
    .await;
    assert_eq!(
        handled.span_context.trace_id(),
        sent.span_context.trace_id()
    );
    assert_eq!(handled.parent_span_id, sent.span_context.span_id());
    Ok(())
}

#[tokio::test]
async fn without_a_tracer_messages_still_flow_as_new_roots() -> TestResult {
    let (_server, client, _js) = nats().await?;
    let agent = service("router-agent");
    let mut sub: Subscriber<Ping> =
        Subscriber::subscribe(&client, "aviary.test.untraced", BusMetrics::unregistered()).await?;
    typed::sync(&client).await?;
    // Published with no tracing subscriber at all: no traceparent header.
    typed::publish(&client, "aviary.test.untraced", &ping("x", 1)).await?;
    let got = async { tokio::time::timeout(Duration::from_secs(10), sub.next()).await }
        .with_subscriber(agent.dispatch.clone())
        .await?
        .ok_or("ended")?;
    assert!(got.headers.get("traceparent").is_none());
    drop(got);
    let receive = eventually(DEADLINE, "receiver span", || async {
        finished(&agent.exporter, "bus.receive")
    })
    .await;
    assert_eq!(receive.parent_span_id, SpanId::INVALID);
    Ok(())
}
