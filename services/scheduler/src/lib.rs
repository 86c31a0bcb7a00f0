//! The Aviary scheduler: owns rollouts.
//!
//! It runs each rollout's state machine (`aviary-core`), keeps the state in JetStream KV with
//! compare-and-swap writes, holds a replica lease (renewed) and a lease per rollout (written when
//! taken) so exactly one replica drives each rollout, commands the router agents, asks the
//! analyzer for verdicts, writes every transition to the audit stream, and serves the gRPC
//! control API.
//!
//! Flow: [`owner`] takes its [`share`] of the leases → [`driver`] per rollout: input → machine →
//! CAS write → [`effects`] (routes, analysis, audit) → outcome → input. [`api`] serves the control API.

pub mod api;
pub mod auth;
pub mod capabilities;
pub mod convert;
pub mod driver;
pub mod effects;
pub mod lease;
pub mod metrics;
pub mod owner;
pub mod record;
pub mod share;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aviary_bus::kv::Bucket;
use aviary_bus::{NatsArgs, names};
use aviary_runtime::CommonArgs;
use aviary_runtime::admin::{AdminServer, Readiness};
use aviary_runtime::tasks::Tasks;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The scheduler's flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aviary-scheduler",
    version,
    about = "Aviary scheduler: drives rollouts, serves the control API"
)]
pub struct Config {
    /// Flags every service shares.
    #[command(flatten)]
    pub common: CommonArgs,
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Replicas of the JetStream streams and buckets created at start.
    #[command(flatten)]
    pub jetstream: aviary_bus::JetStreamArgs,
    /// Address of the gRPC control API.
    #[arg(long, env = "AVIARY_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// This replica's id (default: host name and process id).
    #[arg(long, env = "AVIARY_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Lease period: a dead replica's rollouts are taken over within two of these.
    /// (`5s`; a bare number is milliseconds.)
    #[arg(long = "lease-ttl", alias = "lease-ttl-ms", env = "AVIARY_LEASE_TTL", default_value = "5s", value_parser = aviary_core::duration::parse_flag_duration)]
    pub lease_ttl: Duration,
    /// How long every ingress has to acknowledge a route (`10s`; a bare number is
    /// milliseconds).
    #[arg(long = "route-timeout", alias = "route-timeout-ms", env = "AVIARY_ROUTE_TIMEOUT", default_value = "10s", value_parser = aviary_core::duration::parse_flag_duration)]
    pub route_timeout: Duration,
    /// How long the analyzer has to answer (`30s`; a bare number is milliseconds).
    #[arg(long = "analysis-timeout", alias = "analysis-timeout-ms", env = "AVIARY_ANALYSIS_TIMEOUT", default_value = "30s", value_parser = aviary_core::duration::parse_flag_duration)]
    pub analysis_timeout: Duration,
    /// Bearer tokens file (`<token> <read|operator> <identity>` per line); open API when unset.
    #[arg(long, env = "AVIARY_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// TLS certificate (PEM) for the control API.
    #[arg(long, env = "AVIARY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the control API.
    #[arg(long, env = "AVIARY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to (mutual TLS).
    #[arg(long, env = "AVIARY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Runs the scheduler until `shutdown` fires, then drains and returns.
///
/// Fails when NATS, the admin port or the gRPC port cannot be reached or bound, or a TLS or
/// tokens file cannot be read.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    aviary_runtime::install_crypto_provider();
    let mut registry = aviary_runtime::admin::registry();
    let metrics = metrics::Metrics::register(&mut registry);
    let ready = Readiness::default();
    AdminServer::spawn(
        config.common.admin_addr,
        registry,
        ready.clone(),
        shutdown.clone(),
    )
    .await?;

    let tokens = match &config.tokens_file {
        Some(path) => {
            auth::Tokens::load(path).with_context(|| format!("tokens file {}", path.display()))?
        }
        None => {
            tracing::warn!("no tokens file: the control API accepts every caller as operator");
            auth::Tokens::default()
        }
    };

    let client = config
        .nats
        .connect_reporting("aviary-scheduler", ready.condition("nats").reporter())
        .await?;
    let js = async_nats::jetstream::new(client.clone());
    aviary_bus::setup::ensure_all_with(&js, &config.jetstream.options()).await?;
    let records: Bucket<record::RolloutRecord> = Bucket::open(&js, names::BUCKET_ROLLOUTS).await?;
    let leases: Bucket<lease::LeaseValue> = Bucket::open(&js, names::BUCKET_LEASES).await?;
    let leases_max_age = leases.store().status().await?.max_age();
    let replica = config.replica_id.clone().unwrap_or_else(default_replica_id);
    let effects = effects::Effects::new(
        client.clone(),
        config.route_timeout,
        config.analysis_timeout,
    )
    .await?;
    let shared = Arc::new(driver::Shared {
        records: records.clone(),
        leases: lease::Leases::new(
            leases,
            replica.clone(),
            u64::try_from(config.lease_ttl.as_millis()).unwrap_or(u64::MAX),
        )
        .with_bucket_max_age(leases_max_age),
        effects: effects.clone(),
        metrics: metrics.clone(),
    });

    let api = api::Api::new(records, effects, tokens, metrics);
    let tasks = Tasks::new(&shutdown, &ready);
    let grpc = grpc_server(&config, api, tasks.token()).await?;
    tasks.critical("gRPC server", grpc);
    info!(replica = %replica, grpc = %config.grpc_addr, "scheduler started");
    ready.set(true);

    tasks.critical("rollout owner", owner::run(shared, tasks.token()));
    tasks.stopped().await;
    ready.set(false);
    let drain = config.common.drain_timeout;
    let outcome = tasks.finish(drain).await;
    let _ = tokio::time::timeout(drain, client.drain()).await;
    info!("scheduler stopped");
    outcome?;
    Ok(())
}

/// Binds the control API; the future serves it until `shutdown`.
async fn grpc_server(
    config: &Config,
    api: api::Api,
    shutdown: CancellationToken,
) -> anyhow::Result<impl Future<Output = Result<(), tonic::transport::Error>> + use<>> {
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<aviary_proto::rollout_service_server::RolloutServiceServer<api::Api>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(aviary_proto::v1::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let mut server = Server::builder();
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        let identity = Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?);
        let mut tls = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &config.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(std::fs::read(ca)?));
        }
        server = server.tls_config(tls)?;
    }
    let listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
    // Small request/response frames: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms to
    // a unary call (measured by the e2e bench). `Server::tcp_nodelay` only covers `serve`.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |stream| {
            if let Ok(stream) = &stream {
                let _ = stream.set_nodelay(true);
            }
            stream
        },
    );
    let router = server
        .add_service(health)
        .add_service(reflection)
        .add_service(aviary_proto::rollout_service_server::RolloutServiceServer::new(api));
    Ok(async move {
        router
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
    })
}

fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "scheduler".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn timeouts_take_durations_and_the_old_millisecond_flags_still_work() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(std::iter::once("aviary-scheduler").chain(args.iter().copied()))
        };
        let config = parse(&["--lease-ttl", "2s", "--route-timeout", "1m"]).unwrap();
        assert_eq!(config.lease_ttl, Duration::from_secs(2));
        assert_eq!(config.route_timeout, Duration::from_secs(60));
        assert_eq!(
            config.analysis_timeout,
            Duration::from_secs(30),
            "the default"
        );
        assert_eq!(
            config.common.drain_timeout,
            Duration::from_secs(10),
            "the default"
        );
        let old = parse(&["--lease-ttl-ms", "1500", "--drain-timeout-ms", "250"]).unwrap();
        assert_eq!(old.lease_ttl, Duration::from_millis(1500));
        assert_eq!(old.common.drain_timeout, Duration::from_millis(250));
        let error = parse(&["--lease-ttl", "soon"]).unwrap_err().to_string();
        assert!(error.contains("--lease-ttl"), "{error}");
    }
}
