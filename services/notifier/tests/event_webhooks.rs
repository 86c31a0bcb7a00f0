//! A rollout's `event` webhooks end to end: a real nats-server, the notifier as a library and
//! a local HTTP receiver standing in for the hooks. Each event of a rollout is posted to each
//! of the hooks its events carry (`data.eventWebhooks`), with Flagger's event payload.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};

use aviary_proto::events::{AuditEvent, EventHook, EventKind};
use aviary_runtime::signature::{SigningKey, Verifier};
use aviary_testkit::eventually;
use serde_json::Value;

use common::*;

fn hook(name: &str, url: String, timeout_ms: Option<u64>) -> EventHook {
    EventHook {
        name: name.into(),
        url,
        timeout_ms,
        metadata: BTreeMap::new(),
    }
}

fn with_hooks(mut event: AuditEvent, hooks: &[EventHook]) -> AuditEvent {
    event.data.event_webhooks = hooks.to_vec();
    event
}

/// Posts on `path` that were answered 2xx, counted by the `metadata.eventId` they carry.
fn hook_counts(rx: &Receiver, path: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in rx.delivered(path) {
        let id = r.json()["metadata"]["eventId"]
            .as_str()
            .expect("metadata.eventId")
            .to_owned();
        *counts.entry(id).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn an_event_webhook_gets_every_event_of_its_rollout_once_with_flaggers_payload() {
    let (nats, js) = nats().await;
    let rx = Receiver::start().await;
    // One 429 first: the hook's posts are retried as the providers' are.
    rx.set("/events", Mode::RateLimitOnce(0));
    let yaml = format!("{FAST_RETRY}eventWebhooks: {{ secret: hook-key }}\n");
    let notifier = Notifier::start(&nats, &yaml).await;

    let mut logger = hook("logger", rx.url("/events"), Some(5_000));
    logger.metadata.insert("team".into(), "edge".into());
    // Flagger's own keys win over a hook's metadata of the same name.
    logger.metadata.insert("eventType".into(), "spoofed".into());
    let kinds = [
        EventKind::Created,
        EventKind::Started,
        EventKind::StepAdvanced,
        EventKind::Verdict,
        EventKind::Halted,
        EventKind::GateOpened,
        EventKind::RolledBack,
    ];
    let events: Vec<AuditEvent> = kinds
        .iter()
        .enumerate()
        .map(|(seq, kind)| {
            with_hooks(
                event(*kind, "podinfo", seq as u64),
                std::slice::from_ref(&logger),
            )
        })
        .collect();
    for e in &events {
        publish(&js, e).await;
    }
    // Another rollout, without event hooks: nothing for it on the hook.
    publish(&js, &event(EventKind::RolledBack, "other", 0)).await;

    eventually(DEADLINE, "every event posted to the hook", || async {
        (hook_counts(&rx, "/events").len() == events.len()).then_some(())
    })
    .await;
    all_acked(&js).await;

    let counts = hook_counts(&rx, "/events");
    let expected: HashMap<String, usize> = events.iter().map(|e| (e.id.clone(), 1)).collect();
    assert_eq!(
        counts, expected,
        "each event exactly once, none of another rollout"
    );
    assert_eq!(
        rx.requests("/events").len(),
        events.len() + 1,
        "one 429, retried"
    );

    for r in rx.delivered("/events") {
        let v = r.json();
        let id = v["metadata"]["eventId"].as_str().unwrap();
        let e = events.iter().find(|e| e.id == id).unwrap();
        assert_eq!(v["name"], "podinfo");
        assert_eq!(v["namespace"], "test");
        assert_eq!(v["phase"], e.data.phase.as_str());
        let metadata = v["metadata"].as_object().unwrap();
        assert!(metadata.values().all(Value::is_string), "{v}");
        let warning = matches!(e.kind(), Some(EventKind::Halted | EventKind::RolledBack));
        assert_eq!(
            v["metadata"]["eventType"],
            if warning { "Warning" } else { "Normal" },
            "{v}"
        );
        // 2026-01-01T00:00:00Z, the event's own time, in Unix milliseconds.
        assert_eq!(v["metadata"]["timestamp"], "1767225600000");
        assert!(
            !v["metadata"]["eventMessage"].as_str().unwrap().is_empty(),
            "{v}"
        );
        assert_eq!(v["metadata"]["team"], "edge");
        assert_eq!(
            r.headers.get("content-type").unwrap().to_str().unwrap(),
            "application/json"
        );
        // Signed with the key's default id, the first 8 hex digits of its SHA-256.
        let signature = r.headers.get("x-aviary-signature").unwrap();
        let key = SigningKey::new("hook-key", None).unwrap();
        let verified = Verifier::new([key])
            .verify(signature.to_str().unwrap(), &r.body)
            .unwrap();
        assert_eq!(verified.kid, SigningKey::default_id(b"hook-key"));
    }
    let rolled_back = rx
        .delivered("/events")
        .into_iter()
        .map(|r| r.json())
        .find(|v| v["phase"] == "Failed")
        .unwrap();
    assert!(
        rolled_back["metadata"]["eventMessage"]
            .as_str()
            .unwrap()
            .starts_with("Rolled back"),
        "{rolled_back}"
    );
    assert_eq!(
        notifier.metrics().posts("event-webhook", "delivered"),
        events.len() as u64
    );
}

#[tokio::test]
async fn failing_and_hanging_event_webhooks_hold_up_nothing_and_are_dead_lettered() {
    let (nats, js) = nats().await;
    let rx = Receiver::start().await;
    rx.set("/hang", Mode::Hang);
    rx.set("/fail", Mode::Status(500));
    // The default timeout is long: only the hanging hook's own 1 s lets it be given up on
    // within the test's deadline.
    let yaml = format!(
        r#"
retry: {{ initialBackoff: 50ms, maxBackoff: 100ms, maxAttempts: 2, maxElapsed: 60s }}
eventWebhooks: {{ timeout: 60s }}
providers:
  - {{ name: chat, type: slack, url: "{}" }}
rollouts:
  test/podinfo:
    - {{ provider: chat }}
"#,
        rx.url("/chat"),
    );
    let mut notifier = Notifier::start(&nats, &yaml).await;
    let hooks = [
        hook("hang", rx.url("/hang"), Some(1_000)),
        hook("fail", rx.url("/fail"), None),
        hook("good", rx.url("/good"), None),
    ];
    let events: Vec<AuditEvent> = (0..3)
        .map(|seq| with_hooks(event(EventKind::RolledBack, "podinfo", seq), &hooks))
        .collect();
    for e in &events {
        publish(&js, e).await;
    }
    eventually(
        DEADLINE,
        "the good hook and the chat got every event",
        || async {
            (hook_counts(&rx, "/good").len() == 3 && rx.counts("/chat").len() == 3).then_some(())
        },
    )
    .await;
    // Each post to the hanging hook takes two 1 s timeouts: the others were done long before
    // the first of them gave up.
    assert_eq!(notifier.metrics().dead_letters("event-webhook"), 0);

    eventually(
        DEADLINE,
        "every failing hook post dead-lettered",
        || async { (notifier.metrics().dead_letters("event-webhook") == 6).then_some(()) },
    )
    .await;
    all_acked(&js).await;
    // 500 is transient, a timeout too: two attempts each.
    assert_eq!(rx.requests("/fail").len(), 6);
    assert_eq!(rx.requests("/hang").len(), 6);

    let stream = js.get_stream("AVIARY_DEAD").await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut dead = HashSet::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["providerType"], "event-webhook", "{v}");
        assert_eq!(v["event"]["type"], "dev.aviary.rollout.rolled-back");
        assert!(!v["error"].as_str().unwrap().contains(&rx.url("/")), "{v}");
        dead.insert((
            v["provider"].as_str().unwrap().to_owned(),
            v["eventId"].as_str().unwrap().to_owned(),
        ));
    }
    let expected: HashSet<(String, String)> = ["hang", "fail"]
        .iter()
        .flat_map(|h| events.iter().map(move |e| ((*h).to_owned(), e.id.clone())))
        .collect();
    assert_eq!(dead, expected);

    // The consumer goes on: a later event reaches the good hook, and a dead-lettered one is
    // not posted again when it comes back.
    rx.set("/fail", Mode::Ok);
    let later = with_hooks(event(EventKind::Succeeded, "podinfo", 9), &hooks[1..]);
    publish(&js, &later).await;
    eventually(DEADLINE, "the later event posted", || async {
        (hook_counts(&rx, "/good").len() == 4 && hook_counts(&rx, "/fail").len() == 1).then_some(())
    })
    .await;
    all_acked(&js).await;
    assert_eq!(hook_counts(&rx, "/fail").get(&later.id), Some(&1));
    notifier.stop().await;
}
