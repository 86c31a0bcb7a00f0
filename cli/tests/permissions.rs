//! `aviary events` under the CLI's NATS identities (`aviary_bus::permissions`) on a
//! permissioned nats-server: `cli-read` and `cli-operator` read the audit stream, and the
//! server refuses neither anything (what `cli-read` may not do is in the bus's tests).

use std::time::Duration;

use aviary_bus::{names, permissions, setup};
use aviary_testkit::NatsServer;

fn password(user: &str) -> String {
    format!("pw-{user}")
}

async fn aviary_events(nats: &NatsServer, user: &str, extra: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_aviary"))
        .args(["events", "test/podinfo", "-o", "json"])
        .args(extra)
        .env("AVIARY_NATS_URL", nats.url())
        .env("AVIARY_NATS_USER", user)
        .env("AVIARY_NATS_PASSWORD", password(user))
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("aviary events finishes")
        .expect("aviary runs")
}

#[tokio::test]
async fn the_cli_identities_read_the_audit_stream_and_nothing_is_refused() {
    let config = permissions::nats_authorization(|user| format!("\"{}\"", password(user)));
    let nats = NatsServer::start_with_config(&config)
        .await
        .expect("nats-server");
    let scheduler = async_nats::ConnectOptions::with_user_and_password(
        "scheduler".into(),
        password("scheduler"),
    )
    .custom_inbox_prefix(names::inbox_prefix("aviary-scheduler"))
    .connect(nats.url())
    .await
    .expect("scheduler connects");
    let js = async_nats::jetstream::new(scheduler);
    setup::ensure_all(&js).await.expect("setup");
    let subject = names::events_subject("test", "podinfo").expect("subject");
    for id in ["e1", "e2"] {
        let event = serde_json::json!({
            "specversion": "1.0", "id": id, "type": "dev.aviary.rollout.started",
            "source": "aviary/test", "data": {}
        });
        js.publish(subject.clone(), event.to_string().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    for (user, extra) in [
        ("cli-read", &[][..]),
        (
            "cli-operator",
            &["--nats-inbox-prefix", "_INBOX_aviary-cli-operator"][..],
        ),
    ] {
        let listed = aviary_events(&nats, user, extra).await;
        let stdout = String::from_utf8_lossy(&listed.stdout);
        assert_eq!(
            listed.status.code(),
            Some(0),
            "{user}: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
        assert_eq!(stdout.lines().count(), 2, "{user}: {stdout}");
    }
    let log = nats.log();
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(violations.is_empty(), "refused: {violations:#?}");
}
