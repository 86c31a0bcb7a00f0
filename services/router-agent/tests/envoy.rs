//! The Envoy provider against a real Envoy with real traffic on loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aviary_proto::string_match::Kind;
use aviary_router_agent::provider::ApplyError;
use aviary_router_agent::provider::envoy::EnvoyProvider;
use aviary_testkit::envoy::{Envoy, EnvoyOptions};
use common::*;
use tokio_util::sync::CancellationToken;

struct Fixture {
    provider: Arc<EnvoyProvider>,
    envoy: Envoy,
    primary: Backend,
    canary: Backend,
    shutdown: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn fixture() -> Fixture {
    let primary = Backend::start("podinfo-v1").await;
    let canary = Backend::start("podinfo-v2").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let provider = Arc::new(EnvoyProvider::new("edge", Duration::from_secs(20)));
    let shutdown = CancellationToken::new();
    let (serving, token) = (provider.clone(), shutdown.clone());
    tokio::spawn(async move { serving.serve(listener, token).await.unwrap() });
    let envoy = Envoy::start(EnvoyOptions::new(port, "edge")).await.unwrap();
    Fixture {
        provider,
        envoy,
        primary,
        canary,
        shutdown,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_real_traffic() {
    let f = fixture().await;
    let d = desired("edge", &f.primary, &f.canary, 10);
    let observed = f.provider.apply(&route(&d)).await.unwrap();
    assert_eq!((observed.primary_weight, observed.canary_weight), (90, 10));

    // Read back through the admin API too: clusters named <namespace>_<backend>, weights 90/10.
    let mut clusters = f.envoy.dynamic_cluster_names().await.unwrap();
    clusters.sort();
    assert_eq!(clusters, ["test_podinfo-v1", "test_podinfo-v2"]);
    let routes = f.envoy.dynamic_routes().await.unwrap();
    let weighted = routes[0]
        .pointer("/virtual_hosts/0/routes/0/route/weighted_clusters/clusters")
        .unwrap()
        .to_string();
    assert!(
        weighted.contains("\"weight\":90") && weighted.contains("\"weight\":10"),
        "{weighted}"
    );

    let tally = traffic(&f.envoy.url(), 2000, &[]).await;
    assert_share(&tally, "podinfo-v2", 2000, 10.0, 3.0);

    for (weight, expected) in [(0, 0.0), (100, 100.0)] {
        let d = desired("edge", &f.primary, &f.canary, weight);
        f.provider.apply(&route(&d)).await.unwrap();
        let tally = traffic(&f.envoy.url(), 300, &[]).await;
        assert_share(&tally, "podinfo-v2", 300, expected, 0.0);
    }
    assert!(
        f.provider
            .in_sync(&route(&desired("edge", &f.primary, &f.canary, 100)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_cookie_matches_reach_the_canary() {
    let f = fixture().await;
    let mut d = desired("edge", &f.primary, &f.canary, 0);
    d.matches = vec![
        header("x-canary", Kind::Exact("insider".into())),
        header("x-user", Kind::Regex("^beta-[0-9]+$".into())),
        header("x-prefix", Kind::Prefix("pre".into())),
        cookie("canary", Kind::Exact("always".into())),
    ];
    f.provider.apply(&route(&d)).await.unwrap();
    let url = f.envoy.url();
    let cases: [&[(&str, &str)]; 5] = [
        &[("x-canary", "insider")],
        &[("x-user", "beta-42")],
        &[("x-prefix", "prefixed")],
        &[("cookie", "canary=always")],
        &[("cookie", "a=b; canary=always; c=d")],
    ];
    for headers in cases {
        let tally = traffic(&url, 50, headers).await;
        assert_eq!(tally.count("podinfo-v2"), 50, "{headers:?}: {tally:?}");
    }
    let misses: [&[(&str, &str)]; 4] = [
        &[],
        &[("x-canary", "outsider")],
        &[("x-user", "beta-x")],
        &[("cookie", "canary=never; xcanary=always")],
    ];
    for headers in misses {
        let tally = traffic(&url, 50, headers).await;
        assert_eq!(tally.count("podinfo-v1"), 50, "{headers:?}: {tally:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_requests_reach_the_canary_but_clients_see_primary() {
    let f = fixture().await;
    let mut d = desired("edge", &f.primary, &f.canary, 0);
    d.mirror_percent = 100;
    let observed = f.provider.apply(&route(&d)).await.unwrap();
    assert_eq!(observed.mirror_percent, 100);
    let tally = traffic(&f.envoy.url(), 200, &[]).await;
    assert_eq!(tally.count("podinfo-v1"), 200, "{tally:?}");
    // Shadow requests are fire-and-forget: wait for them to land.
    aviary_testkit::eventually(Duration::from_secs(10), "mirrored requests", || async {
        (f.canary.hits() >= 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_cookie_pins_to_canary_until_expired() {
    let f = fixture().await;
    let mut d = desired("edge", &f.primary, &f.canary, 50);
    d.session_affinity = Some(affinity("run-1", false));
    f.provider.apply(&route(&d)).await.unwrap();
    let tally = traffic(&f.envoy.url(), 100, &[]).await;
    // Canary responses, and only those, carry the cookie.
    assert_eq!(
        tally.set_cookies.len(),
        tally.count("podinfo-v2"),
        "{tally:?}"
    );
    assert!(tally.count("podinfo-v2") > 0);
    assert!(
        tally
            .set_cookies
            .iter()
            .all(|c| c == "aviary-cookie=run-1; Max-Age=3600; Path=/"),
        "{tally:?}"
    );
    let pinned = traffic(&f.envoy.url(), 100, &[("cookie", "aviary-cookie=run-1")]).await;
    assert_eq!(pinned.count("podinfo-v2"), 100, "{pinned:?}");

    // The run ends: the cookie is expired and no longer pins.
    let mut d = desired("edge", &f.primary, &f.canary, 0);
    d.session_affinity = Some(affinity("run-1", true));
    f.provider.apply(&route(&d)).await.unwrap();
    let after = traffic(&f.envoy.url(), 50, &[("cookie", "aviary-cookie=run-1")]).await;
    assert_eq!(after.count("podinfo-v1"), 50, "{after:?}");
    assert!(
        after
            .set_cookies
            .iter()
            .all(|c| c == "aviary-cookie=run-1; Max-Age=-1; Path=/")
            && after.set_cookies.len() == 50,
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_nack_fails_the_apply_with_its_message() {
    let f = fixture().await;
    let good = desired("edge", &f.primary, &f.canary, 20);
    f.provider.apply(&route(&good)).await.unwrap();
    let mut bad = desired("edge", &f.primary, &f.canary, 30);
    bad.matches = vec![header("x-canary", Kind::Regex("(unclosed".into()))];
    let error = f.provider.apply(&route(&bad)).await.unwrap_err();
    match &error {
        ApplyError::Rejected { detail, .. } => {
            assert!(
                detail.contains("unclosed") || detail.to_lowercase().contains("regex"),
                "{detail}"
            )
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // Envoy kept the last good configuration, and the provider serves it again.
    assert!(f.provider.in_sync(&route(&good)));
    let tally = traffic(&f.envoy.url(), 1000, &[]).await;
    assert_share(&tally, "podinfo-v2", 1000, 20.0, 5.0);
    // A valid route applies afterwards.
    f.provider
        .apply(&route(&desired("edge", &f.primary, &f.canary, 100)))
        .await
        .unwrap();
    let tally = traffic(&f.envoy.url(), 50, &[]).await;
    assert_eq!(tally.count("podinfo-v2"), 50);
}
