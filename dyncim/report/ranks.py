"""The field at a glance: each method's mean rank over the data sets of a run, the Friedman test
and the Nemenyi critical difference, as Demšar (2006, JMLR 7, "Statistical comparisons of
classifiers over multiple data sets", section 3.2.2 and Table 5) describes them.

Ranks are computed per data set on each method's mean test figure over its seeds (1 = best; ties
share the mean of their ranks), over the methods that have that figure on every data set. The
Friedman statistic is scipy's (`scipy.stats.friedmanchisquare`, which corrects for ties);
Iman and Davenport's F form of it is Demšar's Eq. (2); the Nemenyi test's critical value q_alpha
is the studentized range statistic at infinite degrees of freedom divided by sqrt(2)
(`scipy.stats.studentized_range`), which reproduces Demšar's Table 5. Torch-free.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as S


def rank_table(means: dict[str, dict[str, float]]) -> tuple[list[str], list[str], np.ndarray]:
    """`means`: {data set: {method: mean figure (higher is better)}}. Returns (data sets, methods
    present on every data set in first-seen order, ranks (N data sets x k methods))."""
    datasets = list(means)
    methods = [m for m in dict.fromkeys(m for d in datasets for m in means[d])
               if all(means[d].get(m) is not None for d in datasets)]
    ranks = np.array([S.rankdata([-means[d][m] for m in methods]) for d in datasets], dtype=float)
    return datasets, methods, ranks.reshape(len(datasets), len(methods))


def q_alpha(k: int, alpha: float = 0.05) -> float:
    """The Nemenyi test's critical value for k methods (Demšar's Table 5: 2.343 for k = 3)."""
    return float(S.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """CD = q_alpha sqrt(k (k + 1) / (6 N)): two mean ranks further apart differ significantly."""
    return q_alpha(k, alpha) * math.sqrt(k * (k + 1) / (6 * n))


def friedman(ranks: np.ndarray) -> dict:
    """The Friedman test on an N x k rank table (None where it is not defined: fewer than 3
    methods or 2 data sets). chi2 and its p from scipy; F: Iman and Davenport's statistic with its
    p from the F distribution on (k - 1, (k - 1)(N - 1)) degrees of freedom."""
    n, k = ranks.shape
    if k < 3 or n < 2:
        return {"chi2": None, "p": None, "F": None, "p_F": None,
                "note": f"needs 3 methods and 2 data sets (have {k} and {n})"}
    chi2, p = S.friedmanchisquare(*ranks.T)
    out = {"chi2": float(chi2), "p": float(p), "F": None, "p_F": None}
    if n * (k - 1) - chi2 > 1e-12:   # F is infinite where every data set ranks the methods alike
        f = (n - 1) * chi2 / (n * (k - 1) - chi2)
        out.update(F=float(f), p_F=float(S.f.sf(f, k - 1, (k - 1) * (n - 1))))
    return out


def cliques(methods: list[str], mean_ranks: np.ndarray, cd: float) -> list[list[str]]:
    """Maximal groups of methods (in rank order) whose mean ranks lie within `cd` of each other:
    the bars of a critical-difference diagram (no two methods of a group differ significantly)."""
    order = np.argsort(mean_ranks, kind="stable")
    groups = []
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and mean_ranks[order[j + 1]] - mean_ranks[order[i]] < cd:
            j += 1
        if j > i and not any(g[0] <= i and j <= g[1] for g in groups):
            groups.append((i, j))
    return [[methods[order[t]] for t in range(a, b + 1)] for a, b in groups]


def summarise(means: dict[str, dict[str, float]], alpha: float = 0.05) -> dict:
    """Everything the report shows: per-data-set ranks, mean ranks (best first), the Friedman
    test, the critical difference and the groups within it."""
    datasets, methods, ranks = rank_table(means)
    n, k = ranks.shape
    mean = ranks.mean(0) if n else np.zeros(k)
    cd = critical_difference(k, n, alpha) if k >= 2 and n >= 1 else None
    order = list(np.argsort(mean, kind="stable"))
    return {"datasets": datasets, "alpha": alpha,
            "methods": [methods[i] for i in order], "mean_rank": [float(mean[i]) for i in order],
            "ranks": {d: {methods[i]: float(ranks[r, i]) for i in order} for r, d in enumerate(datasets)},
            "friedman": friedman(ranks), "cd": cd,
            "cliques": cliques(methods, mean, cd) if cd is not None else []}
