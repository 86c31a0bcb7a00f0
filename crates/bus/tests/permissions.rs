//! The permissions of `aviary_bus::permissions` on a real nats-server: each identity can do its
//! own work, and what it must not do is refused by the server. The shipped configuration
//! (`deploy/nats/permissions.conf`, and the Helm chart's copy), and the table in `docs/bus.md`
//! are generated from the same source; `AVIARY_REGENERATE=1` rewrites them.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use aviary_bus::kv::Bucket;
use aviary_bus::permissions::{self, identity};
use aviary_bus::{names, setup};
use aviary_testkit::NatsServer;
use common::{DEADLINE, TestResult};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const DOCS_BEGIN: &str =
    "<!-- permissions:begin (generated from crates/bus/src/permissions.rs) -->\n";
const DOCS_END: &str = "<!-- permissions:end -->";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `path` holds `want`; with `AVIARY_REGENERATE=1` it is made to.
fn up_to_date(path: &PathBuf, current: &str, want: &str) {
    if current == want {
        return;
    }
    if std::env::var_os("AVIARY_REGENERATE").is_some() {
        std::fs::write(path, want).expect("writing the generated file");
        return;
    }
    panic!(
        "{} is not what crates/bus/src/permissions.rs generates; run \
         AVIARY_REGENERATE=1 cargo test -p aviary-bus --test permissions",
        path.display()
    );
}

#[test]
fn the_shipped_config_and_the_docs_come_from_the_one_source() {
    // The shipped configuration, and the chart's copy that its bundled NATS loads.
    for path in [
        "deploy/nats/permissions.conf",
        "deploy/helm/aviary/files/nats-permissions.conf",
    ] {
        let config = workspace().join(path);
        let current = std::fs::read_to_string(&config).unwrap_or_default();
        up_to_date(&config, &current, &permissions::shipped_config());
    }

    let docs = workspace().join("docs/bus.md");
    let text = std::fs::read_to_string(&docs).expect("docs/bus.md");
    let begin = text.find(DOCS_BEGIN).expect("the permissions:begin marker") + DOCS_BEGIN.len();
    let end = text.find(DOCS_END).expect("the permissions:end marker");
    let want = format!(
        "{}{}{}",
        &text[..begin],
        permissions::markdown_table(),
        &text[end..]
    );
    up_to_date(&docs, &text, &want);
}

#[test]
fn no_identity_may_subscribe_to_another_inbox_or_all_inboxes() {
    let all = permissions::identities();
    for identity in &all {
        for subject in &identity.subscribe {
            assert!(
                !subject.starts_with("_INBOX")
                    || *subject == format!("{}.>", identity.inbox_prefix),
                "{} may subscribe to {subject}",
                identity.user
            );
        }
        assert!(
            identity.publish.iter().all(|s| !s.starts_with("_INBOX")),
            "{} publishes replies only through allow_responses",
            identity.user
        );
    }
    let mut prefixes: Vec<&str> = all.iter().map(|i| i.inbox_prefix.as_str()).collect();
    prefixes.sort_unstable();
    prefixes.dedup();
    assert_eq!(prefixes.len(), all.len(), "one inbox prefix each");
}

fn password(user: &str) -> String {
    format!("pw-{user}")
}

async fn permissioned() -> NatsServer {
    let config = permissions::nats_authorization(|user| format!("\"{}\"", password(user)));
    NatsServer::start_with_config(&config)
        .await
        .expect("nats-server with permissions")
}

/// A client of `user`, as the service connects (its inbox prefix), and the errors the server
/// sends it (permission violations).
async fn connect_as(
    server: &NatsServer,
    user: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let identity = identity(user).expect("a known identity");
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
        .custom_inbox_prefix(identity.inbox_prefix)
        .request_timeout(Some(Duration::from_secs(2)))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = tx.send(error.to_string());
                }
            }
        })
        .connect(server.url())
        .await
        .expect("connects");
    (client, rx)
}

/// Waits for the server's refusal naming `subject`.
async fn refused(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let seen = tokio::time::timeout(DEADLINE, async {
        while let Some(error) = errors.recv().await {
            if error.to_lowercase().contains("permissions violation") && error.contains(subject) {
                return;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "no refusal of {subject}");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    step: u32,
}

#[tokio::test]
async fn each_service_does_its_work_and_no_more() -> TestResult {
    let server = permissioned().await;
    let (scheduler, mut scheduler_errors) = connect_as(&server, "scheduler").await;
    let js = jetstream::new(scheduler.clone());
    setup::ensure_all(&js).await?;
    let rollouts: Bucket<Record> = Bucket::open(&js, names::BUCKET_ROLLOUTS).await?;
    let revision = rollouts.create("test.podinfo", &Record { step: 1 }).await?;
    rollouts
        .update("test.podinfo", &Record { step: 2 }, revision)
        .await?;
    assert_eq!(rollouts.keys().await?, vec!["test.podinfo".to_owned()]);

    // The analyzer answers the scheduler's request through allow_responses, into the
    // scheduler's own inbox.
    let (analyzer, mut analyzer_errors) = connect_as(&server, "analyzer").await;
    let mut requests = analyzer
        .queue_subscribe(names::ANALYSIS_REQUEST, names::QUEUE_ANALYZER.into())
        .await?;
    let responder = analyzer.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = responder.publish(reply, "verdict".into()).await;
            }
        }
    });
    // The subscription reaches the server in its own time (a flush only writes it out):
    // ask until someone listens.
    let reply = aviary_testkit::eventually(DEADLINE, "the analyzer answers", || async {
        scheduler
            .request(names::ANALYSIS_REQUEST, "request".into())
            .await
            .ok()
    })
    .await;
    assert_eq!(reply.payload.as_ref(), b"verdict");

    // A member cluster's analyzer (`--cluster eu`) answers on its cluster's subject too, and
    // the router agent's identity takes that cluster's route commands.
    let eu_analysis = names::analysis_subject(Some("eu"))?;
    let mut eu_requests = analyzer
        .queue_subscribe(eu_analysis.clone(), names::QUEUE_ANALYZER.into())
        .await?;
    let eu_responder = analyzer.clone();
    tokio::spawn(async move {
        while let Some(request) = eu_requests.next().await {
            if let Some(reply) = request.reply {
                let _ = eu_responder.publish(reply, "eu verdict".into()).await;
            }
        }
    });
    let reply = aviary_testkit::eventually(DEADLINE, "eu's analyzer answers", || async {
        scheduler
            .request(eu_analysis.clone(), "request".into())
            .await
            .ok()
    })
    .await;
    assert_eq!(reply.payload.as_ref(), b"eu verdict");

    // The analyzer may not write rollouts.
    let analyzer_js = jetstream::new(analyzer.clone());
    let subject = format!("$KV.{}.test.podinfo", names::BUCKET_ROLLOUTS);
    assert!(
        analyzer_js
            .publish(subject.clone(), "x".into())
            .await
            .is_ok()
    );
    refused(&mut analyzer_errors, &subject).await;

    // The notifier may not write desired routes, nor read another service's replies.
    let (notifier, mut notifier_errors) = connect_as(&server, "notifier").await;
    let routes = format!("$KV.{}.edge.test.podinfo", names::BUCKET_ROUTES);
    notifier.publish(routes.clone(), "x".into()).await?;
    refused(&mut notifier_errors, &routes).await;
    for inbox in [
        format!("{}.>", names::inbox_prefix("aviary-scheduler")),
        "_INBOX.>".to_owned(),
    ] {
        let _sub = notifier.subscribe(inbox.clone()).await?;
        refused(&mut notifier_errors, &inbox).await;
    }

    // Nothing refused got through: the record is the scheduler's last write, and no route
    // was stored.
    let entry = rollouts.get("test.podinfo").await?.ok_or("record lost")?;
    assert_eq!(entry.value, Record { step: 2 });
    let stored_routes = js.get_key_value(names::BUCKET_ROUTES).await?;
    assert!(stored_routes.get("edge.test.podinfo").await?.is_none());

    // The router agent reads routes and writes its capabilities, but not rollouts.
    let (agent, mut agent_errors) = connect_as(&server, "router-agent").await;
    let agent_js = jetstream::new(agent.clone());
    let agents: Bucket<Record> = Bucket::open(&agent_js, names::BUCKET_AGENTS).await?;
    agents.put("edge", &Record { step: 0 }).await?;
    let agent_routes: Bucket<Record> = Bucket::open(&agent_js, names::BUCKET_ROUTES).await?;
    assert!(agent_routes.keys().await?.is_empty());
    let subject = format!("$KV.{}.test.podinfo", names::BUCKET_ROLLOUTS);
    agent.publish(subject.clone(), "x".into()).await?;
    refused(&mut agent_errors, &subject).await;
    let eu_route = names::cluster_route_subject(Some("eu"), "edge")?;
    let mut eu_commands = agent.subscribe(eu_route.clone()).await?;
    agent.flush().await?;
    // The subscription reaches the server in its own time: send until one arrives.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let command = loop {
        scheduler.publish(eu_route.clone(), "route".into()).await?;
        if let Ok(Some(command)) =
            tokio::time::timeout(Duration::from_millis(200), eu_commands.next()).await
        {
            break command;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "eu's route command never arrived"
        );
    };
    assert_eq!(command.payload.as_ref(), b"route");
    // The notifier may not send route commands to any cluster.
    notifier.publish(eu_route.clone(), "x".into()).await?;
    refused(&mut notifier_errors, &eu_route).await;

    // The read-only CLI reads the audit stream and nothing else.
    let (cli, mut cli_errors) = connect_as(&server, "cli-read").await;
    let cli_js = jetstream::new(cli.clone());
    cli_js.get_stream(names::STREAM_EVENTS).await?;
    let subject = names::events_subject("test", "podinfo")?;
    cli.publish(subject.clone(), "forged".into()).await?;
    refused(&mut cli_errors, &subject).await;

    // The scheduler itself never hit a refusal.
    assert!(scheduler_errors.try_recv().is_err(), "scheduler refused");
    Ok(())
}

/// Whether NATS subject `pattern` (with `*` and `>`) matches `subject`.
fn matches(pattern: &str, subject: &str) -> bool {
    let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[tokio::test]
async fn every_identity_is_refused_what_is_not_its_own() {
    let server = permissioned().await;
    // What would move traffic, decide a rollout or forge its audit trail.
    let sensitive = [
        format!("$KV.{}.test.podinfo", names::BUCKET_ROLLOUTS),
        format!("$KV.{}.edge.test.podinfo", names::BUCKET_ROUTES),
        format!("$KV.{}.test.podinfo", names::BUCKET_LEASES),
        format!("$KV.{}.test.podinfo.approval", names::BUCKET_GATES),
        names::route_subject("edge").unwrap(),
        names::events_subject("test", "podinfo").unwrap(),
    ];
    let all = permissions::identities();
    for (i, identity) in all.iter().enumerate() {
        let (client, mut errors) = connect_as(&server, identity.user).await;
        let mut refusals = 0;
        for subject in &sensitive {
            if identity.publish.iter().any(|p| matches(p, subject)) {
                continue;
            }
            client.publish(subject.clone(), "x".into()).await.unwrap();
            refused(&mut errors, subject).await;
            refusals += 1;
        }
        // Nobody reads another service's replies.
        let other = &all[(i + 1) % all.len()];
        let inbox = format!("{}.>", other.inbox_prefix);
        let _sub = client.subscribe(inbox.clone()).await.unwrap();
        refused(&mut errors, &inbox).await;
        // Only the scheduler decides rollouts and routes and writes the audit trail; only the
        // gate service writes gates.
        let allowed = match identity.user {
            "scheduler" => 5,
            "gate" => 1,
            _ => 0,
        };
        assert_eq!(
            sensitive.len() - refusals,
            allowed,
            "{} may publish to {:?}",
            identity.user,
            sensitive
                .iter()
                .filter(|s| identity.publish.iter().any(|p| matches(p, s)))
                .collect::<Vec<_>>()
        );
    }
}
