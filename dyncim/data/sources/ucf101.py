"""UCF-101: 13,320 YouTube clips of 101 human actions, as two modalities, RGB frames and optical flow,
from the user's copy of the official release (no download here).

The user names the video folder (`from_dir`: `<Class>/v_<Class>_gXX_cYY.avi`) and, where it is not
`ucfTrainTestlist/` inside or beside it, the official list folder (`lists`) holding `classInd.txt`
(`1 ApplyEyeMakeup`), `trainlist01.txt` (`ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1`) and
`testlist01.txt` (`ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi`). classInd.txt must list the 101
classes of `resources/splits/ucf-101/classes.txt` in that order (compared ignoring case, so the
official names are the ones used); the official files' CRLF line ends are accepted.

Split: the official split 1 (trainlist01 / testlist01: 9,537 / 3,783 clips; test = groups 1-7).
UCF-101 has no validation split, so one is carved out of trainlist01 by *group*: the clips of a
group (gXX) share actor and background, and a validation set that cut a group would score clips
whose near-duplicates are in training. `val_groups` (default 2) group numbers are chosen among
the training ones (8-25) by `chosen_groups` (a seeded hash: the same on every machine and numpy
version), and every class's clips of those groups form the validation split, as the official
splits take the same group numbers from every class. With the defaults that is groups 19 and 23:
8,492 train, 1,045 val (11 % of trainlist01; 8 to 14 clips per class) and 3,783 test clips.

A clip's file is `from_dir/<listed path>`; when that is missing (a copy whose names changed case,
such as `HandstandPushups/v_HandStandPushups_...`, or a flat folder), one walk of `from_dir` finds
it by its path or its file name ignoring case. Clips that are missing, that PyAV cannot open or
that hold no video stream (a probe: `av.open` and the stream list, in parallel) are listed in
`problems.csv` and left out, not fatal; a split left with no clip is an error.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ...atomic import atomic_path
from ..io import discovery
from ..io.discovery import CLIPS, PROBLEMS, SPLITS, SUMMARY

RESOURCES = Path(__file__).resolve().parents[3] / "resources" / "splits" / "ucf-101"
CLASSES_FILE = RESOURCES / "classes.txt"
LISTS_DIR = "ucfTrainTestlist"
CLASS_INDEX, TRAIN_LIST, TEST_LIST = "classInd.txt", "trainlist01.txt", "testlist01.txt"
CLASSES = "classes.txt"
# problem: missing | unreadable (PyAV cannot open it) | no-video; a clip whose decoding fails past
# the probe is recorded by feature extraction instead (the store's index.csv `ok=0`)
VAL_GROUPS, VAL_SEED = 2, 0

_CLIP = re.compile(r"v_(.+)_g(\d+)_c(\d+)")


@dataclass(frozen=True)
class Row:
    clip: str   # v_<Class>_gXX_cYY
    label: str  # the class name as the shipped class list spells it
    group: int
    path: str   # as listed: <Class>/<clip>.avi
    split: str  # train, val or test


def read_classes(path: str | Path | None = None) -> list[str]:
    """The shipped class list (`resources/splits/ucf-101/classes.txt`), one name a line."""
    path = Path(path or CLASSES_FILE)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names or len({n.lower() for n in names}) != len(names):
        raise ValueError(f"{path}: expected distinct class names, one a line")
    return names


def read_class_index(path: str | Path, expected: list[str]) -> list[str]:
    """classInd.txt (`<1-based index> <name>` a line) checked against `expected` (same order,
    names compared ignoring case); returns `expected`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (UCF-101's official {CLASS_INDEX}; set media.lists "
                                f"to the folder holding it)")
    names = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(names) + 1:
            raise ValueError(f"{path}:{line_no}: expected `{len(names) + 1} <class name>`, got {line.strip()!r}")
        names.append(parts[1])
    if [n.lower() for n in names] != [n.lower() for n in expected]:
        diff = [(i + 1, a, b) for i, (a, b) in enumerate(zip(names, expected)) if a.lower() != b.lower()]
        raise ValueError(f"{path}: lists {len(names)} classes, expected the {len(expected)} of "
                         f"{CLASSES_FILE.name} in order" + (f"; first difference at {diff[0]}" if diff else ""))
    return list(expected)


def parse_clip(clip: str) -> tuple[str, int, int]:
    """`v_ApplyEyeMakeup_g08_c01` -> ("ApplyEyeMakeup", 8, 1)."""
    m = _CLIP.fullmatch(clip)
    if m is None:
        raise ValueError(f"{clip!r} is not a UCF-101 clip name (v_<Class>_gXX_cYY)")
    return m.group(1), int(m.group(2)), int(m.group(3))


def read_list(path: str | Path, classes: list[str], split: str, with_index: bool) -> list[Row]:
    """Rows of trainlist01.txt (`<Class>/<clip>.avi <index>`, `with_index`) or testlist01.txt
    (`<Class>/<clip>.avi`; an index, where a copy adds one, is checked too), each checked: a known
    class folder, the index of that class, a clip name of that class; errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (UCF-101's official {path.name}; set media.lists "
                                f"to the folder holding it)")
    by_lower = {c.lower(): i for i, c in enumerate(classes)}
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{line_no}"
        if len(parts) > 2 or (with_index and len(parts) != 2):
            raise ValueError(f"{where}: expected `<Class>/<clip>.avi{' <class index>' if with_index else ''}`, "
                             f"got {line.strip()!r}")
        rel = parts[0].replace("\\", "/")
        folder, _, name = rel.rpartition("/")
        if folder.lower() not in by_lower:
            raise ValueError(f"{where}: class folder {folder!r} is not one of the {len(classes)} classes")
        c = by_lower[folder.lower()]
        if len(parts) == 2 and parts[1] != str(c + 1):
            raise ValueError(f"{where}: class index {parts[1]}, but {classes[c]} is {c + 1} in {CLASS_INDEX}")
        clip = os.path.splitext(name)[0]
        try:
            name_class, group, _ = parse_clip(clip)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if name_class.lower() != folder.lower():
            raise ValueError(f"{where}: clip {clip} is not of its folder's class {folder}")
        rows.append(Row(clip, classes[c], group, rel, split))
    return rows


def chosen_groups(groups, k: int, seed: int) -> list[int]:
    """`k` of the group numbers `groups`: those first when ordered by sha256("ucf-101:<seed>:<g>")
    (a fixed function of the seed, unlike a random generator's stream across library versions)."""
    groups = sorted(set(groups))
    if not 0 < k < len(groups):
        raise ValueError(f"media.val_groups = {k}: expected 1 to {len(groups) - 1} (the train list has "
                         f"{len(groups)} groups)")
    key = lambda g: hashlib.sha256(f"ucf-101:{seed}:{g}".encode()).hexdigest()  # noqa: E731
    return sorted(sorted(groups, key=key)[:k])


def split_rows(lists: str | Path, classes: list[str], val_groups: int = VAL_GROUPS,
               val_seed: int = VAL_SEED) -> tuple[list[Row], list[int]]:
    """Every clip of split 1 with its split (train / val / test, see the module docstring), and
    the validation groups; no clip may be listed twice."""
    lists = Path(lists)
    train = read_list(lists / TRAIN_LIST, classes, "train", with_index=True)
    test = read_list(lists / TEST_LIST, classes, "test", with_index=False)
    seen = Counter(r.clip for r in train + test)
    twice = sorted(c for c, n in seen.items() if n > 1)
    if twice:
        raise ValueError(f"{lists}: clips listed twice in {TRAIN_LIST} / {TEST_LIST}: {twice[:5]}")
    val = set(chosen_groups([r.group for r in train], val_groups, val_seed))
    train = [Row(r.clip, r.label, r.group, r.path, "val" if r.group in val else "train") for r in train]
    return train + test, sorted(val)


class FileFinder:
    """`from_dir/<listed path>`, else (one walk of `from_dir`, on the first miss) the file whose
    relative path, or else whose name, matches ignoring case."""

    def __init__(self, root: Path):
        self.root = root
        self._by_rel: dict[str, Path] | None = None
        self._by_name: dict[str, Path] = {}

    def find(self, rel: str) -> Path | None:
        p = self.root / rel
        if p.is_file():
            return p
        if self._by_rel is None:
            self._by_rel = {}
            for folder, subdirs, names in os.walk(self.root, followlinks=True):
                subdirs.sort()
                for name in sorted(names):
                    f = Path(folder) / name
                    self._by_rel.setdefault(f.relative_to(self.root).as_posix().lower(), f)
                    self._by_name.setdefault(name.lower(), f)
        return self._by_rel.get(rel.lower()) or self._by_name.get(rel.rpartition("/")[2].lower())


def probe_video(path: str | Path) -> tuple[str, str] | None:
    """(problem, detail) when PyAV cannot open `path` or it holds no video stream, else None
    (UCF-101's modalities both come from the video; many clips have no audio track)."""
    return discovery.probe_media(path, streams=("video",))


def find_lists(from_dir: Path, lists: str | Path | None) -> Path:
    """The list folder: `lists`, else `ucfTrainTestlist/` inside or beside `from_dir`."""
    if lists is not None:
        lists = Path(lists)
        if not lists.is_dir():
            raise FileNotFoundError(f"media.lists: {lists}: no such folder")
        return lists
    for cand in (from_dir / LISTS_DIR, from_dir.parent / LISTS_DIR):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"UCF-101: no {LISTS_DIR}/ in or beside {from_dir}: set media.lists to the "
                            f"folder holding {CLASS_INDEX}, {TRAIN_LIST} and {TEST_LIST}")


@dataclass
class UCF101Result(discovery.Result):
    """The discovery's result (files, per-split counts and their log lines), plus the val groups."""
    val_groups: list = field(default_factory=list)


def prepare_ucf101(out: str | Path, *, from_dir: str | Path, lists: str | Path | None = None,
                   val_groups: int = VAL_GROUPS, val_seed: int = VAL_SEED, probe: bool = True,
                   jobs: int = 4, classes: str | Path | None = None, log=print) -> UCF101Result:
    """Locate (and probe) every clip of split 1 in the user's copy; write into `out`:

    - `clips.csv`: the clips used (`download.CLIP_COLUMNS`; audio and video are the same file, an
      absolute path into the user's copy), train then val then test, in the lists' order;
    - `problems.csv`: `clip,label,split,problem,detail,path`, one row per clip left out;
    - `summary.json`: the folders, the validation groups and seed, and per split the clips
      listed, used and left out by problem.

    All three are written atomically, `clips.csv` last. A split left with no clip is an error
    (after the report is written).
    """
    out, from_dir = Path(out), Path(from_dir)
    if not from_dir.is_dir():
        raise FileNotFoundError(f"media.from_dir: {from_dir}: no such folder (UCF-101's videos)")
    lists = find_lists(from_dir, lists)
    names = read_class_index(lists / CLASS_INDEX, read_classes(classes))
    rows, val = split_rows(lists, names, val_groups, val_seed)
    rows = sorted(rows, key=lambda r: SPLITS.index(r.split))  # stable: the lists' order within a split
    finder = FileFinder(from_dir)

    def located():
        for r in rows:
            p = finder.find(r.path)
            yield r.clip, r.label, r.split, None if p is None else str(p.resolve())

    def check(row):
        path = row[3]
        if path is None:
            return "missing", "no such file"
        return probe_video(path) if probe else None

    with discovery.Report(out, "UCF-101") as rep:
        rep.add_checked(located(), check, jobs)
        write_classes(out / CLASSES, names)  # before clips.csv, which Report.close writes last
        counts = rep.close({"from_dir": str(from_dir), "lists": str(lists), "split": 1, "val_groups": val,
                            "val_seed": val_seed, "classes": len(names), "probed": probe}, log,
                           source=f"{from_dir} (split 1, val = groups {val})")
    return UCF101Result(out / CLIPS, out / PROBLEMS, out / SUMMARY, counts, val)


def write_classes(path: Path, names: list[str]) -> None:
    """The class names the store uses, one a line (the store step reads them from here)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(f"{n}\n" for n in names))


# ---- the source's steps (dyncim.data.sources) ----------------------------------------------------

def bring_in(ds: dict, out: Path, log=print) -> dict:
    from ..extraction.flow import require_opencv
    media = ds["media"]
    require_opencv("UCF-101's flow modality")  # before the walk and probes, not at extraction
    res = prepare_ucf101(out, from_dir=media["from_dir"], lists=media.get("lists"),
                         val_groups=media.get("val_groups", VAL_GROUPS), val_seed=media.get("val_seed", VAL_SEED),
                         jobs=media["jobs"], log=log)
    return {"clips": res.clips.name, "problems": res.problems.name, "classes": "classes.txt", "counts": res.counts,
            "val_groups": res.val_groups}


def classes(raw: Path, record: dict) -> list[str]:
    """The shipped names, which the media step checked against classInd.txt and wrote."""
    from ..extraction.flow import require_opencv
    require_opencv("UCF-101's flow modality")  # before any clip is decoded
    return read_classes(raw / CLASSES)


def recipe():
    """3 frames evenly spaced over the 1 fps frames, at 128 x 128, and the Farneback flow from each
    to the next decoded frame, clipped to 8 pixels, uint8 (docs/data.md)."""
    from ..extraction.extract import FrameSpec, VideoFlowRecipe
    from ..extraction.flow import FlowSpec
    return VideoFlowRecipe("ucf-101", FrameSpec(1.0, 3, (128, 128)), FlowSpec())
