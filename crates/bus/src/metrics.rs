//! [`BusMetrics`]: the bus's own Prometheus metrics, registered in the service's registry.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubjectLabels {
    subject: String,
}

/// Counters the typed subscribers and consumers update. Create one per service with
/// [`BusMetrics::register`] and share the `Arc` between subscribers.
#[derive(Debug, Default)]
pub struct BusMetrics {
    malformed: Family<SubjectLabels, Counter>,
}

impl BusMetrics {
    /// Registers the bus metrics under the `bus_` prefix of `registry`, which is expected to
    /// carry the service prefix `aviary`, giving `aviary_bus_malformed_messages_total{subject}`.
    ///
    /// The `subject` label is the subscription's subject (pattern) or consumer, not each
    /// message's concrete subject, so its cardinality stays bounded.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Arc::new(Self::default());
        registry.sub_registry_with_prefix("bus").register(
            "malformed_messages",
            "Messages skipped because they did not decode into the expected type",
            metrics.malformed.clone(),
        );
        metrics
    }

    /// Metrics registered nowhere, for tools and tests that do not export them.
    pub fn unregistered() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// How many malformed messages were counted under `subject`.
    pub fn malformed(&self, subject: &str) -> u64 {
        self.malformed
            .get_or_create(&SubjectLabels {
                subject: subject.to_owned(),
            })
            .get()
    }

    pub(crate) fn count_malformed(&self, subject: &str) {
        self.malformed
            .get_or_create(&SubjectLabels {
                subject: subject.to_owned(),
            })
            .inc();
    }
}
