"""VGGSound (Chen et al., ICASSP 2020): about 200k ten-second YouTube clips in 309 classes, audio
and video from one file, from the user's copy.

The split and the labels come from the official `vggsound.csv` (media `index`), one clip a line,
no header: `youtube_id,start_seconds,label,train|test` (labels with a comma are quoted). The clip
id is `<youtube id>_<start:06d>`, as the released files are named (`<id>.mp4`); a file named
`<youtube id>_<start:06d>_<end:06d>` or with an unpadded start serves the clip too (not a bare
YouTube id: one video can give several clips). Files come from a folder (`from_dir`, any layout,
one walk) or a list of files (`clip_list`, as for Kinetics-Sounds).

Classes: the sorted distinct labels of the whole `vggsound.csv` (what the peers do), which must
number 309: a file with fewer classes would shift every class index, so it is refused
(`expect_classes`). The list is written to `classes.txt` beside `clips.csv`.

Validation split (ours: VGGSound has none): from each class's train clips, the fraction
`VAL_FRACTION` (5 %, rounded half up, at least one when the class has two or more) with the
smallest sha256 of `"vggsound-val:<clip id>"`. The rule is seeded by that fixed salt, stratified,
independent of the file's order and of which clips the user has (it is drawn from the whole
csv), so everyone gets the same val clips. Missing and unreadable clips are listed in
`problems.csv` and left out, not fatal (dyncim.data.io.discovery).

Memory: the csv is read three times as a stream (labels and counts; the val draw, keeping only
the val clips per class on a heap; the located rows, streamed to the output files); what stays
is the file table (two strings a file), the set of clip ids (duplicate check) and the val ids.
"""
from __future__ import annotations

import csv
import hashlib
import heapq
import math
from collections import Counter
from pathlib import Path
from typing import Iterator

from ...atomic import write_text
from ..io import discovery
from .kinetics_sounds import clip_key

N_CLASSES = 309
VAL_FRACTION = 0.05
VAL_SALT = "vggsound-val"
CLASSES = "classes.txt"


def clip_id(youtube_id: str, start: int) -> str:
    return f"{youtube_id}_{start:06d}"


def read_index(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """(clip id, label, train|test) of every line of `vggsound.csv`, streamed; a header line is
    skipped; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (media.index: the official vggsound.csv)")
    with open(path, encoding="utf-8-sig", newline="") as f:
        for no, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 4:
                raise ValueError(f"{path}:{no}: expected youtube_id,start_seconds,label,train|test, got {row}")
            yt, start, label, split = (x.strip() for x in row)
            if no == 1 and not start.isdigit() and split not in ("train", "test"):
                continue  # a header
            if not start.isdigit():
                raise ValueError(f"{path}:{no}: start_seconds {start!r} is not a whole number of seconds")
            if split not in ("train", "test"):
                raise ValueError(f"{path}:{no}: split {split!r}; expected train or test")
            if not yt or not label:
                raise ValueError(f"{path}:{no}: empty youtube_id or label")
            yield clip_id(yt, int(start)), label, split


def _val_key(clip: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{VAL_SALT}:{clip}".encode()).digest()[:8], "big")


def n_val(n_train: int, fraction: float = VAL_FRACTION) -> int:
    """Val clips drawn from a class with `n_train` train clips: round half up, >= 1 if n >= 2."""
    k = math.floor(n_train * fraction + 0.5)
    return max(k, 1) if n_train >= 2 else 0


def val_clips(index: str | Path, counts: dict[str, int], fraction: float = VAL_FRACTION) -> set[str]:
    """The val clips (see the module docstring), from a second pass over the csv."""
    want = {c: n_val(n, fraction) for c, n in counts.items()}
    heaps: dict[str, list] = {c: [] for c in counts}
    for clip, label, split in read_index(index):
        if split != "train" or not want[label]:
            continue
        h, item = heaps[label], (-_val_key(clip), clip)  # a max-heap of the smallest keys
        if len(h) < want[label]:
            heapq.heappush(h, item)
        elif item > h[0]:
            heapq.heapreplace(h, item)
    return {clip for h in heaps.values() for _, clip in h}


def canonical(stem: str) -> str | None:
    """The clip id a file stem serves (`<id>_<start>[_<end>]` -> `<id>_<start:06d>`), else None."""
    key = clip_key(stem)
    return None if key is None or key[1] is None else clip_id(*key)


def file_table(from_dir: str | Path | None = None, clip_list: str | Path | None = None) -> dict[str, str]:
    """{clip id: path} of the user's files: the exact stem, and the canonical clip id of stems like
    `<id>_<start>_<end>` where no file has that exact name."""
    if clip_list is not None:
        from .kinetics_sounds import read_clip_list
        idx = read_clip_list(clip_list)
        files = {stem: str(p) for stem, p in idx.by_stem.items()}
    else:
        files = discovery.walk_media(from_dir)
    for stem in list(files):
        c = canonical(stem)
        if c is not None and c not in files:
            files[c] = files[stem]
    return files


def prepare_vggsound(out: str | Path, index: str | Path, *, from_dir: str | Path | None = None,
                     clip_list: str | Path | None = None, probe: bool = True, jobs: int = 4,
                     expect_classes: int | None = N_CLASSES, log=print) -> dict:
    """Locate (and probe) every clip of `vggsound.csv` (`index`) in the user's copy; write into
    `out` `classes.txt`, then `clips.csv`, `problems.csv` and `summary.json`
    (dyncim.data.io.discovery.Report). Returns the per-split counts."""
    if (from_dir is None) == (clip_list is None):
        raise ValueError("VGGSound: give exactly one of from_dir (a folder of clips) and clip_list "
                         "(a CSV/TXT list of clip files)")
    out = Path(out)
    labels: set[str] = set()
    train_counts: Counter = Counter()
    listed: Counter = Counter()
    for _, label, split in read_index(index):
        labels.add(label)
        listed[split] += 1
        if split == "train":
            train_counts[label] += 1
    classes = sorted(labels)
    if expect_classes is not None and len(classes) != expect_classes:
        raise ValueError(f"{index}: {len(classes)} distinct labels; the official vggsound.csv has "
                         f"{expect_classes} (class indices are the sorted labels, so a subset would "
                         f"shift them): give the whole file")
    val = val_clips(index, {c: train_counts[c] for c in classes})
    files = file_table(from_dir, clip_list)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CLASSES, "\n".join(classes) + "\n")
    seen: set[str] = set()
    duplicates = []

    def rows():
        for clip, label, split in read_index(index):
            if clip in seen:
                duplicates.append((clip, label, "val" if clip in val else split))
                continue
            seen.add(clip)
            yield clip, label, "val" if clip in val else split, files.get(clip)

    source = str(from_dir if from_dir is not None else clip_list)
    with discovery.Report(out, "VGGSound") as rep:
        rep.add_checked(rows(), lambda r: discovery.check_file(r[3], probe), jobs)
        for clip, label, split in duplicates:
            rep.add(clip, label, split, None, ("duplicate", "clip listed before; its first listing is used"))
        return rep.close({"source": source, "index": str(index), "files_indexed": len(files), "probed": probe,
                          "classes": len(classes), "index_listed": dict(listed),
                          "val_rule": {"fraction_of_train_per_class": VAL_FRACTION, "salt": VAL_SALT,
                                       "clips": len(val)}}, log)


def read_classes(raw: str | Path) -> list[str]:
    """The class list that `prepare_vggsound` wrote into the raw folder `raw`."""
    from .kinetics_sounds import read_classes as read
    return read(Path(raw) / CLASSES)


# ---- the source's steps (dyncim.data.sources) ----------------------------------------------------

def bring_in(ds: dict, out: Path, log=print) -> dict:
    media = ds["media"]
    counts = prepare_vggsound(out, media["index"], from_dir=media.get("from_dir"),
                              clip_list=media.get("clip_list"), jobs=media["jobs"], log=log)
    return {"clips": "clips.csv", "problems": "problems.csv", "classes": "classes.txt", "counts": counts}


def classes(raw: Path, record: dict) -> list[str]:
    return read_classes(raw)  # the sorted labels of the user's vggsound.csv, written by the media step


def recipe():
    """OGM-GE's VGGSoundDataset: 16 kHz mono, tiled, a 5 s window (the middle one of the peers'
    random start in [0, 5] s), STFT 256 / hop 128, log|S| -> 129 x 626; 1 fps, 3 frames."""
    from ..extraction.extract import FrameSpec, Recipe
    from ..extraction.spectrogram import LogSTFT
    return Recipe("vggsound", LogSTFT(sample_rate=16000, seconds=5.0, n_fft=256, hop=128, start=2.5),
                  FrameSpec(1.0, 3, (224, 224)), "mean")
