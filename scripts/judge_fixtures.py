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
