//! The agent's Prometheus metrics (registered under `aviary_router_…`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an apply.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplyLabels {
    /// `envoy`, `nginx`, `haproxy`.
    pub provider: String,
    /// `ok`, `rejected`, `unsupported`, `unconfirmed`, `error`.
    pub outcome: String,
}

/// Labels of a provider.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Provider kind.
    pub provider: String,
}

/// Labels of an ingress.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngressLabels {
    /// Ingress name.
    pub ingress: String,
}

/// Every metric of the agent.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Applies by provider and outcome.
    pub applies: Family<ApplyLabels, Counter>,
    /// Apply latency (push → confirmed) by provider.
    pub apply_seconds: Family<ProviderLabels, Histogram, fn() -> Histogram>,
    /// Reconciles that found the data plane off the desired route and corrected it.
    pub drift_corrections: Family<IngressLabels, Counter>,
    /// Route commands that decoded but failed validation.
    pub invalid_commands: Family<IngressLabels, Counter>,
    /// Envoys holding an ADS stream, per ingress.
    pub xds_connected_proxies: Family<IngressLabels, Gauge>,
}

fn apply_histogram() -> Histogram {
    // 1 ms … ~16 s: local reloads take milliseconds, a slow Envoy fleet seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            applies: Family::default(),
            apply_seconds: Family::new_with_constructor(apply_histogram),
            drift_corrections: Family::default(),
            invalid_commands: Family::default(),
            xds_connected_proxies: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("router");
        r.register(
            "applies",
            "Route applies by provider and outcome",
            metrics.applies.clone(),
        );
        r.register(
            "apply_duration_seconds",
            "Time from a route apply to the data plane confirming it",
            metrics.apply_seconds.clone(),
        );
        r.register(
            "drift_corrections",
            "Reconciles that corrected a data plane off its desired route",
            metrics.drift_corrections.clone(),
        );
        r.register(
            "invalid_commands",
            "Route commands rejected by validation",
            metrics.invalid_commands.clone(),
        );
        r.register(
            "xds_connected_proxies",
            "Envoys connected to the ADS server",
            metrics.xds_connected_proxies.clone(),
        );
        metrics
    }

    /// Records one apply.
    pub fn record_apply(&self, provider: &str, outcome: &str, elapsed: std::time::Duration) {
        self.applies
            .get_or_create(&ApplyLabels {
                provider: provider.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.apply_seconds
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The connected-proxies gauge of `ingress` (shared with the provider).
    pub fn xds_gauge(&self, ingress: &str) -> Gauge {
        self.xds_connected_proxies
            .get_or_create(&IngressLabels {
                ingress: ingress.to_owned(),
            })
            .clone()
    }

    /// Counts a corrected drift on `ingress`.
    pub fn drift(&self, ingress: &str) {
        self.drift_corrections
            .get_or_create(&IngressLabels {
                ingress: ingress.to_owned(),
            })
            .inc();
    }

    /// Counts an invalid command on `ingress`.
    pub fn invalid(&self, ingress: &str) {
        self.invalid_commands
            .get_or_create(&IngressLabels {
                ingress: ingress.to_owned(),
            })
            .inc();
    }
}
