"""Aggregate the per-run evaluation JSONs into results/summary.{csv,md,json} (mean ± std over seeds)
and the DVC metrics folder.

summary.json holds every statistic (mean and std of each metric, method and data set); summary.csv
the same numbers in long form; summary.md is the table `make run` prints. The DVC metrics
(dyncim.paths.METRICS_DIR) keep only the headline figures a person compares across commits, one
small JSON per method ({data set: mean test accuracy}) and DynCIM's margin over joint, so that
`dvc metrics show` prints a row per method and a column per data set, and `dvc metrics diff`
lists only what moved. sanity.json says, per data set, which split its numbers are on and how its
unimodal and joint accuracies compare with the published ranges (dyncim.report.sanity); summary.md says
the same, and each accuracy outside its range is also a warning on stderr (the report's log).
"""
from __future__ import annotations

import csv
import io
import json
import statistics
import sys
from pathlib import Path

from .. import paths
from . import sanity, stats
from ..atomic import write_json, write_json_dir, write_text

# The margin's metrics file; '_' cannot start a method name (the schema), so it names no method.
MARGIN = "_dyncim-minus-joint"


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def collect(params: dict, root: Path) -> dict:
    """{data: {method: {metric: stats}}} over the run lists of params.yaml."""
    table = {}
    for data in params["run"]["datasets"]:
        table[data] = {}
        for method in params["run"]["methods"]:
            runs = []
            for seed in params["methods"][method]["seeds"]:
                path = root / paths.eval_file(data, method, seed)
                runs.append(json.loads(path.read_text()))
            metrics = {}
            for key in ("acc", "micro_f1", "macro_f1"):   # micro_f1: multi-label sets, in acc's place
                metrics[key] = _stats([r.get(key) for r in runs])
            for name in runs[0].get("names", runs[0]["modalities"]):  # in the data set's order
                for key in ("own", "probe"):
                    metrics[f"{name}_{key}"] = _stats([r["modalities"][name][key] for r in runs])
            for key in sorted({k for r in runs for k in r.get("acc_by_corruption", {})}):
                metrics[f"acc_{key}"] = _stats([r["acc_by_corruption"].get(key) for r in runs])
            for key in sorted({k for r in runs for k in r.get("diagnostics", {})}):
                metrics[key] = _stats([r.get("diagnostics", {}).get(key) for r in runs])
            table[data][method] = {k: v for k, v in metrics.items() if v is not None}
    return table


def _fmt(s):
    return "—" if s is None else f"{s['mean']:.3f} ± {s['std']:.3f}"


def _md_table(methods: dict, names: list[str], rank: bool) -> str:
    first = "micro_f1" if any("micro_f1" in v for v in methods.values()) else "acc"   # multi-label: micro-F1
    cols = [first, "macro_f1"] + [f"{n}_{k}" for n in names for k in ("own", "probe")]
    order = list(methods)
    if rank:
        order.sort(key=lambda m: -(methods[m].get(first) or {"mean": -1})["mean"])
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in order:
        lines.append(f"| {m} | " + " | ".join(_fmt(methods[m].get(c)) for c in cols) + " |")
    return "\n".join(lines)


def markdown(table: dict, params: dict, checks: dict | None = None) -> str:
    """`checks`: {data: dyncim.report.sanity.check_data record}, for each data set's sanity lines."""
    out = ["# Results (test split; model chosen on validation; mean ± std over seeds)", "",
           "`acc`, `macro_f1`: the fused prediction. Per modality, `own`: the modality's own part of the "
           "prediction; `probe`: a linear probe on its frozen encoder (how well the encoder learned).", ""]
    if any("micro_f1" in v for methods in table.values() for v in methods.values()):
        out[-1:] = ["Multi-label sets: `micro_f1` and `macro_f1` (threshold 0.5 on the sigmoid) in place of "
                    "`acc`; `own` and `probe` are micro-F1 there.", ""]
    for data, methods in table.items():
        names = [k[:-4] for k in next(iter(methods.values())) if k.endswith("_own")]
        seeds = {m: len(params["methods"][m]["seeds"]) for m in methods}
        info = sanity.info_of(params, data)
        out += [f"## {data}", ""] + ([f"split: {info['split']}", ""] if info else [])
        out += [f"seeds per method: {seeds}", "", _md_table(methods, names, rank=True), ""]
        if checks and checks.get(data, {}).get("ranged"):
            out += [f"### {data}: sanity (published ranges, resources/sanity/ranges.yaml)", "",
                    *sanity.lines(checks[data]), ""]
        ablations = {m: v for m, v in methods.items() if params["methods"][m]["type"] == "dyncim"}
        if len(ablations) > 1:
            out += [f"### {data}: DynCIM ablations", "", _md_table(ablations, names, rank=False), ""]
        extra = sorted({k for v in methods.values() for k in v
                        if k.startswith(("acc_", "gate_", "gmr_", "hmir_", "beta_"))})
        if extra:
            out += [f"### {data}: diagnostics", "", "| method | " + " | ".join(extra) + " |",
                    "|---" * (len(extra) + 1) + "|"]
            out += [f"| {m} | " + " | ".join(_fmt(v.get(k)) for k in extra) + " |" for m, v in methods.items()
                    if any(k in v for k in extra)]
            out.append("")
    return "\n".join(out)


def headline(params: dict, root: Path) -> dict:
    """The DVC metrics: {method: {data: mean test accuracy (micro-F1 on a multi-label set)}} (methods with a fused prediction) and
    {MARGIN: {data: DynCIM's accuracy minus joint's}}, the margin averaged over the seeds both ran
    (paired, as REPORT.md's Δ), where both are in the run list. Rounded to 4 decimals."""
    out: dict = {}
    for data in params["run"]["datasets"]:
        runs = stats.load_runs(params, data, root)
        acc = stats.per_seed(runs, stats.primary_metric(runs))   # micro-F1 on a multi-label set
        for method, values in acc.items():
            if values:
                out.setdefault(method, {})[data] = round(statistics.fmean(values.values()), 4)
        if acc.get("dyncim") and acc.get("joint"):
            diff = stats.paired_test(acc["dyncim"], acc["joint"])["mean_diff"]
            if diff is not None:
                out.setdefault(MARGIN, {})[data] = round(diff, 4)
    return out


def write(params: dict, root: Path = Path("."), outputs: dict[str, Path] | None = None,
          ranges: dict | None = None) -> str:
    """`params`: resolved params or a report job's configuration (dyncim.config.report_job);
    `outputs`: {"md", "csv", "json", "sanity", "metrics"} paths (default, and for each one left
    out: dyncim.paths under `root`); `ranges`: dyncim.report.sanity.load_ranges()'s mapping (default:
    the shipped file)."""
    out = {k: root / v for k, v in paths.SUMMARY.items()} | {"metrics": root / paths.METRICS_DIR} | (outputs or {})
    table = collect(params, root)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["data", "method", "metric", "mean", "std", "n"])
    for data, methods in table.items():
        for method, metrics in methods.items():
            for metric, s in metrics.items():
                w.writerow([data, method, metric, f"{s['mean']:.6f}", f"{s['std']:.6f}", s["n"]])
    write_text(out["csv"], buf.getvalue())
    checks = sanity.check_all(params, root, ranges)
    write_json(out["sanity"], checks)
    for line in sanity.warnings(checks):
        print(line, file=sys.stderr)
    md = markdown(table, params, checks)
    write_text(out["md"], md + "\n")
    write_json(out["json"], {d: {m: {f"{k}_{s}": round(v[s], 6) for k, v in ms.items() for s in ("mean", "std")}
                                          for m, ms in methods.items()} for d, methods in table.items()})
    write_json_dir(out["metrics"], headline(params, root))
    return md
