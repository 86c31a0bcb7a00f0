//! One ingress, many rollouts; one rollout, many ingresses. Apply refuses a rollout that would
//! take a host and path another rollout holds on a shared ingress, naming it; route commands
//! carry each rollout's hosts and path prefix; a rollout over two ingresses checks both acks
//! (weights and mirror) and shows each ingress's observed split in its status.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aviary_bus::names;
use aviary_proto as pb;
use common::*;
use futures::StreamExt;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// An endpoint-mode rollout over `ingresses` with `service` (YAML flow, or empty for none).
fn manifest(name: &str, ingresses: &[&str], service: &str) -> String {
    let ingresses: Vec<String> = ingresses
        .iter()
        .map(|i| format!("{{ name: {i} }}"))
        .collect();
    let service = if service.is_empty() {
        String::new()
    } else {
        format!("  service: {service}\n")
    };
    format!(
        r#"apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata: {{ name: {name}, namespace: test }}
spec:
  ingresses: [{}]
{service}  primary: {{ name: {name}-v1, endpoints: ["127.0.0.1:9001"] }}
  canary: {{ name: {name}-v2, endpoints: ["127.0.0.1:9002"] }}
  progressDeadlineSeconds: 60
  analysis:
    interval: 300ms
    threshold: 2
    maxWeight: 50
    stepWeight: 25
    metrics:
      - name: request-success-rate
        thresholdRange: {{ min: 99 }}
"#,
        ingresses.join(", ")
    )
}

/// Every route command `ingress`'s responder was sent.
type Seen = Arc<Mutex<Vec<pb::DesiredRoute>>>;

/// Answers route commands for `ingress` with the split asked for, passed through `observe`
/// (what this data plane reads back), and keeps each command's route.
async fn responder(
    client: async_nats::Client,
    ingress: &str,
    observe: fn(&mut pb::RouteAck),
) -> Seen {
    let seen: Seen = Arc::default();
    let mut sub = client
        .subscribe(names::route_subject(ingress).unwrap())
        .await
        .unwrap();
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            let Ok(command) = pb::RouteCommand::decode(message.payload.clone()) else {
                continue;
            };
            let route = command.route.unwrap_or_default();
            kept.lock().unwrap().push(route.clone());
            let mut ack = pb::RouteAck {
                idempotency_key: command.idempotency_key,
                ingress: route.ingress,
                ok: true,
                primary_weight: route.primary_weight,
                canary_weight: route.canary_weight,
                mirror_percent: route.mirror_percent,
                error: String::new(),
                confirmed_at_ms: i64::try_from(aviary_scheduler::convert::now_ms()).unwrap(),
            };
            observe(&mut ack);
            if let Some(reply) = message.reply {
                let _ = client.publish(reply, ack.encode_to_vec().into()).await;
            }
        }
    });
    seen
}

fn as_asked(_: &mut pb::RouteAck) {}

async fn get(api: &mut RolloutServiceClient, name: &str) -> pb::RolloutStatus {
    api.get(pb::GetRequest {
        r#ref: Some(pb::RolloutRef::new("test", name)),
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap_or_default()
}

type RolloutServiceClient =
    aviary_proto::rollout_service_client::RolloutServiceClient<tonic::transport::Channel>;

#[tokio::test]
async fn apply_refuses_a_rollout_taking_a_host_and_path_another_holds_naming_it() {
    let nats = aviary_testkit::NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let edge = responder(client.clone(), "edge", as_asked).await;
    let port = aviary_testkit::free_port().unwrap();
    let scheduler = Replica::start(&nats.url(), port, &[]);
    let mut api = api(port).await;
    let apply = |manifest: String| {
        let mut api = api.clone();
        async move { api.apply(pb::ApplyRequest { manifest }).await }
    };

    apply(manifest("shop", &["edge"], "{ hosts: [shop.example] }"))
        .await
        .unwrap();
    apply(manifest(
        "api",
        &["edge"],
        "{ hosts: [shop.example], pathPrefix: /api }",
    ))
    .await
    .unwrap();
    apply(manifest("web", &["edge"], "")).await.unwrap();
    // Applying a rollout again is no conflict with itself.
    apply(manifest("shop", &["edge"], "{ hosts: [shop.example] }"))
        .await
        .unwrap();

    let taken = apply(manifest(
        "intruder",
        &["edge", "internal"],
        "{ hosts: [blog.example, shop.example] }",
    ))
    .await
    .unwrap_err();
    assert_eq!(taken.code(), Code::FailedPrecondition, "{taken:?}");
    for part in [
        "spec.service.hosts",
        "\"edge\"",
        "shop.example",
        "test/shop",
    ] {
        assert!(
            taken.message().contains(part),
            "{part}: {}",
            taken.message()
        );
    }
    // Two catch-alls on one ingress are a conflict too.
    let catch_all = apply(manifest("second-web", &["edge"], ""))
        .await
        .unwrap_err();
    assert_eq!(catch_all.code(), Code::FailedPrecondition);
    assert!(
        catch_all.message().contains("test/web"),
        "{}",
        catch_all.message()
    );
    // The same host on another ingress is no conflict.
    apply(manifest(
        "internal-shop",
        &["internal"],
        "{ hosts: [shop.example] }",
    ))
    .await
    .unwrap();
    let refused = api
        .get(pb::GetRequest {
            r#ref: Some(pb::RolloutRef::new("test", "intruder")),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "nothing was stored");

    // The route commands carry each rollout's selection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let selections: Vec<(String, Vec<String>, String)> = edge
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.rollout.clone().unwrap_or_default().name,
                    r.hosts.clone(),
                    r.path_prefix.clone(),
                )
            })
            .collect();
        let has = |name: &str, hosts: &[&str], prefix: &str| {
            selections
                .iter()
                .any(|(n, h, p)| n == name && h == hosts && p == prefix)
        };
        if has("shop", &["shop.example"], "/")
            && has("api", &["shop.example"], "/api")
            && has("web", &[], "/")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "route commands without their selections: {selections:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    scheduler.stop().await;
}

fn mirrors_ten_percent(ack: &mut pb::RouteAck) {
    ack.mirror_percent = 10;
}

#[tokio::test]
async fn a_rollout_over_two_ingresses_checks_both_acks_and_shows_each_split() {
    let nats = aviary_testkit::NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let _edge = responder(client.clone(), "edge", as_asked).await;
    let _internal = responder(client.clone(), "internal", as_asked).await;
    let _drifting = responder(client.clone(), "drifting", mirrors_ten_percent).await;
    let _verdicts =
        analyzer_responder(client.clone(), pb::Outcome::Pass, CancellationToken::new()).await;
    let port = aviary_testkit::free_port().unwrap();
    let scheduler = Replica::start(&nats.url(), port, &[]);
    let mut api = api(port).await;

    api.apply(pb::ApplyRequest {
        manifest: manifest("both", &["edge", "internal"], ""),
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = get(&mut api, "both").await;
        if status.canary_weight == 25 && status.ingresses.len() == 2 {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no step at 25% on both ingresses: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let splits: Vec<(&str, u32, u32, u32)> = status
        .ingresses
        .iter()
        .map(|i| {
            (
                i.ingress.as_str(),
                i.primary_weight,
                i.canary_weight,
                i.mirror_percent,
            )
        })
        .collect();
    assert_eq!(splits, [("edge", 75, 25, 0), ("internal", 75, 25, 0)]);
    assert!(status.ingresses.iter().all(|i| i.confirmed_at_ms > 0));
    // In Progressing since a moment of this run, by the scheduler's clock.
    let since = status.last_transition_at_ms;
    let now = i64::try_from(aviary_scheduler::convert::now_ms()).unwrap();
    assert!(since > 0 && since <= now, "lastTransitionAtMs {since}");
    wait_phase(&api, "both", pb::Phase::Succeeded, Duration::from_secs(30)).await;

    // One ingress reading back another mirror than asked halts the rollout, naming it; the
    // other ingress's ack alone confirms nothing.
    api.apply(pb::ApplyRequest {
        manifest: manifest("half", &["edge", "drifting"], "{ hosts: [half.example] }"),
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = get(&mut api, "half").await;
        if !status.halt_reason.is_empty() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no halt: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.halt_reason.contains("\"drifting\""), "{status:#?}");
    assert!(status.halt_reason.contains("mirror 10"), "{status:#?}");
    assert_eq!(status.phase(), pb::Phase::Initializing, "{status:#?}");
    assert!(status.ingresses.is_empty(), "{status:#?}");
    scheduler.stop().await;
}
