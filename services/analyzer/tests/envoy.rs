//! End to end with the real data plane: Envoy splits live traffic between two in-test backends
//! (the canary fails 10 % of requests), Prometheus scrapes Envoy's `/stats/prometheus`, and
//! the built-in metrics judge what really happened.
#![allow(clippy::unwrap_used)] // test fixtures stop at the first broken step

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aviary_proto::{MetricCheck, Outcome};
use aviary_testkit::prometheus::{Prometheus, ScrapeTarget};
use aviary_testkit::{Process, free_port, tool_path};
use axum::http::StatusCode;
use common::*;
use tokio_util::sync::CancellationToken;

/// A backend answering 200, or 500 on every `fail_every`-th request (0 = never).
async fn backend(fail_every: u64) -> u16 {
    let count = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().fallback(move || {
        let count = count.clone();
        async move {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            if fail_every > 0 && n.is_multiple_of(fail_every) {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn cluster(name: &str, port: u16) -> String {
    format!(
        r#"
    - name: {name}
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: {name}
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{ address: 127.0.0.1, port_value: {port} }}"#
    )
}

fn envoy_config(admin: u16, listener: u16, primary: u16, canary: u16) -> String {
    format!(
        r#"
# Histograms are merged on each stats flush (default 5 s); flush every second like the scrapes.
stats_flush_interval: 1s
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
    - name: edge
      address:
        socket_address: {{ address: 127.0.0.1, port_value: {listener} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: edge
                route_config:
                  virtual_hosts:
                    - name: podinfo
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route:
                            weighted_clusters:
                              clusters:
                                - {{ name: test_podinfo-v1, weight: 50 }}
                                - {{ name: test_podinfo-v2, weight: 50 }}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:{}{}
"#,
        cluster("test_podinfo-v1", primary),
        cluster("test_podinfo-v2", canary),
    )
}

async fn start_envoy(dir: &std::path::Path, primary: u16, canary: u16) -> (Process, u16, u16) {
    let bin = tool_path("envoy").unwrap();
    let (admin, listener) = (free_port().unwrap(), free_port().unwrap());
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, envoy_config(admin, listener, primary, canary)).unwrap();
    let mut envoy = Process::spawn(
        "envoy",
        &bin,
        [
            "-c".into(),
            config.into_os_string(),
            "--disable-hot-restart".into(),
            "--concurrency".into(),
            "1".into(),
            "--log-level".into(),
            "warn".into(),
        ],
        &dir.join("envoy.log"),
    )
    .unwrap();
    envoy
        .wait_ready(Duration::from_secs(60), || async move {
            reqwest::get(format!("http://127.0.0.1:{admin}/ready"))
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
        .unwrap();
    (envoy, admin, listener)
}

#[tokio::test]
async fn real_envoy_traffic_fails_a_canary_with_ten_percent_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, canary) = (backend(0).await, backend(10).await);
    let (_envoy, admin, listener) = start_envoy(dir.path(), primary, canary).await;
    let prom =
        Prometheus::start(&[ScrapeTarget::new("envoy", format!("127.0.0.1:{admin}"))
            .metrics_path("/stats/prometheus")])
        .await
        .unwrap();

    // Steady traffic through Envoy until the test ends.
    let stop = CancellationToken::new();
    let sent = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (stop, sent) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let url = format!("http://127.0.0.1:{listener}/");
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while !stop.is_cancelled() {
                tick.tick().await;
                if client.get(&url).send().await.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let start = now_ms();
    // Wait until Prometheus has several scrapes of canary traffic, errors included.
    prom.wait_for_data(
        r#"count_over_time(envoy_cluster_upstream_rq_xx{envoy_cluster_name="test_podinfo-v2",envoy_response_code_class="5"}[1m]) >= 5"#,
        Duration::from_secs(90),
    )
    .await
    .unwrap();
    prom.wait_for_data(
        &format!(r#"increase(envoy_cluster_upstream_rq_time_count{{envoy_cluster_name="test_podinfo-v2"}}[{}ms]) > 0"#, now_ms() - start),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let end = now_ms();

    let analyzer = analyzer(&prom.url());
    let verdict = analyzer
        .analyze(&request(
            start,
            end,
            vec![
                success_rate_min(99.0),
                duration_max(500.0),
                MetricCheck {
                    name: "request-success-rate".into(),
                    max_delta: Some(1.0),
                    min_requests: 20,
                    ..MetricCheck::default()
                },
            ],
        ))
        .await;
    stop.cancel();
    traffic.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 50, "traffic flowed");

    let sr = &verdict.metrics[0];
    let rate = sr.value.expect("a measured success rate");
    assert!(
        (85.0..95.0).contains(&rate),
        "canary success ≈ 90 %: {sr:?}"
    );
    assert_eq!(sr.outcome(), Outcome::Fail, "{sr:?}");
    let duration = &verdict.metrics[1];
    assert!(
        duration.value.is_some(),
        "p99 measured from Envoy's histogram: {duration:?}"
    );
    assert_eq!(duration.outcome(), Outcome::Pass, "{duration:?}");
    let relative = &verdict.metrics[2];
    assert_eq!(relative.primary_value, Some(100.0), "{relative:?}");
    assert_eq!(relative.outcome(), Outcome::Fail, "{relative:?}");
    assert_eq!(verdict.outcome(), Outcome::Fail);

    // The primary, judged the same way over the same window, passes.
    let mut req = request(start, end, vec![success_rate_min(99.0)]);
    req.variables.insert("canary".into(), "podinfo-v1".into());
    let v = analyzer.analyze(&req).await;
    assert_eq!(v.outcome(), Outcome::Pass, "{v:?}");
}
