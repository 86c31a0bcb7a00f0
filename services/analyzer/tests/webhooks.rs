//! Webhooks against a local receiver: Flagger's payload, the signature, per-type judgement,
//! retries with backoff, timeouts, and how hooks fold into the verdict.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aviary_analyzer::analysis::{Analyzer, AnalyzerOptions};
use aviary_analyzer::builtin::Mesh;
use aviary_analyzer::metrics::AnalyzerMetrics;
use aviary_analyzer::provider::prometheus::PrometheusConfig;
use aviary_analyzer::webhook::WebhookClient;
use aviary_proto::{Outcome, WebhookCheck};
use aviary_runtime::signature::{SignatureError, SigningKey, Verifier};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;

/// One call received: path, decoded body, signature header, raw body.
type Call = (String, serde_json::Value, Option<String>, Bytes);

#[derive(Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<Call>>>,
    flaky: Arc<AtomicU32>,
}

/// `/status/<code>` answers `code`; `/flaky` answers 503 twice, then 200; `/slow` takes 5 s.
async fn receive(
    State(r): State<Receiver>,
    Path(what): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let sig = headers
        .get("x-aviary-signature")
        .map(|v| v.to_str().unwrap().to_owned());
    r.bodies
        .lock()
        .unwrap()
        .push((what.clone(), json, sig, body));
    match what.as_str() {
        "flaky" => {
            if r.flaky.fetch_add(1, Ordering::SeqCst) < 2 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        }
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK
        }
        code => StatusCode::from_u16(code.parse().unwrap()).unwrap(),
    }
}

async fn receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let app = Router::new()
        .route("/hook/{what}", post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, base)
}

fn analyzer_signing(secret: Option<&str>) -> Analyzer {
    Analyzer::new(
        AnalyzerOptions {
            // Never queried: these requests carry only webhooks.
            prometheus: PrometheusConfig::new("http://127.0.0.1:1"),
            mesh: Mesh::Envoy,
            max_in_flight_per_backend: 4,
            webhooks: WebhookClient::new(secret.map(|s| SigningKey::new(s, None).unwrap()))
                .unwrap()
                .with_backoff(Duration::from_millis(20)),
        },
        AnalyzerMetrics::unregistered(),
    )
    .unwrap()
}

fn hook(name: &str, kind: &str, url: String) -> WebhookCheck {
    WebhookCheck {
        name: name.into(),
        r#type: kind.into(),
        url,
        timeout_ms: 2_000,
        retries: 0,
        metadata: HashMap::from([("cmd".to_owned(), "hey -z 1m".to_owned())]),
    }
}

#[tokio::test]
async fn payload_is_flaggers_and_the_body_is_signed() {
    let (r, base) = receiver().await;
    let mut req = request(0, 1, vec![]);
    req.webhooks = vec![hook("load", "rollout", format!("{base}/200"))];
    let v = analyzer_signing(Some("shh")).analyze(&req).await;
    assert_eq!(v.outcome(), Outcome::Pass, "{v:?}");
    let bodies = r.bodies.lock().unwrap().clone();
    let (_, json, sig, raw) = &bodies[0];
    assert_eq!(
        json,
        &serde_json::json!({
            "name": "podinfo",
            "namespace": "test",
            "phase": "Progressing",
            "checksum": "abc123",
            "metadata": {"cmd": "hey -z 1m"}
        })
    );
    let sig = sig.as_deref().unwrap();
    let key = SigningKey::new("shh", None).unwrap();
    let verified = Verifier::new([key.clone()]).verify(sig, raw).unwrap();
    assert_eq!(verified.kid, SigningKey::default_id(b"shh"));
    assert!(sig.starts_with("t="), "{sig}");
    // The signature is of this body only, and only under this key.
    assert_eq!(
        Verifier::new([key]).verify(sig, b"{}"),
        Err(SignatureError::Mismatch)
    );
    let stranger = SigningKey::new("other", Some(key_id(sig))).unwrap();
    assert_eq!(
        Verifier::new([stranger]).verify(sig, raw),
        Err(SignatureError::Mismatch)
    );

    // No secret, no signature.
    let v = analyzer_signing(None).analyze(&req).await;
    assert_eq!(v.outcome(), Outcome::Pass);
    assert_eq!(r.bodies.lock().unwrap()[1].2, None);
}

fn key_id(header: &str) -> &str {
    header
        .split(',')
        .find_map(|part| part.strip_prefix("kid="))
        .unwrap()
}

#[tokio::test]
async fn each_type_is_judged_and_folded() {
    let (_r, base) = receiver().await;
    let analyzer = analyzer_signing(None);
    let run = |hooks: Vec<WebhookCheck>| {
        let mut req = request(0, 1, vec![]);
        req.webhooks = hooks;
        let analyzer = &analyzer;
        async move { analyzer.analyze(&req).await }
    };
    let open = [
        "confirm-rollout",
        "pre-rollout",
        "rollout",
        "confirm-traffic-increase",
        "confirm-promotion",
        "post-rollout",
        "event",
    ];
    let v = run(open
        .iter()
        .map(|t| hook(t, t, format!("{base}/200")))
        .chain([hook("rb", "rollback", format!("{base}/404"))])
        .collect())
    .await;
    assert_eq!(v.outcome(), Outcome::Pass, "{v:?}");
    assert_eq!(v.webhooks.len(), 8);
    assert!(!v.decisive);

    // A closed gate halts (inconclusive), it does not fail.
    let v = run(vec![hook(
        "gate",
        "confirm-promotion",
        format!("{base}/403"),
    )])
    .await;
    assert_eq!(v.outcome(), Outcome::Inconclusive, "{v:?}");
    assert_eq!(v.webhooks[0].status_code, 403);
    // A failing rollout hook is a failed check.
    let v = run(vec![hook("load", "rollout", format!("{base}/400"))]).await;
    assert_eq!(v.outcome(), Outcome::Fail, "{v:?}");
    // A rollback hook answering 2xx asks for rollback: fail, decisive.
    let v = run(vec![hook("rb", "rollback", format!("{base}/200"))]).await;
    assert_eq!(v.outcome(), Outcome::Fail, "{v:?}");
    assert!(v.decisive);
    // Informational hooks are reported but do not hold the rollout.
    let v = run(vec![hook("ev", "event", format!("{base}/500"))]).await;
    assert_eq!(v.webhooks[0].outcome(), Outcome::Error, "{v:?}");
    assert_eq!(v.outcome(), Outcome::Pass, "{v:?}");
    // An unknown type is an error, not a pass.
    let v = run(vec![hook("x", "pre-deploy", format!("{base}/200"))]).await;
    assert_eq!(v.outcome(), Outcome::Error, "{v:?}");
}

#[tokio::test]
async fn retries_back_off_and_timeouts_end_the_call() {
    let (r, base) = receiver().await;
    let analyzer = analyzer_signing(None);
    let mut req = request(0, 1, vec![]);
    let mut flaky = hook("flaky", "pre-rollout", format!("{base}/flaky"));
    flaky.retries = 3;
    req.webhooks = vec![flaky];
    let v = analyzer.analyze(&req).await;
    assert_eq!(v.outcome(), Outcome::Pass, "{v:?}");
    assert!(v.webhooks[0].reason.contains("after 3 attempts"), "{v:?}");
    assert_eq!(r.flaky.load(Ordering::SeqCst), 3);

    // Retries exhausted on 5xx: the last answer is judged.
    let mut down = hook("down", "rollout", format!("{base}/503"));
    down.retries = 1;
    req.webhooks = vec![down];
    let v = analyzer.analyze(&req).await;
    assert_eq!(v.outcome(), Outcome::Fail, "{v:?}");
    assert!(v.webhooks[0].reason.contains("after 2 attempts"), "{v:?}");

    // A hook that does not answer in time is an error, after its timeout, not a hang.
    let mut slow = hook("slow", "confirm-rollout", format!("{base}/slow"));
    slow.timeout_ms = 200;
    req.webhooks = vec![slow];
    let started = Instant::now();
    let v = analyzer.analyze(&req).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(v.outcome(), Outcome::Error, "{v:?}");
    assert!(v.webhooks[0].reason.contains("no answer within"), "{v:?}");

    // Nobody listening: unreachable.
    let port = aviary_testkit::free_port().unwrap();
    req.webhooks = vec![hook(
        "gone",
        "confirm-rollout",
        format!("http://127.0.0.1:{port}/x"),
    )];
    let v = analyzer.analyze(&req).await;
    assert_eq!(v.outcome(), Outcome::Error, "{v:?}");
    assert!(v.webhooks[0].reason.contains("unreachable"), "{v:?}");
}
