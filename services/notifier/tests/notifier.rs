//! The notifier end to end: a real nats-server, the notifier as a library, local HTTP
//! receivers in place of Slack, Teams, Discord, Google Chat and a webhook.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use aviary_proto::events::{AuditEvent, EventKind};
use aviary_runtime::signature::{SigningKey, Verifier};
use aviary_testkit::eventually;
use serde_json::Value;

use common::*;

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} is not a string in {v}"))
}

fn arr<'a>(v: &'a Value, pointer: &str) -> &'a Vec<Value> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{pointer} is not an array in {v}"))
}

fn content_type(r: &Request) -> &str {
    r.headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Slack incoming webhook: `text` fallback + Block Kit blocks within Slack's limits.
fn check_slack(v: &Value) {
    assert!(!s(v, "/text").is_empty());
    let blocks = arr(v, "/blocks");
    assert!(!blocks.is_empty() && blocks.len() <= 50);
    for block in blocks {
        match s(block, "/type") {
            "header" => {
                assert_eq!(s(block, "/text/type"), "plain_text");
                assert!(s(block, "/text/text").chars().count() <= 150);
            }
            "section" => {
                assert!(
                    block.get("text").is_some() || block.get("fields").is_some(),
                    "{block}"
                );
                if let Some(text) = block.get("text") {
                    assert!(["mrkdwn", "plain_text"].contains(&s(text, "/type")));
                    assert!(s(text, "/text").chars().count() <= 3000);
                }
                if let Some(fields) = block.get("fields") {
                    let fields = fields.as_array().expect("fields array");
                    assert!(fields.len() <= 10);
                    for f in fields {
                        assert!(["mrkdwn", "plain_text"].contains(&s(f, "/type")));
                        assert!(s(f, "/text").chars().count() <= 2000);
                    }
                }
            }
            "context" => {
                let elements = arr(block, "/elements");
                assert!(!elements.is_empty() && elements.len() <= 10);
                for e in elements {
                    assert!(["mrkdwn", "plain_text", "image"].contains(&s(e, "/type")));
                }
            }
            other => panic!("unexpected block type {other}"),
        }
    }
    assert_eq!(s(v, "/channel"), "#deploys");
    assert_eq!(s(v, "/username"), "aviary");
    assert_eq!(s(v, "/icon_emoji"), ":bird:");
}

fn check_adaptive_card_elements(elements: &[Value]) {
    for e in elements {
        match s(e, "/type") {
            "TextBlock" => assert!(!s(e, "/text").is_empty()),
            "FactSet" => {
                for f in arr(e, "/facts") {
                    s(f, "/title");
                    s(f, "/value");
                }
            }
            other => panic!("unexpected element {other}"),
        }
    }
}

/// Teams workflow webhook: a `message` whose one attachment is an Adaptive Card.
fn check_teams(v: &Value) {
    assert_eq!(s(v, "/type"), "message");
    let attachments = arr(v, "/attachments");
    assert_eq!(attachments.len(), 1);
    assert_eq!(
        s(&attachments[0], "/contentType"),
        "application/vnd.microsoft.card.adaptive"
    );
    let card = &attachments[0]["content"];
    assert_eq!(s(card, "/type"), "AdaptiveCard");
    assert!(s(card, "/version").starts_with("1."));
    s(card, "/$schema");
    check_adaptive_card_elements(arr(card, "/body"));
}

/// Teams legacy connector: a MessageCard (summary or text is required).
fn check_teams_legacy(v: &Value) {
    assert_eq!(s(v, "/@type"), "MessageCard");
    assert_eq!(s(v, "/@context"), "https://schema.org/extensions");
    assert!(!s(v, "/summary").is_empty());
    let color = s(v, "/themeColor");
    assert!(color.len() == 6 && color.chars().all(|c| c.is_ascii_hexdigit()));
    for section in arr(v, "/sections") {
        for f in arr(section, "/facts") {
            s(f, "/name");
            s(f, "/value");
        }
    }
}

/// Discord execute-webhook JSON within Discord's limits.
fn check_discord(v: &Value) {
    assert!(s(v, "/content").chars().count() <= 2000);
    assert_eq!(s(v, "/username"), "aviary");
    assert_eq!(arr(v, "/allowed_mentions/parse").len(), 0);
    let embeds = arr(v, "/embeds");
    assert!(!embeds.is_empty() && embeds.len() <= 10);
    for e in embeds {
        assert!(s(e, "/title").chars().count() <= 256);
        assert!(s(e, "/description").chars().count() <= 4096);
        assert!(e["color"].is_u64());
        let fields = arr(e, "/fields");
        assert!(fields.len() <= 25);
        for f in fields {
            let name = s(f, "/name");
            let value = s(f, "/value");
            assert!(!name.is_empty() && name.chars().count() <= 256);
            assert!(!value.is_empty() && value.chars().count() <= 1024);
            assert!(f["inline"].is_boolean());
        }
        s(e, "/timestamp");
    }
}

/// Google Chat webhook: `text` + `cardsV2`, each widget one known kind.
fn check_google_chat(v: &Value) {
    assert!(!s(v, "/text").is_empty());
    let cards = arr(v, "/cardsV2");
    assert_eq!(cards.len(), 1);
    s(&cards[0], "/cardId");
    let card = &cards[0]["card"];
    assert!(!s(card, "/header/title").is_empty());
    for section in arr(card, "/sections") {
        for w in arr(section, "/widgets") {
            let keys: Vec<&String> = w.as_object().expect("widget object").keys().collect();
            assert_eq!(keys.len(), 1, "{w}");
            match keys[0].as_str() {
                "textParagraph" => assert!(!s(w, "/textParagraph/text").is_empty()),
                "decoratedText" => {
                    s(w, "/decoratedText/text");
                }
                other => panic!("unexpected widget {other}"),
            }
        }
    }
}

#[tokio::test]
async fn each_provider_gets_the_payload_its_documentation_gives() {
    let (nats, js) = nats().await;
    let rx = Receiver::start().await;
    let yaml = format!(
        r##"
providers:
  - {{ name: slack, type: slack, url: "{}", channel: "#deploys", username: aviary, iconEmoji: ":bird:" }}
  - {{ name: teams, type: teams, url: "{}" }}
  - {{ name: teams-legacy, type: teams-legacy, url: "{}" }}
  - {{ name: discord, type: discord, url: "{}", username: aviary }}
  - {{ name: gchat, type: google-chat, url: "{}" }}
  - {{ name: hook, type: webhook, url: "{}", secret: s3cret, keyId: audit-1 }}
rollouts:
  test/podinfo:
    - {{ provider: slack }}
    - {{ provider: teams }}
    - {{ provider: teams-legacy }}
    - {{ provider: discord }}
    - {{ provider: gchat }}
    - {{ provider: hook }}
"##,
        rx.url("/slack"),
        rx.url("/teams"),
        rx.url("/teams-legacy"),
        rx.url("/discord"),
        rx.url("/gchat"),
        rx.url("/hook"),
    );
    let mut notifier = Notifier::start(&nats, &yaml).await;
    let event = event(EventKind::RolledBack, "podinfo", 1);
    publish(&js, &event).await;

    let paths = [
        "/slack",
        "/teams",
        "/teams-legacy",
        "/discord",
        "/gchat",
        "/hook",
    ];
    eventually(DEADLINE, "every provider posted", || async {
        paths
            .iter()
            .all(|p| !rx.delivered(p).is_empty())
            .then_some(())
    })
    .await;

    for path in paths {
        let r = &rx.delivered(path)[0];
        let v = r.json();
        match path {
            "/slack" => check_slack(&v),
            "/teams" => check_teams(&v),
            "/teams-legacy" => check_teams_legacy(&v),
            "/discord" => check_discord(&v),
            "/gchat" => check_google_chat(&v),
            _ => {}
        }
        if path == "/hook" {
            assert_eq!(content_type(r), "application/cloudevents+json");
            let posted: AuditEvent = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(posted, event);
            let signature = r
                .headers
                .get("x-aviary-signature")
                .unwrap()
                .to_str()
                .unwrap();
            let key = SigningKey::new("s3cret", Some("audit-1")).unwrap();
            let verified = Verifier::new([key]).verify(signature, &r.body).unwrap();
            assert_eq!(verified.kid, "audit-1");
            continue;
        }
        assert_eq!(content_type(r), "application/json", "{path}");
        // What a person needs: which rollout, where, which revision, what failed and by how
        // much, and what to run next.
        let text = v.to_string();
        for needle in [
            "podinfo",
            "test",
            "test-cluster",
            "request-success-rate: 95.5 (threshold min 99) fail",
            "aviary describe test/podinfo",
            "Generation",
            "0% (primary 100%)",
        ] {
            assert!(
                text.contains(needle),
                "{path}: {needle:?} missing in {text}"
            );
        }
    }
    all_acked(&js).await;
    notifier.stop().await;
}

#[tokio::test]
async fn routes_by_severity_like_flagger() {
    let (nats, js) = nats().await;
    let rx = Receiver::start().await;
    let yaml = format!(
        r#"
providers:
  - {{ name: info, type: webhook, url: "{}" }}
  - {{ name: warn, type: webhook, url: "{}" }}
  - {{ name: error, type: webhook, url: "{}" }}
  - {{ name: other, type: webhook, url: "{}" }}
rollouts:
  test/podinfo:
    - {{ provider: info, severity: info }}
    - {{ provider: warn, severity: warn }}
    - {{ provider: error, severity: error }}
"#,
        rx.url("/info"),
        rx.url("/warn"),
        rx.url("/error"),
        rx.url("/other"),
    );
    let mut notifier = Notifier::start(&nats, &yaml).await;
    let kinds = [
        EventKind::Created,          // never posted
        EventKind::Started,          // info
        EventKind::StepAdvanced,     // opt-in: not posted
        EventKind::Verdict,          // never posted
        EventKind::Halted,           // warn
        EventKind::RolledBack,       // error
        EventKind::Succeeded,        // info
        EventKind::DeadlineExceeded, // error: the last, so once it arrived everywhere, all did
    ];
    for (seq, kind) in kinds.iter().enumerate() {
        publish(&js, &event(*kind, "podinfo", seq as u64)).await;
    }
    // Another rollout with no routes and no default provider: posted nowhere.
    publish(&js, &event(EventKind::RolledBack, "unrouted", 100)).await;
    all_acked(&js).await;

    let kinds_at = |path: &str| -> Vec<String> {
        rx.delivered(path)
            .iter()
            .map(|r| {
                s(&r.json(), "/type")
                    .trim_start_matches("dev.aviary.rollout.")
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(
        kinds_at("/info"),
        [
            "started",
            "halted",
            "rolled-back",
            "succeeded",
            "deadline-exceeded"
        ]
    );
    assert_eq!(
        kinds_at("/warn"),
        ["halted", "rolled-back", "deadline-exceeded"]
    );
    assert_eq!(kinds_at("/error"), ["rolled-back", "deadline-exceeded"]);
    assert!(rx.requests("/other").is_empty());
    notifier.stop().await;
}

#[tokio::test]
async fn garbage_on_the_events_subject_is_counted_dead_lettered_and_skipped() {
    let (nats, js) = nats().await;
    let rx = Receiver::start().await;
    let yaml = format!(
        "defaultProvider: hook\nproviders: [{{ name: hook, type: webhook, url: \"{}\" }}]\n",
        rx.url("/hook")
    );
    let mut notifier = Notifier::start(&nats, &yaml).await;
    publish_raw(
        &js,
        "aviary.events.test.podinfo",
        "garbage-1",
        b"not json {".to_vec(),
    )
    .await;
    let mut foreign = serde_json::to_value(event(EventKind::Started, "podinfo", 1)).unwrap();
    foreign["type"] = "com.example.other".into();
    publish_raw(
        &js,
        "aviary.events.test.podinfo",
        "foreign-1",
        foreign.to_string().into_bytes(),
    )
    .await;
    publish(&js, &event(EventKind::Started, "podinfo", 2)).await;

    eventually(DEADLINE, "the valid event posted", || async {
        (rx.delivered("/hook").len() == 1).then_some(())
    })
    .await;
    all_acked(&js).await;
    assert_eq!(event_id(&rx.delivered("/hook")[0]), "test/podinfo/2/2");
    assert_eq!(notifier.metrics().invalid_events("json"), 1);
    assert_eq!(notifier.metrics().invalid_events("unknown_type"), 1);
    // The undecodable one is kept in the dead-letter stream, as received, with why.
    let dead = js.get_stream(aviary_bus::names::STREAM_DEAD).await.unwrap();
    let kept = dead
        .get_last_raw_message_by_subject("aviary.dead.aviary.events.test.podinfo")
        .await
        .unwrap();
    assert_eq!(&kept.payload[..], b"not json {");
    let why = kept
        .headers
        .get(aviary_bus::typed::DEAD_REASON)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    assert!(why.starts_with("undecodable event"), "{why}");
    let scraped = notifier.scrape().await;
    assert!(
        scraped.contains("aviary_notifier_invalid_events_total{reason=\"json\"} 1"),
        "{scraped}"
    );
    assert!(
        scraped.contains("aviary_notifier_posts_total{provider=\"hook\",outcome=\"delivered\"} 1"),
        "{scraped}"
    );
    eventually(DEADLINE, "lag metric shows nothing pending", || async {
        let scraped = notifier.scrape().await;
        scraped
            .contains("aviary_notifier_consumer_pending 0")
            .then_some(())
    })
    .await;
    notifier.stop().await;
}

#[tokio::test]
async fn a_restart_mid_flight_posts_every_event_exactly_once() {
    let (nats, js) = nats().await;
    let rx = Receiver::start().await;
    // Slow receivers, so the first notifier is stopped with posts in flight and queued.
    rx.set("/hook", Mode::Delay(Duration::from_millis(100)));
    rx.set("/discord", Mode::Delay(Duration::from_millis(100)));
    let yaml = format!(
        r#"
defaultProvider: hook
providers:
  - {{ name: hook, type: webhook, url: "{}" }}
  - {{ name: discord, type: discord, url: "{}" }}
rollouts:
  test/podinfo: [{{ provider: discord }}]
"#,
        rx.url("/hook"),
        rx.url("/discord"),
    );
    const EVENTS: u64 = 20;
    for seq in 0..EVENTS {
        publish(&js, &event(EventKind::Started, "podinfo", seq)).await;
    }
    // A short drain: the first notifier hands most events back unsettled.
    let mut first = Notifier::start_with(&nats, &yaml, &["--drain-timeout-ms", "200"]).await;
    eventually(DEADLINE, "some posts delivered", || async {
        (rx.delivered("/hook").len() >= 3).then_some(())
    })
    .await;
    let first_metrics = first.metrics().clone();
    first.stop().await;
    // The test only means something if the first notifier left work unsettled.
    assert!(
        first_metrics.posts("hook", "abandoned") > 0,
        "nothing was handed back"
    );
    let after_first = rx.delivered("/hook").len();
    assert!(
        after_first < EVENTS as usize,
        "stopped too late to test anything"
    );

    let mut second = Notifier::start(&nats, &yaml).await;
    eventually(DEADLINE, "every event posted to both providers", || async {
        (rx.counts("/hook").len() == EVENTS as usize
            && rx.counts("/discord").len() == EVENTS as usize)
            .then_some(())
    })
    .await;
    all_acked(&js).await;
    assert!(second.metrics().posts("hook", "delivered") > 0);
    for path in ["/hook", "/discord"] {
        let counts = rx.counts(path);
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
        assert!(twice.is_empty(), "{path}: posted more than once: {twice:?}");
    }
    second.stop().await;

    // Replay the whole stream to a fresh notifier: the delivered ids in KV stop every re-post.
    let stream = js.get_stream("AVIARY_EVENTS").await.unwrap();
    stream.delete_consumer("aviary-notifier").await.unwrap();
    let third = Notifier::start(&nats, &yaml).await;
    eventually(
        DEADLINE,
        "every replayed event recognised as posted",
        || async {
            let m = third.metrics();
            (m.posts("hook", "duplicate") == EVENTS && m.posts("discord", "duplicate") == EVENTS)
                .then_some(())
        },
    )
    .await;
    assert_eq!(rx.delivered("/hook").len(), EVENTS as usize);
    assert_eq!(rx.delivered("/discord").len(), EVENTS as usize);
}

#[tokio::test]
async fn posts_arrive_after_the_receiver_comes_back() {
    let (nats, js) = nats().await;
    // Reserve a port and close it: the receiver is not listening yet.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/hook");
    let yaml = format!(
        "{FAST_RETRY}defaultProvider: hook\nproviders: [{{ name: hook, type: webhook, url: \"{url}\", timeout: 1s }}]\n"
    );
    let mut notifier = Notifier::start(&nats, &yaml).await;
    for seq in 0..5 {
        publish(&js, &event(EventKind::Started, "podinfo", seq)).await;
    }
    eventually(DEADLINE, "connection failures retried", || async {
        (notifier.metrics().retries("hook") >= 3).then_some(())
    })
    .await;

    // Up, but failing with 503 for a while.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let rx = Receiver::default();
    rx.set("/hook", Mode::Status(503));
    let rx = rx.serve(listener);
    eventually(DEADLINE, "503s answered", || async {
        (rx.requests("/hook").len() >= 3).then_some(())
    })
    .await;
    assert!(rx.delivered("/hook").is_empty());

    rx.set("/hook", Mode::Ok);
    eventually(DEADLINE, "every event posted", || async {
        (rx.counts("/hook").len() == 5).then_some(())
    })
    .await;
    all_acked(&js).await;
    assert!(
        rx.counts("/hook").values().all(|n| *n == 1),
        "{:?}",
        rx.counts("/hook")
    );
    assert_eq!(notifier.metrics().dead_letters("hook"), 0);
    notifier.stop().await;
}

#[tokio::test]
async fn a_429_waits_for_retry_after() {
    let (nats, js) = nats().await;
    let rx = Receiver::start().await;
    rx.set("/slack", Mode::RateLimitOnce(1));
    // Backoff alone would retry after 10-20 ms; only Retry-After explains a 1 s wait.
    let yaml = format!(
        "retry: {{ initialBackoff: 20ms, maxBackoff: 20ms, maxAttempts: 5, maxElapsed: 30s }}\n\
         defaultProvider: slack\nproviders: [{{ name: slack, type: slack, url: \"{}\" }}]\n",
        rx.url("/slack")
    );
    let mut notifier = Notifier::start(&nats, &yaml).await;
    publish(&js, &event(EventKind::Halted, "podinfo", 1)).await;
    eventually(DEADLINE, "posted after the rate limit", || async {
        (rx.delivered("/slack").len() == 1).then_some(())
    })
    .await;
    let requests = rx.requests("/slack");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].status, 429);
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
    assert_eq!(notifier.metrics().retries("slack"), 1);
    notifier.stop().await;
}

#[tokio::test]
async fn a_failing_provider_is_dead_lettered_and_does_not_hold_up_the_others() {
    let (nats, js) = nats().await;
    let rx = Receiver::start().await;
    rx.set("/hang", Mode::Hang);
    rx.set("/gone", Mode::Status(404));
    let yaml = format!(
        r#"
retry: {{ initialBackoff: 50ms, maxBackoff: 100ms, maxAttempts: 2, maxElapsed: 60s }}
providers:
  - {{ name: hang, type: slack, url: "{}", timeout: 1s }}
  - {{ name: gone, type: discord, url: "{}" }}
  - {{ name: good, type: webhook, url: "{}" }}
rollouts:
  test/podinfo:
    - {{ provider: hang }}
    - {{ provider: gone }}
    - {{ provider: good }}
"#,
        rx.url("/hang"),
        rx.url("/gone"),
        rx.url("/good"),
    );
    let mut notifier = Notifier::start(&nats, &yaml).await;
    let ids: Vec<String> = (0..3)
        .map(|seq| event(EventKind::RolledBack, "podinfo", seq).id)
        .collect();
    for seq in 0..3 {
        publish(&js, &event(EventKind::RolledBack, "podinfo", seq)).await;
    }
    eventually(DEADLINE, "the good provider got every post", || async {
        (rx.delivered("/good").len() == 3).then_some(())
    })
    .await;
    // Each post to the hanging provider takes two 1 s timeouts: the good provider was done
    // long before the first of them gave up.
    assert_eq!(notifier.metrics().dead_letters("hang"), 0);

    eventually(DEADLINE, "every failing post dead-lettered", || async {
        let m = notifier.metrics();
        (m.dead_letters("hang") == 3 && m.dead_letters("gone") == 3).then_some(())
    })
    .await;
    all_acked(&js).await;
    // 404 is permanent: one attempt each. The hanging one was tried twice each.
    assert_eq!(rx.requests("/gone").len(), 3);
    assert_eq!(rx.requests("/hang").len(), 6);

    let stream = js.get_stream("AVIARY_DEAD").await.unwrap();
    let mut dead = Vec::new();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        assert_eq!(m.subject.as_str(), "aviary.dead.notifier");
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        dead.push((s(&v, "/provider").to_owned(), s(&v, "/eventId").to_owned()));
        assert_eq!(s(&v, "/subject"), "aviary.events.test.podinfo");
        assert!(!s(&v, "/error").contains(&rx.url("/")), "{v}");
        assert_eq!(v["event"]["type"], "dev.aviary.rollout.rolled-back");
    }
    let dead: HashSet<(String, String)> = dead.into_iter().collect();
    let expected: HashSet<(String, String)> = ["hang", "gone"]
        .iter()
        .flat_map(|p| ids.iter().map(move |id| ((*p).to_owned(), id.clone())))
        .collect();
    assert_eq!(dead, expected);
    let scraped = notifier.scrape().await;
    assert!(
        scraped.contains("aviary_notifier_dead_letters_total{provider=\"gone\"} 3"),
        "{scraped}"
    );
    notifier.stop().await;
}
