"""AVE, the Audio-Visual Event data set (Tian et al., ECCV 2018): 4,143 ten-second YouTube clips
in 28 event classes, audio and video from one MP4, from the user's copy.

The data set ships as a folder holding `AVE/<youtube id>.mp4` and the annotation files
`Annotations.txt` (every clip), `trainSet.txt`, `valSet.txt` and `testSet.txt` (the official split:
3,339 / 402 / 402 clips), each line `Category&VideoID&Quality&StartTime&EndTime`; `Annotations.txt`
starts with that header line, and a header line is skipped in any of the files. The user names
that folder, or its `AVE/` subfolder with the annotation files beside it (`from_dir`).

The label is the Category field. The 28 class names, in index order (sorted), are shipped in
`resources/splits/ave/classes.txt`, so that class indices never depend on the user's files; a
category that is not among them is an error naming the file and line. The StartTime / EndTime
fields locate the event inside the clip (for event localisation); classification uses the whole
clip, as the imbalance peers do.

Files are found by stem (`<video id>.<ext>`, any folder under `from_dir`), probed in parallel, and
clips that are missing, unreadable or lack a stream are listed in `problems.csv` and left out, as
for Kinetics-Sounds (dyncim.data.io.discovery); a video id listed a second time is listed there as
`duplicate` (its first listing is used).
"""
from __future__ import annotations

from pathlib import Path

from ..io import discovery

RESOURCES = Path(__file__).resolve().parents[3] / "resources" / "splits" / "ave"
CLASSES_FILE = RESOURCES / "classes.txt"
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
ANNOTATIONS = "Annotations.txt"
OFFICIAL = {"train": 3339, "val": 402, "test": 402}  # the public release's split sizes
N_CLASSES = 28


def read_classes(path: str | Path = CLASSES_FILE) -> list[str]:
    from .kinetics_sounds import read_classes as read
    names = read(path)
    if len(names) != N_CLASSES:
        raise ValueError(f"{path}: {len(names)} class names, AVE has {N_CLASSES}")
    return names


def read_annotations(path: str | Path, classes: list[str] | None = None) -> list[tuple[str, str]]:
    """(video id, category) of every line of an AVE annotation file
    (`Category&VideoID&Quality&StartTime&EndTime`; a header line and blank lines skipped); errors
    name the file and line."""
    path = Path(path)
    known = set(classes) if classes is not None else None
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            fields = [x.strip() for x in line.split("&")]
            if len(fields) != 5:
                raise ValueError(f"{path}:{no}: expected Category&VideoID&Quality&StartTime&EndTime, got {line!r}")
            category, video = fields[0], fields[1]
            if category.lower() == "category" and video.lower() == "videoid":
                continue  # the header
            if not video:
                raise ValueError(f"{path}:{no}: empty VideoID")
            if known is not None and category not in known:
                raise ValueError(f"{path}:{no}: category {category!r} is not one of AVE's 28 classes "
                                 f"({CLASSES_FILE})")
            rows.append((video, category))
    return rows


def annotation_folder(from_dir: str | Path) -> Path:
    """The folder holding trainSet.txt / valSet.txt / testSet.txt: `from_dir` or its parent."""
    from_dir = Path(from_dir)
    if not from_dir.is_dir():
        raise FileNotFoundError(f"{from_dir}: no such folder")
    for d in (from_dir, from_dir.parent):
        if all((d / f).is_file() for f in SPLIT_FILES.values()):
            return d
    raise FileNotFoundError(f"{from_dir}: expected the AVE annotation files {', '.join(SPLIT_FILES.values())} "
                            f"in this folder or in {from_dir.parent}")


def split_rows(folder: Path, classes: list[str]) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """((video, category, split) in file order, (video, category, split) listed again), checked
    against Annotations.txt when it is there (same category for every video)."""
    every = None
    if (folder / ANNOTATIONS).is_file():
        every = dict(read_annotations(folder / ANNOTATIONS, classes))
    rows, again, seen = [], [], set()
    for split, name in SPLIT_FILES.items():
        for video, category in read_annotations(folder / name, classes):
            if every is not None and every.get(video, category) != category:
                raise ValueError(f"{folder / name}: {video} is {category!r} here but {every[video]!r} in "
                                 f"{folder / ANNOTATIONS}")
            (again if video in seen else rows).append((video, category, split))
            seen.add(video)
    return rows, again


def prepare_ave(out: str | Path, from_dir: str | Path, *, probe: bool = True, jobs: int = 4,
                classes: str | Path = CLASSES_FILE, log=print) -> dict:
    """Locate (and probe) every AVE clip of the official split in the user's copy; write into `out`
    `clips.csv`, `problems.csv` and `summary.json` (dyncim.data.io.discovery.Report). Returns the
    per-split counts; a split with no usable clip is an error (after the report is written)."""
    out = Path(out)
    names = read_classes(classes)
    folder = annotation_folder(from_dir)
    rows, again = split_rows(folder, names)
    files = discovery.walk_media(from_dir)
    listed = {s: sum(1 for r in rows if r[2] == s) for s in discovery.SPLITS}
    if log and listed != OFFICIAL:
        log(f"AVE: the split files list {listed} clips; the public release lists {OFFICIAL}")

    def located():
        for video, category, split in rows:
            yield video, category, split, files.get(video)

    with discovery.Report(out, "AVE") as rep:
        rep.add_checked(located(), lambda r: discovery.check_file(r[3], probe), jobs)
        for video, category, split in again:
            rep.add(video, category, split, None, ("duplicate", "video id listed before; its first listing is used"))
        return rep.close({"source": str(from_dir), "annotations": str(folder), "files_indexed": len(files),
                          "probed": probe, "classes": len(names), "official": OFFICIAL}, log)


# ---- the source's steps (dyncim.data.sources) ----------------------------------------------------

def bring_in(ds: dict, out: Path, log=print) -> dict:
    counts = prepare_ave(out, ds["media"]["from_dir"], jobs=ds["media"]["jobs"], log=log)
    return {"clips": "clips.csv", "problems": "problems.csv", "counts": counts}


def classes(raw: Path, record: dict) -> list[str]:
    return read_classes()  # shipped, in index order


def recipe():
    """The peers' AVEDataset (PMR / OGM-GE family): 22,050 Hz mono, 3 s tiled, STFT 512 / hop 256,
    log|S| -> 257 x 259 (their np.resize to 224 x 224, a reshuffle of the values, is left out);
    1 fps, 3 frames evenly spaced."""
    from ..extraction.extract import FrameSpec, Recipe
    from ..extraction.spectrogram import LogSTFT
    return Recipe("ave", LogSTFT(hop=256), FrameSpec(1.0, 3, (224, 224)), "mean")
