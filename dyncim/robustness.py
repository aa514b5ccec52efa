"""Robustness sweep: every trained model on the test split with one modality corrupted at test
time (no re-training).

Per modality m: Gaussian noise added to m's features at several levels, in units of m's feature
standard deviation on train (the feature files are standardised with train statistics, so one
unit of noise is one train std per feature), and m missing (zeroed: after standardisation, every
feature at its train mean). The noise is drawn once per data set and modality from a fixed seed,
independent of the method and of the run, and scaled by the level (the same draw at every level),
so every method and seed sees the very same corrupted inputs. Level 0 is the clean test split:
its accuracy equals the evaluate step's `acc`.

Fast: one process per data set; the corrupted copies of the test split are built once, stacked
into one input set, and each model makes one batched pass over it.

Methods that train their modalities as separate models (unimodal) have no fused prediction and
are left out (`skipped` in the output says so).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from . import paths, stats
from .atomic import write_json, write_text
from .config import load_schema

# The defaults of params.yaml's `robustness` (the schema writes them once): noise std in units of
# the modality's train feature std, and the seed of the noise draw.
_DEFAULTS = load_schema()["properties"]["robustness"]["properties"]
LEVELS = tuple(_DEFAULTS["levels"]["default"])
NOISE_SEED = _DEFAULTS["seed"]["default"]


def corrupted_copies(feats, index: torch.Tensor, levels=LEVELS, seed: int = NOISE_SEED):
    """The clean test split followed by, per modality m, one copy per noise level (m noisy, the
    others clean) and one with m missing (zeros). Returns (FeatureSet of the stacked copies,
    blocks: one (modality or None, level or 'missing' or 'clean') per block of len(index) rows)."""
    from .data.features import FeatureSet
    n = len(index)
    clean = [v[index] for v in feats.views]
    blocks = [(None, "clean")]
    stacked = [[x] for x in clean]
    for m, name in enumerate(feats.names):
        # one draw per (seed, modality): the same whatever the method, run or other modalities
        g = torch.Generator().manual_seed(seed * 1000 + m)
        noise = torch.randn(clean[m].shape, generator=g, dtype=torch.float32).to(clean[m].device)
        variants = [clean[m] + level * noise for level in levels] + [torch.zeros_like(clean[m])]
        blocks += [(name, float(level)) for level in levels] + [(name, "missing")]
        for k, x in enumerate(clean):
            stacked[k] += variants if k == m else [x] * len(variants)
    views = [torch.cat(s) for s in stacked]
    total = n * len(blocks)
    labels = feats.labels[index].repeat(len(blocks))
    split = torch.full((total,), 2, dtype=torch.int8)   # all test
    return FeatureSet(list(feats.names), feats.n_classes, views, labels, split, None), blocks


def _run_accuracies(built, big, blocks, n: int, batch_size: int) -> dict | None:
    """Per-block accuracy of one run's fused prediction (None for runs of separate parts)."""
    from .train.inference import evaluate_split
    if len(built) != 1:
        return None
    part, _, method, model = built[0]
    sub = big.subset(part["modalities"]) if len(part["modalities"]) < len(big.names) else big
    fused, _, _ = evaluate_split(model, method, sub, torch.arange(len(big.labels)), batch_size)
    # float32 like the evaluate step's torchmetrics accuracy, so that level 0 equals its `acc` exactly
    correct = (fused.argmax(1).cpu() == big.labels.cpu()).view(len(blocks), n).float().mean(1)
    out = {"clean": float(correct[0]), "modalities": {}}
    for (name, level), acc in zip(blocks[1:], correct[1:].tolist()):
        r = out["modalities"].setdefault(name, {"levels": [], "missing": None})
        if level == "missing":
            r["missing"] = acc
        else:
            r["levels"].append(acc)
    return out


def summarise(runs: dict, names: list[str], n_levels: int) -> dict:
    """{method: {'clean': stats, modality: {'levels': [stats per level], 'missing': stats}}},
    mean ± sample std over seeds (dyncim.stats.summary)."""
    _stats = stats.summary
    out = {}
    for method, seeds in runs.items():
        rs = list(seeds.values())
        out[method] = {"clean": _stats([r["clean"] for r in rs])}
        for name in names:
            out[method][name] = {
                "levels": [_stats([r["modalities"][name]["levels"][i] for r in rs]) for i in range(n_levels)],
                "missing": _stats([r["modalities"][name]["missing"] for r in rs])}
    return out


def sweep(params: dict, data: str, features_path: str | Path, root: str | Path = ".",
          levels=LEVELS, seed: int = NOISE_SEED, device: str = "cpu") -> dict:
    """Evaluate every method and seed of `params` (resolved params, or a job configuration with
    run.methods and methods.<m>.seeds) on data set `data` under corruption. Models are read from
    dyncim.paths.best_model under `root`. Returns the robustness record (see `write`)."""
    from .data import features
    from .evaluate import load_run
    root = Path(root)
    if "threads" in params:
        torch.set_num_threads(params["threads"])
    feats = features.load(features_path)
    test = feats.index("test")
    big, blocks = corrupted_copies(feats, test, levels, seed)
    big = big.to(device)
    runs, skipped = {}, {}
    for method in params["run"]["methods"]:
        for s in params["methods"][method]["seeds"]:
            ck, built = load_run(root / paths.best_model(data, method, s), feats, device)
            res = _run_accuracies(built, big, blocks, len(test), ck["train_cfg"]["eval_batch_size"])
            if res is None:
                skipped[method] = "trains each modality as a separate model: no fused prediction to corrupt"
                break
            runs.setdefault(method, {})[str(s)] = res
    return {"data": data, "names": list(feats.names), "methods": list(runs), "levels": [float(v) for v in levels],
            "noise_seed": seed, "n_test": len(test),
            "unit": "noise std in units of the modality's train feature std; missing = zeros (train mean)",
            "runs": runs, "skipped": skipped, "summary": summarise(runs, list(feats.names), len(levels))}


def csv_text(record: dict) -> str:
    """Long form for DVC plots: method, modality, corruption (noise|missing), level (empty for
    missing), acc_mean, acc_std, n."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "modality", "corruption", "level", "acc_mean", "acc_std", "n"])
    for method in record.get("methods", record["summary"]):
        s = record["summary"][method]
        for name in record["names"]:
            for level, st in zip(record["levels"], s[name]["levels"]):
                w.writerow([method, name, "noise", f"{level:g}", f"{st['mean']:.6f}", f"{st['std']:.6f}", st["n"]])
            st = s[name]["missing"]
            w.writerow([method, name, "missing", "", f"{st['mean']:.6f}", f"{st['std']:.6f}", st["n"]])
    return buf.getvalue()


def write(params: dict, data: str, features_path: str | Path, out_json: str | Path,
          out_csv: str | Path | None = None, root: str | Path = ".", levels=LEVELS,
          seed: int = NOISE_SEED, device: str = "cpu") -> dict:
    """Run the sweep on one data set; write its JSON (every run's accuracies under `runs`
    [method][seed] = {clean, modalities: {m: {levels: [acc per level], missing}}}, and their mean ±
    std over seeds under `summary`) and, if asked, the long-form CSV; both atomically."""
    record = sweep(params, data, features_path, root, levels, seed, device)
    write_json(out_json, record)
    if out_csv is not None:
        write_text(out_csv, csv_text(record))
    return record
