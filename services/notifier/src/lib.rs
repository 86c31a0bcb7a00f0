//! The Aviary notifier: a durable consumer of the audit events stream (`AVIARY_EVENTS`) that
//! posts rollout events to Slack, Microsoft Teams, Discord, Google Chat and plain webhooks, and
//! to each rollout's own `event` webhooks (Flagger's payload) —
//! with retries, a dead-letter stream for posts that keep failing, and de-duplication by event
//! id, so a notifier that was down catches up and posts each event once.
//!
//! ```text
//! AVIARY_EVENTS ─► consumer ─► provider queues ─► HTTP ─► chat tools
//!                    │ ack when all settled    └─► aviary.dead.notifier (gave up)
//!                    └── KV aviary_notified: delivered (provider, event id)
//! ```
//!
//! Modules: [`settings`] (the YAML file), [`notification`] (which events, how severe, what
//! the message says), [`providers`] (payload per chat tool), [`retry`] (backoff, Retry-After),
//! [`delivery`] (workers, de-duplication, dead letters), `consumer` (the JetStream loop),
//! [`metrics`].

mod consumer;
pub mod delivery;
pub mod metrics;
pub mod notification;
pub mod providers;
pub mod retry;
pub mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull};
use aviary_bus::names;
use aviary_runtime::CommonArgs;
use aviary_runtime::admin::{AdminServer, Readiness};
use aviary_runtime::tasks::Tasks;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use metrics::Metrics;
pub use settings::Settings;

/// Where a newly created durable consumer starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliverFrom {
    /// Only events published after the consumer was created (no flood of old news on the
    /// first deployment).
    New,
    /// Every event still in the stream.
    All,
}

/// The notifier's flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aviary-notifier",
    version,
    about = "Posts Aviary rollout events to chat tools"
)]
pub struct Config {
    /// Flags every service takes.
    #[command(flatten)]
    pub common: CommonArgs,

    /// NATS connection.
    #[command(flatten)]
    pub nats: aviary_bus::NatsArgs,

    /// Replicas of the JetStream streams and buckets created at start.
    #[command(flatten)]
    pub jetstream: aviary_bus::JetStreamArgs,

    /// Configuration file (YAML): providers, default provider, routes per rollout, retries.
    #[arg(long, env = "AVIARY_NOTIFIER_CONFIG")]
    pub config: PathBuf,

    /// Cluster name shown in every message.
    #[arg(long, env = "AVIARY_CLUSTER_NAME", default_value = "")]
    pub cluster_name: String,

    /// Name of the durable consumer; replicas share it and so split the events.
    #[arg(long, env = "AVIARY_NOTIFIER_CONSUMER", default_value = names::CONSUMER_NOTIFIER)]
    pub consumer: String,

    /// Where a consumer that does not exist yet starts (an existing one resumes where it was).
    #[arg(
        long,
        env = "AVIARY_NOTIFIER_DELIVER_FROM",
        value_enum,
        default_value = "new"
    )]
    pub deliver_from: DeliverFrom,

    /// Events being posted at once (the consumer's max ack pending).
    #[arg(long, env = "AVIARY_NOTIFIER_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,

    /// How long JetStream waits for an ack before redelivering (kept alive while retrying).
    #[arg(long, env = "AVIARY_NOTIFIER_ACK_WAIT", default_value = "30s", value_parser = settings::parse_duration)]
    pub ack_wait: Duration,

    /// How often the consumer lag metric is refreshed.
    #[arg(long, env = "AVIARY_NOTIFIER_LAG_INTERVAL", default_value = "5s", value_parser = settings::parse_duration)]
    pub lag_interval: Duration,
}

/// A started notifier.
pub struct Running {
    /// The admin server's address (`/healthz`, `/readyz`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// The notifier's metrics.
    pub metrics: Metrics,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the notifier stopped (after `shutdown` and the drain).
    ///
    /// # Errors
    /// When the service task failed or panicked.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("notifier task")?
    }
}

/// Runs the notifier until `shutdown`, then drains: stops pulling, lets posts in flight
/// settle (up to `--drain-timeout`), acks what settled and hands back what did not.
///
/// # Errors
/// When the config file is bad, NATS is unreachable at start, or the streams, bucket or
/// consumer cannot be set up.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}

/// Starts the notifier: loads the config, connects, sets up, serves the admin endpoints and
/// consumes in a task. Returns once it is ready.
///
/// # Errors
/// As [`run`].
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let settings = Arc::new(
        Settings::load(&config.config)
            .with_context(|| format!("loading {}", config.config.display()))?,
    );
    let mut registry = aviary_runtime::admin::registry();
    let metrics = Metrics::register(&mut registry);
    for provider in &settings.providers {
        metrics.init_provider(&provider.name);
    }
    let ready = Readiness::default();
    // The admin server outlives the drain, so /metrics shows it; it stops with the task.
    let admin_stop = CancellationToken::new();
    let admin_addr = AdminServer::spawn(
        config.common.admin_addr,
        registry,
        ready.clone(),
        admin_stop.clone(),
    )
    .await
    .with_context(|| format!("binding the admin server on {}", config.common.admin_addr))?;

    let client = config
        .nats
        .connect_reporting("aviary-notifier", ready.condition("nats").reporter())
        .await?;
    let js = jetstream::new(client.clone());
    aviary_bus::setup::ensure_all_with(&js, &config.jetstream.options()).await?;
    let dedup = delivery::Dedup::open(&js, settings.dedup_ttl, config.jetstream.replicas).await?;
    let stream = js
        .get_stream(names::STREAM_EVENTS)
        .await
        .with_context(|| format!("opening stream {}", names::STREAM_EVENTS))?;
    let consumer = stream
        .get_or_create_consumer(
            &config.consumer,
            pull::Config {
                durable_name: Some(config.consumer.clone()),
                description: Some("Aviary notifier".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_ack_pending: i64::try_from(config.max_in_flight).unwrap_or(i64::MAX),
                deliver_policy: match config.deliver_from {
                    DeliverFrom::New => jetstream::consumer::DeliverPolicy::New,
                    DeliverFrom::All => jetstream::consumer::DeliverPolicy::All,
                },
                filter_subject: names::EVENTS_SUBJECTS.into(),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating consumer {}", config.consumer))?;

    let abandon = CancellationToken::new();
    let shared = Arc::new(delivery::Shared {
        http: delivery::http_client()?,
        policy: settings.retry.clone(),
        dedup,
        js: js.clone(),
        metrics: metrics.clone(),
        abandon: abandon.clone(),
    });
    let mut queues = Vec::with_capacity(settings.providers.len());
    let mut workers = Vec::with_capacity(settings.providers.len());
    for provider in &settings.providers {
        let (queue, worker) =
            delivery::spawn_worker(provider.clone(), shared.clone(), settings.queue_capacity);
        queues.push(queue);
        workers.push(worker);
    }
    let tasks = Tasks::new(&shutdown, &ready);
    tasks.spawn(
        "consumer lag",
        watch_lag(
            consumer.clone(),
            metrics.clone(),
            config.lag_interval,
            tasks.token(),
        ),
    );
    let pipeline = consumer::Pipeline {
        settings: settings.clone(),
        queues,
        metrics: metrics.clone(),
        cluster: config.cluster_name.clone(),
        ack_wait: config.ack_wait,
        batch: config.max_in_flight.clamp(1, 64),
        abandon: abandon.clone(),
        shared: shared.clone(),
        event_webhooks: Arc::new(settings.event_webhooks.clone()),
    };
    ready.set(true);
    tracing::info!(
        providers = settings.providers.len(),
        consumer = %config.consumer,
        admin = %admin_addr,
        "notifier ready"
    );

    let drain = config.common.drain_timeout;
    let tasks_for_consumer = tasks.clone();
    let task = tokio::spawn(async move {
        // Runs until stopped: it retries on every error, so its end is never a failure.
        tasks.critical("event consumer", async move {
            consumer::consume(consumer, pipeline, tasks_for_consumer).await;
            Ok::<(), std::convert::Infallible>(())
        });
        tasks.stopped().await;
        ready.set(false);
        // The pipeline (and its queue senders) is gone once the consumer ends: workers end once
        // their queues empty.
        let drained = tasks.drain(drain).await;
        if !drained.complete {
            tracing::warn!(
                ?drain,
                "drain deadline passed; handing unsettled events back"
            );
            abandon.cancel();
            // Abandoned deliveries hand their events back at once.
            tasks.drain(drain).await;
        }
        abandon.cancel();
        for worker in workers {
            let _ = worker.await;
        }
        // Acks are fire-and-forget publishes: make sure they left before we go.
        if let Err(error) = client.flush().await {
            tracing::warn!(%error, "flushing acks failed; some events will be redelivered");
        }
        admin_stop.cancel();
        tracing::info!("notifier stopped");
        match tasks.failure() {
            Some(failure) => Err(failure.into()),
            None => Ok(()),
        }
    });
    Ok(Running {
        admin_addr,
        metrics,
        task,
    })
}

async fn watch_lag(
    consumer: jetstream::consumer::PullConsumer,
    metrics: Metrics,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match consumer.get_info().await {
            Ok(info) => metrics.lag(info.num_pending, info.num_ack_pending),
            Err(error) => tracing::debug!(%error, "cannot read consumer info"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn flags_are_consistent() {
        use clap::CommandFactory as _;
        super::Config::command().debug_assert();
    }
}
