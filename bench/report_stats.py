"""The statistics the report quotes: intervals over seeds and Welch's t-test between methods.

Two different intervals appear in the report and must not be confused:
- a run's own `ci95` (final.json) is over its test *tasks*: how precisely one trained
  initialisation was measured;
- the spread and the bands here are over *seeds*: how much the result depends on the
  training run, which is what a comparison between methods needs.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
"""Significance level of the pairwise tests."""


def t_halfwidth(values) -> float:
    """Half-width of the 95% Student-t interval of the mean (NaN with fewer than 2 values)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float("nan")
    return float(stats.sem(x) * stats.t.ppf(0.975, len(x) - 1))


def t_interval(values) -> tuple[float, float]:
    """(low, high) of the 95% t-interval over seeds; a point with one seed.

    Used as seaborn's `errorbar` callable: deterministic (unlike its bootstrap), and
    meaningful with the 2-5 seeds a benchmark can afford.
    """
    x = np.asarray(values, dtype=float)
    mean, half = float(np.mean(x)), t_halfwidth(x)
    half = 0.0 if np.isnan(half) else half
    return mean - half, mean + half


def summarize(finals: pd.DataFrame) -> pd.DataFrame:
    """Per (preset, method): mean over seeds, std over seeds, the per-seed ci95s and timings."""
    groups = finals.groupby(["preset", "method"], sort=False)
    out = groups.agg(n=("value", "size"), mean=("value", "mean"), std=("value", "std"),
                     ci95_mean=("ci95", "mean"), ms=("ms_per_meta_iter", "mean"),
                     meta_iters_min=("meta_iters", "min"), eval_tasks_min=("eval_tasks", "min"))
    out["ci95_list"] = groups["ci95"].agg(list)
    out["seeds"] = groups["seed"].agg(list)
    if "own_value" in finals.columns:
        out = out.join(groups.agg(own_value=("own_value", "mean"), own_ci95=("own_ci95", "mean"),
                                  own_n=("own_value", "count")))
    return out.reset_index()


def welch(a, b) -> tuple[float, float]:
    """Welch's t statistic and two-sided p-value (unequal variances), or NaNs when undefined
    (both samples without spread: the test has no variance to work with)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(np.asarray(a, float), np.asarray(b, float), equal_var=False)
    return float(res.statistic), float(res.pvalue)


def pairwise(finals: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Welch's t-test over per-seed final values for every pair of methods (one preset).

    Pairs where either method has fewer than 2 seeds are listed with tested=False: a
    t-test needs a variance estimate from each side.
    """
    values = {m: finals.loc[finals["method"] == m, "value"].to_numpy() for m in order}
    rows = []
    for a, b in itertools.combinations(order, 2):
        va, vb = values[a], values[b]
        tested = len(va) >= 2 and len(vb) >= 2
        t, p = welch(va, vb) if tested else (float("nan"), float("nan"))
        rows.append({"a": a, "b": b, "n_a": len(va), "n_b": len(vb), "mean_a": va.mean(), "mean_b": vb.mean(),
                     "diff": va.mean() - vb.mean(), "t": t, "p": p, "tested": tested,
                     "significant": bool(tested and np.isfinite(p) and p < ALPHA)})
    return pd.DataFrame(rows, columns=["a", "b", "n_a", "n_b", "mean_a", "mean_b", "diff", "t", "p",
                                       "tested", "significant"])


def seed_std(curves: pd.DataFrame) -> pd.DataFrame:
    """Across-seed standard deviation of the learning curves at each step (methods with >= 2 seeds):
    the training noise the meta-gradient variance should explain."""
    g = curves.groupby(["method", "step"])["value"]
    out = pd.DataFrame({"std": g.std(), "n": g.size()}).reset_index()
    return out[out["n"] >= 2]
