//! The analyzer's own metrics, registered in the service's registry (prefix `aviary_`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a query counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct QueryLabels {
    /// Provider type, e.g. `prometheus`.
    pub provider: String,
    /// `value`, `no_data` or `error`.
    pub outcome: String,
}

/// Labels naming a provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Provider type.
    pub provider: String,
}

/// Labels of a webhook-call counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WebhookLabels {
    /// Hook type, e.g. `confirm-promotion`.
    pub r#type: String,
    /// `pass`, `fail`, `inconclusive` or `error`.
    pub outcome: String,
}

/// Labels of a verdict counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Folded outcome.
    pub outcome: String,
}

/// Every metric the analyzer exports.
#[derive(Debug, Clone)]
pub struct AnalyzerMetrics {
    /// Queries asked for, by provider and outcome (de-duplicated ones included).
    pub queries: Family<QueryLabels, Counter>,
    /// Calls that reached a backend, by provider.
    pub backend_calls: Family<ProviderLabels, Counter>,
    /// Queries answered by joining an identical call in flight.
    pub deduplicated: Counter,
    /// Queries answered from the cache of earlier answers for the same window.
    pub cache_hits: Counter,
    /// Backend call latency, seconds.
    pub query_seconds: Family<ProviderLabels, Histogram>,
    /// Webhook calls by type and outcome.
    pub webhooks: Family<WebhookLabels, Counter>,
    /// Verdicts answered, by folded outcome.
    pub verdicts: Family<OutcomeLabels, Counter>,
    /// Requests that did not decode or validate (each still answered).
    pub malformed: Counter,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~16 s: local Prometheus answers in milliseconds, a struggling one in seconds.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

impl AnalyzerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            queries: Family::default(),
            backend_calls: Family::default(),
            deduplicated: Counter::default(),
            cache_hits: Counter::default(),
            query_seconds: Family::new_with_constructor(latency_histogram),
            webhooks: Family::default(),
            verdicts: Family::default(),
            malformed: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("analyzer");
        r.register(
            "queries",
            "Metric queries asked for, by provider and outcome",
            metrics.queries.clone(),
        );
        r.register(
            "backend_calls",
            "Queries that reached a metrics backend",
            metrics.backend_calls.clone(),
        );
        r.register(
            "queries_deduplicated",
            "Queries answered by an identical query already in flight",
            metrics.deduplicated.clone(),
        );
        r.register(
            "cache_hits",
            "Queries answered by an earlier answer to the same query for the same window",
            metrics.cache_hits.clone(),
        );
        r.register(
            "query_duration_seconds",
            "Latency of metrics backend calls",
            metrics.query_seconds.clone(),
        );
        r.register(
            "webhook_calls",
            "Webhook calls by type and outcome",
            metrics.webhooks.clone(),
        );
        r.register(
            "verdicts",
            "Verdicts answered, by folded outcome",
            metrics.verdicts.clone(),
        );
        r.register(
            "malformed_requests",
            "Analysis requests that did not decode or validate",
            metrics.malformed.clone(),
        );
        metrics
    }

    /// Metrics registered nowhere (tests, benches).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }
}

/// The lower-case name of an outcome, for labels.
pub fn outcome_label(outcome: aviary_proto::Outcome) -> &'static str {
    match outcome {
        aviary_proto::Outcome::Pass => "pass",
        aviary_proto::Outcome::Fail => "fail",
        aviary_proto::Outcome::Inconclusive => "inconclusive",
        aviary_proto::Outcome::Error => "error",
        aviary_proto::Outcome::Unspecified => "unspecified",
    }
}
