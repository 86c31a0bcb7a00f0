//! The NGINX and HAProxy providers against the real servers with real traffic.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use aviary_proto::string_match::Kind;
use aviary_router_agent::provider::ApplyError;
use aviary_router_agent::provider::Provider;
use aviary_router_agent::provider::haproxy::{HaproxyProvider, HaproxySettings};
use aviary_router_agent::provider::nginx::{NginxProvider, NginxSettings};
use aviary_testkit::haproxy::Haproxy;
use aviary_testkit::nginx::Nginx;
use common::*;

const TIMEOUT: Duration = Duration::from_secs(20);

fn nginx_provider(nginx: &Nginx) -> Provider {
    Provider::Nginx(NginxProvider::new(
        NginxSettings {
            bin: nginx.bin().to_owned(),
            main_conf: nginx.main_conf(),
            include_path: nginx.include_path(),
            prefix: Some(nginx.prefix()),
            listen: nginx.listen(),
            pid_file: Some(nginx.prefix().join("nginx.pid")),
        },
        TIMEOUT,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_weights_matches_mirror_and_affinity() {
    let primary = Backend::start("podinfo-v1").await;
    let canary = Backend::start("podinfo-v2").await;
    let nginx = Nginx::start().await.unwrap();
    let provider = nginx_provider(&nginx);

    let observed = provider
        .apply(&route(&desired("web", &primary, &canary, 10)))
        .await
        .unwrap();
    assert_eq!((observed.primary_weight, observed.canary_weight), (90, 10));
    let tally = traffic(&nginx.url(), 2000, &[]).await;
    if tally.errors > 0 {
        eprintln!(
            "{}\n{}",
            std::fs::read_to_string(nginx.include_path()).unwrap(),
            nginx.error_log()
        );
    }
    assert_share(&tally, "podinfo-v2", 2000, 10.0, 3.0);
    for (weight, expected) in [(0, 0.0), (100, 100.0)] {
        provider
            .apply(&route(&desired("web", &primary, &canary, weight)))
            .await
            .unwrap();
        let tally = traffic(&nginx.url(), 300, &[]).await;
        assert_share(&tally, "podinfo-v2", 300, expected, 0.0);
    }

    let mut d = desired("web", &primary, &canary, 0);
    d.matches = vec![
        header("x-canary", Kind::Exact("insider".into())),
        cookie("canary", Kind::Exact("always".into())),
    ];
    provider.apply(&route(&d)).await.unwrap();
    for headers in [
        &[("x-canary", "insider")][..],
        &[("cookie", "a=b; canary=always")][..],
    ] {
        let tally = traffic(&nginx.url(), 50, headers).await;
        assert_eq!(tally.count("podinfo-v2"), 50, "{headers:?}: {tally:?}");
    }
    let tally = traffic(&nginx.url(), 50, &[("cookie", "canary=never")]).await;
    assert_eq!(tally.count("podinfo-v1"), 50, "{tally:?}");

    let mut d = desired("web", &primary, &canary, 0);
    d.mirror_percent = 100;
    provider.apply(&route(&d)).await.unwrap();
    let before = canary.hits();
    let tally = traffic(&nginx.url(), 100, &[]).await;
    assert_eq!(tally.count("podinfo-v1"), 100, "{tally:?}");
    aviary_testkit::eventually(TIMEOUT, "mirrored requests", || async {
        (canary.hits() >= before + 100).then_some(())
    })
    .await;

    let mut d = desired("web", &primary, &canary, 50);
    d.session_affinity = Some(affinity("run-1", false));
    provider.apply(&route(&d)).await.unwrap();
    let tally = traffic(&nginx.url(), 100, &[]).await;
    assert_eq!(
        tally.set_cookies.len(),
        tally.count("podinfo-v2"),
        "{tally:?}"
    );
    assert!(
        tally
            .set_cookies
            .iter()
            .all(|c| c == "aviary-cookie=run-1; Max-Age=3600; Path=/")
    );
    let pinned = traffic(&nginx.url(), 100, &[("cookie", "aviary-cookie=run-1")]).await;
    assert_eq!(pinned.count("podinfo-v2"), 100, "{pinned:?}");

    // An invalid configuration is refused by `nginx -t` and the running one stays.
    let mut bad = desired("web", &primary, &canary, 0);
    bad.matches = vec![header("x-canary", Kind::Regex("(unclosed".into()))];
    let error = provider.apply(&route(&bad)).await.unwrap_err();
    assert!(matches!(error, ApplyError::Rejected { .. }), "{error:?}");
    assert!(provider.in_sync(&route(&d)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_weights_through_the_runtime_api() {
    let primary = Backend::start("podinfo-v1").await;
    let canary = Backend::start("podinfo-v2").await;
    let haproxy = Haproxy::start(&primary.endpoint(), &canary.endpoint())
        .await
        .unwrap();
    let provider = Provider::Haproxy(HaproxyProvider::new(
        HaproxySettings {
            stats_socket: haproxy.stats_socket(),
            backend: Some(aviary_testkit::haproxy::BACKEND.into()),
            primary_server: "primary".into(),
            canary_server: "canary".into(),
            routes: Vec::new(),
        },
        TIMEOUT,
    ));
    let observed = provider
        .apply(&route(&desired("lb", &primary, &canary, 10)))
        .await
        .unwrap();
    assert_eq!((observed.primary_weight, observed.canary_weight), (90, 10));
    let tally = traffic(&haproxy.url(), 2000, &[]).await;
    assert_share(&tally, "podinfo-v2", 2000, 10.0, 3.0);
    for (weight, expected) in [(0, 0.0), (100, 100.0)] {
        provider
            .apply(&route(&desired("lb", &primary, &canary, weight)))
            .await
            .unwrap();
        let tally = traffic(&haproxy.url(), 300, &[]).await;
        assert_share(&tally, "podinfo-v2", 300, expected, 0.0);
    }
    assert!(
        provider
            .in_sync(&route(&desired("lb", &primary, &canary, 100)))
            .await
    );

    // What HAProxy cannot express is refused with the reason, before touching it.
    assert!(!provider.capabilities().mirror);
    let mut mirrored = desired("lb", &primary, &canary, 0);
    mirrored.mirror_percent = 50;
    let error = provider.apply(&route(&mirrored)).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "haproxy cannot express traffic mirroring"
    );
    assert!(
        provider
            .in_sync(&route(&desired("lb", &primary, &canary, 100)))
            .await
    );
}
