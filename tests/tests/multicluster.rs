//! Multi-cluster rollouts across real processes: a hub nats-server (the scheduler and its KV
//! state) and one leaf nats-server per member cluster, `eu` and `us`, each member with its own
//! router agent (`--cluster`), Envoy, demo apps, Prometheus scraping that Envoy, and analyzer
//! (`--cluster`) reading that Prometheus. Policy `all`: both clusters healthy promotes both (as
//! clients of both Envoys see it); one cluster's failing canary rolls back both; one member's
//! link cut halts the rollout where it is and it resumes, and succeeds, when the link returns.
//! Policy `waves`: eu walks and is promoted while us serves only the primary, then us walks
//! from its first step; us's failing canary in the second wave rolls back both, eu's promoted
//! canary too.
//!
//! Every server runs with the per-service users of `aviary_bus::permissions`, and each
//! service connects as its own user (the scheduler on the hub, each member's router agent and
//! analyzer on that member's leaf), so a permission missing for a multi-cluster rollout — a
//! write to a member's JetStream domain, say — fails a scenario. Leaf links log in to the hub
//! as their own user.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::path::Path;
use std::time::{Duration, Instant};

use aviary_e2e::*;
use aviary_proto as pb;
use aviary_proto::events::AuditEvent;
use aviary_testkit::prometheus::{Prometheus, ScrapeTarget};
use aviary_testkit::{NatsHub, NatsServer, Process, free_port};

/// 25 % → 50 % → promotion, one analysis every 2 s; two failed checks roll back.
const ANALYSIS: &str = "    interval: 2s
    threshold: 2
    maxWeight: 50
    stepWeight: 25
    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }
        minRequests: 5";

/// How long a whole rollout may take on two busy cores.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(90);

/// Requests per second sent through each cluster's Envoy.
const RPS: u32 = 20;

/// The user and password every leaf link logs in to the hub with.
const LEAF_LOGIN: (&str, &str) = ("leaf", "e2e-leaf");

/// The per-service users, for the hub and for each member's leaf server.
fn permissions() -> String {
    aviary_bus::permissions::nats_authorization(|user| format!("\"{}\"", nats_password(user)))
}

/// One member cluster: its leaf nats-server and everything that runs in it.
struct Member {
    name: &'static str,
    leaf: NatsServer,
    _agent: Service,
    _analyzer: Service,
    _envoy: Process,
    envoy_listener: u16,
    prometheus: Prometheus,
    primary: App,
    canary: App,
}

impl Member {
    async fn start(hub: &NatsHub, name: &'static str, canary: &AppBehaviour, dir: &Path) -> Self {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let leaf = hub
            .start_leaf_with_config(name, &permissions())
            .await
            .unwrap();
        let primary = App::start("v1", &AppBehaviour::default()).await;
        let canary = App::start("v2", canary).await;
        let xds_port = free_port().unwrap();
        let agent_file = dir.join("agent.yaml");
        std::fs::write(
            &agent_file,
            format!(
                "ingresses:\n  - name: edge\n    provider: envoy\n    xds_addr: 127.0.0.1:{xds_port}\n"
            ),
        )
        .unwrap();
        let mut agent = Service::new(
            &format!("router-agent-{name}"),
            "aviary-router-agent",
            &dir,
            [
                "--nats-url",
                &leaf.url(),
                "--cluster",
                name,
                "--config-file",
                &agent_file.display().to_string(),
                "--reconcile-interval-ms",
                &RECONCILE_INTERVAL_MS.to_string(),
                "--apply-timeout-ms",
                "5000",
            ]
            .map(str::to_owned)
            .into_iter()
            .chain(nats_identity("router-agent"))
            .collect(),
        );
        agent.start().await;
        let (envoy, envoy_admin, envoy_listener) = start_envoy(&dir, xds_port).await;
        let prometheus =
            Prometheus::start(&[
                ScrapeTarget::new("envoy", format!("127.0.0.1:{envoy_admin}"))
                    .metrics_path("/stats/prometheus"),
            ])
            .await
            .unwrap();
        // The analyzer's own default backend answers nothing: the rollout names each
        // cluster's Prometheus (`metricProvider`), so a request sent to the wrong cluster, or
        // without its provider, cannot pass.
        let nowhere = format!("http://127.0.0.1:{}", free_port().unwrap());
        let mut analyzer = Service::new(
            &format!("analyzer-{name}"),
            "aviary-analyzer",
            &dir,
            [
                "--nats-url",
                &leaf.url(),
                "--cluster",
                name,
                "--prometheus-url",
                &nowhere,
                "--query-timeout-ms",
                "3000",
                "--scrape-interval",
                "1s",
            ]
            .map(str::to_owned)
            .into_iter()
            .chain(nats_identity("analyzer"))
            .collect(),
        );
        analyzer.start().await;
        Self {
            name,
            leaf,
            _agent: agent,
            _analyzer: analyzer,
            _envoy: envoy,
            envoy_listener,
            prometheus,
            primary,
            canary,
        }
    }

    /// Where this cluster's clients send traffic (its Envoy's listener).
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.envoy_listener)
    }

    /// This cluster's entry in `spec.clusters`.
    fn spec(&self) -> String {
        format!(
            "    - name: {}\n      ingresses: [{{ name: edge }}]\n      metricProvider: {{ type: prometheus, address: \"{}\" }}\n      primaryEndpoints: [\"{}\"]\n      canaryEndpoints: [\"{}\"]\n",
            self.name,
            self.prometheus.url(),
            self.primary.addr,
            self.canary.addr
        )
    }
}

/// The hub (scheduler) and the two member clusters.
struct World {
    hub: NatsHub,
    scheduler: Service,
    grpc_port: u16,
    eu: Member,
    us: Member,
    _dir: tempfile::TempDir,
}

impl World {
    /// Starts the hub, `eu` (healthy) and `us` (its canary behaving as `us_canary`), and the
    /// scheduler on the hub.
    async fn start(us_canary: AppBehaviour) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("aviary-e2e-mc-")
            .tempdir()
            .unwrap();
        let hub = NatsHub::start_with_config(&permissions(), Some(LEAF_LOGIN))
            .await
            .unwrap();
        let eu = Member::start(&hub, "eu", &AppBehaviour::default(), dir.path()).await;
        let us = Member::start(&hub, "us", &us_canary, dir.path()).await;
        hub.wait_leaves(2).await.unwrap();
        let grpc_port = free_port().unwrap();
        let mut scheduler = Service::new(
            "scheduler",
            "aviary-scheduler",
            dir.path(),
            [
                "--nats-url",
                &hub.server().url(),
                "--grpc-addr",
                &format!("127.0.0.1:{grpc_port}"),
                "--replica-id",
                "scheduler-0",
                "--lease-ttl-ms",
                &LEASE_TTL_MS.to_string(),
                "--route-timeout-ms",
                "3000",
                "--analysis-timeout-ms",
                "6000",
            ]
            .map(str::to_owned)
            .into_iter()
            .chain(nats_identity("scheduler"))
            .collect(),
        );
        scheduler.start().await;
        Self {
            hub,
            scheduler,
            grpc_port,
            eu,
            us,
            _dir: dir,
        }
    }

    /// A rollout over both clusters, policy `all`, with `analysis` (indented for `analysis:`).
    fn manifest(&self, name: &str, analysis: &str) -> String {
        self.manifest_with(name, "all", analysis)
    }

    /// A rollout over eu then us under `policy`, with `analysis`.
    fn manifest_with(&self, name: &str, policy: &str, analysis: &str) -> String {
        format!(
            "apiVersion: aviary.dev/v1alpha1\nkind: Rollout\nmetadata: {{ name: {name}, namespace: {NS} }}\nspec:\n  clusters:\n{}{}  clusterPolicy: {policy}\n  primary: {{ name: podinfo-v1, endpoints: [\"{}\"] }}\n  canary: {{ name: podinfo-v2, endpoints: [\"{}\"] }}\n  progressDeadlineSeconds: 120\n  analysis:\n{}\n",
            self.eu.spec(),
            self.us.spec(),
            self.eu.primary.addr,
            self.eu.canary.addr,
            analysis.trim_end()
        )
    }

    /// Applies `manifest` and waits until both clusters' Envoys serve its first route.
    async fn apply(&self, manifest: &str) {
        api_client(self.grpc_port)
            .await
            .apply(pb::ApplyRequest {
                manifest: manifest.to_owned(),
            })
            .await
            .unwrap_or_else(|e| panic!("apply refused: {e}\n{manifest}"));
        for member in [&self.eu, &self.us] {
            let url = member.url();
            eventually(
                Duration::from_secs(30),
                &format!("{}'s Envoy serving a route", member.name),
                || {
                    let url = url.clone();
                    async move { (probe(&url, &[]).await.status != 404).then_some(()) }
                },
            )
            .await;
        }
    }

    /// The rollout's status, when the API answers.
    async fn status(&self, name: &str) -> Option<pb::RolloutStatus> {
        let mut api = pb::rollout_service_client::RolloutServiceClient::connect(format!(
            "http://127.0.0.1:{}",
            self.grpc_port
        ))
        .await
        .ok()?;
        let rollout = api
            .get(pb::GetRequest {
                r#ref: Some(pb::RolloutRef::new(NS, name)),
            })
            .await
            .ok()?;
        rollout.into_inner().status
    }

    /// Polls until `pred` holds of the status; panics with the last status and the scheduler's
    /// log after `deadline`.
    async fn wait_status(
        &self,
        name: &str,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&pb::RolloutStatus) -> bool,
    ) -> pb::RolloutStatus {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < deadline {
            if let Some(status) = self.status(name).await {
                if pred(&status) {
                    return status;
                }
                last = Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out after {deadline:?} waiting for {what}\nstatus: {last:#?}\nscheduler log:\n{}",
            tail(&self.scheduler.log())
        );
    }

    /// Waits until rollout `name` is rolled back and every ingress acked the primary; returns
    /// that status and when it was seen.
    async fn wait_rolled_back(&self, name: &str) -> (pb::RolloutStatus, Instant) {
        let status = self
            .wait_status(name, "rolled back and confirmed", ROLLOUT_DEADLINE, |s| {
                s.phase() == pb::Phase::Failed && s.canary_weight == 0 && s.primary_weight == 100
            })
            .await;
        (status, Instant::now())
    }

    /// Both clusters' clients (`eu`, `us`) are served by the primary only after `since`.
    async fn both_on_the_primary(&self, eu: &Traffic, us: &Traffic, since: Instant) {
        for (name, traffic, member) in [("eu", eu, &self.eu), ("us", us, &self.us)] {
            wait_serving(&member.url(), &[], "v1", Duration::from_secs(20)).await;
            let after = traffic
                .wait_answers(since, 20, Duration::from_secs(20))
                .await;
            assert!(
                share(&after, "v1") > 0.9,
                "{name} after rollback: {after:?}"
            );
        }
    }

    /// Every audit event of rollout `name` on the hub's events stream, in order.
    async fn events(&self, name: &str) -> Vec<AuditEvent> {
        let client = async_nats::ConnectOptions::with_user_and_password(
            "scheduler".into(),
            nats_password("scheduler"),
        )
        .custom_inbox_prefix(aviary_bus::names::inbox_prefix("aviary-scheduler"))
        .connect(self.hub.server().url())
        .await
        .unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js
            .get_stream(aviary_bus::names::STREAM_EVENTS)
            .await
            .unwrap();
        let subject = aviary_bus::names::events_subject(NS, name).unwrap();
        let info = stream.clone().info().await.unwrap().clone();
        let mut events = Vec::new();
        for seq in info.state.first_sequence.max(1)..=info.state.last_sequence {
            if let Ok(message) = stream.get_raw_message(seq).await
                && message.subject.as_str() == subject
            {
                events.push(serde_json::from_slice(&message.payload).unwrap());
            }
        }
        events
    }
}

/// The last lines of a log, for a failure report.
fn tail(log: &str) -> String {
    let lines: Vec<_> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The names of the folded verdict's checks (`<cluster>/<check>`) and whether each passed.
fn checks(status: &pb::RolloutStatus) -> Vec<(String, pb::Outcome)> {
    let verdict = status.last_verdict.clone().unwrap_or_default();
    verdict
        .metrics
        .iter()
        .map(|m| (m.name.clone(), m.outcome()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_promotes_every_cluster_when_both_are_healthy() {
    let world = World::start(AppBehaviour::default()).await;
    world.apply(&world.manifest("podinfo", ANALYSIS)).await;
    let eu = Traffic::start(&world.eu.url(), RPS, &[]);
    let us = Traffic::start(&world.us.url(), RPS, &[]);

    let status = world
        .wait_status("podinfo", "both clusters at 50 %", ROLLOUT_DEADLINE, |s| {
            s.canary_weight == 50
        })
        .await;
    let mut ingresses: Vec<_> = status
        .ingresses
        .iter()
        .map(|i| (i.ingress.as_str(), i.canary_weight))
        .collect();
    ingresses.sort_unstable();
    assert_eq!(ingresses, [("eu/edge", 50), ("us/edge", 50)], "{status:#?}");
    let at_half = Instant::now();
    let status = world
        .wait_status("podinfo", "succeeded", ROLLOUT_DEADLINE, |s| {
            s.phase() == pb::Phase::Succeeded
        })
        .await;
    let promoted = Instant::now();
    // Both clusters' canaries took a real share at 50 %, then everything.
    for (name, traffic, member) in [("eu", &eu, &world.eu), ("us", &us, &world.us)] {
        let during = traffic.window(at_half, Some(promoted));
        assert!(share(&during, "v2") > 0.2, "{name} at 50 %: {during:?}");
        wait_serving(&member.url(), &[], "v2", Duration::from_secs(20)).await;
        let after = traffic
            .wait_answers(promoted, 20, Duration::from_secs(20))
            .await;
        assert!(
            share(&after, "v2") > 0.9,
            "{name} after promotion: {after:?}"
        );
    }
    for (name, traffic) in [("eu", eu), ("us", us)] {
        let all = traffic.stop().await;
        assert_eq!(all.errors, 0, "{name}: {all:?}");
        assert_eq!(
            all.by_status.keys().collect::<Vec<_>>(),
            [&200],
            "{name}: {all:?}"
        );
    }
    // The verdict that promoted was both clusters', each check named by its cluster.
    let checks = checks(&status);
    for want in ["eu/request-success-rate", "us/request-success-rate"] {
        assert!(
            checks.contains(&(want.to_owned(), pb::Outcome::Pass)),
            "{want} in {checks:?}"
        );
    }
    let events = world.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    assert_eq!(weight_trail(&events), [0, 25, 50, 100], "{trail:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_rolls_back_every_cluster_when_one_clusters_canary_fails() {
    let world = World::start(AppBehaviour {
        error_rate: 0.3,
        ..Default::default()
    })
    .await;
    world.apply(&world.manifest("podinfo", ANALYSIS)).await;
    let eu = Traffic::start(&world.eu.url(), RPS, &[]);
    let us = Traffic::start(&world.us.url(), RPS, &[]);

    let (status, rolled_back) = world.wait_rolled_back("podinfo").await;
    // Both clusters' clients are back on the primary, eu's too although its canary was healthy.
    world.both_on_the_primary(&eu, &us, rolled_back).await;
    let eu = eu.stop().await;
    let us = us.stop().await;
    assert!(share(&eu, "v2") > 0.0, "eu's canary had traffic: {eu:?}");
    assert_eq!(
        eu.by_status.get(&500),
        None,
        "eu's canary is healthy: {eu:?}"
    );
    assert!(us.by_status.get(&500).is_some_and(|n| *n > 0), "{us:?}");
    // The failing check is us's, named by its cluster; eu's passed.
    let checks = checks(&status);
    assert!(
        checks.contains(&("us/request-success-rate".to_owned(), pb::Outcome::Fail)),
        "{checks:?}"
    );
    assert!(
        checks.contains(&("eu/request-success-rate".to_owned(), pb::Outcome::Pass)),
        "{checks:?}"
    );
    assert_eq!(status.failed_checks, 2, "{status:#?}");
    let events = world.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    assert!(!weight_trail(&events).contains(&100), "{trail:#?}");
    assert_eq!(
        kinds(&events).last(),
        Some(&aviary_proto::events::EventKind::RolledBack),
        "{trail:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_clusters_link_cut_halts_everywhere_and_the_rollout_resumes_when_it_returns() {
    let mut world = World::start(AppBehaviour::default()).await;
    world.apply(&world.manifest("podinfo", ANALYSIS)).await;
    let eu = Traffic::start(&world.eu.url(), RPS, &[]);
    let us = Traffic::start(&world.us.url(), RPS, &[]);
    world
        .wait_status("podinfo", "both clusters at 25 %", ROLLOUT_DEADLINE, |s| {
            s.canary_weight == 25
        })
        .await;

    // us's leaf goes away: no ack and no verdict from us, so the rollout halts and says why.
    world.us.leaf.kill();
    world.hub.wait_leaves(1).await.unwrap();
    let halted = world
        .wait_status(
            "podinfo",
            "a halt naming us",
            Duration::from_secs(30),
            |s| s.halt_reason.contains("us/"),
        )
        .await;
    assert!(halted.canary_weight <= 50, "{halted:#?}");
    // While the link is down nothing is promoted, in either cluster: watched for five analysis
    // intervals (each would have been a step).
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(10) {
        if let Some(status) = world.status("podinfo").await {
            assert!(
                status.phase() != pb::Phase::Succeeded && status.canary_weight <= 50,
                "moved while us was cut off: {status:#?}"
            );
            assert!(!status.halt_reason.is_empty(), "{status:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The link returns: the halt clears, the rollout goes on and promotes both clusters.
    world.us.leaf.start_again().await.unwrap();
    world.hub.wait_leaves(2).await.unwrap();
    world
        .wait_status("podinfo", "succeeded", ROLLOUT_DEADLINE, |s| {
            s.phase() == pb::Phase::Succeeded
        })
        .await;
    for member in [&world.eu, &world.us] {
        wait_serving(&member.url(), &[], "v2", Duration::from_secs(20)).await;
    }
    let (eu, us) = (eu.stop().await, us.stop().await);
    assert_eq!(eu.errors, 0, "{eu:?}");
    assert!(us.by_version.get("v2").is_some_and(|n| *n > 0), "{us:?}");
    let events = world.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    let weights = weight_trail(&events);
    assert_eq!(weights.last(), Some(&100), "{trail:#?}");
    // No step skipped or repeated across the halt.
    assert_eq!(weights, [0, 25, 50, 100], "{trail:#?}");
}

/// Each ingress's acknowledged canary weight, sorted by ingress.
fn splits(status: &pb::RolloutStatus) -> Vec<(String, u32)> {
    let mut splits: Vec<_> = status
        .ingresses
        .iter()
        .map(|i| (i.ingress.clone(), i.canary_weight))
        .collect();
    splits.sort_unstable();
    splits
}

/// The weights of the step-started events of `cluster`'s wave, in order.
fn wave_steps(events: &[AuditEvent], cluster: &str) -> Vec<u32> {
    events
        .iter()
        .filter(|e| e.data.cluster == cluster && e.data.reason.starts_with("step-started"))
        .map(|e| e.data.canary_weight)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_finish_the_first_cluster_before_the_second_starts() {
    let world = World::start(AppBehaviour::default()).await;
    world
        .apply(&world.manifest_with("podinfo", "waves", ANALYSIS))
        .await;
    let started = Instant::now();
    let eu = Traffic::start(&world.eu.url(), RPS, &[]);
    let us = Traffic::start(&world.us.url(), RPS, &[]);

    // eu walks; us is not moved before its wave.
    let status = world
        .wait_status("podinfo", "eu at 50 %", ROLLOUT_DEADLINE, |s| {
            s.wave_cluster == "eu" && s.canary_weight == 50
        })
        .await;
    assert_eq!(
        splits(&status),
        [("eu/edge".to_owned(), 50), ("us/edge".to_owned(), 0)],
        "{status:#?}"
    );
    // Until then (us acked 0 % with that status) us's clients saw only the primary.
    let eu_at_half = Instant::now();
    // us's wave: eu is promoted and serves the canary fully while us walks from its first step.
    let status = world
        .wait_status("podinfo", "us's wave at 25 %", ROLLOUT_DEADLINE, |s| {
            s.wave_cluster == "us" && s.canary_weight == 25
        })
        .await;
    let us_wave = Instant::now();
    assert_eq!(status.wave, 1, "{status:#?}");
    assert_eq!(
        splits(&status),
        [("eu/edge".to_owned(), 100), ("us/edge".to_owned(), 25)],
        "{status:#?}"
    );
    let during_eu = us.window(started, Some(eu_at_half));
    assert!(during_eu.sent > 0, "{during_eu:?}");
    assert_eq!(
        share(&during_eu, "v2"),
        0.0,
        "us served the canary during eu's wave: {during_eu:?}"
    );
    let eu_after = eu.wait_answers(us_wave, 20, Duration::from_secs(20)).await;
    assert!(
        share(&eu_after, "v2") > 0.9,
        "eu once promoted: {eu_after:?}"
    );
    let status = world
        .wait_status("podinfo", "succeeded", ROLLOUT_DEADLINE, |s| {
            s.phase() == pb::Phase::Succeeded
        })
        .await;
    // The verdicts of us's wave are us's alone.
    let checks = checks(&status);
    assert!(
        !checks.is_empty() && checks.iter().all(|(name, _)| name.starts_with("us/")),
        "{checks:?}"
    );
    for member in [&world.eu, &world.us] {
        wait_serving(&member.url(), &[], "v2", Duration::from_secs(20)).await;
    }
    for (name, traffic) in [("eu", eu), ("us", us)] {
        let all = traffic.stop().await;
        assert_eq!(all.errors, 0, "{name}: {all:?}");
    }
    // The audit trail: eu's steps, then us's from the first, each event naming its cluster.
    let events = world.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    assert_eq!(wave_steps(&events, "eu"), [25, 50], "{trail:#?}");
    assert_eq!(wave_steps(&events, "us"), [25, 50], "{trail:#?}");
    let first_us = events.iter().position(|e| e.data.cluster == "us").unwrap();
    assert!(
        events[first_us..].iter().all(|e| e.data.cluster == "us"),
        "{trail:#?}"
    );
    assert_eq!(
        weight_trail(&events),
        [0, 25, 50, 100, 25, 50, 100],
        "{trail:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_second_wave_rolls_back_both_clusters() {
    let world = World::start(AppBehaviour {
        error_rate: 0.3,
        ..Default::default()
    })
    .await;
    world
        .apply(&world.manifest_with("podinfo", "waves", ANALYSIS))
        .await;
    let eu = Traffic::start(&world.eu.url(), RPS, &[]);
    let us = Traffic::start(&world.us.url(), RPS, &[]);

    // eu's canary is healthy: its wave is promoted, then us's canary fails.
    world
        .wait_status("podinfo", "us's wave", ROLLOUT_DEADLINE, |s| {
            s.wave_cluster == "us" && s.canary_weight > 0
        })
        .await;
    let (status, rolled_back) = world.wait_rolled_back("podinfo").await;
    assert_eq!(
        splits(&status),
        [("eu/edge".to_owned(), 0), ("us/edge".to_owned(), 0)],
        "{status:#?}"
    );
    // eu, promoted before, is back on the primary too.
    world.both_on_the_primary(&eu, &us, rolled_back).await;
    let (eu, us) = (eu.stop().await, us.stop().await);
    assert!(share(&eu, "v2") > 0.0, "eu's wave moved it: {eu:?}");
    assert!(us.by_status.get(&500).is_some_and(|n| *n > 0), "{us:?}");
    let checks = checks(&status);
    assert!(
        checks.contains(&("us/request-success-rate".to_owned(), pb::Outcome::Fail)),
        "{checks:?}"
    );
    let events = world.events("podinfo").await;
    let trail: Vec<_> = events.iter().map(describe).collect();
    let rolled = events
        .iter()
        .rfind(|e| e.kind() == Some(aviary_proto::events::EventKind::RolledBack))
        .unwrap_or_else(|| panic!("no rollback in {trail:#?}"));
    assert_eq!(rolled.data.cluster, "us", "{trail:#?}");
    assert_eq!(weight_trail(&events), [0, 25, 50, 100, 25, 0], "{trail:#?}");
}
