//! Error rates: an anytime-valid confidence sequence for each side's rate, and the two-sided
//! comparison of canary against primary built from them.
//!
//! Each side's requests are Bernoulli trials (error or not). For a hypothesised rate `p`,
//! Robbins' beta-binomial mixture
//!
//! ```text
//! M_n(p) = B(a + s, b + f) / B(a, b) / (p^s (1 − p)^f)        s errors, f successes
//! ```
//!
//! is a nonnegative martingale with mean 1 when the true rate is `p`, so by Ville's inequality
//! `P(∃n: M_n(p) ≥ 1/α) ≤ α`. The set `{p : M_n(p) < 1/α}` is therefore a confidence
//! *sequence*: it holds the true rate at every request count at once, however often it is
//! looked at and however the traffic volume changes between looks (volume only changes which
//! `n` a look lands on). Each side's sequence is indexed by its own request count, so the
//! canary's weight may change from step to step.

use super::special::ln_beta;

/// Parameters of the Beta mixing prior. `Beta(½, ½)` (Jeffreys) puts more weight near 0 than a
/// uniform prior, which is where error rates live; the bench measured it detecting sooner than
/// `Beta(1, 1)` for rates of 0.5–5 %, at the same α (any prior keeps the guarantee).
pub const PRIOR_A: f64 = 0.5;
/// See [`PRIOR_A`].
pub const PRIOR_B: f64 = 0.5;

/// Bisection steps for a bound: 2^-60 of the unit interval, far below any count's resolution.
const BISECTION_STEPS: usize = 60;

/// Cumulative counts for one side since the run started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests (trials).
    pub trials: u64,
    /// Errors among them (events); never more than `trials`.
    pub events: u64,
}

impl Counts {
    /// Counts from two numbers; `events` is capped at `trials` (Prometheus `increase()`
    /// extrapolates, so the two can disagree by a little).
    pub fn new(trials: u64, events: u64) -> Self {
        Self {
            trials,
            events: events.min(trials),
        }
    }

    /// The observed rate, 0 without trials.
    pub fn rate(self) -> f64 {
        if self.trials == 0 {
            0.0
        } else {
            self.events as f64 / self.trials as f64
        }
    }
}

/// A closed interval `[lower, upper]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// Lower end.
    pub lower: f64,
    /// Upper end.
    pub upper: f64,
}

/// `ln M_n(p)` for the beta-binomial mixture (see the module docs).
pub fn log_mixture(c: Counts, p: f64) -> f64 {
    let (s, f) = (c.events as f64, (c.trials - c.events) as f64);
    log_mixture_with(
        ln_beta(PRIOR_A + s, PRIOR_B + f) - ln_beta(PRIOR_A, PRIOR_B),
        s,
        f,
        p,
    )
}

fn log_mixture_with(ln_marginal: f64, s: f64, f: f64, p: f64) -> f64 {
    let mut l = ln_marginal;
    if s > 0.0 {
        l -= s * p.ln();
    }
    if f > 0.0 {
        l -= f * (1.0 - p).ln();
    }
    l
}

/// The confidence sequence for one side's rate at level `1 − alpha`: every `p` whose mixture
/// has not reached `1/alpha`. Without trials it is `[0, 1]`.
pub fn rate_interval(c: Counts, alpha: f64) -> Interval {
    let c = Counts::new(c.trials, c.events);
    if c.trials == 0 {
        return Interval {
            lower: 0.0,
            upper: 1.0,
        };
    }
    let (s, f) = (c.events as f64, (c.trials - c.events) as f64);
    let marginal = ln_beta(PRIOR_A + s, PRIOR_B + f) - ln_beta(PRIOR_A, PRIOR_B);
    let limit = (1.0 / alpha).ln();
    let inside = |p: f64| log_mixture_with(marginal, s, f, p) < limit;
    // ln M is convex in p with its minimum at the observed rate, so the set is an interval
    // around it; each end is found by bisection between a point inside and one outside.
    let centre = c.rate();
    let lower = if c.events == 0 {
        0.0
    } else {
        bisect(0.0, centre, inside)
    };
    let upper = if c.events == c.trials {
        1.0
    } else {
        bisect(1.0, centre, inside)
    };
    Interval { lower, upper }
}

/// The boundary between `outside` (not in the set) and `inside` (in it).
fn bisect(mut outside: f64, mut inside: f64, is_inside: impl Fn(f64) -> bool + Copy) -> f64 {
    for _ in 0..BISECTION_STEPS {
        let mid = 0.5 * (outside + inside);
        if is_inside(mid) {
            inside = mid;
        } else {
            outside = mid;
        }
    }
    // Report the outer end, so rounding never narrows the interval.
    outside
}

/// What the judge concludes for the run so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The canary is worse than the primary by more than the tolerance: roll back.
    Fail,
    /// The canary is not worse than the primary by the tolerance or more: safe to promote.
    Pass,
    /// Not enough evidence either way yet.
    Continue,
}

/// The comparison of canary and primary error rates at one look.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateJudgement {
    /// The conclusion.
    pub decision: Decision,
    /// Confidence sequence for `canary rate − primary rate`.
    pub difference: Interval,
    /// The canary's rate sequence.
    pub canary: Interval,
    /// The primary's rate sequence.
    pub primary: Interval,
}

/// Compares error rates: `fail` when the canary's rate exceeds the primary's by more than
/// `tolerance` (a proportion, e.g. 0.005 for half a point) with confidence, `pass` when it
/// exceeds it by less than `tolerance` with confidence, else `continue`.
///
/// `alpha` is this comparison's whole budget: half goes to each side's sequence, so with
/// probability at least `1 − alpha` both hold at every look of the run, and then neither a
/// wrong `fail` (true difference ≤ tolerance) nor a wrong `pass` (true difference ≥ tolerance)
/// can happen.
pub fn compare_rates(canary: Counts, primary: Counts, tolerance: f64, alpha: f64) -> RateJudgement {
    let c = rate_interval(canary, alpha / 2.0);
    let p = rate_interval(primary, alpha / 2.0);
    let difference = Interval {
        lower: c.lower - p.upper,
        upper: c.upper - p.lower,
    };
    let decision = if difference.lower > tolerance {
        Decision::Fail
    } else if difference.upper < tolerance {
        Decision::Pass
    } else {
        Decision::Continue
    };
    RateJudgement {
        decision,
        difference,
        canary: c,
        primary: p,
    }
}
