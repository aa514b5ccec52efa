"""The image + text sets (Food-101, MM-IMDb): their sample list, and the extraction of frozen
pretrained features into the feature store.

Discovery (dyncim.data.sources.food101 / mmimdb, called by dyncim.data.steps.paper_raw) writes `samples.csv`
beside the media marker: one row per usable sample, `id,split,labels,image,text` (labels: the class
name; for a multi-label set the label names joined by `|`, possibly none; image: the path of the
image file in the user's copy, which is not copied; text: the sample's text itself), and
`problems.csv` (`id,split,problem`) for the samples left out.

Extraction (`extract_store`, called by dyncim.data.steps.paper_store): per split, the frozen text and
image models (dyncim.data.extraction.pretrained) turn each sample into two vectors stored as float32 arrays
`text.npy` (N, d_text) and `image.npy` (N, d_image) through `dyncim.data.io.store.SplitWriter`:
batched (`batch_size` samples per forward pass), with a progress bar, on CUDA when there is one,
and resumable (samples already committed are skipped; a split complete with the same plan is left
as it is, without loading the models). An image that cannot be decoded makes its sample `ok=0`
(recorded with the error, dropped at training time); the split is still written.
"""
from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ...atomic import write_text
from ..io.store import SplitWriter, is_complete

EXTRACT_VERSION = 1   # bump when the code's output for the same models and samples changes
SAMPLE_COLUMNS = ("id", "split", "labels", "image", "text")
LABEL_SEP = "|"


@dataclass(frozen=True)
class Sample:
    id: str
    split: str
    labels: tuple[str, ...]   # one class name; for a multi-label set any number of label names
    image: str
    text: str


def _csv(rows, header) -> str:
    import io
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_samples(path: str | Path, samples: Sequence[Sample]) -> Path:
    write_text(path, _csv(([s.id, s.split, LABEL_SEP.join(s.labels), s.image, s.text] for s in samples),
                          SAMPLE_COLUMNS))
    return Path(path)


def write_problems(path: str | Path, problems: Sequence[tuple[str, str, str]]) -> Path:
    write_text(path, _csv(problems, ("id", "split", "problem")))
    return Path(path)


def read_samples(path: str | Path) -> list[Sample]:
    path = Path(path)
    csv.field_size_limit(sys.maxsize)   # web-page texts can be long
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        if tuple(r.fieldnames or ()) != SAMPLE_COLUMNS:
            raise ValueError(f"{path}: expected the columns {','.join(SAMPLE_COLUMNS)}")
        return [Sample(row["id"], row["split"], tuple(x for x in row["labels"].split(LABEL_SEP) if x),
                       row["image"], row["text"]) for row in r]


def split_plan(samples: Sequence[Sample], classes: Sequence[str], multilabel: bool, models: dict) -> dict:
    """What determines a split's content: the models (names, revisions, transformers' version),
    the samples and their labels (paths left out: moving the raw data keeps the store)."""
    return {"extract_version": EXTRACT_VERSION, "models": models, "classes": list(classes),
            "multilabel": multilabel, "samples": [[s.id, LABEL_SEP.join(s.labels)] for s in samples]}


def model_settings(media: dict) -> dict:
    """The configured models (`media` keys) and the installed transformers' version: the part of
    the plan known without loading anything."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        tv = version("transformers")
    except PackageNotFoundError:
        from .pretrained import require_transformers
        require_transformers()
        raise
    return {"text_model": media["text_model"], "text_revision": media.get("text_revision"),
            "image_model": media["image_model"], "image_revision": media.get("image_revision"),
            "transformers": tv}


def extract_split(samples: Sequence[Sample], out_dir: str | Path, classes: Sequence[str], multilabel: bool,
                  models: dict, encoders, batch_size: int = 64, commit_every: int = 256,
                  commit_seconds: float = 15.0, progress: bool = True, log=None) -> int:
    """Features of `samples` (in this order) into the split folder `out_dir` (see the module
    docstring); `encoders`: a dyncim.data.extraction.pretrained.FrozenEncoders, or a function returning one
    (called only when there is something to extract). Returns the number of samples extracted
    by this call (0 for a split already complete)."""
    from tqdm import tqdm

    from .pretrained import image_input
    out_dir = Path(out_dir)
    plan = split_plan(samples, classes, multilabel, models)
    if is_complete(out_dir, plan):
        if log:
            log(f"{out_dir}: complete, nothing to do")
        return 0
    enc = encoders() if callable(encoders) else encoders
    dims = enc.dims
    arrays = {"text": ((dims["text"],), "float32"), "image": ((dims["image"],), "float32")}
    t0, done_now = time.time(), 0
    with SplitWriter(out_dir, len(samples), arrays, plan) as w:
        todo = [i for i in range(len(samples)) if not w.done[i]]
        if log and w.resumed:
            log(f"{out_dir}: resuming, {len(samples) - len(todo)} of {len(samples)} samples already done")
        bar = tqdm(total=len(samples), initial=len(samples) - len(todo), unit="sample",
                   desc=f"features {out_dir.name}", disable=not progress)
        last, since = time.monotonic(), 0
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            pixels, good, errors = [], [], {}
            for i in batch:
                try:
                    pixels.append(image_input(samples[i].image))
                    good.append(i)
                except Exception as e:  # noqa: BLE001: an unreadable image is recorded, not fatal
                    errors[i] = f"{samples[i].image}: {type(e).__name__}: {e}".replace("\n", " ")
            if good:
                text = enc.encode_text([samples[i].text for i in good])
                image = enc.encode_images(np.stack(pixels))
                for k, i in enumerate(good):
                    w.write(i, {"text": text[k], "image": image[k]}, {"ok": True})
            for i, err in errors.items():
                w.write(i, None, {"ok": False, "error": err})
            done_now += len(batch)
            since += len(batch)
            bar.update(len(batch))
            if since >= commit_every or time.monotonic() - last > commit_seconds:
                w.commit()
                last, since = time.monotonic(), 0
        bar.close()
        w.finish([s.id for s in samples], [LABEL_SEP.join(s.labels) for s in samples],
                 {"dataset": "image-text", "classes": list(classes), "multilabel": multilabel,
                  "models": {**models, **getattr(enc, "info", {})}, "extract_version": EXTRACT_VERSION})
    if log:
        log(f"{out_dir}: {done_now} samples extracted in {time.time() - t0:.1f} s")
    return done_now


def extract_store(samples_csv: str | Path, out_root: str | Path, classes: Sequence[str], multilabel: bool,
                  media: dict, splits: Sequence[str] = ("train", "val", "test"), progress: bool = True,
                  log=None) -> dict[str, int]:
    """Every split of a `samples.csv` into `out_root/<split>/`; the models are loaded once, and
    only when a split needs them. Returns {split: samples extracted by this call}."""
    from .pretrained import load_encoders
    samples = read_samples(samples_csv)
    models = model_settings(media)
    loaded = []

    def encoders():
        if not loaded:
            loaded.append(load_encoders(media["text_model"], media["image_model"], media.get("text_revision"),
                                        media.get("image_revision")))
        return loaded[0]
    return {s: extract_split([x for x in samples if x.split == s], Path(out_root) / s, classes, multilabel,
                             models, encoders, media.get("batch_size", 64), progress=progress, log=log)
            for s in splits}


def build_store(ds: dict, raw: Path, record: dict, out: Path, classes: Sequence[str], multilabel: bool,
                log=None) -> dict:
    """An image + text source's store step (dyncim.data.sources: `build`): the media step's
    `samples.csv` through the frozen encoders of `ds["media"]`; returns the models for its summary."""
    extract_store(raw / record["samples"], out, classes, multilabel, ds["media"], log=log)
    return {"models": {k: ds["media"].get(k) for k in ("text_model", "text_revision", "image_model",
                                                       "image_revision")}}
