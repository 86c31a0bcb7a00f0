#!/usr/bin/env python3
"""Writes tests/fixtures/judge/*.json: known values for the judge's math, computed with scipy.

Run from the repository root with scipy installed (e.g. the project venv):
    .tools/venv/bin/pip install scipy numpy
    .tools/venv/bin/python scripts/judge_fixtures.py
The Rust tests (crates/core/src/judge/tests.rs) read the committed files; they do not need scipy.
"""
import json
import math
import pathlib

import numpy as np
from scipy import optimize, special, stats

OUT = pathlib.Path("tests/fixtures/judge")
PRIOR_A = PRIOR_B = 0.5  # must match crates/core/src/judge/rate.rs


def log_mixture(trials, events, p):
    s, f = events, trials - events
    lm = special.betaln(PRIOR_A + s, PRIOR_B + f) - special.betaln(PRIOR_A, PRIOR_B)
    if s:
        lm -= s * math.log(p)
    if f:
        lm -= f * math.log1p(-p)
    return lm


def rate_interval(trials, events, alpha):
    """{p : ln M_n(p) < ln(1/alpha)}, ends found with brentq."""
    limit = math.log(1 / alpha)
    g = lambda p: log_mixture(trials, events, p) - limit
    centre = events / trials
    lo = 0.0 if events == 0 else optimize.brentq(g, 1e-300, centre, xtol=1e-15, rtol=1e-14)
    hi = 1.0 if events == trials else optimize.brentq(g, centre, 1 - 1e-16, xtol=1e-15, rtol=1e-14)
    return lo, hi


SCALES = 20  # must match RELATIVE_SCALES in crates/core/src/judge/rate.rs


def log_e_process(high, low, offset):
    """min over x of C(x) + G(x) (docs/judge.md), with scipy's bounded minimiser on a fine grid."""
    (nh, sh), (nl, sl) = high, low
    fh, fl = nh - sh, nl - sl
    mh = special.betaln(PRIOR_A + sh, PRIOR_B + fh) - special.betaln(PRIOR_A, PRIOR_B)
    rate_h = sh / nh if nh else 0.0
    us = 1 - 2.0 ** (-np.arange(1, SCALES + 1) / 2)

    def loglik(s, f, p):
        if s and p == 0.0:
            return -math.inf
        return (s * math.log(p) if s else 0.0) + (f * math.log1p(-p) if f else 0.0)

    def objective(x):
        c = mh - loglik(sh, fh, min(rate_h, min(max(x + offset, 0.0), 1.0)))
        terms = sl * np.log(us) + fl * (np.log1p(-x * us) - math.log1p(-x))
        return c + special.logsumexp(terms) - math.log(SCALES)

    lo, hi = max(0.0, -offset), min(1.0, 1.0 - offset)
    grid = np.linspace(lo, hi, 20001)[:-1] if hi == 1.0 else np.linspace(lo, hi, 20001)
    values = [objective(x) for x in grid]
    i = int(np.argmin(values))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best = optimize.minimize_scalar(objective, bounds=(a, b), method="bounded",
                                    options={"xatol": 1e-14})
    return float(min(best.fun, min(values)))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    xs = [1e-3, 0.1, 0.5, 1.0, 1.5, 2.0, 3.7, 10.0, 123.4, 1e4, 2.5e6, 1e8]
    pairs = [(0.5, 0.5), (0.5, 1000.5), (3.5, 997.5), (50.5, 10000.5), (1.0, 1.0), (12345.5, 6.5e6)]
    zs = [-3.0, -1.0, 0.0, 0.5, 1.0, 1.96, 2.326, 3.0, 5.0]
    special_fixture = {
        "ln_gamma": [[x, float(special.gammaln(x))] for x in xs],
        "ln_beta": [[a, b, float(special.betaln(a, b))] for a, b in pairs],
        "normal_sf": [[z, float(stats.norm.sf(z))] for z in zs],
    }
    (OUT / "special.json").write_text(json.dumps(special_fixture, indent=1) + "\n")

    cases = [(10, 0), (10, 1), (10, 10), (100, 3), (600, 3), (1000, 55), (5400, 27),
             (20000, 100), (20000, 1100), (1_000_000, 5000), (37, 36)]
    rates = []
    for alpha in (0.05, 0.0025):
        for n, s in cases:
            lo, hi = rate_interval(n, s, alpha)
            rates.append({"trials": n, "events": s, "alpha": alpha, "lower": lo, "upper": hi,
                          "log_mixture_at_half": log_mixture(n, s, 0.5)})
    (OUT / "rate_interval.json").write_text(json.dumps(rates, indent=1) + "\n")

    # (canary trials, errors), (primary trials, errors), tolerance: fail's and pass's ln E.
    joint = []
    for canary, primary, tol in [((350, 19), (6650, 33), 0.005), ((250, 14), (4750, 24), 0.005),
                                 ((1000, 60), (20000, 100), 0.005), ((5000, 24), (40000, 210), 0.005),
                                 ((20000, 100), (200000, 1000), 0.005), ((120, 0), (900, 4), 0.01),
                                 ((3000, 200), (3000, 60), 0.02), ((80, 9), (600, 2), 0.005)]:
        joint.append({"canary": canary, "primary": primary, "tolerance": tol,
                      "log_e_fail": log_e_process(canary, primary, tol),
                      "log_e_pass": log_e_process(primary, canary, -tol)})
    (OUT / "joint_test.json").write_text(json.dumps(joint, indent=1) + "\n")

    rng = np.random.default_rng(20240601)
    mw = []
    for n1, n2, shift, rounding in [(6, 6, 0.0, 1), (12, 30, 0.5, 1), (60, 60, 0.0, 0),
                                    (25, 40, 1.0, 2), (180, 180, 0.2, 1), (5, 9, 0.0, 0)]:
        x = np.round(rng.normal(shift, 1.0, n1), rounding)
        y = np.round(rng.normal(0.0, 1.0, n2), rounding)
        g = stats.mannwhitneyu(x, y, alternative="greater", method="asymptotic")
        t = stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic")
        mw.append({"x": x.tolist(), "y": y.tolist(), "u": float(g.statistic),
                   "p_greater": float(g.pvalue), "p_two_sided": float(t.pvalue)})
    (OUT / "mann_whitney.json").write_text(json.dumps(mw, indent=1) + "\n")


if __name__ == "__main__":
    main()
