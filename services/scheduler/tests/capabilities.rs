//! `Apply` refuses a spec that an ingress's router agent published it cannot express, naming
//! the field; an ingress without a published agent is accepted.

mod common;

use aviary_bus::kv::Bucket;
use aviary_bus::names;
use aviary_bus::typed::Proto;
use aviary_proto as pb;
use aviary_testkit::{NatsServer, free_port};
use common::*;
use tonic::Code;

fn mirror_manifest(name: &str, ingress: &str) -> String {
    format!(
        r#"apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata: {{ name: {name}, namespace: test }}
spec:
  ingresses: [{{ name: {ingress} }}]
  primary: {{ name: app-v1, endpoints: ["127.0.0.1:9001"] }}
  canary: {{ name: app-v2, endpoints: ["127.0.0.1:9002"] }}
  analysis:
    interval: 1m
    threshold: 2
    iterations: 5
    mirror: true
"#
    )
}

/// Publishes what a HAProxy router agent of ingress "lb" publishes at start (protobuf, key =
/// ingress) in `js`'s agents bucket: weights, nothing else.
async fn publish_haproxy_lb(js: &async_nats::jetstream::Context) {
    let agents: Bucket<pb::AgentCapabilities, Proto> = Bucket::open(js, names::BUCKET_AGENTS)
        .await
        .expect("agents bucket");
    agents
        .put(
            &names::agent_key("lb").expect("a key"),
            &pb::AgentCapabilities {
                ingress: "lb".into(),
                provider: "haproxy".into(),
                weights: true,
                ..Default::default()
            },
        )
        .await
        .expect("published");
}

#[tokio::test]
async fn apply_refuses_what_the_ingress_cannot_express() {
    let nats = NatsServer::start().await.unwrap();
    let port = free_port().unwrap();
    let scheduler = Replica::start(&nats.url(), port, &[]);
    let mut api = api(port).await;

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    publish_haproxy_lb(&js).await;

    let error = api
        .apply(pb::ApplyRequest {
            manifest: mirror_manifest("mirrored", "lb"),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        error.message(),
        r#"spec.analysis.mirror: ingress "lb" (haproxy) cannot mirror traffic"#
    );
    let missing = api
        .get(pb::GetRequest {
            r#ref: Some(pb::RolloutRef::new("test", "mirrored")),
        })
        .await
        .unwrap_err();
    assert_eq!(
        missing.code(),
        Code::NotFound,
        "a refused spec is not stored"
    );

    // A weighted canary is within HAProxy's means.
    api.apply(pb::ApplyRequest {
        manifest: canary_manifest("weighted", 10, 50, 1).replace("name: edge", "name: lb"),
    })
    .await
    .unwrap();

    // No agent has published for "edge": accepted (the agent refuses at apply time instead).
    api.apply(pb::ApplyRequest {
        manifest: mirror_manifest("unregistered", "edge"),
    })
    .await
    .unwrap();

    scheduler.stop().await;
}

/// A rollout over member cluster eu's ingress `ingress`, with `analysis` lines.
fn member_manifest(name: &str, ingress: &str, analysis: &str) -> String {
    format!(
        r#"apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata: {{ name: {name}, namespace: test }}
spec:
  clusters:
    - name: eu
      ingresses: [{{ name: {ingress} }}]
  primary: {{ name: app-v1, endpoints: ["127.0.0.1:9001"] }}
  canary: {{ name: app-v2, endpoints: ["127.0.0.1:9002"] }}
  analysis:
    interval: 1m
    threshold: 2
{analysis}
"#
    )
}

#[tokio::test]
async fn apply_checks_a_member_clusters_ingresses_in_that_cluster() {
    let hub = aviary_testkit::NatsHub::start().await.unwrap();
    let leaf = hub.start_leaf("eu").await.unwrap();
    hub.wait_leaves(1).await.unwrap();
    let port = free_port().unwrap();
    let scheduler = Replica::start(&hub.server().url(), port, &[]);
    let mut api = api(port).await;

    // What eu's HAProxy router agent publishes, in eu's own JetStream domain (it runs on eu's
    // leaf server); the hub's bucket has nothing for "lb".
    let client = async_nats::connect(leaf.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // The buckets an agent makes at start in its own server's JetStream.
    aviary_bus::setup::ensure_all(&js).await.unwrap();
    publish_haproxy_lb(&js).await;

    let mirrored = "    iterations: 5\n    mirror: true";
    let error = api
        .apply(pb::ApplyRequest {
            manifest: member_manifest("mirrored", "lb", mirrored),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert_eq!(
        error.message(),
        r#"spec.analysis.mirror: ingress "eu/lb" (haproxy) cannot mirror traffic"#
    );
    // Within HAProxy's means: accepted.
    let weighted = "    maxWeight: 50\n    stepWeight: 10";
    api.apply(pb::ApplyRequest {
        manifest: member_manifest("weighted", "lb", weighted),
    })
    .await
    .unwrap();
    // A second rollout on eu's "lb" with the same hosts is refused, naming eu's ingress.
    let error = api
        .apply(pb::ApplyRequest {
            manifest: member_manifest("again", "lb", weighted),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(
        error.message().contains(r#"on ingress "eu/lb""#)
            && error.message().contains("test/weighted"),
        "{}",
        error.message()
    );

    scheduler.stop().await;
}
