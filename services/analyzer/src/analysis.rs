//! One analysis request in, one [`Verdict`] out: call the webhooks first (as Flagger does; a
//! failing `rollout` hook is a failed check and the metrics are then not queried), render each
//! metric's queries for the request's window, ask the backend (cached per window,
//! de-duplicated, bounded per backend), judge, fold.
//!
//! Window: every query is evaluated at `window_end` with a range of `window_end -
//! window_start` (or the metric's own `interval`, when shorter). The built-in metrics widen
//! that range by one scrape interval ([`Analyzer::with_scrape_interval`]): `rate` and
//! `increase` only see the samples inside their range, so without it the requests between the
//! window's start and its first scrape would belong to no window. Widened, a window counts
//! what happened between the last scrape at or before its start and the last scrape at or
//! before its end; as the scheduler's windows tile a step (each starts where the last ended),
//! every request of the step is counted once. The price, stated in docs/architecture.md: the first
//! window of a step can include up to one scrape interval of the previous step's traffic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use aviary_proto::naming::cluster_name;
use aviary_proto::{AnalysisRequest, MetricCheck, MetricResult, Outcome, Verdict, WebhookResult};
use futures::future::join_all;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use aviary_core::judge::{AlphaBudget, DEFAULT_MAX_RATIO, DEFAULT_RATE_TOLERANCE, Decision};
use aviary_core::spec::WebhookType;

use crate::builtin::{
    Builtin, DURATION_QUANTILE, Mesh, request_count_template, run_bucket_template,
    run_count_templates,
};
use crate::cache::ResultCache;
use crate::dedupe::{DetachedFlight, PerBackendLimit, SingleFlight};
use crate::judge::{
    Criteria, MIN_SLICE_MS, Measured, NoDataPolicy, Observation, Sample, SequentialStep, fold,
    histogram_from_buckets, judge, sequential_quantiles, sequential_rates, sequential_step,
    slice_windows, slices_from_cumulative,
};
use crate::metrics::{
    AnalyzerMetrics, OutcomeLabels, ProviderLabels, QueryLabels, WebhookLabels, outcome_label,
};
use crate::provider::prometheus::{Prometheus, PrometheusConfig};
use crate::provider::{Backend, ProviderError, VendorConfig, Vendors, Window};
use crate::template::{Variables, prometheus_duration, render};
use crate::webhook::{Hook, HookRules, Payload, WebhookClient, hook_type};

/// Webhook timeout when the request gives none (Flagger's default is longer; a gate that takes
/// more than this to answer is better reported than waited on).
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = aviary_core::spec::DEFAULT_WEBHOOK_TIMEOUT;

/// Requests judging metrics at once, unless [`Analyzer::with_max_concurrent`] says.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;

/// How often the backend is assumed to scrape the data plane, unless
/// [`Analyzer::with_scrape_interval`] says: a common Prometheus setting for proxies.
pub const DEFAULT_SCRAPE_INTERVAL: Duration = Duration::from_secs(15);

/// Identifies one webhook call: the request's idempotency key (rollout, generation, step),
/// its window, and the hook's name, type and URL. Repeated requests for the same step share
/// the call.
type HookKey = (String, i64, i64, String, String, String);

/// How the analyzer is set up.
#[derive(Debug, Clone)]
pub struct AnalyzerOptions {
    /// The default metrics backend (used when a metric names no address); the only one that
    /// gets the configured credentials.
    pub prometheus: PrometheusConfig,
    /// Data plane whose metrics the built-ins read, unless the request's `mesh` variable says.
    pub mesh: Mesh,
    /// Calls in flight per backend at most.
    pub max_in_flight_per_backend: usize,
    /// Webhook client (signing secret, backoff).
    pub webhooks: WebhookClient,
}

/// Backend endpoint, rendered query, window (its end is the evaluation instant), and the label
/// the answer is read by (`None`: one number).
type QueryKey = (String, String, Window, Option<&'static str>);

/// What a backend answered: one number, or a vector keyed by a label.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    One(Sample),
    ByLabel(Vec<(String, f64)>),
}

/// Judges analysis requests. Cheap to share (`Arc`); between requests it keeps only a bounded
/// cache of backend answers (see [`crate::cache`]).
#[derive(Debug)]
pub struct Analyzer {
    default: Prometheus,
    defaults: PrometheusConfig,
    others: Mutex<HashMap<String, Prometheus>>,
    vendors: Vendors,
    mesh: Mesh,
    flight: SingleFlight<QueryKey, Result<Answer, String>>,
    cache: ResultCache<QueryKey, Answer>,
    limits: PerBackendLimit,
    webhooks: WebhookClient,
    hooks: DetachedFlight<HookKey, Option<WebhookResult>>,
    slots: Arc<Semaphore>,
    scrape_interval_ms: u64,
    stop: CancellationToken,
    metrics: AnalyzerMetrics,
}

/// Why a request is not judged at all (answered with an error verdict).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    /// A required field is missing or out of range.
    #[error("invalid field `{field}`: {reason}")]
    Field {
        /// The field's path in the request.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl Analyzer {
    /// Builds an analyzer.
    ///
    /// # Errors
    /// When the default backend's client cannot be built (bad URL, header, CA file).
    pub fn new(
        options: AnalyzerOptions,
        metrics: AnalyzerMetrics,
    ) -> Result<Self, crate::provider::prometheus::BuildError> {
        Ok(Self {
            default: Prometheus::new(&options.prometheus)?,
            defaults: options.prometheus,
            others: Mutex::new(HashMap::new()),
            vendors: Vendors::default(),
            mesh: options.mesh,
            flight: SingleFlight::default(),
            cache: ResultCache::default(),
            limits: PerBackendLimit::new(options.max_in_flight_per_backend),
            webhooks: options.webhooks,
            hooks: DetachedFlight::default(),
            slots: Arc::new(Semaphore::new(DEFAULT_MAX_CONCURRENT)),
            scrape_interval_ms: millis(DEFAULT_SCRAPE_INTERVAL),
            stop: CancellationToken::new(),
            metrics,
        })
    }

    /// At most `n` (at least 1) requests judge their metrics at once; more wait for a slot.
    /// Webhooks are awaited without a slot, so requests waiting on a slow hook do not hold
    /// back requests that have none.
    #[must_use]
    pub fn with_max_concurrent(mut self, n: usize) -> Self {
        self.slots = Arc::new(Semaphore::new(n.max(1)));
        self
    }

    /// The backend's scrape interval: the built-in metrics' ranges are widened by it so that
    /// the samples at both edges of a window count (see the module docs).
    #[must_use]
    pub fn with_scrape_interval(mut self, interval: Duration) -> Self {
        self.scrape_interval_ms = millis(interval);
        self
    }

    /// Ends every webhook call in flight (each caller still waiting gets an error result);
    /// called once the drain is over, so no hook outlives the worker.
    pub fn stop_webhooks(&self) {
        self.stop.cancel();
    }

    /// Sets up the Datadog, New Relic and Graphite clients (credentials, default URLs).
    #[must_use]
    pub fn with_vendors(mut self, vendors: VendorConfig) -> Self {
        self.vendors = Vendors::new(vendors);
        self
    }

    /// The analyzer's metrics.
    pub fn metrics(&self) -> &AnalyzerMetrics {
        &self.metrics
    }

    /// Judges one request. Never fails: an invalid request gets an error verdict naming the
    /// field.
    pub async fn analyze(&self, request: &AnalysisRequest) -> Verdict {
        let verdict = match validate(request) {
            Ok(()) => self.judge_request(request).await,
            Err(e) => {
                self.metrics.malformed.inc();
                tracing::warn!(key = %request.idempotency_key, error = %e, "invalid analysis request");
                error_verdict(Some(request), &e.to_string())
            }
        };
        self.metrics
            .verdicts
            .get_or_create(&OutcomeLabels {
                outcome: outcome_label(verdict.outcome()).to_owned(),
            })
            .inc();
        verdict
    }

    async fn judge_request(&self, request: &AnalysisRequest) -> Verdict {
        // Flagger's order: the hooks first (a rollback request or a failing `rollout` /
        // `pre-rollout` hook ends the step's analysis as a failed check), the metrics only
        // after every hook passed that part.
        let webhooks: Vec<WebhookResult> =
            join_all(request.webhooks.iter().map(|h| self.webhook(request, h))).await;
        let judged: Vec<(MetricResult, Option<Decision>)> = match failed_check(&webhooks) {
            Some(hook) => request
                .metrics
                .iter()
                .map(|m| (not_queried(m, hook), None))
                .collect(),
            None if request.metrics.is_empty() => Vec::new(),
            None => {
                // The semaphore is never closed.
                let _slot = self.slots.acquire().await;
                join_all(request.metrics.iter().map(|m| self.metric(request, m))).await
            }
        };
        let decisions: Vec<Option<Decision>> = judged.iter().map(|(_, d)| *d).collect();
        let metrics: Vec<MetricResult> = judged.into_iter().map(|(m, _)| m).collect();
        let folded_hooks = webhooks
            .iter()
            .filter(|w| hook_type(&w.r#type).map(HookRules::folded).unwrap_or(true));
        let outcome = fold(
            metrics
                .iter()
                .map(MetricResult::outcome)
                .chain(folded_hooks.map(WebhookResult::outcome)),
        );
        let decisive = decisive(outcome, &decisions, &webhooks);
        Verdict {
            rollout: request.rollout.clone(),
            generation: request.generation,
            step: request.step,
            outcome: outcome as i32,
            metrics,
            webhooks,
            decisive,
            error: String::new(),
        }
    }

    async fn metric(
        &self,
        request: &AnalysisRequest,
        check: &MetricCheck,
    ) -> (MetricResult, Option<Decision>) {
        match self.metric_inner(request, check).await {
            Ok(judged) => judged,
            Err(reason) => (
                MetricResult {
                    name: check.name.clone(),
                    value: None,
                    min: check.min,
                    max: check.max,
                    primary_value: None,
                    outcome: Outcome::Error as i32,
                    reason,
                    judge_undecided: false,
                },
                None,
            ),
        }
    }

    async fn metric_inner(
        &self,
        request: &AnalysisRequest,
        check: &MetricCheck,
    ) -> Result<(MetricResult, Option<Decision>), String> {
        let on_no_data: NoDataPolicy = check.on_no_data.parse()?;
        let sequential = match check.judge.as_str() {
            "" | "threshold" | "primary" => false,
            "sequential" => true,
            other => return Err(format!("unsupported judge `{other}`")),
        };
        let provider = crate::provider::kind(check)?;
        let builtin = Builtin::from_name(&check.name);
        let mesh = match request.variables.get("mesh") {
            Some(mesh) => mesh.parse::<Mesh>()?,
            None => self.mesh,
        };
        let template = if !check.query.is_empty() {
            check.query.clone()
        } else if let Some(builtin) = builtin {
            builtin.template(mesh)
        } else {
            return Err(format!(
                "metric `{}` is not built in and has no query",
                check.name
            ));
        };
        let criteria = Criteria {
            min: check.min,
            max: check.max,
            max_delta: check.max_delta,
            max_ratio: check.max_ratio,
            on_no_data,
            min_requests: check.min_requests,
            lower_is_worse: builtin.is_some_and(Builtin::lower_is_worse),
        };
        let (criteria, decision) = if sequential {
            let (result, decision) = self
                .sequential(request, check, builtin, mesh, provider)
                .await?;
            let since_weight_change = (request.window_end_ms - request.window_start_ms)
                .max(0)
                .unsigned_abs();
            // A decision stands (decisive unless it is a pass too soon after the weight
            // change); without one only the thresholdRange judges the window, or it holds.
            match sequential_step(decision, &criteria, since_weight_change) {
                SequentialStep::Decided { decisive: true } => {
                    return Ok((result, Some(decision)));
                }
                SequentialStep::Decided { decisive: false } | SequentialStep::Hold => {
                    return Ok((result, Some(Decision::Continue)));
                }
                SequentialStep::Window => (criteria.window_only(), Some(Decision::Continue)),
            }
        } else {
            (criteria, None)
        };

        let window_ms = (request.window_end_ms - request.window_start_ms).unsigned_abs();
        let range_ms = if check.interval_ms > 0 {
            check.interval_ms.min(window_ms)
        } else {
            window_ms
        };
        // A built-in query also reaches back to the last scrape at or before the window's start.
        let range_ms = if check.query.is_empty() && builtin.is_some() {
            range_ms + self.scrape_interval_ms
        } else {
            range_ms
        };
        let canary_vars = variables(request, range_ms)?;
        let canary_query = render(&template, &canary_vars).map_err(|e| e.to_string())?;
        let primary_query = if criteria.relative() {
            let vars = as_primary(&canary_vars)?;
            Some(render(&template, &vars).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let requests_query = if criteria.min_requests > 0 {
            Some(render(&request_count_template(mesh), &canary_vars).map_err(|e| e.to_string())?)
        } else {
            None
        };

        let backend = self.backend(provider, &check.provider_address)?;
        let at = Window {
            start_ms: request.window_end_ms.saturating_sub_unsigned(range_ms),
            end_ms: request.window_end_ms,
        };
        let (canary, primary, requests) = futures::join!(
            self.sample(&backend, provider, &canary_query, at),
            async {
                match &primary_query {
                    Some(q) => Some(self.sample(&backend, provider, q, at).await),
                    None => None,
                }
            },
            async {
                match &requests_query {
                    Some(q) => Some(self.sample(&backend, provider, q, at).await),
                    None => None,
                }
            },
        );
        let obs = Observation {
            canary,
            primary,
            requests,
        };
        let mut result = judge(&check.name, &criteria, &obs);
        // A sequential metric judged on its window: the judge itself has not decided.
        result.judge_undecided = decision == Some(Decision::Continue);
        tracing::debug!(
            metric = %check.name,
            query = %canary_query,
            value = ?result.value,
            outcome = outcome_label(result.outcome()),
            reason = %result.reason,
            "metric judged"
        );
        Ok((result, decision))
    }

    /// Judges a `judge: sequential` metric on counts since the run started.
    async fn sequential(
        &self,
        request: &AnalysisRequest,
        check: &MetricCheck,
        builtin: Option<Builtin>,
        mesh: Mesh,
        provider: &str,
    ) -> Result<(MetricResult, Decision), String> {
        let builtin = match builtin {
            Some(b) if check.query.is_empty() => b,
            _ => {
                return Err(format!(
                    "judge: sequential is supported for the built-in request-success-rate and \
                     request-duration only, not `{}`",
                    check.name
                ));
            }
        };
        let run_start: i64 = request
            .variables
            .get("run_start_ms")
            .ok_or("judge: sequential needs the run's start (variable run_start_ms)")?
            .parse()
            .map_err(|_| "variable run_start_ms is not a number".to_owned())?;
        if run_start >= request.window_end_ms {
            return Err(format!(
                "run start {run_start} is not before the window end {}",
                request.window_end_ms
            ));
        }
        let alpha = match request.variables.get("judge_alpha") {
            Some(a) => a
                .parse::<f64>()
                .ok()
                .and_then(AlphaBudget::new)
                .ok_or_else(|| format!("judge_alpha `{a}` is not in (0, 1)"))?,
            None => AlphaBudget::default(),
        };
        let sequential_metrics = request
            .metrics
            .iter()
            .filter(|m| m.judge == "sequential")
            .count();
        let alpha = alpha.per_metric(sequential_metrics);
        let range_ms = (request.window_end_ms - run_start).unsigned_abs();
        let mut canary_vars = variables(request, range_ms)?;
        canary_vars.insert("run".into(), prometheus_duration(range_ms));
        let primary_vars = as_primary(&canary_vars)?;
        let render = |t: &str, v: &Variables| render(t, v).map_err(|e| e.to_string());
        let backend = self.backend(provider, &check.provider_address)?;
        let at = Window {
            start_ms: request.window_end_ms.saturating_sub_unsigned(range_ms),
            end_ms: request.window_end_ms,
        };
        if builtin == Builtin::RequestDuration {
            // The canary's p99 within maxRatio × the primary's (docs/judge.md).
            let max_ratio = check.max_ratio.unwrap_or(DEFAULT_MAX_RATIO);
            let template = run_bucket_template(mesh);
            let (canary_query, primary_query) = (
                render(&template, &canary_vars)?,
                render(&template, &primary_vars)?,
            );
            let (canary, primary) = futures::join!(
                self.buckets(&backend, provider, &canary_query, at),
                self.buckets(&backend, provider, &primary_query, at),
            );
            let canary = canary.map_err(|e| format!("canary histogram query failed: {e}"))?;
            let primary = primary.map_err(|e| format!("primary histogram query failed: {e}"))?;
            return sequential_quantiles(
                &check.name,
                histogram_from_buckets(&canary)?,
                histogram_from_buckets(&primary)?,
                DURATION_QUANTILE,
                max_ratio,
                alpha,
            );
        }
        let tolerance = check
            .max_delta
            .map_or(DEFAULT_RATE_TOLERANCE, |points| points / 100.0);
        // Each side's counts since the run started, at the end of every 10-second slice of
        // the run (longer slices past 60 of them); a slice's counts are the differences. A
        // range from the run's start always spans scrapes, where a 10-second range alone
        // would often hold one sample and count nothing.
        let (all, failed) = run_count_templates(mesh);
        let windows = slice_windows(run_start, request.window_end_ms, MIN_SLICE_MS);
        let mut queries = Vec::with_capacity(4 * windows.len());
        for &(_, end_ms) in &windows {
            let mut cv = canary_vars.clone();
            cv.insert(
                "run".into(),
                prometheus_duration((end_ms - run_start).unsigned_abs()),
            );
            let pv = as_primary(&cv)?;
            let at = Window {
                start_ms: run_start,
                end_ms,
            };
            for (template, vars) in [(&all, &cv), (&failed, &cv), (&all, &pv), (&failed, &pv)] {
                queries.push((render(template, vars)?, at));
            }
        }
        let measured = join_all(
            queries
                .iter()
                .map(|(q, at)| self.sample(&backend, provider, q, *at)),
        )
        .await;
        let mut counts = Vec::with_capacity(measured.len());
        for m in measured {
            counts.push(
                match m.map_err(|e| format!("counting query failed: {e}"))? {
                    // increase() extrapolates: counts come back fractional.
                    Sample::Value(v) => v.max(0.0).round() as u64,
                    Sample::NoData => 0,
                },
            );
        }
        let cumulative: Vec<[u64; 4]> = counts
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect();
        let slices = slices_from_cumulative(&cumulative);
        Ok(sequential_rates(&check.name, &slices, tolerance, alpha))
    }

    fn backend(&self, provider: &str, address: &str) -> Result<Backend, String> {
        if !crate::provider::speaks_promql(provider) {
            return self
                .vendors
                .client(provider, address)
                .map_err(|e| e.to_string());
        }
        if address.is_empty()
            || address.trim_end_matches('/') == self.defaults.url.trim_end_matches('/')
        {
            return Ok(Backend::Prometheus(self.default.clone()));
        }
        let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = others.get(address) {
            return Ok(Backend::Prometheus(client.clone()));
        }
        // Another address gets the same timeout and TLS settings but not the credentials:
        // a request must not be able to send the default backend's secret elsewhere.
        let config = PrometheusConfig {
            url: address.to_owned(),
            auth: crate::provider::Auth::None,
            headers: Vec::new(),
            ..self.defaults.clone()
        };
        let client = Prometheus::new(&config).map_err(|e| e.to_string())?;
        others.insert(address.to_owned(), client.clone());
        Ok(Backend::Prometheus(client))
    }

    /// Asks the backend `query` over `at` (read by `by`, when given): a cached answer for the
    /// same backend, query and window if there is one, else the answer of an identical call in
    /// flight, else a call of its own (bounded per backend), whose answer is then cached.
    async fn fetch(
        &self,
        backend: &Backend,
        provider: &str,
        query: &str,
        at: Window,
        by: Option<&'static str>,
    ) -> Result<Answer, String> {
        let key = (backend.endpoint().to_owned(), query.to_owned(), at, by);
        if let Some(answer) = self.cache.get(&key) {
            self.metrics.cache_hits.inc();
            return Ok(answer);
        }
        let (answer, ran) = self
            .flight
            .run(key.clone(), || async {
                let semaphore = self.limits.semaphore(backend.endpoint());
                let _permit = semaphore.acquire_owned().await;
                let labels = ProviderLabels {
                    provider: provider.to_owned(),
                };
                self.metrics.backend_calls.get_or_create(&labels).inc();
                let started = Instant::now();
                let result = match by {
                    None => backend.query(query, at).await.map(Answer::One),
                    Some(label) => backend
                        .query_by_label(query, at, label)
                        .await
                        .map(Answer::ByLabel),
                };
                self.metrics
                    .query_seconds
                    .get_or_create(&labels)
                    .observe(started.elapsed().as_secs_f64());
                result.map_err(|e: ProviderError| e.to_string())
            })
            .await;
        if !ran {
            self.metrics.deduplicated.inc();
        } else if let Ok(answer) = &answer {
            self.cache.insert(key, answer.clone());
        }
        answer
    }

    /// One number: `query` over `at`.
    async fn sample(&self, backend: &Backend, provider: &str, query: &str, at: Window) -> Measured {
        let measured = match self.fetch(backend, provider, query, at, None).await {
            Ok(Answer::One(sample)) => Ok(sample),
            Ok(Answer::ByLabel(_)) => Err("a vector answer where one number was expected".into()),
            Err(e) => Err(e),
        };
        let outcome = match &measured {
            Ok(crate::judge::Sample::Value(_)) => "value",
            Ok(crate::judge::Sample::NoData) => "no_data",
            Err(_) => "error",
        };
        self.count_query(provider, outcome);
        measured
    }

    /// A histogram's buckets: `query` over `at`, by `le`.
    async fn buckets(
        &self,
        backend: &Backend,
        provider: &str,
        query: &str,
        at: Window,
    ) -> Result<Vec<(String, f64)>, String> {
        let measured = match self.fetch(backend, provider, query, at, Some("le")).await {
            Ok(Answer::ByLabel(buckets)) => Ok(buckets),
            Ok(Answer::One(_)) => Err("one number where buckets by `le` were expected".into()),
            Err(e) => Err(e),
        };
        let outcome = match &measured {
            Ok(b) if b.is_empty() => "no_data",
            Ok(_) => "value",
            Err(_) => "error",
        };
        self.count_query(provider, outcome);
        measured
    }

    fn count_query(&self, provider: &str, outcome: &str) {
        self.metrics
            .queries
            .get_or_create(&QueryLabels {
                provider: provider.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    async fn webhook(
        &self,
        request: &AnalysisRequest,
        check: &aviary_proto::WebhookCheck,
    ) -> WebhookResult {
        let hook = Hook {
            name: check.name.clone(),
            kind: check.r#type.clone(),
            url: check.url.clone(),
            timeout: check.attempt_timeout().unwrap_or(DEFAULT_WEBHOOK_TIMEOUT),
            retries: check.retries,
            metadata: check
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let rollout = request.rollout.clone().unwrap_or_default();
        let key = (
            request.idempotency_key.clone(),
            request.window_start_ms,
            request.window_end_ms,
            hook.name.clone(),
            hook.kind.clone(),
            hook.url.clone(),
        );
        let (phase, checksum) = (request.phase.clone(), request.checksum.clone());
        let (client, stop) = (self.webhooks.clone(), self.stop.clone());
        let unfinished = WebhookResult {
            name: hook.name.clone(),
            r#type: hook.kind.clone(),
            status_code: 0,
            outcome: Outcome::Error as i32,
            reason: "call abandoned: the analyzer is stopping".into(),
        };
        // The call runs detached: a request that stops waiting (its requester gave up) leaves
        // it running, and a repeated request for the same step joins it.
        let (result, _started) = self
            .hooks
            .run(key, move || async move {
                let payload = Payload {
                    name: &rollout.name,
                    namespace: &rollout.namespace,
                    phase: &phase,
                    checksum: &checksum,
                    metadata: &hook.metadata,
                };
                tokio::select! {
                    result = client.call(&hook, &payload) => Some(result),
                    () = stop.cancelled() => None,
                }
            })
            .await;
        let result = result.flatten().unwrap_or(unfinished);
        let kind = hook_type(&check.r#type).map_or("unknown", |t| t.as_str());
        self.metrics
            .webhooks
            .get_or_create(&WebhookLabels {
                r#type: kind.to_owned(),
                outcome: outcome_label(result.outcome()).to_owned(),
            })
            .inc();
        result
    }
}

/// The first hook whose failure is a failed check that ends the window's analysis before the
/// metrics (Flagger runs rollback, pre-rollout and rollout hooks before its metric checks and
/// stops at the first failure).
fn failed_check(webhooks: &[WebhookResult]) -> Option<&WebhookResult> {
    webhooks.iter().find(|w| {
        w.outcome() == Outcome::Fail
            && matches!(
                hook_type(&w.r#type),
                Ok(WebhookType::Rollout | WebhookType::PreRollout | WebhookType::Rollback)
            )
    })
}

/// A metric that was not queried because `hook` already failed the window: inconclusive on its
/// own (it measured nothing); the hook's failure decides the verdict.
fn not_queried(check: &MetricCheck, hook: &WebhookResult) -> MetricResult {
    MetricResult {
        name: check.name.clone(),
        value: None,
        min: check.min,
        max: check.max,
        primary_value: None,
        outcome: Outcome::Inconclusive as i32,
        reason: format!(
            "not queried: {} webhook `{}` failed the check first",
            hook.r#type, hook.name
        ),
        judge_undecided: false,
    }
}

/// Whether the verdict is for the whole run: a failure that a sequential judge (or a
/// `rollback` webhook) made decisive, or a pass where every metric is sequential and passed
/// decisively (and there was at least one).
fn decisive(outcome: Outcome, decisions: &[Option<Decision>], webhooks: &[WebhookResult]) -> bool {
    match outcome {
        Outcome::Fail => {
            decisions.contains(&Some(Decision::Fail))
                || webhooks
                    .iter()
                    .any(|w| w.r#type == "rollback" && w.outcome() == Outcome::Fail)
        }
        Outcome::Pass => {
            !decisions.is_empty() && decisions.iter().all(|d| *d == Some(Decision::Pass))
        }
        _ => false,
    }
}

/// Checks what every judgement needs.
///
/// # Errors
/// [`InvalidRequest::Field`] naming the first bad field.
pub fn validate(request: &AnalysisRequest) -> Result<(), InvalidRequest> {
    let field = |field, reason: &str| InvalidRequest::Field {
        field,
        reason: reason.to_owned(),
    };
    let Some(rollout) = &request.rollout else {
        return Err(field("rollout", "missing"));
    };
    if rollout.namespace.is_empty() {
        return Err(field("rollout.namespace", "empty"));
    }
    if rollout.name.is_empty() {
        return Err(field("rollout.name", "empty"));
    }
    if !request.metrics.is_empty() && request.window_end_ms <= request.window_start_ms {
        return Err(InvalidRequest::Field {
            field: "window_end_ms",
            reason: format!(
                "window end {} is not after its start {}",
                request.window_end_ms, request.window_start_ms
            ),
        });
    }
    for (i, m) in request.metrics.iter().enumerate() {
        if m.name.is_empty() {
            return Err(InvalidRequest::Field {
                field: "metrics.name",
                reason: format!("metric #{i} has no name"),
            });
        }
    }
    for (i, w) in request.webhooks.iter().enumerate() {
        if w.url.is_empty() {
            return Err(InvalidRequest::Field {
                field: "webhooks.url",
                reason: format!("webhook #{i} ({}) has no URL", w.name),
            });
        }
    }
    Ok(())
}

/// The answer to a request that could not be judged: outcome error, with the reason.
/// `request` is `None` when it did not even decode.
pub fn error_verdict(request: Option<&AnalysisRequest>, reason: &str) -> Verdict {
    Verdict {
        rollout: request.and_then(|r| r.rollout.clone()),
        generation: request.map_or(0, |r| r.generation),
        step: request.map_or(0, |r| r.step),
        outcome: Outcome::Error as i32,
        metrics: Vec::new(),
        webhooks: Vec::new(),
        decisive: false,
        error: reason.to_owned(),
    }
}

/// The template variables of a request for a window of `range_ms`.
fn variables(request: &AnalysisRequest, range_ms: u64) -> Result<Variables, String> {
    let mut vars: Variables = request
        .variables
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(rollout) = &request.rollout {
        vars.insert("namespace".into(), rollout.namespace.clone());
        vars.insert("name".into(), rollout.name.clone());
    }
    let duration = prometheus_duration(range_ms);
    vars.insert("interval".into(), duration.clone());
    vars.insert("window".into(), duration);
    let namespace = vars.get("namespace").cloned().unwrap_or_default();
    for side in ["canary", "primary"] {
        let cluster_var = format!("{side}_cluster");
        if let Some(backend) = vars.get(side).cloned()
            && !vars.contains_key(&cluster_var)
        {
            vars.insert(cluster_var, cluster_name(&namespace, &backend));
        }
    }
    // Values land inside PromQL string literals: a quote or backslash would change the query.
    for (k, v) in &vars {
        if v.contains(['"', '\\', '\n', '`']) {
            return Err(format!(
                "variable `{k}` contains a quote, backslash or newline"
            ));
        }
    }
    Ok(vars)
}

/// The variables with the primary's names where the canary's were, for measuring the primary
/// with the canary's template.
fn as_primary(vars: &Variables) -> Result<Variables, String> {
    let mut vars = vars.clone();
    let primary = vars
        .get("primary")
        .cloned()
        .ok_or("judged against the primary but the request has no `primary` variable")?;
    let primary_cluster = vars.get("primary_cluster").cloned().unwrap_or_default();
    vars.insert("canary".into(), primary);
    vars.insert("canary_cluster".into(), primary_cluster);
    Ok(vars)
}

/// Shares an analyzer between tasks.
pub type SharedAnalyzer = Arc<Analyzer>;

/// `d` in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aviary_proto::RolloutRef;

    fn request() -> AnalysisRequest {
        AnalysisRequest {
            rollout: Some(RolloutRef::new("test", "podinfo")),
            window_start_ms: 1_000,
            window_end_ms: 31_000,
            variables: [("canary", "podinfo-v2"), ("primary", "podinfo-v1")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..AnalysisRequest::default()
        }
    }

    #[test]
    fn variables_carry_names_clusters_and_window() {
        let vars = variables(&request(), 30_000).unwrap();
        assert_eq!(vars["namespace"], "test");
        assert_eq!(vars["name"], "podinfo");
        assert_eq!(vars["canary_cluster"], "test_podinfo-v2");
        assert_eq!(vars["primary_cluster"], "test_podinfo-v1");
        assert_eq!(vars["interval"], "30s");
        assert_eq!(vars["window"], "30s");
        let primary = as_primary(&vars).unwrap();
        assert_eq!(primary["canary"], "podinfo-v1");
        assert_eq!(primary["canary_cluster"], "test_podinfo-v1");
        let mut bad = request();
        bad.variables.insert("x".into(), "a\"b".into());
        assert!(variables(&bad, 1000).is_err());
    }

    #[test]
    fn decisive_needs_every_metric_sequential_for_a_pass() {
        use Decision::*;
        assert!(decisive(Outcome::Fail, &[None, Some(Fail)], &[]));
        assert!(!decisive(Outcome::Fail, &[None, Some(Continue)], &[]));
        assert!(decisive(Outcome::Pass, &[Some(Pass), Some(Pass)], &[]));
        assert!(!decisive(Outcome::Pass, &[Some(Pass), None], &[]));
        assert!(!decisive(Outcome::Pass, &[Some(Pass), Some(Continue)], &[]));
        assert!(!decisive(Outcome::Pass, &[], &[]));
        assert!(!decisive(Outcome::Inconclusive, &[Some(Pass)], &[]));
    }

    #[test]
    fn invalid_requests_name_the_field() {
        let mut r = request();
        r.rollout = None;
        assert!(matches!(
            validate(&r),
            Err(InvalidRequest::Field {
                field: "rollout",
                ..
            })
        ));
        let mut r = request();
        r.metrics.push(MetricCheck {
            name: "request-success-rate".into(),
            ..MetricCheck::default()
        });
        r.window_end_ms = r.window_start_ms;
        assert!(matches!(
            validate(&r),
            Err(InvalidRequest::Field {
                field: "window_end_ms",
                ..
            })
        ));
        let v = error_verdict(Some(&r), "bad");
        assert_eq!(v.outcome(), Outcome::Error);
        assert_eq!(v.error, "bad");
    }
}
