"""Robustness sweep: every trained model on the test split with one modality corrupted at test
time (no re-training).

Per modality m: Gaussian noise added to m's model inputs at several levels, in units of m's
spread on train, and m missing (every input value at m's train mean). The data set says what its
unit is and draws the noise (`dyncim.data.sets.dataset.DataSet`: corruption_stats, corruption_noise,
corrupt, corruption_record):
- a feature file (FeatureSet) is standardised with train statistics, so one unit of noise is one
  train std per feature and missing is zeros; the noise is one draw per data set and modality
  from a fixed seed over the whole test split;
- a feature store (MediaSet: spectrograms, video frames, MOSEI sequences, frozen vectors) measures
  the std and mean of every model-input value over (up to) the first 512 train samples (recorded
  under `input_stats`); its noise is drawn per sample from a generator seeded by (noise seed,
  modality, the sample's position in the test split).
Either way the noise is independent of the method, the run and the chunking, and scaled by the
level (the same draw at every level), so every method and seed sees the very same corrupted
inputs. Level 0 is the clean input: its accuracy equals the evaluate step's `acc`.

One sweep for every data set, without copies of the test split (a store's can be GBs): the test
split is read in chunks of the run's `eval_batch_size` (the chunks the evaluate step uses, so that
the clean accuracy equals its `acc`), and per chunk each block's inputs are built (only modality
m replaced) and passed through the model, eval mode, no gradients.

Methods that train their modalities as separate models (unimodal) have no fused prediction and
are left out (`skipped` in the output says so). On a multi-label set the figure is micro-F1
(`metric`), as the evaluate step's `micro_f1`.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from .. import multilabel as ML
from .. import paths
from ..report import stats
from ..atomic import write_json, write_text
from ..config import load_schema

# The defaults of params.yaml's `robustness` (the schema writes them once): noise std in units of
# the modality's train feature std, and the seed of the noise draw.
_DEFAULTS = load_schema()["properties"]["robustness"]["properties"]
LEVELS = tuple(_DEFAULTS["levels"]["default"])
NOISE_SEED = _DEFAULTS["seed"]["default"]


def blocks_of(names: list[str], levels=LEVELS) -> list[tuple]:
    """The blocks of the sweep: clean, then per modality each level and missing; one (modality
    or None, level or 'missing' or 'clean') each."""
    out = [(None, "clean")]
    for name in names:
        out += [(name, float(level)) for level in levels] + [(name, "missing")]
    return out


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


def corrupted_chunk(data, test: torch.Tensor, pos: torch.Tensor, m: int, level,
                    seed: int = NOISE_SEED) -> list[torch.Tensor]:
    """The model inputs of test samples test[pos] with modality m at `level` (a number or
    'missing'), as the sweep builds them: what every method and seed sees. `data`: a DataSet."""
    clean = data.batch(test[pos])
    noise = None if level == "missing" or level == 0 else data.corruption_noise(m, pos, len(test), seed)
    return data.corrupt(clean, m, level, noise)


def _chunk_transforms(data, clean, pos, n: int, levels, seed, used):
    """Per block (blocks_of order): the chunk's inputs, or None where they are the clean inputs
    (level 0, or a modality the model does not read). Lazily: one corrupted copy at a time.
    `pos`: the chunk's positions in the swept index of `n` samples."""
    yield clean
    for m in range(len(clean)):
        noise = None
        for level in levels:
            if level == 0 or m not in used:
                yield None
                continue
            if noise is None:
                noise = data.corruption_noise(m, pos, n, seed)   # one draw, every level
            yield data.corrupt(clean, m, level, noise)
        yield None if m not in used else data.corrupt(clean, m, "missing")


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


def _accuracies(built, data, test, levels, seed, batch_size) -> dict | None:
    """One run's record: the figure of each block (None for runs of separate parts)."""
    if len(built) != 1:
        return None
    part, _, method, model = built[0]
    used = list(part["modalities"])
    transforms = lambda clean, pos: _chunk_transforms(data, clean, pos, len(test), levels, seed, used)
    y = data.labels[test].cpu()
    blocks = blocks_of(list(data.names), levels)
    if data.multilabel:   # micro-F1 per block, as the evaluate step's `micro_f1`
        preds = predict_chunks(model, method, data, test, batch_size, transforms, used, ML.predicted)
        return _by_block(torch.tensor([ML.f1(p.float(), y, "micro", logits=False) for p in preds]), blocks)
    preds = predict_chunks(model, method, data, test, batch_size, transforms, used)
    # float32 like the evaluate step's torchmetrics accuracy, so that the clean block equals its `acc`
    return _by_block((torch.stack(preds) == y).float().mean(1), blocks)


def summarise(runs: dict, names: list[str], n_levels: int) -> dict:
    """{method: {'clean': stats, modality: {'levels': [stats per level], 'missing': stats}}},
    mean ± sample std over seeds (dyncim.report.stats.summary)."""
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


def sweep(params: dict, data: str, data_path: str | Path, root: str | Path = ".",
          levels=LEVELS, seed: int = NOISE_SEED, device: str = "cpu") -> dict:
    """Evaluate every method and seed of `params` (resolved params, or a job configuration with
    run.methods and methods.<m>.seeds) on data set `data` under corruption. Models are read from
    dyncim.paths.best_model under `root`. `data_path`: a feature file (FeatureSet) or a store
    (its folder or JSON summary: MediaSet), loaded with params' `resident_fraction`; `device`:
    where the models run ("auto": CUDA if there is one). Returns the robustness record (see `write`)."""
    from ..data.sets.media_set import load_data
    from ..device import pick_device
    from .evaluate import load_run
    root = Path(root)
    if "threads" in params:
        torch.set_num_threads(params["threads"])
    device = pick_device(str(device))
    dataset = load_data(data_path, params.get("resident_fraction", 0.5)).to(device)
    test = dataset.index("test")
    runs, skipped = {}, {}
    for method in params["run"]["methods"]:
        for s in params["methods"][method]["seeds"]:
            ck, built = load_run(root / paths.best_model(data, method, s), dataset, device)
            res = _accuracies(built, dataset, test, levels, seed, ck["train_cfg"]["eval_batch_size"])
            if res is None:
                skipped[method] = "trains each modality as a separate model: no fused prediction to corrupt"
                break
            runs.setdefault(method, {})[str(s)] = res
    names = list(dataset.names)
    return {"data": data, "names": names, "methods": list(runs), "levels": [float(v) for v in levels],
            **({"metric": "micro_f1"} if dataset.multilabel else {}),   # else accuracy
            "noise_seed": seed, "n_test": len(test), **dataset.corruption_record(),
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


def write(params: dict, data: str, data_path: str | Path, out_json: str | Path,
          out_csv: str | Path | None = None, root: str | Path = ".", levels=LEVELS,
          seed: int = NOISE_SEED, device: str = "cpu") -> dict:
    """Run the sweep on one data set; write its JSON (every run's accuracies under `runs`
    [method][seed] = {clean, modalities: {m: {levels: [acc per level], missing}}}, and their mean ±
    std over seeds under `summary`; the data set's `corruption_record`: the `unit`, and for a
    store `input_stats`: per modality the train mean, std and number of samples of its model
    inputs) and, if asked, the long-form CSV; both atomically."""
    record = sweep(params, data, data_path, root, levels, seed, device)
    write_json(out_json, record)
    if out_csv is not None:
        write_text(out_csv, csv_text(record))
    return record
