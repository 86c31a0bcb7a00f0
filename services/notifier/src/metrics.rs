//! The notifier's own metrics, registered in the service's registry (prefix `aviary_`):
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `aviary_notifier_posts_total` | provider, outcome | notifications settled: `delivered`, `duplicate` (already posted), `dead_lettered`, `abandoned` (shutdown; redelivered later) |
//! | `aviary_notifier_retries_total` | provider | attempts that were retried |
//! | `aviary_notifier_dead_letters_total` | provider | posts given up on and written to the dead-letter stream |
//! | `aviary_notifier_events_total` | outcome | events read: `notified`, `ignored` (kind not posted or no route), `invalid` |
//! | `aviary_notifier_invalid_events_total` | reason | events skipped as invalid: `json`, `unknown_type` |
//! | `aviary_notifier_dedup_errors_total` | | failures to record a delivered id (a restart may re-post it) |
//! | `aviary_notifier_consumer_pending` | | events in the stream not yet delivered to the notifier (lag) |
//! | `aviary_notifier_consumer_ack_pending` | | events delivered to the notifier and not yet acknowledged |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Handles on every notifier metric; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    posts: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    dead_letters: Family<Labels, Counter>,
    events: Family<Labels, Counter>,
    invalid: Family<Labels, Counter>,
    dedup_errors: Counter,
    pending: Gauge,
    ack_pending: Gauge,
}

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_owned(), value.to_owned())]
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "notifier_posts",
            "Notifications settled, by provider and outcome",
            m.posts.clone(),
        );
        registry.register(
            "notifier_retries",
            "Post attempts that were retried, by provider",
            m.retries.clone(),
        );
        registry.register(
            "notifier_dead_letters",
            "Posts given up on and dead-lettered, by provider",
            m.dead_letters.clone(),
        );
        registry.register(
            "notifier_events",
            "Audit events read, by outcome",
            m.events.clone(),
        );
        registry.register(
            "notifier_invalid_events",
            "Audit events skipped as invalid, by reason",
            m.invalid.clone(),
        );
        registry.register(
            "notifier_dedup_errors",
            "Failures to record a delivered event id",
            m.dedup_errors.clone(),
        );
        registry.register(
            "notifier_consumer_pending",
            "Events not yet delivered to the notifier's consumer",
            m.pending.clone(),
        );
        registry.register(
            "notifier_consumer_ack_pending",
            "Events delivered to the notifier and not yet acknowledged",
            m.ack_pending.clone(),
        );
        m
    }

    pub(crate) fn post(&self, provider: &str, outcome: &str) {
        self.posts
            .get_or_create(&vec![
                ("provider".to_owned(), provider.to_owned()),
                ("outcome".to_owned(), outcome.to_owned()),
            ])
            .inc();
    }

    pub(crate) fn retry(&self, provider: &str) {
        self.retries
            .get_or_create(&label("provider", provider))
            .inc();
    }

    /// Starts a provider's retry and dead-letter counters at 0, so dashboards and alerts on
    /// them see the provider before its first failure.
    pub(crate) fn init_provider(&self, provider: &str) {
        let labels = label("provider", provider);
        drop(self.retries.get_or_create(&labels));
        drop(self.dead_letters.get_or_create(&labels));
    }

    pub(crate) fn dead_letter(&self, provider: &str) {
        self.dead_letters
            .get_or_create(&label("provider", provider))
            .inc();
    }

    pub(crate) fn event(&self, outcome: &str) {
        self.events.get_or_create(&label("outcome", outcome)).inc();
    }

    pub(crate) fn invalid(&self, reason: &str) {
        self.event("invalid");
        self.invalid.get_or_create(&label("reason", reason)).inc();
    }

    pub(crate) fn dedup_error(&self) {
        self.dedup_errors.inc();
    }

    pub(crate) fn lag(&self, pending: u64, ack_pending: usize) {
        self.pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.ack_pending
            .set(i64::try_from(ack_pending).unwrap_or(i64::MAX));
    }

    /// Notifications settled for `provider` with `outcome`.
    pub fn posts(&self, provider: &str, outcome: &str) -> u64 {
        self.posts
            .get_or_create(&vec![
                ("provider".to_owned(), provider.to_owned()),
                ("outcome".to_owned(), outcome.to_owned()),
            ])
            .get()
    }

    /// Retried attempts for `provider`.
    pub fn retries(&self, provider: &str) -> u64 {
        self.retries
            .get_or_create(&label("provider", provider))
            .get()
    }

    /// Dead letters for `provider`.
    pub fn dead_letters(&self, provider: &str) -> u64 {
        self.dead_letters
            .get_or_create(&label("provider", provider))
            .get()
    }

    /// Invalid events skipped for `reason` (`json`, `unknown_type`).
    pub fn invalid_events(&self, reason: &str) -> u64 {
        self.invalid.get_or_create(&label("reason", reason)).get()
    }

    /// Last observed consumer lag (`num_pending`).
    pub fn pending(&self) -> i64 {
        self.pending.get()
    }
}
