//! Delivery: one worker task per provider, each with a bounded queue, so a provider that is
//! down or rate-limited delays only its own posts. A worker takes a job, skips it if the
//! `(provider, event id)` pair was already delivered (KV bucket `aviary_notified`, kept for a
//! TTL), posts with retries ([`crate::retry`]), records the delivery, and reports how the job
//! settled. A post that keeps failing goes to the dead-letter stream instead.
//!
//! ```text
//! consumer ──Job──► [queue: slack] ──► worker ──HTTP──► Slack
//!          ──Job──► [queue: teams] ──► worker ──HTTP──► Teams     each job answers Outcome
//!          ──spawn_event_hook──► task ──HTTP──► a rollout's `event` webhook
//! ```
//!
//! A rollout's `event` webhooks (carried in each of its events) are delivered the same way,
//! one task per (event, hook) instead of a worker, since they are not configured here.
//!
//! Guarantee: a post whose success was recorded is never repeated. The window between the
//! HTTP 2xx and the KV write is the only place a crash can cause a second post (an HTTP
//! webhook cannot be made idempotent from this side).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use aviary_proto::events::{AuditEvent, EventHook, EventKind};

use crate::metrics::Metrics;
use crate::notification::Notification;
use crate::providers::{self, Payload};
use crate::retry::{self, Attempt, RetryPolicy, Settled};
use crate::settings::{EventWebhooks, Provider};

/// KV bucket of delivered `(provider, event id)` pairs.
pub const BUCKET_NOTIFIED: &str = aviary_bus::names::BUCKET_NOTIFIED;

/// Subject of the notifier's dead letters (in the `AVIARY_DEAD` stream, `aviary.dead.>`).
pub const DEAD_LETTER_SUBJECT: &str = "aviary.dead.notifier";

/// Local cache bound of delivered keys; past it the cache is cleared and the KV bucket
/// answers alone. Bounds memory on a notifier that runs for months.
const LOCAL_CACHE_LIMIT: usize = 100_000;

/// How a job settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Posted now.
    Delivered,
    /// Posted before (by this or an earlier notifier): not posted again.
    Duplicate,
    /// Given up on and written to the dead-letter stream.
    DeadLettered,
    /// Not settled (shutdown, or NATS unavailable for the bookkeeping): the event must stay
    /// unacknowledged so it is redelivered.
    Abandoned,
}

impl Outcome {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Duplicate => "duplicate",
            Self::DeadLettered => "dead_lettered",
            Self::Abandoned => "abandoned",
        }
    }
}

/// One notification for one provider.
#[derive(Debug)]
pub struct Job {
    /// The message.
    pub notification: Arc<Notification>,
    /// The CloudEvent JSON as received.
    pub raw: Bytes,
    /// The subject it came on.
    pub subject: String,
    /// Where the outcome goes.
    pub done: oneshot::Sender<Outcome>,
}

/// Delivered-id bookkeeping: the KV bucket, fronted by a local cache.
#[derive(Debug)]
pub struct Dedup {
    kv: kv::Store,
    local: Mutex<HashSet<String>>,
}

impl Dedup {
    /// Opens (creating if needed, with `replicas` copies) the bucket with entries kept for
    /// `ttl`.
    ///
    /// # Errors
    /// When JetStream refuses to create or open the bucket.
    pub async fn open(
        js: &jetstream::Context,
        ttl: Duration,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let kv = match js.get_key_value(BUCKET_NOTIFIED).await {
            Ok(kv) => kv,
            Err(_) => match js
                .create_key_value(kv::Config {
                    bucket: BUCKET_NOTIFIED.to_owned(),
                    description: "Aviary notifier: delivered (provider, event id) pairs".into(),
                    history: 1,
                    max_age: ttl,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
            {
                Ok(kv) => kv,
                // Another replica created it between our look and our create.
                Err(create) => js.get_key_value(BUCKET_NOTIFIED).await.map_err(|_| {
                    anyhow::anyhow!("creating KV bucket {BUCKET_NOTIFIED}: {create}")
                })?,
            },
        };
        Ok(Self {
            kv,
            local: Mutex::new(HashSet::new()),
        })
    }

    /// The key of `(provider, event id)`: KV keys allow few characters, and event ids and
    /// provider names are free text, so both are hashed.
    pub fn key(provider: &str, event_id: &str) -> String {
        let mut h = Sha256::new();
        h.update(provider.as_bytes());
        h.update([0]);
        h.update(event_id.as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn cached(&self, key: &str) -> bool {
        self.local.lock().map(|s| s.contains(key)).unwrap_or(false)
    }

    fn cache(&self, key: &str) {
        if let Ok(mut s) = self.local.lock() {
            if s.len() >= LOCAL_CACHE_LIMIT {
                s.clear();
            }
            s.insert(key.to_owned());
        }
    }

    /// Whether `key` was settled before.
    ///
    /// # Errors
    /// When the bucket cannot be read (the caller must not post: it cannot know).
    pub async fn seen(&self, key: &str) -> Result<bool, kv::EntryError> {
        if self.cached(key) {
            return Ok(true);
        }
        let found = self.kv.get(key).await?.is_some();
        if found {
            self.cache(key);
        }
        Ok(found)
    }

    /// Records `key` as settled with `state` (`delivered`, `dead_lettered`).
    ///
    /// # Errors
    /// When the bucket cannot be written; the local cache still remembers it.
    pub async fn record(&self, key: &str, state: &'static str) -> Result<(), kv::PutError> {
        self.cache(key);
        self.kv
            .put(key, Bytes::from_static(state.as_bytes()))
            .await?;
        Ok(())
    }
}

/// What every worker shares.
#[derive(Debug)]
pub struct Shared {
    /// HTTP client (no redirects: a webhook that redirects is misconfigured, and following
    /// it would hand the payload and its signature to whoever the redirect names).
    pub http: reqwest::Client,
    /// Retry settings.
    pub policy: RetryPolicy,
    /// Delivered ids.
    pub dedup: Dedup,
    /// Where dead letters go.
    pub js: jetstream::Context,
    /// Metrics.
    pub metrics: Metrics,
    /// Fires at the end of the drain deadline: stop waiting, settle nothing more.
    pub abandon: CancellationToken,
}

/// Builds the HTTP client the workers share.
///
/// # Errors
/// When the TLS backend cannot be initialised.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("aviary-notifier/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| anyhow::anyhow!("building the HTTP client: {}", redact(e)))
}

/// Starts the worker of `provider` with a queue of `capacity` jobs. The worker ends when every
/// sender is dropped and its queue is empty.
pub fn spawn_worker(
    provider: Provider,
    shared: Arc<Shared>,
    capacity: usize,
) -> (mpsc::Sender<Job>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Job>(capacity);
    let span =
        tracing::info_span!("provider", provider = %provider.name, kind = provider.kind.as_str());
    let handle = tokio::spawn(tracing::Instrument::instrument(
        async move {
            while let Some(job) = rx.recv().await {
                let n = &job.notification;
                let post = Post {
                    name: &provider.name,
                    kind: provider.kind.as_str(),
                    dedup_name: provider.name.clone(),
                    metric: &provider.name,
                    url: provider.url.expose(),
                    timeout: provider.timeout,
                    event_id: &n.id,
                    subject: &job.subject,
                    raw: &job.raw,
                };
                let outcome = deliver(&shared, &post, || {
                    providers::payload(&provider, n, &job.raw)
                })
                .await;
                // The consumer may have given up waiting (shutdown); nothing else to do.
                let _ = job.done.send(outcome);
            }
        },
        span,
    ));
    (tx, handle)
}

/// Provider label of the metrics of every rollout's `event` webhooks: one label for all, as
/// rollouts (and so hook names) come and go.
pub const EVENT_WEBHOOK_METRIC: &str = "event-webhook";

/// `providerType` of an `event` webhook's dead letters.
pub const EVENT_WEBHOOK_KIND: &str = "event-webhook";

/// One event for a rollout's `event` webhooks.
#[derive(Debug)]
pub struct HookEvent {
    /// The event, decoded.
    pub event: AuditEvent,
    /// Its kind.
    pub kind: EventKind,
    /// The CloudEvent JSON as received.
    pub raw: Bytes,
    /// The subject it came on.
    pub subject: String,
}

/// Posts `event` to its rollout's `event` webhook `hook` in a task of its own (hooks belong
/// to rollouts, not to the configuration, so there is no worker per hook): a hook that hangs
/// or fails holds only its own post. De-duplication, retries and dead letters are those of
/// the providers'; the hook's `timeoutMs` bounds each attempt. Returns where the outcome goes.
pub fn spawn_event_hook(
    hook: EventHook,
    event: Arc<HookEvent>,
    settings: Arc<EventWebhooks>,
    shared: Arc<Shared>,
) -> oneshot::Receiver<Outcome> {
    let (done, outcome) = oneshot::channel();
    let span = tracing::info_span!("event_webhook", webhook = %hook.name);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let timeout = hook
                .timeout_ms
                .filter(|ms| *ms > 0)
                .map_or(settings.timeout, Duration::from_millis);
            let post = Post {
                name: &hook.name,
                kind: EVENT_WEBHOOK_KIND,
                // Hook names are the rollout's, provider names the configuration's: the NUL
                // (which a provider name never holds) keeps their delivered ids apart.
                dedup_name: format!("{EVENT_WEBHOOK_KIND}\0{}", hook.name),
                metric: EVENT_WEBHOOK_METRIC,
                url: &hook.url,
                timeout,
                event_id: &event.event.id,
                subject: &event.subject,
                raw: &event.raw,
            };
            let outcome = deliver(&shared, &post, || {
                providers::event_hook(&hook, &event.event, event.kind, &settings)
            })
            .await;
            let _ = done.send(outcome);
        },
        span,
    ));
    outcome
}

/// One event for one destination: a configured provider or a rollout's `event` webhook.
struct Post<'a> {
    /// Destination name, in logs and dead letters.
    name: &'a str,
    /// Destination type, in dead letters.
    kind: &'static str,
    /// Name its delivered ids are kept under.
    dedup_name: String,
    /// Provider label of its metrics.
    metric: &'a str,
    /// Where to (may hold a token: never logged).
    url: &'a str,
    /// Bound of one attempt.
    timeout: Duration,
    event_id: &'a str,
    subject: &'a str,
    raw: &'a [u8],
}

async fn deliver(shared: &Shared, post: &Post<'_>, payload: impl FnOnce() -> Payload) -> Outcome {
    let outcome = deliver_once(shared, post, payload).await;
    shared.metrics.post(post.metric, outcome.as_str());
    outcome
}

async fn deliver_once(
    shared: &Shared,
    post: &Post<'_>,
    payload: impl FnOnce() -> Payload,
) -> Outcome {
    let id = post.event_id;
    if shared.abandon.is_cancelled() {
        return Outcome::Abandoned;
    }
    let key = Dedup::key(&post.dedup_name, id);
    match shared.dedup.seen(&key).await {
        Ok(true) => {
            tracing::debug!(event = %id, "already posted; skipping");
            return Outcome::Duplicate;
        }
        Ok(false) => {}
        Err(error) => {
            tracing::warn!(event = %id, %error, "cannot check for an earlier post; leaving the event for redelivery");
            return Outcome::Abandoned;
        }
    }
    let payload = payload();
    let settled = retry::run(
        &shared.policy,
        &shared.abandon,
        |_| send(&shared.http, post.url, post.timeout, &payload),
        |attempt, wait, error| {
            shared.metrics.retry(post.metric);
            tracing::info!(event = %id, attempt, ?wait, error, "post failed; retrying");
        },
    )
    .await;
    match settled {
        Settled::Delivered { attempts } => {
            tracing::info!(event = %id, attempts, "posted");
            if let Err(error) = shared.dedup.record(&key, "delivered").await {
                shared.metrics.dedup_error();
                tracing::warn!(event = %id, %error, "posted, but recording it failed; a restart may post it again");
            }
            Outcome::Delivered
        }
        Settled::Failed { attempts, error } => {
            tracing::warn!(event = %id, attempts, %error, "post failed for good; dead-lettering");
            match dead_letter(shared, post, attempts, &error).await {
                Ok(()) => {
                    shared.metrics.dead_letter(post.metric);
                    if let Err(error) = shared.dedup.record(&key, "dead_lettered").await {
                        shared.metrics.dedup_error();
                        tracing::warn!(event = %id, %error, "recording the dead letter failed");
                    }
                    Outcome::DeadLettered
                }
                Err(error) => {
                    tracing::warn!(event = %id, %error, "dead-lettering failed; leaving the event for redelivery");
                    Outcome::Abandoned
                }
            }
        }
        Settled::Abandoned => Outcome::Abandoned,
    }
}

/// One HTTP attempt. Errors never contain the URL (it holds the webhook token).
async fn send(http: &reqwest::Client, url: &str, timeout: Duration, payload: &Payload) -> Attempt {
    let mut request = http
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, payload.content_type)
        .body(payload.body.clone());
    for (name, value) in &payload.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    // Signed at each attempt, so a retry carries the time it is sent and still falls in the
    // receiver's replay window.
    if let Some(signing) = &payload.signing {
        let (name, value) = signing.sign_now(&payload.body);
        request = request.header(name, value);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) if e.is_builder() => return Attempt::Permanent { error: redact(e) },
        Err(e) => {
            return Attempt::Transient {
                error: redact(e),
                retry_after: None,
            };
        }
    };
    let status = response.status();
    if status.is_success() {
        return Attempt::Done;
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::parse_retry_after(v, aviary_runtime::clock::system_now()));
    // The body says why (Slack: `invalid_payload`, `channel_not_found`); keep a short,
    // single-line piece of it.
    let body = response.text().await.unwrap_or_default();
    let snippet: String = body.chars().filter(|c| !c.is_control()).take(200).collect();
    let error = if snippet.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {snippet}")
    };
    let code = status.as_u16();
    if code == 429 || code == 408 || status.is_server_error() {
        Attempt::Transient { error, retry_after }
    } else {
        Attempt::Permanent { error }
    }
}

/// The error and its causes, without the request URL (reqwest puts it in `Display`).
fn redact(e: reqwest::Error) -> String {
    aviary_runtime::errors::error_chain(&e.without_url())
}

async fn dead_letter(
    shared: &Shared,
    post: &Post<'_>,
    attempts: u32,
    error: &str,
) -> anyhow::Result<()> {
    let event: serde_json::Value = serde_json::from_slice(post.raw)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(post.raw).into()));
    let body = serde_json::json!({
        "provider": post.name,
        "providerType": post.kind,
        "eventId": post.event_id,
        "subject": post.subject,
        "attempts": attempts,
        "error": error,
        "event": event,
    });
    let mut headers = HeaderMap::new();
    // One dead letter per (destination, event), even if this runs twice. An event webhook's
    // id names its type too, so it never collides with a provider of the same name.
    let msg_id = if post.kind == EVENT_WEBHOOK_KIND {
        format!(
            "notifier/{EVENT_WEBHOOK_KIND}/{}/{}",
            post.name, post.event_id
        )
    } else {
        format!("notifier/{}/{}", post.name, post.event_id)
    };
    headers.insert("Nats-Msg-Id", msg_id.as_str());
    headers.insert("Aviary-Provider", post.name);
    let ack = shared
        .js
        .publish_with_headers(DEAD_LETTER_SUBJECT, headers, body.to_string().into())
        .await?;
    ack.await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_keys_are_valid_kv_keys_and_distinct_per_provider() {
        let a = Dedup::key("slack", "test/podinfo/1/2");
        let b = Dedup::key("teams", "test/podinfo/1/2");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, Dedup::key("slack", "test/podinfo/1/2"));
    }

    #[tokio::test]
    async fn transport_errors_do_not_show_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let provider = crate::settings::Settings::from_yaml(
            &format!("providers: [{{name: s, type: slack, url: 'http://127.0.0.1:{port}/services/T0/B0/sekrit-token'}}]"),
            std::path::Path::new("."),
            &|_| None,
        )
        .expect("config")
        .providers
        .remove(0);
        let payload = Payload {
            body: b"{}".to_vec(),
            content_type: "application/json",
            headers: vec![],
            signing: None,
        };
        let attempt = send(
            &http_client().expect("client"),
            provider.url.expose(),
            provider.timeout,
            &payload,
        )
        .await;
        let Attempt::Transient { error, .. } = attempt else {
            panic!("expected a transient error, got {attempt:?}");
        };
        assert!(!error.contains("sekrit-token"), "{error}");
        assert!(!error.contains("/services/"), "{error}");
        assert!(error.contains("connect"), "{error}");
    }
}
