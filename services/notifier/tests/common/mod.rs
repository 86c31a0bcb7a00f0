//! Test harness: a real nats-server (testkit), a local HTTP receiver standing in for Slack and
//! the others (records every request, answers as told per path), event builders, and a
//! notifier started on them.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use aviary_notifier::{Config, Running};
use aviary_proto::events::{AuditEvent, EventData, EventKind, MetricValue};
use aviary_testkit::{NatsServer, eventually};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Deadline of every wait in these tests: generous for a 2-core machine that is compiling.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// How the receiver answers on one path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Mode {
    /// 200 `ok` (Slack's answer).
    Ok,
    /// Always this status.
    Status(u16),
    /// 429 with `Retry-After: <secs>` the first time, then 200.
    RateLimitOnce(u64),
    /// Never answers.
    Hang,
    /// Answers 200 after this long.
    Delay(Duration),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    pub status: u16,
}

impl Request {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

#[derive(Default)]
struct State_ {
    modes: HashMap<String, Mode>,
    requests: Vec<Request>,
    limited: HashMap<String, bool>,
}

/// A local HTTP server that records requests.
#[derive(Clone, Default)]
pub(crate) struct Receiver {
    state: Arc<Mutex<State_>>,
    pub addr: Option<SocketAddr>,
}

impl Receiver {
    /// Serves on an ephemeral port.
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::default().serve(listener)
    }

    /// Serves on `listener`.
    pub(crate) fn serve(mut self, listener: tokio::net::TcpListener) -> Self {
        self.addr = Some(listener.local_addr().unwrap());
        let app = Router::new().fallback(handle).with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        self
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr.unwrap())
    }

    pub(crate) fn set(&self, path: &str, mode: Mode) {
        self.state
            .lock()
            .unwrap()
            .modes
            .insert(path.to_owned(), mode);
    }

    pub(crate) fn requests(&self, path: &str) -> Vec<Request> {
        let state = self.state.lock().unwrap();
        state
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Requests on `path` that were answered 2xx.
    pub(crate) fn delivered(&self, path: &str) -> Vec<Request> {
        self.requests(path)
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Successful posts on `path` counted by event id.
    pub(crate) fn counts(&self, path: &str) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for r in self.delivered(path) {
            *counts.entry(event_id(&r)).or_default() += 1;
        }
        counts
    }
}

async fn handle(State(r): State<Receiver>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let mode = {
        let mut state = r.state.lock().unwrap();
        let mode = state.modes.get(&path).cloned().unwrap_or(Mode::Ok);
        match mode {
            Mode::RateLimitOnce(secs) if !state.limited.get(&path).copied().unwrap_or(false) => {
                state.limited.insert(path.clone(), true);
                Mode::RateLimitOnce(secs)
            }
            Mode::RateLimitOnce(_) => Mode::Ok,
            other => other,
        }
    };
    let status = match &mode {
        Mode::Ok | Mode::Delay(_) | Mode::Hang => 200,
        Mode::Status(code) => *code,
        Mode::RateLimitOnce(_) => 429,
    };
    let record = |status: u16| Request {
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
        at: Instant::now(),
        status,
    };
    match mode {
        Mode::Hang => {
            r.state.lock().unwrap().requests.push(record(0));
            std::future::pending::<()>().await;
            unreachable!()
        }
        Mode::Delay(d) => {
            tokio::time::sleep(d).await;
        }
        _ => {}
    }
    r.state.lock().unwrap().requests.push(record(status));
    match mode {
        Mode::RateLimitOnce(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
            "rate_limited",
        )
            .into_response(),
        _ => (StatusCode::from_u16(status).unwrap(), "ok").into_response(),
    }
}

/// The event id a post is about: the CloudEvent's own for webhooks, the `event <id>` the
/// chat payloads carry otherwise.
pub(crate) fn event_id(r: &Request) -> String {
    let v = r.json();
    if let Some(id) = v.get("id").and_then(|i| i.as_str()) {
        return id.to_owned();
    }
    if let Some(footer) = v.pointer("/embeds/0/footer/text").and_then(|t| t.as_str()) {
        return footer.trim_start_matches("event ").to_owned();
    }
    let text = v.to_string();
    let start = text.find("event `").expect("an event id in the payload") + "event `".len();
    let end = text[start..].find('`').unwrap() + start;
    text[start..end].to_owned()
}

/// An audit event of `kind` for `test/<name>`, number `seq`.
pub(crate) fn event(kind: EventKind, name: &str, seq: u64) -> AuditEvent {
    let mut data = EventData {
        namespace: "test".into(),
        name: name.into(),
        generation: 2,
        step: 3,
        phase: "Progressing".into(),
        canary_weight: 20,
        primary_weight: 80,
        canary: format!("{name}-v2"),
        primary: format!("{name}-v1"),
        ..Default::default()
    };
    match kind {
        EventKind::RolledBack => {
            data.phase = "Failed".into();
            data.canary_weight = 0;
            data.primary_weight = 100;
            data.reason = "failed checks reached threshold 2".into();
            data.metrics = vec![MetricValue {
                name: "request-success-rate".into(),
                value: Some(95.5),
                min: Some(99.0),
                outcome: "fail".into(),
                ..Default::default()
            }];
        }
        EventKind::Halted => data.reason = "ingress edge did not ack".into(),
        _ => {}
    }
    AuditEvent::new(
        kind,
        format!("test/{name}/2/{seq}"),
        "2026-01-01T00:00:00Z".into(),
        data,
    )
}

/// Publishes `event` to its subject with its id as `Nats-Msg-Id`, and waits for the ack.
pub(crate) async fn publish(js: &jetstream::Context, event: &AuditEvent) {
    let subject = format!("aviary.events.{}.{}", event.data.namespace, event.data.name);
    publish_raw(js, &subject, &event.id, serde_json::to_vec(event).unwrap()).await;
}

pub(crate) async fn publish_raw(js: &jetstream::Context, subject: &str, id: &str, body: Vec<u8>) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    js.publish_with_headers(subject.to_owned(), headers, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// NATS with the bus's streams and buckets set up, and a JetStream context on it.
pub(crate) async fn nats() -> (NatsServer, jetstream::Context) {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    aviary_bus::setup::ensure_all(&js).await.unwrap();
    (nats, js)
}

/// A notifier started with `yaml` as its config file.
pub(crate) struct Notifier {
    pub running: Option<Running>,
    pub shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Notifier {
    pub(crate) async fn start(nats: &NatsServer, yaml: &str) -> Self {
        Self::start_with(nats, yaml, &[]).await
    }

    pub(crate) async fn start_with(nats: &NatsServer, yaml: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notifier.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut args = vec![
            "aviary-notifier".to_owned(),
            "--config".into(),
            path.display().to_string(),
            "--nats-url".into(),
            nats.url(),
            "--admin-addr".into(),
            "127.0.0.1:0".into(),
            "--cluster-name".into(),
            "test-cluster".into(),
            "--deliver-from".into(),
            "all".into(),
            "--ack-wait".into(),
            "5s".into(),
            "--lag-interval".into(),
            "100ms".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let config = Config::try_parse_from(args).unwrap();
        let shutdown = CancellationToken::new();
        let running = aviary_notifier::start(config, shutdown.clone())
            .await
            .unwrap();
        Self {
            running: Some(running),
            shutdown,
            _dir: dir,
        }
    }

    pub(crate) fn metrics(&self) -> &aviary_notifier::Metrics {
        &self.running.as_ref().unwrap().metrics
    }

    /// `/metrics` as served.
    pub(crate) async fn scrape(&self) -> String {
        let addr = self.running.as_ref().unwrap().admin_addr;
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Cancels and waits for the drain.
    pub(crate) async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.wait().await.unwrap();
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Waits until the notifier's consumer has nothing pending and nothing unacknowledged.
pub(crate) async fn all_acked(js: &jetstream::Context) {
    let stream = js.get_stream("AVIARY_EVENTS").await.unwrap();
    eventually(DEADLINE, "every event acknowledged", || {
        let stream = stream.clone();
        async move {
            let mut consumer: jetstream::consumer::PullConsumer =
                stream.get_consumer("aviary-notifier").await.ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
}

/// Retry settings that make tests fast.
pub(crate) const FAST_RETRY: &str =
    "retry: { initialBackoff: 20ms, maxBackoff: 200ms, maxAttempts: 1000, maxElapsed: 60s }\n";
