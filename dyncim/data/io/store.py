"""Compact, memory-mappable feature arrays: one folder per split, a few large files.

Layout of a split folder (e.g. `data/features/crema-d/train/`):

    <array>.npy   one per modality: (N, *per-sample shape), fixed shape and dtype, C order, written
                  with numpy's .npy header, so `np.load(mmap_mode="r")` maps it without reading it
                  (the extraction recipes use `audio.npy` float16 and `frames.npy` uint8 (N, T, H, W, 3))
    index.csv     one row per sample, in array order: clip,label,ok,n_frames,aspect,error
                  (ok=0: the clip failed to decode; its rows of the arrays are zeros; error says why)
    inputs.csv    (extraction from media files) one row per sample: clip,input, the identity of
                  the raw files the sample was made from (size and mtime of each) when it was made
    meta.json     format, recipe, classes, counts, each array's shape / dtype / bytes per sample,
                  the failed clips, the plan's sha256; written last

Writing (`SplitWriter`): everything goes into a hidden sibling `.<name>.partial/`; each sample is
written at its fixed offset with `os.pwrite` (not through a memory map, so the writer's resident
memory does not grow with the data set: the written pages belong to the page cache, not to the
process); `commit()` syncs the arrays and then appends the committed samples to `done.jsonl`, so a
sample listed there is on disk. An interrupted extraction (even SIGKILL) resumes from the journal,
redoing at most the samples written since the last commit, provided its plan (recipe, clips,
labels, classes) is the same; otherwise it starts over. `finish()` writes index.csv and meta.json
and renames the folder onto its final name, so a split folder that exists is complete.
`reopen(out_dir, redo)` turns a complete split back into an interrupted one with every sample
but `redo` committed, so that a writer with the same plan redoes just those (a raw file that
changed since it was extracted: `dyncim.data.extraction.extract`).

Reading (`open_split`): the arrays as read-only memory maps, the index as numpy arrays; batches
with `Split.take(indices)` (one fancy-indexing copy per array, then `torch.from_numpy`). Training
and evaluation read a store through `dyncim.data.sets.media_set.MediaSet` (the three splits as one
data set; batches gathered into pinned memory, or whole arrays kept on the device when they fit).
No decoding, no per-sample files.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = 1
INDEX, META, PLAN, JOURNAL = "index.csv", "meta.json", "plan.json", "done.jsonl"
INPUTS = "inputs.csv"
INDEX_COLUMNS = ("clip", "label", "ok", "n_frames", "aspect", "error")


def plan_digest(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def partial_path(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.partial"


def is_complete(out_dir: str | Path, plan: dict | None = None) -> bool:
    """The split folder exists, is complete, and (when given) was made by this plan."""
    meta = Path(out_dir) / META
    if not meta.is_file():
        return False
    try:
        m = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return m.get("format") == FORMAT and (plan is None or m.get("plan_sha256") == plan_digest(plan))


def read_inputs(out_dir: str | Path) -> list[str] | None:
    """The input identities a split recorded per sample (inputs.csv), or None (none recorded)."""
    path = Path(out_dir) / INPUTS
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != ("clip", "input"):
            return None
        return [r["input"] for r in reader]


def reopen(out_dir: str | Path, redo) -> Path:
    """Turn the complete split `out_dir` into the interrupted writing of it (its partial folder,
    its plan, a journal of every sample but the indices `redo`), so that a SplitWriter with the
    same plan resumes it and writes just those samples; the arrays are moved, not copied."""
    out_dir = Path(out_dir)
    part = partial_path(out_dir)
    meta = json.loads((out_dir / META).read_text())
    with open(out_dir / INDEX, newline="") as f:
        rows = list(csv.DictReader(f))
    redo = set(int(i) for i in redo)
    if part.exists():
        shutil.rmtree(part)
    os.replace(out_dir, part)
    _fsync_dir(part.parent)
    with open(part / JOURNAL, "w") as f:
        for i, r in enumerate(rows):
            if i not in redo:
                f.write(json.dumps({"i": i, "ok": int(r["ok"]), "n_frames": int(r["n_frames"]),
                                    "aspect": float(r["aspect"]), "error": r["error"]}) + "\n")
    for name in (META, INDEX):
        (part / name).unlink()
    # written last: a partial folder with a plan file is one a writer may resume
    (part / PLAN).write_text(json.dumps({"sha256": meta["plan_sha256"]}) + "\n")
    return part


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SplitWriter:
    """Writes the N samples of one split (see the module docstring).

    arrays: {name: (per-sample shape, dtype)}; plan: what identifies the content (JSON-able);
    a partial folder with another plan is discarded. `done` (bool, N) says which samples are
    already committed (from an earlier, interrupted run); their records are kept as compact
    arrays (`ok`, `n_frames`, `aspect`, and `errors` for failed samples only), so the writer's
    memory per sample is a few bytes."""

    def __init__(self, out_dir: str | Path, n: int, arrays: dict[str, tuple[tuple[int, ...], str]],
                 plan: dict):
        self.out_dir = Path(out_dir)
        self.dir = partial_path(out_dir)
        self.n = n
        self.plan = plan
        self.digest = plan_digest(plan)
        self.specs = {k: (tuple(int(s) for s in shape), np.dtype(dt)) for k, (shape, dt) in arrays.items()}
        self.done = np.zeros(n, dtype=bool)
        self.ok = np.zeros(n, dtype=bool)
        self.n_frames = np.zeros(n, dtype=np.int32)
        self.aspect = np.zeros(n, dtype=np.float32)
        self.errors: dict[int, str] = {}
        self._pending: list[tuple[int, dict]] = []
        self.resumed = self._resume()
        if not self.resumed:
            self._create()
        self._fds, self._offsets, self._sizes = {}, {}, {}
        for name, (shape, dt) in self.specs.items():
            path = self.dir / f"{name}.npy"
            arr = np.load(path, mmap_mode="r")
            if arr.shape != (n, *shape) or arr.dtype != dt:
                raise ValueError(f"{path}: shape {arr.shape} {arr.dtype}, expected {(n, *shape)} {dt}")
            self._offsets[name] = arr.offset if n else 0
            self._sizes[name] = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            del arr
            self._fds[name] = os.open(path, os.O_RDWR)
        self._journal = open(self.dir / JOURNAL, "a")

    def _resume(self) -> bool:
        plan_file = self.dir / PLAN
        if not plan_file.is_file():
            return False
        try:
            same = json.loads(plan_file.read_text()).get("sha256") == self.digest
        except (OSError, ValueError):
            same = False
        if not same or not all((self.dir / f"{k}.npy").is_file() for k in self.specs):
            return False
        journal = self.dir / JOURNAL
        if journal.is_file():
            with open(journal) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        i = int(rec.pop("i"))
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by a kill
                    if 0 <= i < self.n:
                        self._record(i, rec)
        return True

    def _record(self, i: int, rec: dict) -> None:
        self.done[i] = True
        self.ok[i] = bool(rec["ok"])
        self.n_frames[i] = int(rec.get("n_frames", 0))
        self.aspect[i] = float(rec.get("aspect", 0.0))
        if self.ok[i]:
            self.errors.pop(i, None)
        else:
            self.errors[i] = str(rec.get("error", ""))

    @property
    def n_failed(self) -> int:
        return int((self.done & ~self.ok).sum())

    def _create(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        for name, (shape, dt) in self.specs.items():
            # a sparse file of the final size with its .npy header: blocks are allocated as written
            arr = np.lib.format.open_memmap(self.dir / f"{name}.npy", mode="w+", dtype=dt,
                                            shape=(self.n, *shape))
            del arr
        (self.dir / PLAN).write_text(json.dumps({"sha256": self.digest, "plan": self.plan}) + "\n")

    def write(self, i: int, arrays: dict[str, np.ndarray] | None, record: dict) -> None:
        """Write sample i (arrays None: a failed sample, whose rows stay zero) and its index record
        (ok, n_frames, aspect, error); it counts as done after the next `commit()`."""
        if arrays is not None:
            for name, (shape, dt) in self.specs.items():
                a = np.ascontiguousarray(arrays[name], dtype=dt)
                if a.shape != shape:
                    raise ValueError(f"sample {i}: {name} has shape {a.shape}, expected {shape}")
                os.pwrite(self._fds[name], a.tobytes(), self._offsets[name] + i * self._sizes[name])
        else:
            for name in self.specs:  # zero the row (it may hold data of an earlier, other attempt)
                os.pwrite(self._fds[name], bytes(self._sizes[name]), self._offsets[name] + i * self._sizes[name])
        self._pending.append((i, record))

    def commit(self) -> None:
        if not self._pending:
            return
        for fd in self._fds.values():
            os.fdatasync(fd)
        for i, rec in self._pending:
            self._journal.write(json.dumps({"i": i, **rec}) + "\n")
            self._record(i, rec)
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self._pending.clear()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        if not self._journal.closed:
            self._journal.close()

    def finish(self, clips: list[str], labels: list[str], meta: dict,
               inputs: list[str] | None = None) -> Path:
        """Write index.csv (inputs.csv: `inputs`, each sample's input identity, when given) and
        meta.json, rename the folder onto `out_dir`; every sample must be done."""
        self.commit()
        if not self.done.all():
            raise RuntimeError(f"{self.dir}: {int((~self.done).sum())} samples not written yet")
        self.close()
        failed = []
        with open(self.dir / INDEX, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(INDEX_COLUMNS)
            for i, (clip, label) in enumerate(zip(clips, labels)):
                err = self.errors.get(i, "")
                w.writerow([clip, label, int(self.ok[i]), int(self.n_frames[i]),
                            f"{float(self.aspect[i]):.6g}", err])
                if not self.ok[i]:
                    failed.append({"clip": clip, "error": err})
        if inputs is not None:
            with open(self.dir / INPUTS, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(("clip", "input"))
                w.writerows(zip(clips, inputs))
        elif (self.dir / INPUTS).exists():
            (self.dir / INPUTS).unlink()
        arrays = {name: {"file": f"{name}.npy", "shape": [self.n, *shape], "dtype": dt.str,
                         "bytes_per_sample": self._sizes[name]}
                  for name, (shape, dt) in self.specs.items()}
        full = {"format": FORMAT, **meta, "n": self.n, "n_ok": self.n - len(failed), "arrays": arrays,
                "bytes_per_sample": sum(self._sizes.values()), "failed": failed,
                "plan_sha256": self.digest}
        (self.dir / META).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        for name in (PLAN, JOURNAL):
            (self.dir / name).unlink()
        _fsync_dir(self.dir)
        if self.out_dir.exists():
            shutil.rmtree(self.out_dir)
        os.replace(self.dir, self.out_dir)
        _fsync_dir(self.out_dir.parent)
        return self.out_dir

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._fds:
            try:
                self.commit()  # keep what was written before an exception (KeyboardInterrupt, ...)
            finally:
                self.close()


# ---- reading -----------------------------------------------------------------------------------

@dataclass
class Split:
    """One split of a feature store. `arrays` are read-only memory maps (or arrays in memory)."""
    path: Path
    meta: dict
    clips: list[str]
    label_names: list[str]
    labels: np.ndarray  # int64 class indices (into meta["classes"]); multi-label: float32 multi-hot (N, C)
    ok: np.ndarray  # bool
    n_frames: np.ndarray  # int64: valid frames per sample (the rest repeat the last one)
    aspect: np.ndarray  # float32: source display aspect (width / height)
    errors: list[str]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    def __getattr__(self, name):  # split.audio, split.frames
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def tensor(self, name: str, a: np.ndarray):
        """A torch view of `a` (rows of array `name`); arrays listed in meta["channels_last"] are
        stored (..., H, W, C) and come back as (..., C, H, W) views with channels-last strides."""
        import torch
        t = torch.from_numpy(a)
        if name in self.meta.get("channels_last", ()):
            t = t.movedim(-1, -3)
        return t

    def take(self, idx, names=None, device=None) -> dict:
        """{name: torch tensor} of the samples `idx` (sorted reads are fastest; order is kept),
        plus "labels" (int64); `device`: where to put them (CPU tensors share nothing with the maps).
        Frames come as (B, T, 3, H, W) (see `tensor`)."""
        import torch
        idx = np.asarray(idx, dtype=np.int64)
        out = {k: self.tensor(k, np.ascontiguousarray(self.arrays[k][idx])) for k in (names or self.arrays)}
        out["labels"] = torch.from_numpy(self.labels[idx])
        if device is not None:
            out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
        return out


def open_split(path: str | Path, mmap: bool = True) -> Split:
    """Open a split folder written by `SplitWriter.finish` (memory-mapped unless mmap=False);
    errors name the file and what was expected."""
    path = Path(path)
    meta_file = path / META
    if not meta_file.is_file():
        partial = partial_path(path)
        hint = f" (an interrupted extraction left {partial}: rerun it to finish)" if partial.exists() else ""
        raise FileNotFoundError(f"{meta_file}: missing: not a complete feature split{hint}")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as e:
        raise ValueError(f"{meta_file}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_file}: format {meta.get('format')!r}, this code reads format {FORMAT}")
    n = int(meta["n"])
    with open(path / INDEX, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != INDEX_COLUMNS:
            raise ValueError(f"{path / INDEX}: expected the columns {','.join(INDEX_COLUMNS)}")
        rows = list(reader)
    if len(rows) != n:
        raise ValueError(f"{path / INDEX}: {len(rows)} rows, {meta_file} says {n} samples")
    classes = list(meta.get("classes", []))
    lookup = {c: i for i, c in enumerate(classes)}
    try:
        if meta.get("multilabel"):   # the label names joined by "|" (dyncim.data.extraction.image_text)
            labels = np.zeros((n, len(classes)), dtype=np.float32)
            for i, r in enumerate(rows):
                labels[i, [lookup[x] for x in r["label"].split("|") if x]] = 1.0
        else:
            labels = np.array([lookup[r["label"]] for r in rows], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"{path / INDEX}: label {e.args[0]!r} is not one of the classes in {meta_file}") from None
    arrays = {}
    for name, spec in meta["arrays"].items():
        file = path / spec["file"]
        try:
            a = np.load(file, mmap_mode="r" if mmap else None)
        except (OSError, ValueError) as e:
            raise ValueError(f"{file}: cannot read ({e})") from None
        if list(a.shape) != list(spec["shape"]) or a.dtype.str != spec["dtype"]:
            raise ValueError(f"{file}: shape {list(a.shape)} {a.dtype.str}, {meta_file} says "
                             f"{spec['shape']} {spec['dtype']}")
        arrays[name] = a
    return Split(path, meta, [r["clip"] for r in rows], [r["label"] for r in rows], labels,
                 np.array([r["ok"] == "1" for r in rows], dtype=bool),
                 np.array([int(r["n_frames"]) for r in rows], dtype=np.int64),
                 np.array([float(r["aspect"]) for r in rows], dtype=np.float32),
                 [r["error"] for r in rows], arrays)


def open_store(root: str | Path, splits=("train", "val", "test"), mmap: bool = True) -> dict[str, Split]:
    """{split: Split} of `root/<split>/` for each split."""
    return {s: open_split(Path(root) / s, mmap) for s in splits}
