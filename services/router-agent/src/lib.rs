//! Aviary router agent: applies traffic splits to real data planes and acknowledges what it
//! observed.
//!
//! Owns one or more ingresses (see [`config::IngressFile`]), each served by a provider:
//! Envoy over ADS ([`provider::envoy`], the default, optionally following the Services'
//! EndpointSlices: [`provider::envoy::slices`]), NGINX ([`provider::nginx`]), HAProxy
//! ([`provider::haproxy`]) or a Kubernetes object ([`provider::kube`]: Gateway API, Istio,
//! SMI, NGINX-ingress). Consumes `RouteCommand`s on `aviary.route.<ingress>` and the
//! desired routes in the `aviary_routes` KV bucket; produces `RouteAck` replies, the applied
//! route in KV and its capabilities in `aviary_agents`.
//!
//! Flow: command → validate → apply → read back → ack; and on start and every
//! `--reconcile-interval-ms`, KV desired route → data plane (level-triggered).

pub mod agent;
pub mod config;
pub mod metrics;
pub mod model;
pub mod provider;

use std::sync::Arc;

use anyhow::Context as _;
use aviary_bus::kv::Bucket;
use aviary_bus::typed::Proto;
use aviary_bus::{BusMetrics, names};
use aviary_proto::{AgentCapabilities, DesiredRoute};
use aviary_runtime::admin::{AdminServer, Readiness};
use aviary_runtime::tasks::Tasks;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::config::{IngressFile, ProviderConfig};
use crate::metrics::Metrics;
use crate::provider::Provider;
use crate::provider::envoy::EnvoyProvider;
use crate::provider::envoy::slices::{EndpointSlices, SliceMetrics};
use crate::provider::haproxy::HaproxyProvider;
use crate::provider::kube::KubeProvider;
use crate::provider::nginx::NginxProvider;

/// Runs the agent until `shutdown` fires, then drains (bounded by `--drain-timeout-ms`).
///
/// Errors: a bad ingress file, an xDS address that cannot be bound, NATS unreachable or its
/// buckets missing at start.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Kubernetes clients (kube's rustls connector) need the process's crypto provider chosen.
    aviary_runtime::install_crypto_provider();
    let file = IngressFile::load(&config.config_file)?;
    let mut registry = aviary_runtime::admin::registry();
    let bus_metrics = BusMetrics::register(&mut registry);
    let metrics = Metrics::register(&mut registry);
    let slice_metrics = SliceMetrics::register(&mut registry);
    let ready = Readiness::default();
    // Bound now so a taken port fails the start, not a background task.
    let mut xds_listeners = Vec::new();
    let mut providers = Vec::new();
    for ingress in &file.ingresses {
        let provider = match &ingress.provider {
            ProviderConfig::Envoy(settings) => {
                let listener = TcpListener::bind(settings.xds_addr)
                    .await
                    .with_context(|| format!("binding the xDS address {}", settings.xds_addr))?;
                xds_listeners.push((ingress.name.clone(), listener));
                let name = settings
                    .route_config_name
                    .clone()
                    .unwrap_or_else(|| ingress.name.clone());
                let mut envoy = EnvoyProvider::with_gauge(
                    name,
                    config.apply_timeout,
                    metrics.xds_gauge(&ingress.name),
                );
                if let Some(slices) = &settings.endpoint_slices {
                    let client = provider::kube_client(
                        slices.kubeconfig.as_deref(),
                        slices.context.as_deref(),
                    )
                    .await
                    .with_context(|| format!("ingress {}: endpoint_slices", ingress.name))?;
                    envoy = envoy.with_endpoint_slices(EndpointSlices::new(
                        &ingress.name,
                        &slices.namespace,
                        client,
                        slice_metrics.clone(),
                    ));
                }
                Provider::Envoy(envoy)
            }
            ProviderConfig::Nginx(settings) => {
                Provider::Nginx(NginxProvider::new(settings.clone(), config.apply_timeout))
            }
            ProviderConfig::Haproxy(settings) => {
                Provider::Haproxy(HaproxyProvider::new(settings.clone(), config.apply_timeout))
            }
            other => {
                let (kind, settings) = other.kube().context("a provider without a constructor")?;
                Provider::Kube(
                    KubeProvider::connect(kind, settings.clone(), config.apply_timeout)
                        .await
                        .with_context(|| format!("ingress {}", ingress.name))?,
                )
            }
        };
        providers.push((ingress.name.clone(), provider));
    }
    let admin = AdminServer::spawn(
        config.common.admin_addr,
        registry,
        ready.clone(),
        shutdown.clone(),
    )
    .await
    .context("starting the admin server")?;
    tracing::info!(%admin, ingresses = providers.len(), "router agent starting");

    let client = config
        .nats
        .connect_reporting("aviary-router-agent", ready.condition("nats").reporter())
        .await?;
    let js = async_nats::jetstream::new(client.clone());
    aviary_bus::setup::ensure_all_with(&js, &config.jetstream.options()).await?;
    let routes: Bucket<DesiredRoute, Proto> = Bucket::open(&js, names::BUCKET_ROUTES).await?;
    let agents: Bucket<AgentCapabilities, Proto> = Bucket::open(&js, names::BUCKET_AGENTS).await?;

    let tasks = Tasks::new(&shutdown, &ready);
    for (name, provider) in providers {
        let capabilities = provider.capabilities().to_proto(&name, provider.kind());
        agents.put(&names::agent_key(&name)?, &capabilities).await?;
        let ingress = Arc::new(
            agent::Ingress::new(name.clone(), provider, routes.clone(), metrics.clone())
                .in_cluster(config.cluster.clone()),
        );
        if let Provider::Envoy(envoy) = &ingress.provider {
            // Seed before serving: a reconnecting Envoy must get the stored routes, never an
            // empty configuration that would drop its traffic.
            let stored = ingress.desired(&model::RouteSet::new()).await?;
            envoy.seed(&stored);
        }
        // Every task of this ingress runs in its span (no await while it is entered).
        let span = tracing::info_span!("ingress", ingress = %name);
        let _entered = span.enter();
        if matches!(ingress.provider, Provider::Envoy(_)) {
            if let Some(index) = xds_listeners.iter().position(|(n, _)| *n == name) {
                let (_, listener) = xds_listeners.swap_remove(index);
                let (serving, token) = (ingress.clone(), tasks.token());
                tasks.critical("xDS server", async move {
                    match &serving.provider {
                        Provider::Envoy(envoy) => envoy.serve(listener, token).await,
                        _ => Ok(()),
                    }
                });
            }
            // Returns at once for an ingress that does not follow EndpointSlices.
            let (following, token) = (ingress.clone(), tasks.token());
            tasks.spawn("endpoint slices", async move {
                if let Provider::Envoy(envoy) = &following.provider {
                    envoy.follow_endpoint_slices(token).await;
                }
            });
        }
        let (client, bus_metrics, token) = (client.clone(), bus_metrics.clone(), tasks.token());
        let interval = config.reconcile_interval;
        tasks.critical("ingress loop", async move {
            ingress.serve(client, bus_metrics, interval, token).await
        });
    }
    ready.set(true);
    tracing::info!("router agent ready");

    tasks.stopped().await;
    ready.set(false);
    let outcome = tasks.finish(config.common.drain_timeout).await;
    if let Err(error) = client.flush().await {
        tracing::warn!(%error, "flushing NATS on shutdown");
    }
    tracing::info!("router agent stopped");
    outcome?;
    Ok(())
}
