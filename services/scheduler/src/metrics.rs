//! The scheduler's own metrics (all `aviary_`-prefixed through the service registry).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label for per-phase gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// Phase name.
    pub phase: String,
}

/// Label for per-rollout gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabel {
    /// `<namespace>/<name>`.
    pub rollout: String,
}

/// Every metric the scheduler exports.
#[derive(Clone)]
pub struct Metrics {
    /// Rollouts by phase (as last seen in the store).
    pub rollouts: Family<PhaseLabel, Gauge>,
    /// Canary weight per rollout.
    pub canary_weight: Family<RolloutLabel, Gauge>,
    /// Rollouts this replica drives.
    pub owned: Gauge,
    /// Failed checks counted.
    pub failed_checks: Counter,
    /// Halts started.
    pub halts: Counter,
    /// Rollbacks.
    pub rollbacks: Counter,
    /// Promotions.
    pub promotions: Counter,
    /// Leases lost to another replica.
    pub leases_lost: Counter,
    /// Rollouts handed over to a replica under its share (this one was over it).
    pub handed_over: Counter,
    /// Seconds each step lasted.
    pub step_duration: Histogram,
    /// Seconds from a route decision to every ingress's ack.
    pub ack_latency: Histogram,
    /// Seconds from a tick's due time to its decision (stored, when it is one that is stored).
    pub tick_lag: Histogram,
    /// Control-API calls refused for authentication or authorisation.
    pub refused_calls: Counter<u64, AtomicU64>,
    /// Refused calls left out of the audit stream by its rate limit (each still refused).
    pub refusals_not_audited: Counter<u64, AtomicU64>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            rollouts: Family::default(),
            canary_weight: Family::default(),
            owned: Gauge::default(),
            failed_checks: Counter::default(),
            halts: Counter::default(),
            rollbacks: Counter::default(),
            promotions: Counter::default(),
            leases_lost: Counter::default(),
            handed_over: Counter::default(),
            step_duration: Histogram::new(exponential_buckets(0.1, 2.0, 14)),
            ack_latency: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            // Factor 1.5 from 1 ms to ~25 s: fine enough to read p50/p99 off the buckets in a
            // benchmark, coarse enough to stay a couple of dozen series.
            tick_lag: Histogram::new(exponential_buckets(0.001, 1.5, 26)),
            refused_calls: Counter::default(),
            refusals_not_audited: Counter::default(),
        };
        registry.register(
            "scheduler_rollouts",
            "Rollouts by phase",
            m.rollouts.clone(),
        );
        registry.register(
            "scheduler_canary_weight",
            "Canary weight per rollout",
            m.canary_weight.clone(),
        );
        registry.register(
            "scheduler_owned_rollouts",
            "Rollouts driven by this replica",
            m.owned.clone(),
        );
        registry.register(
            "scheduler_failed_checks",
            "Failed checks counted",
            m.failed_checks.clone(),
        );
        registry.register("scheduler_halts", "Halts started", m.halts.clone());
        registry.register(
            "scheduler_rollbacks",
            "Rollouts rolled back",
            m.rollbacks.clone(),
        );
        registry.register(
            "scheduler_promotions",
            "Rollouts promoted",
            m.promotions.clone(),
        );
        registry.register(
            "scheduler_leases_lost",
            "Leases lost to another replica",
            m.leases_lost.clone(),
        );
        registry.register(
            "scheduler_handed_over",
            "Rollouts handed over to another replica to even the shares",
            m.handed_over.clone(),
        );
        registry.register(
            "scheduler_step_duration_seconds",
            "How long each step lasted",
            m.step_duration.clone(),
        );
        registry.register(
            "scheduler_route_ack_latency_seconds",
            "Route decision to every ingress's ack",
            m.ack_latency.clone(),
        );
        registry.register(
            "scheduler_tick_lag_seconds",
            "Tick due time to its decision (and its CAS write, when stored)",
            m.tick_lag.clone(),
        );
        registry.register(
            "scheduler_refused_calls",
            "Control-API calls refused by auth",
            m.refused_calls.clone(),
        );
        registry.register(
            "scheduler_refusals_not_audited",
            "Refused control-API calls left out of the audit stream by its rate limit",
            m.refusals_not_audited.clone(),
        );
        m
    }
}
