//! The statistical judge: anytime-valid comparison of the canary with the primary over the
//! whole run so far. Pure math: cumulative counts and histograms in, [`Decision`] out; the
//! analyzer queries the counts, the bench simulates them.
//!
//! - [`rate`]: error rates, from a joint e-process on both sides' counts.
//! - [`latency`]: upward shift of the tail, from histogram buckets.
//! - [`baseline`]: Flagger's threshold rule and Kayenta's Mann-Whitney, for comparison only.
//!
//! One error budget α per rollout ([`DEFAULT_ALPHA`]) covers every metric and every look:
//! [`AlphaBudget::per_metric`] splits it evenly between the sequential metrics (Bonferroni);
//! each test is valid at every look by construction, so looks cost nothing. `docs/judge.md`
//! gives the reasoning.

pub mod baseline;
pub mod latency;
pub mod rate;
pub mod special;

pub use latency::{Histogram, HistogramError, TailJudgement, compare_tails};
pub use rate::{Counts, Decision, Interval, RateJudgement, compare_rates, rate_interval};

/// α per rollout when none is configured: at most one run in a hundred ends wrongly (a
/// rollback of a canary that is within tolerance, or an early promotion of one that is not)
/// because of the judge.
pub const DEFAULT_ALPHA: f64 = 0.01;

/// Error rate tolerance when the metric sets none: the canary may be worse by half a
/// percentage point — the margin Flagger's usual `min: 99` leaves a service at 99.5 %.
pub const DEFAULT_RATE_TOLERANCE: f64 = 0.005;

/// A rollout's error budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlphaBudget {
    /// α for the whole rollout, in (0, 1).
    pub alpha: f64,
}

impl Default for AlphaBudget {
    fn default() -> Self {
        Self {
            alpha: DEFAULT_ALPHA,
        }
    }
}

impl AlphaBudget {
    /// A budget; `None` when `alpha` is not in (0, 1).
    pub fn new(alpha: f64) -> Option<Self> {
        (alpha > 0.0 && alpha < 1.0).then_some(Self { alpha })
    }

    /// Each of `metrics` sequential metrics' share (Bonferroni); the whole budget for one.
    pub fn per_metric(self, metrics: usize) -> f64 {
        self.alpha / metrics.max(1) as f64
    }
}

/// Latency tolerance for quantile `q` and allowed ratio `r` of slow-request shares: the
/// canary's share of requests slower than the primary's q-quantile may be `r × (1 − q)` at
/// most, i.e. exceed the primary's `1 − q` by `(r − 1)(1 − q)`. Without `r`, 1.5.
pub fn tail_tolerance(quantile: f64, max_ratio: Option<f64>) -> f64 {
    (max_ratio.unwrap_or(1.5) - 1.0).max(0.0) * (1.0 - quantile)
}

#[cfg(test)]
mod tests;
