//! Judging one metric over one window, and folding many outcomes into one. Pure: values in,
//! [`MetricResult`] out.
//!
//! Fail-safe by construction: a metric passes only when a value was measured and every bound
//! that was set holds. No data is inconclusive unless `onNoData` says otherwise; a provider
//! error is an error; too few canary requests is inconclusive; a metric with no bound at all is
//! an error.

use std::fmt;
use std::str::FromStr;

use aviary_core::judge::{
    Decision, Histogram, MIN_PROMOTION_SPAN_MS, Slice, compare_quantiles, compare_slices,
};
use aviary_proto::{MetricResult, Outcome};

/// What one query measured: a number, or nothing (empty vector, NaN, ±Inf).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// A finite value.
    Value(f64),
    /// No series, or a value that is not a finite number.
    NoData,
}

impl Sample {
    /// A sample from a raw value: NaN and infinities are no data.
    pub fn from_f64(value: f64) -> Self {
        if value.is_finite() {
            Self::Value(value)
        } else {
            Self::NoData
        }
    }

    fn value(self) -> Option<f64> {
        match self {
            Self::Value(v) => Some(v),
            Self::NoData => None,
        }
    }
}

/// What a query produced: a sample, or why the provider could not give one.
pub type Measured = Result<Sample, String>;

/// What a metric with no data in the window is judged as (`onNoData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoDataPolicy {
    /// Neither promotes nor counts as a failed check (the default).
    #[default]
    Inconclusive,
    /// Counts as a failed check.
    Fail,
    /// Counts as a pass (for metrics that are legitimately empty, e.g. error counters).
    Pass,
}

impl FromStr for NoDataPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "" | "inconclusive" => Ok(Self::Inconclusive),
            "fail" => Ok(Self::Fail),
            "pass" => Ok(Self::Pass),
            other => Err(format!(
                "onNoData `{other}` is not one of inconclusive, fail, pass"
            )),
        }
    }
}

impl NoDataPolicy {
    fn outcome(self) -> Outcome {
        match self {
            Self::Inconclusive => Outcome::Inconclusive,
            Self::Fail => Outcome::Fail,
            Self::Pass => Outcome::Pass,
        }
    }
}

impl fmt::Display for NoDataPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Inconclusive => "inconclusive",
            Self::Fail => "fail",
            Self::Pass => "pass",
        })
    }
}

/// The bounds a metric is judged against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Criteria {
    /// Canary value must be at least this (`thresholdRange.min`).
    pub min: Option<f64>,
    /// Canary value must be at most this (`thresholdRange.max`).
    pub max: Option<f64>,
    /// The canary may be worse than the primary by at most this much (absolute).
    pub max_delta: Option<f64>,
    /// The canary may be worse than the primary by at most this factor.
    pub max_ratio: Option<f64>,
    /// What no data means.
    pub on_no_data: NoDataPolicy,
    /// Fewer canary requests than this in the window is inconclusive; 0 = no minimum.
    pub min_requests: u64,
    /// Whether lower values are worse (success rate) instead of higher ones (latency, errors).
    pub lower_is_worse: bool,
}

impl Criteria {
    /// Whether the metric is judged against the primary.
    pub fn relative(&self) -> bool {
        self.max_delta.is_some() || self.max_ratio.is_some()
    }

    /// Whether any bound is set.
    pub fn has_bound(&self) -> bool {
        self.min.is_some() || self.max.is_some() || self.relative()
    }
}

/// What was measured for one metric in one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The canary's value.
    pub canary: Measured,
    /// The primary's value, when the metric is judged against it.
    pub primary: Option<Measured>,
    /// The canary's request count, when `minRequests` is set.
    pub requests: Option<Measured>,
}

/// Judges one metric. Every value measured is put in the result, with the reason.
pub fn judge(name: &str, criteria: &Criteria, obs: &Observation) -> MetricResult {
    let mut result = MetricResult {
        name: name.to_owned(),
        value: obs.canary.as_ref().ok().and_then(|s| s.value()),
        min: criteria.min,
        max: criteria.max,
        primary_value: obs
            .primary
            .as_ref()
            .and_then(|p| p.as_ref().ok())
            .and_then(|s| s.value()),
        outcome: Outcome::Unspecified as i32,
        reason: String::new(),
        judge_undecided: false,
    };
    let (outcome, reason) = decide(criteria, obs);
    result.outcome = outcome as i32;
    result.reason = reason;
    result
}

fn decide(c: &Criteria, obs: &Observation) -> (Outcome, String) {
    if !c.has_bound() {
        return (
            Outcome::Error,
            "no thresholdRange, maxDelta or maxRatio set: nothing passes by default".into(),
        );
    }
    if let Err(e) = &obs.canary {
        return (Outcome::Error, format!("canary query failed: {e}"));
    }
    if let Some(Err(e)) = &obs.primary {
        return (Outcome::Error, format!("primary query failed: {e}"));
    }
    if c.min_requests > 0 {
        match &obs.requests {
            Some(Err(e)) => {
                return (Outcome::Error, format!("request count query failed: {e}"));
            }
            None => {
                return (
                    Outcome::Error,
                    "minRequests set but no request count measured".into(),
                );
            }
            Some(Ok(sample)) => {
                let count = sample.value().unwrap_or(0.0);
                if count < c.min_requests as f64 {
                    return (
                        Outcome::Inconclusive,
                        format!(
                            "{count:.0} canary requests in the window, fewer than minRequests {}",
                            c.min_requests
                        ),
                    );
                }
            }
        }
    }
    let Ok(Sample::Value(value)) = obs.canary else {
        return (
            c.on_no_data.outcome(),
            format!(
                "no data for the canary in the window (onNoData: {})",
                c.on_no_data
            ),
        );
    };
    if let Some(min) = c.min
        && value < min
    {
        return (Outcome::Fail, format!("{value} is below min {min}"));
    }
    if let Some(max) = c.max
        && value > max
    {
        return (Outcome::Fail, format!("{value} is above max {max}"));
    }
    if c.relative() {
        let primary = match &obs.primary {
            Some(Ok(Sample::Value(p))) => *p,
            Some(Ok(Sample::NoData)) => {
                return (
                    c.on_no_data.outcome(),
                    format!(
                        "canary {value}, but no data for the primary in the window (onNoData: {})",
                        c.on_no_data
                    ),
                );
            }
            _ => {
                return (
                    Outcome::Error,
                    "judged against the primary but the primary was not measured".into(),
                );
            }
        };
        // How much worse the canary is: positive when worse, whatever the metric's direction.
        let (worse_by, ratio) = if c.lower_is_worse {
            (primary - value, ratio(primary, value))
        } else {
            (value - primary, ratio(value, primary))
        };
        if let Some(max_delta) = c.max_delta
            && worse_by > max_delta
        {
            return (
                Outcome::Fail,
                format!(
                    "canary {value} vs primary {primary}: worse by {worse_by}, more than maxDelta {max_delta}"
                ),
            );
        }
        if let Some(max_ratio) = c.max_ratio
            && ratio > max_ratio
        {
            return (
                Outcome::Fail,
                format!(
                    "canary {value} vs primary {primary}: {ratio:.4}x worse, more than maxRatio {max_ratio}"
                ),
            );
        }
        return (
            Outcome::Pass,
            format!("canary {value} vs primary {primary}: within bounds"),
        );
    }
    (Outcome::Pass, format!("{value} is within bounds"))
}

/// What a sequential metric's decision does to this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequentialStep {
    /// The judge decided for the run: its result stands. `decisive`: it may end the rollout
    /// now (a fail always; a pass only after [`MIN_PROMOTION_SPAN_MS`] at the current weight).
    Decided {
        /// Whether the verdict may roll back at once or promote early.
        decisive: bool,
    },
    /// No decision yet, and the metric has a `thresholdRange`: the window is judged against it
    /// alone (Flagger's rule), never against `maxDelta` / `maxRatio`, which are the judge's
    /// tolerance.
    Window,
    /// No decision yet and nothing else to judge: inconclusive, so the step holds (towards the
    /// progress deadline) instead of passing on no evidence.
    Hold,
}

/// What `decision` means for the step, for a metric judged with `criteria`, analysed
/// `since_weight_change_ms` after the current weights were confirmed.
pub fn sequential_step(
    decision: Decision,
    criteria: &Criteria,
    since_weight_change_ms: u64,
) -> SequentialStep {
    match decision {
        Decision::Fail => SequentialStep::Decided { decisive: true },
        Decision::Pass => SequentialStep::Decided {
            decisive: since_weight_change_ms >= MIN_PROMOTION_SPAN_MS,
        },
        Decision::Continue if criteria.min.is_some() || criteria.max.is_some() => {
            SequentialStep::Window
        }
        Decision::Continue => SequentialStep::Hold,
    }
}

impl Criteria {
    /// The criteria a sequential metric's window is judged by when the judge has not decided:
    /// `thresholdRange` only.
    pub fn window_only(&self) -> Self {
        Self {
            max_delta: None,
            max_ratio: None,
            ..self.clone()
        }
    }
}

/// Most slices one look queries (four counts each): an hour at one-minute slices. A longer
/// run gets longer slices.
pub const MAX_SLICES: u64 = 60;

/// Shortest slice: two of Prometheus' usual 5-second scrapes in each, so `increase()` has
/// something to extrapolate from.
pub const MIN_SLICE_MS: u64 = 10_000;

/// The time slices of a run from `run_start_ms` to `window_end_ms`, as `(start, end)` in
/// milliseconds: `slice_ms` long (at least [`MIN_SLICE_MS`], longer when the run would need
/// more than [`MAX_SLICES`]), aligned to the run's start so a slice is the same query at every
/// look, the last one ending at the window's end. Empty when the run has not started.
pub fn slice_windows(run_start_ms: i64, window_end_ms: i64, slice_ms: u64) -> Vec<(i64, i64)> {
    let run = window_end_ms.saturating_sub(run_start_ms);
    if run <= 0 {
        return Vec::new();
    }
    let run = run.unsigned_abs();
    let len = slice_ms.max(MIN_SLICE_MS).max(run.div_ceil(MAX_SLICES));
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    let mut start = run_start_ms;
    while start < window_end_ms {
        let end = start.saturating_add(len).min(window_end_ms);
        out.push((start, end));
        start = end;
    }
    out
}

/// Slices from counts since the run started at each slice's end, `[canary requests, canary
/// errors, primary requests, primary errors]`, oldest first: each slice is the difference from
/// the one before. `increase()` extrapolates, so a count can dip below the one before it; a
/// dip is no traffic in that slice, not a negative one, and the next slice counts from the
/// highest count seen.
pub fn slices_from_cumulative(cumulative: &[[u64; 4]]) -> Vec<Slice> {
    let mut seen = [0u64; 4];
    cumulative
        .iter()
        .map(|c| {
            let mut d = [0u64; 4];
            for i in 0..4 {
                d[i] = c[i].saturating_sub(seen[i]);
                seen[i] = seen[i].max(c[i]);
            }
            Slice::new(
                aviary_core::judge::Counts::new(d[0], d[1]),
                aviary_core::judge::Counts::new(d[2], d[3]),
            )
        })
        .collect()
}

/// Judges a `judge: sequential` error-rate metric on each side's counts per time slice of
/// the run (see [`aviary_core::judge::slices`]). `tolerance` is a proportion (0.005 = half a
/// point of success rate); `alpha` is this metric's share of the rollout's budget.
///
/// Returns the result and the judge's decision: `Fail` and `Pass` are for the whole run;
/// `Continue` is inconclusive (see [`sequential_step`] for what the caller does with it).
pub fn sequential_rates(
    name: &str,
    slices: &[Slice],
    tolerance: f64,
    alpha: f64,
) -> (MetricResult, Decision) {
    let j = compare_slices(slices, tolerance, alpha);
    let total = |side: fn(&Slice) -> aviary_core::judge::Counts| {
        slices.iter().map(side).fold((0u64, 0u64), |(n, e), c| {
            (n + c.trials, e + c.events.min(c.trials))
        })
    };
    let (cn, ce) = total(|s| s.canary);
    let (pn, pe) = total(|s| s.primary);
    let percent = |n: u64, e: u64| (n > 0).then(|| 100.0 * (1.0 - e as f64 / n as f64));
    let (lo, hi) = (100.0 * j.interval.lower, 100.0 * j.interval.upper);
    let tol = 100.0 * tolerance;
    let (outcome, verdict) = match j.decision {
        Decision::Fail => (Outcome::Fail, "canary worse by more than the tolerance"),
        Decision::Pass => (Outcome::Pass, "canary not worse than the tolerance"),
        Decision::Continue => (Outcome::Inconclusive, "no decision yet"),
    };
    let reason = format!(
        "sequential: {verdict}: canary error rate minus primary's {:.3} points, in \
         [{lo:.3}, {hi:.3}] (tolerance {tol} points, α {alpha}) within {} slices \
         (overdispersion {:.2}); {ce} of {cn} canary and {pe} of {pn} primary requests failed \
         since the run started",
        100.0 * j.difference,
        j.slices,
        j.dispersion,
    );
    let result = MetricResult {
        name: name.to_owned(),
        value: percent(cn, ce),
        min: None,
        max: None,
        primary_value: percent(pn, pe),
        outcome: outcome as i32,
        reason,
        judge_undecided: j.decision == Decision::Continue,
    };
    (result, j.decision)
}

/// A cumulative histogram from a `sum by (le) (increase(…_bucket[…]))` answer: `(le, count)`
/// per bucket, in any order. Counts are rounded (`increase()` extrapolates) and made
/// non-decreasing; the `+Inf` bucket is the total (without one, the largest count).
///
/// # Errors
/// When a bound is not a number.
pub fn histogram_from_buckets(buckets: &[(String, f64)]) -> Result<Histogram, String> {
    let mut parsed = Vec::with_capacity(buckets.len());
    for (le, count) in buckets {
        let bound = le
            .parse::<f64>()
            .map_err(|_| format!("bucket bound le=`{le}` is not a number"))?;
        if bound.is_nan() {
            return Err(format!("bucket bound le=`{le}` is not a number"));
        }
        parsed.push((bound, count.max(0.0).round() as u64));
    }
    parsed.sort_by(|a, b| a.0.total_cmp(&b.0));
    parsed.dedup_by(|a, b| a.0 == b.0);
    let mut h = Histogram::default();
    let mut running = 0u64;
    for (bound, count) in parsed {
        running = running.max(count);
        if bound.is_finite() {
            h.bounds.push(bound);
            h.cumulative.push(running);
        }
    }
    h.total = running;
    Ok(h)
}

/// Judges a `judge: sequential` latency metric on the cumulative histograms since the run
/// started (see [`aviary_core::judge::latency`]): is the canary's `quantile` within
/// `max_ratio` × the primary's? `alpha` is this metric's share of the rollout's budget.
///
/// A side with no data at all is judged as no requests on the other side's bounds.
///
/// Returns the result (value and primary value: each side's interpolated quantile, in the
/// histogram's unit) and the judge's decision, as [`sequential_rates`].
///
/// # Errors
/// When the two histograms have different bucket bounds.
pub fn sequential_quantiles(
    name: &str,
    canary: Histogram,
    primary: Histogram,
    quantile: f64,
    max_ratio: f64,
    alpha: f64,
) -> Result<(MetricResult, Decision), String> {
    let empty_like = |other: &Histogram| Histogram {
        bounds: other.bounds.clone(),
        cumulative: vec![0; other.bounds.len()],
        total: 0,
    };
    let (canary, primary) = match (canary.bounds.is_empty(), primary.bounds.is_empty()) {
        (true, false) => (empty_like(&primary), primary),
        (false, true) => {
            let p = empty_like(&canary);
            (canary, p)
        }
        _ => (canary, primary),
    };
    let j = compare_quantiles(&canary, &primary, quantile, max_ratio, alpha)
        .map_err(|e| format!("sequential latency: {e}"))?;
    let q = 100.0 * quantile;
    let (outcome, verdict) = match j.decision {
        Decision::Fail => (
            Outcome::Fail,
            format!("canary's p{q} above {max_ratio} × the primary's"),
        ),
        Decision::Pass => (
            Outcome::Pass,
            format!("canary's p{q} within {max_ratio} × the primary's"),
        ),
        Decision::Continue => (Outcome::Inconclusive, "no decision yet".to_owned()),
    };
    let shown = |side: Option<(aviary_core::judge::Interval, f64)>| match side {
        Some((i, estimate)) => format!("{estimate:.1} in [{:.1}, {:.1}]", i.lower, i.upper),
        None => "no requests".to_owned(),
    };
    let finite = |side: Option<(aviary_core::judge::Interval, f64)>| {
        side.map(|(_, e)| e).filter(|e| e.is_finite())
    };
    let reason = format!(
        "sequential: {verdict}: p{q} canary {}, primary {} (interpolated within buckets, α \
         {alpha}); {} canary and {} primary requests since the run started",
        shown(j.canary),
        shown(j.primary),
        canary.total,
        primary.total
    );
    let result = MetricResult {
        name: name.to_owned(),
        value: finite(j.canary),
        min: None,
        max: None,
        primary_value: finite(j.primary),
        outcome: outcome as i32,
        reason,
        judge_undecided: j.decision == Decision::Continue,
    };
    Ok((result, j.decision))
}

/// `worse / better`, where 0/0 is 1 (equal) and x/0 is infinitely worse.
fn ratio(worse: f64, better: f64) -> f64 {
    if better == 0.0 {
        if worse == 0.0 { 1.0 } else { f64::INFINITY }
    } else {
        worse / better
    }
}

/// Folds outcomes: any fail → fail; else any error → error; else any inconclusive →
/// inconclusive; else pass. An unspecified outcome counts as an error. No outcomes → pass.
pub fn fold(outcomes: impl IntoIterator<Item = Outcome>) -> Outcome {
    let (mut fail, mut error, mut inconclusive) = (false, false, false);
    for o in outcomes {
        match o {
            Outcome::Fail => fail = true,
            Outcome::Error | Outcome::Unspecified => error = true,
            Outcome::Inconclusive => inconclusive = true,
            Outcome::Pass => {}
        }
    }
    if fail {
        Outcome::Fail
    } else if error {
        Outcome::Error
    } else if inconclusive {
        Outcome::Inconclusive
    } else {
        Outcome::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(min: Option<f64>, max: Option<f64>) -> Criteria {
        Criteria {
            min,
            max,
            ..Criteria::default()
        }
    }

    fn canary(v: Measured) -> Observation {
        Observation {
            canary: v,
            primary: None,
            requests: None,
        }
    }

    fn outcome(c: &Criteria, o: &Observation) -> Outcome {
        judge("m", c, o).outcome()
    }

    #[test]
    fn threshold_range() {
        let c = range(Some(99.0), None);
        assert_eq!(outcome(&c, &canary(Ok(Sample::Value(99.5)))), Outcome::Pass);
        assert_eq!(outcome(&c, &canary(Ok(Sample::Value(99.0)))), Outcome::Pass);
        let r = judge("sr", &c, &canary(Ok(Sample::Value(90.0))));
        assert_eq!(r.outcome(), Outcome::Fail);
        assert_eq!(r.value, Some(90.0));
        assert_eq!(r.min, Some(99.0));
        assert!(r.reason.contains("below min 99"), "{}", r.reason);
        let c = range(None, Some(500.0));
        assert_eq!(
            outcome(&c, &canary(Ok(Sample::Value(501.0)))),
            Outcome::Fail
        );
        assert_eq!(outcome(&c, &canary(Ok(Sample::Value(10.0)))), Outcome::Pass);
    }

    #[test]
    fn nothing_passes_by_default() {
        let r = judge("m", &Criteria::default(), &canary(Ok(Sample::Value(1.0))));
        assert_eq!(r.outcome(), Outcome::Error);
    }

    #[test]
    fn no_data_follows_the_policy() {
        let mut c = range(Some(99.0), None);
        assert_eq!(
            Sample::from_f64(f64::NAN),
            Sample::NoData,
            "NaN (0/0) is no data"
        );
        assert_eq!(
            outcome(&c, &canary(Ok(Sample::NoData))),
            Outcome::Inconclusive
        );
        c.on_no_data = NoDataPolicy::Fail;
        assert_eq!(outcome(&c, &canary(Ok(Sample::NoData))), Outcome::Fail);
        c.on_no_data = NoDataPolicy::Pass;
        assert_eq!(outcome(&c, &canary(Ok(Sample::NoData))), Outcome::Pass);
        assert_eq!("FAIL".parse::<NoDataPolicy>(), Ok(NoDataPolicy::Fail));
        assert!("maybe".parse::<NoDataPolicy>().is_err());
    }

    #[test]
    fn provider_errors_are_errors() {
        let c = range(Some(99.0), None);
        let r = judge("m", &c, &canary(Err("timed out after 1s".into())));
        assert_eq!(r.outcome(), Outcome::Error);
        assert!(r.reason.contains("timed out"), "{}", r.reason);
    }

    #[test]
    fn too_few_requests_is_inconclusive() {
        let c = Criteria {
            min: Some(99.0),
            min_requests: 100,
            ..Criteria::default()
        };
        let mut o = canary(Ok(Sample::Value(50.0)));
        o.requests = Some(Ok(Sample::Value(42.0)));
        let r = judge("m", &c, &o);
        assert_eq!(r.outcome(), Outcome::Inconclusive, "{}", r.reason);
        assert_eq!(r.value, Some(50.0), "the value is still reported");
        o.requests = Some(Ok(Sample::NoData));
        assert_eq!(outcome(&c, &o), Outcome::Inconclusive);
        o.requests = Some(Ok(Sample::Value(100.0)));
        assert_eq!(outcome(&c, &o), Outcome::Fail);
        o.requests = Some(Err("boom".into()));
        assert_eq!(outcome(&c, &o), Outcome::Error);
    }

    #[test]
    fn relative_to_primary() {
        // Latency: higher is worse.
        let c = Criteria {
            max_ratio: Some(1.2),
            ..Criteria::default()
        };
        let obs = |canary: f64, primary: Sample| Observation {
            canary: Ok(Sample::Value(canary)),
            primary: Some(Ok(primary)),
            requests: None,
        };
        assert_eq!(
            outcome(&c, &obs(110.0, Sample::Value(100.0))),
            Outcome::Pass
        );
        let r = judge("d", &c, &obs(130.0, Sample::Value(100.0)));
        assert_eq!(r.outcome(), Outcome::Fail);
        assert_eq!(r.primary_value, Some(100.0));
        assert_eq!(outcome(&c, &obs(5.0, Sample::Value(0.0))), Outcome::Fail);
        assert_eq!(outcome(&c, &obs(0.0, Sample::Value(0.0))), Outcome::Pass);
        assert_eq!(
            outcome(&c, &obs(100.0, Sample::NoData)),
            Outcome::Inconclusive
        );
        // Success rate: lower is worse; a better canary passes.
        let c = Criteria {
            max_delta: Some(1.0),
            lower_is_worse: true,
            ..Criteria::default()
        };
        assert_eq!(outcome(&c, &obs(99.5, Sample::Value(100.0))), Outcome::Pass);
        assert_eq!(outcome(&c, &obs(98.0, Sample::Value(100.0))), Outcome::Fail);
        assert_eq!(outcome(&c, &obs(100.0, Sample::Value(90.0))), Outcome::Pass);
        // A primary that could not be measured is an error.
        let o = Observation {
            canary: Ok(Sample::Value(1.0)),
            primary: Some(Err("down".into())),
            requests: None,
        };
        assert_eq!(outcome(&c, &o), Outcome::Error);
    }

    #[test]
    fn slices_are_aligned_to_the_run_start() {
        assert_eq!(
            slice_windows(0, 150_000, 60_000),
            vec![(0, 60_000), (60_000, 120_000), (120_000, 150_000)]
        );
        assert_eq!(slice_windows(0, 25_000, 1_000).len(), 3, "10 s at least");
        let long = slice_windows(0, 3 * 3_600_000, 60_000);
        assert_eq!(long.len() as u64, MAX_SLICES);
        assert_eq!(long.last().map(|w| w.1), Some(3 * 3_600_000));
        assert!(slice_windows(5, 5, 60_000).is_empty());
    }

    #[test]
    fn slices_are_differences_of_counts_since_the_start() {
        use aviary_core::judge::Counts;
        let s = slices_from_cumulative(&[[100, 1, 900, 5], [250, 2, 1_800, 9], [240, 2, 2_700, 9]]);
        assert_eq!(
            s,
            vec![
                Slice::new(Counts::new(100, 1), Counts::new(900, 5)),
                Slice::new(Counts::new(150, 1), Counts::new(900, 4)),
                // An extrapolated dip is no traffic, and the next slice counts from 250.
                Slice::new(Counts::new(0, 0), Counts::new(900, 0)),
            ]
        );
    }

    fn slices(n: usize, canary: (u64, u64), primary: (u64, u64)) -> Vec<Slice> {
        use aviary_core::judge::Counts;
        vec![
            Slice::new(
                Counts::new(canary.0, canary.1),
                Counts::new(primary.0, primary.1)
            );
            n
        ]
    }

    #[test]
    fn sequential_rates_decide_for_the_run() {
        let (r, d) = sequential_rates(
            "request-success-rate",
            &slices(10, (2_000, 110), (20_000, 100)),
            0.005,
            0.01,
        );
        assert_eq!(
            (r.outcome(), d),
            (Outcome::Fail, Decision::Fail),
            "{}",
            r.reason
        );
        assert!((r.value.unwrap() - 94.5).abs() < 1e-9);
        assert!((r.primary_value.unwrap() - 99.5).abs() < 1e-9);
        let (_, d) = sequential_rates("m", &slices(10, (10_000, 50), (40_000, 200)), 0.005, 0.01);
        assert_eq!(d, Decision::Pass);
    }

    /// Issue 15, case 5: no decision is not a pass. Today's judge answered `continue` with a
    /// pass, so at low traffic the walk went on to promotion on no evidence.
    #[test]
    fn no_decision_is_inconclusive() {
        let (r, d) = sequential_rates("m", &slices(6, (3, 0), (30, 0)), 0.005, 0.01);
        assert_eq!(
            (r.outcome(), d),
            (Outcome::Inconclusive, Decision::Continue)
        );
        assert!(r.reason.contains("no decision yet"), "{}", r.reason);
        let bare = Criteria::default();
        assert_eq!(
            sequential_step(Decision::Continue, &bare, 600_000),
            SequentialStep::Hold
        );
        // An early promotion needs a minute of evidence at the current weight.
        assert_eq!(
            sequential_step(Decision::Pass, &bare, MIN_PROMOTION_SPAN_MS - 1),
            SequentialStep::Decided { decisive: false }
        );
        assert_eq!(
            sequential_step(Decision::Pass, &bare, MIN_PROMOTION_SPAN_MS),
            SequentialStep::Decided { decisive: true }
        );
        assert_eq!(
            sequential_step(Decision::Fail, &bare, 0),
            SequentialStep::Decided { decisive: true }
        );
    }

    /// Issue 15, case 3: `maxDelta` is the judge's tolerance and nothing else. Today's judge let
    /// a `continue` fall through to a per-window check of `maxDelta` (canary 98.5 % against a
    /// primary at 99.5 %, one noisy window) and failed the step.
    #[test]
    fn max_delta_is_only_the_tolerance() {
        let c = Criteria {
            max_delta: Some(0.5),
            lower_is_worse: true,
            ..Criteria::default()
        };
        assert_eq!(
            sequential_step(Decision::Continue, &c, 60_000),
            SequentialStep::Hold,
            "maxDelta switches no window check on"
        );
        let noisy = Observation {
            canary: Ok(Sample::Value(98.5)),
            primary: Some(Ok(Sample::Value(99.5))),
            requests: None,
        };
        assert_eq!(
            outcome(&c, &noisy),
            Outcome::Fail,
            "the threshold judge's maxDelta"
        );
        let with_range = Criteria {
            min: Some(98.0),
            ..c.clone()
        };
        assert_eq!(
            sequential_step(Decision::Continue, &with_range, 60_000),
            SequentialStep::Window
        );
        assert_eq!(outcome(&with_range.window_only(), &noisy), Outcome::Pass);
    }

    fn buckets(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(le, n)| ((*le).to_owned(), *n)).collect()
    }

    #[test]
    fn histograms_from_prometheus_buckets() {
        let h = histogram_from_buckets(&buckets(&[
            ("+Inf", 100.4),
            ("50", 97.6),
            ("10", 50.2),
            // increase() extrapolation can make a bucket dip below the one before it.
            ("25", 49.9),
        ]))
        .unwrap();
        assert_eq!(h.bounds, vec![10.0, 25.0, 50.0]);
        assert_eq!(h.cumulative, vec![50, 50, 98]);
        assert_eq!(h.total, 100);
        assert_eq!(histogram_from_buckets(&[]).unwrap(), Histogram::default());
        assert!(histogram_from_buckets(&buckets(&[("fast", 1.0)])).is_err());
    }

    #[test]
    fn sequential_quantiles_fail_pass_and_continue() {
        let h = |pairs: &[(&str, f64)]| histogram_from_buckets(&buckets(pairs)).unwrap();
        let primary = h(&[
            ("50", 98_000.0),
            ("100", 99_500.0),
            ("250", 100_000.0),
            ("+Inf", 100_000.0),
        ]);
        let slow = h(&[
            ("50", 5_000.0),
            ("100", 8_000.0),
            ("250", 9_000.0),
            ("+Inf", 10_000.0),
        ]);
        let (r, d) = sequential_quantiles("d", slow, primary.clone(), 0.99, 1.5, 0.01).unwrap();
        assert_eq!(
            (r.outcome(), d),
            (Outcome::Fail, Decision::Fail),
            "{}",
            r.reason
        );
        assert_eq!(r.value, None, "the canary's p99 is in the +Inf bucket");
        let same = primary.clone();
        let (r, d) = sequential_quantiles("d", same, primary.clone(), 0.99, 1.5, 0.01).unwrap();
        assert_eq!(
            (r.outcome(), d),
            (Outcome::Pass, Decision::Pass),
            "{}",
            r.reason
        );
        // p99 interpolated in (50, 100]: 50 + 50 × (0.99 − 0.98) / (0.995 − 0.98).
        let p99 = 50.0 + 50.0 * 0.01 / 0.015;
        assert!((r.value.unwrap() - p99).abs() < 1e-9, "{r:?}");
        // No canary data yet: nothing to decide.
        let (r, d) =
            sequential_quantiles("d", Histogram::default(), primary.clone(), 0.99, 1.5, 0.01)
                .unwrap();
        assert_eq!(
            (r.outcome(), d),
            (Outcome::Inconclusive, Decision::Continue),
            "{}",
            r.reason
        );
        let other = h(&[("60", 1.0), ("+Inf", 1.0)]);
        assert!(sequential_quantiles("d", other, primary, 0.99, 1.5, 0.01).is_err());
    }

    #[test]
    fn folding() {
        use Outcome::*;
        assert_eq!(fold([Pass, Inconclusive, Error, Fail]), Fail);
        assert_eq!(fold([Pass, Inconclusive, Error]), Error);
        assert_eq!(fold([Pass, Inconclusive]), Inconclusive);
        assert_eq!(fold([Pass, Pass]), Pass);
        assert_eq!(fold([Pass, Unspecified]), Error);
        assert_eq!(fold([]), Pass);
    }
}
