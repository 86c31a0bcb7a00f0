//! The durable pull consumer of `AVIARY_EVENTS`: decode each event, decide whether and where
//! it is posted, hand one job per provider to the provider workers, and acknowledge the event
//! only when every job settled (delivered, already delivered, or dead-lettered). Unsettled
//! (shutdown, NATS trouble) → negative ack, so it comes back. Every event is also posted to
//! each of its rollout's `event` webhooks (`data.eventWebhooks`), whatever its severity, as
//! Flagger calls them for every event.
//!
//! ```text
//! AVIARY_EVENTS ─► decode ─► posted? ─► route ─► Job per provider ─► … ─► all settled ─► ack
//!                    │ bad: log + count + ack      │ + post per event webhook ─┘
//!                    │                             │ neither: ack
//! ```

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use async_nats::jetstream::consumer::{PullConsumer, pull};
use async_nats::jetstream::message::{AckKind, Acker};
use aviary_proto::events::AuditEvent;
use aviary_runtime::tasks::Tasks;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::delivery::{self, HookEvent, Job, Outcome, Shared};
use crate::metrics::Metrics;
use crate::notification::{Notification, posted};
use crate::settings::{EventWebhooks, Settings};

/// What the loop needs besides the consumer.
pub(crate) struct Pipeline {
    pub settings: Arc<Settings>,
    pub queues: Vec<mpsc::Sender<Job>>,
    pub metrics: Metrics,
    pub cluster: String,
    pub ack_wait: Duration,
    pub batch: usize,
    pub abandon: CancellationToken,
    /// What the `event` webhook posts share with the provider workers.
    pub shared: Arc<Shared>,
    /// How `event` webhooks are called.
    pub event_webhooks: Arc<EventWebhooks>,
}

/// How long an event that could not be settled waits before it is redelivered: long enough
/// not to spin on a NATS hiccup, short enough that nothing waits long after a restart.
const NAK_DELAY: Duration = Duration::from_secs(1);

/// Reads events until `tasks` stop, then stops fetching; each event settles in a task of its
/// own among `tasks`, which the caller drains.
pub(crate) async fn consume(consumer: PullConsumer, pipeline: Pipeline, tasks: Tasks) {
    let shutdown = tasks.token();
    let mut backoff = Duration::from_millis(100);
    'outer: while !shutdown.is_cancelled() {
        let stream = consumer
            .stream()
            .max_messages_per_batch(pipeline.batch)
            .messages()
            .await;
        let mut messages = match stream {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%error, ?backoff, "cannot pull events; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break 'outer,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    hand_back(&mut messages, pipeline.batch).await;
                    break 'outer;
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    // Each event's posts join the trace of the decision that emitted it (the
                    // scheduler puts `traceparent` in the stream message's headers).
                    let span = tracing::info_span!(
                        "notify",
                        otel.kind = "consumer",
                        messaging.destination.name = %message.subject,
                    );
                    aviary_bus::trace::set_parent_from(&span, message.headers.as_ref());
                    if let Some(task) = dispatch(message, &pipeline).instrument(span.clone()).await
                    {
                        tasks.spawn("settle event", task.instrument(span));
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "pulling events failed");
                }
                None => {
                    tracing::warn!("event stream ended; pulling again");
                    continue 'outer;
                }
            }
        }
    }
}

/// Negatively acknowledges what was already pulled but not dispatched, so another notifier
/// (or the next one) gets it at once instead of after the ack wait.
async fn hand_back(messages: &mut pull::Stream, limit: usize) {
    for _ in 0..limit {
        match tokio::time::timeout(Duration::from_millis(20), messages.next()).await {
            Ok(Some(Ok(message))) => {
                let _ = message.ack_with(AckKind::Nak(None)).await;
            }
            _ => break,
        }
    }
}

/// Keeps an event that cannot be read in `aviary.dead.<its subject>` (stream `AVIARY_DEAD`),
/// headers and payload as received plus [`DEAD_REASON`](aviary_bus::typed::DEAD_REASON);
/// whether the stream stored it.
async fn dead_letter(p: &Pipeline, message: &async_nats::Message, reason: &str) -> bool {
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert(
        aviary_bus::typed::DEAD_REASON,
        reason.replace(['\r', '\n'], " "),
    );
    let dead = aviary_bus::names::dead_letter_subject(&message.subject);
    let stored = match p
        .shared
        .js
        .publish_with_headers(dead.clone(), headers, message.payload.clone())
        .await
    {
        Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match stored {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(subject = %message.subject, dead_letter = %dead, %error, "could not dead-letter an event; it is redelivered");
            false
        }
    }
}

/// Decodes and routes one message; returns the task that waits for its jobs and acks it.
async fn dispatch(
    message: async_nats::jetstream::Message,
    p: &Pipeline,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let (message, acker) = message.split();
    let subject = message.subject.to_string();
    let event: AuditEvent = match serde_json::from_slice(&message.payload) {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(%subject, %error, "dead-lettering an event that does not decode");
            p.metrics.invalid("json");
            // Kept, not lost: acked only once it is in the dead-letter stream (else redelivered).
            if dead_letter(p, &message, &format!("undecodable event: {error}")).await {
                ack(&acker, &subject).await;
            }
            return None;
        }
    };
    let Some(kind) = event.kind() else {
        tracing::warn!(%subject, id = %event.id, ty = %event.ty, "skipping an event of unknown type");
        p.metrics.invalid("unknown_type");
        ack(&acker, &subject).await;
        return None;
    };
    let d = &event.data;
    let targets = posted(kind, d, p.settings.notify_step_advanced)
        .map(|severity| {
            let rollout = format!("{}/{}", d.namespace, d.name);
            (
                severity,
                p.settings.targets_for(kind, &rollout, severity, &d.alerts),
            )
        })
        .filter(|(_, targets)| !targets.is_empty());
    let hooks = &d.event_webhooks;
    let (severity, targets) = targets.unwrap_or_default();
    if targets.is_empty() && hooks.is_empty() {
        tracing::debug!(%subject, id = %event.id, ?kind, "not posted");
        p.metrics.event("ignored");
        ack(&acker, &subject).await;
        return None;
    }
    p.metrics.event("notified");
    let mut waits = Vec::with_capacity(targets.len() + hooks.len());
    if !targets.is_empty() {
        let notification = Arc::new(Notification::new(&event, kind, severity, &p.cluster));
        for target in targets {
            let (done, wait) = oneshot::channel();
            let job = Job {
                notification: notification.clone(),
                raw: message.payload.clone(),
                subject: subject.clone(),
                done,
            };
            let Some(queue) = p.queues.get(target) else {
                continue;
            };
            // A full queue holds the consumer here: back-pressure instead of unbounded memory.
            let sent = tokio::select! {
                biased;
                () = p.abandon.cancelled() => false,
                sent = queue.send(job) => sent.is_ok(),
            };
            if !sent {
                let _ = acker.ack_with(AckKind::Nak(Some(NAK_DELAY))).await;
                return None;
            }
            waits.push(wait);
        }
    }
    if !hooks.is_empty() {
        // Bounded by the consumer's max ack pending: at most that many events are in flight.
        let hook_event = Arc::new(HookEvent {
            event: event.clone(),
            kind,
            raw: message.payload.clone(),
            subject: subject.clone(),
        });
        for hook in hooks {
            waits.push(delivery::spawn_event_hook(
                hook.clone(),
                hook_event.clone(),
                p.event_webhooks.clone(),
                p.shared.clone(),
            ));
        }
    }
    let ack_wait = p.ack_wait;
    let id = event.id.clone();
    Some(async move { settle(acker, waits, ack_wait, subject, id).await })
}

async fn ack(acker: &Acker, subject: &str) {
    if let Err(error) = acker.ack().await {
        tracing::warn!(%subject, %error, "ack failed; the event will be redelivered");
    }
}

/// Waits for every job of one event, telling JetStream the event is still being worked on
/// meanwhile (retries can outlast the ack wait), then acks — or naks if any job is unsettled.
async fn settle(
    acker: Acker,
    waits: Vec<oneshot::Receiver<Outcome>>,
    ack_wait: Duration,
    subject: String,
    id: String,
) {
    let all = futures::future::join_all(waits);
    tokio::pin!(all);
    let mut progress = tokio::time::interval(ack_wait / 3);
    progress.tick().await;
    let outcomes = loop {
        tokio::select! {
            outcomes = &mut all => break outcomes,
            _ = progress.tick() => {
                let _ = acker.ack_with(AckKind::Progress).await;
            }
        }
    };
    let settled = outcomes.iter().all(|o| {
        matches!(
            o,
            Ok(Outcome::Delivered | Outcome::Duplicate | Outcome::DeadLettered)
        )
    });
    if settled {
        ack(&acker, &subject).await;
    } else {
        tracing::info!(%subject, %id, "event not settled; handing it back for redelivery");
        let _ = acker.ack_with(AckKind::Nak(Some(NAK_DELAY))).await;
    }
}
