//! The chaos soak: many concurrent rollouts, healthy and failing canaries mixed, with real
//! traffic through Envoy, while a bounded loop SIGKILLs a random process — a scheduler replica,
//! the analyzer, the router agent, the notifier or a node of the three-node NATS cluster (every
//! stream and bucket at three replicas) — and starts it again, one thing down at a time.
//!
//! At the end every rollout must have ended right (healthy promoted, failing rolled back), no
//! canary may have been promoted without a passing verdict on the audit stream, and the audit
//! stream must have every step of every rollout once: none lost, none doubled.
//!
//! `AVIARY_SOAK_SECONDS` (default 120) is how long the kill loop runs, `AVIARY_SOAK_ROLLOUTS`
//! (default 10) how many rollouts run at once, `AVIARY_SOAK_SEED` picks the kill sequence (the
//! seed used is printed, so a failing run can be replayed). `make soak` runs 50 rollouts for
//! 600 s. The figures `soak_rollouts_correct`, `soak_kills`, `soak_duplicate_steps` and
//! `soak_lost_steps` are printed as JSON lines and written to `bench/soak.json` (and merged into
//! `bench/results.json` when it exists) by `scripts/soak.sh`.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use aviary_e2e::*;
use aviary_proto as pb;
use aviary_proto::events::{AuditEvent, EventKind};
use aviary_testkit::{NatsCluster, Process, free_port};

/// The canary weights each rollout steps through before promotion.
const STEPS: [u32; 4] = [20, 40, 60, 80];

/// Requests per second each rollout's host gets through Envoy: at 20 % and the shortest
/// interval (10 s) that is about 8 canary requests per analysis, above `minRequests`.
const RPS: u32 = 4;

/// Every stream and bucket at three replicas: the cluster survives losing any one node.
const REPLICAS: usize = 3;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift64*), so a seed replays a kill sequence.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// What the kill loop can take down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Scheduler(usize),
    Analyzer,
    Agent,
    Notifier,
    Nats(usize),
}

/// The soak's processes: like [`Stack`], but on a three-node NATS cluster, with several
/// rollouts each taking its own host.
struct Soak {
    schedulers: Vec<(Service, u16)>,
    analyzer: Service,
    agent: Service,
    notifier: Service,
    cluster: NatsCluster,
    _envoy: Process,
    envoy_listener: u16,
    _prometheus: aviary_testkit::prometheus::Prometheus,
    client: async_nats::Client,
    dir: tempfile::TempDir,
}

impl Soak {
    async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("aviary-soak-")
            .tempdir()
            .unwrap();
        let permissions = aviary_bus::permissions::nats_authorization(|user| {
            format!("\"{}\"", nats_password(user))
        });
        let cluster = NatsCluster::start_with_config(3, &permissions)
            .await
            .unwrap();
        let urls: Vec<async_nats::ServerAddr> = cluster
            .nodes()
            .iter()
            .map(|n| n.url().parse().unwrap())
            .collect();
        let client = async_nats::ConnectOptions::with_user_and_password(
            "scheduler".into(),
            nats_password("scheduler"),
        )
        .custom_inbox_prefix(aviary_bus::names::inbox_prefix("aviary-scheduler"))
        .retry_on_initial_connect()
        .connect(urls)
        .await
        .unwrap();
        let nats_url = cluster.url();
        let replicas = vec!["--js-replicas".to_owned(), REPLICAS.to_string()];

        let xds_port = free_port().unwrap();
        let agent_file = dir.path().join("agent.yaml");
        std::fs::write(
            &agent_file,
            format!(
                "ingresses:\n  - name: edge\n    provider: envoy\n    xds_addr: 127.0.0.1:{xds_port}\n"
            ),
        )
        .unwrap();
        let mut agent = Service::new(
            "router-agent",
            "aviary-router-agent",
            dir.path(),
            [
                "--nats-url",
                &nats_url,
                "--config-file",
                &agent_file.display().to_string(),
                "--reconcile-interval-ms",
                &RECONCILE_INTERVAL_MS.to_string(),
                "--apply-timeout-ms",
                "5000",
            ]
            .into_iter()
            .map(str::to_owned)
            .chain(replicas.clone())
            .chain(nats_identity("router-agent"))
            .collect(),
        );
        agent.start().await;

        let (envoy, envoy_admin, envoy_listener) = start_envoy(dir.path(), xds_port).await;
        let prometheus = aviary_testkit::prometheus::Prometheus::start(&[
            aviary_testkit::prometheus::ScrapeTarget::new(
                "envoy",
                format!("127.0.0.1:{envoy_admin}"),
            )
            .metrics_path("/stats/prometheus"),
        ])
        .await
        .unwrap();

        let mut analyzer = Service::new(
            "analyzer",
            "aviary-analyzer",
            dir.path(),
            [
                "--nats-url",
                &nats_url,
                "--prometheus-url",
                &prometheus.url(),
                "--query-timeout-ms",
                "3000",
                "--scrape-interval",
                "1s",
            ]
            .into_iter()
            .map(str::to_owned)
            .chain(nats_identity("analyzer"))
            .collect(),
        );
        analyzer.start().await;

        let port = receiver(Default::default()).await;
        let notifier_config = dir.path().join("notifier.yaml");
        std::fs::write(
            &notifier_config,
            format!(
                "defaultProvider: hook\ndefaultSeverity: info\nproviders:\n  - name: hook\n    type: webhook\n    url: http://127.0.0.1:{port}/hook\n"
            ),
        )
        .unwrap();
        let mut notifier = Service::new(
            "notifier",
            "aviary-notifier",
            dir.path(),
            [
                "--nats-url",
                &nats_url,
                "--config",
                &notifier_config.display().to_string(),
                "--cluster-name",
                "soak",
            ]
            .into_iter()
            .map(str::to_owned)
            .chain(replicas.clone())
            .chain(nats_identity("notifier"))
            .collect(),
        );
        notifier.start().await;

        let mut schedulers = Vec::new();
        for i in 0..3 {
            let id = format!("scheduler-{i}");
            let grpc_port = free_port().unwrap();
            let mut service = Service::new(
                &id,
                "aviary-scheduler",
                dir.path(),
                [
                    "--nats-url",
                    &nats_url,
                    "--grpc-addr",
                    &format!("127.0.0.1:{grpc_port}"),
                    "--replica-id",
                    &id,
                    "--lease-ttl-ms",
                    &LEASE_TTL_MS.to_string(),
                    "--route-timeout-ms",
                    "3000",
                    "--analysis-timeout-ms",
                    "8000",
                ]
                .into_iter()
                .map(str::to_owned)
                .chain(replicas.clone())
                .chain(nats_identity("scheduler"))
                .collect(),
            );
            service.start().await;
            schedulers.push((service, grpc_port));
        }
        Self {
            schedulers,
            analyzer,
            agent,
            notifier,
            cluster,
            _envoy: envoy,
            envoy_listener,
            _prometheus: prometheus,
            client,
            dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.envoy_listener)
    }

    /// The control API of some running replica, or `None` while none answers.
    async fn api(
        &self,
    ) -> Option<pb::rollout_service_client::RolloutServiceClient<tonic::transport::Channel>> {
        for (service, port) in &self.schedulers {
            if service.is_running()
                && let Ok(api) = pb::rollout_service_client::RolloutServiceClient::connect(format!(
                    "http://127.0.0.1:{port}"
                ))
                .await
            {
                return Some(api);
            }
        }
        None
    }

    /// The status of rollout `name`, `None` while no replica can read it (an election).
    async fn status(&self, name: &str) -> Option<pb::RolloutStatus> {
        let mut api = self.api().await?;
        let rollout = api
            .get(pb::GetRequest {
                r#ref: Some(pb::RolloutRef::new(NS, name)),
            })
            .await
            .ok()?;
        rollout.into_inner().status
    }

    /// Kills `target`; the kill loop starts it again later.
    fn kill(&mut self, target: Target) {
        match target {
            Target::Scheduler(i) => self.schedulers[i].0.kill(),
            Target::Analyzer => self.analyzer.kill(),
            Target::Agent => self.agent.kill(),
            Target::Notifier => self.notifier.kill(),
            Target::Nats(i) => self.cluster.node_mut(i).kill(),
        }
    }

    /// Starts `target` again and waits until it is ready; a NATS node also until the
    /// rollouts bucket is current on all three replicas again, so the next kill never takes a
    /// second replica of a stream that has not caught up.
    async fn revive(&mut self, target: Target) {
        match target {
            Target::Scheduler(i) => self.schedulers[i].0.start().await,
            Target::Analyzer => self.analyzer.start().await,
            Target::Agent => self.agent.start().await,
            Target::Notifier => self.notifier.start().await,
            Target::Nats(i) => {
                self.cluster.node_mut(i).start_again().await.unwrap();
                let soak = &*self;
                eventually(
                    Duration::from_secs(60),
                    "the rollouts bucket current on every node",
                    || soak.rollouts_current(),
                )
                .await;
            }
        }
    }

    /// `Some` when the rollouts bucket has a leader and both other replicas are online and
    /// current (asked as the scheduler: the testkit's own probe has no credentials here).
    async fn rollouts_current(&self) -> Option<()> {
        let js = async_nats::jetstream::new(self.client.clone());
        let stream = format!("KV_{}", aviary_bus::names::BUCKET_ROLLOUTS);
        let info = tokio::time::timeout(Duration::from_secs(2), async {
            js.get_stream(&stream)
                .await
                .ok()?
                .info()
                .await
                .ok()
                .cloned()
        })
        .await
        .ok()??;
        let cluster = info.cluster?;
        (cluster.leader.is_some()
            && cluster.replicas.len() + 1 == REPLICAS
            && cluster.replicas.iter().all(|p| p.current && !p.offline))
        .then_some(())
    }

    /// Every audit event on `AVIARY_EVENTS`, grouped by rollout name, in stream order.
    async fn audit(&self) -> BTreeMap<String, Vec<AuditEvent>> {
        let js = async_nats::jetstream::new(self.client.clone());
        let mut stream = js
            .get_stream(aviary_bus::names::STREAM_EVENTS)
            .await
            .unwrap();
        let info = stream.info().await.unwrap().state.clone();
        let mut by_rollout: BTreeMap<String, Vec<AuditEvent>> = BTreeMap::new();
        for seq in info.first_sequence.max(1)..=info.last_sequence {
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue;
            };
            let event: AuditEvent = serde_json::from_slice(&message.payload).unwrap_or_else(|e| {
                panic!(
                    "audit event {seq} is not a CloudEvent ({e}): {}",
                    String::from_utf8_lossy(&message.payload)
                )
            });
            if event.data.namespace == NS {
                by_rollout
                    .entry(event.data.name.clone())
                    .or_default()
                    .push(event);
            }
        }
        by_rollout
    }

    /// Lines of every nats-server log where a service was refused something, other than a
    /// reply to a request inbox: a reply permission (`allow_responses`) lives on the server
    /// connection that delivered the request, so a reply sent after a NATS node was killed
    /// can be refused; the requester times out and asks again. Those are counted apart.
    fn violations(&self) -> (Vec<String>, usize) {
        let all = self
            .cluster
            .nodes()
            .iter()
            .flat_map(|n| {
                n.log()
                    .lines()
                    .filter(|l| l.contains("Violation"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .partition::<Vec<String>, _>(|l| {
                !(l.contains("Publish Violation") && l.contains("Subject \"_INBOX_"))
            });
        let (other, replies) = all;
        (other, replies.len())
    }
}

/// A rollout of `primary` → `canary` taking host `<name>.soak`: weights 20, 40, 60, 80, then
/// promotion; two failed checks roll it back. No progress deadline within the soak: a halt
/// while something is down must wait, not fail a healthy canary.
fn manifest(name: &str, interval_s: u64, primary: &App, canary: &App) -> String {
    format!(
        "apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata: {{ name: {name}, namespace: {NS} }}
spec:
  ingresses: [{{ name: edge }}]
  service: {{ hosts: [{name}.soak] }}
  primary: {{ name: {name}-v1, endpoints: [\"{}\"] }}
  canary: {{ name: {name}-v2, endpoints: [\"{}\"] }}
  progressDeadlineSeconds: 3600
  analysis:
    interval: {interval_s}s
    threshold: 2
    maxWeight: 80
    stepWeight: 20
    metrics:
      - name: request-success-rate
        thresholdRange: {{ min: 99 }}
        minRequests: 5
",
        primary.addr, canary.addr
    )
}

/// What the audit trail of one rollout shows.
#[derive(Debug, Default)]
struct Judged {
    duplicate_steps: u64,
    lost_steps: u64,
    /// A `promoting` or `succeeded` event with no passing verdict since the last step.
    promoted_without_verdict: bool,
    duplicate_ids: bool,
}

fn judge(events: &[AuditEvent], promoted: bool) -> Judged {
    let mut judged = Judged::default();
    let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
    let mut verdict_since_step = false;
    for event in events {
        match event.kind() {
            Some(EventKind::StepAdvanced) => {
                *counts.entry(event.data.canary_weight).or_default() += 1;
                verdict_since_step = false;
            }
            Some(EventKind::Verdict) => verdict_since_step = true,
            Some(EventKind::CheckFailed) => verdict_since_step = false,
            Some(EventKind::Promoting | EventKind::Succeeded) if !verdict_since_step => {
                // A `succeeded` right after `promoting` goes on from the same verdict.
                let after_promoting = event.kind() == Some(EventKind::Succeeded)
                    && events
                        .iter()
                        .any(|e| e.kind() == Some(EventKind::Promoting));
                if !after_promoting {
                    judged.promoted_without_verdict = true;
                }
            }
            _ => {}
        }
    }
    judged.duplicate_steps = counts.values().map(|n| n - 1).sum();
    // Promoted: every planned step must be there. Rolled back: every step up to the last
    // one reached.
    let reached = if promoted {
        STEPS.len()
    } else {
        STEPS
            .iter()
            .rposition(|w| counts.contains_key(w))
            .map_or(0, |i| i + 1)
    };
    judged.lost_steps = STEPS[..reached]
        .iter()
        .filter(|w| !counts.contains_key(w))
        .count() as u64;
    let ids: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    judged.duplicate_ids = ids.len() != events.len();
    judged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_end_right_while_processes_are_killed() {
    let seconds = env_u64("AVIARY_SOAK_SECONDS", 120);
    let rollouts = usize::try_from(env_u64("AVIARY_SOAK_ROLLOUTS", 10)).unwrap();
    let seed = env_u64(
        "AVIARY_SOAK_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    ) | 1;
    eprintln!("soak: {rollouts} rollouts, {seconds} s of kills, AVIARY_SOAK_SEED={seed}");
    // Five analyses (four steps and the promotion) spread over the kill loop, no shorter than
    // 10 s so each window has traffic enough.
    let interval_s = (seconds / 6).max(10);

    let mut soak = Soak::start().await;
    let primary = App::start("v1", &AppBehaviour::default()).await;
    let healthy = App::start("v2", &AppBehaviour::default()).await;
    let failing = App::start(
        "v2",
        &AppBehaviour {
            error_rate: 0.5,
            ..Default::default()
        },
    )
    .await;

    // Every third rollout has a failing canary.
    let plan: Vec<(String, bool)> = (0..rollouts)
        .map(|i| (format!("soak-{i}"), i % 3 != 2))
        .collect();
    let mut api = soak.api().await.unwrap();
    for (name, good) in &plan {
        let canary = if *good { &healthy } else { &failing };
        api.apply(pb::ApplyRequest {
            manifest: manifest(name, interval_s, &primary, canary),
        })
        .await
        .unwrap_or_else(|e| panic!("apply {name}: {e}"));
    }
    let hosts: Vec<String> = plan.iter().map(|(n, _)| format!("{n}.soak")).collect();
    let traffic: Vec<Traffic> = hosts
        .iter()
        .map(|h| Traffic::start(&soak.url(), RPS, &[("host", h.as_str())]))
        .collect();

    // The kill loop: every 5–10 s one process is SIGKILLed, left down 1–5 s, and started again
    // (waiting until it is ready) before the next. A paced schedule, not a wait for anything.
    let mut rng = Rng(seed);
    let mut kills = 0u64;
    let mut killed: BTreeMap<String, u64> = BTreeMap::new();
    let chaos_until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < chaos_until {
        tokio::time::sleep(Duration::from_millis(5_000 + rng.below(5_000))).await;
        let target = match rng.below(9) {
            0..=2 => Target::Scheduler(usize::try_from(rng.below(3)).unwrap()),
            3 => Target::Analyzer,
            4 => Target::Agent,
            5 => Target::Notifier,
            _ => Target::Nats(usize::try_from(rng.below(3)).unwrap()),
        };
        soak.kill(target);
        kills += 1;
        *killed.entry(format!("{target:?}")).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(1_000 + rng.below(4_000))).await;
        soak.revive(target).await;
    }
    eprintln!("soak: {kills} kills {killed:?}");

    // Everything runs again: each rollout must end, promoted or rolled back.
    let deadline = Duration::from_secs(interval_s * 8 + 120);
    let mut outcomes: BTreeMap<String, pb::Phase> = BTreeMap::new();
    for (name, _) in &plan {
        let soak = &soak;
        let status = eventually(deadline, &format!("{name} ended"), || async move {
            soak.status(name)
                .await
                .filter(|s| matches!(s.phase(), pb::Phase::Succeeded | pb::Phase::Failed))
        })
        .await;
        outcomes.insert(name.clone(), status.phase());
    }
    for t in traffic {
        t.stop().await;
    }

    let audit = soak.audit().await;
    let (mut correct, mut duplicates, mut lost) = (0u64, 0u64, 0u64);
    let mut wrong = Vec::new();
    for (name, good) in &plan {
        let events = audit.get(name).map(Vec::as_slice).unwrap_or_default();
        let phase = outcomes[name];
        let promoted = phase == pb::Phase::Succeeded;
        let judged = judge(events, promoted);
        duplicates += judged.duplicate_steps;
        lost += judged.lost_steps;
        let ended_right = promoted == *good;
        if ended_right
            && !judged.promoted_without_verdict
            && !judged.duplicate_ids
            && judged.duplicate_steps + judged.lost_steps == 0
        {
            correct += 1;
        } else {
            let trail: Vec<String> = events.iter().map(describe).collect();
            wrong.push(format!(
                "{name} (healthy canary: {good}) ended {phase:?}, {judged:?}:\n    {}",
                trail.join("\n    ")
            ));
        }
    }
    for (name, value, unit) in [
        ("soak_rollouts_correct", correct, "rollouts"),
        ("soak_kills", kills, "kills"),
        ("soak_duplicate_steps", duplicates, "steps"),
        ("soak_lost_steps", lost, "steps"),
    ] {
        println!(
            "{}",
            serde_json::json!({"name": name, "value": value, "unit": unit})
        );
    }
    println!(
        "{}",
        serde_json::json!({"name": "soak_rollouts", "value": rollouts, "unit": "rollouts"})
    );

    assert!(kills > 0, "the kill loop killed nothing");
    assert!(
        wrong.is_empty(),
        "{} of {rollouts} rollouts ended right; logs in {}\n{}",
        correct,
        soak.dir.path().display(),
        wrong.join("\n")
    );
    assert_eq!(correct, rollouts as u64);
    let (refused, refused_replies) = soak.violations();
    eprintln!("soak: {refused_replies} late replies refused by nats-server");
    assert!(
        refused.is_empty(),
        "nats-server refused a service: {refused:#?}"
    );
}
