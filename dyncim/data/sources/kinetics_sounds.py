"""Kinetics-Sounds: the 31 sound-bearing classes of Kinetics-400 (audio + video), from the user's copy.

Kinetics-Sounds has no download of its own: its clips are Kinetics-400 clips (YouTube videos, many
no longer online), so the user names a Kinetics-400 folder (`from_dir`) or a list of clip files
(`clip_list`). The class list and the splits come from `resources/splits/kinetics-sounds/`
(`classes.txt`, 31 names in index order; `splits.csv`, `clip,label,split`: 14,799 train,
1,320 val, 2,597 test).

A clip id is `<youtube id>_<start:06d>_<end:06d>` (train) or `<youtube id>_<start>` (val and test),
the YouTube id being 11 characters. A file is found by its stem, whatever folder it is in
(`<split or class>/<id>.mp4`, flat `<id>.mp4`, ...): by the exact clip id, else by YouTube id and
start time (so `abc_000058_000068.mp4` serves the clip `abc_58` and the other way round), else by
a file named by the bare YouTube id. Clips that are missing, or that PyAV cannot open or that lack
an audio or a video stream (a cheap probe: `av.open` and the stream list, no decoding, in
parallel), are counted and listed in `problems.csv`; they are left out, not fatal. The run states
how many clips it used per split (`summary.json` and the log).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from ..io import discovery
from ..io.discovery import CLIPS, PROBLEMS, SUMMARY, VIDEO_EXTS, media_files
from ..io.splits import read_clip_splits

RESOURCES = Path(__file__).resolve().parents[3] / "resources" / "splits" / "kinetics-sounds"
CLASSES_FILE = RESOURCES / "classes.txt"
SPLITS_FILE = RESOURCES / "splits.csv"

_ID = re.compile(r"([A-Za-z0-9_-]{11})(?:_(\d+)(?:_(\d+))?)?")


def clip_key(stem: str) -> tuple[str, int | None] | None:
    """(YouTube id, start second or None) of a clip id or file stem; None if it is not one."""
    m = _ID.fullmatch(stem)
    if m is None:
        return None
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def read_classes(path: str | Path = CLASSES_FILE) -> list[str]:
    path = Path(path)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"{path}: expected distinct class names, one a line")
    return names


def read_splits(path: str | Path = SPLITS_FILE, classes: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(clip, label, split) rows, each checked (known class, known split, a Kinetics clip id)."""
    known = set(classes) if classes is not None else None

    def check(clip, label):
        key = clip_key(clip)
        if key is None or key[1] is None:
            raise ValueError(f"{clip!r} is not a Kinetics clip id (<11-character YouTube id>_<start>[_<end>])")
        if known is not None and label not in known:
            raise ValueError(f"class {label!r} is not in the class list")
    return read_clip_splits(path, check)


class ClipIndex:
    """Files by clip id: exact stem, else (YouTube id, start), else a bare YouTube id.

    Where several files give the same key the first in (extension preference, path) order wins.
    """

    def __init__(self, files):
        """`files`: (id or stem, path) pairs."""
        self.by_stem, self.by_key, self.by_ytid = {}, {}, {}
        rank = {e: i for i, e in enumerate(VIDEO_EXTS)}
        for stem, path in sorted(files, key=lambda sp: (rank.get(Path(sp[1]).suffix.lower(), len(rank)), str(sp[1]))):
            self.by_stem.setdefault(stem, path)
            key = clip_key(stem)
            if key is not None:
                (self.by_ytid if key[1] is None else self.by_key).setdefault(key, path)
        self.n_files = len(files)

    def find(self, clip: str) -> Path | None:
        if clip in self.by_stem:
            return self.by_stem[clip]
        key = clip_key(clip)
        if key is None:
            return None
        return self.by_key.get(key) or self.by_ytid.get((key[0], None))


def index_folder(root: str | Path, exts=VIDEO_EXTS) -> ClipIndex:
    """One walk of `root` (following folder links, each folder once), every media file by its stem."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    return ClipIndex([(stem, Path(path)) for stem, _, path in media_files(root, exts)])


def read_clip_list(path: str | Path) -> ClipIndex:
    """A list of clip files: a CSV with a `path` column (and optionally `clip`, the clip id when the
    file name is not), or a text file with one path a line (blank lines and `#` comments skipped).
    Relative paths are relative to the list's folder."""
    path = Path(path)
    base = path.parent
    files = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if "path" not in (reader.fieldnames or ()):
                raise ValueError(f"{path}: expected a `path` column (and optionally `clip`)")
            for r in reader:
                if r["path"].strip():
                    p = base / r["path"].strip()
                    files.append(((r.get("clip") or "").strip() or p.stem, p))
    else:
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = base / line
                files.append((p.stem, p))
    if not files:
        raise ValueError(f"{path}: lists no files")
    return ClipIndex(files)


KineticsSoundsResult = discovery.Result


def prepare_kinetics_sounds(out: str | Path, *, from_dir: str | Path | None = None,
                            clip_list: str | Path | None = None, probe: bool = True, jobs: int = 4,
                            classes: str | Path = CLASSES_FILE, splits: str | Path = SPLITS_FILE,
                            log=print) -> KineticsSoundsResult:
    """Locate (and probe) every Kinetics-Sounds clip in the user's copy; write into `out`:

    - `clips.csv`: the clips used (`download.CLIP_COLUMNS`; audio and video are the same file,
      an absolute path into the user's copy), in the split file's order;
    - `problems.csv`: `clip,label,split,problem,detail,path`, one row per clip left out;
    - `summary.json`: the source, whether files were probed, and per split the clips listed,
      used and left out by problem.

    All three are written atomically, `clips.csv` last. A split left with no clip is an error
    (after the report is written).
    """
    if (from_dir is None) == (clip_list is None):
        raise ValueError("Kinetics-Sounds: give exactly one of from_dir (a Kinetics-400 folder) "
                         "and clip_list (a CSV/TXT list of clip files)")
    out = Path(out)
    names = read_classes(classes)
    rows = read_splits(splits, names)
    index = index_folder(from_dir) if from_dir is not None else read_clip_list(clip_list)

    def located():
        for clip, label, split in rows:
            p = index.find(clip)
            yield clip, label, split, None if p is None else str(Path(p).resolve())

    source = str(from_dir if from_dir is not None else clip_list)
    with discovery.Report(out, "Kinetics-Sounds") as rep:
        rep.add_checked(located(), lambda r: discovery.check_file(r[3], probe), jobs)
        counts = rep.close({"source": source, "files_indexed": index.n_files, "probed": probe,
                            "classes": len(names)}, log)
    return KineticsSoundsResult(out / CLIPS, out / PROBLEMS, out / SUMMARY, counts)


# ---- the source's steps (dyncim.data.sources) ----------------------------------------------------

def bring_in(ds: dict, out: Path, log=print) -> dict:
    media = ds["media"]
    res = prepare_kinetics_sounds(out, from_dir=media.get("from_dir"), clip_list=media.get("clip_list"),
                                  jobs=media["jobs"], log=log)
    for line in res.lines():
        log(f"Kinetics-Sounds {line}")
    return {"clips": res.clips.name, "problems": res.problems.name, "counts": res.counts}


def classes(raw: Path, record: dict) -> list[str]:
    return read_classes()


def recipe():
    """16 kHz (first channel, as kaldi.fbank takes it), 128-bin Kaldi fbank, 1,024 frames,
    normalised -> 1024 x 128; 3 frames evenly spaced over the 1 fps frames."""
    from ..extraction.extract import FrameSpec, Recipe
    from ..extraction.spectrogram import KaldiFbank
    return Recipe("kinetics-sounds", KaldiFbank(), FrameSpec(1.0, 3, (224, 224)), 0)
