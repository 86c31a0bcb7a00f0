//! Typed messaging: protobuf payloads in, protobuf payloads out, with trace context in the
//! headers and malformed input counted and skipped rather than fatal.
//!
//! - [`publish`] (core NATS, fire-and-forget), [`publish_dedup`] / [`publish_dedup_json`]
//!   (JetStream, de-duplicated by `Nats-Msg-Id`), [`request`] (request/reply with distinct
//!   timeout / no-responders / remote-error results).
//! - [`Subscriber`] decodes each core-NATS message; [`Received::respond`] answers a request.
//!
//! Each received message comes with a span (`bus.receive`) whose parent is the sender's span.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{Client, HeaderMap, RequestErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::{BusError, BusMetrics, trace};

/// Header naming why a responder could not answer (the NATS micro-services convention).
pub const SERVICE_ERROR: &str = "Nats-Service-Error";
/// Header with a numeric, HTTP-like code for [`SERVICE_ERROR`].
pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";
/// Header on a dead letter saying why it was dead-lettered.
pub const DEAD_REASON: &str = "Aviary-Dead-Reason";
/// The `Nats-Msg-Id` header JetStream de-duplicates on.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// How a payload is encoded. Bus messages are protobuf ([`Proto`]); audit events and KV
/// records are JSON ([`Json`]).
pub trait Codec<T> {
    /// Encodes `value`.
    ///
    /// # Errors
    /// A description of why it could not be encoded.
    fn encode(value: &T) -> Result<Bytes, String>;
    /// Decodes a payload.
    ///
    /// # Errors
    /// A description of why it did not decode.
    fn decode(bytes: &[u8]) -> Result<T, String>;
}

/// Protobuf encoding of any `prost::Message`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Proto;

impl<M: prost::Message + Default> Codec<M> for Proto {
    fn encode(value: &M) -> Result<Bytes, String> {
        Ok(Bytes::from(value.encode_to_vec()))
    }
    fn decode(bytes: &[u8]) -> Result<M, String> {
        M::decode(bytes).map_err(|e| e.to_string())
    }
}

/// JSON encoding of any serde type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<T: Serialize + DeserializeOwned> Codec<T> for Json {
    fn encode(value: &T) -> Result<Bytes, String> {
        // Most of what goes through here (records, verdicts) is a kilobyte or more: start there
        // rather than doubling up from a few bytes.
        let mut out = Vec::with_capacity(1024);
        serde_json::to_writer(&mut out, value)
            .map(|()| Bytes::from(out))
            .map_err(|e| e.to_string())
    }
    fn decode(bytes: &[u8]) -> Result<T, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

fn encode<C: Codec<T>, T>(subject: &str, value: &T) -> Result<Bytes, BusError> {
    C::encode(value).map_err(|reason| BusError::Encode {
        subject: subject.to_owned(),
        reason,
    })
}

fn traced_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    trace::inject_current(&mut headers);
    headers
}

/// Publishes `msg` on `subject` (core NATS: at most once, no ack), with the current span's
/// trace context.
///
/// # Errors
/// [`BusError::Encode`]; [`BusError::Nats`] when the client cannot queue it.
pub async fn publish<M: prost::Message + Default>(
    client: &Client,
    subject: &str,
    msg: &M,
) -> Result<(), BusError> {
    let payload = encode::<Proto, M>(subject, msg)?;
    client
        .publish_with_headers(subject.to_owned(), traced_headers(), payload)
        .await
        .map_err(|e| BusError::nats("publish", subject, e))
}

/// How long [`sync`] waits for its own message to come back.
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until the server has processed everything this client sent before, subscriptions
/// included: after it, messages published by *other* connections reach those subscriptions.
/// (`Client::flush` only writes to the socket; it does not wait for the server.) Call it
/// after subscribing and before announcing readiness.
///
/// # Errors
/// [`BusError::Timeout`] when the round trip takes longer than 5 s; [`BusError::Nats`].
pub async fn sync(client: &Client) -> Result<(), BusError> {
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| BusError::nats("subscribe", inbox.clone(), e))?;
    client
        .publish(inbox.clone(), Bytes::new())
        .await
        .map_err(|e| BusError::nats("publish", inbox.clone(), e))?;
    // The server handles one connection's commands in order: our echo coming back means every
    // earlier SUB is in place.
    match tokio::time::timeout(SYNC_TIMEOUT, echo.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(BusError::nats("sync", inbox, "connection closed")),
        Err(_) => Err(BusError::Timeout { subject: inbox }),
    }
}

/// Where a JetStream publish was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in the stream (for a duplicate: the original's).
    pub sequence: u64,
    /// Whether JetStream recognised the message id and dropped this copy.
    pub duplicate: bool,
}

/// Publishes `msg` to the JetStream stream bound to `subject` with `Nats-Msg-Id: msg_id`
/// (see [`names::idempotency_key`](crate::names::idempotency_key)), and waits for the stream's ack. A second publish with the
/// same id within the stream's duplicate window is acked with `duplicate: true` and not
/// stored again, so retrying is always safe.
///
/// # Errors
/// [`BusError::Encode`]; [`BusError::Timeout`] when the ack does not come (retry with the same
/// id); [`BusError::Nats`] when no stream takes the subject or JetStream refuses.
pub async fn publish_dedup<M: prost::Message + Default>(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    msg: &M,
) -> Result<Published, BusError> {
    let payload = encode::<Proto, M>(subject, msg)?;
    publish_dedup_bytes(js, subject, msg_id, payload).await
}

/// [`publish_dedup`] for a serde value encoded as JSON (audit events are CloudEvents JSON).
///
/// # Errors
/// As [`publish_dedup`].
pub async fn publish_dedup_json<T: Serialize>(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    value: &T,
) -> Result<Published, BusError> {
    let payload = serde_json::to_vec(value).map_err(|e| BusError::Encode {
        subject: subject.to_owned(),
        reason: e.to_string(),
    })?;
    publish_dedup_bytes(js, subject, msg_id, payload.into()).await
}

/// [`publish_dedup`] for an already encoded payload.
///
/// # Errors
/// As [`publish_dedup`].
pub async fn publish_dedup_bytes(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    payload: Bytes,
) -> Result<Published, BusError> {
    use async_nats::jetstream::context::PublishErrorKind;
    use async_nats::jetstream::message::PublishMessage;
    let publish = PublishMessage::build()
        .headers(traced_headers())
        .message_id(msg_id)
        .payload(payload);
    let map = |e: async_nats::jetstream::context::PublishError| match e.kind() {
        PublishErrorKind::TimedOut => BusError::Timeout {
            subject: subject.to_owned(),
        },
        _ => BusError::nats("publish", subject, e),
    };
    let ack = js
        .send_publish(subject.to_owned(), publish)
        .await
        .map_err(map)?
        .await
        .map_err(map)?;
    Ok(Published {
        stream: ack.stream,
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// Sends `req` on `subject` and waits up to `timeout` for one reply, decoded as `Resp`. The
/// current span's trace context travels with the request.
///
/// # Errors
/// - [`BusError::NoResponders`]: nobody subscribes to `subject` (known at once).
/// - [`BusError::Timeout`]: someone subscribes but no reply came within `timeout`.
/// - [`BusError::Remote`]: the responder answered with an error (e.g. 400 for a request it
///   could not decode).
/// - [`BusError::Decode`]: the reply did not decode.
/// - [`BusError::Encode`], [`BusError::Nats`].
pub async fn request<Req, Resp>(
    client: &Client,
    subject: &str,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, BusError>
where
    Req: prost::Message + Default,
    Resp: prost::Message + Default,
{
    let payload = encode::<Proto, Req>(subject, req)?;
    let request = async_nats::Request::new()
        .payload(payload)
        .headers(traced_headers())
        .timeout(Some(timeout));
    let reply = client
        .send_request(subject.to_owned(), request)
        .await
        .map_err(|e| match e.kind() {
            RequestErrorKind::TimedOut => BusError::Timeout {
                subject: subject.to_owned(),
            },
            RequestErrorKind::NoResponders => BusError::NoResponders {
                subject: subject.to_owned(),
            },
            _ => BusError::nats("request", subject, e),
        })?;
    if let Some(headers) = &reply.headers
        && let Some(description) = headers.get(SERVICE_ERROR)
    {
        let code = headers
            .get(SERVICE_ERROR_CODE)
            .and_then(|c| c.as_str().parse().ok())
            .unwrap_or(500);
        return Err(BusError::Remote {
            subject: subject.to_owned(),
            code,
            description: description.as_str().to_owned(),
        });
    }
    Resp::decode(reply.payload).map_err(|e| BusError::Decode {
        subject: subject.to_owned(),
        reason: e.to_string(),
    })
}

/// A decoded message from a [`Subscriber`].
#[derive(Debug)]
pub struct Received<M> {
    /// The decoded payload.
    pub message: M,
    /// The concrete subject it arrived on.
    pub subject: String,
    /// Where to reply, for a request.
    pub reply: Option<String>,
    /// Its headers (trace context included).
    pub headers: HeaderMap,
    /// A `bus.receive` span, child of the sender's span: enter it (or `.instrument` the
    /// handling) so the work joins the sender's trace.
    pub span: tracing::Span,
}

impl<M> Received<M> {
    /// Answers the request with `resp`, carrying this message's span context.
    ///
    /// # Errors
    /// [`BusError::Nats`] when there is no reply subject or publishing fails;
    /// [`BusError::Encode`].
    pub async fn respond<R: prost::Message + Default>(
        &self,
        client: &Client,
        resp: &R,
    ) -> Result<(), BusError> {
        let reply = self.reply_subject()?;
        let payload = encode::<Proto, R>(reply, resp)?;
        let mut headers = HeaderMap::new();
        trace::inject_span(&self.span, &mut headers);
        client
            .publish_with_headers(reply.to_owned(), headers, payload)
            .await
            .map_err(|e| BusError::nats("respond", reply, e))
    }

    /// Answers the request with an error instead of a reply; the requester's
    /// [`request`] returns [`BusError::Remote`] with `code` and `description`.
    ///
    /// # Errors
    /// As [`Received::respond`].
    pub async fn respond_error(
        &self,
        client: &Client,
        code: u16,
        description: &str,
    ) -> Result<(), BusError> {
        let reply = self.reply_subject()?;
        respond_error(client, reply, &self.span, code, description).await
    }

    fn reply_subject(&self) -> Result<&str, BusError> {
        self.reply.as_deref().ok_or_else(|| {
            BusError::nats(
                "respond",
                self.subject.clone(),
                "message has no reply subject",
            )
        })
    }
}

async fn respond_error(
    client: &Client,
    reply: &str,
    span: &tracing::Span,
    code: u16,
    description: &str,
) -> Result<(), BusError> {
    let mut headers = HeaderMap::new();
    trace::inject_span(span, &mut headers);
    headers.insert(SERVICE_ERROR, description);
    headers.insert(SERVICE_ERROR_CODE, code.to_string());
    client
        .publish_with_headers(reply.to_owned(), headers, Bytes::new())
        .await
        .map_err(|e| BusError::nats("respond", reply, e))
}

fn receive_span(subject: &str, headers: Option<&HeaderMap>) -> tracing::Span {
    let span = tracing::info_span!(
        "bus.receive",
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.destination.name = %subject,
    );
    trace::set_parent_from(&span, headers);
    span
}

/// A core-NATS subscription that yields decoded messages and skips malformed ones.
///
/// A message that does not decode is logged (`warn!` with its subject), counted in
/// `aviary_bus_malformed_messages_total{subject=<subscription subject>}`, answered with a
/// 400 error if it was a request, and skipped.
#[derive(Debug)]
pub struct Subscriber<M, C = Proto> {
    inner: async_nats::Subscriber,
    client: Client,
    label: String,
    metrics: Arc<BusMetrics>,
    _decode: PhantomData<fn() -> (M, C)>,
}

impl<M, C: Codec<M>> Subscriber<M, C> {
    /// Subscribes to `subject` (wildcards allowed).
    ///
    /// # Errors
    /// [`BusError::Nats`] when the subscription cannot be made.
    pub async fn subscribe(
        client: &Client,
        subject: &str,
        metrics: Arc<BusMetrics>,
    ) -> Result<Self, BusError> {
        let inner = client
            .subscribe(subject.to_owned())
            .await
            .map_err(|e| BusError::nats("subscribe", subject, e))?;
        Ok(Self::new(client, inner, subject, metrics))
    }

    /// Subscribes to `subject` in queue group `queue` (each message goes to one member), e.g.
    /// [`names::ANALYSIS_REQUEST`](crate::names::ANALYSIS_REQUEST) in [`names::QUEUE_ANALYZER`](crate::names::QUEUE_ANALYZER).
    ///
    /// # Errors
    /// [`BusError::Nats`] when the subscription cannot be made.
    pub async fn queue_subscribe(
        client: &Client,
        subject: &str,
        queue: &str,
        metrics: Arc<BusMetrics>,
    ) -> Result<Self, BusError> {
        let inner = client
            .queue_subscribe(subject.to_owned(), queue.to_owned())
            .await
            .map_err(|e| BusError::nats("subscribe", subject, e))?;
        Ok(Self::new(client, inner, subject, metrics))
    }

    /// Wraps an existing subscription; `label` is the metric's `subject` label.
    pub fn new(
        client: &Client,
        inner: async_nats::Subscriber,
        label: &str,
        metrics: Arc<BusMetrics>,
    ) -> Self {
        Self {
            inner,
            client: client.clone(),
            label: label.to_owned(),
            metrics,
            _decode: PhantomData,
        }
    }

    /// The next message that decodes; `None` when the subscription ended (unsubscribed or the
    /// client closed). Malformed messages are handled as described on [`Subscriber`].
    pub async fn next(&mut self) -> Option<Received<M>> {
        loop {
            let msg = self.inner.next().await?;
            let subject = msg.subject.to_string();
            let span = receive_span(&subject, msg.headers.as_ref());
            match C::decode(&msg.payload) {
                Ok(message) => {
                    return Some(Received {
                        message,
                        subject,
                        reply: msg.reply.map(|r| r.to_string()),
                        headers: msg.headers.unwrap_or_default(),
                        span,
                    });
                }
                Err(reason) => {
                    warn!(parent: &span, subject = %subject, bytes = msg.payload.len(), %reason, "skipping malformed message");
                    self.metrics.count_malformed(&self.label);
                    if let Some(reply) = &msg.reply {
                        let description = format!("malformed request: {reason}");
                        if let Err(e) =
                            respond_error(&self.client, reply, &span, 400, &description).await
                        {
                            warn!(subject = %subject, error = %e, "could not answer a malformed request");
                        }
                    }
                }
            }
        }
    }

    /// Unsubscribes; messages already received are dropped.
    ///
    /// # Errors
    /// [`BusError::Nats`] when the client is gone.
    pub async fn unsubscribe(mut self) -> Result<(), BusError> {
        self.inner
            .unsubscribe()
            .await
            .map_err(|e| BusError::nats("unsubscribe", self.label.clone(), e))
    }
}
