//! Error rates: a joint anytime-valid test of canary against primary on both sides' cumulative
//! counts, and each side's confidence sequence for reporting.
//!
//! Each side's requests are Bernoulli trials (error or not), each side indexed by its own
//! request count. For a hypothesised rate `p`, Robbins' beta-binomial mixture
//!
//! ```text
//! M_n(p) = B(a + s, b + f) / B(a, b) / (p^s (1 − p)^f)        s errors, f successes
//! ```
//!
//! is a nonnegative martingale with mean 1 when the true rate is `p`, so by Ville's inequality
//! `P(∃n: M_n(p) ≥ 1/α) ≤ α`; `{p : M_n(p) < 1/α}` is a confidence sequence ([`rate_interval`]).
//!
//! The decision ([`compare_rates`]) tests `H: high ≤ low + offset` for two sides — `fail`:
//! canary ≤ primary + tolerance; `pass`: primary ≤ canary − tolerance — with the e-process
//!
//! ```text
//! E = inf over x of [ m_high / sup_{p ≤ x + offset} L_high(p) ]
//!                 × [ Σ_j w_j L_low(x u_j) / L_low(x) ]
//! ```
//!
//! For the true rates `(h, l)` in `H`, the value at `x = l` is at most the product of the high
//! side's mixture against `h` and a fixed mixture of likelihood ratios against `l` — a test
//! martingale in request order, whatever the interleaving of the sides — so Ville bounds
//! `P(∃n: E ≥ 1/α)` by α. The low side's alternatives `x u_j` lie *below* the nuisance `x`: they
//! only need to refute a null that pushes the low side's rate up, and on the relative scale
//! they cost about `ln 20` nats instead of a two-sided mixture's `½ ln n`, which grows with the
//! primary's traffic. Volume and canary weight only change where the looks land.

use super::special::ln_beta;

/// Parameters of the Beta mixing prior. `Beta(½, ½)` (Jeffreys) puts more weight near 0 than a
/// uniform prior, which is where error rates live; the bench measured it detecting sooner than
/// `Beta(1, 1)` for rates of 0.5–5 %, at the same α (any prior keeps the guarantee).
pub const PRIOR_A: f64 = 0.5;
/// See [`PRIOR_A`].
pub const PRIOR_B: f64 = 0.5;

/// Bisection steps for a bound: 2^-60 of the unit interval, far below any count's resolution.
const BISECTION_STEPS: usize = 60;

/// Relative alternatives for the low side: `u_j = 1 − 2^(−j/2)`, `j = 1..=20`, equal weights.
/// A rate estimated from `s` events is resolved to about `1/√s` relative, so the half-octave
/// grid covers every count from one event to about a million with a point within a factor
/// `√2` of the resolution; equal weights prefer no scale.
const RELATIVE_SCALES: usize = 20;

/// Newton steps for the minimum over the nuisance: it converges in a handful; the rest is
/// room for bisection when a step leaves the bracket.
const NEWTON_STEPS: usize = 100;

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

    fn events_and_successes(self) -> (f64, f64) {
        let c = Self::new(self.trials, self.events);
        (c.events as f64, (c.trials - c.events) as f64)
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

/// `ln` of the beta-binomial marginal `B(a + s, b + f) / B(a, b)`.
fn ln_marginal(s: f64, f: f64) -> f64 {
    ln_beta(PRIOR_A + s, PRIOR_B + f) - ln_beta(PRIOR_A, PRIOR_B)
}

/// `ln p^s (1 − p)^f`, with `0 ln 0 = 0`.
fn ln_likelihood(s: f64, f: f64, p: f64) -> f64 {
    let mut l = 0.0;
    if s > 0.0 {
        l += s * p.ln();
    }
    if f > 0.0 {
        l += f * (-p).ln_1p();
    }
    l
}

/// `ln M_n(p)` for the beta-binomial mixture (see the module docs).
pub fn log_mixture(c: Counts, p: f64) -> f64 {
    let (s, f) = c.events_and_successes();
    ln_marginal(s, f) - ln_likelihood(s, f, p)
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
    let (s, f) = c.events_and_successes();
    let marginal = ln_marginal(s, f);
    let limit = (1.0 / alpha).ln();
    let inside = |p: f64| marginal - ln_likelihood(s, f, p) < limit;
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

/// The e-process of the joint test as a function of the nuisance `x` (the low side's rate
/// under the null): `f(x) = C(x) + G(x)`, both convex in `x`, so `f` is convex and its minimum
/// is found by Newton's method and certified from the tangents on either side.
///
/// - `C(x) = ln m_high − sup_{p ≤ x + offset} ln L_high(p)`: `− ln L` is convex, and flat from
///   the high side's observed rate on, where its slope is 0.
/// - `G(x) = ln Σ_j w_j L_low(x u_j) / L_low(x)`: each term's log,
///   `s ln u + f (ln(1 − x u) − ln(1 − x))`, is convex for `u ≤ 1`, and a log-sum-exp of convex
///   functions is convex.
struct Joint {
    high: (f64, f64),
    high_rate: f64,
    high_marginal: f64,
    low: (f64, f64),
    offset: f64,
}

impl Joint {
    fn new(high: Counts, low: Counts, offset: f64) -> Self {
        let (s, f) = high.events_and_successes();
        Self {
            high: (s, f),
            high_rate: Counts::new(high.trials, high.events).rate(),
            high_marginal: ln_marginal(s, f),
            low: low.events_and_successes(),
            offset,
        }
    }

    /// `[f(x), f'(x), f''(x)]`.
    fn at(&self, x: f64) -> [f64; 3] {
        let [c, c1, c2] = self.high_factor(x + self.offset);
        let [g, g1, g2] = self.low_factor(x);
        [c + g, c1 + g1, c2 + g2]
    }

    fn high_factor(&self, bound: f64) -> [f64; 3] {
        let (s, f) = self.high;
        let b = bound.clamp(0.0, 1.0);
        if b >= self.high_rate {
            let top = ln_likelihood(s, f, self.high_rate);
            return [self.high_marginal - top, 0.0, 0.0];
        }
        // Here s > 0 (the observed rate is above b ≥ 0) and b < 1.
        [
            self.high_marginal - ln_likelihood(s, f, b),
            -s / b + f / (1.0 - b),
            s / (b * b) + f / ((1.0 - b) * (1.0 - b)),
        ]
    }

    fn low_factor(&self, x: f64) -> [f64; 3] {
        let (s, f) = self.low;
        let mut terms = [[0.0; 3]; RELATIVE_SCALES];
        for (j, t) in terms.iter_mut().enumerate() {
            let u = 1.0 - (-((j + 1) as f64) / 2.0).exp2();
            if s > 0.0 {
                t[0] += s * u.ln();
            }
            if f > 0.0 {
                let (r, ru) = (1.0 / (1.0 - x), u / (1.0 - x * u));
                t[0] += f * ((-x * u).ln_1p() - (-x).ln_1p());
                t[1] = f * (r - ru);
                t[2] = f * (r * r - ru * ru);
            }
        }
        let top = terms.iter().map(|t| t[0]).fold(f64::NEG_INFINITY, f64::max);
        if !top.is_finite() {
            // x = 1 with successes seen: the null is impossible.
            return [top, f64::INFINITY, f64::INFINITY];
        }
        let (mut sum, mut d1, mut d2) = (0.0, 0.0, 0.0);
        for t in &terms {
            let w = (t[0] - top).exp();
            sum += w;
            d1 += w * t[1];
            d2 += w * (t[2] + t[1] * t[1]);
        }
        let (d1, d2) = (d1 / sum, d2 / sum);
        [
            top + (sum / RELATIVE_SCALES as f64).ln(),
            d1,
            (d2 - d1 * d1).max(0.0),
        ]
    }
}

/// The nuisance range: the low side's rate `x` and the high side's bound `x + offset` both in
/// `[0, 1]`.
fn nuisance_range(offset: f64) -> (f64, f64) {
    ((-offset).max(0.0), (1.0 - offset).min(1.0))
}

/// `ln E` for the e-process of `H: rate(high) ≤ rate(low) + offset` (see the module docs) on
/// these counts: its minimum over the nuisance, certified from below (by the tangents of the
/// convex objective either side of the minimum), so rounding never inflates it. By Ville's
/// inequality, when `H` holds, `P(∃n: ln E ≥ ln(1/α)) ≤ α` however often it is computed.
/// `−∞` when `H` cannot be refuted (`|offset| ≥ 1`) or the minimum cannot be certified.
pub fn log_e_process(high: Counts, low: Counts, offset: f64) -> f64 {
    let (x_lo, x_hi) = nuisance_range(offset);
    if x_lo >= x_hi {
        return f64::NEG_INFINITY;
    }
    let joint = Joint::new(high, low, offset);
    let [v_lo, d_lo, _] = joint.at(x_lo);
    if d_lo >= 0.0 {
        return v_lo;
    }
    let [v_hi, d_hi, _] = joint.at(x_hi);
    if d_hi <= 0.0 {
        return v_hi;
    }
    // Newton inside the bracket [a, b] with f'(a) < 0 < f'(b); bisect when a step leaves it.
    let (mut a, mut b) = (x_lo, x_hi);
    let mut x = Counts::new(low.trials, low.events).rate();
    if x <= a || x >= b {
        x = 0.5 * (a + b);
    }
    for _ in 0..NEWTON_STEPS {
        let [_, d1, d2] = joint.at(x);
        if d1 < 0.0 {
            a = x;
        } else if d1 > 0.0 {
            b = x;
        } else {
            break;
        }
        let step = d1 / d2;
        if step.abs() <= 1e-14 * x {
            break;
        }
        let next = x - step;
        x = if next > a && next < b {
            next
        } else {
            0.5 * (a + b)
        };
        if b - a <= 1e-15 * b {
            break;
        }
    }
    // Certify: points either side of x with slopes of opposite signs bound the minimum from
    // below by where their tangents cross.
    let mut h = 1e-12 * x.max(1e-12);
    for _ in 0..60 {
        let (l, r) = ((x - h).max(x_lo), (x + h).min(x_hi));
        let ([vl, dl, _], [vr, dr, _]) = (joint.at(l), joint.at(r));
        if dl <= 0.0 && dr >= 0.0 {
            return tangent_floor((l, vl, dl), (r, vr, dr));
        }
        h *= 4.0;
    }
    f64::NEG_INFINITY
}

/// The least value a convex function can take between `l` and `r`, given its value and slope
/// at each (slope ≤ 0 at `l`, ≥ 0 at `r`): where the two tangents cross. Outside `[l, r]` it
/// is above the value at the nearer end.
fn tangent_floor((l, vl, dl): (f64, f64, f64), (r, vr, dr): (f64, f64, f64)) -> f64 {
    if ![vl, dl, vr, dr].iter().all(|v| v.is_finite()) {
        return f64::NEG_INFINITY;
    }
    if dr - dl > 0.0 {
        let cross = ((vr - vl + dl * l - dr * r) / (dl - dr)).clamp(l, r);
        (vl + dl * (cross - l)).min(vl).min(vr)
    } else {
        vl.min(vr)
    }
}

/// Whether the e-process for `H: rate(high) ≤ rate(low) + offset` has reached
/// `exp(log_level)`. First a cheap "no": the e-process is at most its value at the low side's
/// observed rate.
fn rejects(high: Counts, low: Counts, offset: f64, log_level: f64) -> bool {
    let (x_lo, x_hi) = nuisance_range(offset);
    if x_lo >= x_hi {
        return false;
    }
    let x = Counts::new(low.trials, low.events).rate().clamp(x_lo, x_hi);
    if Joint::new(high, low, offset).at(x)[0] < log_level {
        return false;
    }
    log_e_process(high, low, offset) >= log_level
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
    /// The conclusion, from the joint test.
    pub decision: Decision,
    /// Confidence sequence for `canary rate − primary rate` at level `1 − alpha`, from the
    /// per-side sequences. For reporting: it is wider than the joint test, which may decide
    /// while it still straddles the tolerance.
    pub difference: Interval,
    /// The canary's rate sequence at level `1 − alpha/2`.
    pub canary: Interval,
    /// The primary's rate sequence at level `1 − alpha/2`.
    pub primary: Interval,
}

/// Compares error rates: `fail` when the canary's rate exceeds the primary's by more than
/// `tolerance` (a proportion, e.g. 0.005 for half a point) with confidence, `pass` when it
/// exceeds it by less than `tolerance` with confidence, else `continue`.
///
/// `alpha` is this comparison's whole budget: half goes to the joint test
/// ([`log_e_process`]) of `canary ≤ primary + tolerance` (a wrong `fail`) and half to that of
/// `canary ≥ primary + tolerance` (a wrong `pass`), so for every pair of true rates — a difference of exactly `tolerance`
/// included — the probability that either ever happens wrongly is at most `alpha`.
pub fn compare_rates(canary: Counts, primary: Counts, tolerance: f64, alpha: f64) -> RateJudgement {
    let level = (2.0 / alpha).ln();
    let decision = if rejects(canary, primary, tolerance, level) {
        Decision::Fail
    } else if rejects(primary, canary, -tolerance, level) {
        Decision::Pass
    } else {
        Decision::Continue
    };
    let c = rate_interval(canary, alpha / 2.0);
    let p = rate_interval(primary, alpha / 2.0);
    RateJudgement {
        decision,
        difference: Interval {
            lower: c.lower - p.upper,
            upper: c.upper - p.lower,
        },
        canary: c,
        primary: p,
    }
}
