//! One ingress, many rollouts; one rollout, many ingresses (issue 13, items 11 and 12).
//!
//! Two rollouts on one Envoy listener, each taking its own host, progress and end on their own:
//! one is promoted while the other is rolled back, and each host's clients only ever see their
//! own service's versions. Apply refuses a third rollout on a host one of them holds, naming it.
//! A rollout over an Envoy and an NGINX ingress steps both, shows each one's observed split in
//! its status, and clients of both see the split.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::time::{Duration, Instant};

use aviary_e2e::*;
use aviary_proto as pb;

/// 25 % → 50 % → promotion, one analysis every 3 s; two failed checks roll back.
const CANARY: &str = "    interval: 3s
    threshold: 2
    maxWeight: 50
    stepWeight: 25
    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }
        minRequests: 10";

/// A rollout of the apps `primary` → `canary` on ingress `edge`, taking only `host`.
fn on_host(name: &str, host: &str, primary: &App, canary: &App) -> String {
    format!(
        "apiVersion: aviary.dev/v1alpha1\nkind: Rollout\nmetadata: {{ name: {name}, namespace: {NS} }}\nspec:\n  ingresses: [{{ name: edge }}]\n  service: {{ hosts: [{host}] }}\n  primary: {{ name: {name}-v1, endpoints: [\"{}\"] }}\n  canary: {{ name: {name}-v2, endpoints: [\"{}\"] }}\n  progressDeadlineSeconds: 120\n  analysis:\n{CANARY}\n",
        primary.addr, canary.addr
    )
}

/// Waits until a request with `headers` is answered by a version starting with `service`.
async fn routed(url: &str, headers: &[(&str, &str)], service: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("{headers:?} routed to {service}*"),
        || async move {
            probe(url, headers)
                .await
                .version
                .starts_with(service)
                .then_some(())
        },
    )
    .await;
}

/// The versions that answered `summary`'s requests.
fn versions(summary: &Summary) -> Vec<&str> {
    summary.by_version.keys().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rollouts_on_one_envoy_listener_progress_and_end_independently() {
    let stack = Stack::start(StackOptions::default()).await;
    let healthy = AppBehaviour::default();
    let failing = AppBehaviour {
        error_rate: 0.3,
        ..Default::default()
    };
    let (shop_v1, shop_v2) = (
        App::start("shop-v1", &healthy).await,
        App::start("shop-v2", &healthy).await,
    );
    let (blog_v1, blog_v2) = (
        App::start("blog-v1", &healthy).await,
        App::start("blog-v2", &failing).await,
    );
    stack
        .try_apply(&on_host("shop", "shop.example", &shop_v1, &shop_v2))
        .await
        .unwrap();
    stack
        .try_apply(&on_host("blog", "blog.example", &blog_v1, &blog_v2))
        .await
        .unwrap();
    let shop_host = [("host", "shop.example")];
    let blog_host = [("host", "blog.example")];
    // The first step follows at once: wait for each host to be routed at all.
    routed(&stack.url(), &shop_host, "shop-").await;
    routed(&stack.url(), &blog_host, "blog-").await;

    // A third rollout on a host the shop holds is refused, naming it.
    let (other_v1, other_v2) = (
        App::start("other-v1", &healthy).await,
        App::start("other-v2", &healthy).await,
    );
    let refused = stack
        .try_apply(&on_host("other", "shop.example", &other_v1, &other_v2))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains(&format!("{NS}/shop")),
        "{}",
        refused.message()
    );

    let shop = Traffic::start(&stack.url(), 20, &shop_host);
    let blog = Traffic::start(&stack.url(), 20, &blog_host);
    let started = Instant::now();
    stack
        .wait_rolled_back("blog", Duration::from_secs(60))
        .await;
    let blog_ended = Instant::now();
    // The blog's rollback left the shop's rollout going.
    let shop_then = stack.get("shop").await.status.unwrap();
    assert_ne!(shop_then.phase(), pb::Phase::Failed, "{shop_then:#?}");
    stack
        .wait_phase("shop", pb::Phase::Succeeded, Duration::from_secs(60))
        .await;
    let shop_ended = Instant::now();
    let blog_after = blog
        .wait_answers(blog_ended, 40, Duration::from_secs(10))
        .await;
    let shop_after = shop
        .wait_answers(shop_ended, 40, Duration::from_secs(10))
        .await;
    let shop_during = shop.window(started, Some(shop_ended));
    let blog_during = blog.window(started, Some(blog_ended));
    let (shop_all, blog_all) = (shop.stop().await, blog.stop().await);

    // Each host's clients saw only their own service, each its own split.
    assert_eq!(versions(&shop_all), ["shop-v1", "shop-v2"], "{shop_all:?}");
    assert_eq!(versions(&blog_all), ["blog-v1", "blog-v2"], "{blog_all:?}");
    assert!(share(&shop_during, "shop-v2") > 0.1, "{shop_during:?}");
    assert!(share(&blog_during, "blog-v2") > 0.05, "{blog_during:?}");
    // The shop's canary never failed a request; the blog's failures were its canary's only.
    assert_eq!(
        shop_all.by_status.keys().collect::<Vec<_>>(),
        [&200],
        "{shop_all:?}"
    );
    assert!(
        blog_all.by_status.get(&500).is_some_and(|n| *n > 0),
        "{blog_all:?}"
    );
    // And each ended its own way.
    assert_eq!(
        shop_after.by_version.get("shop-v2"),
        Some(&shop_after.sent),
        "{shop_after:?}"
    );
    assert_eq!(
        blog_after.by_version.get("blog-v1"),
        Some(&blog_after.sent),
        "{blog_after:?}"
    );
    let blog_status = stack.get("blog").await.status.unwrap();
    assert_eq!(blog_status.phase(), pb::Phase::Failed, "{blog_status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_over_envoy_and_nginx_shows_each_ingress_split() {
    let stack = Stack::start(StackOptions {
        nginx: true,
        ..Default::default()
    })
    .await;
    let manifest = stack.manifest("podinfo", CANARY, "").replace(
        "ingresses: [{ name: edge }]",
        "ingresses: [{ name: edge }, { name: internal }]",
    );
    assert!(manifest.contains("{ name: internal }"), "{manifest}");
    stack.apply(&manifest).await;
    // `apply` waited for Envoy's route; NGINX confirms its own a moment apart (once its old
    // workers no longer accept), and then the status lists it.
    stack
        .wait_status("podinfo", "NGINX's ack", Duration::from_secs(30), |s| {
            s.ingresses.iter().any(|i| i.ingress == "internal")
        })
        .await;
    let edge = Traffic::start(&stack.url(), 20, &[]);
    let internal = Traffic::start(&stack.nginx_url(), 20, &[]);

    let status = stack
        .wait_status(
            "podinfo",
            "50% on both ingresses",
            Duration::from_secs(40),
            |s| s.canary_weight == 50 && s.ingresses.len() == 2,
        )
        .await;
    let at_half = Instant::now();
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
    assert_eq!(
        splits,
        [("edge", 50, 50, 0), ("internal", 50, 50, 0)],
        "{status:#?}"
    );
    assert!(
        status.ingresses.iter().all(|i| i.confirmed_at_ms > 0),
        "{status:#?}"
    );

    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(40))
        .await;
    let promoted = Instant::now();
    let edge_during = edge.window(at_half, Some(promoted));
    let internal_during = internal.window(at_half, Some(promoted));
    let internal_after = internal
        .wait_answers(promoted, 40, Duration::from_secs(10))
        .await;
    let (edge_all, internal_all) = (edge.stop().await, internal.stop().await);
    assert_eq!(edge_all.errors, 0, "{edge_all:?}");
    // No request NGINX answered failed; a keep-alive connection an old worker closes at a
    // reload can end a request unanswered, as NGINX does for any client (at most a few).
    assert_eq!(
        internal_all.by_status.keys().collect::<Vec<_>>(),
        [&200],
        "{internal_all:?}"
    );
    assert!(
        internal_all.errors * 50 <= internal_all.sent,
        "{internal_all:?}"
    );
    assert!(share(&edge_during, "v2") > 0.2, "{edge_during:?}");
    assert!(share(&internal_during, "v2") > 0.2, "{internal_during:?}");
    assert_eq!(versions(&internal_after), ["v2"], "{internal_after:?}");
    let done = stack.get("podinfo").await.status.unwrap();
    let names: Vec<&str> = done.ingresses.iter().map(|i| i.ingress.as_str()).collect();
    assert_eq!(names, ["edge", "internal"], "{done:#?}");
}
