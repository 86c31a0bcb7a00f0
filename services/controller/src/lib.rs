//! The Aviary Kubernetes controller: runs rollouts from `aviary.dev/v1alpha1` `Rollout` and
//! (optionally) Flagger `flagger.app/v1beta1` `Canary` resources on real Deployments and
//! DaemonSets.
//!
//! ```text
//!  watch Rollouts/Canaries, Deployments, DaemonSets, ConfigMaps, Secrets ─► queue ─► reconcile
//!      reconcile: initialise workloads, detect revisions ─► gRPC Apply ─► scheduler
//!  scheduler ─► aviary.workload.<ns>.<name> ─► commands (scale up, promote primary, scale down)
//!  aviary.events.> ─► status (phase, weight, checks, Promoted) and Kubernetes Events
//! ```
//!
//! One replica acts at a time (a Kubernetes `Lease`, see [`lease`]); the others wait with
//! their watches and subscriptions closed. Modules: [`crd`] (the resource types and CRDs),
//! [`workload`] (pure functions on workloads), [`reconcile`], [`commands`], [`status`],
//! [`resource`] (kinds, decoding, status and Event writes), [`scheduler`] (control-API client),
//! [`lease`].

pub mod commands;
pub mod crd;
pub mod flagger;
pub mod lease;
pub mod reconcile;
pub mod resource;
pub mod scheduler;
pub mod status;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use aviary_bus::BusMetrics;
use aviary_runtime::CommonArgs;
use aviary_runtime::admin::{AdminServer, Readiness};
use aviary_runtime::tasks::Tasks;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, warn};

use resource::{Key, Kind};

/// The controller's flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aviary-controller",
    version,
    about = "Runs Aviary rollouts from Kubernetes Rollout and Flagger Canary resources"
)]
pub struct Config {
    /// Flags every service takes.
    #[command(flatten)]
    pub common: CommonArgs,

    /// NATS connection.
    #[command(flatten)]
    pub nats: aviary_bus::NatsArgs,

    /// The scheduler's control API.
    #[arg(
        long,
        env = "AVIARY_SCHEDULER_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub scheduler: String,

    /// File with the operator token for the control API.
    #[arg(long, env = "AVIARY_CONTROLLER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// CA certificate (PEM) of the control API's TLS.
    #[arg(long, env = "AVIARY_CONTROLLER_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Watch only this namespace (all namespaces when unset).
    #[arg(long, env = "AVIARY_WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Also run Flagger `Canary` resources (their CRDs must be installed).
    #[arg(long, env = "AVIARY_WATCH_FLAGGER", default_value_t = false)]
    pub flagger: bool,

    /// Name of the leader-election Lease.
    #[arg(long, env = "AVIARY_LEASE_NAME", default_value = "aviary-controller")]
    pub lease_name: String,

    /// Namespace of the Lease (the controller's own).
    #[arg(long, env = "AVIARY_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "AVIARY_POD_NAME", default_value = "aviary-controller")]
    pub identity: String,

    /// How long the Lease holds without renewal.
    #[arg(long, env = "AVIARY_LEASE_DURATION", default_value = "15s", value_parser = aviary_core::duration::parse_std_duration)]
    pub lease_duration: Duration,

    /// Every resource is reconciled at least this often.
    #[arg(long, env = "AVIARY_RESYNC", default_value = "30s", value_parser = aviary_core::duration::parse_std_duration)]
    pub resync: Duration,

    /// Kubeconfig file (in-cluster or the usual inference when unset).
    #[arg(long, env = "AVIARY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    op: String,
    result: String,
}

/// The controller's metrics (`aviary_controller_*`).
#[derive(Clone, Debug)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    reconcile_seconds: Histogram,
    commands: Family<CommandLabels, Counter>,
    leader: Gauge,
}

impl Metrics {
    /// Registers the metrics under `controller`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            reconciles: Family::default(),
            reconcile_seconds: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            commands: Family::default(),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("controller");
        r.register("reconciles", "Reconciles by result", m.reconciles.clone());
        r.register(
            "reconcile_seconds",
            "Time one reconcile took",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "workload_commands",
            "Workload commands answered, by operation and result",
            m.commands.clone(),
        );
        r.register("leader", "1 while this replica leads", m.leader.clone());
        m
    }

    fn reconciled(&self, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        self.reconcile_seconds.observe(seconds);
    }

    pub(crate) fn command(&self, op: &str, ok: bool, done: bool) {
        let result = match (ok, done) {
            (false, _) => "refused",
            (true, false) => "pending",
            (true, true) => "done",
        };
        self.commands
            .get_or_create(&CommandLabels {
                op: op.to_owned(),
                result: result.into(),
            })
            .inc();
    }

    /// How many reconciles ended with `result` (`ok` or `error`).
    pub fn reconciles(&self, result: &str) -> u64 {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .get()
    }
}

/// What every task of the leading replica shares.
pub struct Ctx {
    /// The Kubernetes client.
    pub kube: Client,
    /// The scheduler's control API.
    pub scheduler: scheduler::Scheduler,
    /// The kinds served, `Rollout` first.
    pub kinds: Vec<Kind>,
    /// The one namespace watched, if the install is namespaced.
    pub namespace: Option<String>,
    /// The metrics.
    pub metrics: Metrics,
    queue: Queue,
    /// Resources seen: the name of their target (to map workload events to them) and the
    /// generation last seen.
    known: Mutex<BTreeMap<Key, Known>>,
}

/// A de-duplicating work queue of resource keys with delayed requeues.
#[derive(Clone)]
struct Queue {
    tx: mpsc::UnboundedSender<Key>,
    pending: Arc<Mutex<BTreeSet<Key>>>,
}

impl Queue {
    fn push(&self, key: Key) {
        let fresh = self
            .pending
            .lock()
            .map(|mut p| p.insert(key.clone()))
            .unwrap_or(true);
        if fresh {
            let _ = self.tx.send(key);
        }
    }

    fn push_after(&self, key: Key, after: Duration, stop: CancellationToken) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(after) => queue.push(key),
            }
        });
    }

    fn taken(&self, key: &Key) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(key);
        }
    }
}

/// What the controller remembers of a resource between events.
#[derive(Clone, Debug, Default)]
struct Known {
    target: Option<String>,
    generation: Option<i64>,
}

impl Ctx {
    /// Records `obj`; returns the generation seen before (`None` for a new resource).
    fn remember(&self, key: Key, obj: &DynamicObject) -> Option<i64> {
        let target = obj
            .data
            .pointer("/spec/targetRef/name")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let Ok(mut known) = self.known.lock() else {
            return None;
        };
        let before = known.get(&key).and_then(|k| k.generation);
        known.insert(
            key,
            Known {
                target,
                generation: obj.metadata.generation,
            },
        );
        before
    }

    fn forget(&self, key: &Key) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(key);
        }
    }

    /// The resources a change of the workload or config `namespace/name` may concern.
    fn affected(&self, namespace: &str, name: &str, config: bool) -> Vec<Key> {
        let Ok(known) = self.known.lock() else {
            return Vec::new();
        };
        known
            .iter()
            .filter(|(k, known)| {
                k.namespace == namespace
                    && (config
                        || known.target.as_deref() == Some(name)
                        || workload::primary_name(&k.name) == name)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn all(&self) -> Vec<Key> {
        self.known
            .lock()
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// A started controller.
pub struct Running {
    /// The admin server's address (`/healthz`, `/readyz`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// The metrics.
    pub metrics: Metrics,
    /// Whether this replica leads now.
    pub leader: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the controller stopped (after `shutdown`).
    ///
    /// # Errors
    /// When a task failed or panicked.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("controller task")?
    }
}

/// Runs the controller until `shutdown`, with a Kubernetes client from `--kubeconfig`, the
/// in-cluster config, or the usual inference.
///
/// # Errors
/// No Kubernetes config, NATS unreachable at start, or the admin port taken.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    aviary_runtime::install_crypto_provider();
    let kube = match &config.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            Client::try_from(cfg)?
        }
        None => Client::try_default()
            .await
            .context("no Kubernetes configuration (in-cluster or kubeconfig)")?,
    };
    start(config, kube, shutdown).await?.wait().await
}

/// Starts the controller with `kube`: connects to NATS, serves the admin endpoints, and runs
/// the election and, while leading, the watches, the queue and the bus handlers. Returns once
/// it is started.
///
/// # Errors
/// NATS unreachable, a bad token or CA file, or the admin port taken.
pub async fn start(
    config: Config,
    kube: Client,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let token = match &config.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading token file {}", path.display()))?,
        ),
        None => None,
    };
    let ca = match &config.ca_file {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let scheduler = scheduler::Scheduler::new(&config.scheduler, token.as_deref(), ca)?;
    let mut registry = aviary_runtime::admin::registry();
    let metrics = Metrics::register(&mut registry);
    let bus_metrics = BusMetrics::register(&mut registry);
    let ready = Readiness::default();
    let admin_stop = shutdown.child_token();
    let admin_addr = AdminServer::spawn(
        config.common.admin_addr,
        registry,
        ready.clone(),
        admin_stop,
    )
    .await
    .with_context(|| format!("binding the admin server on {}", config.common.admin_addr))?;
    let nats = config
        .nats
        .connect_reporting("aviary-controller", ready.condition("nats").reporter())
        .await?;
    ready.set(true);

    let (leader_tx, leader_rx) = watch::channel(false);
    let settings = lease::LeaseSettings {
        name: config.lease_name.clone(),
        namespace: config.lease_namespace.clone(),
        identity: config.identity.clone(),
        duration: config.lease_duration,
    };
    let tasks = Tasks::new(&shutdown, &ready);
    // Runs until stopped, renewing or retrying: ending early leaves no one to lead.
    let election = lease::run(kube.clone(), settings, leader_tx, tasks.token());
    tasks.critical("leader election", async move {
        election.await;
        Ok::<(), std::convert::Infallible>(())
    });
    let drain = config.common.drain_timeout;
    let mut kinds = vec![Kind::Rollout];
    if config.flagger {
        kinds.push(Kind::Canary);
    }
    let shared = Shared {
        kube,
        scheduler,
        kinds,
        metrics: metrics.clone(),
        nats,
        bus_metrics,
        namespace: config.namespace.clone(),
        resync: config.resync,
    };
    let mut leading = leader_rx.clone();
    let stop = tasks.token();
    tasks.critical("leadership terms", async move {
        loop {
            // Wait to lead (or to stop).
            tokio::select! {
                () = stop.cancelled() => break,
                r = leading.wait_for(|l| *l) => if r.is_err() { break },
            }
            shared.metrics.leader.set(1);
            let term = stop.child_token();
            let work = tokio::spawn(lead(shared.clone(), term.clone()).in_current_span());
            tokio::select! {
                () = stop.cancelled() => {}
                _ = leading.wait_for(|l| !*l) => info!("no longer leading"),
            }
            term.cancel();
            let _ = work.await;
            shared.metrics.leader.set(0);
        }
        shared.nats.flush().await.ok();
        Ok::<(), std::convert::Infallible>(())
    });
    let task = tokio::spawn(async move {
        tasks.stopped().await;
        ready.set(false);
        tasks.finish(drain).await?;
        Ok(())
    });
    Ok(Running {
        admin_addr,
        metrics,
        leader: leader_rx,
        task,
    })
}

#[derive(Clone)]
struct Shared {
    kube: Client,
    scheduler: scheduler::Scheduler,
    kinds: Vec<Kind>,
    metrics: Metrics,
    nats: async_nats::Client,
    bus_metrics: Arc<BusMetrics>,
    namespace: Option<String>,
    resync: Duration,
}

/// One term as leader: watches, the queue worker and the bus handlers, until `stop`.
async fn lead(shared: Shared, stop: CancellationToken) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        kube: shared.kube.clone(),
        scheduler: shared.scheduler.clone(),
        kinds: shared.kinds.clone(),
        namespace: shared.namespace.clone(),
        metrics: shared.metrics.clone(),
        queue: Queue {
            tx,
            pending: Arc::default(),
        },
        known: Mutex::new(BTreeMap::new()),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for kind in ctx.kinds.clone() {
        let api = match &shared.namespace {
            Some(ns) => kind.api(&ctx.kube, ns),
            None => Api::all_with(ctx.kube.clone(), &kind.api_resource()),
        };
        tasks.spawn(watch_resources(ctx.clone(), kind, api, stop.clone()));
    }
    tasks.spawn(watch_workloads::<Deployment>(
        ctx.clone(),
        shared.namespace.clone(),
        false,
        stop.clone(),
    ));
    tasks.spawn(watch_workloads::<DaemonSet>(
        ctx.clone(),
        shared.namespace.clone(),
        false,
        stop.clone(),
    ));
    tasks.spawn(watch_workloads::<ConfigMap>(
        ctx.clone(),
        shared.namespace.clone(),
        true,
        stop.clone(),
    ));
    tasks.spawn(watch_workloads::<Secret>(
        ctx.clone(),
        shared.namespace.clone(),
        true,
        stop.clone(),
    ));
    {
        let (ctx, nats, m, stop) = (
            ctx.clone(),
            shared.nats.clone(),
            shared.bus_metrics.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            if let Err(error) = commands::serve(ctx, nats, m, stop).await {
                warn!(%error, "workload commands not served");
            }
        });
    }
    {
        let (ctx, nats, m, stop) = (
            ctx.clone(),
            shared.nats.clone(),
            shared.bus_metrics.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            if let Err(error) = status::serve(ctx, nats, m, stop).await {
                warn!(%error, "audit events not mirrored");
            }
        });
    }
    {
        let (ctx, stop, every) = (ctx.clone(), stop.clone(), shared.resync);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => ctx.all().into_iter().for_each(|k| ctx.queue.push(k)),
                }
            }
        });
    }
    // The worker: one resource at a time, so two reconciles of one resource never race.
    loop {
        let key = tokio::select! {
            () = stop.cancelled() => break,
            k = rx.recv() => match k { Some(k) => k, None => break },
        };
        ctx.queue.taken(&key);
        let started = Instant::now();
        let result = reconcile::reconcile(&ctx, &key).await;
        ctx.metrics
            .reconciled(result.is_ok(), started.elapsed().as_secs_f64());
        let requeue = match result {
            Ok(requeue) => {
                if let Err(error) = refresh_status(&ctx, &key).await {
                    warn!(resource = %key, %error, "status not refreshed");
                }
                requeue
            }
            Err(error) => {
                warn!(resource = %key, %error, "reconcile failed");
                Some(Duration::from_secs(5))
            }
        };
        if let Some(after) = requeue {
            ctx.queue.push_after(key, after, stop.clone());
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

async fn refresh_status(ctx: &Ctx, key: &Key) -> anyhow::Result<()> {
    let Some(obj) = key
        .kind
        .api(&ctx.kube, &key.namespace)
        .get_opt(&key.name)
        .await?
    else {
        return Ok(());
    };
    let now = jiff::Timestamp::now().to_string();
    status::refresh(ctx, key, &resource::status_of(&obj), &now).await
}

async fn watch_resources(
    ctx: Arc<Ctx>,
    kind: Kind,
    api: Api<DynamicObject>,
    stop: CancellationToken,
) {
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            e = events.next() => match e { Some(e) => e, None => break },
        };
        match event {
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                let key = Key::of(kind, &obj);
                // Only a changed spec (a new generation) or a deletion is work; status writes,
                // ours included, are not.
                let seen = ctx.remember(key.clone(), &obj);
                if seen != obj.metadata.generation || obj.metadata.deletion_timestamp.is_some() {
                    ctx.queue.push(key);
                }
            }
            Ok(watcher::Event::Delete(obj)) => ctx.forget(&Key::of(kind, &obj)),
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(error) => {
                warn!(%kind, %error, "watch failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

async fn watch_workloads<K>(
    ctx: Arc<Ctx>,
    namespace: Option<String>,
    config: bool,
    stop: CancellationToken,
) where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
{
    let api: Api<K> = match &namespace {
        Some(ns) => Api::namespaced(ctx.kube.clone(), ns),
        None => Api::all(ctx.kube.clone()),
    };
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            e = events.next() => match e { Some(e) => e, None => break },
        };
        match event {
            Ok(
                watcher::Event::Apply(obj)
                | watcher::Event::InitApply(obj)
                | watcher::Event::Delete(obj),
            ) => {
                let ns = obj.namespace().unwrap_or_default();
                for key in ctx.affected(&ns, &obj.name_any(), config) {
                    ctx.queue.push(key);
                }
            }
            Ok(_) => {}
            Err(error) => {
                warn!(%error, "workload watch failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
