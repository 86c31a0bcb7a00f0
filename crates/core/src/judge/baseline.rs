//! The judges Aviary's sequential judge is measured against (the simulation bench runs all
//! three on the same streams). Not used to decide rollouts.
//!
//! - [`FlaggerRule`]: one value per interval against a fixed bound; roll back after
//!   `threshold` failed checks.
//! - [`mann_whitney`]: Kayenta's classifier, a fixed-horizon Mann-Whitney U test, which
//!   Kayenta repeats every interval with no correction for looking again.

use super::special::normal_sf;

/// Flagger's threshold rule on the success rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlaggerRule {
    /// Lowest passing success rate in percent (Flagger's docs: 99).
    pub min_success_percent: f64,
    /// Failed checks that roll back (Flagger's docs: 5).
    pub threshold: u32,
}

impl Default for FlaggerRule {
    fn default() -> Self {
        Self {
            min_success_percent: 99.0,
            threshold: 5,
        }
    }
}

impl FlaggerRule {
    /// Whether one interval's window passes: no requests is no data (not a failed check).
    pub fn check_fails(&self, requests: u64, errors: u64) -> bool {
        if requests == 0 {
            return false;
        }
        let success = 100.0 * (1.0 - errors.min(requests) as f64 / requests as f64);
        success < self.min_success_percent
    }
}

/// The result of a Mann-Whitney U test of `x` against `y`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MannWhitney {
    /// `U` of `x`: pairs where `x` is larger, ties counting ½.
    pub u: f64,
    /// One-sided p-value for "`x` tends to be larger than `y`" (normal approximation with
    /// tie and continuity correction, as scipy's `method="asymptotic"`).
    pub p_greater: f64,
    /// Two-sided p-value, same approximation.
    pub p_two_sided: f64,
}

/// Mann-Whitney U test of `x` against `y`. With an empty side, or every value tied, there is
/// no evidence: both p-values are 1.
pub fn mann_whitney(x: &[f64], y: &[f64]) -> MannWhitney {
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mid-ranks, and the tie term Σ(t³ − t).
    let n = all.len();
    let mut rank_x = 0.0;
    let mut ties = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_x += mid * all[i..=j].iter().filter(|e| e.1).count() as f64;
        ties += t * t * t - t;
        i = j + 1;
    }
    let u = rank_x - n1 * (n1 + 1.0) / 2.0;
    let nn = n1 + n2;
    let mu = n1 * n2 / 2.0;
    let var = n1 * n2 / 12.0 * ((nn + 1.0) - ties / (nn * (nn - 1.0)));
    if x.is_empty() || y.is_empty() || var <= 0.0 || !var.is_finite() {
        return MannWhitney {
            u,
            p_greater: 1.0,
            p_two_sided: 1.0,
        };
    }
    let s = var.sqrt();
    let p_greater = normal_sf((u - mu - 0.5) / s);
    let u_max = u.max(n1 * n2 - u);
    let p_two_sided = (2.0 * normal_sf((u_max - mu - 0.5) / s)).min(1.0);
    MannWhitney {
        u,
        p_greater,
        p_two_sided,
    }
}
