"""CMU-MOSEI (text + audio + vision): the trimodal case, from the widely used pre-extracted features.

The reader below serves every set MulT distributes in this layout (CMU-MOSI too, sources/mosi.py):
its file names, record file and data-set name are parameters, MOSEI's the defaults.

Source: the pickle that MulT (Tsai et al., ACL 2019, yaohungt/Multimodal-Transformer) distributes
and that most later work loads: `mosei_senti_data.pkl` (aligned to words, 50 steps per modality)
or `mosei_senti_data_noalign.pkl` (unaligned: 50 text steps, longer audio and vision sequences).
Its layout, which `load_mosei` checks:

    {'train' | 'valid' | 'test': {'text':   float (N, T_t, 300)  GloVe word vectors,
                                  'audio':  float (N, T_a, 74)   COVAREP,
                                  'vision': float (N, T_v, 35)   FACET,
                                  'labels': float (N, 1, 1)      sentiment in [-3, 3],
                                  'id':     optional, (N, k) video id / segment fields}}

There is no stable single-file URL with a published checksum (MulT links a shared folder), so
the project takes the file from a URL *with* its sha256 (`fetch_mosei(url=..., sha256=...)`,
resumable and verified) or from a path the user names (checked when a sha256 is given); its
sha256 is recorded in `mosei.json` beside the copy either way.

Task and label binning (the project's choice). Default `binary`: negative (score < 0) vs
non-negative (score >= 0), i.e. Acc-2 as the CMU-MultimodalSDK and MMSA define it ("Has0"). It
is the most common classification protocol on MOSEI, so results are comparable; every split
keeps all its samples; and it keeps the study about *modality* imbalance, whereas 7-class
rounding has very rare extreme classes (class imbalance on top). Options: `7class` (Acc-7, the
score clipped to [-3, 3] and rounded with numpy's round-half-to-even, exactly as MulT's
`multiclass_acc` does, shifted to classes 0..6) and `binary-nonzero` (negative vs positive,
samples with score exactly 0 dropped: MulT's `exclude_zero` / MMSA's "Non0" Acc-2).

Non-finite values. The public features hold some: COVAREP (audio) has -inf, and some copies hold
NaN. Rule `nonfinite="zero"` (default): every NaN, +inf and -inf in any modality becomes 0, what
MulT does for the audio -inf values (extended to NaN/+inf and to all modalities so that nothing
non-finite reaches training); how many values were replaced, per split and modality, is returned
(`MoseiData.nonfinite`). `nonfinite="error"` refuses such a file instead. Labels must be finite and
in [-3, 3].

The pickle is read with an unpickler that only builds plain containers and numpy arrays (a
pickle can run code when loaded; this one cannot). `load_mosei` returns per split the float32
(N, T, d) sequences of each modality, the labels, the raw scores and the sample ids;
`write_mosei_store` writes them as feature files in the layout of `dyncim.data.io.store`.
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...atomic import write_json
from ..io import download as D

FILES = {"aligned": "mosei_senti_data.pkl", "unaligned": "mosei_senti_data_noalign.pkl"}
MODALITIES = ("text", "audio", "vision")
SPLIT_KEYS = {"train": ("train",), "val": ("valid", "val"), "test": ("test",)}
TASKS = {
    "binary": ("negative", "non-negative"),
    "binary-nonzero": ("negative", "positive"),
    "7class": ("-3", "-2", "-1", "0", "1", "2", "3"),
}
DEFAULT_TASK = "binary"
NONFINITE_RULES = ("zero", "error")
INFO = "mosei.json"


# ---- getting the file --------------------------------------------------------------------------
def fetch_mosei(out: str | Path, *, url: str | None = None, sha256: str | None = None,
                from_path: str | Path | None = None, variant: str = "aligned",
                link: str = "copy", timeout: float = 60.0, progress: bool = False,
                log=print, files: dict = FILES, info: str = INFO, name: str = "CMU-MOSEI") -> Path:
    """Bring the pickle to `out/<files[variant]>`, verified and atomically; return its path.

    `url` (http, https or file) needs `sha256`; `from_path` (a local file) is checked against
    `sha256` when one is given and copied (`link="copy"`), hard-linked or symlinked. A file
    already in place that matches `sha256` (or the sha256 recorded in `out/mosei.json` when none
    is given) is kept. Writes `out/<info>`: source, variant, sha256, size.
    """
    if variant not in files:
        raise ValueError(f"variant {variant!r}: expected one of {sorted(files)}")
    if (url is None) == (from_path is None):
        raise ValueError(f"{name}: give exactly one of url (with sha256) and from_path")
    if url is not None and not sha256:
        raise ValueError(f"{name}: a URL needs its sha256 (there is no pinned public copy to trust)")
    out = Path(out)
    dest = out / files[variant]
    sha256 = sha256.lower() if sha256 else None
    info_path = out / info
    source = url if url is not None else str(Path(from_path).resolve())
    expected = sha256
    if expected is None and info_path.is_file():  # no checksum given: trust the copy made from
        info = json.loads(info_path.read_text())  # this same source file, if it still verifies
        if (info.get("source"), info.get("variant")) == (source, variant) and \
                Path(from_path).is_file() and Path(from_path).stat().st_size == info.get("size"):
            expected = info.get("sha256")
    if dest.is_file() and expected and D.sha256_of(dest) == expected:
        got = expected
    elif url is not None:
        D.fetch(url, dest, sha256, timeout=timeout, progress=progress)
        got = sha256
    else:
        src = Path(from_path)
        if not src.is_file():
            raise D.DownloadError(f"{src}: no such file")
        out.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        D.link_or_copy(src, part, link)
        got = D.sha256_of(part)
        if sha256 is not None and got != sha256:
            part.unlink()
            raise D.DownloadError(f"{src}: sha256 mismatch: expected {sha256}, got {got}")
        os.replace(part, dest)
    write_json(info_path, {"source": source,
                           "variant": variant, "file": dest.name, "sha256": got,
                           "size": dest.stat().st_size})
    if log:
        log(f"{name} ({variant}): {dest} sha256 {got}")
    return dest


# ---- reading it --------------------------------------------------------------------------------
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"), ("collections", "OrderedDict"),
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to build {module}.{name}: a MulT feature "
                                         f"pickle holds only dicts and numpy arrays")
        if module.startswith("numpy.core."):  # pickled by numpy 1.x; numpy 2 calls it numpy._core
            try:
                return super().find_class("numpy._core." + module[len("numpy.core."):], name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def read_pickle(path: str | Path):
    """Load a feature pickle (Python 2 or 3, numpy 1 or 2) building only dicts, lists and arrays."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; run the data set's media step first") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a readable MulT feature pickle (the CMU-MOSEI / CMU-MOSI "
                         f"layout; {type(e).__name__}: {e})") from None


@dataclass
class MoseiSplit:
    features: dict[str, np.ndarray]  # modality -> float32 (N, T, d), finite
    labels: np.ndarray  # int64 (N,), class index under the task
    scores: np.ndarray  # float32 (N,), the sentiment score in [-3, 3]
    ids: list[str]


@dataclass
class MoseiData:
    task: str
    classes: tuple[str, ...]
    splits: dict[str, MoseiSplit]  # "train", "val", "test"
    nonfinite: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> modality -> count
    dropped: dict[str, int] = field(default_factory=dict)  # split -> samples the task leaves out

    @property
    def dims(self) -> dict[str, int]:
        return {m: x.shape[2] for m, x in self.splits["train"].features.items()}

    @property
    def seq_lens(self) -> dict[str, int]:
        return {m: x.shape[1] for m, x in self.splits["train"].features.items()}


def labels_for(scores: np.ndarray, task: str = DEFAULT_TASK) -> tuple[np.ndarray, np.ndarray]:
    """(class index per kept sample, mask of kept samples) of sentiment scores under `task`."""
    scores = np.asarray(scores, dtype=np.float64)
    if task == "binary":
        return (scores >= 0).astype(np.int64), np.ones(len(scores), bool)
    if task == "binary-nonzero":
        keep = scores != 0
        return (scores[keep] > 0).astype(np.int64), keep
    if task == "7class":
        return (np.round(np.clip(scores, -3.0, 3.0)) + 3).astype(np.int64), np.ones(len(scores), bool)
    raise ValueError(f"task {task!r}: expected one of {sorted(TASKS)}")


def _finite(x: np.ndarray, rule: str, what: str) -> tuple[np.ndarray, int]:
    """`x` as float32 with its non-finite values set to 0 (rule zero), and how many there were."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{what}: expected numbers, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not x.flags.writeable:
        x = x.copy()
    n = 0
    for i in range(0, len(x), 1024):  # in blocks: no full-size temporary mask
        block = x[i:i + 1024]
        bad = ~np.isfinite(block)
        k = int(np.count_nonzero(bad))
        if k:
            if rule == "error":
                raise ValueError(f"{what}: {k}+ non-finite values (NaN or inf); nonfinite='zero' "
                                 f"replaces them by 0")
            block[bad] = 0.0
            n += k
    return x, n


def _ids(raw, n: int, split: str) -> list[str]:
    if raw is None:
        return [f"{split}-{i}" for i in range(n)]
    raw = np.asarray(raw, dtype=object)
    if len(raw) != n:
        return [f"{split}-{i}" for i in range(n)]

    def text(v):
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

    return [text(r) if raw.ndim == 1 else "/".join(text(v) for v in r) for r in raw]


def load_mosei(path: str | Path, task: str = DEFAULT_TASK, nonfinite: str = "zero") -> MoseiData:
    """Per split (train, val, test) the three modalities' sequences, the labels under `task`, the
    raw scores and sample ids; errors name the file, split and key."""
    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected one of {sorted(TASKS)}")
    if nonfinite not in NONFINITE_RULES:
        raise ValueError(f"nonfinite {nonfinite!r}: expected one of {NONFINITE_RULES}")
    path = Path(path)
    data = read_pickle(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of splits, got {type(data).__name__}")
    out = MoseiData(task, TASKS[task], {})
    dims = None
    for split, keys in SPLIT_KEYS.items():
        key = next((k for k in keys if k in data), None)
        if key is None:
            raise ValueError(f"{path}: no {' or '.join(repr(k) for k in keys)} split; has {sorted(map(str, data))}")
        part = data[key]
        missing = [k for k in (*MODALITIES, "labels") if k not in part]
        if missing:
            raise ValueError(f"{path}: split {key!r} lacks {missing}")
        scores = np.asarray(part["labels"], dtype=np.float64)
        n = scores.shape[0] if scores.ndim else 0
        if n == 0 or scores.size != n:
            raise ValueError(f"{path}: {key}/labels has shape {scores.shape}; expected (N, 1, 1) sentiment scores")
        scores = scores.reshape(n)
        if not np.isfinite(scores).all() or np.abs(scores).max() > 3.0 + 1e-6:
            raise ValueError(f"{path}: {key}/labels: sentiment scores must be finite and in [-3, 3]")
        labels, keep = labels_for(scores, task)
        feats, counts = {}, {}
        for m in MODALITIES:
            x = part[m]
            shape = getattr(x, "shape", None)
            if shape is None or len(shape) != 3 or shape[0] != n:
                raise ValueError(f"{path}: {key}/{m} has shape {shape}; expected ({n}, steps, features)")
            x, counts[m] = _finite(x, nonfinite, f"{path}: {key}/{m}")
            feats[m] = x if keep.all() else x[keep]
        shape_d = {m: feats[m].shape[2] for m in MODALITIES}
        if dims is not None and shape_d != dims:
            raise ValueError(f"{path}: {key} has feature sizes {shape_d}, train has {dims}")
        dims = shape_d
        ids = _ids(part.get("id"), n, split)
        out.splits[split] = MoseiSplit(feats, labels, scores[keep].astype(np.float32),
                                       [i for i, k in zip(ids, keep) if k])
        out.nonfinite[split] = counts
        out.dropped[split] = int(n - keep.sum())
    return out


# ---- writing it as feature files --------------------------------------------------------------
def write_mosei_store(data: MoseiData, root: str | Path, source_sha256: str | None = None,
                      nonfinite: str = "zero", dataset: str = "cmu-mosei") -> dict[str, Path]:
    """Write each split into `root/<split>/` in the feature-store layout (`dyncim.data.io.store`):
    `text.npy`, `audio.npy`, `vision.npy` float32 (N, T, d), `index.csv` (clip = the sample id,
    label = the class name), `meta.json` (classes, task, non-finite counts, dropped samples).
    A split already written from the same source file, task and rule is left as it is."""
    from ..io import store
    out = {}
    for split, s in data.splits.items():
        plan = {"dataset": dataset, "source_sha256": source_sha256, "task": data.task,
                "nonfinite": nonfinite, "n": len(s.labels), "ids": s.ids}
        path = Path(root) / split
        out[split] = path
        if store.is_complete(path, plan):
            continue
        arrays = {m: (x.shape[1:], "float32") for m, x in s.features.items()}
        with store.SplitWriter(path, len(s.labels), arrays, plan) as w:
            for i in range(len(s.labels)):
                if not w.done[i]:
                    w.write(i, {m: x[i] for m, x in s.features.items()}, {"ok": True})
            w.finish(s.ids, [data.classes[k] for k in s.labels],
                     {"dataset": dataset, "task": data.task, "classes": list(data.classes),
                      "nonfinite_rule": nonfinite, "nonfinite_replaced": data.nonfinite.get(split, {}),
                      "dropped": data.dropped.get(split, 0), "source_sha256": source_sha256})
    return out


# ---- the source's steps (dyncim.data.sources) ----------------------------------------------------

def bring_in(ds: dict, out: Path, log=print, *, files: dict = FILES, info: str = INFO,
             name: str = "CMU-MOSEI") -> dict:
    media = ds["media"]
    pickle_path = fetch_mosei(out, url=media.get("url"), sha256=media.get("sha256"),
                              from_path=media.get("from_path"), variant=media["variant"], link=media["link"],
                              progress=True, log=log, files=files, info=info, name=name)
    return {"pickle": pickle_path.name}


def build(ds: dict, raw: Path, record: dict, out: Path, log=print, *, info: str = INFO,
          dataset: str = "cmu-mosei") -> dict:
    recorded = json.loads((raw / info).read_text())
    data = load_mosei(raw / record["pickle"], task=ds["media"]["task"])
    write_mosei_store(data, out, source_sha256=recorded.get("sha256"), dataset=dataset)
    return {"task": ds["media"]["task"]}
