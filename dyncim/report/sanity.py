"""Sanity ranges: each paper-scale run's accuracies against what published papers report
(`resources/sanity/ranges.yaml`, percent), so that a broken loader (accuracy at chance) or a leak
between splits (far above every paper) shows in the report instead of passing as a result.

What is checked, per data set whose source and protocol (dyncim.config.data_info) have ranges:
- every method of type `unimodal`: each modality's accuracy trained alone (`modalities.<name>.own`
  of its evaluation JSONs) against `unimodal.<name>.range`;
- every method of type `joint`: its fused accuracy (`acc`) against `joint.range`.
The mean over seeds is compared with [low, high] (inclusive); each seed's value is listed too.
Sets without ranges (the embedded ones; another protocol, e.g. CREMA-D's actor-disjoint split)
get a `skipped` reason and are never flagged. Torch-free.
"""
from __future__ import annotations

import statistics
from pathlib import Path

import yaml

RANGES_FILE = Path(__file__).resolve().parents[2] / "resources" / "sanity" / "ranges.yaml"


def load_ranges(path: str | Path = RANGES_FILE) -> dict:
    """The ranges file, checked: `unit: percent`, and per set an optional `protocol` mapping and
    `range: [low, high]` entries with 0 <= low <= high <= 100; errors name the file and key."""
    path = Path(path)
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or doc.get("unit") != "percent" or not isinstance(doc.get("sets"), dict):
        raise ValueError(f"{path}: expected `unit: percent` and a `sets:` mapping")
    for name, entry in doc["sets"].items():
        if not isinstance(entry.get("protocol", {}), dict):
            raise ValueError(f"{path}: sets.{name}.protocol: expected a mapping")
        ranged = [(f"unimodal.{m}", e) for m, e in (entry.get("unimodal") or {}).items()]
        ranged += [("joint", entry["joint"])] if "joint" in entry else []
        for key, e in ranged:
            r = e.get("range") if isinstance(e, dict) else None
            if not (isinstance(r, list) and len(r) == 2 and all(isinstance(x, (int, float)) for x in r)
                    and 0 <= r[0] <= r[1] <= 100):
                raise ValueError(f"{path}: sets.{name}.{key}.range: expected [low, high] in percent, "
                                 f"0 <= low <= high <= 100; got {r!r}")
    return doc


def status(value: float, low_pct: float, high_pct: float) -> str:
    """'ok', 'below' or 'above': an accuracy (fraction) against a range in percent (inclusive)."""
    pct = 100 * value
    return "below" if pct < low_pct else "above" if pct > high_pct else "ok"


def _matches(protocol: dict, wanted: dict) -> bool:
    return all(protocol.get(k) in (v if isinstance(v, list) else [v]) for k, v in wanted.items())


def _check(method: str, what: str, values: dict, entry: dict, missing: str = "") -> dict:
    low, high = entry["range"]
    row = {"method": method, "what": what, "range_percent": [low, high]}
    if not values:
        return {**row, "status": "unchecked", "why": missing or "no result"}
    mean = statistics.fmean(values.values())
    return {**row, "mean": round(mean, 6), "seeds": {str(s): v for s, v in values.items()},
            "status": status(mean, low, high),
            "seeds_outside": [str(s) for s, v in values.items() if status(v, low, high) != "ok"],
            "reported": entry.get("reported", []), "note": " ".join(str(entry.get("note", "")).split())}


def check_data(info: dict | None, runs: dict, types: dict, ranges: dict | None = None) -> dict:
    """The sanity record of one data set. `info`: dyncim.config.data_info (None: not known, as in
    a hand-made report configuration); `runs`: {method: {seed: evaluation JSON}}
    (dyncim.report.stats.load_runs); `types`: {method: method type}; `ranges`: load_ranges()'s mapping
    (None: the shipped file). Returns {source, split, checks: [...], flagged} or, where nothing
    applies, {..., skipped: why}."""
    if info is None:
        return {"checks": [], "flagged": False, "ranged": False, "skipped": "the data set's source is not known here"}
    ranges = load_ranges() if ranges is None else ranges
    out = {"source": info["source"], "split": info["split"], "checks": [], "flagged": False}
    entry = ranges["sets"].get(info["source"])
    out["ranged"] = entry is not None    # the source has an entry (the report shows its section)
    if entry is None:
        return {**out, "skipped": f"no published range for source {info['source']!r}"}
    if not _matches(info.get("protocol", {}), entry.get("protocol", {})):
        return {**out, "skipped": f"the ranges are for protocol {entry.get('protocol')}; "
                                  f"this set's is {info.get('protocol')}"}
    if "unimodal" not in entry and "joint" not in entry:
        return {**out, "skipped": " ".join(str(entry.get("note", "no range given")).split())}
    for method, seeds in runs.items():
        if types.get(method) == "unimodal":
            for name, e in (entry.get("unimodal") or {}).items():
                values = {s: r["modalities"][name]["own"] for s, r in seeds.items() if name in r.get("modalities", {})}
                have = sorted({n for r in seeds.values() for n in r.get("modalities", {})})
                out["checks"].append(_check(method, f"{name} alone", values, e,
                                            f"the results have no modality {name!r} (they have {have})"))
        elif types.get(method) == "joint" and "joint" in entry:
            values = {s: r["acc"] for s, r in seeds.items() if r.get("acc") is not None}
            out["checks"].append(_check(method, "fused", values, entry["joint"]))
    out["flagged"] = any(c["status"] in ("below", "above") for c in out["checks"])
    return out


def check_all(params: dict, root: str | Path = ".", ranges: dict | None = None) -> dict:
    """{data: check_data(...)} over the run list of `params` (a report job, dyncim.config.report_job,
    whose `data` entries say each set's source, split and protocol)."""
    from . import stats
    ranges = load_ranges() if ranges is None else ranges
    types = {m: params["methods"][m]["type"] for m in params["run"]["methods"]}
    return {d: check_data(info_of(params, d), stats.load_runs(params, d, root), types, ranges)
            for d in params["run"]["datasets"]}


def info_of(params: dict, data: str) -> dict | None:
    """A data set's dyncim.config.data_info as a report job carries it (dyncim.config.report_job:
    `data.<name>`); None without one (a hand-made configuration). Read from the job rather than
    computed here, so that the report step does not import the config module and what it pulls in."""
    return params.get("data", {}).get(data)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def lines(record: dict) -> list[str]:
    """Markdown bullet lines for one data set's record: one per check, flagged ones marked."""
    if record.get("skipped"):
        return [f"- not checked: {record['skipped']}."]
    out = []
    for c in record["checks"]:
        low, high = c["range_percent"]
        if c["status"] == "unchecked":
            out.append(f"- {c['method']}, {c['what']}: unchecked ({c['why']}).")
            continue
        mark = "ok" if c["status"] == "ok" else f"**OUTSIDE: {c['status']} the published range**"
        seeds = f"; seeds outside: {', '.join(c['seeds_outside'])}" if c["seeds_outside"] and c["status"] == "ok" else ""
        out.append(f"- {c['method']}, {c['what']}: {_pct(c['mean'])} % vs published [{low:g}, {high:g}] % — {mark}{seeds}")
    return out or ["- no unimodal or joint run to check."]


def warnings(checks: dict) -> list[str]:
    """One line per flagged check, for the log."""
    out = []
    for data, rec in checks.items():
        for c in rec.get("checks", []):
            if c["status"] in ("below", "above"):
                low, high = c["range_percent"]
                hint = "a broken loader?" if c["status"] == "below" else "a leak between splits?"
                out.append(f"warning: {data}: {c['method']} {c['what']} accuracy {_pct(c['mean'])} % is "
                           f"{c['status']} the published range [{low:g}, {high:g}] % ({hint}; "
                           f"resources/sanity/ranges.yaml)")
    return out
