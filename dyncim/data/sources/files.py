"""A user's own data set (source `files`, docs/own-data.md): feature arrays the user already has,
one file per modality, with a label file or column, optionally a split column, sample ids and the
class names.

Formats (one row per sample, the same order in every file):
- `.npy`: a numeric array (N, d) (vectors) or (N, T, d) (sequences); read memory-mapped, never
  with pickle;
- `.npz`: one such array, by `key` (needed when the file holds more than one);
- `.csv`: a header row, then one row per sample, read with the standard library's csv module; a
  modality takes `columns` (a list, or one pattern with `*`), by default every column the labels,
  split and ids do not use.
Labels: a `.csv` column of class names (multi-label: names joined by `|`, empty for none), or a
`.npy` / `.npz` array of integer class indices (into `classes` where given), of class names, or
(multi-label) multi-hot 0/1 of shape (N, classes). Without `classes`, the classes are the distinct
labels, sorted (numerically where all are integers). The split: a column or array of
train / val / test, or a stratified split {train, val, seed} (the top-level `split:` by default;
multi-label: stratified by each sample's set of labels), made by dyncim.data.io.splits as the
embedded sets' are.

`check` reads everything when the params resolve, before any job runs: each problem is one line
naming the file, the row or column and what was expected. The media step (`bring_in`) checks
again, records each file's sha256 and the split (`split.csv`: row, id, split) in data/raw/<data>/;
the extraction step (`build`) standardises every feature with train statistics (unless
`standardize: false`) and writes the store (dyncim.data.io.store: one float32 array per modality),
which training reads as any other store (dyncim.data.sets.media_set).

    python -m dyncim.data.sources.files --example resources/examples/own-data
writes the worked example of configs/own-data.yaml (tiny; the same files every time).
"""
from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.splits import SPLITS, stratified_split

FORMATS = (".npy", ".npz", ".csv")
LABEL_SEP = "|"                # multi-label names in one CSV cell (dyncim.data.extraction.image_text's separator)
SPLIT_FILE = "split.csv"
STATS_FILE = "standardize.npz"
CHUNK_ROWS = 65536             # rows per pass of the finite / constant check (memory-mapped arrays)


@dataclass
class OwnData:
    names: list[str]           # the modalities, in the configuration's order
    views: list[np.ndarray]    # (N, d) or (N, T, d), as stored (memory-mapped for .npy)
    labels: np.ndarray         # int64 (N,) class indices, or float32 (N, C) multi-hot
    classes: list[str]
    split: np.ndarray          # (N,) train / val / test
    ids: list[str]
    multilabel: bool
    split_rule: str            # how the split was made, in words

    @property
    def n(self) -> int:
        return len(self.ids)


# ---- reading -----------------------------------------------------------------------------------

def _clip(values, k: int = 8) -> str:
    values = list(values)
    return repr(values) if len(values) <= k else repr(values[:k])[:-1] + f", ... ({len(values)} in all)]"


class _Files:
    """The files of one configuration, each opened once."""

    def __init__(self):
        self.tables: dict[str, tuple[list[str], list[list[str]]]] = {}

    def table(self, path: str) -> tuple[list[str], list[list[str]]]:
        if path not in self.tables:
            self.tables[path] = _read_csv(path)
        return self.tables[path]


def _exists(path: str) -> Path:
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: a {p.suffix or 'file without a suffix'}; expected one of {', '.join(FORMATS)}")
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return p


def _read_csv(path: str) -> tuple[list[str], list[list[str]]]:
    with open(_exists(path), newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: empty; expected a header row, then one row per sample")
        header = [h.strip() for h in header]
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise ValueError(f"{path}: line 1: the column(s) {dup} appear twice; expected unique column names")
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row:    # a blank line (at the end, typically)
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}: line {line}: {len(row)} fields; expected {len(header)}, one per "
                                 f"column of the header")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: has a header but no rows; expected one row per sample")
    return header, rows


def _line(rows_before: int) -> int:
    return rows_before + 2     # the header is line 1


def _array(path: str, key: str | None) -> np.ndarray:
    p = _exists(path)
    if p.suffix.lower() == ".csv":
        raise ValueError(f"{path}: a .csv file needs `column` (or, for features, `columns`)")
    try:
        if p.suffix.lower() == ".npy":
            if key is not None:
                raise ValueError(f"{path}: `key` is for .npz files; a .npy file holds one array")
            return np.load(p, mmap_mode="r", allow_pickle=False)
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.files)
            if key is None:
                if len(keys) != 1:
                    raise ValueError(f"{path}: holds the arrays {keys}; expected `key` to say which")
                key = keys[0]
            if key not in keys:
                raise ValueError(f"{path}: has no array {key!r}; it holds {keys}")
            return z[key]
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: not a readable numpy file without pickled objects ({e})") from None
    except OSError as e:
        raise ValueError(f"{path}: not a readable numpy file ({e})") from None


def kinds(ds: dict) -> list[str]:
    """Each modality's kind, `vector` or `sequence`, from its file's shape (CSV columns are
    vectors); [] where a file cannot be read yet (`check` names the fault)."""
    out = []
    try:
        for m in ds["files"]["modalities"]:
            if Path(m["path"]).suffix.lower() == ".csv":
                out.append("vector")
            else:
                out.append("sequence" if _array(m["path"], m.get("key")).ndim == 3 else "vector")
    except (ValueError, OSError):
        return []
    return out


def _where(path: str, i: int, csv_col: str | None = None) -> str:
    """Where sample i is: a CSV line and column, or an array row."""
    if csv_col is not None:
        return f"{path}: line {_line(i)}, column {csv_col!r}"
    return f"{path}: row {i} (counted from 0)"


def _values(spec: dict, files: _Files, what: str) -> tuple[list | np.ndarray, str | None]:
    """A one-per-sample column: CSV strings, or a 1-D (labels: also 2-D) array; and the CSV column."""
    path = spec["path"]
    if Path(path).suffix.lower() == ".csv":
        if "key" in spec:
            raise ValueError(f"{path}: `key` is for .npz files; a .csv file's {what} is a `column`")
        if "column" not in spec:
            raise ValueError(f"{path}: expected `column`, the header of the {what} column")
        header, rows = files.table(path)
        col = spec["column"]
        if col not in header:
            raise ValueError(f"{path}: has no column {col!r} (the {what}); its columns: {_clip(header)}")
        j = header.index(col)
        return [r[j].strip() for r in rows], col
    if "column" in spec:
        raise ValueError(f"{path}: `column` is for .csv files; a numpy file's {what} is an array (`key` for .npz)")
    return _array(path, spec.get("key")), None


def _numbers(a: np.ndarray, path: str, name: str) -> None:
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{path}: dtype {a.dtype} (modality {name!r}); expected numbers")
    if a.ndim not in (2, 3) or a.shape[-1] == 0 or (a.ndim == 3 and a.shape[1] == 0):
        raise ValueError(f"{path}: shape {a.shape} (modality {name!r}); expected (samples, features) or "
                         f"(samples, steps, features)")


def _finite_and_varying(a: np.ndarray, path: str, name: str, columns: list[str] | None) -> None:
    """Every value finite (the first that is not named), and not one value everywhere."""
    lo, hi = np.inf, -np.inf
    for start in range(0, a.shape[0], CHUNK_ROWS):
        x = np.asarray(a[start:start + CHUNK_ROWS], dtype=np.float64)
        bad = ~np.isfinite(x)
        if bad.any():
            pos = np.argwhere(bad)[0]
            i = start + int(pos[0])
            v = x[tuple(pos)]
            if columns is not None:
                raise ValueError(f"{_where(path, i, columns[int(pos[-1])])}: {v}; expected a finite number")
            at = f"step {int(pos[1])}, feature {int(pos[2])}" if a.ndim == 3 else f"feature {int(pos[1])}"
            raise ValueError(f"{_where(path, i)}, {at}: {v}; expected finite values")
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    if lo == hi:
        what = f"the columns {_clip(columns)}" if columns is not None else "every row and feature"
        raise ValueError(f"{path}: modality {name!r} has one value everywhere ({lo:g} in {what}); "
                         f"expected features that vary between samples")


def _csv_features(m: dict, files: _Files, used: set[str]) -> tuple[np.ndarray, list[str]]:
    path = m["path"]
    header, rows = files.table(path)
    sel = m.get("columns")
    if sel is None:
        cols = [h for h in header if h not in used]
    elif isinstance(sel, str):
        cols = [h for h in header if fnmatch.fnmatchcase(h, sel)]
    else:
        missing = [c for c in sel if c not in header]
        if missing:
            raise ValueError(f"{path}: has no column(s) {_clip(missing)} (modality {m['name']!r}); "
                             f"its columns: {_clip(header)}")
        cols = list(sel)
    if not cols:
        raise ValueError(f"{path}: no column matches {sel!r} (modality {m['name']!r}); its columns: {_clip(header)}")
    idx = [header.index(c) for c in cols]
    x = np.empty((len(rows), len(cols)), dtype=np.float64)
    for i, r in enumerate(rows):
        for k, j in enumerate(idx):
            cell = r[j].strip()
            try:
                x[i, k] = float(cell)
            except ValueError:
                raise ValueError(f"{_where(path, i, cols[k])}: {cell!r}; expected a number "
                                 f"(modality {m['name']!r})") from None
    return x, cols


def _features(m: dict, files: _Files, used: dict[str, set[str]]) -> np.ndarray:
    path = m["path"]
    if Path(path).suffix.lower() == ".csv":
        if "key" in m:
            raise ValueError(f"{path}: `key` is for .npz files; a .csv modality takes `columns`")
        x, cols = _csv_features(m, files, used.get(path, set()))
        _finite_and_varying(x, path, m["name"], cols)
        return x
    if "columns" in m:
        raise ValueError(f"{path}: `columns` is for .csv files (modality {m['name']!r})")
    a = _array(path, m.get("key"))
    _numbers(a, path, m["name"])
    _finite_and_varying(a, path, m["name"], None)
    return a


def _read_classes(spec) -> list[str] | None:
    if spec is None or isinstance(spec, list):
        return spec
    p = Path(spec)
    if not p.is_file():
        raise FileNotFoundError(f"{spec}: no such file (the class names, one a line)")
    names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    while names and not names[-1]:
        names.pop()
    for i, n in enumerate(names):
        if not n:
            raise ValueError(f"{spec}: line {i + 1}: empty; expected one class name a line")
        if n in names[:i]:
            raise ValueError(f"{spec}: line {i + 1}: {n!r} is listed twice; expected each class once")
    if len(names) < 2:
        raise ValueError(f"{spec}: {len(names)} class name(s); expected at least 2")
    return names


def _sorted_names(values) -> list[str]:
    distinct = sorted(set(values))
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return distinct


def _labels(files_cfg: dict, files: _Files) -> tuple[np.ndarray, list[str]]:
    spec, multilabel = files_cfg["labels"], files_cfg["multilabel"]
    path = spec["path"]
    given = _read_classes(files_cfg.get("classes"))
    values, col = _values(spec, files, "labels")
    if isinstance(values, np.ndarray):
        a = values
        if a.ndim == 2:
            if not multilabel:
                raise ValueError(f"{path}: labels of shape {a.shape} (multi-hot); expected one label per sample, "
                                 f"or `multilabel: true`")
            if a.dtype.kind not in "biuf" or not np.isin(a, (0, 1)).all():
                raise ValueError(f"{path}: multi-hot labels must be 0 or 1; found "
                                 f"{_clip(np.unique(a[~np.isin(a, (0, 1))]).tolist()) if a.dtype.kind in 'biuf' else a.dtype}")
            classes = given or [str(k) for k in range(a.shape[1])]
            if len(classes) != a.shape[1]:
                raise ValueError(f"{path}: multi-hot labels with {a.shape[1]} columns; expected {len(classes)}, "
                                 f"one per class of `classes`")
            return np.asarray(a, dtype=np.float32), classes
        if a.ndim != 1:
            raise ValueError(f"{path}: labels of shape {a.shape}; expected one label per sample (N,)")
        if a.dtype.kind in "iuf" or a.dtype.kind == "b":
            if a.dtype.kind == "f":
                bad = np.flatnonzero(~np.isfinite(a) | (a != np.round(a)))
                if len(bad):
                    raise ValueError(f"{_where(path, int(bad[0]))}: label {a[bad[0]]}; expected an integer class index")
            ints = np.asarray(a).astype(np.int64)
            if given is not None:
                bad = np.flatnonzero((ints < 0) | (ints >= len(given)))
                if len(bad):
                    raise ValueError(f"{_where(path, int(bad[0]))}: label {ints[bad[0]]}; expected a class index "
                                     f"in [0, {len(given) - 1}] ({len(given)} classes)")
                if multilabel:
                    raise ValueError(f"{path}: integer labels, one per sample; a multi-label set's labels are "
                                     f"multi-hot (N, classes) or names joined by {LABEL_SEP!r}")
                return ints, given
            values = [str(int(v)) for v in ints]
        elif a.dtype.kind in "US":
            values = [str(v).strip() for v in a.tolist()]
        else:
            raise ValueError(f"{path}: labels of dtype {a.dtype}; expected integers or strings")
    # names, one cell per sample (multi-label: joined by LABEL_SEP)
    cells = [[x.strip() for x in v.split(LABEL_SEP) if x.strip()] if multilabel else [v] for v in values]
    for i, names in enumerate(cells):
        if not multilabel and not names[0]:
            raise ValueError(f"{_where(path, i, col)}: empty; expected a class name")
    classes = given or _sorted_names(x for names in cells for x in names)
    if len(classes) < 2:
        raise ValueError(f"{path}: the labels name one class ({classes[0] if classes else 'none'}); "
                         f"expected at least 2")
    if multilabel:
        bad = [c for c in classes if LABEL_SEP in c]
        if bad:
            raise ValueError(f"{path}: class name(s) {_clip(bad)} hold {LABEL_SEP!r}, the multi-label separator")
    lookup = {c: k for k, c in enumerate(classes)}
    for i, names in enumerate(cells):
        for x in names:
            if x not in lookup:
                hint = f" (a multi-label set? `multilabel: true`)" if LABEL_SEP in x and not multilabel else ""
                raise ValueError(f"{_where(path, i, col)}: label {x!r}; expected one of the classes "
                                 f"{_clip(classes)}{hint}")
    if multilabel:
        y = np.zeros((len(cells), len(classes)), dtype=np.float32)
        for i, names in enumerate(cells):
            y[i, [lookup[x] for x in names]] = 1.0
        return y, classes
    return np.array([lookup[n[0]] for n in cells], dtype=np.int64), classes


def _strings(spec: dict, files: _Files, what: str, n: int) -> tuple[list[str], str | None]:
    values, col = _values(spec, files, what)
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(f"{spec['path']}: {what} of shape {values.shape}; expected one per sample ({n},)")
        values = [str(v).strip() for v in values.tolist()]
    return values, col


def _split(files_cfg: dict, files: _Files, labels: np.ndarray, multilabel: bool) -> tuple[np.ndarray, str]:
    s = files_cfg["split"]
    n = len(labels)
    if "path" in s:
        values, col = _strings(s, files, "split", n)
        _rows(s["path"], len(values), n, files_cfg)
        for i, v in enumerate(values):
            if v not in SPLITS:
                raise ValueError(f"{_where(s['path'], i, col)}: split {v!r}; expected train, val or test")
        split = np.array(values, dtype=object)
        rule = f"given: {s['path']}" + (f" column {col}" if col else "")
        where = f"{s['path']}" + (f": column {col!r}" if col else "")
    else:
        key = labels if not multilabel else np.unique(labels, axis=0, return_inverse=True)[1].reshape(-1)
        split = stratified_split(key, s["train"], s["val"], s["seed"])
        pct = [round(100 * x, 1) for x in (s["train"], s["val"], 1 - s["train"] - s["val"])]
        rule = "stratified " + "/".join(f"{x:g}" for x in pct) + f" seed {s['seed']}"
        where = f"{files_cfg['labels']['path']}: the {rule} split of its {n} samples"
    for part in SPLITS:
        if not (split == part).any():
            raise ValueError(f"{where}: no sample in the {part} split; expected train, val and test each to "
                             f"have samples")
    return split, rule


def _rows(path: str, got: int, n: int, files_cfg: dict) -> None:
    if got != n:
        raise ValueError(f"{path}: {got} rows; expected {n}, one per sample, as the labels "
                         f"({files_cfg['labels']['path']}) have")


def load(ds: dict) -> OwnData:
    """Every file of data configuration `ds` (source files, defaults filled in), read and checked
    (ValueError / FileNotFoundError: one line naming the file, the row or column, and what was
    expected)."""
    cfg = ds["files"]
    files = _Files()
    labels, classes = _labels(cfg, files)
    n = len(labels)
    used: dict[str, set[str]] = {}
    for key in ("labels", "split", "id"):
        spec = cfg.get(key)
        if spec and "column" in spec:
            used.setdefault(spec["path"], set()).add(spec["column"])
    views = []
    for m in cfg["modalities"]:
        x = _features(m, files, used)
        _rows(m["path"], len(x), n, cfg)
        views.append(x)
    if "id" in cfg:
        ids, col = _strings(cfg["id"], files, "ids", n)
        _rows(cfg["id"]["path"], len(ids), n, cfg)
        first: dict[str, int] = {}
        for i, v in enumerate(ids):
            if not v:
                raise ValueError(f"{_where(cfg['id']['path'], i, col)}: empty; expected a sample id")
            if v in first:
                raise ValueError(f"{_where(cfg['id']['path'], i, col)}: id {v!r} again (first at "
                                 f"{'line ' + str(_line(first[v])) if col else 'row ' + str(first[v])}); "
                                 f"expected unique ids")
            first[v] = i
    else:
        ids = [str(i) for i in range(n)]
    split, rule = _split(cfg, files, labels, cfg["multilabel"])
    return OwnData([m["name"] for m in cfg["modalities"]], views, labels, classes, split, ids,
                   cfg["multilabel"], rule)


def _stamp(paths) -> tuple:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((p, None, None))
    return tuple(out)


_CHECKED: set = set()


def check(ds: dict) -> None:
    """The configuration's files hold what it says (see `load`); remembered in this process while
    the files are unchanged (the Snakefile and the CLI resolve the params more than once)."""
    key = (json.dumps(ds["files"], sort_keys=True), _stamp(inputs(ds)))
    if key in _CHECKED:
        return
    load(ds)
    _CHECKED.add(key)


def inputs(ds: dict) -> list[str]:
    """Every file the configuration names, once each, in order."""
    cfg = ds["files"]
    paths = [m["path"] for m in cfg["modalities"]]
    paths += [cfg[k]["path"] for k in ("labels", "split", "id") if k in cfg and "path" in cfg[k]]
    if isinstance(cfg.get("classes"), str):
        paths.append(cfg["classes"])
    return list(dict.fromkeys(paths))


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- the source's steps (dyncim.data.sources) ----------------------------------------------------

def bring_in(ds: dict, out: Path, log=print) -> dict:
    """Check the user's files (they stay where they are), record each one's sha256 and the split
    (`split.csv`: row, id, split) in `out`; returns the marker's record."""
    from ...atomic import atomic_path
    data = load(ds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / SPLIT_FILE) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "id", "split"])
        w.writerows([i, sid, s] for i, (sid, s) in enumerate(zip(data.ids, data.split)))
    counts = {s: int((data.split == s).sum()) for s in SPLITS}
    record = {"files": {p: {"sha256": sha256_of(p), "bytes": os.path.getsize(p)} for p in inputs(ds)},
              "samples": data.n, "classes": data.classes, "multilabel": data.multilabel,
              "modalities": [{"name": n, "shape": list(x.shape[1:])} for n, x in zip(data.names, data.views)],
              "split": data.split_rule, "split_file": SPLIT_FILE, "counts": counts}
    if log:
        log(f"own data: {data.n} samples, {len(data.classes)} classes"
            f"{' (multi-label)' if data.multilabel else ''}, modalities "
            + ", ".join(f"{n} {tuple(x.shape[1:])}" for n, x in zip(data.names, data.views))
            + f"; split {data.split_rule}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return record


def _recorded_split(raw: Path, record: dict, data: OwnData) -> np.ndarray:
    path = raw / record["split_file"]
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if [r["id"] for r in rows] != data.ids:
        raise ValueError(f"{path}: its samples are not the files' any more; rerun the media step")
    return np.array([r["split"] for r in rows], dtype=object)


def build(ds: dict, raw: Path, record: dict, out: Path, log=print) -> dict:
    """The store of the user's files: one float32 array per modality and split, standardised with
    the train split's statistics (per feature; over the steps too, for sequences) unless
    `standardize: false`; the statistics in `standardize.npz`."""
    from ..io import store
    from ...atomic import atomic_path
    for p, want in record["files"].items():
        if sha256_of(p) != want["sha256"]:
            raise ValueError(f"{p}: changed since the media step recorded it ({raw / 'ready.json'}); "
                             f"rerun the media step")
    data = load(ds)
    split = _recorded_split(raw, record, data)
    train = split == "train"
    standardize = ds["files"]["standardize"]
    stats, views = {}, []
    for name, x in zip(data.names, data.views):
        x = np.asarray(x, dtype=np.float64)
        if standardize:
            rows = x[train].reshape(-1, x.shape[-1])
            mu, sd = rows.mean(0), rows.std(0)
            sd[sd < 1e-8] = 1.0   # constant features stay constant (zero) instead of dividing by 0
            x = (x - mu) / sd
            stats[f"{name}.mean"], stats[f"{name}.std"] = mu, sd
        views.append(x.astype(np.float32))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if standardize:
        with atomic_path(out / STATS_FILE) as tmp, open(tmp, "wb") as f:
            np.savez(f, **stats)
    label_names = ([LABEL_SEP.join(c for c, on in zip(data.classes, row) if on) for row in data.labels]
                   if data.multilabel else [data.classes[k] for k in data.labels])
    digest = {p: v["sha256"] for p, v in record["files"].items()}
    for part in SPLITS:
        idx = np.flatnonzero(split == part)
        ids = [data.ids[i] for i in idx]
        plan = {"dataset": "files", "files": digest, "standardize": standardize, "names": data.names,
                "classes": data.classes, "multilabel": data.multilabel, "ids": ids}
        path = out / part
        if store.is_complete(path, plan):
            continue
        arrays = {n: (x.shape[1:], "float32") for n, x in zip(data.names, views)}
        with store.SplitWriter(path, len(idx), arrays, plan) as w:
            for k, i in enumerate(idx):
                if not w.done[k]:
                    w.write(k, {n: x[i] for n, x in zip(data.names, views)}, {"ok": True})
            w.finish(ids, [label_names[i] for i in idx],
                     {"dataset": "files", "classes": data.classes, "multilabel": data.multilabel,
                      "standardized": standardize, "split": data.split_rule})
    if log:
        log(f"own data: store {out}, " + ", ".join(f"{p} {int((split == p).sum())}" for p in SPLITS))
    return {"split": data.split_rule, "multilabel": data.multilabel, "standardized": standardize,
            "modalities": data.names}


# ---- the worked example (configs/own-data.yaml) ------------------------------------------------------

EXAMPLE_CLASSES = ("calm", "busy", "alarm")


def write_example(folder: str | Path, per_class: int = 30, seed: int = 0) -> list[Path]:
    """Tiny files in the three formats, as a user would bring them: `table.csv` (id, label, split
    and four `meta_*` feature columns), `audio.npy` (vectors (N, 8)) and `motion.npz` (sequences
    (N, 6, 3), key `x`); class-dependent signals plus noise, the same values for the same seed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    C = len(EXAMPLE_CLASSES)
    labels = rng.permutation(np.repeat(np.arange(C), per_class))
    n = len(labels)
    audio = (rng.standard_normal((C, 8)) * 1.2)[labels] + rng.standard_normal((n, 8))
    steps = np.linspace(0, 1, 6)
    wave = np.stack([np.sin(2 * np.pi * (k + 1) * steps) for k in range(C)])       # (C, T)
    motion = wave[labels][:, :, None] * np.array([1.0, 0.5, -0.5]) + 0.8 * rng.standard_normal((n, 6, 3))
    meta = 0.6 * labels[:, None] + rng.standard_normal((n, 4))
    split = np.empty(n, dtype=object)
    for c in range(C):        # a split column, by hand: 60 / 20 / 20 in each class
        idx = np.flatnonzero(labels == c)
        a, b = int(0.6 * len(idx)), int(0.8 * len(idx))
        split[idx[:a]], split[idx[a:b]], split[idx[b:]] = "train", "val", "test"
    np.save(folder / "audio.npy", audio.astype(np.float32))
    np.savez(folder / "motion.npz", x=motion.astype(np.float32))
    with open(folder / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "split", *(f"meta_{k}" for k in range(4))])
        for i in range(n):
            w.writerow([f"s{i:03d}", EXAMPLE_CLASSES[labels[i]], split[i], *(f"{v:.4f}" for v in meta[i])])
    return [folder / "table.csv", folder / "audio.npy", folder / "motion.npz"]


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m dyncim.data.sources.files",
                                 description="write the own-data worked example (configs/own-data.yaml)")
    ap.add_argument("--example", required=True, metavar="FOLDER", help="where to write it")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for p in write_example(args.example, seed=args.seed):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
