"""The report's figures, per data set (matplotlib, Agg backend, PNG), from what the pipeline
already wrote: evaluation JSONs, per-epoch curves, TensorBoard logs and the robustness sweep.
Nothing is re-run.

One function per figure kind, each taking its numbers and an output path and writing the PNG
atomically; `write_all` reads a data set's files and draws every kind. Figures are drawn on
matplotlib's Agg canvas without pyplot (no global backend or figure state). PNGs carry no software
version or date, so the same numbers give the same bytes.
"""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from .. import paths
from . import stats
from ..atomic import atomic_path

KINDS = paths.FIGURE_KINDS
DPI = 100
# DynCIM's per-epoch TensorBoard scalars (dyncim.methods.dyncim.DynCIM.log)
PER_MODALITY = (("gmr", "GMR"), ("hmir", "HMIR"), ("beta", "β (× M)"), ("gate_mean", "mean gate"))
GLOBAL = (("alpha", "α"), ("pace_admitted", "admitted fraction of the pace"))


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    return out


def _subplots(*args, **kw):
    fig = Figure(figsize=kw.pop("figsize"))
    return fig, fig.subplots(*args, **kw)


def _colors(n):
    """Distinct colours: tab10 up to 10 lines; beyond, tab20's dark shades then its light ones."""
    if n <= 10:
        return [matplotlib.colormaps.get_cmap("tab10")(i) for i in range(n)]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [matplotlib.colormaps.get_cmap("tab20")(order[i % 20]) for i in range(n)]


REFERENCE_COLORS = {"joint": "black", "dyncim": "tab:red"}
# tab20 without its reds (dyncim's): dark shades, then light ones
_OTHERS = [matplotlib.colormaps.get_cmap("tab20")(i) for i in (0, 2, 4, 8, 10, 12, 14, 16, 18, 1, 3, 5, 9, 11, 13, 15, 17, 19)]


def _method_styles(labels) -> list[tuple]:
    """(colour, line style) per label: joint black and dyncim red in every figure; the others
    distinct colours, dashed once the palette wraps."""
    out, k = [], 0
    for lab in labels:
        if lab in REFERENCE_COLORS:
            out.append((REFERENCE_COLORS[lab], "-"))
        else:
            out.append((_OTHERS[k % len(_OTHERS)], ("-", "--", ":")[(k // len(_OTHERS)) % 3]))
            k += 1
    return out


def _mean_std(series: list[list[tuple[float, float]]]):
    """Steps and mean ± std over seeds of (step, value) series (steps every seed has)."""
    common = sorted(set.intersection(*(set(s for s, _ in ser) for ser in series))) if series else []
    by = [dict(ser) for ser in series]
    means, stds = [], []
    for step in common:
        st = stats.summary([b[step] for b in by])
        means.append(st["mean"])
        stds.append(st["std"])
    return common, means, stds


# --- figure kinds ----------------------------------------------------------------------------

def accuracy(acc: dict, out, title: str = "", what: str = "accuracy") -> Path:
    """`acc`: {method: {seed: test accuracy}} (`what`: the figure's name, micro-F1 on a multi-label set). Ranked dots with ± std error bars over seeds (dots,
    not bars: the axis does not start at 0); joint and dyncim in their own colours."""
    rows = [(m, stats.summary(v.values())) for m, v in acc.items() if v]
    rows.sort(key=lambda r: r[1]["mean"])
    fig, ax = _subplots(figsize=(7, max(3.0, 1.2 + 0.28 * len(rows))))
    for i, (m, s) in enumerate(rows):
        ax.errorbar(s["mean"], i, xerr=s["std"], fmt="o", color=REFERENCE_COLORS.get(m, "tab:blue"),
                    ecolor="0.3", capsize=3, ms=6)
    ax.set_yticks(range(len(rows)), [f"{m} (n={s['n']})" for m, s in rows])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(f"test {what} (mean ± std over seeds)")
    ax.set_title(title or f"test {what} per method")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def rebalance(fused: dict, own: dict, out, title: str = "", what: str = "accuracy") -> Path:
    """`fused`: {method: {seed: acc}}; `own`: {modality: {method: {seed: own-head acc}}}. Per method
    (ranked by fused accuracy), the fused accuracy and each modality's own-head accuracy, mean ±
    std: the spread of the own heads shows how far a method rebalances its modalities."""
    methods = [m for m in fused if fused[m]] + [m for m in next(iter(own.values()), {}) if not fused.get(m)]
    key = {m: stats.summary(fused[m].values())["mean"] if fused.get(m) else -1.0 for m in methods}
    methods.sort(key=lambda m: key[m])
    names = list(own)
    colors = _colors(len(names) + 1)
    fig, ax = _subplots(figsize=(7.5, max(3.0, 1.4 + 0.3 * len(methods))))
    for i, m in enumerate(methods):
        pts = [stats.summary(own[n].get(m, {}).values()) for n in names]
        xs = [p["mean"] for p in pts if p]
        if xs:
            ax.plot([min(xs), max(xs)], [i, i], color="0.75", lw=3, zorder=1)
    for k, n in enumerate(names):
        for i, m in enumerate(methods):
            s = stats.summary(own[n].get(m, {}).values())
            if s:
                ax.errorbar(s["mean"], i, xerr=s["std"], fmt="o", color=colors[k + 1], ms=5, capsize=2,
                            label=f"{n} own head", zorder=2)
    for i, m in enumerate(methods):
        s = stats.summary(fused.get(m, {}).values())
        if s:
            ax.errorbar(s["mean"], i, xerr=s["std"], fmt="D", color="black", ms=5, capsize=2,
                        label="fused", zorder=3)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), loc="lower right", fontsize=8)
    ax.set_yticks(range(len(methods)), methods)
    ax.set_xlabel(f"test {what} (mean ± std over seeds)")
    ax.set_title(title or f"fused vs each modality's own-head {what}")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def curves(runs: dict, groups: dict, out, title: str = "", column: str = "val_acc") -> Path:
    """`runs`: {label: [rows of one seed's curve CSV, ...]} (unimodal parts as separate labels);
    `groups`: {panel title: [labels]}. Validation accuracy per epoch, mean over seeds with a ± std
    band, one panel per group."""
    fig, axes = _subplots(1, len(groups), figsize=(6.5 * len(groups), 4.8), squeeze=False)
    for ax, (panel, labels) in zip(axes[0], groups.items()):
        for (c, ls), label in zip(_method_styles(labels), labels):
            series = [[(float(r["epoch"]), float(r[column])) for r in rows if r.get(column) not in (None, "")]
                      for rows in runs.get(label, [])]
            series = [s for s in series if s]
            if not series:
                continue
            x, mu, sd = _mean_std(series)
            ref = label in REFERENCE_COLORS   # joint and dyncim drawn on top
            ax.plot(x, mu, "--" if ":" in label else ls, color=c, lw=2.0 if ref else 1.2, label=label,
                    zorder=3 if ref else 2)
            ax.fill_between(x, [a - b for a, b in zip(mu, sd)], [a + b for a, b in zip(mu, sd)], color=c, alpha=0.15)
        ax.set_title(panel)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{column} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out)


def trajectories(scalars: dict, names: list[str], out, title: str = "") -> Path:
    """`scalars`: {seed: {tag: [(epoch, value)]}} of DynCIM runs (tags `dyncim/<kind>/<modality>`,
    `dyncim/alpha`, `dyncim/pace_admitted`). Six panels: GMR, HMIR, β, mean gate per modality, α and
    the pace's admitted fraction, mean over seeds with a ± std band."""
    fig, axes = _subplots(2, 3, figsize=(14, 7.5))
    colors = _colors(len(names))
    panels = [(k, lab, [(n, f"dyncim/{k}/{n}") for n in names]) for k, lab in PER_MODALITY]
    panels += [(k, lab, [(None, f"dyncim/{k}")]) for k, lab in GLOBAL]
    for ax, (_, label, tags) in zip(axes.flat, panels):
        for i, (n, tag) in enumerate(tags):
            series = [sc[tag] for sc in scalars.values() if sc.get(tag)]
            if not series:
                continue
            x, mu, sd = _mean_std(series)
            c = colors[i] if n else "black"
            ax.plot(x, mu, color=c, lw=1.4, label=n)
            ax.fill_between(x, [a - b for a, b in zip(mu, sd)], [a + b for a, b in zip(mu, sd)], color=c, alpha=0.2)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if any(n for n, _ in tags) and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title or f"DynCIM over training (mean ± std over {len(scalars)} seeds)")
    fig.tight_layout()
    return _save(fig, out)


def robustness(record: dict, out, title: str = "") -> Path:
    """`record`: dyncim.evaluation.robustness's output. Per modality, test accuracy against the noise level
    (and, at the right, the modality missing), mean over seeds, one line per method (± std error
    bars for joint and dyncim)."""
    names, levels, summ = record["names"], record["levels"], record["summary"]
    methods = [m for m in record.get("methods", summ) if m in summ]
    styles = _method_styles(methods)
    fig, axes = _subplots(1, len(names), figsize=(5.2 * len(names) + 2.5, 4.6), squeeze=False, sharey=True)
    xs = list(range(len(levels) + 1))
    for ax, name in zip(axes[0], names):
        for (c, ls), m in zip(styles, methods):
            pts = summ[m][name]["levels"] + [summ[m][name]["missing"]]
            mu, sd = [p["mean"] for p in pts], [p["std"] for p in pts]
            ref = m in ("joint", "dyncim")   # the two references stand out, with their error bars
            ax.errorbar(xs[:-1], mu[:-1], yerr=sd[:-1] if ref else None, fmt=ls, color=c, lw=2.2 if ref else 1.0,
                        capsize=2, label=m, zorder=3 if ref else 2)
            ax.errorbar(xs[-1:], mu[-1:], yerr=sd[-1:] if ref else None, fmt="o", color=c, ms=4, capsize=2)
        ax.set_xticks(xs, [f"{v:g}" for v in levels] + ["missing"])
        ax.set_xlabel(f"noise on {name} (× train std)")
        ax.set_title(f"{name} corrupted")
        ax.grid(alpha=0.3)
    what = stats.PRIMARY_LABEL[record.get("metric", "acc")]   # micro-F1 on a multi-label set
    axes[0][0].set_ylabel(f"test {what} (mean over seeds; ± std for joint, dyncim)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out)


# --- reading what the pipeline wrote ---------------------------------------------------------

def critical_difference(summary: dict, out, title: str = "") -> Path:
    """A critical-difference diagram (Demšar 2006, Fig. 1) of `summary` (dyncim.report.ranks.summarise):
    the methods on an axis of mean rank (1, the best, on the left), the CD as a bar above it, and a
    thick line under each group of methods no further apart than the CD."""
    methods, ranks, cd = summary["methods"], summary["mean_rank"], summary["cd"]
    k = len(methods)
    half = (k + 1) // 2
    fig, ax = _subplots(figsize=(8, 2.2 + 0.26 * half))
    ax.set_xlim(0.5, max(k, 2) + 0.5)
    ax.set_ylim(-(half + 1.5), 2.5)
    ax.hlines(0, 1, max(k, 2), color="black")
    for r in range(1, max(k, 2) + 1):
        ax.vlines(r, 0, 0.2, color="black")
        ax.text(r, 0.35, str(r), ha="center", va="bottom", fontsize=8)
    for i, (m, r) in enumerate(zip(methods, ranks)):
        left = i < half
        y = -(i + 1) if left else -(k - i)
        x_text = 0.6 if left else max(k, 2) + 0.4
        color = REFERENCE_COLORS.get(m, "0.2")
        ax.plot([r, r, x_text], [0, y, y], color=color, lw=0.8)
        ax.text(x_text, y, f"{m} ({r:.2f})", ha="right" if left else "left", va="center", fontsize=8,
                color=color, clip_on=False)
    if cd is not None:
        ax.plot([1, min(1 + cd, max(k, 2))], [1.6, 1.6], color="black", lw=2)
        ax.text(1, 1.8, f"CD = {cd:.2f} (Nemenyi, α = {summary['alpha']})", ha="left", va="bottom", fontsize=8)
    pos = dict(zip(methods, ranks))
    for j, group in enumerate(summary["cliques"]):
        y = -0.35 - 0.25 * j
        ax.plot([pos[group[0]] - 0.05, pos[group[-1]] + 0.05], [y, y], color="0.1", lw=3)
    ax.axis("off")
    fr = summary["friedman"]
    note = (f"Friedman χ² = {fr['chi2']:.2f}, p = {fr['p']:.3g}" if fr["p"] is not None else fr["note"])
    ax.set_title(title or f"mean rank over {len(summary['datasets'])} data sets ({note})", fontsize=9)
    fig.subplots_adjust(left=0.2, right=0.8, top=0.88, bottom=0.02)
    return _save(fig, out)


def read_curve(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_scalars(run_dir: str | Path, prefix: str = "dyncim/") -> dict:
    """{tag: [(step, value)]} of a TensorBoard run folder's scalars whose tag starts with `prefix`
    (events a resumed run purged are dropped, as TensorBoard drops them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 1, "tensors": 1,
                                                       "images": 1, "audio": 1, "compressedHistograms": 1})
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"] if t.startswith(prefix)}


def curve_groups(params: dict, labels: list[str]) -> dict:
    """Panels of the validation-curve figure: the compared methods (with dyncim), and DynCIM with
    its ablations (methods of type dyncim)."""
    def base(label):
        return label.split(":")[0]
    abl = [lab for lab in labels if params["methods"][base(lab)]["type"] == "dyncim"]
    main = [lab for lab in labels if lab not in abl or base(lab) == "dyncim"]
    groups = {"methods": main}
    if len(abl) > 1:
        groups["DynCIM and its ablations"] = abl
    return groups


def default_outputs(data: str, out_dir: str | Path | None = None) -> dict:
    """{kind: dyncim.paths.figure_file(data, kind)} (or <out_dir>/<kind>.png)."""
    if out_dir is not None:
        return {k: Path(out_dir) / f"{k}.png" for k in KINDS}
    return {k: Path(paths.figure_file(data, k)) for k in KINDS}


def write_all(params: dict, data: str, outputs: dict, root: str | Path = ".",
              robustness_json: str | Path | None = None, trajectory_method: str = "dyncim") -> dict:
    """Draw every figure of data set `data` that `outputs` ({kind: path}, kinds of KINDS) asks
    for, from the evaluation JSONs, curves and TensorBoard logs under `root` (dyncim.paths) and the
    robustness JSON. `params`: resolved params or a report job's configuration (run.methods,
    methods.<m>.type and .seeds). Returns {kind: path written}."""
    import json
    root = Path(root)
    written = {}
    runs = stats.load_runs(params, data, root)
    first = next(r for seeds in runs.values() for r in seeds.values())
    names = first.get("names", list(first["modalities"]))   # in the data set's order
    first = stats.primary_metric(runs)   # acc, or micro_f1 on a multi-label set
    what = stats.PRIMARY_LABEL[first]
    if "accuracy" in outputs:
        written["accuracy"] = accuracy(stats.per_seed(runs, first), outputs["accuracy"], f"{data}: test {what}", what)
    if "rebalance" in outputs:
        own = {n: stats.per_seed(runs, f"{n}_own") for n in names}
        written["rebalance"] = rebalance(stats.per_seed(runs, first), own, outputs["rebalance"],
                                         f"{data}: fused vs own-head {what} per modality", what)
    if "curves" in outputs:
        labelled: dict[str, list] = {}
        for m in params["run"]["methods"]:
            for s in params["methods"][m]["seeds"]:
                rows = read_curve(root / paths.curves_file(data, m, s))
                parts = list(dict.fromkeys(r.get("part", "all") for r in rows))
                for part in parts:
                    label = m if part in ("all", "") else f"{m}:{part}"
                    labelled.setdefault(label, []).append([r for r in rows if r.get("part", "all") == part])
        written["curves"] = curves(labelled, curve_groups(params, list(labelled)), outputs["curves"],
                                   f"{data}: validation {what} per epoch", column=f"val_{first}")
    if "dyncim" in outputs:
        m = trajectory_method
        if m not in params["run"]["methods"]:
            raise ValueError(f"figure 'dyncim': {m} is not in the run list; leave the figure out")
        scalars = {s: read_scalars(root / paths.runs_dir(data, m, s)) for s in params["methods"][m]["seeds"]}
        written["dyncim"] = trajectories(scalars, names, outputs["dyncim"],
                                         f"{data}: {m} over training (mean ± std over {len(scalars)} seeds)")
    if "robustness" in outputs:
        if robustness_json is None:
            raise ValueError("the robustness figure needs the robustness sweep's JSON")
        record = json.loads(Path(robustness_json).read_text())
        written["robustness"] = robustness(record, outputs["robustness"],
                                           f"{data}: test {what} with one modality corrupted")
    return written
