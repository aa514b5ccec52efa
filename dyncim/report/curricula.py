"""DynCIM against its nearest relative, BSS: the figures REPORT.md's comparison of the two
curricula is written from (dyncim.report.markdown renders them).

The two admit different things. BSS decides which training samples an epoch draws at all (its
curriculum variant the int(N λ_t) easiest; its self-paced variant every sample, the easy ones
earlier); DynCIM's self-paced weight v decides which samples of each batch its fused loss counts
(v > 0), while the modalities' own losses see every sample. Each run's record has its method's
per-epoch admitted fractions summarised (dyncim.methods.base.admitted_summary, saved with the run
at training, copied into the evaluation record's `diagnostics`).

Torch-free (the report step imports it).
"""
from __future__ import annotations

from . import stats

KEYS = ("admitted_first", "admitted_mean", "admitted_full_epoch")


def relatives(params: dict, runs: dict) -> list[str]:
    """The BSS instances (methods of type bss) among `runs`, in run-list order."""
    return [m for m in runs if params["methods"][m]["type"] == "bss"]


def compare(params: dict, runs: dict) -> dict | None:
    """`runs`: one data set's {method: {seed: evaluation JSON}}. None unless `dyncim` and at least
    one BSS instance ran; else {metric, rows: [{method, seeds, score, vs_dyncim, admitted_first,
    admitted_mean, admitted_full_epoch}]} with dyncim first: the score (accuracy, or micro-F1) and
    the first and mean admitted fractions as mean ± std over seeds (stats.summary), the epoch of full
    admission per seed in seed order (0: never within the run's epochs, None: not recorded; a mean
    would blend the two), `vs_dyncim` the paired test of the score against dyncim over their common
    seeds (None for dyncim itself)."""
    bss = relatives(params, runs)
    if "dyncim" not in runs or not bss:
        return None
    key = stats.primary_metric(runs)
    score = stats.per_seed(runs, key)
    rows = []
    for m in ["dyncim", *bss]:
        row = {"method": m, "seeds": len(runs[m]), "score": stats.summary(score[m].values()),
               "vs_dyncim": None if m == "dyncim" else stats.paired_test(score[m], score["dyncim"])}
        for k in KEYS[:2]:
            row[k] = stats.summary(r.get("diagnostics", {}).get(k) for r in runs[m].values())
        row[KEYS[2]] = [runs[m][s].get("diagnostics", {}).get(KEYS[2]) for s in sorted(runs[m])]
        rows.append(row)
    return {"metric": key, "rows": rows}
