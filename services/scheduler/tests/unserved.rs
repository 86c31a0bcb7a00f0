//! A rollout whose ingress no router agent serves (or whose agent refuses every route): its
//! route is sent again later each time, not every few seconds for ever, and an aborted one
//! whose rollback route is never acknowledged can still be deleted with force, audited.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // test stand-ins: a panic is the failure report

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aviary_bus::names;
use aviary_proto as pb;
use aviary_testkit::{NatsServer, free_port};
use common::*;
use futures::StreamExt;
use prost::Message;
use tonic::Code;

/// Refuses every route command for `ingress` at once, as an agent that cannot apply it;
/// returns when each arrived.
async fn refusing_agent(client: async_nats::Client, ingress: &str) -> Arc<Mutex<Vec<Instant>>> {
    let seen: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let mut sub = client
        .subscribe(names::route_subject(ingress).unwrap())
        .await
        .unwrap();
    let arrivals = seen.clone();
    tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            let Ok(command) = pb::RouteCommand::decode(message.payload.clone()) else {
                continue;
            };
            arrivals.lock().unwrap().push(Instant::now());
            let ack = pb::RouteAck {
                idempotency_key: command.idempotency_key,
                ingress: command.route.unwrap_or_default().ingress,
                ok: false,
                error: "no listener for this ingress".into(),
                ..Default::default()
            };
            if let Some(reply) = message.reply {
                let _ = client.publish(reply, ack.encode_to_vec().into()).await;
            }
        }
    });
    seen
}

fn podinfo(reason: &str) -> pb::CommandRequest {
    pb::CommandRequest {
        r#ref: Some(pb::RolloutRef::new("test", "podinfo")),
        reason: reason.into(),
    }
}

#[tokio::test]
async fn a_route_no_agent_applies_backs_off_and_the_rollout_can_be_deleted_by_force() {
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let sends = refusing_agent(client.clone(), "edge").await;
    let port = free_port().unwrap();
    let scheduler = Replica::start(&nats.url(), port, &[]);
    let mut api = api(port).await;
    api.apply(pb::ApplyRequest {
        manifest: canary_manifest("podinfo", 50, 50, 1),
    })
    .await
    .unwrap();

    // The first route is refused at once; it is sent again after 5 s, then after 10 s.
    aviary_testkit::eventually(Duration::from_secs(30), "three sends of the route", || {
        let n = sends.lock().unwrap().len();
        async move { (n >= 3).then_some(()) }
    })
    .await;
    let at = sends.lock().unwrap().clone();
    let (first, second) = (at[1] - at[0], at[2] - at[1]);
    assert!(first >= Duration::from_millis(4_500), "{first:?}");
    assert!(
        second >= Duration::from_millis(9_500),
        "the second retry waits twice as long: {second:?}"
    );

    // Aborted, it is Failed but its rollback route is never acknowledged either.
    api.abort(podinfo("no agent")).await.unwrap();
    wait_phase(&api, "podinfo", pb::Phase::Failed, Duration::from_secs(10)).await;
    let refused = api.delete(podinfo("cleanup")).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("not acknowledged") && refused.message().contains("force"),
        "{refused:?}"
    );

    // The driver keeps retrying the route meanwhile: a delete that loses the race to its write
    // is `Aborted` ("try again"), as the API documents, and is asked again.
    let deleted = aviary_testkit::eventually(Duration::from_secs(10), "forced delete", || {
        let mut api = api.clone();
        async move {
            match api.force_delete(podinfo("ingress retired")).await {
                Ok(r) => Some(r.into_inner()),
                Err(e) if e.code() == Code::Aborted => None,
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
    assert_eq!(deleted.status.unwrap().phase, pb::Phase::Failed as i32);
    let gone = api
        .get(pb::GetRequest {
            r#ref: Some(pb::RolloutRef::new("test", "podinfo")),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let events = audit_events(&client, "podinfo").await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "dev.aviary.rollout.deleted", "{events:#?}");
    let reason = last["data"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("deleted by force (Failed, route ")
            && reason.ends_with("not acknowledged by every ingress): ingress retired"),
        "{reason}"
    );
    scheduler.stop().await;
}
