"""Finding a user's clips at scale (Kinetics-Sounds, AVE, VGGSound, UCF-101): one walk of a folder
into a stem -> path table of plain strings, a probe of each located file on a bounded thread pool,
and a streaming report (`clips.csv`, `problems.csv`, `summary.json`) with the same columns and
problem names for every set, so that the feature step reads them the same way.

Bounded memory for ~200k clips: the file table holds two strings per file; rows are streamed from
the caller's iterator to the output files as they are probed (at most `window` probes in flight);
nothing else is kept per clip but the per-split counters.
"""
from __future__ import annotations

import collections
import contextlib
import csv
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ...atomic import atomic_path, write_json
from . import download as D

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv")  # preferred first
SPLITS = ("train", "val", "test")
CLIPS, PROBLEMS, SUMMARY = "clips.csv", "problems.csv", "summary.json"
PROBLEM_COLUMNS = ("clip", "label", "split", "problem", "detail", "path")
# problem: missing | unreadable (PyAV cannot open it) | no-audio | no-video (a stream is absent) |
# duplicate; a clip whose decoding fails past the probe is recorded by feature extraction instead
# (the store's index.csv `ok=0` with its error, and meta.json's `failed`).


def listing_fingerprint(paths: Iterable[str | Path]) -> str:
    """A cheap fingerprint of what a user's folders and files hold: every file's relative path,
    size and mtime (ns) under each folder (hidden names skipped), each file's size and mtime;
    nothing is read. A clip added, removed, replaced or touched, or a list file edited, changes
    it; an unchanged tree gives the same text. A missing path counts as missing."""
    import hashlib
    h = hashlib.sha256()
    for path in paths:
        path = Path(os.path.expanduser(str(path)))
        h.update(f"{path}\0".encode())
        if path.is_dir():
            for dirpath, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                rel = os.path.relpath(dirpath, path)
                for name in sorted(files):
                    if name.startswith("."):
                        continue
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except OSError:
                        continue
                    h.update(f"{rel}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        elif path.exists():
            st = path.stat()
            h.update(f"{st.st_size}\0{st.st_mtime_ns}\n".encode())
        else:
            h.update(b"missing\n")
    return h.hexdigest()[:16]


def media_files(root: str | Path, exts=VIDEO_EXTS):
    """(stem, lower-case extension, path) of every media file under `root`, in one walk that
    follows folder links and visits each folder once; hidden files are skipped."""
    exts = {e.lower() for e in exts}
    seen = set()
    for folder, subdirs, names in os.walk(root, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:  # a folder link back up the tree: walk it once
            subdirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        for name in names:
            stem, ext = os.path.splitext(name)
            if ext.lower() in exts and not name.startswith("."):
                yield stem, ext.lower(), os.path.join(folder, name)


def probe_media(path: str | Path, streams=("video", "audio")) -> tuple[str, str] | None:
    """(problem, detail) when PyAV cannot open `path` or it lacks one of `streams`, else None."""
    import av
    try:
        with av.open(str(path)) as c:
            kinds = {s.type for s in c.streams}
    except Exception as e:  # PyAV raises its own error types (InvalidDataError, ...) and OSErrors
        return "unreadable", f"{type(e).__name__}: {e}"
    for kind in streams:
        if kind not in kinds:
            return f"no-{kind}", f"streams: {sorted(kinds) or 'none'}"
    return None


def walk_media(root: str | Path, exts=VIDEO_EXTS) -> dict[str, str]:
    """{file stem: path} of every media file under `root` (one walk, folder links followed, each
    folder once); where two files share a stem, the preferred extension (`exts` order), then the
    smaller path, wins."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    rank = {e.lower(): i for i, e in enumerate(exts)}
    found: dict[str, str] = {}
    for stem, ext, path in media_files(root, exts):
        old = found.get(stem)
        if old is None or (rank[os.path.splitext(old)[1].lower()], old) > (rank[ext], path):
            found[stem] = path
    return found


def bounded_map(fn: Callable, items: Iterable, jobs: int, window: int | None = None) -> Iterator:
    """(item, fn(item)) for every item, in order, on `jobs` threads, with at most `window`
    (default 4 per thread) submitted and not yet yielded: `Executor.map` would submit them all
    at once, one future per clip."""
    window = window or 4 * max(1, jobs)
    it = iter(items)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        q: collections.deque = collections.deque()
        for item in it:
            q.append((item, pool.submit(fn, item)))
            if len(q) >= window:
                item0, f = q.popleft()
                yield item0, f.result()
        while q:
            item0, f = q.popleft()
            yield item0, f.result()


def check_file(path: str | None, probe: bool) -> tuple[str, str] | None:
    """(problem, detail) of a located path (None: no file with this id), else None."""
    if path is None:
        return "missing", "no file with this id"
    if not os.path.isfile(path):
        return "missing", "listed but not found"
    return probe_media(path) if probe else None


@dataclass
class Result:
    """What a set's clip discovery left: its three files and the per-split counts."""
    clips: Path
    problems: Path
    summary: Path
    counts: dict = field(default_factory=dict)  # split -> {listed, used, missing, unreadable, ...}

    def lines(self) -> list[str]:
        return lines(self.counts)


class Report:
    """Streams the located rows into `out`: `clips.csv` (the usable clips, download.CLIP_COLUMNS,
    audio and video the same file), `problems.csv` (one row per clip left out) and, on `close`,
    `summary.json`; `clips.csv` is renamed into place last, and only when no split is empty."""

    def __init__(self, out: Path, name: str):
        self.out, self.name = Path(out), name
        self.counts = {s: Counter(listed=0, used=0) for s in SPLITS}
        self._stack = contextlib.ExitStack()
        self.out.mkdir(parents=True, exist_ok=True)
        self._clips_tmp = self._stack.enter_context(atomic_path(self.out / CLIPS))
        self._problems_tmp = self._stack.enter_context(atomic_path(self.out / PROBLEMS))
        self._cf = self._stack.enter_context(open(self._clips_tmp, "w", newline=""))
        self._pf = self._stack.enter_context(open(self._problems_tmp, "w", newline=""))
        self._cw, self._pw = csv.writer(self._cf), csv.writer(self._pf)
        self._cw.writerow(D.CLIP_COLUMNS)
        self._pw.writerow(PROBLEM_COLUMNS)

    def __enter__(self) -> "Report":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is not None:   # a failure before or inside `close`: no half-written report stays
            self.abort()

    def add_checked(self, rows: Iterable, check: Callable, jobs: int) -> None:
        """Add every (clip, label, split, path) row with the problem `check(row)` finds (None:
        usable), checked on `jobs` threads, in the rows' order."""
        for (clip, label, split, path), problem in bounded_map(check, rows, jobs):
            self.add(clip, label, split, path, problem)

    def add(self, clip: str, label: str, split: str, path: str | None, problem: tuple[str, str] | None):
        c = self.counts[split]
        c["listed"] += 1
        if problem is None:
            c["used"] += 1
            p = os.path.abspath(path)
            self._cw.writerow([clip, label, split, p, p])
        else:
            c[problem[0]] += 1
            self._pw.writerow([clip, label, split, *problem, "" if path is None else os.path.abspath(path)])

    def lines(self) -> list[str]:
        return lines(self.counts)

    def close(self, summary: dict, log=print, source: str | None = None) -> dict:
        """Write summary.json and problems.csv; then clips.csv unless a split has no usable clip
        (an error naming the splits, raised after the report is written). Returns the counts.
        `source` names where the clips come from in the log line and the error (default: the
        summary's `source`)."""
        source = summary.get("source") if source is None else source
        counts = {s: dict(c) for s, c in self.counts.items()}
        empty = [s for s in SPLITS if counts[s]["used"] == 0]
        self._cf.close()
        self._pf.close()
        write_json(self.out / SUMMARY, {**summary, "splits": counts})
        if empty:
            os.replace(self._problems_tmp, self.out / PROBLEMS)
            # discards clips.csv's temp file (a popped, dropped stack would have its generators
            # closed on collection, deleting problems.csv's temp file before the rename)
            self.abort()
            if log:
                log(f"{self.name}: " + "; ".join(lines(counts)))
            raise ValueError(f"{self.name}: no usable clip in the {', '.join(empty)} split(s) of "
                             f"{source} (see {self.out / PROBLEMS})")
        self._stack.close()  # renames problems.csv, then clips.csv (entered first, closed last)
        if log:
            log(f"{self.name} from {source}: " + "; ".join(lines(counts))
                + f" (left out: {self.out / PROBLEMS})")
        return counts

    def abort(self) -> None:
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


def lines(counts: dict) -> list[str]:
    out = []
    for s, c in counts.items():
        bad = ", ".join(f"{v} {k}" for k, v in c.items() if k not in ("listed", "used") and v)
        out.append(f"{s}: used {c['used']} of {c['listed']} clips" + (f" ({bad})" if bad else ""))
    return out

