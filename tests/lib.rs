//! End-to-end harness: the whole Aviary system as real processes on loopback, for scenario
//! tests that assert on what real clients received and on the audit stream.
//!
//! A [`Stack`] is what `scripts/demo.sh` starts, per test, on ephemeral ports in a temporary
//! directory: nats-server (JetStream), N scheduler replicas, an analyzer, a router agent driving
//! a real Envoy over xDS (`deploy/local/envoy-bootstrap.yaml`, stats flushed every second),
//! Prometheus scraping Envoy every second, optionally `aviary-gate` and a notifier posting to a
//! local receiver, and two in-process demo apps (primary `v1`, canary `v2`) with configurable
//! errors and latency. Every component can be killed and restarted; [`Traffic`] sends load
//! through Envoy and records, per request, when it was sent and which version answered.
//!
//! Flow of a scenario: `Stack::start(options)` → `stack.apply(manifest)` → [`Traffic::start`] →
//! `stack.wait_phase(..)` / `stack.wait_event(..)` (polling with deadlines, never sleeping) →
//! assertions on [`Traffic`] windows and on [`Stack::events`].
//!
//! Service binaries come from the workspace's target directory (`cargo build --workspace
//! --bins`); nats-server, Envoy and Prometheus from the testkit's [`aviary_testkit::tool_path`].
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // a panic is the failure report

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aviary_proto as pb;
use aviary_proto::events::{AuditEvent, EventKind};
use aviary_proto::rollout_service_client::RolloutServiceClient;
use aviary_testkit::nginx::Nginx;
use aviary_testkit::prometheus::{Prometheus, ScrapeTarget};
use aviary_testkit::{NatsServer, Process, free_port, tool_path};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use aviary_demo::load::Summary;

/// Namespace of every scenario's rollout.
pub const NS: &str = "e2e";

/// How long any component may take to become ready: a second normally, the rest is margin for
/// four stacks starting at once on two busy cores.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A real Envoy in `dir`, from the local bootstrap (`deploy/local/envoy-bootstrap.yaml`), taking
/// its routes over xDS from the router agent on `xds_port`, and ready: the process, its admin
/// port and its listener port.
pub async fn start_envoy(dir: &Path, xds_port: u16) -> (Process, u16, u16) {
    let (admin, listener) = (free_port().unwrap(), free_port().unwrap());
    let template =
        std::fs::read_to_string(workspace_root().join("deploy/local/envoy-bootstrap.yaml"))
            .unwrap();
    let bootstrap = template
        .replace("{{ADMIN_PORT}}", &admin.to_string())
        .replace("{{LISTENER_PORT}}", &listener.to_string())
        .replace("{{XDS_PORT}}", &xds_port.to_string());
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, bootstrap).unwrap();
    let mut envoy = Process::spawn(
        "envoy",
        &tool_path("envoy").unwrap(),
        [
            "-c".to_owned(),
            config.display().to_string(),
            "--disable-hot-restart".into(),
            "--concurrency".into(),
            "1".into(),
            "-l".into(),
            "warn".into(),
        ],
        &dir.join("envoy.log"),
    )
    .unwrap();
    let ready = format!("http://127.0.0.1:{admin}/ready");
    envoy
        .wait_ready(READY_DEADLINE, || {
            let url = ready.clone();
            async move { http_ok(&url).await }
        })
        .await
        .unwrap();
    (envoy, admin, listener)
}

/// Lease TTL of the scheduler replicas: short, so a takeover happens within seconds.
pub const LEASE_TTL_MS: u64 = 1_500;

/// How often the router agent reconciles Envoy to the routes in KV: short, so a restarted agent
/// heals within seconds even without a fresh command.
pub const RECONCILE_INTERVAL_MS: u64 = 1_000;

/// The password of NATS user `user` on the stack's permissioned nats-server.
pub fn nats_password(user: &str) -> String {
    format!("e2e-{user}")
}

/// The flags that connect a service as NATS user `user` (`aviary_bus::permissions`).
pub fn nats_identity(user: &str) -> Vec<String> {
    vec![
        "--nats-user".into(),
        user.into(),
        "--nats-password".into(),
        nats_password(user),
    ]
}

/// Where the workspace's service binaries are: the test binary is `<target>/debug/deps/<test>`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current test binary");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/debug/deps")
        .to_owned()
}

/// The path of service binary `name`, checked to exist.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run cargo build --workspace --bins",
        path.display()
    );
    path
}

/// The workspace's root directory (for `deploy/` configs).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A short-lived HTTP client for probes and test requests.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

async fn http_ok(url: &str) -> bool {
    http()
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Polls `f` until it returns `Some`; panics with `what` after `deadline`.
pub async fn eventually<F, Fut, T>(deadline: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    aviary_testkit::eventually(deadline, what, f).await
}

// ---- services ---------------------------------------------------------------------------------

/// One Aviary service binary: its arguments are kept so it can be restarted exactly as it was
/// (same ports, same identity). Killed on drop.
#[derive(Debug)]
pub struct Service {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    admin_port: u16,
    process: Option<Process>,
}

impl Service {
    /// A service `name` running binary `program` with `args` (plus its admin address and log
    /// level), logging to `<dir>/<name>.log`; not started yet.
    pub fn new(name: &str, program: &str, dir: &Path, mut args: Vec<String>) -> Self {
        let admin_port = free_port().unwrap();
        args.extend([
            "--admin-addr".into(),
            format!("127.0.0.1:{admin_port}"),
            "--log".into(),
            "info".into(),
        ]);
        Self {
            name: name.to_owned(),
            program: bin(program),
            args,
            log: dir.join(format!("{name}.log")),
            admin_port,
            process: None,
        }
    }

    /// `http://127.0.0.1:<admin port>`: its `/metrics`, `/readyz` and `/healthz`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// Starts the process and waits until its admin `/readyz` answers 200.
    pub async fn start(&mut self) {
        assert!(self.process.is_none(), "{} already runs", self.name);
        let mut process = Process::spawn(&self.name, &self.program, &self.args, &self.log).unwrap();
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        process
            .wait_ready(READY_DEADLINE, || {
                let url = url.clone();
                async move { http_ok(&url).await }
            })
            .await
            .unwrap_or_else(|e| panic!("{} did not start: {e}", self.name));
        self.process = Some(process);
    }

    /// SIGKILLs the process (a crash). Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Kills and starts the process again with the same arguments.
    pub async fn restart(&mut self) {
        self.kill();
        self.start().await;
    }

    /// Whether the process runs (as far as this harness knows).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Everything the service logged, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One scheduler replica and its control-API port.
#[derive(Debug)]
pub struct Scheduler {
    /// The process.
    pub service: Service,
    /// Replica id, as it appears in leases.
    pub id: String,
    /// Control-API port.
    pub grpc_port: u16,
}

// ---- demo apps --------------------------------------------------------------------------------

/// How a demo app behaves.
#[derive(Debug, Clone, Default)]
pub struct AppBehaviour {
    /// Share of requests answered 500, 0.0–1.0.
    pub error_rate: f64,
    /// Latency added to every request.
    pub latency_ms: u64,
}

/// A demo app (`aviary_demo::app`) serving in this test's runtime.
#[derive(Debug)]
pub struct App {
    /// The version it reports.
    pub version: String,
    /// `127.0.0.1:<port>`.
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl App {
    /// Starts an app reporting `version` (in `x-version` and its metrics) behaving as told.
    pub async fn start(version: &str, behaviour: &AppBehaviour) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = aviary_demo::app::AppConfig {
            listen: addr,
            version: version.to_owned(),
            error_rate: behaviour.error_rate,
            latency_ms: behaviour.latency_ms,
        };
        let stop = CancellationToken::new();
        tokio::spawn(aviary_demo::app::serve(listener, config, stop.clone()));
        Self {
            version: version.to_owned(),
            addr,
            stop,
        }
    }

    /// The value of counter `name` (without `_total`) on the app's `/metrics`, summed over
    /// labels.
    pub async fn counter(&self, name: &str) -> f64 {
        let body = http()
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let total = format!("{name}_total");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.split([' ', '{'])
                    .next()
                    .is_some_and(|metric| metric == total)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

// ---- the stack --------------------------------------------------------------------------------

/// What a [`Stack`] runs.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Scheduler replicas.
    pub schedulers: usize,
    /// Also run `aviary-gate`.
    pub gate: bool,
    /// Also run the notifier, posting to a local receiver.
    pub notifier: bool,
    /// The canary's behaviour.
    pub canary: AppBehaviour,
    /// Also run a real NGINX as a second ingress, `internal`, of the same router agent.
    pub nginx: bool,
    /// Every service exports its spans here (`--otlp-endpoint`).
    pub otlp_endpoint: Option<String>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            schedulers: 1,
            gate: false,
            notifier: false,
            canary: AppBehaviour::default(),
            nginx: false,
            otlp_endpoint: None,
        }
    }
}

/// The whole system for one test. Everything is stopped when it is dropped.
pub struct Stack {
    /// Scheduler replicas.
    pub schedulers: Vec<Scheduler>,
    /// The analyzer.
    pub analyzer: Service,
    /// The router agent owning ingress `edge` (and `internal`, with NGINX).
    pub agent: Service,
    /// NGINX, the data plane of ingress `internal`, when asked for.
    pub nginx: Option<Nginx>,
    /// `aviary-gate`, when asked for.
    pub gate: Option<Service>,
    /// Its endpoint port.
    pub gate_port: u16,
    /// The notifier, when asked for.
    pub notifier: Option<Service>,
    /// Bodies the notifier posted to the local receiver.
    pub notifications: Arc<Mutex<Vec<serde_json::Value>>>,
    envoy: Process,
    envoy_admin: u16,
    envoy_listener: u16,
    /// Prometheus scraping Envoy.
    pub prometheus: Prometheus,
    /// Demo app v1, the primary.
    pub primary: App,
    /// Demo app v2, the canary.
    pub canary: App,
    /// nats-server.
    pub nats: NatsServer,
    client: async_nats::Client,
    dir: tempfile::TempDir,
}

impl Stack {
    /// Starts everything and waits until each component is ready.
    pub async fn start(options: StackOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("aviary-e2e-")
            .tempdir()
            .unwrap();
        // Every service runs as its own NATS user with exactly its permissions, so a missing
        // permission fails a scenario. The stack's own client reads what the scheduler does.
        let permissions = aviary_bus::permissions::nats_authorization(|user| {
            format!("\"{}\"", nats_password(user))
        });
        let nats = NatsServer::start_with_config(&permissions).await.unwrap();
        let otlp: Vec<String> = options
            .otlp_endpoint
            .iter()
            .flat_map(|e| ["--otlp-endpoint".to_owned(), e.clone()])
            .collect();
        let client = async_nats::ConnectOptions::with_user_and_password(
            "scheduler".into(),
            nats_password("scheduler"),
        )
        .custom_inbox_prefix(aviary_bus::names::inbox_prefix("aviary-scheduler"))
        .connect(nats.url())
        .await
        .unwrap();
        let primary = App::start("v1", &AppBehaviour::default()).await;
        let canary = App::start("v2", &options.canary).await;

        // Router agent first: Envoy is ready only once its ADS server has answered.
        let xds_port = free_port().unwrap();
        let agent_file = dir.path().join("agent.yaml");
        let mut agent_config = format!(
            "ingresses:\n  - name: edge\n    provider: envoy\n    xds_addr: 127.0.0.1:{xds_port}\n"
        );
        let nginx = if options.nginx {
            let nginx = Nginx::start().await.unwrap();
            agent_config.push_str(&format!(
                "  - name: internal\n    provider: nginx\n    bin: {}\n    main_conf: {}\n    include_path: {}\n    prefix: {}\n    listen: \"{}\"\n    pid_file: {}\n",
                nginx.bin().display(),
                nginx.main_conf().display(),
                nginx.include_path().display(),
                nginx.prefix().display(),
                nginx.listen(),
                nginx.prefix().join("nginx.pid").display(),
            ));
            Some(nginx)
        } else {
            None
        };
        std::fs::write(&agent_file, agent_config).unwrap();
        let mut agent = Service::new(
            "router-agent",
            "aviary-router-agent",
            dir.path(),
            vec![
                "--nats-url".into(),
                nats.url(),
                "--config-file".into(),
                agent_file.display().to_string(),
                "--reconcile-interval-ms".into(),
                RECONCILE_INTERVAL_MS.to_string(),
                "--apply-timeout-ms".into(),
                "5000".into(),
            ]
            .into_iter()
            .chain(nats_identity("router-agent"))
            .chain(otlp.iter().cloned())
            .collect(),
        );
        agent.start().await;

        let (envoy, envoy_admin, envoy_listener) = start_envoy(dir.path(), xds_port).await;

        let prometheus =
            Prometheus::start(&[
                ScrapeTarget::new("envoy", format!("127.0.0.1:{envoy_admin}"))
                    .metrics_path("/stats/prometheus"),
            ])
            .await
            .unwrap();

        let mut analyzer = Service::new(
            "analyzer",
            "aviary-analyzer",
            dir.path(),
            vec![
                "--nats-url".into(),
                nats.url(),
                "--prometheus-url".into(),
                prometheus.url(),
                "--query-timeout-ms".into(),
                "3000".into(),
                // The testkit's Prometheus scrapes every second.
                "--scrape-interval".into(),
                "1s".into(),
            ]
            .into_iter()
            .chain(nats_identity("analyzer"))
            .chain(otlp.iter().cloned())
            .collect(),
        );
        analyzer.start().await;

        let gate_port = free_port().unwrap();
        let gate = if options.gate {
            let mut gate = Service::new(
                "gate",
                "aviary-gate",
                dir.path(),
                vec![
                    "--nats-url".into(),
                    nats.url(),
                    "--listen-addr".into(),
                    format!("127.0.0.1:{gate_port}"),
                ]
                .into_iter()
                .chain(nats_identity("gate"))
                .chain(otlp.iter().cloned())
                .collect(),
            );
            gate.start().await;
            Some(gate)
        } else {
            None
        };

        let notifications = Arc::new(Mutex::new(Vec::new()));
        let notifier = if options.notifier {
            let port = receiver(notifications.clone()).await;
            let config = dir.path().join("notifier.yaml");
            std::fs::write(
                &config,
                format!(
                    "defaultProvider: hook\ndefaultSeverity: info\nproviders:\n  - name: hook\n    type: webhook\n    url: http://127.0.0.1:{port}/hook\n"
                ),
            )
            .unwrap();
            let mut notifier = Service::new(
                "notifier",
                "aviary-notifier",
                dir.path(),
                vec![
                    "--nats-url".into(),
                    nats.url(),
                    "--config".into(),
                    config.display().to_string(),
                    "--cluster-name".into(),
                    "e2e".into(),
                ]
                .into_iter()
                .chain(nats_identity("notifier"))
                .chain(otlp.iter().cloned())
                .collect(),
            );
            notifier.start().await;
            Some(notifier)
        } else {
            None
        };

        let mut schedulers = Vec::new();
        for i in 0..options.schedulers.max(1) {
            let id = format!("scheduler-{i}");
            let grpc_port = free_port().unwrap();
            let mut service = Service::new(
                &id,
                "aviary-scheduler",
                dir.path(),
                vec![
                    "--nats-url".into(),
                    nats.url(),
                    "--grpc-addr".into(),
                    format!("127.0.0.1:{grpc_port}"),
                    "--replica-id".into(),
                    id.clone(),
                    "--lease-ttl-ms".into(),
                    LEASE_TTL_MS.to_string(),
                    "--route-timeout-ms".into(),
                    "3000".into(),
                    "--analysis-timeout-ms".into(),
                    "8000".into(),
                ]
                .into_iter()
                .chain(nats_identity("scheduler"))
                .chain(otlp.iter().cloned())
                .collect(),
            );
            service.start().await;
            schedulers.push(Scheduler {
                service,
                id,
                grpc_port,
            });
        }

        Self {
            schedulers,
            analyzer,
            agent,
            nginx,
            gate,
            gate_port,
            notifier,
            notifications,
            envoy,
            envoy_admin,
            envoy_listener,
            prometheus,
            primary,
            canary,
            nats,
            client,
            dir,
        }
    }

    /// `http://127.0.0.1:<port>/`: where clients send traffic (Envoy's listener).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.envoy_listener)
    }

    /// `http://127.0.0.1:<port>/` of NGINX, ingress `internal` (a stack started with `nginx`).
    pub fn nginx_url(&self) -> String {
        let nginx = self.nginx.as_ref().expect("a stack started with nginx");
        format!("{}/", nginx.url().trim_end_matches('/'))
    }

    /// `http://127.0.0.1:<port>` of `aviary-gate`.
    pub fn gate_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gate_port)
    }

    /// The temporary directory holding configs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A NATS client (reconnects across a nats-server restart).
    pub fn nats_client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Envoy's admin port.
    pub fn envoy_admin_port(&self) -> u16 {
        self.envoy_admin
    }

    /// Envoy's log so far.
    pub fn envoy_log(&self) -> String {
        self.envoy.log()
    }

    // ---- control API ----------------------------------------------------------------------

    /// A control-API client of the first running replica.
    pub async fn api(&self) -> RolloutServiceClient<Channel> {
        let replica = self
            .schedulers
            .iter()
            .find(|s| s.service.is_running())
            .expect("a running scheduler replica");
        api_client(replica.grpc_port).await
    }

    /// A rollout manifest on this stack's apps and ingress: `analysis` (and `extra`, e.g. a
    /// `steps:` list) are YAML indented for the `spec:` level (two spaces).
    pub fn manifest(&self, name: &str, analysis: &str, extra: &str) -> String {
        format!(
            "apiVersion: aviary.dev/v1alpha1\nkind: Rollout\nmetadata: {{ name: {name}, namespace: {NS} }}\nspec:\n  ingresses: [{{ name: edge }}]\n  primary: {{ name: podinfo-v1, endpoints: [\"{}\"] }}\n  canary: {{ name: podinfo-v2, endpoints: [\"{}\"] }}\n  progressDeadlineSeconds: 120\n  analysis:\n{}\n{}",
            self.primary.addr,
            self.canary.addr,
            analysis.trim_end(),
            extra.trim_end()
        )
    }

    /// Applies `manifest` through the control API of the first running replica.
    pub async fn apply(&self, manifest: &str) -> pb::Rollout {
        let response = self
            .api()
            .await
            .apply(pb::ApplyRequest {
                manifest: manifest.to_owned(),
            })
            .await
            .unwrap_or_else(|e| panic!("apply refused: {e}\n{manifest}"));
        // In endpoint mode the ingress has no route until the rollout's first one (100 % to the
        // primary) is confirmed; scenarios measure traffic from then on.
        let url = self.url();
        eventually(
            Duration::from_secs(30),
            "the ingress serving a route",
            || {
                let url = url.clone();
                async move {
                    let response = http().get(&url).send().await.ok()?;
                    (response.status().as_u16() != 404).then_some(())
                }
            },
        )
        .await;
        response.into_inner().rollout.expect("applied rollout")
    }

    /// Applies `manifest` through the control API of the first running replica, without
    /// waiting for any route: the API's answer as it is.
    pub async fn try_apply(&self, manifest: &str) -> Result<pb::Rollout, tonic::Status> {
        let response = self
            .api()
            .await
            .apply(pb::ApplyRequest {
                manifest: manifest.to_owned(),
            })
            .await?;
        Ok(response.into_inner().rollout.expect("applied rollout"))
    }

    /// The rollout `name` as the API shows it.
    pub async fn get(&self, name: &str) -> pb::Rollout {
        self.api()
            .await
            .get(pb::GetRequest {
                r#ref: Some(pb::RolloutRef::new(NS, name)),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Polls the rollout until `pred` holds of its status; panics with the status and the
    /// audit trail after `deadline`, or at once when the rollout ended some other way.
    pub async fn wait_status(
        &self,
        name: &str,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&pb::RolloutStatus) -> bool,
    ) -> pb::RolloutStatus {
        let started = Instant::now();
        let mut last = None;
        let mut terminal_since: Option<Instant> = None;
        loop {
            if let Ok(mut api) = self.try_api().await
                && let Ok(rollout) = api
                    .get(pb::GetRequest {
                        r#ref: Some(pb::RolloutRef::new(NS, name)),
                    })
                    .await
            {
                let status = rollout.into_inner().status.unwrap_or_default();
                if pred(&status) {
                    return status;
                }
                let terminal = matches!(status.phase(), pb::Phase::Succeeded | pb::Phase::Failed);
                if terminal {
                    // A finished rollout changes only until its last route is confirmed
                    // (milliseconds): after a grace, no point waiting.
                    let since = *terminal_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(5) {
                        self.fail(name, &format!("{what}: rollout ended instead"), &status)
                            .await;
                    }
                }
                last = Some(status);
            }
            if started.elapsed() >= deadline {
                self.fail(
                    name,
                    &format!("timed out after {deadline:?} waiting for {what}"),
                    &last.unwrap_or_default(),
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the rollout is in `phase`.
    pub async fn wait_phase(
        &self,
        name: &str,
        phase: pb::Phase,
        deadline: Duration,
    ) -> pb::RolloutStatus {
        self.wait_status(name, &format!("phase {phase:?}"), deadline, |s| {
            s.phase() == phase
        })
        .await
    }

    /// Waits until the rollout failed *and* every ingress confirmed the rollback split (100 %
    /// primary): the phase is stored when the rollback is decided, a moment before the data
    /// plane serves it.
    pub async fn wait_rolled_back(&self, name: &str, deadline: Duration) -> pb::RolloutStatus {
        self.wait_status(name, "rolled back and confirmed", deadline, |s| {
            s.phase() == pb::Phase::Failed && s.canary_weight == 0 && s.primary_weight == 100
        })
        .await
    }

    async fn try_api(&self) -> Result<RolloutServiceClient<Channel>, tonic::transport::Error> {
        let replica = self
            .schedulers
            .iter()
            .find(|s| s.service.is_running())
            .expect("a running scheduler replica");
        RolloutServiceClient::connect(format!("http://127.0.0.1:{}", replica.grpc_port)).await
    }

    async fn fail(&self, name: &str, why: &str, status: &pb::RolloutStatus) -> ! {
        let events = self.events(name).await;
        let trail: Vec<String> = events.iter().map(describe).collect();
        panic!(
            "{NS}/{name}: {why}\nstatus: {status:#?}\naudit trail:\n  {}",
            trail.join("\n  ")
        );
    }

    // ---- audit stream ---------------------------------------------------------------------

    /// Every audit event of rollout `name` on `AVIARY_EVENTS`, in stream order.
    pub async fn events(&self, name: &str) -> Vec<AuditEvent> {
        let js = async_nats::jetstream::new(self.client.clone());
        let Ok(stream) = js.get_stream(aviary_bus::names::STREAM_EVENTS).await else {
            return Vec::new();
        };
        let subject = aviary_bus::names::events_subject(NS, name).unwrap();
        let mut info_stream = stream.clone();
        let Ok(info) = info_stream.info().await else {
            return Vec::new();
        };
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut events = Vec::new();
        for seq in first.max(1)..=last {
            if let Ok(message) = stream.get_raw_message(seq).await
                && message.subject.as_str() == subject
            {
                let event: AuditEvent =
                    serde_json::from_slice(&message.payload).unwrap_or_else(|e| {
                        panic!(
                            "audit event {seq} is not a CloudEvent ({e}): {}",
                            String::from_utf8_lossy(&message.payload)
                        )
                    });
                events.push(event);
            }
        }
        events
    }

    /// Waits until an event of `kind` is on the audit stream, and returns it.
    pub async fn wait_event(&self, name: &str, kind: EventKind, deadline: Duration) -> AuditEvent {
        self.wait_event_where(name, &format!("{kind:?} event"), deadline, |e| {
            e.kind() == Some(kind)
        })
        .await
    }

    /// Waits until an event satisfying `pred` is on the audit stream, and returns the first.
    pub async fn wait_event_where(
        &self,
        name: &str,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&AuditEvent) -> bool,
    ) -> AuditEvent {
        let started = Instant::now();
        loop {
            if let Some(event) = self.events(name).await.into_iter().find(|e| pred(e)) {
                return event;
            }
            if started.elapsed() >= deadline {
                let status = self.get(name).await.status.unwrap_or_default();
                self.fail(
                    name,
                    &format!("timed out after {deadline:?} waiting for {what}"),
                    &status,
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // ---- gate -----------------------------------------------------------------------------

    /// POSTs Flagger's payload for rollout `name` to `aviary-gate`'s `path` (e.g. `/gate/open`)
    /// and returns the status code.
    pub async fn gate_call(&self, path: &str, name: &str) -> u16 {
        http()
            .post(format!("{}{path}", self.gate_url()))
            .json(&serde_json::json!({"name": name, "namespace": NS, "phase": "", "metadata": {}}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Runs `aviary gate ACTION <ns>/<name>` against this stack's gate service; returns the
    /// exit code and what it printed.
    pub async fn gate_cli(&self, action: &str, name: &str) -> (i32, String) {
        let output = tokio::process::Command::new(bin("aviary"))
            .args([
                "gate",
                action,
                &format!("{NS}/{name}"),
                "--gate-url",
                &self.gate_url(),
            ])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.code().unwrap_or(-1), text)
    }

    // ---- faults ---------------------------------------------------------------------------

    /// The replica id holding rollout `name`'s lease, if any.
    pub async fn owner(&self, name: &str) -> Option<String> {
        let js = async_nats::jetstream::new(self.client.clone());
        let leases = js
            .get_key_value(aviary_bus::names::BUCKET_LEASES)
            .await
            .ok()?;
        let raw = leases
            .get(aviary_bus::names::lease_key(NS, name).ok()?)
            .await
            .ok()??;
        let lease: serde_json::Value = serde_json::from_slice(&raw).ok()?;
        lease["owner"].as_str().map(str::to_owned)
    }

    /// The scheduler replica with id `id`.
    pub fn scheduler(&mut self, id: &str) -> &mut Scheduler {
        self.schedulers
            .iter_mut()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("no replica {id}"))
    }
}

/// A scenario passes only if the server refused no service anything: every service runs as
/// its own NATS user, and a permission it lacks is a bug in `aviary_bus::permissions`.
impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let log = self.nats.log();
        let refused: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
        assert!(
            refused.is_empty(),
            "nats-server refused a service: {refused:#?}"
        );
    }
}

/// A control-API client, retried until the server listens.
pub async fn api_client(grpc_port: u16) -> RolloutServiceClient<Channel> {
    let url = format!("http://127.0.0.1:{grpc_port}");
    eventually(Duration::from_secs(10), "control API listening", || {
        let url = url.clone();
        async move { RolloutServiceClient::connect(url).await.ok() }
    })
    .await
}

/// One line per audit event, for failure messages.
pub fn describe(event: &AuditEvent) -> String {
    format!(
        "{} step={} phase={} weights={}/{} {}",
        event
            .ty
            .trim_start_matches(aviary_proto::events::TYPE_PREFIX),
        event.data.step,
        event.data.phase,
        event.data.primary_weight,
        event.data.canary_weight,
        event.data.reason
    )
}

/// The kinds of `events`, in order.
pub fn kinds(events: &[AuditEvent]) -> Vec<EventKind> {
    events.iter().filter_map(AuditEvent::kind).collect()
}

/// The canary weights the audit trail shows the rollout at, in order, each run of equal
/// weights once: e.g. `[0, 25, 50, 100]` for a promoted 25 % / 50 % canary.
pub fn weight_trail(events: &[AuditEvent]) -> Vec<u32> {
    let mut trail: Vec<u32> = Vec::new();
    for event in events {
        if trail.last() != Some(&event.data.canary_weight) {
            trail.push(event.data.canary_weight);
        }
    }
    trail
}

/// How many `step-advanced` events the trail has (one per planned step when none repeats).
pub fn steps_advanced(events: &[AuditEvent]) -> usize {
    events
        .iter()
        .filter(|e| e.kind() == Some(EventKind::StepAdvanced))
        .count()
}

/// The result of metric `name` in `verdict`.
pub fn metric<'a>(verdict: &'a pb::Verdict, name: &str) -> &'a pb::MetricResult {
    verdict
        .metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no {name} in {verdict:#?}"))
}

/// Starts an HTTP receiver for the notifier, storing each JSON body it is posted at `/hook`;
/// returns its port.
pub async fn receiver(store: Arc<Mutex<Vec<serde_json::Value>>>) -> u16 {
    use axum::routing::post;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                if let Ok(json) = serde_json::from_slice(&body) {
                    store.lock().unwrap().push(json);
                }
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

// ---- traffic ------------------------------------------------------------------------------------

/// One request as the client saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    /// When it was sent.
    pub at: Instant,
    /// The `x-version` that answered (`none` without one, `error` without a response).
    pub version: String,
    /// HTTP status; 0 without a response.
    pub status: u16,
}

/// Fixed-rate load through Envoy, recording every request, so a test can ask what clients saw
/// in any window.
pub struct Traffic {
    hits: Arc<Mutex<Vec<Hit>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    /// Sends `rps` requests per second to `url` with `headers`, until stopped.
    pub fn start(url: &str, rps: u32, headers: &[(&str, &str)]) -> Self {
        let client = http();
        let mut map = reqwest::header::HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                reqwest::header::HeaderValue::from_str(value).unwrap(),
            );
        }
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let stop = CancellationToken::new();
        let url = url.to_owned();
        let task = {
            let (hits, stop) = (hits.clone(), stop.clone());
            tokio::spawn(async move {
                let mut ticker =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps.max(1))));
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let tracker = tokio_util::task::TaskTracker::new();
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = ticker.tick() => {}
                    }
                    let request = client.get(&url).headers(map.clone());
                    let hits = hits.clone();
                    tracker.spawn(async move {
                        let at = Instant::now();
                        let (version, status) = match request.send().await {
                            Ok(r) => (
                                r.headers()
                                    .get("x-version")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("none")
                                    .to_owned(),
                                r.status().as_u16(),
                            ),
                            Err(_) => ("error".to_owned(), 0),
                        };
                        hits.lock().unwrap().push(Hit {
                            at,
                            version,
                            status,
                        });
                    });
                }
                tracker.close();
                tracker.wait().await;
            })
        };
        Self { hits, stop, task }
    }

    /// What the requests sent at or after `from` saw (those answered so far).
    pub fn since(&self, from: Instant) -> Summary {
        self.window(from, None)
    }

    /// What the requests sent in `[from, to)` saw.
    pub fn window(&self, from: Instant, to: Option<Instant>) -> Summary {
        let hits = self.hits.lock().unwrap();
        let mut summary = Summary::default();
        for hit in hits
            .iter()
            .filter(|h| h.at >= from && to.is_none_or(|t| h.at < t))
        {
            summary.sent += 1;
            if hit.status == 0 {
                summary.errors += 1;
            } else {
                *summary.by_version.entry(hit.version.clone()).or_default() += 1;
                *summary.by_status.entry(hit.status).or_default() += 1;
            }
        }
        summary
    }

    /// Waits until at least `n` requests sent after `from` were answered, and returns what they
    /// saw.
    pub async fn wait_answers(&self, from: Instant, n: u64, deadline: Duration) -> Summary {
        eventually(deadline, &format!("{n} answered requests"), || {
            let s = self.since(from);
            async move { (s.sent - s.errors >= n).then_some(s) }
        })
        .await
    }

    /// Stops sending, waits for the requests in flight, and returns what all requests saw.
    pub async fn stop(self) -> Summary {
        let Self { hits, stop, task } = self;
        stop.cancel();
        let _ = task.await;
        let rest = Self {
            hits,
            stop,
            task: tokio::spawn(async {}),
        };
        let from = rest.hits.lock().unwrap().iter().map(|h| h.at).min();
        from.map_or_else(Summary::default, |from| rest.since(from))
    }
}

/// A single request's answer, for header and cookie checks.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The `x-version` that answered.
    pub version: String,
    /// HTTP status.
    pub status: u16,
    /// Every `set-cookie` header.
    pub set_cookies: Vec<String>,
}

/// Sends one `GET url` with `headers`.
pub async fn probe(url: &str, headers: &[(&str, &str)]) -> Probe {
    let mut request = http().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    Probe {
        version: response
            .headers()
            .get("x-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned(),
        status: response.status().as_u16(),
        set_cookies: response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect(),
    }
}

/// Sends `n` requests one after the other and counts the versions that answered.
pub async fn sample(url: &str, headers: &[(&str, &str)], n: usize) -> BTreeMap<String, u64> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        *seen.entry(probe(url, headers).await.version).or_default() += 1;
    }
    seen
}

/// Waits until `n` consecutive requests are all answered by `version`.
pub async fn wait_serving(url: &str, headers: &[(&str, &str)], version: &str, deadline: Duration) {
    eventually(
        deadline,
        &format!("clients served only by {version}"),
        || async move {
            let seen = sample(url, headers, 10).await;
            (seen.len() == 1 && seen.contains_key(version)).then_some(())
        },
    )
    .await;
}

/// Share of `summary`'s answered requests that `version` served, 0.0–1.0.
pub fn share(summary: &Summary, version: &str) -> f64 {
    let answered: u64 = summary.by_version.values().sum();
    if answered == 0 {
        return 0.0;
    }
    summary.by_version.get(version).copied().unwrap_or(0) as f64 / answered as f64
}
