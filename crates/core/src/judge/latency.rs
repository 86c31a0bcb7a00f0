//! Latency: a sequential test for an upward shift of the canary's tail, from histogram
//! buckets.
//!
//! For every finite bucket bound `b`, "slower than `b`" is a Bernoulli trial, so the two
//! sides' shares of requests slower than `b` are compared by the joint test of
//! [`super::rate`]. The α of the metric is split evenly (Bonferroni) over every bound of the
//! histogram, which makes all of them hold at once at every look; the judge may then look at
//! whichever bounds it likes — even bounds picked from the data, such as the primary's
//! q-quantile bucket — without spending more than α.
//!
//! `fail`: at some bound in the tail (where the primary's share slower than it is at most
//! [`TAIL_FACTOR`] × `(1 − q)`), the canary's share exceeds the primary's by more than the
//! tolerance. `pass`: at the primary's q-quantile bucket bound and every bound above it, the
//! canary's share exceeds the primary's by less than the tolerance.

use super::rate::{Counts, Decision, Interval, compare_rates};

/// How far into the body the tail reaches: bounds the primary exceeds up to 10 × `(1 − q)` of
/// the time (p90 and up for p99). A shift of the whole distribution shows there as well as at
/// the quantile, with more data; a body-only change (faster median, same tail) is not judged.
pub const TAIL_FACTOR: f64 = 10.0;

/// A cumulative histogram since the run started: `cumulative[i]` requests took at most
/// `bounds[i]`; `total` requests in all (the `+Inf` bucket).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Finite bucket upper bounds (`le`), ascending.
    pub bounds: Vec<f64>,
    /// Requests at most each bound; same length as `bounds`, non-decreasing.
    pub cumulative: Vec<u64>,
    /// All requests.
    pub total: u64,
}

impl Histogram {
    /// Requests slower than bound `i`, as counts of trials and events.
    fn slower_than(&self, i: usize) -> Counts {
        let at_most = self.cumulative.get(i).copied().unwrap_or(0).min(self.total);
        Counts::new(self.total, self.total - at_most)
    }
}

/// One bound's comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoundJudgement {
    /// The bucket bound.
    pub bound: f64,
    /// Confidence sequence for `canary share slower − primary share slower`.
    pub difference: Interval,
    /// Its conclusion against the tolerance.
    pub decision: Decision,
}

/// The tail comparison at one look.
#[derive(Clone, Debug, PartialEq)]
pub struct TailJudgement {
    /// The conclusion.
    pub decision: Decision,
    /// The primary's q-quantile bucket bound, when the primary has data.
    pub quantile_bound: Option<f64>,
    /// The bound that decided (the failing one, or the quantile bound), if any.
    pub deciding: Option<BoundJudgement>,
}

/// Why two histograms cannot be compared.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistogramError {
    /// Canary and primary do not have the same bucket bounds.
    #[error("canary and primary histograms have different bucket bounds")]
    BoundsDiffer,
    /// `bounds` and `cumulative` differ in length, or bounds are not ascending.
    #[error("histogram is malformed: {0}")]
    Malformed(&'static str),
}

/// Compares the tails: is the canary's share of requests slower than the primary's
/// `quantile` (e.g. 0.99) larger than the primary's by more than `tolerance` (a proportion)?
///
/// # Errors
/// [`HistogramError`] when the histograms do not share their bounds or are malformed.
pub fn compare_tails(
    canary: &Histogram,
    primary: &Histogram,
    quantile: f64,
    tolerance: f64,
    alpha: f64,
) -> Result<TailJudgement, HistogramError> {
    for h in [canary, primary] {
        if h.bounds.len() != h.cumulative.len() {
            return Err(HistogramError::Malformed(
                "bounds and counts differ in length",
            ));
        }
        if h.bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(HistogramError::Malformed("bounds are not ascending"));
        }
    }
    if canary.bounds != primary.bounds {
        return Err(HistogramError::BoundsDiffer);
    }
    let k = canary.bounds.len().max(1);
    let per_bound = alpha / k as f64;
    let tail_share = 1.0 - quantile;
    let mut quantile_bound = None;
    let mut all_pass = true;
    let mut pass_at_quantile = None;
    for (i, &bound) in canary.bounds.iter().enumerate() {
        let primary_slower = primary.slower_than(i);
        if primary_slower.trials == 0 || primary_slower.rate() > TAIL_FACTOR * tail_share {
            continue;
        }
        let j = compare_rates(canary.slower_than(i), primary_slower, tolerance, per_bound);
        let judged = BoundJudgement {
            bound,
            difference: j.difference,
            decision: j.decision,
        };
        if j.decision == Decision::Fail {
            return Ok(TailJudgement {
                decision: Decision::Fail,
                quantile_bound,
                deciding: Some(judged),
            });
        }
        if primary_slower.rate() <= tail_share {
            all_pass &= j.decision == Decision::Pass;
            if quantile_bound.is_none() {
                quantile_bound = Some(bound);
                pass_at_quantile = Some(judged);
            }
        }
    }
    let decision = if all_pass && quantile_bound.is_some() {
        Decision::Pass
    } else {
        Decision::Continue
    };
    Ok(TailJudgement {
        decision,
        quantile_bound,
        deciding: pass_at_quantile,
    })
}
