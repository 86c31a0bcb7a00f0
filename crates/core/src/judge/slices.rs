//! Error rates compared within time slices: the judge's unit of evidence is one slice, in
//! which canary and primary saw the same instant of the world.
//!
//! Per slice `t` with `n_c`, `n_p` requests and observed rates `r_c`, `r_p`:
//!
//! ```text
//! d_t = r_c − r_p                     the slice's difference
//! w_t = n_c n_p / (n_c + n_p)         its weight (inverse of d_t's binomial variance, up to the rate)
//! S   = Σ w_t (d_t − δ)               fail test: is the mean difference above the tolerance δ?
//! S'  = Σ w_t (δ − d_t)               pass test: is it below?
//! ```
//!
//! A shared outage raises both rates of its slices alike, so `d_t` does not move, and neither
//! does a load swing or a weight step (they change `w_t`, not `d_t`'s mean). Under the fail
//! null (every slice's canary rate at most its primary's plus δ, given the slices' traffic)
//! each increment of `S` has mean at most 0, whatever the rates do from slice to slice.
//!
//! The boundary is Robbins' normal mixture: `S ≥ sqrt((V + ρ)(2 ln(1/α) + ln((V + ρ)/ρ)))`
//! rejects with probability at most α at every look at once for a martingale with
//! sub-Gaussian increments of accumulated variance `V`. `V` is the binomial variance of `S`
//! under the null (the canary at the primary's rate plus δ) multiplied by the overdispersion
//! `φ ≥ 1` estimated from the slices: the slice-to-slice dispersion of `d_t` around its mean
//! against what binomial noise alone would give. Clustered errors on one side raise `φ`, and
//! the boundary widens with them. Validity is asymptotic in the accumulated variance (the
//! increments are standardised by an estimate, and rare errors are skewed); `ρ` keeps the
//! first few errors from deciding. `docs/judge.md` states what is assumed and what the bench
//! measured.

use super::rate::{Counts, Decision, Interval};

/// The normal mixture's prior precision, in units of the accumulated variance (about the
/// canary's expected error count): small enough that a clear regression decides within a few
/// errors' worth of variance, large enough that one or two errors never do.
pub const MIXTURE_RHO: f64 = 2.0;

/// Pseudo-requests at a side's rate over the run added to the side's own rate in a slice when
/// the slice's binomial variance is estimated: a slice with a handful of requests gets about
/// the run's rate, a slice of an outage gets its own.
const SHRINK_REQUESTS: f64 = 100.0;

/// Slices both sides must have had requests in before the judge decides anything: one slice
/// says nothing about how much the rate moves from slice to slice, and a burst of errors in
/// the first slices would otherwise be judged as binomial noise. Six 10-second slices are a
/// minute, Flagger's usual interval.
pub const MIN_SLICES: usize = 6;

/// One time slice: each side's requests and errors in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slice {
    /// The canary's counts in the slice.
    pub canary: Counts,
    /// The primary's counts in the slice.
    pub primary: Counts,
}

impl Slice {
    /// A slice from its two sides' counts.
    pub fn new(canary: Counts, primary: Counts) -> Self {
        Self { canary, primary }
    }
}

/// The slice judge's conclusion at one look.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SliceJudgement {
    /// Fail, pass or continue.
    pub decision: Decision,
    /// Weighted mean of `canary rate − primary rate` over the slices.
    pub difference: f64,
    /// Its confidence sequence at the judge's α (each direction's half).
    pub interval: Interval,
    /// The overdispersion `φ` used (1 = binomial noise only).
    pub dispersion: f64,
    /// Slices in which both sides had requests (the others carry no comparison).
    pub slices: usize,
}

/// The normal mixture's boundary for accumulated variance `v` at level `alpha`.
pub fn mixture_boundary(v: f64, alpha: f64) -> f64 {
    let vr = v.max(0.0) + MIXTURE_RHO;
    (vr * (2.0 * (1.0 / alpha).ln() + (vr / MIXTURE_RHO).ln())).sqrt()
}

/// Judges the canary against the primary on `slices` (oldest first; slices where a side had
/// no requests are skipped): `Fail` when the canary's error rate exceeds the primary's by more
/// than `tolerance` (a proportion), `Pass` when it exceeds it by less, each with probability of
/// error at most `alpha / 2` at every look; otherwise `Continue`.
///
/// `Fail` is tested on the whole run and again from every [`MIN_SLICES`]-th slice on, so a
/// regression that starts mid-run is not diluted by the healthy slices before it: restart `j`
/// gets `α/2 × 6/(π² (j + 1)²)` (the shares sum to at most α/2), and under the null every
/// restart is a test of its own. `Pass` is tested on the whole run only.
pub fn compare_slices(slices: &[Slice], tolerance: f64, alpha: f64) -> SliceJudgement {
    let used: Vec<(Counts, Counts)> = slices
        .iter()
        .map(|s| {
            (
                Counts::new(s.canary.trials, s.canary.events),
                Counts::new(s.primary.trials, s.primary.events),
            )
        })
        .filter(|(c, p)| c.trials > 0 && p.trials > 0)
        .collect();
    let whole = Suffix::new(&used, tolerance);
    let Some(whole) = whole else {
        return SliceJudgement {
            decision: Decision::Continue,
            difference: 0.0,
            interval: Interval {
                lower: -1.0,
                upper: 1.0,
            },
            dispersion: 1.0,
            slices: 0,
        };
    };
    let half = alpha / 2.0;
    let restart_share =
        |j: usize| half * 6.0 / (std::f64::consts::PI.powi(2) * ((j + 1) as f64).powi(2));
    let mut decision = Decision::Continue;
    if used.len() >= MIN_SLICES {
        let fails = (0..used.len())
            .step_by(MIN_SLICES)
            .enumerate()
            .take_while(|(_, start)| used.len() - start >= MIN_SLICES)
            .any(|(j, start)| {
                let suffix = if start == 0 {
                    Some(whole)
                } else {
                    Suffix::new(&used[start..], tolerance)
                };
                suffix.is_some_and(|s| s.fails(restart_share(j)))
            });
        if fails {
            decision = Decision::Fail;
        } else if whole.passes(half) {
            decision = Decision::Pass;
        }
    }
    // The interval for the difference itself, with the variance at the observed rates.
    let width = mixture_boundary(whole.dispersion * whole.v_binomial, half) / whole.sum_w;
    SliceJudgement {
        decision,
        difference: whole.mean,
        interval: Interval {
            lower: (whole.mean - width).max(-1.0),
            upper: (whole.mean + width).min(1.0),
        },
        dispersion: whole.dispersion,
        slices: used.len(),
    }
}

/// The statistics of a run of consecutive slices.
#[derive(Clone, Copy, Debug)]
struct Suffix {
    /// `Σ w_t`.
    sum_w: f64,
    /// Weighted mean difference.
    mean: f64,
    /// Binomial variance of `Σ w_t d_t` with the canary at the primary's rate plus δ.
    v_null: f64,
    /// Binomial variance at each side's own rate.
    v_binomial: f64,
    /// Overdispersion `φ ≥ 1`.
    dispersion: f64,
    tolerance: f64,
}

impl Suffix {
    fn new(used: &[(Counts, Counts)], tolerance: f64) -> Option<Self> {
        if used.is_empty() {
            return None;
        }
        let (mut ce, mut cn, mut pe, mut pn) = (0.0, 0.0, 0.0, 0.0);
        for (c, p) in used {
            ce += c.events as f64;
            cn += c.trials as f64;
            pe += p.events as f64;
            pn += p.trials as f64;
        }
        // Jeffreys-like: never exactly 0, so a run without errors still has variance.
        let (run_c, run_p) = ((ce + 0.5) / (cn + 1.0), (pe + 0.5) / (pn + 1.0));
        let shrunk = |c: Counts, run: f64| {
            (c.events as f64 + SHRINK_REQUESTS * run) / (c.trials as f64 + SHRINK_REQUESTS)
        };
        let (mut sum_w, mut sum_wd) = (0.0, 0.0);
        for (c, p) in used {
            let (nc, np) = (c.trials as f64, p.trials as f64);
            let w = nc * np / (nc + np);
            sum_w += w;
            sum_wd += w * (c.rate() - p.rate());
        }
        let mean = sum_wd / sum_w;
        let (mut v_null, mut v_binomial, mut v_empirical) = (0.0, 0.0, 0.0);
        for (c, p) in used {
            let (nc, np) = (c.trials as f64, p.trials as f64);
            let w = nc * np / (nc + np);
            let d = c.rate() - p.rate();
            let (ac, ap) = (shrunk(*c, run_c), shrunk(*p, run_p));
            let shifted = (ap + tolerance).clamp(0.0, 1.0);
            v_null += w * w * (shifted * (1.0 - shifted) / nc + ap * (1.0 - ap) / np);
            v_binomial += w * w * (ac * (1.0 - ac) / nc + ap * (1.0 - ap) / np);
            v_empirical += w * w * (d - mean) * (d - mean);
        }
        let k = used.len() as f64;
        let dispersion = if used.len() >= 2 && v_binomial > 0.0 {
            (v_empirical * k / (k - 1.0) / v_binomial).max(1.0)
        } else {
            1.0
        };
        Some(Self {
            sum_w,
            mean,
            v_null,
            v_binomial,
            dispersion,
            tolerance,
        })
    }

    fn statistic(&self) -> f64 {
        self.sum_w * (self.mean - self.tolerance)
    }

    fn boundary(&self, alpha: f64) -> f64 {
        mixture_boundary(self.dispersion * self.v_null, alpha)
    }

    fn fails(&self, alpha: f64) -> bool {
        self.statistic() >= self.boundary(alpha)
    }

    fn passes(&self, alpha: f64) -> bool {
        -self.statistic() >= self.boundary(alpha)
    }
}
