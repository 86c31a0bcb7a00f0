//! A signed webhook call is never re-sent across a redirect: a hook that answers 307 with
//! another server's address gets its answer judged as it is, and the other server hears nothing.
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aviary_analyzer::webhook::{Hook, Payload, SIGNATURE_HEADER, WebhookClient};
use aviary_proto::Outcome;
use aviary_runtime::signature::{SigningKey, Verifier};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::any;

/// Serves `app` on an ephemeral loopback port; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[derive(Clone, Default)]
struct Seen {
    calls: Arc<AtomicU32>,
    signed: Arc<std::sync::Mutex<Vec<(String, Bytes)>>>,
}

#[tokio::test]
async fn a_signed_call_does_not_follow_a_redirect_to_another_host() {
    // The server a redirect points at: counts every request it gets, of any method.
    let elsewhere = Seen::default();
    let elsewhere_url = serve(
        Router::new()
            .fallback(any(|State(seen): State<Seen>| async move {
                seen.calls.fetch_add(1, Ordering::SeqCst);
                StatusCode::OK
            }))
            .with_state(elsewhere.clone()),
    )
    .await;
    // The hook: records what it got, then redirects (307 keeps method and body) elsewhere.
    let hook_seen = Seen::default();
    let target = format!("{elsewhere_url}/steal");
    let hook_url = serve(
        Router::new()
            .fallback(any(
                move |State(seen): State<Seen>, headers: HeaderMap, body: Bytes| {
                    let target = target.clone();
                    async move {
                        seen.calls.fetch_add(1, Ordering::SeqCst);
                        if let Some(sig) = headers.get(SIGNATURE_HEADER) {
                            let sig = sig.to_str().unwrap().to_owned();
                            seen.signed.lock().unwrap().push((sig, body));
                        }
                        (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)])
                            .into_response()
                    }
                },
            ))
            .with_state(hook_seen.clone()),
    )
    .await;

    let key = SigningKey::new("hook-secret", Some("2026-01")).unwrap();
    let client = WebhookClient::new(Some(key.clone()))
        .unwrap()
        .with_backoff(Duration::from_millis(10));
    let hook = Hook {
        name: "load".into(),
        kind: "rollout".into(),
        url: format!("{hook_url}/hook"),
        timeout: Duration::from_secs(5),
        retries: 2,
        metadata: BTreeMap::new(),
    };
    let metadata = BTreeMap::new();
    let payload = Payload {
        name: "podinfo",
        namespace: "test",
        phase: "Progressing",
        checksum: "abc",
        metadata: &metadata,
    };
    let result = client.call(&hook, &payload).await;

    // The 307 is the hook's answer: not 2xx, so a failed check; a 3xx is not retried.
    assert_eq!(result.status_code, 307, "{result:?}");
    assert_eq!(result.outcome(), Outcome::Fail, "{result:?}");
    assert_eq!(hook_seen.calls.load(Ordering::SeqCst), 1);
    assert_eq!(elsewhere.calls.load(Ordering::SeqCst), 0);
    // What the hook itself got was signed, and verifies.
    let signed = hook_seen.signed.lock().unwrap().clone();
    assert_eq!(signed.len(), 1);
    let verified = Verifier::new([key])
        .verify(&signed[0].0, &signed[0].1)
        .unwrap();
    assert_eq!(verified.kid, "2026-01");
}
