"""UPMC Food-101 (Wang et al. 2015, "Recipe recognition with large multimodal food dataset"):
~90k web images of the 101 Food-101 classes, each with the text of the web page it came from.

The user's copy (`media.from_dir`), in the layout of the commonly shared release:

    images/train/<class>/<name>.jpg     67,988 train images (the release's split)
    images/test/<class>/<name>.jpg      22,716 test images
    texts/train_titles.csv              one row per image: <name>.jpg,<text>,<class> (no header;
    texts/test_titles.csv               a header row, if present, is skipped)

or, instead of `texts/`, one text file per image, `texts_txt/<class>/<name>.txt` (as some copies
ship it). The CSV files are used when present. Images without a text (and texts without an
image) are left out and listed in `problems.csv`.

Validation split (our choice; the release has none): a seeded, stratified hold-out of
`VAL_FRACTION` of each class's train images (5,000 of 67,988 overall, the size of the dev split
that MMBT and later work hold out), drawn with numpy's default_rng(`VAL_SEED`) over the sorted ids.
Sample ids are `<class>/<name>` (the image's name without extension).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from ..extraction.image_text import Sample, write_problems, write_samples

IMAGE_EXT = (".jpg", ".jpeg", ".png")
VAL_FRACTION = 5000 / 67988
VAL_SEED = 0


def classes_of(root: str | Path) -> list[str]:
    train = Path(root) / "images" / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"{train}: missing; media.from_dir must be the Food-101 folder holding "
                                f"images/train/<class>/ and images/test/<class>/")
    return sorted(p.name for p in train.iterdir() if p.is_dir())


def _csv_texts(path: Path) -> dict[str, tuple[str, str]]:
    """{image file name: (text, class)} of one `<split>_titles.csv`."""
    csv.field_size_limit(sys.maxsize)
    out = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for k, row in enumerate(csv.reader(f)):
            if not row:
                continue
            if len(row) < 2:
                raise ValueError(f"{path}: row {k + 1} has {len(row)} field(s); expected <image>,<text>,<class>")
            if k == 0 and not row[0].lower().endswith(IMAGE_EXT):
                continue  # a header
            out[row[0]] = (row[1], row[2] if len(row) > 2 else "")
    return out


def text_source(root: Path) -> str:
    if (root / "texts" / "train_titles.csv").is_file() and (root / "texts" / "test_titles.csv").is_file():
        return "csv"
    if (root / "texts_txt").is_dir():
        return "txt"
    raise FileNotFoundError(f"{root}: no texts/train_titles.csv + texts/test_titles.csv and no texts_txt/ "
                            f"folder; expected one of the two Food-101 text layouts (docs/data.md)")


def val_ids(train_ids_by_class: dict[str, list[str]]) -> set[str]:
    rng = np.random.default_rng(VAL_SEED)
    out = set()
    for c in sorted(train_ids_by_class):
        ids = sorted(train_ids_by_class[c])
        k = round(len(ids) * VAL_FRACTION)
        if len(ids) >= 2:
            k = min(max(k, 1), len(ids) - 1)   # every class in both train and val
        else:
            k = 0
        out.update(ids[j] for j in rng.permutation(len(ids))[:k])
    return out


def prepare_food101(out: str | Path, from_dir: str | Path, log=print) -> dict:
    """Index the user's Food-101 copy: `samples.csv` and `problems.csv` in `out`; returns
    {"samples", "problems", "counts", "texts", "classes"}."""
    root, out = Path(from_dir).expanduser().resolve(), Path(out)
    classes = classes_of(root)
    source = text_source(root)
    found, problems = {}, []
    for split in ("train", "test"):
        texts = _csv_texts(root / "texts" / f"{split}_titles.csv") if source == "csv" else None
        seen = set()
        for c in classes:
            folder = root / "images" / split / c
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: missing; every class of images/train needs a folder in images/{split}")
            for img in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT):
                sid = f"{c}/{img.stem}"
                if source == "csv":
                    hit = texts.get(img.name)
                    seen.add(img.name)
                    if hit is not None and hit[1] and hit[1] != c:
                        problems.append((sid, split, f"label-mismatch: the CSV says {hit[1]}"))
                        continue
                    text = None if hit is None else hit[0]
                else:
                    f = root / "texts_txt" / c / f"{img.stem}.txt"
                    text = f.read_text(encoding="utf-8", errors="replace") if f.is_file() else None
                if text is None:
                    problems.append((sid, split, "no-text"))
                    continue
                found[sid] = Sample(sid, split, (c,), str(img), text)
        if source == "csv":
            problems += [(name, split, "no-image") for name in sorted(set(texts) - seen)]
    by_class: dict[str, list[str]] = {}
    for s in found.values():
        if s.split == "train":
            by_class.setdefault(s.labels[0], []).append(s.id)
    val = val_ids(by_class)
    samples = [Sample(s.id, "val", s.labels, s.image, s.text) if s.id in val else s for s in found.values()]
    order = {"train": 0, "val": 1, "test": 2}
    samples.sort(key=lambda s: (order[s.split], s.id))
    counts = {sp: sum(s.split == sp for s in samples) for sp in order}
    for sp, n in counts.items():
        if n == 0:
            raise ValueError(f"{root}: no usable {sp} sample (problems: {len(problems)})")
    write_samples(out / "samples.csv", samples)
    write_problems(out / "problems.csv", problems)
    log(f"Food-101 {root}: {len(classes)} classes, texts from {source}; " +
        ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; left out {len(problems)} (problems.csv)")
    return {"samples": "samples.csv", "problems": "problems.csv", "counts": counts, "texts": source,
            "classes": classes}


# ---- the source's steps (dyncim.data.sources) ----------------------------------------------------

def bring_in(ds: dict, out: Path, log=print) -> dict:
    """Images + texts indexed in the user's copy (not copied)."""
    from ..extraction.pretrained import check_transformers
    check_transformers()   # the extraction needs it: say so before the walk
    return prepare_food101(out, ds["media"]["from_dir"], log=log)


def build(ds: dict, raw: Path, record: dict, out: Path, log=print) -> dict:
    from ..extraction.image_text import build_store
    return build_store(ds, raw, record, out, record["classes"], False, log=log)
