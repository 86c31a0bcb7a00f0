//! The analyzer: stateless workers in the `aviary-analyzer` queue group that answer each
//! analysis request with a [`Verdict`](aviary_proto::Verdict) — one result per metric (query a
//! metrics backend over the step's window, compare to thresholds or to the primary) and per
//! webhook (gates and hooks), folded into one outcome.
//!
//! Flow: NATS request → decode (or answer an error verdict) → [`analysis::Analyzer::analyze`]
//! → [`template`] + [`builtin`] render queries → [`provider`] (de-duplicated by [`dedupe`],
//! answers reused within their window by [`cache`]) → [`judge`] → [`webhook`] → fold → reply.
//!
//! The same crate holds the durable gate service ([`gate`], binary `aviary-gate`).

pub mod analysis;
pub mod builtin;
pub mod cache;
pub mod dedupe;
pub mod gate;
pub mod judge;
pub mod metrics;
pub mod provider;
pub mod template;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aviary_bus::NatsArgs;
use aviary_bus::names;
use aviary_proto::AnalysisRequest;
use aviary_runtime::CommonArgs;
use aviary_runtime::admin::{AdminServer, Readiness};
use aviary_runtime::signature::SigningKey;
use aviary_runtime::tasks::Tasks;
use futures::StreamExt as _;
use prost::Message as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::analysis::{Analyzer, AnalyzerOptions, error_verdict};
use crate::builtin::Mesh;
use crate::metrics::AnalyzerMetrics;
use crate::provider::prometheus::PrometheusConfig;
use crate::provider::{Auth, Secret};
use crate::webhook::WebhookClient;

/// The analyzer's flags. Every one also reads an `AVIARY_…` environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aviary-analyzer",
    version,
    about = "Aviary analyzer: metric and webhook verdicts"
)]
pub struct Config {
    /// Admin server, logging, tracing, drain deadline.
    #[command(flatten)]
    pub common: CommonArgs,

    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,

    /// The member cluster this analyzer serves in a multi-cluster deployment (it queries that
    /// cluster's metrics backend): requests are then taken on
    /// `aviary.cluster.<cluster>.analysis.request`. Unset: the single-cluster subject
    /// `aviary.analysis.request`.
    #[arg(long, env = "AVIARY_CLUSTER", value_parser = names::parse_cluster)]
    pub cluster: Option<String>,

    /// Default metrics backend (Prometheus HTTP API; VictoriaMetrics works too).
    #[arg(
        long,
        env = "AVIARY_PROMETHEUS_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    pub prometheus_url: String,

    /// Basic-auth user for the default backend.
    #[arg(long, env = "AVIARY_PROMETHEUS_USER")]
    pub prometheus_user: Option<String>,

    /// Basic-auth password (prefer --prometheus-password-file).
    #[arg(long, env = "AVIARY_PROMETHEUS_PASSWORD", hide_env_values = true)]
    pub prometheus_password: Option<Secret>,

    /// File holding the basic-auth password.
    #[arg(
        long,
        env = "AVIARY_PROMETHEUS_PASSWORD_FILE",
        conflicts_with = "prometheus_password"
    )]
    pub prometheus_password_file: Option<PathBuf>,

    /// Bearer token for the default backend (prefer --prometheus-bearer-token-file).
    #[arg(
        long,
        env = "AVIARY_PROMETHEUS_BEARER_TOKEN",
        hide_env_values = true,
        conflicts_with = "prometheus_user"
    )]
    pub prometheus_bearer_token: Option<Secret>,

    /// File holding the bearer token.
    #[arg(long, env = "AVIARY_PROMETHEUS_BEARER_TOKEN_FILE", conflicts_with_all = ["prometheus_user", "prometheus_bearer_token"])]
    pub prometheus_bearer_token_file: Option<PathBuf>,

    /// Extra header `Name=Value` on every backend request (repeatable; comma-separated in env).
    #[arg(
        long = "prometheus-header",
        env = "AVIARY_PROMETHEUS_HEADERS",
        value_delimiter = ','
    )]
    pub prometheus_headers: Vec<String>,

    /// Extra CA certificates (PEM) to trust for the backend.
    #[arg(long, env = "AVIARY_PROMETHEUS_CA_FILE")]
    pub prometheus_ca_file: Option<PathBuf>,

    /// Skip TLS verification of the backend (test set-ups only).
    #[arg(
        long,
        env = "AVIARY_PROMETHEUS_INSECURE_SKIP_VERIFY",
        default_value_t = false
    )]
    pub prometheus_insecure_skip_verify: bool,

    /// Deadline of one backend query, connection included.
    /// (`10s`; a bare number is milliseconds.)
    #[arg(long = "query-timeout", alias = "query-timeout-ms", env = "AVIARY_QUERY_TIMEOUT", default_value = "10s", value_parser = aviary_core::duration::parse_flag_duration)]
    pub query_timeout: Duration,

    /// Backend queries in flight per backend at most.
    #[arg(long, env = "AVIARY_MAX_QUERIES_PER_BACKEND", default_value_t = 16)]
    pub max_queries_per_backend: usize,

    /// How often Prometheus scrapes the data plane (for example `15s`). The built-in metrics
    /// widen each window by it so the requests between a window's edge and the nearest scrape
    /// are counted (docs/judge.md); set it to the scrape interval of the proxies' job.
    #[arg(long, env = "AVIARY_SCRAPE_INTERVAL", default_value = "15s", value_parser = aviary_core::duration::parse_std_duration)]
    pub scrape_interval: Duration,

    /// Data plane whose metrics the built-in metrics read: envoy, istio, linkerd, nginx,
    /// contour, gatewayapi. A request's `mesh` variable overrides it.
    #[arg(long, env = "AVIARY_MESH", default_value = "envoy")]
    pub mesh: Mesh,

    /// Secret signing webhook requests (`X-Aviary-Signature: t=…,kid=…,v1=…`, see
    /// docs/operations.md); prefer the file flag.
    #[arg(long, env = "AVIARY_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<Secret>,

    /// File holding the webhook signing secret.
    #[arg(
        long,
        env = "AVIARY_WEBHOOK_SECRET_FILE",
        conflicts_with = "webhook_secret"
    )]
    pub webhook_secret_file: Option<PathBuf>,

    /// Key id sent with each signature (`kid`), so receivers can rotate keys; default: the
    /// first 8 hex characters of the secret's SHA-256.
    #[arg(long, env = "AVIARY_WEBHOOK_KEY_ID")]
    pub webhook_key_id: Option<String>,

    /// Analysis requests judging metrics at once; more wait for a slot. A request waiting on
    /// its webhooks holds no slot.
    #[arg(long, env = "AVIARY_MAX_CONCURRENT_ANALYSES", default_value_t = 64)]
    pub max_concurrent_analyses: usize,

    /// Analysis requests accepted at once (judging, waiting for a slot or for webhooks); more
    /// wait in NATS's buffer.
    #[arg(long, env = "AVIARY_MAX_PENDING_ANALYSES", default_value_t = 1024)]
    pub max_pending_analyses: usize,

    /// How long one request is worked on before the analyzer gives up on it without a reply:
    /// by then the scheduler's request has timed out (its `--analysis-timeout-ms`, 30 s by
    /// default) and nobody waits for the verdict. A webhook call it was waiting on goes on,
    /// and the scheduler's next request for the step joins it.
    /// (`30s`; a bare number is milliseconds.)
    #[arg(long = "analysis-budget", alias = "analysis-budget-ms", env = "AVIARY_ANALYSIS_BUDGET", default_value = "30s", value_parser = aviary_core::duration::parse_flag_duration)]
    pub analysis_budget: Duration,

    /// Datadog, New Relic and Graphite (metrics with `providerType` set to one of them).
    #[command(flatten)]
    pub vendors: VendorArgs,
}

/// Flags of the non-PromQL metrics vendors. Credentials are sent only to the URL given here.
#[derive(Debug, Clone, clap::Args)]
pub struct VendorArgs {
    /// Datadog API base URL (the site: api.datadoghq.eu, api.us5.datadoghq.com, …).
    #[arg(long, env = "AVIARY_DATADOG_URL", default_value = provider::datadog::DEFAULT_URL)]
    pub datadog_url: String,

    /// Datadog API key (`DD-API-KEY`); prefer --datadog-api-key-file.
    #[arg(long, env = "AVIARY_DATADOG_API_KEY", hide_env_values = true)]
    pub datadog_api_key: Option<Secret>,

    /// File holding the Datadog API key.
    #[arg(
        long,
        env = "AVIARY_DATADOG_API_KEY_FILE",
        conflicts_with = "datadog_api_key"
    )]
    pub datadog_api_key_file: Option<PathBuf>,

    /// Datadog application key (`DD-APPLICATION-KEY`); prefer the file flag.
    #[arg(long, env = "AVIARY_DATADOG_APPLICATION_KEY", hide_env_values = true)]
    pub datadog_application_key: Option<Secret>,

    /// File holding the Datadog application key.
    #[arg(
        long,
        env = "AVIARY_DATADOG_APPLICATION_KEY_FILE",
        conflicts_with = "datadog_application_key"
    )]
    pub datadog_application_key_file: Option<PathBuf>,

    /// NerdGraph base URL (EU: <https://api.eu.newrelic.com>).
    #[arg(long, env = "AVIARY_NEWRELIC_URL", default_value = provider::newrelic::DEFAULT_URL)]
    pub newrelic_url: String,

    /// New Relic account whose data NRQL queries read.
    #[arg(long, env = "AVIARY_NEWRELIC_ACCOUNT_ID")]
    pub newrelic_account_id: Option<u64>,

    /// New Relic user API key (`API-Key`); prefer --newrelic-api-key-file.
    #[arg(long, env = "AVIARY_NEWRELIC_API_KEY", hide_env_values = true)]
    pub newrelic_api_key: Option<Secret>,

    /// File holding the New Relic user API key.
    #[arg(
        long,
        env = "AVIARY_NEWRELIC_API_KEY_FILE",
        conflicts_with = "newrelic_api_key"
    )]
    pub newrelic_api_key_file: Option<PathBuf>,

    /// graphite-web base URL, for metrics that name no address.
    #[arg(long, env = "AVIARY_GRAPHITE_URL")]
    pub graphite_url: Option<String>,

    /// Basic-auth user for Graphite.
    #[arg(long, env = "AVIARY_GRAPHITE_USER")]
    pub graphite_user: Option<String>,

    /// Basic-auth password for Graphite; prefer --graphite-password-file.
    #[arg(long, env = "AVIARY_GRAPHITE_PASSWORD", hide_env_values = true)]
    pub graphite_password: Option<Secret>,

    /// File holding the Graphite password.
    #[arg(
        long,
        env = "AVIARY_GRAPHITE_PASSWORD_FILE",
        conflicts_with = "graphite_password"
    )]
    pub graphite_password_file: Option<PathBuf>,
}

impl VendorArgs {
    /// The vendor clients' settings; reads the credential files.
    ///
    /// # Errors
    /// When a credential file cannot be read (the error names the file, never its content).
    pub fn vendor_config(&self, timeout: Duration) -> anyhow::Result<provider::VendorConfig> {
        fn secret(
            value: Option<&Secret>,
            file: Option<&PathBuf>,
            what: &str,
        ) -> anyhow::Result<Option<Secret>> {
            match (value, file) {
                (Some(v), _) => Ok(Some(v.clone())),
                (None, Some(path)) => Secret::from_file(path)
                    .map(Some)
                    .with_context(|| format!("reading {what} from {}", path.display())),
                (None, None) => Ok(None),
            }
        }
        let graphite_password = secret(
            self.graphite_password.as_ref(),
            self.graphite_password_file.as_ref(),
            "the Graphite password",
        )?;
        let graphite_auth = match (&self.graphite_user, graphite_password) {
            (Some(user), password) => Auth::Basic {
                username: user.clone(),
                password: password.unwrap_or_else(|| Secret::new("")),
            },
            (None, None) => Auth::None,
            (None, Some(_)) => anyhow::bail!("a Graphite password needs --graphite-user"),
        };
        Ok(provider::VendorConfig {
            datadog: provider::datadog::DatadogConfig {
                url: self.datadog_url.clone(),
                api_key: secret(
                    self.datadog_api_key.as_ref(),
                    self.datadog_api_key_file.as_ref(),
                    "the Datadog API key",
                )?,
                application_key: secret(
                    self.datadog_application_key.as_ref(),
                    self.datadog_application_key_file.as_ref(),
                    "the Datadog application key",
                )?,
                timeout,
            },
            newrelic: provider::newrelic::NewRelicConfig {
                url: self.newrelic_url.clone(),
                account_id: self.newrelic_account_id,
                api_key: secret(
                    self.newrelic_api_key.as_ref(),
                    self.newrelic_api_key_file.as_ref(),
                    "the New Relic API key",
                )?,
                timeout,
            },
            graphite: provider::graphite::GraphiteConfig {
                url: self.graphite_url.clone().unwrap_or_default(),
                auth: graphite_auth,
                timeout,
            },
        })
    }
}

impl Config {
    /// The analyzer options these flags describe; reads the credential files.
    ///
    /// # Errors
    /// When a credential file cannot be read or a header is not `Name=Value`.
    pub fn analyzer_options(&self) -> anyhow::Result<AnalyzerOptions> {
        let read = |path: &PathBuf, what: &str| {
            Secret::from_file(path)
                .with_context(|| format!("reading {what} from {}", path.display()))
        };
        let password = match (&self.prometheus_password, &self.prometheus_password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => Some(read(path, "the Prometheus password")?),
            (None, None) => None,
        };
        let token = match (
            &self.prometheus_bearer_token,
            &self.prometheus_bearer_token_file,
        ) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => Some(read(path, "the Prometheus bearer token")?),
            (None, None) => None,
        };
        let auth = match (&self.prometheus_user, password, token) {
            (Some(user), password, None) => Auth::Basic {
                username: user.clone(),
                password: password.unwrap_or_else(|| Secret::new("")),
            },
            (None, None, Some(token)) => Auth::Bearer(token),
            (None, None, None) => Auth::None,
            (None, Some(_), _) => anyhow::bail!("a Prometheus password needs --prometheus-user"),
            (Some(_), _, Some(_)) => anyhow::bail!("use basic auth or a bearer token, not both"),
        };
        let headers = self
            .prometheus_headers
            .iter()
            .map(|h| {
                h.split_once('=')
                    .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                    .with_context(|| format!("header `{h}` is not Name=Value"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let secret = match (&self.webhook_secret, &self.webhook_secret_file) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(path)) => Some(read(path, "the webhook secret")?),
            (None, None) => None,
        };
        let signing = match secret {
            Some(secret) => Some(
                SigningKey::new(secret.expose().as_bytes(), self.webhook_key_id.as_deref())
                    .context("--webhook-secret / --webhook-key-id")?,
            ),
            None if self.webhook_key_id.is_some() => {
                anyhow::bail!("--webhook-key-id needs --webhook-secret or --webhook-secret-file")
            }
            None => None,
        };
        Ok(AnalyzerOptions {
            prometheus: PrometheusConfig {
                url: self.prometheus_url.clone(),
                auth,
                headers,
                timeout: self.query_timeout,
                ca_file: self.prometheus_ca_file.clone(),
                insecure_skip_verify: self.prometheus_insecure_skip_verify,
            },
            mesh: self.mesh,
            max_in_flight_per_backend: self.max_queries_per_backend,
            webhooks: WebhookClient::new(signing).context("building the webhook client")?,
        })
    }
}

/// A started worker: where its admin server listens, and the task serving requests.
#[derive(Debug)]
pub struct Running {
    /// The admin server's bound address (`/healthz`, `/readyz`, `/metrics`).
    pub admin_addr: SocketAddr,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the worker has drained and stopped.
    ///
    /// # Errors
    /// When serving failed, or the task panicked.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("analyzer task panicked")?
    }
}

/// Runs the analyzer until `shutdown` fires, then drains.
///
/// # Errors
/// When the options are invalid, the admin address cannot be bound or NATS cannot be reached.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}

/// Connects, subscribes and starts serving in the background; returns once ready.
///
/// # Errors
/// As [`run`].
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let mut registry = aviary_runtime::admin::registry();
    let metrics = AnalyzerMetrics::register(&mut registry);
    let vendors = config.vendors.vendor_config(config.query_timeout)?;
    let analyzer = Arc::new(
        Analyzer::new(config.analyzer_options()?, metrics)
            .context("configuring the backend")?
            .with_vendors(vendors)
            .with_max_concurrent(config.max_concurrent_analyses)
            .with_scrape_interval(config.scrape_interval),
    );
    let ready = Readiness::default();
    // The admin server outlives the drain, so /readyz reports "not ready" while draining.
    let admin_shutdown = CancellationToken::new();
    let admin_addr = AdminServer::spawn(
        config.common.admin_addr,
        registry,
        ready.clone(),
        admin_shutdown.clone(),
    )
    .await
    .with_context(|| format!("binding the admin server on {}", config.common.admin_addr))?;
    let client = match config
        .nats
        .connect_reporting("aviary-analyzer", ready.condition("nats").reporter())
        .await
    {
        Ok(client) => client,
        Err(e) => {
            admin_shutdown.cancel();
            return Err(e).context("connecting to NATS");
        }
    };
    let subject = names::analysis_subject(config.cluster.as_deref())
        .context("the analysis subject of --cluster")?;
    let subscription = client
        .queue_subscribe(subject.clone(), names::QUEUE_ANALYZER.to_owned())
        .await
        .context("subscribing to analysis requests")?;
    // Round-trip so the subscription is registered at the server before we report ready.
    client.flush().await.context("flushing the subscription")?;
    ready.set(true);
    tracing::info!(
        %subject,
        queue = names::QUEUE_ANALYZER,
        "analyzer ready"
    );
    let drain = config.common.drain_timeout;
    let limit = Arc::new(Semaphore::new(config.max_pending_analyses.max(1)));
    let budget = config.analysis_budget;
    let tasks = Tasks::new(&shutdown, &ready);
    let worker = Worker {
        client,
        analyzer,
        budget,
    };
    tasks.critical(
        "analysis requests",
        serve(subscription, worker.clone(), limit, tasks.clone(), drain),
    );
    let task = tokio::spawn(async move {
        tasks.stopped().await;
        ready.set(false);
        // One deadline for all of it: `serve` answering what was already delivered, and the
        // requests in flight.
        let outcome = tasks.finish(drain).await;
        worker.analyzer.stop_webhooks();
        if let Err(error) = worker.client.flush().await {
            tracing::warn!(%error, "flushing replies");
        }
        tracing::info!("analyzer stopped");
        admin_shutdown.cancel();
        outcome?;
        Ok(())
    });
    Ok(Running { admin_addr, task })
}

/// What each request's task needs.
#[derive(Clone)]
struct Worker {
    client: async_nats::Client,
    analyzer: Arc<Analyzer>,
    budget: Duration,
}

/// Takes a message only once it holds an admission permit, and waits for the permit inside
/// `select!` beside the stop token, so a worker whose every slot is taken still starts draining.
/// Once stopped it unsubscribes and still answers the requests already delivered to it, within
/// `drain`; the drain of [`Tasks`] then waits for those in flight.
///
/// # Errors
/// The subscription ended before the service was stopped.
async fn serve(
    mut subscription: async_nats::Subscriber,
    worker: Worker,
    limit: Arc<Semaphore>,
    tasks: Tasks,
    drain: Duration,
) -> anyhow::Result<()> {
    let mut permit: Option<tokio::sync::OwnedSemaphorePermit> = None;
    loop {
        tokio::select! {
            () = tasks.stopped() => break,
            acquired = limit.clone().acquire_owned(), if permit.is_none() => {
                permit = Some(acquired?);
            }
            message = subscription.next(), if permit.is_some() => {
                let Some(message) = message else {
                    anyhow::bail!("the analysis subscription closed");
                };
                let (permit, worker) = (permit.take(), worker.clone());
                tasks.spawn("analysis", async move {
                    handle(&worker, message).await;
                    drop(permit);
                });
            }
        }
    }
    tracing::info!(in_flight = tasks.running().len(), "draining");
    // Stop new deliveries; messages already buffered are still handled.
    if let Err(error) = subscription.drain().await {
        tracing::warn!(%error, "draining the subscription");
    }
    let buffered = async {
        loop {
            let permit = match permit.take() {
                Some(permit) => permit,
                None => limit.clone().acquire_owned().await?,
            };
            let Some(message) = subscription.next().await else {
                return anyhow::Ok(());
            };
            let worker = worker.clone();
            tasks.spawn("analysis", async move {
                handle(&worker, message).await;
                drop(permit);
            });
        }
    };
    match tokio::time::timeout(drain, buffered).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                ?drain,
                "drain deadline passed; buffered requests left unanswered"
            );
            Ok(())
        }
    }
}

/// How long `request` is worked on: the worker's budget, or its longest webhook call when that
/// is longer (a hook's own `timeout` is honoured end to end; the scheduler waits as long).
fn request_budget(budget: Duration, request: &AnalysisRequest) -> Duration {
    let hooks = aviary_core::spec::longest_webhook_call(
        request
            .webhooks
            .iter()
            .map(|w| (w.attempt_timeout(), w.retries)),
    );
    hooks.map_or(budget, |longest| budget.max(longest + HOOK_BUDGET_MARGIN))
}

/// Added to a request's longest webhook call in its budget: its own metric queries.
const HOOK_BUDGET_MARGIN: Duration = Duration::from_secs(2);

/// Answers one request message: a verdict, or an error verdict when it does not decode.
/// Gives up (without a reply) once the request has taken longer than the worker's budget.
async fn handle(worker: &Worker, message: async_nats::Message) {
    let (analyzer, client) = (&worker.analyzer, &worker.client);
    let span = tracing::info_span!("analysis", key = tracing::field::Empty);
    aviary_bus::trace::set_parent_from(&span, message.headers.as_ref());
    async {
        let mut malformed = None;
        let verdict = match AnalysisRequest::decode(message.payload.clone()) {
            Ok(request) => {
                tracing::Span::current().record("key", request.idempotency_key.as_str());
                let budget = request_budget(worker.budget, &request);
                match tokio::time::timeout(budget, analyzer.analyze(&request)).await {
                    Ok(verdict) => verdict,
                    Err(_) => {
                        tracing::warn!(budget_ms = worker.budget.as_millis(), "analysis took longer than its budget; the requester is gone, no verdict sent");
                        return;
                    }
                }
            }
            Err(error) => {
                analyzer.metrics().malformed.inc();
                tracing::warn!(subject = %message.subject, %error, "undecodable analysis request");
                let reason = format!("undecodable analysis request: {error}");
                let verdict = error_verdict(None, &reason);
                malformed = Some(reason);
                verdict
            }
        };
        tracing::info!(
            outcome = metrics::outcome_label(verdict.outcome()),
            metrics = verdict.metrics.len(),
            webhooks = verdict.webhooks.len(),
            "verdict"
        );
        let Some(reply) = message.reply else {
            tracing::warn!(subject = %message.subject, "analysis request without a reply subject; verdict not sent");
            return;
        };
        let mut headers = async_nats::HeaderMap::new();
        aviary_bus::trace::inject_current(&mut headers);
        // A request that does not decode is a client error, said as every responder says it
        // (docs/bus.md); the body is still an error verdict for requesters that only decode.
        if let Some(reason) = malformed {
            headers.insert(aviary_bus::typed::SERVICE_ERROR, reason.as_str());
            headers.insert(aviary_bus::typed::SERVICE_ERROR_CODE, "400");
        }
        if let Err(error) = client
            .publish_with_headers(reply, headers, verdict.encode_to_vec().into())
            .await
        {
            tracing::warn!(%error, "sending the verdict");
        }
    }
    .instrument(span)
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn options(flags: &[&str]) -> anyhow::Result<AnalyzerOptions> {
        let mut args = vec!["aviary-analyzer"];
        args.extend_from_slice(flags);
        Config::try_parse_from(args)?.analyzer_options()
    }

    #[test]
    fn a_key_id_needs_a_secret_and_must_fit_the_header() {
        assert!(options(&[]).is_ok());
        assert!(options(&["--webhook-secret", "s", "--webhook-key-id", "hooks-2026"]).is_ok());
        let alone = options(&["--webhook-key-id", "hooks-2026"]).expect_err("no secret");
        assert!(
            alone.to_string().contains("--webhook-key-id needs"),
            "{alone:#}"
        );
        let bad = options(&["--webhook-secret", "s", "--webhook-key-id", "a,b"])
            .expect_err("a comma cannot travel in the header");
        assert!(format!("{bad:#}").contains("key id"), "{bad:#}");
    }
}
