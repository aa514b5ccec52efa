"""Paired significance of one method against another over the seeds both ran.

Two runs of the same seed share the split, the initialisation seed and the data order, so the
per-seed differences are paired: a paired t-test (scipy.stats.ttest_rel, two-sided) on the seeds
both methods ran. Methods with different seed lists (DynCIM 5, most others 3) are paired on the
common seeds only, and the result says so (`common_only`). Where the test is undefined (fewer than
two common seeds, or the same difference on every seed) `p` is None and `note` says why.

Torch-free (the report step imports it).
"""
from __future__ import annotations

import math
import statistics

ALPHA = 0.05
MARKS = ((0.01, "**"), (ALPHA, "*"))   # p < 0.01: **, p < 0.05: *, otherwise within noise
TIE = 1e-12   # differences closer than this are equal (accuracies are multiples of 1/n_test)


def paired_test(a: dict, b: dict) -> dict:
    """`a`, `b`: {seed: value} of two methods. The paired difference a − b over their common seeds:
    {mean_diff, p, t, n, seeds, common_only, note}. `mean_diff` is None without a common seed;
    `p` (two-sided) is None where the test is undefined, with `note` saying why."""
    seeds = sorted(set(a) & set(b))
    n = len(seeds)
    common_only = set(a) != set(b)
    res = {"mean_diff": None, "p": None, "t": None, "n": n, "seeds": seeds, "common_only": common_only,
           "note": ""}
    if n == 0:
        res["note"] = "no common seed"
        return res
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    res["mean_diff"] = statistics.fmean(diffs)
    if n < 2:
        res["note"] = "one common seed: no test"
    elif max(diffs) - min(diffs) <= TIE:
        res["note"] = ("identical on every common seed" if max(map(abs, diffs)) <= TIE
                       else "the same difference on every common seed: no variance, the t-test is undefined")
    else:
        import warnings

        from scipy.stats import ttest_rel
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # near-constant differences
            r = ttest_rel([float(a[s]) for s in seeds], [float(b[s]) for s in seeds])
        t, p = float(r.statistic), float(r.pvalue)
        if math.isfinite(t) and math.isfinite(p):
            res["t"], res["p"] = t, p
        else:
            res["note"] = "no variance of the differences: the t-test is undefined"
    return res


def mark(res: dict) -> str:
    """`**` for p < 0.01, `*` for p < 0.05, '' otherwise (within noise, or no test)."""
    p = res.get("p")
    if p is None:
        return ""
    for threshold, m in MARKS:
        if p < threshold:
            return m
    return ""


def significant(res: dict) -> bool:
    return res.get("p") is not None and res["p"] < ALPHA


def verdict(res: dict) -> str:
    """A plain-words verdict: 'better', 'worse', 'within noise' or why there is no test."""
    if res["mean_diff"] is None:
        return "no common seed"
    if res["p"] is None:
        return f"no test ({res['note']})"
    if not significant(res):
        return "within noise"
    return "better" if res["mean_diff"] > 0 else "worse"


def describe(res: dict, name: str, ref: str, what: str = "accuracy") -> str:
    """One sentence: '<name> vs <ref>: +0.012 accuracy (p = 0.031, paired t-test over seeds 0, 1, 2;
    n = 3): better.' with the common-seed caveat where it applies."""
    if res["mean_diff"] is None:
        return f"{name} vs {ref}: no common seed, no comparison."
    seeds = ", ".join(map(str, res["seeds"]))
    p = "no test" if res["p"] is None else f"p = {res['p']:.3g}"
    common = "; common seeds only" if res["common_only"] else ""
    v = verdict(res) if res["p"] is None else ("within noise" if not significant(res) else
                                               ("significantly higher" if res["mean_diff"] > 0 else
                                                "significantly lower"))
    return (f"{name} vs {ref}: {res['mean_diff']:+.3f} {what} ({p}, paired over seeds {seeds}, "
            f"n = {res['n']}{common}): {v}.")


def compare(values: dict, references=("joint", "dyncim")) -> dict:
    """`values`: {method: {seed: value}}. {reference: {method: paired_test(method, reference)}}
    for every reference present in `values` and every other method with values."""
    out = {}
    for ref in references:
        if ref not in values:
            continue
        out[ref] = {m: paired_test(v, values[ref]) for m, v in values.items() if m != ref and v}
    return out


# --- the per-run numbers these statistics are computed on ------------------------------------

def summary(values) -> dict | None:
    """Mean ± sample std (statistics.stdev; 0 for one value) and n of the non-None values, as
    dyncim.report.summary computes them; None without a value."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def load_runs(params: dict, data: str, root=".") -> dict:
    """{method: {seed: the run's evaluation JSON}} of data set `data`, over the run list of
    `params` (resolved params or a report job's configuration: run.methods, methods.<m>.seeds),
    read from dyncim.paths.eval_file under `root`."""
    import json
    from pathlib import Path

    from .. import paths
    root = Path(root)
    out = {}
    for method in params["run"]["methods"]:
        out[method] = {}
        for seed in params["methods"][method]["seeds"]:
            path = root / paths.eval_file(data, method, seed)
            try:
                out[method][seed] = json.loads(path.read_text())
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: missing; run the evaluate step first") from None
    return out


def metric(run: dict, key: str):
    """A number of one evaluation JSON: `acc`, `macro_f1`, or `<modality>_own` / `<modality>_probe`
    (None where the run has none: unimodal runs have no fused accuracy)."""
    if key in run:
        return run[key]
    name, _, kind = key.rpartition("_")
    return run.get("modalities", {}).get(name, {}).get(kind)


def primary_metric(runs: dict) -> str:
    """The headline figure of one data set's runs ({method: {seed: evaluation JSON}}): `acc`, or
    `micro_f1` on a multi-label set (dyncim.multilabel), whose runs have no accuracy."""
    return "micro_f1" if any("micro_f1" in r for seeds in runs.values() for r in seeds.values()) else "acc"


PRIMARY_LABEL = {"acc": "accuracy", "micro_f1": "micro-F1"}


def per_seed(runs: dict, key: str) -> dict:
    """{method: {seed: value}} of one metric, leaving out runs without it."""
    return {m: {s: metric(r, key) for s, r in seeds.items() if metric(r, key) is not None}
            for m, seeds in runs.items()}
