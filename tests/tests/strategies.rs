//! A/B testing, blue/green, blue/green with mirroring and session affinity through the real
//! Envoy: each request is checked for which version answered it.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::time::{Duration, Instant};

use aviary_e2e::*;
use aviary_proto as pb;
use aviary_proto::events::EventKind;

const METRICS: &str = "    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }
        minRequests: 5
      - name: request-duration
        thresholdRange: { max: 500 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_testing_routes_by_header_and_cookie_then_promotes() {
    let stack = Stack::start(StackOptions::default()).await;
    let analysis = format!(
        "    interval: 3s
    threshold: 2
    iterations: 3
    match:
      - headers:
          x-canary:
            exact: insider
      - cookies:
          canary:
            exact: always
{METRICS}"
    );
    stack.apply(&stack.manifest("podinfo", &analysis, "")).await;
    let url = stack.url();
    wait_serving(
        &url,
        &[("x-canary", "insider")],
        "v2",
        Duration::from_secs(30),
    )
    .await;
    let matched = Traffic::start(&url, 12, &[("x-canary", "insider")]);
    let cookie = Traffic::start(&url, 6, &[("cookie", "session=1; canary=always")]);
    let others = Traffic::start(&url, 12, &[("x-canary", "outsider")]);
    let from = Instant::now();

    stack
        .wait_status("podinfo", "two iterations", Duration::from_secs(40), |s| {
            s.iterations >= 2
        })
        .await;
    let to = Some(Instant::now());
    let (m, c, o) = (
        matched.window(from, to),
        cookie.window(from, to),
        others.window(from, to),
    );
    assert!(
        m.sent > 20 && c.sent > 10 && o.sent > 20,
        "{m:?} {c:?} {o:?}"
    );
    assert_eq!(m.by_version.get("v2"), Some(&m.sent), "header match: {m:?}");
    assert_eq!(c.by_version.get("v2"), Some(&c.sent), "cookie match: {c:?}");
    assert_eq!(o.by_version.get("v1"), Some(&o.sent), "no match: {o:?}");
    assert_eq!(sample(&url, &[], 10).await.get("v1"), Some(&10));

    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(40))
        .await;
    wait_serving(&url, &[], "v2", Duration::from_secs(5)).await;
    for t in [matched, cookie, others] {
        let all = t.stop().await;
        assert_eq!(all.errors, 0, "{all:?}");
    }
    let events = stack.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    assert_eq!(
        steps_advanced(&events),
        3,
        "one step per iteration: {trail:#?}"
    );
    assert_eq!(
        kinds(&events).last(),
        Some(&EventKind::Succeeded),
        "{trail:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_all_traffic_at_once() {
    let stack = Stack::start(StackOptions::default()).await;
    // The canary gets no live traffic until the switch, so Envoy has no data for it.
    let analysis = "    interval: 3s
    threshold: 2
    iterations: 2
    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }
        onNoData: pass";
    stack.apply(&stack.manifest("podinfo", analysis, "")).await;
    let traffic = Traffic::start(&stack.url(), 20, &[]);
    stack
        .wait_status("podinfo", "first iteration", Duration::from_secs(30), |s| {
            s.phase() == pb::Phase::Progressing && s.iterations >= 1
        })
        .await;
    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(40))
        .await;
    let after = traffic
        .wait_answers(Instant::now(), 20, Duration::from_secs(10))
        .await;
    let all = traffic.stop().await;
    assert_eq!(after.by_version.get("v2"), Some(&after.sent), "{after:?}");
    assert_eq!(all.errors, 0, "{all:?}");
    // Before the switch, not one client request reached the canary: every v2 answer came
    // after every v1 answer would be too strict under in-flight races, so check the events.
    let events = stack.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    assert_eq!(weight_trail(&events), vec![0, 100], "{trail:#?}");
    assert_eq!(steps_advanced(&events), 2, "{trail:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_mirror_copies_requests_to_the_canary() {
    let stack = Stack::start(StackOptions::default()).await;
    let analysis = format!(
        "    interval: 3s
    threshold: 2
    iterations: 3
    mirror: true
    mirrorWeight: 100
{METRICS}"
    );
    stack.apply(&stack.manifest("podinfo", &analysis, "")).await;
    let traffic = Traffic::start(&stack.url(), 20, &[]);
    let canary = &stack.canary;
    eventually(
        Duration::from_secs(30),
        "mirrored copies at the canary",
        || async move { (canary.counter("demo_mirrored_requests").await >= 20.0).then_some(()) },
    )
    .await;
    let from = Instant::now();
    stack
        .wait_status("podinfo", "two iterations", Duration::from_secs(40), |s| {
            s.iterations >= 2
        })
        .await;
    let mirroring = traffic.window(from, Some(Instant::now()));
    assert!(mirroring.sent > 20, "{mirroring:?}");
    assert_eq!(
        mirroring.by_version.get("v1"),
        Some(&mirroring.sent),
        "clients only see the primary while mirroring: {mirroring:?}"
    );
    // Every request the canary served so far was a mirrored copy.
    let served = canary.counter("demo_http_requests").await;
    let mirrored = canary.counter("demo_mirrored_requests").await;
    assert!(served <= mirrored, "served {served}, mirrored {mirrored}");

    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(40))
        .await;
    let after = traffic
        .wait_answers(Instant::now(), 20, Duration::from_secs(10))
        .await;
    let all = traffic.stop().await;
    assert_eq!(after.by_version.get("v2"), Some(&after.sent), "{after:?}");
    assert_eq!(all.errors, 0, "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_affinity_keeps_a_canary_user_on_the_canary() {
    let stack = Stack::start(StackOptions::default()).await;
    let analysis = format!(
        "    interval: 3s
    threshold: 2
    maxWeight: 50
    stepWeight: 25
    sessionAffinity:
      cookieName: aviary-cookie
      maxAge: 600
{METRICS}"
    );
    stack.apply(&stack.manifest("podinfo", &analysis, "")).await;
    let url = stack.url();
    let traffic = Traffic::start(&url, 20, &[]);
    stack
        .wait_status("podinfo", "canary at 25%", Duration::from_secs(30), |s| {
            s.canary_weight == 25
        })
        .await;

    // A new user lands on the canary sooner or later, and gets the run's cookie.
    let (cookie, set_cookie) = eventually(Duration::from_secs(10), "a canary answer", || {
        let url = url.clone();
        async move {
            let p = probe(&url, &[]).await;
            if p.version != "v2" {
                return None;
            }
            let set = p
                .set_cookies
                .into_iter()
                .find(|c| c.starts_with("aviary-cookie="))?;
            Some((set.split(';').next()?.to_owned(), set))
        }
    })
    .await;
    assert!(set_cookie.contains("Max-Age=600"), "{set_cookie}");
    let status = stack.get("podinfo").await.status.unwrap();
    assert!(
        !status.affinity_cookie.is_empty() && cookie.ends_with(&status.affinity_cookie),
        "{cookie} vs {status:#?}"
    );
    // Holding it, the user stays on the canary; without it, users are split.
    let header = [("cookie", cookie.as_str())];
    assert_eq!(sample(&url, &header, 30).await.get("v2"), Some(&30));
    let anonymous = sample(&url, &[], 40).await;
    assert!(
        anonymous.get("v1").is_some_and(|n| *n > 10),
        "{anonymous:?}"
    );

    stack
        .wait_phase("podinfo", pb::Phase::Succeeded, Duration::from_secs(40))
        .await;
    assert_eq!(sample(&url, &header, 10).await.get("v2"), Some(&10));
    let all = traffic.stop().await;
    assert_eq!(all.errors, 0, "{all:?}");
}
