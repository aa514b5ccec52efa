"""Test-split evaluation of trained runs (the model chosen on validation, never on test).

Per run: fused accuracy and macro-F1 (torchmetrics), and per modality the imbalance figures:
(a) `own`: accuracy of the modality's own part of the prediction (concat: its slice of the fused
head plus its share of the bias, as OGM-GE measures it; sum: its own head's logits);
(b) `probe`: a linear probe on the frozen encoder, fit on train and chosen on val: how well the
encoder itself learned, whatever the head does with it.
On a multi-label set (dyncim.multilabel) micro-F1 and macro-F1 take accuracy's place: the fused
`micro_f1` and `macro_f1`, each modality's `own` micro-F1, and a probe fit to the multi-hot targets
(a label predicted where its ridge output exceeds 0.5) scored by micro-F1.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from .. import multilabel as ML
from ..atomic import write_json
from ..config import with_method_defaults
from ..data.sets.dataset import DataSet
from ..data.sets.media_set import MediaSet, load_data
from ..data.sources.synthetic import CORRUPTION_CODES
from ..train.assemble import assemble
from ..train.inference import evaluate_split

PROBE_RIDGE = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # L2 strength per training sample


def _class_acc(logits, y, n_classes) -> float:
    return float(multiclass_accuracy(logits, y, num_classes=n_classes, average="micro"))


def linear_probe(tr, ytr, va, yva, te, yte, n_classes: int, multilabel: bool = False) -> dict:
    """A ridge-regression linear probe on frozen features (one-hot targets, closed form),
    its L2 strength chosen on val. Closed form: one eigendecomposition serves every strength,
    where an iterative logistic probe cost ~90% of the evaluation time."""
    mu, sd = tr.mean(0), tr.std(0).clamp_min(1e-6)
    tr, va, te = [((t - mu) / sd).double() for t in (tr, va, te)]
    ones = lambda x: torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # bias column
    tr, va, te = ones(tr), ones(va), ones(te)
    Y = ytr.double() if multilabel else F.one_hot(ytr, n_classes).double()
    if multilabel:   # regression onto the multi-hot targets; a label where the output exceeds 0.5
        _acc = lambda scores, y, _: ML.f1((scores > ML.THRESHOLD).float(), y, "micro", logits=False)  # noqa: E731
    else:
        _acc = _class_acc
    evals, V = torch.linalg.eigh(tr.T @ tr)
    proj = V.T @ (tr.T @ Y)
    best = None
    for lam in PROBE_RIDGE:
        W = V @ (proj / (evals + lam * len(tr))[:, None])
        val = _acc(va @ W, yva, n_classes)
        if best is None or val > best[0]:  # ties: the weakest regularisation
            best = (val, lam, _acc(te @ W, yte, n_classes))
    return {"probe_val": best[0], "probe_ridge": best[1], "probe": best[2]}


def load_run(path: Path, dataset: DataSet, device):
    """Rebuild every part's model (and method, for its label-free prediction) from best.pt."""
    try:
        ck = torch.load(path, map_location=device, weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; run the train step first") from None
    except Exception as e:
        raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    ck["method_cfg"] = with_method_defaults(ck["method_cfg"])
    built = []
    for part in ck["parts"]:
        sub = dataset.subset(part["modalities"])
        dims = sub.shapes
        if dims != [d if isinstance(d, int) else tuple(d) for d in part["in_dims"]] or sub.names != part["names"]:
            raise ValueError(f"{path}: trained on modalities {part['names']} with input sizes {part['in_dims']}, "
                             f"but the feature file has {sub.names} with {dims}; retrain or use its feature file")
        method, model = assemble(sub, ck["method_cfg"], ck["train_cfg"], device)
        try:
            model.load_state_dict(part["state"])
        except RuntimeError as e:
            raise ValueError(f"{path}: checkpoint does not fit the model configuration: {e}") from None
        built.append((part, sub, method, model.eval()))
    return ck, built


def _best(part: dict) -> dict:
    """The part's best epoch and its validation figure (best_val_acc, or best_val_micro_f1)."""
    return {"best_epoch": part["best_epoch"], **{k: v for k, v in part.items() if k.startswith("best_val_")}}


def _cpu(out):
    fused, parts, feats = out
    return fused.cpu(), [p.cpu() for p in parts], [f.cpu() for f in feats]


def evaluate_run(path: Path, dataset: DataSet, device="cpu") -> dict:
    """`dataset` (a DataSet) on `device` (a MediaSet: `dataset.to(device)` first); the figures are
    computed on the CPU from the model's outputs."""
    ck, built = load_run(path, dataset, device)
    C_ = ck["n_classes"]
    idx = {s: dataset.index(s) for s in ("train", "val", "test")}
    y = {s: dataset.labels[i].cpu() for s, i in idx.items()}
    res = {"data": ck["data"], "method": ck["method"], "seed": ck["seed"], "names": list(dataset.names),
           "modalities": {}}
    if "selection" in ck:   # the settings chosen on validation (dyncim.train.select)
        res["selection"] = ck["selection"]
    for part, sub, method, model in built:
        bs = ck["train_cfg"]["eval_batch_size"]
        out = {s: _cpu(evaluate_split(model, method, sub, idx[s], bs)) for s in idx}
        fused, parts, _ = out["test"]
        multi = sub.multilabel
        score = (lambda z, t, _: ML.f1(z, t, "micro")) if multi else _class_acc
        if len(built) == 1 and multi:
            res.update(ML.f1_scores(fused, y["test"]))
        if len(built) == 1 and not multi:
            res["acc"] = _class_acc(fused, y["test"], C_)
            res["macro_f1"] = float(multiclass_f1_score(fused, y["test"], num_classes=C_, average="macro"))
        if len(built) == 1:
            res.update(_best(part))
            if dataset.corrupted is not None:
                res["acc_by_corruption"] = _by_corruption(fused, y["test"], dataset.corrupted[idx["test"]], sub.names)
        for m, name in enumerate(sub.names):
            r = {"own": score(parts[m], y["test"], C_)}
            r.update(linear_probe(out["train"][2][m], y["train"], out["val"][2][m], y["val"],
                                  out["test"][2][m], y["test"], C_, multi))
            if len(built) > 1:
                r.update(_best(part))
            res["modalities"][name] = r
        if len(built) == 1:
            diag = method.diagnostics(model, sub, idx["test"], batch_size=bs)   # {}: none
            diag.update(part.get("training") or {})   # the training's own figures (a curriculum's)
            if diag:
                res["diagnostics"] = diag
    return res


def _by_corruption(logits, y, codes, names) -> dict:
    """Accuracy on test samples whose modality m is clean / noisy / misleading."""
    out = {}
    for m, name in enumerate(names):
        for kind, code in {"clean": 0, **CORRUPTION_CODES}.items():
            mask = codes[:, m] == code
            if mask.any() and (codes[:, m] != 0).any():
                out[f"{name}_{kind}"] = float((logits[mask].argmax(1) == y[mask]).float().mean())
    return out


def evaluate_data(params: dict, data: str, data_path: Path, root: Path = Path("."),
                  outputs: list[Path] | None = None) -> list[Path]:
    """Every method and seed of the run list on one data set. `params`: resolved params or an
    evaluate job's configuration (dyncim.config.evaluate_job); models are read under `root`;
    `outputs`: one file per run, in the job's order (default: dyncim.paths under `root`)."""
    from .. import paths
    runs = [(m, s) for m in params["run"]["methods"] for s in params["methods"][m]["seeds"]]
    if outputs is None:
        outputs = [root / paths.eval_file(data, m, s) for m, s in runs]
    if len(outputs) != len(runs):
        raise ValueError(f"evaluate {data}: {len(outputs)} output paths for {len(runs)} runs (methods x seeds)")
    torch.set_num_threads(params["threads"])
    dataset = load_data(data_path, params.get("resident_fraction", 0.5))
    device = "cpu"
    # Where to evaluate is a policy, not an interface difference (no DataSet member decides it): a
    # feature file's small MLPs on the host, as always; a store's encoders (ResNet-18 over every
    # split) on the job's device.
    if isinstance(dataset, MediaSet):
        from ..device import pick_device
        device = pick_device(params.get("device", "auto"))
        dataset = dataset.to(device)
    for (method, seed), out in zip(runs, outputs):
        res = evaluate_run(root / paths.best_model(data, method, seed), dataset, device)
        write_json(out, res)
    return list(outputs)
