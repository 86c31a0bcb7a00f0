//! Latency: is the canary's q-quantile within `maxRatio` of the primary's, from histogram
//! buckets?
//!
//! For every finite bucket bound `b`, "at most `b`" is a Bernoulli trial, so each side's share
//! of requests at most `b` has a confidence sequence ([`super::rate::rate_interval`]). Between
//! bounds the distribution is taken as uniform within its bucket, as Prometheus'
//! `histogram_quantile` does, which turns the band on the CDF into a confidence interval for
//! each side's q-quantile. The bucket layout is the resolution: inside a bucket the quantile is
//! interpolated, not measured, and a quantile in the `+Inf` bucket has no upper end.
//!
//! **Why α is split over two bounds, not all of them.** Let the true q-quantile lie in the
//! bucket `(b[k-1], b[k]]`. The interval's lower end (where the band's upper curve reaches q)
//! can only be above the quantile if the upper band fails at `b[k-1]` or `b[k]`: on that
//! bucket the upper curve is then at least the true CDF. Its upper end (where the lower curve
//! reaches q) can be below the quantile only if the lower curve reaches q before `b[k-1]` —
//! and since every side's counts at a lower bound are at most those at `b[k-1]` out of the
//! same total, and the band is monotone in the count, that implies the lower band is at least
//! q at `b[k-1]`, where the true CDF is below q: a failure at `b[k-1]` — or it fails inside
//! the bucket, a failure at `b[k-1]` or `b[k]`. So only the two bounds around the true
//! quantile matter; which two is unknown but fixed, and each side's interval misses with
//! probability at most twice the per-bound α. (The first bucket starts at the fixed point
//! `(0, 0)`; a quantile in the `+Inf` bucket has only `b[k-1]`.)
//!
//! `fail`: the canary's quantile is above `maxRatio` × the primary's, i.e. the lower end of the
//! canary's interval exceeds `maxRatio` × the upper end of the primary's. `pass`: the upper end
//! of the canary's is at most `maxRatio` × the lower end of the primary's.

use super::rate::{Counts, Decision, Interval, rate_interval};

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
    /// Requests at most bound `i`, as counts of trials and events.
    fn at_most(&self, i: usize) -> Counts {
        Counts::new(self.total, self.cumulative.get(i).copied().unwrap_or(0))
    }

    fn check(&self) -> Result<(), HistogramError> {
        if self.bounds.len() != self.cumulative.len() {
            return Err(HistogramError::Malformed(
                "bounds and counts differ in length",
            ));
        }
        if self.bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(HistogramError::Malformed("bounds are not ascending"));
        }
        Ok(())
    }

    /// The confidence interval of the q-quantile when each bound's share holds at
    /// `alpha_per_bound`; the observed (interpolated) quantile as `estimate`, `None` without
    /// requests.
    fn quantile(&self, q: f64, alpha_per_bound: f64) -> Option<(Interval, f64)> {
        if self.total == 0 {
            return None;
        }
        let (mut lo, mut hi, mut point) = (Vec::new(), Vec::new(), Vec::new());
        let (mut run_lo, mut run_hi) = (0.0f64, 0.0f64);
        for i in 0..self.bounds.len() {
            let c = self.at_most(i);
            let band = rate_interval(c, alpha_per_bound);
            run_lo = run_lo.max(band.lower);
            run_hi = run_hi.max(band.upper);
            lo.push(run_lo);
            hi.push(run_hi);
            point.push(c.rate());
        }
        let lower = interpolate(&self.bounds, &hi, q).unwrap_or(f64::INFINITY);
        let upper = interpolate(&self.bounds, &lo, q).unwrap_or(f64::INFINITY);
        let estimate = interpolate(&self.bounds, &point, q).unwrap_or(f64::INFINITY);
        Some((Interval { lower, upper }, estimate))
    }
}

/// The first `x` where the piecewise-linear CDF through `(0, 0)` and `(bounds[i], cdf[i])`
/// reaches `q`; `None` when it stays below `q` up to the last finite bound (the quantile is in
/// the `+Inf` bucket).
fn interpolate(bounds: &[f64], cdf: &[f64], q: f64) -> Option<f64> {
    let (mut x0, mut f0) = (0.0f64.min(bounds.first().copied().unwrap_or(0.0)), 0.0);
    for (&x, &f) in bounds.iter().zip(cdf) {
        if f >= q {
            if f <= f0 {
                return Some(x);
            }
            return Some(x0 + (x - x0) * (q - f0) / (f - f0));
        }
        (x0, f0) = (x, f);
    }
    None
}

/// How α is divided for each bound's band: two sides × the two bounds around each side's
/// true quantile.
const PER_BOUND_SPLIT: f64 = 4.0;

/// The quantile comparison at one look.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantileJudgement {
    /// The conclusion.
    pub decision: Decision,
    /// The canary's q-quantile: confidence interval and interpolated estimate.
    pub canary: Option<(Interval, f64)>,
    /// The primary's.
    pub primary: Option<(Interval, f64)>,
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

/// Compares the q-quantiles (e.g. `quantile` 0.99): `Fail` when the canary's is above
/// `max_ratio` × the primary's, `Pass` when it is at most that, each with probability of
/// error at most `alpha` at every look; otherwise `Continue`.
///
/// # Errors
/// [`HistogramError`] when the histograms do not share their bounds or are malformed.
pub fn compare_quantiles(
    canary: &Histogram,
    primary: &Histogram,
    quantile: f64,
    max_ratio: f64,
    alpha: f64,
) -> Result<QuantileJudgement, HistogramError> {
    canary.check()?;
    primary.check()?;
    if canary.bounds != primary.bounds {
        return Err(HistogramError::BoundsDiffer);
    }
    // Both sides, and on each the two bounds around its true quantile (see the module docs).
    let per_bound = alpha / PER_BOUND_SPLIT;
    let c = canary.quantile(quantile, per_bound);
    let p = primary.quantile(quantile, per_bound);
    let decision = match (c, p) {
        (Some((ci, _)), Some((pi, _))) if ci.lower > max_ratio * pi.upper => Decision::Fail,
        (Some((ci, _)), Some((pi, _)))
            if ci.upper.is_finite() && ci.upper <= max_ratio * pi.lower =>
        {
            Decision::Pass
        }
        _ => Decision::Continue,
    };
    Ok(QuantileJudgement {
        decision,
        canary: c,
        primary: p,
    })
}
