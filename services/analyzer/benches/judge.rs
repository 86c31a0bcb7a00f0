//! Simulation harness for the statistical judge: the same synthetic request streams judged by
//! Aviary's sequential judge, by Flagger's threshold rule and by a Kayenta-style Mann-Whitney
//! test repeated every interval.
//!
//! Streams: 10, 100 and 1 000 requests per second overall, volume swinging ±50 % over 15
//! minutes plus Poisson noise, canary weight 5 % rising by 5 every 3 minutes to 50 %, 30
//! minutes at most. Primary error rate 0.5 %, latency lognormal (median 100 ms, σ 0.5, p99
//! ≈ 320 ms) in Envoy's default buckets. Scenarios: A/A; canary +1, +2, +5 points of errors;
//! canary p99 +20 % (latency × 1.2).
//!
//! Judges (a rollback when either metric fails):
//! - `sequential`: [`aviary_core::judge`], looks every 10 s, α = 0.01 for the rollout split
//!   over the two metrics, error tolerance 0.5 points, tail tolerance 0.5 points above p99;
//! - `threshold`: Flagger — every minute, success rate ≥ 99 % and p99 ≤ 1.1 × the primary's
//!   p99 (as `histogram_quantile` reports it) over the last minute; rollback at 5 failed
//!   checks;
//! - `mannwhitney`: Kayenta — every minute, a two-sided Mann-Whitney test (98 % confidence)
//!   of the canary's 10-second error rates and p99s since the start against the primary's;
//!   rollback at the first "canary higher".
//!
//! Prints JSON lines `{"name","value","unit"}` (see `docs/judge.md` for the full list).

use aviary_core::judge::baseline::{FlaggerRule, mann_whitney};
use aviary_core::judge::{
    AlphaBudget, Counts, DEFAULT_RATE_TOLERANCE, Decision, Histogram, compare_rates, compare_tails,
    tail_tolerance,
};

const TICK_S: u64 = 10;
const HORIZON_S: u64 = 30 * 60;
const BASE_ERROR: f64 = 0.005;
const AA_RUNS: usize = 1000;
const AB_RUNS: usize = 200;
const RPS: [f64; 3] = [10.0, 100.0, 1000.0];
/// Envoy's default histogram buckets (ms), finite ones.
const BOUNDS: [f64; 18] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0,
];
const LAT_MEDIAN_MS: f64 = 100.0;
const LAT_SIGMA: f64 = 0.5;
const JUDGES: [&str; 3] = ["sequential", "threshold", "mannwhitney"];

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

#[derive(Default, Clone)]
struct Side {
    requests: u64,
    errors: u64,
    buckets: Vec<u64>,
}

impl Side {
    fn new() -> Self {
        Self {
            buckets: vec![0; BOUNDS.len() + 1],
            ..Self::default()
        }
    }

    fn add(&mut self, other: &Side) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
    }

    fn histogram(&self) -> Histogram {
        let mut cumulative = Vec::with_capacity(BOUNDS.len());
        let mut c = 0;
        for b in &self.buckets[..BOUNDS.len()] {
            c += b;
            cumulative.push(c);
        }
        Histogram {
            bounds: BOUNDS.to_vec(),
            cumulative,
            total: self.buckets.iter().sum(),
        }
    }
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    canary_error: f64,
    latency_scale: f64,
}

/// When each judge rolled back (seconds since the start, canary requests by then), if it did.
#[derive(Default, Clone, Copy)]
struct Outcome {
    rollback: [Option<(u64, u64)>; 3],
    /// The sequential judge passed first (an early promotion): no rollback can follow.
    sequential_passed: bool,
}

fn run(rps: f64, s: Scenario, seed: u64, primary_p99: f64) -> Outcome {
    let mut rng = Rng::new(seed);
    let phase = rng.uniform() * std::f64::consts::TAU;
    let base_probs = bucket_probs(1.0);
    let canary_probs = bucket_probs(s.latency_scale);
    let alpha = AlphaBudget::default().per_metric(2);
    let tail_tol = tail_tolerance(0.99, None);
    let flagger = FlaggerRule::default();
    let (mut cum_c, mut cum_p) = (Side::new(), Side::new());
    let (mut min_c, mut min_p) = (Side::new(), Side::new());
    let mut ticks_c: Vec<(f64, Option<f64>)> = Vec::new();
    let mut ticks_p: Vec<(f64, Option<f64>)> = Vec::new();
    let mut failed_checks = 0;
    let mut out = Outcome::default();
    let mut t = 0;
    while t < HORIZON_S {
        t += TICK_S;
        let volume = 1.0 + 0.5 * (std::f64::consts::TAU * t as f64 / 900.0 + phase).sin();
        let n = rng.poisson(rps * volume * TICK_S as f64);
        let weight = (5 * (1 + (t - TICK_S) / 180)).min(50) as f64 / 100.0;
        let nc = rng.binomial(n, weight);
        let mut tick_c = Side::new();
        let mut tick_p = Side::new();
        tick_c.requests = nc;
        tick_p.requests = n - nc;
        tick_c.errors = rng.binomial(nc, s.canary_error);
        tick_p.errors = rng.binomial(n - nc, BASE_ERROR);
        rng.multinomial(nc, &canary_probs, &mut tick_c.buckets);
        rng.multinomial(n - nc, &base_probs, &mut tick_p.buckets);
        cum_c.add(&tick_c);
        cum_p.add(&tick_p);
        min_c.add(&tick_c);
        min_p.add(&tick_p);
        let rate = |x: &Side| (x.requests > 0).then(|| x.errors as f64 / x.requests as f64);
        if let (Some(rc), Some(rp)) = (rate(&tick_c), rate(&tick_p)) {
            ticks_c.push((rc, histogram_quantile(0.99, &tick_c.buckets)));
            ticks_p.push((rp, histogram_quantile(0.99, &tick_p.buckets)));
        }

        // Sequential: every tick, on everything since the start.
        if out.rollback[0].is_none() && !out.sequential_passed {
            let r = compare_rates(
                Counts::new(cum_c.requests, cum_c.errors),
                Counts::new(cum_p.requests, cum_p.errors),
                DEFAULT_RATE_TOLERANCE,
                alpha,
            );
            let l = compare_tails(
                &cum_c.histogram(),
                &cum_p.histogram(),
                0.99,
                tail_tol,
                alpha,
            )
            .map(|j| j.decision)
            .unwrap_or(Decision::Continue);
            if r.decision == Decision::Fail || l == Decision::Fail {
                out.rollback[0] = Some((t, cum_c.requests));
            } else if r.decision == Decision::Pass && l == Decision::Pass {
                out.sequential_passed = true;
            }
        }

        if t % 60 == 0 {
            // Flagger: the last minute against fixed bounds.
            if out.rollback[1].is_none() {
                let slow = histogram_quantile(0.99, &min_c.buckets)
                    .is_some_and(|p99| p99 > 1.1 * primary_p99);
                if flagger.check_fails(min_c.requests, min_c.errors) || slow {
                    failed_checks += 1;
                    if failed_checks >= flagger.threshold {
                        out.rollback[1] = Some((t, cum_c.requests));
                    }
                }
            }
            // Kayenta: Mann-Whitney on 10-second values since the start, every minute.
            if out.rollback[2].is_none() {
                let e_c: Vec<f64> = ticks_c.iter().map(|x| x.0).collect();
                let e_p: Vec<f64> = ticks_p.iter().map(|x| x.0).collect();
                let l_c: Vec<f64> = ticks_c.iter().filter_map(|x| x.1).collect();
                let l_p: Vec<f64> = ticks_p.iter().filter_map(|x| x.1).collect();
                let higher = |x: &[f64], y: &[f64]| {
                    let mw = mann_whitney(x, y);
                    mw.p_two_sided < 0.02 && mw.u > (x.len() * y.len()) as f64 / 2.0
                };
                if higher(&e_c, &e_p) || higher(&l_c, &l_p) {
                    out.rollback[2] = Some((t, cum_c.requests));
                }
            }
            min_c = Side::new();
            min_p = Side::new();
        }
        if out.rollback.iter().all(Option::is_some) {
            break;
        }
    }
    out
}

/// Median with undecided runs counted as never (capped at the horizon).
fn censored_median(mut v: Vec<f64>, runs: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(runs / 2).copied().unwrap_or(HORIZON_S as f64)
}

fn main() {
    // What Prometheus reports as the primary's p99 with unlimited data (interpolated within
    // its bucket), so Flagger's bound is 10 % above what the user sees on the dashboard.
    let expected: Vec<u64> = bucket_probs(1.0)
        .iter()
        .map(|p| (p * 1e9).round() as u64)
        .collect();
    let primary_p99 = histogram_quantile(0.99, &expected).unwrap_or(f64::INFINITY);
    let scenarios = [
        Scenario {
            name: "aa",
            canary_error: BASE_ERROR,
            latency_scale: 1.0,
        },
        Scenario {
            name: "plus1",
            canary_error: BASE_ERROR + 0.01,
            latency_scale: 1.0,
        },
        Scenario {
            name: "plus2",
            canary_error: BASE_ERROR + 0.02,
            latency_scale: 1.0,
        },
        Scenario {
            name: "plus5",
            canary_error: BASE_ERROR + 0.05,
            latency_scale: 1.0,
        },
        Scenario {
            name: "p99_plus20",
            canary_error: BASE_ERROR,
            latency_scale: 1.2,
        },
    ];
    let started = std::time::Instant::now();
    let mut speed = (0.0, 0.0);
    for (si, s) in scenarios.iter().enumerate() {
        let runs = if s.name == "aa" { AA_RUNS } else { AB_RUNS };
        let mut times: [Vec<f64>; 3] = Default::default();
        let mut requests: [Vec<f64>; 3] = Default::default();
        let mut rollbacks = [0usize; 3];
        let mut early = 0usize;
        for (ri, &rps) in RPS.iter().enumerate() {
            let mut rps_times: [Vec<f64>; 3] = Default::default();
            for i in 0..runs {
                let seed = ((si * 10 + ri) * 1_000_000 + i) as u64;
                let o = run(rps, *s, seed, primary_p99);
                early += usize::from(o.sequential_passed);
                for j in 0..3 {
                    if let Some((t, n)) = o.rollback[j] {
                        rollbacks[j] += 1;
                        times[j].push(t as f64);
                        rps_times[j].push(t as f64);
                        requests[j].push(n as f64);
                    }
                }
            }
            if s.name != "aa" {
                for (j, judge) in JUDGES.iter().enumerate() {
                    line(
                        &format!("judge_detect_seconds_{}_{judge}_{}rps", s.name, rps as u64),
                        censored_median(rps_times[j].clone(), runs),
                        "s",
                    );
                }
            }
        }
        let total = runs * RPS.len();
        for (j, judge) in JUDGES.iter().enumerate() {
            let rate = rollbacks[j] as f64 / total as f64;
            if s.name == "aa" {
                line(
                    &format!("judge_false_rollback_rate_aa_{judge}"),
                    rate,
                    "ratio",
                );
                if j == 0 {
                    line("judge_false_rollback_rate_aa", rate, "ratio");
                }
                continue;
            }
            line(&format!("judge_power_{}_{judge}", s.name), rate, "ratio");
            let median = censored_median(times[j].clone(), total);
            line(
                &format!("judge_detect_seconds_{}_{judge}", s.name),
                median,
                "s",
            );
            line(
                &format!("judge_detect_requests_{}_{judge}", s.name),
                censored_median(requests[j].clone(), total),
                "requests",
            );
            if j == 0 {
                line(&format!("judge_power_{}", s.name), rate, "ratio");
            }
            if s.name == "plus5" {
                match j {
                    0 => speed.0 = median,
                    1 => speed.1 = median,
                    _ => {}
                }
            }
        }
        if s.name == "aa" {
            line(
                "judge_early_promotion_rate_aa",
                early as f64 / total as f64,
                "ratio",
            );
        }
    }
    line("judge_speedup_vs_threshold_plus5", speed.1 / speed.0, "x");
    line("judge_alpha", AlphaBudget::default().alpha, "ratio");
    line("judge_bench_seconds", started.elapsed().as_secs_f64(), "s");
}
