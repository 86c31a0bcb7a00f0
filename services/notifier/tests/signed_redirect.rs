//! Signed posts are never re-sent across a redirect: a `webhook` provider and a rollout's
//! `event` webhook that answer 307 with another server's address get nothing re-posted there;
//! the 307 is their answer (a permanent failure, dead-lettered), and what they did get is
//! signed in the shared scheme.
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aviary_proto::events::{EventHook, EventKind};
use aviary_runtime::signature::{SIGNATURE_HEADER, SigningKey, Verifier};
use aviary_testkit::eventually;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::IntoResponse;
use common::*;

/// What the redirecting server got: (path, signature header, body).
type Got = Arc<Mutex<Vec<(String, Option<String>, Bytes)>>>;

/// A server that answers every request with `307 Location: <target>`, recording it.
async fn redirector(target: String) -> (Got, String) {
    let got = Got::default();
    let app = Router::new()
        .fallback(
            move |State(got): State<Got>, uri: Uri, headers: HeaderMap, body: Bytes| {
                let target = target.clone();
                async move {
                    let signature = headers
                        .get(SIGNATURE_HEADER)
                        .map(|v| v.to_str().unwrap().to_owned());
                    got.lock()
                        .unwrap()
                        .push((uri.path().to_owned(), signature, body));
                    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]).into_response()
                }
            },
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (got, base)
}

#[tokio::test]
async fn signed_posts_do_not_follow_a_redirect_to_another_host() {
    let (nats, js) = nats().await;
    let elsewhere = Receiver::start().await;
    let (got, base) = redirector(elsewhere.url("/stolen")).await;
    let yaml = format!(
        "{FAST_RETRY}defaultProvider: hook\n\
         providers: [{{ name: hook, type: webhook, url: \"{base}/provider\", secret: provider-key, keyId: p1 }}]\n\
         eventWebhooks: {{ secret: hook-key, keyId: e1 }}\n"
    );
    let _notifier = Notifier::start(&nats, &yaml).await;
    let mut event = event(EventKind::RolledBack, "podinfo", 1);
    event.data.event_webhooks = vec![EventHook {
        name: "logger".into(),
        url: format!("{base}/event"),
        timeout_ms: Some(5_000),
        metadata: BTreeMap::new(),
    }];
    publish(&js, &event).await;

    eventually(
        DEADLINE,
        "the provider and the event webhook were posted",
        || async { (got.lock().unwrap().len() >= 2).then_some(()) },
    )
    .await;
    // Both posts are settled (a 3xx is a permanent failure: dead-lettered, and acked), so a
    // redirect that was followed has reached its target by now.
    all_acked(&js).await;

    assert!(
        elsewhere.requests("/stolen").is_empty(),
        "a redirect was followed"
    );
    let got = got.lock().unwrap().clone();
    let mut paths: Vec<&str> = got.iter().map(|(p, _, _)| p.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/event", "/provider"], "each once, not retried");
    let verifier = Verifier::new([
        SigningKey::new("provider-key", Some("p1")).unwrap(),
        SigningKey::new("hook-key", Some("e1")).unwrap(),
    ]);
    for (path, signature, body) in &got {
        let signature = signature.as_deref().expect("signed");
        let verified = verifier.verify(signature, body).unwrap();
        let want = if path == "/provider" { "p1" } else { "e1" };
        assert_eq!(verified.kid, want, "{path}");
    }
}
