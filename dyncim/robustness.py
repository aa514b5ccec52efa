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

Feature stores (`dyncim.data.media_set.MediaSet`: spectrograms, video frames, MOSEI sequences) are
swept without copies of the test split (it can be GBs): the test split is read in chunks of the
run's `eval_batch_size` (the chunks the evaluate step uses, so that the clean accuracy equals its
`acc`), and per chunk each block's inputs are built (only modality m replaced) and passed through
the model, eval mode, no gradients. The unit of a modality is the std of its *model inputs* on
train: the mean and std of every input value over (up to) the first 512 train samples in index
order, evaluation transform, computed once per data set and recorded under `input_stats`: for
frames, the ImageNet-normalised pixel values; for spectrograms, the log-magnitudes (log |STFT| or
log filterbank energies, as stored); for sequences, the stored features. Missing = every input
value of m set to that scalar train mean (for standardised feature vectors that would be ~0, the
zeros of the tabular path). The noise is drawn per sample, shaped like one sample's input, from a
generator seeded by (noise seed, modality index, the sample's position in the test split) -- so
it does not depend on the method, the run, the chunking or the device (drawn on the host) -- and
scaled by level x std (the same draw at every level). Level 0 is the clean input: its
predictions are the clean block's.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from . import multilabel as ML
from . import paths, stats
from .atomic import write_json, write_text
from .config import load_schema

# The defaults of params.yaml's `robustness` (the schema writes them once): noise std in units of
# the modality's train feature std, and the seed of the noise draw.
_DEFAULTS = load_schema()["properties"]["robustness"]["properties"]
LEVELS = tuple(_DEFAULTS["levels"]["default"])
NOISE_SEED = _DEFAULTS["seed"]["default"]
STATS_SAMPLES = 512   # a store's input statistics: over (up to) this many train samples
STATS_CHUNK = 32      # ... read this many at a time


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
    return _by_block(correct, blocks)


def _by_block(correct: torch.Tensor, blocks) -> dict:
    """{clean, modalities: {m: {levels, missing}}} from one accuracy per block (`blocks` order)."""
    out = {"clean": float(correct[0]), "modalities": {}}
    for (name, level), acc in zip(blocks[1:], correct[1:].tolist()):
        r = out["modalities"].setdefault(name, {"levels": [], "missing": None})
        if level == "missing":
            r["missing"] = acc
        else:
            r["levels"].append(acc)
    return out


# --- feature stores (MediaSet): chunked, no copies of the test split ---------------------------

def blocks_of(names: list[str], levels=LEVELS) -> list[tuple]:
    """The blocks of the sweep, in corrupted_copies' order: clean, then per modality each level
    and missing."""
    out = [(None, "clean")]
    for name in names:
        out += [(name, float(level)) for level in levels] + [(name, "missing")]
    return out


def input_stats(data, n: int = STATS_SAMPLES, chunk: int = STATS_CHUNK) -> list[dict]:
    """Per modality: the mean and std of every model-input value of the first `n` train samples
    (index order, evaluation transform: `data.batch`), accumulated in float64 chunk by chunk
    (Chan's parallel variance), and the number of samples used."""
    train = data.index("train")[:n]
    acc = [(0, 0.0, 0.0) for _ in data.names]     # (values, mean, sum of squared deviations)
    for a in range(0, len(train), chunk):
        for m, x in enumerate(data.batch(train[a:a + chunk])):
            x = x.double()
            c, mu = x.numel(), float(x.mean())
            m2 = float(((x - mu) ** 2).sum())
            N, mean, M2 = acc[m]
            d = mu - mean
            acc[m] = (N + c, mean + d * c / (N + c), M2 + m2 + d * d * N * c / (N + c))
    return [{"mean": mean, "std": (M2 / (N - 1)) ** 0.5 if N > 1 else 0.0, "n_samples": len(train)}
            for N, mean, M2 in acc]


def sample_noise(x: torch.Tensor, pos, m: int, seed: int = NOISE_SEED) -> torch.Tensor:
    """Unit Gaussian noise shaped like `x` (one row per sample), row i drawn on the host from a
    generator seeded by (seed, m, pos[i]): pos = the samples' positions in the test split, m =
    the modality's index in the data set. The same values whatever the chunking, order, method or
    device. (numpy's SeedSequence keys the stream with every bit; torch's CPU generator keeps
    only the low 32 bits of its seed.)"""
    out = np.empty(tuple(x.shape), dtype=np.float32)
    for i, p in enumerate(torch.as_tensor(pos).tolist()):
        np.random.default_rng([seed, m, p]).standard_normal(out=out[i], dtype=np.float32)
    return torch.from_numpy(out).to(x.device)


def corrupt(clean: list[torch.Tensor], m: int, level, stat: dict, noise: torch.Tensor | None = None
            ) -> list[torch.Tensor]:
    """The inputs `clean` (one tensor per modality) with modality m replaced: `level` 'missing':
    every value at the train mean `stat['mean']`; a number: `clean[m] + level * stat['std'] *
    noise` (noise: sample_noise's unit draw; level 0: clean[m] itself)."""
    if level == "missing":
        x = torch.full_like(clean[m], stat["mean"])
    elif level == 0:
        x = clean[m]
    else:
        x = clean[m] + float(level) * stat["std"] * noise
    return [x if k == m else c for k, c in enumerate(clean)]


def corrupted_chunk(data, test: torch.Tensor, pos: torch.Tensor, m: int, level, stats: list[dict],
                    seed: int = NOISE_SEED) -> list[torch.Tensor]:
    """The model inputs of test samples test[pos] with modality m at `level` (a number or
    'missing'), as the sweep builds them: what every method and seed sees."""
    clean = data.batch(test[pos])
    noise = None if level == "missing" or level == 0 else sample_noise(clean[m], pos, m, seed)
    return corrupt(clean, m, level, stats[m], noise)


def _chunk_transforms(clean, pos, levels, stats, seed, used):
    """Per block (blocks_of order): the chunk's inputs, or None where they are the clean inputs
    (level 0, or a modality the model does not read). Lazily: one corrupted copy at a time."""
    yield clean
    for m, stat in enumerate(stats):
        noise = None
        for level in levels:
            if level == 0 or m not in used:
                yield None
                continue
            if noise is None:
                noise = sample_noise(clean[m], pos, m, seed)   # one draw, every level
            yield corrupt(clean, m, level, stat, noise)
        yield None if m not in used else corrupt(clean, m, "missing", stat)


@torch.no_grad()
def predict_chunks(model, method, data, index: torch.Tensor, batch_size: int, transforms,
                   modalities: list[int] | None = None, decide=None) -> list[torch.Tensor]:
    """Predicted classes of one model (its fused prediction, label-free, as evaluate_split takes
    it: `method.predict(model, model(xs))`, eval mode) on `data`'s samples `index`, read in chunks
    of `batch_size`; per chunk `transforms(clean inputs, positions in index)` yields the inputs of
    each block (None: the clean ones). `modalities`: the inputs the model reads (default all).
    Returns per block the predictions of every sample of `index`, on the CPU: the arg-max class,
    or what `decide(logits)` makes of the fused logits (multi-label: the predicted labels)."""
    decide = decide or (lambda z: z.argmax(1))
    was_training = model.training
    model.eval()
    preds = None
    for start in range(0, len(index), batch_size):
        pos = torch.arange(start, min(len(index), start + batch_size))
        clean = data.batch(index[pos.to(index.device)])
        got = []
        for xs in transforms(clean, pos):
            if xs is None and got:
                got.append(got[0])
                continue
            xs = clean if xs is None else xs
            xs = xs if modalities is None else [xs[k] for k in modalities]
            got.append(decide(method.predict(model, model(xs))).cpu())
        preds = [[p] for p in got] if preds is None else [a + [p] for a, p in zip(preds, got)]
    model.train(was_training)
    return [torch.cat(p) for p in preds]


def _media_accuracies(built, data, test, levels, stats, seed, batch_size) -> dict | None:
    """sweep's per-run record on a MediaSet (None for runs of separate parts)."""
    if len(built) != 1:
        return None
    part, _, method, model = built[0]
    used = list(part["modalities"])
    transforms = lambda clean, pos: _chunk_transforms(clean, pos, levels, stats, seed, used)
    y = data.labels[test].cpu()
    if ML.is_multilabel(data):   # micro-F1 per block, as the evaluate step's `micro_f1`
        preds = predict_chunks(model, method, data, test, batch_size, transforms, used, ML.predicted)
        f1 = torch.tensor([ML.f1(p.float(), y, "micro", logits=False) for p in preds])
        return _by_block(f1, blocks_of(list(data.names), levels))
    preds = predict_chunks(model, method, data, test, batch_size, transforms, used)
    # float32 like the evaluate step's torchmetrics accuracy, so that the clean block equals its `acc`
    correct = (torch.stack(preds) == y).float().mean(1)
    return _by_block(correct, blocks_of(list(data.names), levels))


def _media_unit(data, stats) -> str:
    what = {"frames": "ImageNet-normalised pixel values", "spectrogram": "log-magnitudes",
            "sequence": "stored sequence features", "flow": "optical flow / its bound"}
    kinds = "; ".join(f"{m.name}: {what.get(m.kind, m.kind)}" for m in data.mods)
    n = stats[0]["n_samples"] if stats else 0
    return (f"noise std in units of the modality's train input std (every model-input value of the first {n} "
            f"train samples, evaluation transform; {kinds}); missing = every input value at the modality's "
            f"train input mean (input_stats)")


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
    dyncim.paths.best_model under `root`. `features_path`: a feature file (FeatureSet: stacked
    corrupted copies, as always) or a store (its folder or JSON summary: MediaSet, chunked, see the
    module docstring), loaded with params' `resident_fraction`; `device`: where a store's models
    run ("auto": CUDA if there is one). Returns the robustness record (see `write`)."""
    from .data.media_set import MediaSet, load_data
    from .evaluate import load_run
    root = Path(root)
    if "threads" in params:
        torch.set_num_threads(params["threads"])
    feats = load_data(features_path, params.get("resident_fraction", 0.5))
    if isinstance(feats, MediaSet):
        return _media_sweep(params, data, feats, root, levels, seed, device)
    from .train.job import pick_device
    device = pick_device(device)
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


def _media_sweep(params, data, feats, root: Path, levels, seed, device) -> dict:
    """sweep on a MediaSet (see the module docstring)."""
    from .evaluate import load_run
    if str(device) == "auto":
        from .train.job import pick_device
        device = pick_device("auto")
    feats = feats.to(device)
    test = feats.index("test")
    st = input_stats(feats)
    runs, skipped = {}, {}
    for method in params["run"]["methods"]:
        for s in params["methods"][method]["seeds"]:
            ck, built = load_run(root / paths.best_model(data, method, s), feats, device)
            res = _media_accuracies(built, feats, test, levels, st, seed, ck["train_cfg"]["eval_batch_size"])
            if res is None:
                skipped[method] = "trains each modality as a separate model: no fused prediction to corrupt"
                break
            runs.setdefault(method, {})[str(s)] = res
    names = list(feats.names)
    return {"data": data, "names": names, "methods": list(runs), "levels": [float(v) for v in levels],
            **({"metric": "micro_f1"} if ML.is_multilabel(feats) else {}),   # else accuracy
            "noise_seed": seed, "n_test": len(test), "unit": _media_unit(feats, st),
            "input_stats": dict(zip(names, st)),
            "runs": runs, "skipped": skipped, "summary": summarise(runs, names, len(levels))}


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
    std over seeds under `summary`; a store's record adds `input_stats`: per modality the train
    mean, std and number of samples of its model inputs) and, if asked, the long-form CSV; both
    atomically."""
    record = sweep(params, data, features_path, root, levels, seed, device)
    write_json(out_json, record)
    if out_csv is not None:
        write_text(out_csv, csv_text(record))
    return record
