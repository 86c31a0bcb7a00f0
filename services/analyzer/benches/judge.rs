//! Simulation harness for the statistical judge: the same synthetic request streams judged by
//! Aviary's judge and by Flagger's threshold rule, in the same run.
//!
//! A run is 30 minutes in 10-second slices. Canary weight 5 %, +5 every minute to 50 % (nine
//! weight steps in the first nine minutes), then held. Volume swings ±50 % over a 20-minute
//! period (diurnal, compressed) with Poisson noise. Primary errors 0.5 %; latency lognormal
//! (median 100 ms, σ 0.5, p99 ≈ 320 ms) in Envoy's default buckets. Streams:
//!
//! - A/A at 0.1, 1, 10, 100, 1 000 and 10 000 rps;
//! - shared outage: A/A plus one outage hitting both sides (5–30 s, 10–100 % errors) starting
//!   right after a weight step in the first nine minutes, 10 to 10 000 rps;
//! - clustered: A/A where each side's error rate per slice is drawn from a Beta (mean 0.5 %,
//!   concentration 20: sd ≈ 1.5 points), 10 to 10 000 rps;
//! - within tolerance: canary +0.25 points (half the tolerance), 10 to 10 000 rps;
//! - latency +10 %: canary latency × 1.1 (p99 +10 %, inside `maxRatio` 1.5), 10 to 10 000 rps;
//!   latency × 2 (outside it); a shared outage whose requests are also 3 × slower on both
//!   sides;
//! - regressions: +2 points at 10 rps, +1 at 100 rps, +5 at 100–10 000 rps, and +5 starting
//!   at minute 15 (after the walk, before the end).
//!
//! Judges (each stops at its first rollback; the weight schedule does not react, so both see
//! the same requests):
//! - `judge`: [`aviary_core::judge`], a look at every slice end on the run's 10-second slices
//!   (regrouped as the analyzer's `slice_windows` does beyond 60 slices), α = 0.01, error
//!   tolerance 0.5 points, latency `maxRatio` 1.5 on p99;
//! - `threshold`: Flagger's rule as Flagger runs it — a check every minute on the last minute,
//!   success rate ≥ 99 % (request-duration: p99 ≤ 500 ms, its documented example), no data is
//!   a failed check, failed checks accumulate, rollback at the tick after the fifth.
//!
//! Prints JSON lines `{"name","value","unit"}`; each `judge_*` figure has a `threshold_*`
//! twin from the same streams (see `docs/judge.md`).
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]

use aviary_analyzer::judge::MAX_SLICES;
use aviary_core::judge::{
    Counts, DEFAULT_MAX_RATIO, DEFAULT_RATE_TOLERANCE, Decision, Histogram, Slice,
    compare_quantiles, compare_slices,
};

const SLICE_S: u64 = 10;
const SLICES: usize = 180;
const CHECK_SLICES: usize = 6;
const THRESHOLD: u32 = 5;
const BASE_ERROR: f64 = 0.005;
const ALPHA: f64 = 0.01;
const RUNS: usize = 500;
/// Envoy's default histogram buckets (ms), finite ones.
const BOUNDS: [f64; 18] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0,
];
const LAT_MEDIAN_MS: f64 = 100.0;
const LAT_SIGMA: f64 = 0.5;
/// Latency factor of the requests in a shared outage.
const OUTAGE_SLOWDOWN: f64 = 3.0;

fn line(name: &str, value: f64, unit: &str) {
    println!(
        "{}",
        serde_json::json!({"name": name, "value": value, "unit": unit})
    );
}

/// xoshiro256** seeded by splitmix64.
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut s = [0; 4];
        for v in &mut s {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            *v = x ^ (x >> 31);
        }
        Self(s)
    }

    fn u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    fn uniform(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Poisson(λ): inversion below 50, normal approximation above (a simulation, not a test).
    fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda > 50.0 {
            return (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as u64;
        }
        let mut k = 0;
        let mut p = (-lambda).exp();
        let mut cdf = p;
        let u = self.uniform();
        while u > cdf && k < 1000 {
            k += 1;
            p *= lambda / k as f64;
            cdf += p;
        }
        k
    }

    /// Binomial(n, p): inversion when the mean is small, normal approximation otherwise.
    fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if n == 0 || p <= 0.0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        if p > 0.5 {
            return n - self.binomial(n, 1.0 - p);
        }
        let mean = n as f64 * p;
        if mean > 40.0 {
            let sd = (mean * (1.0 - p)).sqrt();
            return (mean + sd * self.normal()).round().clamp(0.0, n as f64) as u64;
        }
        let q = 1.0 - p;
        let mut pmf = q.powf(n as f64);
        let mut cdf = pmf;
        let u = self.uniform();
        let mut k = 0;
        while u > cdf && k < n {
            pmf *= (n - k) as f64 / (k + 1) as f64 * p / q;
            k += 1;
            cdf += pmf;
        }
        k
    }

    /// Multinomial counts over `probs` (summing to 1) by conditional binomials.
    fn multinomial(&mut self, n: u64, probs: &[f64], out: &mut [u64]) {
        let (mut left, mut mass) = (n, 1.0);
        for (o, &p) in out.iter_mut().zip(probs) {
            let k = if mass <= 0.0 {
                0
            } else {
                self.binomial(left, (p / mass).min(1.0))
            };
            *o = k;
            left -= k;
            mass -= p;
        }
    }
}

fn normal_cdf(z: f64) -> f64 {
    1.0 - aviary_core::judge::special::normal_sf(z)
}

/// Probability of each bucket (finite ones, then +Inf) for lognormal latency scaled by `scale`.
fn bucket_probs(scale: f64) -> Vec<f64> {
    let mut probs = Vec::with_capacity(BOUNDS.len() + 1);
    let mut below = 0.0;
    for b in BOUNDS {
        let c = normal_cdf(((b / (scale * LAT_MEDIAN_MS)).ln()) / LAT_SIGMA);
        probs.push((c - below).max(0.0));
        below = c;
    }
    probs.push((1.0 - below).max(0.0));
    probs
}

/// `histogram_quantile` as Prometheus computes it: linear within the bucket.
fn histogram_quantile(q: f64, buckets: &[u64]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut cum = 0u64;
    for (i, &c) in buckets.iter().enumerate() {
        if (cum + c) as f64 >= rank {
            if i >= BOUNDS.len() {
                return Some(BOUNDS[BOUNDS.len() - 1]);
            }
            let lo = if i == 0 { 0.0 } else { BOUNDS[i - 1] };
            let within = if c == 0 {
                0.0
            } else {
                (rank - cum as f64) / c as f64
            };
            return Some(lo + (BOUNDS[i] - lo) * within);
        }
        cum += c;
    }
    Some(BOUNDS[BOUNDS.len() - 1])
}

impl Rng {
    /// Gamma(k, 1), Marsaglia-Tsang (with the `k < 1` boost).
    fn gamma(&mut self, k: f64) -> f64 {
        if k < 1.0 {
            return self.gamma(k + 1.0) * self.uniform().max(1e-300).powf(1.0 / k);
        }
        let d = k - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v > 0.0 && self.uniform().max(1e-300).ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta with mean `m` and concentration `k`.
    fn beta(&mut self, m: f64, k: f64) -> f64 {
        let a = self.gamma(m * k);
        let b = self.gamma((1.0 - m) * k);
        a / (a + b)
    }
}

/// What a stream does to the two sides.
#[derive(Clone, Copy)]
struct Scenario {
    rps: f64,
    /// Added to the canary's error rate, from slice `from` on.
    delta: f64,
    from: usize,
    /// Per-slice rates drawn from Beta(mean, this), per side.
    concentration: Option<f64>,
    /// A shared outage.
    outage: bool,
    /// Canary latency factor.
    latency: f64,
}

impl Scenario {
    fn aa(rps: f64) -> Self {
        Self {
            rps,
            delta: 0.0,
            from: 0,
            concentration: None,
            outage: false,
            latency: 1.0,
        }
    }
}

/// One side of one slice.
#[derive(Clone, Default)]
struct Side {
    counts: Counts,
    buckets: Vec<u64>,
}

fn weight(slice: usize) -> f64 {
    let step = (slice / CHECK_SLICES).min(9);
    0.05 * (step + 1) as f64
}

fn volume(slice: usize) -> f64 {
    let t = (slice as u64 * SLICE_S) as f64;
    1.0 + 0.5 * (2.0 * std::f64::consts::PI * t / 1200.0).sin()
}

/// The stream: per slice, the canary's and the primary's counts and latency buckets.
fn stream(s: Scenario, seed: u64, latency: bool) -> Vec<(Side, Side)> {
    let mut rng = Rng::new(seed);
    // The outage: right after one of the nine weight steps, 5–30 s, 10–100 % errors.
    let (o_start, o_len, o_rate) = if s.outage {
        let step = 1 + (rng.uniform() * 9.0) as u64;
        let start = step * CHECK_SLICES as u64 * SLICE_S;
        (
            start,
            5 + (rng.uniform() * 26.0) as u64,
            0.1 + 0.9 * rng.uniform(),
        )
    } else {
        (0, 0, 0.0)
    };
    let probs_p = (bucket_probs(1.0), bucket_probs(OUTAGE_SLOWDOWN));
    let probs_c = (
        bucket_probs(s.latency),
        bucket_probs(s.latency * OUTAGE_SLOWDOWN),
    );
    (0..SLICES)
        .map(|i| {
            let w = weight(i);
            let mean = s.rps * SLICE_S as f64 * volume(i);
            let start = i as u64 * SLICE_S;
            let overlap = (start + SLICE_S)
                .min(o_start + o_len)
                .saturating_sub(start.max(o_start));
            let f = overlap as f64 / SLICE_S as f64;
            let side = |share: f64, rate: f64, probs: &(Vec<f64>, Vec<f64>), rng: &mut Rng| {
                let n = rng.poisson(mean * share);
                let rate = match s.concentration {
                    Some(k) => rng.beta(rate, k),
                    None => rate,
                };
                let in_outage = rng.binomial(n, f);
                let errors = rng.binomial(n - in_outage, rate) + rng.binomial(in_outage, o_rate);
                let mut buckets = Vec::new();
                if latency {
                    // Requests in the outage are slower on both sides too.
                    buckets = vec![0; probs.0.len()];
                    let mut slow = vec![0; probs.1.len()];
                    rng.multinomial(n - in_outage, &probs.0, &mut buckets);
                    rng.multinomial(in_outage, &probs.1, &mut slow);
                    for (b, v) in buckets.iter_mut().zip(slow) {
                        *b += v;
                    }
                }
                Side {
                    counts: Counts::new(n, errors),
                    buckets,
                }
            };
            let extra = if i >= s.from { s.delta } else { 0.0 };
            let c = side(w, BASE_ERROR + extra, &probs_c, &mut rng);
            let p = side(1.0 - w, BASE_ERROR, &probs_p, &mut rng);
            (c, p)
        })
        .collect()
}

/// The first slice (1-based count of slices seen) at which each judge rolls back, if any:
/// `(judge, threshold)`.
fn judge_stream(st: &[(Side, Side)], latency: bool) -> (Option<usize>, Option<usize>) {
    let mut judge = None;
    let mut base: Vec<Slice> = Vec::with_capacity(SLICES);
    let mut hist = (Histogram::default(), Histogram::default());
    if latency {
        for h in [&mut hist.0, &mut hist.1] {
            h.bounds = BOUNDS.to_vec();
            h.cumulative = vec![0; BOUNDS.len()];
        }
    }
    for (i, (c, p)) in st.iter().enumerate() {
        if latency {
            for (h, side) in [(&mut hist.0, c), (&mut hist.1, p)] {
                let mut run = 0;
                for (k, b) in side.buckets.iter().take(BOUNDS.len()).enumerate() {
                    run += b;
                    h.cumulative[k] += run;
                }
                h.total += side.counts.trials;
            }
            let j = compare_quantiles(&hist.0, &hist.1, 0.99, DEFAULT_MAX_RATIO, ALPHA);
            if j.map(|j| j.decision) == Ok(Decision::Fail) {
                judge = Some(i + 1);
                break;
            }
            continue;
        }
        base.push(Slice::new(c.counts, p.counts));
        // As the analyzer's slice_windows: at most MAX_SLICES slices, aligned to the start.
        let group = base.len().div_ceil(MAX_SLICES as usize);
        let slices: Vec<Slice> = base
            .chunks(group)
            .map(|g| {
                g.iter().fold(Slice::default(), |a, s| {
                    Slice::new(
                        Counts::new(
                            a.canary.trials + s.canary.trials,
                            a.canary.events + s.canary.events,
                        ),
                        Counts::new(
                            a.primary.trials + s.primary.trials,
                            a.primary.events + s.primary.events,
                        ),
                    )
                })
            })
            .collect();
        if compare_slices(&slices, DEFAULT_RATE_TOLERANCE, ALPHA).decision == Decision::Fail {
            judge = Some(i + 1);
            break;
        }
    }
    (judge, flagger(st, latency))
}

/// Flagger's rule: a check per minute on the last minute; no data fails; rollback at the
/// tick after the fifth failed check.
fn flagger(st: &[(Side, Side)], latency: bool) -> Option<usize> {
    let mut failed = 0;
    for (m, minute) in st.chunks(CHECK_SLICES).enumerate() {
        // Checked at the tick after the check that reached the threshold.
        if failed >= THRESHOLD {
            return Some((m + 1) * CHECK_SLICES);
        }
        let n: u64 = minute.iter().map(|(c, _)| c.counts.trials).sum();
        let fails = if latency {
            let mut buckets = vec![0u64; BOUNDS.len() + 1];
            for (c, _) in minute {
                for (b, v) in buckets.iter_mut().zip(&c.buckets) {
                    *b += v;
                }
            }
            histogram_quantile(0.99, &buckets).is_none_or(|p99| p99 > 500.0)
        } else {
            let e: u64 = minute.iter().map(|(c, _)| c.counts.events).sum();
            n == 0 || 100.0 * (1.0 - e as f64 / n as f64) < 99.0
        };
        if fails {
            failed += 1;
        }
    }
    // Reached at the last check: the rollback tick is after the run.
    None
}

/// Runs a scenario at each rate: the share of runs each judge rolled back, and the seconds to
/// each rollback.
struct Tally {
    runs: usize,
    rolled: [usize; 2],
    /// Runs and rollbacks per scenario.
    per: Vec<(usize, [usize; 2])>,
    seconds: [Vec<f64>; 2],
}

fn tally(scenarios: &[Scenario], runs: usize, latency: bool, seed: u64) -> Tally {
    let mut t = Tally {
        runs: 0,
        rolled: [0; 2],
        per: vec![(0, [0; 2]); scenarios.len()],
        seconds: [Vec::new(), Vec::new()],
    };
    for (k, s) in scenarios.iter().enumerate() {
        t.per[k].0 = runs;
        for r in 0..runs {
            let st = stream(*s, seed ^ ((k as u64) << 32) ^ r as u64, latency);
            let (j, f) = judge_stream(&st, latency);
            t.runs += 1;
            for (i, at) in [j, f].into_iter().enumerate() {
                if let Some(at) = at {
                    t.rolled[i] += 1;
                    t.per[k].1[i] += 1;
                    t.seconds[i].push((at as u64 * SLICE_S) as f64);
                }
            }
        }
    }
    t
}

impl Tally {
    fn rate(&self, i: usize) -> f64 {
        self.rolled[i] as f64 / self.runs.max(1) as f64
    }

    fn median(&self, i: usize) -> f64 {
        let mut v = self.seconds[i].clone();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    /// `judge_<name>` and `threshold_<name>` as rates.
    fn report(&self, name: &str) {
        line(&format!("judge_{name}"), self.rate(0), "ratio");
        line(&format!("threshold_{name}"), self.rate(1), "ratio");
    }
}

fn at(rps: &[f64], f: impl Fn(f64) -> Scenario) -> Vec<Scenario> {
    rps.iter().map(|&r| f(r)).collect()
}

fn main() {
    let started = std::time::Instant::now();
    let every = [0.1, 1.0, 10.0, 100.0, 1_000.0, 10_000.0];
    let from_10 = [10.0, 100.0, 1_000.0, 10_000.0];

    let aa = tally(&at(&every, Scenario::aa), RUNS, false, 1);
    aa.report("false_rollback_rate_aa");
    for (&rps, (runs, rolled)) in every.iter().zip(&aa.per) {
        let label = format!("{rps}").replace('.', "_");
        for (i, who) in ["judge", "threshold"].into_iter().enumerate() {
            line(
                &format!("{who}_false_rollback_rate_aa_{label}rps"),
                rolled[i] as f64 / *runs as f64,
                "ratio",
            );
        }
    }
    let outage = tally(
        &at(&from_10, |rps| Scenario {
            outage: true,
            ..Scenario::aa(rps)
        }),
        RUNS,
        false,
        2,
    );
    outage.report("false_rollback_rate_shared_outage");
    let clustered = tally(
        &at(&from_10, |rps| Scenario {
            concentration: Some(20.0),
            ..Scenario::aa(rps)
        }),
        RUNS,
        false,
        3,
    );
    clustered.report("false_rollback_rate_clustered");
    let within = tally(
        &at(&from_10, |rps| Scenario {
            delta: 0.0025,
            ..Scenario::aa(rps)
        }),
        RUNS,
        false,
        4,
    );
    within.report("false_rollback_rate_within_tolerance");
    let slow = tally(
        &at(&from_10, |rps| Scenario {
            latency: 1.1,
            ..Scenario::aa(rps)
        }),
        RUNS / 5,
        true,
        5,
    );
    slow.report("latency_false_fail_rate_p99_plus10");
    let shared_slowdown = tally(
        &at(&from_10, |rps| Scenario {
            outage: true,
            ..Scenario::aa(rps)
        }),
        RUNS / 5,
        true,
        10,
    );
    shared_slowdown.report("latency_false_fail_rate_shared_outage");
    let twice = tally(
        &at(&from_10, |rps| Scenario {
            latency: 2.0,
            ..Scenario::aa(rps)
        }),
        RUNS / 5,
        true,
        11,
    );
    twice.report("latency_power_p99_x2");
    line(
        "judge_latency_median_seconds_to_rollback_p99_x2",
        twice.median(0),
        "s",
    );
    line(
        "threshold_latency_median_seconds_to_rollback_p99_x2",
        twice.median(1),
        "s",
    );
    for (k, rps) in from_10.into_iter().enumerate() {
        let one = tally(
            &[Scenario {
                latency: 2.0,
                ..Scenario::aa(rps)
            }],
            RUNS / 10,
            true,
            11 ^ ((k as u64) << 32),
        );
        for (i, who) in ["judge", "threshold"].into_iter().enumerate() {
            line(
                &format!("{who}_latency_median_seconds_to_rollback_p99_x2_{rps}rps"),
                one.median(i),
                "s",
            );
        }
    }
    let plus2 = tally(
        &[Scenario {
            delta: 0.02,
            ..Scenario::aa(10.0)
        }],
        RUNS,
        false,
        6,
    );
    plus2.report("power_plus2_10rps");
    for (i, who) in ["judge", "threshold"].into_iter().enumerate() {
        line(
            &format!("{who}_median_seconds_to_rollback_plus2_10rps"),
            plus2.median(i),
            "s",
        );
    }
    let plus1 = tally(
        &[Scenario {
            delta: 0.01,
            ..Scenario::aa(100.0)
        }],
        RUNS,
        false,
        7,
    );
    plus1.report("power_plus1_100rps");
    for (i, who) in ["judge", "threshold"].into_iter().enumerate() {
        line(
            &format!("{who}_median_seconds_to_rollback_plus1_100rps"),
            plus1.median(i),
            "s",
        );
    }
    let plus5 = tally(
        &at(&[100.0, 1_000.0, 10_000.0], |rps| Scenario {
            delta: 0.05,
            ..Scenario::aa(rps)
        }),
        RUNS,
        false,
        8,
    );
    plus5.report("power_plus5");
    let (j, f) = (plus5.median(0), plus5.median(1));
    line("judge_median_seconds_to_rollback_plus5", j, "s");
    line("threshold_median_seconds_to_rollback_plus5", f, "s");
    line("judge_speedup_vs_threshold_plus5", f / j, "x");
    line("threshold_speedup_vs_threshold_plus5", 1.0, "x");
    for (k, rps) in [100.0, 1_000.0, 10_000.0].into_iter().enumerate() {
        let one = tally(
            &[Scenario {
                delta: 0.05,
                ..Scenario::aa(rps)
            }],
            RUNS / 5,
            false,
            8 ^ ((k as u64) << 32),
        );
        line(
            &format!("judge_median_seconds_to_rollback_plus5_{rps}rps"),
            one.median(0),
            "s",
        );
        line(
            &format!("threshold_median_seconds_to_rollback_plus5_{rps}rps"),
            one.median(1),
            "s",
        );
    }
    let late = tally(
        &at(&[100.0, 1_000.0], |rps| Scenario {
            delta: 0.05,
            from: 90,
            ..Scenario::aa(rps)
        }),
        RUNS / 5,
        false,
        9,
    );
    late.report("power_plus5_from_minute_15");
    line(
        "judge_median_seconds_to_rollback_plus5_from_minute_15",
        late.median(0) - 900.0,
        "s",
    );
    line(
        "threshold_median_seconds_to_rollback_plus5_from_minute_15",
        late.median(1) - 900.0,
        "s",
    );
    line(
        "judge_simulation_seconds",
        started.elapsed().as_secs_f64(),
        "s",
    );
}
