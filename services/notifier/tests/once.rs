//! What a rollout posts once: a promotion (not again at its finalising step), a halt that lasts
//! several intervals (not at each), and failed checks only to providers that ask for them
//! (`notifyFailedChecks`, as Flagger's per-provider opt-in); failed hooks are posted.

mod common;

use aviary_proto::events::{AuditEvent, EventKind, MetricValue};
use common::*;

/// `kind` for `test/podinfo` number `seq`, in `phase`, with `reason`, marked `repeated`.
fn shaped(kind: EventKind, seq: u64, phase: &str, reason: &str, repeated: bool) -> AuditEvent {
    let mut e = event(kind, "podinfo", seq);
    e.data.phase = phase.into();
    e.data.reason = reason.into();
    e.data.repeated = repeated;
    e
}

#[tokio::test]
async fn promotions_and_lasting_halts_post_once_and_failed_checks_only_where_asked() {
    let (nats, js) = nats().await;
    let rx = Receiver::start().await;
    let yaml = format!(
        r#"
providers:
  - {{ name: plain, type: webhook, url: "{}" }}
  - {{ name: checks, type: webhook, url: "{}", notifyFailedChecks: true }}
  - {{ name: chat, type: slack, url: "{}", notifyFailedChecks: true }}
rollouts:
  test/podinfo:
    - {{ provider: plain, severity: info }}
    - {{ provider: checks, severity: info }}
    - {{ provider: chat, severity: warn }}
"#,
        rx.url("/plain"),
        rx.url("/checks"),
        rx.url("/chat"),
    );
    let mut notifier = Notifier::start(&nats, &yaml).await;
    let mut failed = shaped(
        EventKind::CheckFailed,
        1,
        "Progressing",
        "check-failed: check failed (request-success-rate): 1 of 3",
        false,
    );
    failed.data.metrics = vec![MetricValue {
        name: "request-success-rate".into(),
        value: Some(90.0),
        min: Some(99.0),
        outcome: "fail".into(),
        ..Default::default()
    }];
    let halted = "halted: analysis error (request-success-rate)";
    let events = [
        shaped(
            EventKind::Started,
            0,
            "Progressing",
            "progressing: rollout started",
            false,
        ),
        failed,
        shaped(EventKind::Halted, 2, "Progressing", halted, false),
        shaped(EventKind::Halted, 3, "Progressing", halted, true),
        shaped(EventKind::Halted, 4, "Progressing", halted, true),
        shaped(
            EventKind::Promoting,
            5,
            "Promoting",
            "promoting: promoting the canary",
            false,
        ),
        shaped(
            EventKind::Promoting,
            6,
            "Finalising",
            "finalising: the canary becomes the primary",
            true,
        ),
        shaped(
            EventKind::Succeeded,
            7,
            "Succeeded",
            "succeeded: promoted",
            false,
        ),
        shaped(
            EventKind::HookFailed,
            8,
            "Succeeded",
            "hook-failed: post-rollout hooks failed: smoke: HTTP 500",
            false,
        ),
    ];
    for e in &events {
        publish(&js, e).await;
    }
    all_acked(&js).await;

    let posted = |path: &str| -> Vec<String> {
        let mut ids: Vec<String> = rx.delivered(path).iter().map(event_id).collect();
        ids.sort();
        ids
    };
    let ids = |seqs: &[u64]| -> Vec<String> {
        let mut ids: Vec<String> = seqs.iter().map(|s| format!("test/podinfo/2/{s}")).collect();
        ids.sort();
        ids
    };
    assert_eq!(posted("/plain"), ids(&[0, 2, 5, 7, 8]), "no failed check");
    assert_eq!(
        posted("/checks"),
        ids(&[0, 1, 2, 5, 7, 8]),
        "with the failed check"
    );
    assert_eq!(posted("/chat"), ids(&[1, 2, 8]), "warn and above");
    let chat: Vec<String> = rx
        .delivered("/chat")
        .iter()
        .map(|r| r.json()["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        chat.iter().any(|t| t.contains("failed a check")),
        "{chat:?}"
    );
    assert!(
        chat.iter().any(|t| t.contains("had a hook fail")),
        "{chat:?}"
    );
    notifier.stop().await;
}

#[tokio::test]
async fn a_provider_without_the_opt_in_gets_no_failed_checks() {
    let (nats, js) = nats().await;
    let rx = Receiver::start().await;
    let yaml = format!(
        "providers: [{{ name: p, type: webhook, url: \"{}\" }}]\ndefaultProvider: p\n",
        rx.url("/p")
    );
    let mut notifier = Notifier::start(&nats, &yaml).await;
    publish(
        &js,
        &shaped(
            EventKind::CheckFailed,
            0,
            "Progressing",
            "check-failed: 1 of 3",
            false,
        ),
    )
    .await;
    publish(&js, &event(EventKind::RolledBack, "podinfo", 1)).await;
    all_acked(&js).await;
    let ids: Vec<String> = rx.delivered("/p").iter().map(event_id).collect();
    assert_eq!(ids, ["test/podinfo/2/1"]);
    notifier.stop().await;
}
