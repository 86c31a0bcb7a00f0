//! The statistical judge: anytime-valid comparison of the canary with the primary over the
//! whole run so far. Pure math: counts per time slice and histograms in, [`Decision`] out; the
//! analyzer queries the counts, the bench simulates them.
//!
//! - [`slices`]: error rates, canary against primary within the same time slices, with the
//!   variance widened by the slices' overdispersion. This is what decides.
//! - [`latency`]: the q-quantile's ratio to the primary's, from histogram buckets.
//! - [`rate`]: per-side confidence sequences (used by [`latency`]) and the pooled joint test
//!   on whole-run counts, which assumes exchangeable requests (kept to show what the slices
//!   fix; it decides nothing).
//! - [`baseline`]: Flagger's threshold rule and Kayenta's Mann-Whitney, for comparison only.
//!
//! One error budget α per rollout ([`DEFAULT_ALPHA`]) covers every metric and every look:
//! [`AlphaBudget::per_metric`] splits it evenly between the sequential metrics (Bonferroni);
//! each test is valid at every look by construction, so looks cost nothing. `docs/judge.md`
//! gives the reasoning.

pub mod baseline;
pub mod latency;
pub mod rate;
pub mod slices;
pub mod special;

pub use latency::{Histogram, HistogramError, QuantileJudgement, compare_quantiles};
pub use rate::{Counts, Decision, Interval, RateJudgement, compare_rates, rate_interval};
pub use slices::{Slice, SliceJudgement, compare_slices};

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

/// Latency tolerance when the metric sets no `maxRatio`: the canary's p99 may be 1.5 × the
/// primary's (the ratio Flagger's docs use for request duration).
pub const DEFAULT_MAX_RATIO: f64 = 1.5;

/// How long after the last weight change a pass must have been evidenced before it may
/// promote early: a regression that starts with a new weight (or just before the pass) gets a
/// minute of its own traffic to show, the length of Flagger's usual interval.
pub const MIN_PROMOTION_SPAN_MS: u64 = 60_000;

#[cfg(test)]
mod tests;
