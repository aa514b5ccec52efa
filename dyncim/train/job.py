"""One training job: a data configuration x method, every seed in one process.

Importing torch costs over a second, so the pipeline runs one job per data configuration x
method and this driver trains its seeds in turn; outputs stay per seed, under a root, where
dyncim.paths puts them:
  models/<data>/<method>/seed<S>/best.pt        best-on-validation weights of every part
  models/<data>/<method>/seed<S>/last[-<part>].pt resume checkpoint, also the last-epoch state
  runs/<data>/<method>/seed<S>[/<modality>]/     TensorBoard logs
  results/curves/<data>/<method>/seed<S>.csv    per-epoch history (DVC plots)
and, written last, the job's declared output models/<data>/<method>/manifest.json.
A method with candidate settings (`select`) first trains and compares them on validation
(dyncim.train.select), under models/<data>/<method>/select/ and runs/<data>/<method>/select/.

The job's configuration is the one the rule resolved (dyncim.config.train_job, `--job`): its
`train` and `methods.<method>` entries are the run's training and method configuration, read as
they are, never resolved again.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
from pathlib import Path

import torch

from .. import config as C
from .. import paths
from ..atomic import torch_save, write_json, write_text
from ..data.sets.dataset import DataSet
from ..data.sets.media_set import load_data
from ..device import pick_device
from ..methods import method_class
from . import select
from .loop import Trainer


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """Hash of the package's source: a resume checkpoint from other code is not resumed."""
    h = hashlib.sha256()
    for p in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def method_config(job: dict, method: str) -> dict:
    """The job's method configuration: its `methods.<method>` entry without the seeds."""
    return {k: v for k, v in job["methods"][method].items() if k != "seeds"}


def run_fingerprint(job: dict, data: str, mcfg: dict) -> str:
    """Everything that determines one run's result, as canonical JSON (the resume checkpoint's
    configuration check): the job's data set, split and training configuration, and `mcfg`, the
    method configuration trained (a `select` candidate's, or the job's). The same text as
    dyncim.config.run_fingerprint of the params the job was resolved from (tests/test_train_job.py)."""
    return json.dumps({"data": job["datasets"][data], "split": job["split"], "train": job["train"],
                       "method": mcfg}, sort_keys=True)


def _check_job(job: dict, data: str, method: str) -> None:
    if job.get("run") != {"datasets": [data], "methods": [method]} or set(job.get("datasets", ())) != {data}:
        raise ValueError(f"train {data} x {method}: expected that job's configuration (dyncim.config.train_job, "
                         f"what --job carries), got run {job.get('run')}")


def run_paths(root: Path, data: str, method: str, seed: int, variant: str = "") -> dict[str, Path]:
    """Where a run's files go; a selection candidate's (`variant`) stay under its method's folders,
    its curves beside its checkpoints (out of the DVC plots)."""
    if variant:
        model_dir = root / paths.seed_dir(data, f"{method}/{variant}", seed)
        return {"model_dir": model_dir, "runs": root / paths.runs_dir(data, f"{method}/{variant}", seed),
                "curves": model_dir / "curves.csv"}
    return {"model_dir": root / paths.seed_dir(data, method, seed),
            "runs": root / paths.runs_dir(data, method, seed),
            "curves": root / paths.curves_file(data, method, seed)}


def method_extras(root: Path, data: str, mcfg: dict, seed: int) -> dict:
    """What a run's method reads from other runs of the pipeline (its Context.extras): a UMT run
    (dyncim.methods.umt) its frozen teachers, the best.pt of its `teacher` method's run of the same
    data set and seed, `<root>/models/<data>/<teacher>/seed<S>/best.pt`, never retrained here."""
    if mcfg["type"] == "umt":
        return {"teachers": root / paths.best_model(data, mcfg["teacher"], seed)}
    return {}


def extras_fingerprint(extras: dict) -> str:
    """The files a run reads from other runs, by content (for the resume check): a UMT run whose
    teacher was retrained does not resume its checkpoint. A missing file adds nothing here (the
    method's setup names it)."""
    h = hashlib.sha256()
    for key, path in sorted(extras.items()):
        if Path(path).is_file():
            h.update(key.encode())
            h.update(Path(path).read_bytes())
    return h.hexdigest()[:16] if extras else ""


def data_fingerprint(path: str | Path) -> str:
    """The identity of a data configuration's data, for the resume check: a run whose data set
    changed (a store rebuilt with another clip, a feature file written again with other content)
    does not resume its checkpoint. Cheap: a feature store by its split folders' own summaries
    (meta.json: the plan's sha256, the counts, the failed clips; index.csv; inputs.csv, each
    sample's raw files' identity; each array file's size), never its arrays; a feature file by its
    sha256 (it is read whole anyway). A store's JSON summary stands for its folder."""
    from ..data.io import store as S
    from ..data.io.splits import SPLITS
    path = Path(path)
    if path.suffix == ".json":
        path = path.parent
    h = hashlib.sha256()
    if path.is_dir():
        for sp in SPLITS:
            d = path / sp
            for name in (S.META, S.INDEX, S.INPUTS):
                f = d / name
                h.update(f"{sp}/{name}\0".encode())
                h.update(f.read_bytes() if f.is_file() else b"-")
            for f in sorted(d.glob("*.npy")) if d.is_dir() else ():
                h.update(f"{sp}/{f.name}\0{f.stat().st_size}\0".encode())
    elif path.is_file():
        from ..data.io.download import sha256_of
        h.update(sha256_of(path).encode())
    return h.hexdigest()[:16]


def train_seed(job: dict, data: str, method: str, seed: int, dataset: DataSet,
               root: Path, device: torch.device, data_id: str = "") -> Path:
    """Train (or resume) one run of the train job `job` (dyncim.config.train_job); `data_id`:
    data_fingerprint of the data `dataset` was read from."""
    _check_job(job, data, method)
    return _train_seed(job, data, method, seed, dataset, root, device, data_id=data_id)[0]


def _train_seed(job: dict, data: str, method: str, seed: int, dataset: DataSet,
                root: Path, device: torch.device, mcfg: dict | None = None, variant: str = "",
                selection: dict | None = None, data_id: str = "") -> tuple[Path, list[dict]]:
    """Train (or resume) one run; `mcfg`: the method configuration to train (default: the
    job's); `variant`: a selection candidate's path label; `selection`: the record saved with it;
    `data_id`: the data's identity (data_fingerprint), part of the resume check."""
    mcfg = method_config(job, method) if mcfg is None else mcfg
    tcfg = job["train"]
    where = run_paths(root, data, method, seed, variant)
    label = f"{method}/{variant}" if variant else method   # where dyncim.paths puts this run's files
    extras = method_extras(root, data, mcfg, seed)
    fingerprint = (run_fingerprint(job, data, mcfg) + code_version() + extras_fingerprint(extras)
                   + (f"data:{data_id}" if data_id else ""))
    parts = method_class(mcfg["type"], mcfg.get("impl")).parts(len(dataset.names))
    saved, rows = [], []
    for modalities in parts:
        sub = dataset.subset(modalities) if len(modalities) < len(dataset.names) else dataset
        name = "-".join(sub.names) if len(parts) > 1 else ""
        trainer = Trainer(sub, mcfg, tcfg, seed, device,
                          ckpt_path=root / paths.last_checkpoint(data, label, seed, name),
                          log_dir=where["runs"] / name if name else where["runs"],
                          fingerprint=fingerprint, tag=f"data={data} method={method} seed={seed}"
                                                      + (f" {variant}" if variant else "")
                                                      + (f" part={name}" if name else ""),
                          extras=extras)
        best = trainer.fit()
        saved.append({"modalities": modalities, "names": sub.names, "fusion": trainer.method.fusion,
                      "best_epoch": best["epoch"],
                      **{f"best_{k}": v for k, v in best.items() if k.startswith("val_")},   # val_acc / val_micro_f1
                      "state": best["state"],
                      "in_dims": sub.shapes,
                      "training": trainer.method.training_record()})
        rows += [{"part": name or "all", **r} for r in trainer.history]
    out = root / paths.best_model(data, label, seed)
    torch_save({"data": data, "method": method, "seed": seed, "method_cfg": mcfg, "train_cfg": tcfg,
                "n_classes": dataset.n_classes, "names": dataset.names, "parts": saved,
                **({"selection": selection} if selection else {})}, out)
    _write_curves(where["curves"], rows)
    return out, saved


def _write_curves(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def train_job(job: dict, data: str, method: str, seeds: list[int], data_path: Path,
              root: Path = Path("."), manifest: Path | None = None) -> list[Path]:
    """`job`: the train job's configuration (dyncim.config.train_job(params, data, method), what
    the rule passes as `--job`), used as it is. `data_path`: the data configuration's feature
    file (a FeatureSet), or the folder of its feature store (`<root>/{train,val,test}/`, a
    MediaSet: see dyncim.data.sets.media_set)."""
    _check_job(job, data, method)
    torch.set_num_threads(job["threads"])
    device = pick_device(job["device"])
    dataset = load_data(data_path, job.get("resident_fraction", 0.5))
    ds = job["datasets"][data]
    if ds["source"] in ("mfeat", "synthetic"):
        want = C.n_modalities(ds)
        if len(dataset.names) != want:
            raise ValueError(f"{data_path}: has {len(dataset.names)} modalities, params.yaml's "
                             f"datasets.{data} has {want}; rerun the step that builds it")
    dataset = dataset.to(device)  # once per job: a store is copied onto the device once, for every seed
    data_id = data_fingerprint(data_path)  # changed data: a fresh run, never a resume
    mcfg, selection = method_config(job, method), None
    if "select" in mcfg:
        def fit(seed, cand, label):
            return _train_seed(job, data, method, seed, dataset, root, device, cand, label,
                               data_id=data_id)[1]
        mcfg, selection = select.run(mcfg, data, method, seeds, root, fit)
    best = [_train_seed(job, data, method, s, dataset, root, device, mcfg, selection=selection,
                        data_id=data_id)[0]
            for s in seeds]
    # The job's declared output, written last: it exists only when every seed is done.
    write_json(manifest or root / paths.manifest(data, method),
               {"data": data, "method": method, "device": str(device),
                "seeds": {str(s): str(p) for s, p in zip(seeds, best)},
                **({"selection": selection} if selection else {})})
    return best

