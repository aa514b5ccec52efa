"""results/REPORT.md, the pipeline's last step: per data set the ranked results table (accuracy,
macro-F1, each modality's own-head accuracy; mean ± std over seeds; best in bold; paired
significance against `joint` and `dyncim`), the DynCIM ablation table, the robustness table and
the figures beside them; before them, the split the numbers are on and, for a source with
published ranges, the sanity check of its unimodal and joint accuracies (dyncim.report.sanity).

Every number is recomputed here from the per-run evaluation JSONs and the robustness sweep's
per-run accuracies (mean and sample std as dyncim.report.summary computes them; paired tests by
dyncim.report.stats), so a test can recompute each one. Torch-free.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .. import paths
from . import curricula, ranks, sanity, stats
from ..atomic import write_text

REFERENCES = ("joint", "dyncim")
DASH = "—"


def _fmt(s: dict | None) -> str:
    return DASH if s is None else f"{s['mean']:.3f} ± {s['std']:.3f}"


def _fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def diff_cell(res: dict) -> str:
    """'+0.012* (p = 0.031, n = 3)', '+0.004 (p = 0.410, n = 3) within noise', '+0.2** (p < 0.001,
    n = 3)', with † where the
    pair rests on the common seeds only; or why there is no test."""
    if res["mean_diff"] is None:
        return "no common seed"
    dagger = "†" if res["common_only"] else ""
    if res["p"] is None:
        return f"{res['mean_diff']:+.3f} (no test: {res['note']}; n = {res['n']}){dagger}"
    tail = "" if stats.significant(res) else " within noise"
    return f"{res['mean_diff']:+.3f}{stats.mark(res)} ({_fmt_p(res['p'])}, n = {res['n']}){dagger}{tail}"


def _bold_best(cells: list[str], means: list[float | None]) -> list[str]:
    """Bold the cells whose displayed mean is the column's best (ties at 3 decimals all bold)."""
    shown = [None if m is None else round(m, 3) for m in means]
    best = max((m for m in shown if m is not None), default=None)
    return [f"**{c}**" if m is not None and m == best else c for c, m in zip(cells, shown)]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _seed_sentence(params: dict, methods: list[str]) -> str:
    """Which seeds each method ran, and where comparisons pair on the common seeds."""
    groups: dict[tuple, list[str]] = {}
    for m in methods:
        groups.setdefault(tuple(params["methods"][m]["seeds"]), []).append(m)
    if len(groups) == 1:
        (seeds, _), = groups.items()
        return f"Every method ran seeds {', '.join(map(str, seeds))} (n = {len(seeds)})."
    parts = []
    for seeds, ms in sorted(groups.items(), key=lambda kv: len(kv[1])):
        who = ", ".join(ms) if len(ms) <= 4 else f"the other {len(ms)} methods"
        parts.append(f"{who}: seeds {', '.join(map(str, seeds))} (n = {len(seeds)})")
    return ("Seeds differ between methods — " + "; ".join(parts) + ". A paired comparison uses the seeds "
            "both methods ran; † marks one that pairs on the common seeds only (not every seed of the pair).")


def _typical_n(params: dict) -> str:
    """' (n = 3 for most methods here)': the most common number of seeds of the run list."""
    counts = [len(params["methods"][m]["seeds"]) for m in params["run"]["methods"]]
    if not counts:
        return ""
    n = max(set(counts), key=lambda c: (counts.count(c), c))
    return f" (n = {n} for {'every method' if counts.count(n) == len(counts) else 'most methods'} here)"


def _link(fig: str | Path, out: Path, alt: str) -> str:
    return f"![{alt}]({Path(os.path.relpath(fig, out.parent)).as_posix()})"


def ranked_rows(runs: dict, names: list[str], tests: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and method order of the ranked table (by mean test accuracy; methods without a
    fused accuracy, i.e. unimodal, last). On a multi-label set micro-F1 takes accuracy's place."""
    first = stats.primary_metric(runs)
    what = stats.PRIMARY_LABEL[first]
    cols = [first, "macro_f1"] + [f"{n}_own" for n in names]
    summ = {m: {c: stats.summary(stats.per_seed({m: runs[m]}, c)[m].values()) for c in cols} for m in runs}
    order = sorted(runs, key=lambda m: -(summ[m][first]["mean"] if summ[m][first] else -1.0))
    refs = [r for r in REFERENCES if r in tests]
    header = ["rank", "method", "seeds", what, "macro-F1"] + [f"{n} own head" for n in names] + \
             [f"Δ {what} vs {r}" for r in refs]
    columns = [[_fmt(summ[m][c]) for m in order] for c in cols]
    columns = [_bold_best(cells, [summ[m][c]["mean"] if summ[m][c] else None for m in order])
               for cells, c in zip(columns, cols)]
    rows = []
    for i, m in enumerate(order):
        rank = str(i + 1) if summ[m][first] else DASH
        row = [rank, m, str(len(runs[m]))] + [col[i] for col in columns]
        for r in refs:
            row.append("(reference)" if m == r else diff_cell(tests[r][m]) if m in tests[r] else DASH)
        rows.append(row)
    return header, rows, order


def _verdicts(tests: dict, ref: str, methods: list[str], what: str = "accuracy") -> str:
    """'vs joint — higher: a, b; lower: c; within noise: d, e; no test: f.'"""
    groups = {"significantly higher": [], "significantly lower": [], "within noise": [], "no test": []}
    for m in methods:
        res = tests.get(ref, {}).get(m)
        if res is None or res["mean_diff"] is None:
            continue
        if res["p"] is None:
            groups["no test"].append(m)
        elif not stats.significant(res):
            groups["within noise"].append(m)
        else:
            groups["significantly higher" if res["mean_diff"] > 0 else "significantly lower"].append(m)
    said = [f"{k}: {', '.join(v)}" for k, v in groups.items() if v]
    return f"Against {ref} ({what}, p < {stats.ALPHA}): " + ("; ".join(said) if said else "nothing to compare") + "."


def ablation_rows(runs: dict, names: list[str], params: dict, tests: dict):
    """DynCIM (first) and its ablations (methods of type dyncim) in run-list order, with the paired
    difference in accuracy from dyncim."""
    abl = [m for m in runs if params["methods"][m]["type"] == "dyncim"]
    abl.sort(key=lambda m: m != "dyncim")
    cols = [stats.primary_metric(runs), "macro_f1"] + [f"{n}_own" for n in names]
    summ = {m: {c: stats.summary(stats.per_seed({m: runs[m]}, c)[m].values()) for c in cols} for m in abl}
    header = ["variant", "seeds", "accuracy", "macro-F1"] + [f"{n} own head" for n in names] + ["Δ accuracy vs dyncim"]
    columns = [_bold_best([_fmt(summ[m][c]) for m in abl], [summ[m][c]["mean"] if summ[m][c] else None for m in abl])
               for c in cols]
    rows = []
    for i, m in enumerate(abl):
        d = "(reference)" if m == "dyncim" else diff_cell(tests["dyncim"][m]) if m in tests.get("dyncim", {}) else DASH
        rows.append([m, str(len(runs[m]))] + [col[i] for col in columns] + [d])
    return header, rows, abl


def robustness_tables(record: dict, order: list[str]) -> list[str]:
    """Per modality: accuracy per method at each noise level and with the modality missing,
    mean ± std over seeds recomputed from the per-run accuracies; best per column in bold."""
    out = []
    levels = record["levels"]
    methods = [m for m in order if m in record["runs"]] + [m for m in record["runs"] if m not in order]
    for name in record["names"]:
        header = ["method", "seeds"] + [("σ = 0 (clean)" if v == 0 else f"σ = {v:g}") for v in levels] + ["missing"]
        cols = []
        for k in range(len(levels) + 1):
            s = [stats.summary(r["modalities"][name]["levels"][k] if k < len(levels) else r["modalities"][name]["missing"]
                               for r in record["runs"][m].values()) for m in methods]
            cols.append(_bold_best([_fmt(x) for x in s], [x["mean"] if x else None for x in s]))
        rows = [[m, str(len(record["runs"][m]))] + [c[i] for c in cols] for i, m in enumerate(methods)]
        unit = "input" if "input_stats" in record else "feature"
        what = stats.PRIMARY_LABEL[record.get("metric", "acc")]   # micro-F1 on a multi-label set
        out += [f"**{name} corrupted** (test {what}; noise σ in units of {name}'s train {unit} std)", ""]
        out += _table(header, rows) + [""]
    if record.get("skipped"):
        out += ["Not in the sweep: " + "; ".join(f"{m} ({why})" for m, why in record["skipped"].items()) + ".", ""]
    return out


def sanity_section(params: dict, data: str, runs: dict, ranges: dict | None) -> list[str]:
    """The split a data set's numbers are on, and (for a source with published ranges) how its
    unimodal and joint accuracies compare with them (dyncim.report.sanity)."""
    info = sanity.info_of(params, data)
    if info is None:
        return []
    lines = [f"Split: {info['split']}.", ""]
    types = {m: params["methods"][m]["type"] for m in runs}
    record = sanity.check_data(info, runs, types, ranges)
    if record.get("ranged"):
        lines += [f"### {data}: sanity against published ranges", "",
                  "Each modality trained alone (`unimodal`) and the joint baseline against the accuracy "
                  "range published papers report (resources/sanity/ranges.yaml, with sources); outside it, "
                  "suspect the data before the method.", "", *sanity.lines(record), ""]
    return lines


def _settings(settings: dict) -> str:
    return ", ".join(f"{k} {json.dumps(v)}" for k, v in settings.items())


def selection_section(data: str, runs: dict) -> list[str]:
    """The settings chosen on validation (dyncim.train.select): every candidate of each method
    that compared some, with its validation score; the winner in bold."""
    rows = []
    for m, seeds in runs.items():
        record = next((r["selection"] for r in seeds.values() if "selection" in r), None)
        if record is None:
            continue
        for i, c in enumerate(record["candidates"]):
            won = i == record["chosen"]
            cells = [m, _settings(c["settings"]), f"{c['val']:.3f}", ", ".join(map(str, record["seeds"]))]
            rows.append([f"**{x}**" if won else x for x in cells] + ["chosen" if won else ""])
    if not rows:
        return []
    return [f"### {data}: settings chosen on validation", "",
            "Where no official code gives a method's value for this data set, its candidates trained on "
            "the seeds shown and the highest mean best-epoch validation figure won (ties: the first "
            "listed); its runs are the method's row above. The test split played no part.", "",
            *_table(["method", "candidate", "validation", "seeds", ""], rows), ""]


def _epoch_cell(epochs: list) -> str:
    """The first epoch of full admission of each seed, in seed order; 0 is 'never within the run'."""
    if all(e is None for e in epochs):
        return DASH
    return ", ".join(DASH if e is None else "never" if e == 0 else str(int(e)) for e in epochs)


def curricula_section(data: str, record: dict | None) -> list[str]:
    """DynCIM against BSS, its nearest relative (dyncim.report.curricula): the score, the paired
    test against DynCIM, and what each curriculum admitted over training."""
    if record is None:
        return []
    what = stats.PRIMARY_LABEL[record["metric"]]
    rows = [[r["method"], str(r["seeds"]), _fmt(r["score"]),
             "(reference)" if r["vs_dyncim"] is None else diff_cell(r["vs_dyncim"]),
             _fmt(r["admitted_first"]), _fmt(r["admitted_mean"]), _epoch_cell(r["admitted_full_epoch"])]
            for r in record["rows"]]
    said = [stats.describe(r["vs_dyncim"], r["method"], "dyncim", what) for r in record["rows"]
            if r["vs_dyncim"] is not None and r["vs_dyncim"]["mean_diff"] is not None]
    return [f"### {data}: two curricula, DynCIM and BSS", "",
            "BSS (balance-aware sequence sampling, IJCAI 2025) is the curriculum method closest to DynCIM. "
            "They admit different things: BSS chooses which training samples an epoch draws at all (`bss`, "
            "its curriculum variant: the easiest fraction λ_t of the training split, λ_t rising to 1; "
            "`bss-spl`, self-paced: every sample, the easy ones earlier), while DynCIM's self-paced weight "
            "chooses which samples of each batch its fused loss counts (v > 0; the modalities' own losses "
            "see every sample). Admitted: the fraction of the training samples admitted in the first epoch and "
            "its mean over all epochs (mean ± std over seeds), and per seed the first epoch that admitted "
            "every sample.", "",
            *_table(["method", "seeds", what, f"Δ {what} vs dyncim", "admitted, first epoch",
                     "admitted, mean over training", "all admitted from epoch (per seed)"], rows), "",
            *(f"- {t}" for t in said), ""]


def data_section(params: dict, data: str, runs: dict, out: Path, robustness: dict | None,
                 figures: dict | None, ranges: dict | None = None) -> list[str]:
    figures = figures or {}
    first = next(r for seeds in runs.values() for r in seeds.values())
    names = first.get("names", list(first["modalities"]))
    first = stats.primary_metric(runs)   # accuracy, or micro-F1 on a multi-label set
    acc = stats.per_seed(runs, first)
    tests = stats.compare(acc, REFERENCES)
    header, rows, order = ranked_rows(runs, names, tests)
    lines = [f"## {data}", "", *sanity_section(params, data, runs, ranges)]
    lines += ["### Ranked results", "", _seed_sentence(params, list(runs)), ""]
    lines += _table(header, rows) + [""]
    lines += [f"- {_verdicts(tests, r, order, stats.PRIMARY_LABEL[first])}" for r in REFERENCES if r in tests] + [""]
    lines += selection_section(data, runs)
    figs = [_link(figures[k], out, f"{data}: {alt}") for k, alt in
            (("accuracy", "test accuracy per method"), ("rebalance", "fused vs own-head accuracy"),
             ("curves", "validation curves")) if k in figures]
    if figs:
        lines += [" ".join(figs), ""]
    if sum(params["methods"][m]["type"] == "dyncim" for m in runs) > 1:
        h, r, abl = ablation_rows(runs, names, params, tests)
        lines += [f"### {data}: DynCIM ablations", "", *_table(h, r), ""]
        lines += [f"- {_verdicts({'dyncim': tests.get('dyncim', {})}, 'dyncim', [m for m in abl if m != 'dyncim'])}", ""]
    lines += curricula_section(data, curricula.compare(params, runs))
    if "dyncim" in figures:
        lines += [_link(figures["dyncim"], out, f"{data}: DynCIM's GMR, HMIR, β, gates, α and pace over training"), ""]
    if robustness is not None:
        lines += [f"### {data}: robustness (one modality corrupted at test time)", "",
                  (f"Gaussian noise of std σ × the modality's train feature std added to its test features "
                   f"(the same draw, seed {robustness['noise_seed']}, for every method and seed), or the modality "
                   f"missing (set to zeros, its train mean). σ = 0 is the clean test split."
                   if "input_stats" not in robustness else   # a store: noise on the model inputs
                   f"Gaussian noise added to the modality's test inputs (the same draw, seed "
                   f"{robustness['noise_seed']}, for every method and seed), or the modality missing; "
                   f"{robustness['unit']}. σ = 0 is the clean test split."), ""]
        lines += robustness_tables(robustness, order)
        if "robustness" in figures:
            lines += [_link(figures["robustness"], out, f"{data}: accuracy against corruption"), ""]
    return lines


def ablations(params: dict, methods) -> set[str]:
    """DynCIM's ablations among `methods`: the instances of type dyncim other than `dyncim`."""
    return {m for m in methods if params["methods"][m]["type"] == "dyncim" and m != "dyncim"}


def field_means(all_runs: dict, params: dict) -> dict:
    """{data: {method: mean test figure over seeds}}: accuracy, or micro-F1 on a multi-label set
    (the figure each data set's table ranks by); methods without a fused figure, and DynCIM's
    ablations (each data set's ablation table has them), left out."""
    out = {}
    for data, runs in all_runs.items():
        first, skip = stats.primary_metric(runs), ablations(params, runs)
        out[data] = {m: s["mean"] for m, v in stats.per_seed(runs, first).items()
                     if m not in skip and (s := stats.summary(v.values()))}
    return out


def field_section(summary: dict, out: Path, figure: str | Path | None) -> list[str]:
    """The first section: every method's mean rank over the run's data sets, the Friedman test and
    the Nemenyi critical difference (dyncim.report.ranks), and the critical-difference diagram."""
    datasets, fr, cd = summary["datasets"], summary["friedman"], summary["cd"]
    lines = ["## The field at a glance", "",
             f"Each data set ranks the methods by their mean test figure over seeds (1 = best; ties share "
             f"the mean of their ranks); the mean rank is over the {len(datasets)} data set(s) of this run, "
             f"for the {len(summary['methods'])} methods with a fused figure on every one (DynCIM's ablations "
             f"are in each data set's ablation table).", ""]
    rows = [[m, f"{r:.2f}", *(f"{summary['ranks'][d][m]:g}" for d in datasets)]
            for m, r in zip(summary["methods"], summary["mean_rank"])]
    lines += _table(["method", "mean rank", *datasets], rows) + [""]
    if fr["p"] is None:
        lines += [f"No Friedman test: it {fr['note']}.", ""]
    else:
        f_text = (f"; Iman and Davenport's F = {fr['F']:.2f}, {_fmt_p(fr['p_F'])}" if fr["F"] is not None
                  else "; every data set ranks the methods alike")
        lines += [f"Friedman test (are all methods alike?): χ² = {fr['chi2']:.2f}, {_fmt_p(fr['p'])}{f_text}. "
                  f"Nemenyi post-hoc at α = {summary['alpha']}: two methods whose mean ranks differ by "
                  f"{cd:.2f} (the critical difference) or more differ significantly; "
                  + (f"{len(summary['cliques'])} group(s) of methods lie within it (the bars of the diagram). "
                     if summary["cliques"] else "no two methods lie within it. ")
                  + f"With {len(datasets)} data set(s) the critical difference is wide: only a method that "
                  f"ranks far apart on every data set stands out.", ""]
    if figure is not None:
        lines += [_link(figure, out, "critical-difference diagram of the mean ranks"), ""]
    return lines


def build(params: dict, out: str | Path = paths.REPORT, root: str | Path = ".",
          robustness: dict | None = None, figures: dict | None = None, ranges: dict | None = None,
          ranks_figure: str | Path | None = None) -> str:
    """REPORT.md's text. `params`: resolved params or a report job's configuration (run.datasets,
    run.methods, methods.<m>.type and .seeds); evaluation JSONs are read under `root`
    (dyncim.paths); `robustness`: {data: robustness JSON path}; `figures`: {data: {kind: PNG path}}
    (paths relative to the current folder, or absolute; linked relative to `out`); `ranges`: the
    sanity ranges (dyncim.report.sanity.load_ranges; default: the shipped file)."""
    out = Path(out)
    robustness, figures = robustness or {}, figures or {}
    lines = ["# Report", "",
             "Test split; each run's model chosen on validation, never on test. Numbers are mean ± sample std "
             "over seeds; **bold**: the best mean of its column. Own head: the accuracy of that modality's own "
             "part of the prediction (for unimodal, the modality trained alone).", "",
             "Δ accuracy vs a reference: the method's test accuracy minus the reference's, averaged over the "
             "seeds both ran (so it can differ from the difference of the two means where their seeds differ). "
             "Significance: a two-sided paired t-test on those per-seed differences (same seeds, same splits): "
             "`*` p < 0.05, `**` p < 0.01; *within noise*: p ≥ 0.05, a difference these "
             "seeds cannot tell from seed-to-seed variation (not evidence that the methods are equal). Over n "
             f"seeds the test has n − 1 degrees of freedom{_typical_n(params)}, so only large, consistent "
             "differences pass; p-values are not corrected for the many comparisons.", ""]
    all_runs = {data: stats.load_runs(params, data, root) for data in params["run"]["datasets"]}
    summary = ranks.summarise(field_means(all_runs, params))
    if ranks_figure is not None:
        from . import figures as FIG
        FIG.critical_difference(summary, ranks_figure)
    lines += field_section(summary, out, ranks_figure)
    for data, runs in all_runs.items():
        rob = json.loads(Path(robustness[data]).read_text()) if data in robustness else None
        lines += data_section(params, data, runs, out, rob, figures.get(data), ranges)
    return "\n".join(lines).rstrip() + "\n"


def write(params: dict, out: str | Path = paths.REPORT, root: str | Path = ".",
          robustness: dict | None = None, figures: dict | None = None, ranges: dict | None = None,
          ranks_figure: str | Path | None = None) -> str:
    """Build REPORT.md (see `build`; `ranks_figure`: where the critical-difference diagram is
    drawn, None: not drawn) and write it atomically to `out`."""
    text = build(params, out, root, robustness, figures, ranges, ranks_figure)
    write_text(out, text)
    return text
