"""Feature extraction: decode every clip of a split once, write its features into the split's
store (`dyncim.data.io.store`), in parallel over clips, with a progress bar, streaming and resumable.

    from dyncim.data.extraction import extract
    from dyncim.data.io import download
    clips = download.read_clip_manifest("data/raw/crema-d/clips.csv")     # the downloader's table
    extract.extract_split([c for c in clips if c.split == "train"], extract.RECIPES["crema-d"],
                          "data/features/crema-d/train", classes=crema_d.LABELS, workers=8)
    # or all splits at once: extract.extract_manifest(manifest, "crema-d", "data/features/crema-d", classes)

A clip is anything with `.clip` (id), `.label` (class name), `.audio` and `.video` (file paths;
the same file when one holds both): `download.Clip` or `media.SyntheticClip`.

UCF-101's recipe (`VideoFlowRecipe`) has no audio: the frames, and the optical flow from each
sampled frame to the next decoded one (`dyncim.data.extraction.flow`), both uint8 and channels-last.

Per clip (`extract_clip`, in a worker process): the audio track decoded and resampled with PyAV
(`media.decode_audio`), its spectrogram with `torch.stft` (`spectrogram.LogSTFT` / `KaldiFbank`)
stored as float16; `frames` frames sampled at 1 fps and resized to a fixed size
(`media.decode_frames`), stored uint8 (T, H, W, 3) (channels last, as decoded: the store hands
them out as (B, T, 3, H, W) views with channels-last strides, which the CPU resize kernel reads
without a copy), slots past a short clip's frames filled with its last frame (`n_frames` in the
index says how many are real). A clip that fails to decode (or whose decoder crashes its
process) is recorded (index `ok=0`, `error`; meta.json `failed`) and the split is still written;
the trainer is to drop those samples.

Streaming: workers return one clip's arrays each; at most `inflight` clips (default 4 per worker)
are in flight, results are written in clip order at fixed file offsets (`os.pwrite`, no memory
map) and never accumulate, and per-clip bookkeeping is a few bytes of numpy arrays, so memory stays
bounded whatever the number of clips. Measured (`python -m dyncim.bench.media rss`, 2 workers,
CREMA-D recipe, 548 KB written per clip): the writer's peak RSS was 229.6 / 229.7 / 231.1 MiB for
250 / 1,000 / 3,000 clips (224.5 MiB after importing torch and PyAV, before extracting), each
worker's 222 MiB (mostly the torch import shared with the fork server), for 0.14 / 0.55 / 1.64 GB
written.

Stored frames: the whole picture resized to 224 x 224 (aspect not kept), the peers' test-time
`Resize((224, 224))` exactly, so evaluation needs no resampling; training's RandomResizedCrop
is drawn over the same whole picture by `dyncim.data.sets.augment`, with the crop's aspect ratio
measured in the source's geometry (the index keeps each clip's display aspect), i.e. the same
crop boxes as torchvision's on the original frame, only sampled from 224 px instead of 360 px.
224 rather than a larger size: 147 KiB per frame (256 x 256: 192 KiB, 31 % more for all of
CREMA-D) for detail that only crops smaller than the stored picture could use.
"""
from __future__ import annotations

import collections
import functools
import multiprocessing
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..io import media
from .flow import FlowSpec
from .spectrogram import KaldiFbank, LogSTFT, audio_recipe_from_dict
from ..io.store import SplitWriter, is_complete, read_inputs, reopen

EXTRACT_VERSION = 1  # bump when the code's output for the same recipe changes


class ClipLike(Protocol):
    clip: str
    label: str
    audio: str
    video: str


@dataclass(frozen=True)
class FrameSpec:
    fps: float = 1.0
    frames: int = 3  # slots per clip: frames beyond a clip's count repeat its last frame
    size: tuple[int, int] = (224, 224)  # stored (height, width)


@dataclass(frozen=True)
class Recipe:
    name: str
    audio: LogSTFT | KaldiFbank
    video: FrameSpec
    audio_channel: str | int = "mean"  # "mean" of the channels, or one channel's index

    def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        h, w = self.video.size
        return {"audio": (tuple(self.audio.shape), "float16"),
                "frames": ((self.video.frames, h, w, 3), "uint8")}

    def bytes_per_sample(self) -> int:
        return sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in self.arrays().values())

    def to_dict(self) -> dict:
        v = asdict(self.video)
        v["size"] = list(v["size"])
        return {"name": self.name, "audio": self.audio.to_dict(), "video": v,
                "audio_channel": self.audio_channel}

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        if "flow" in d:  # a stored recipe of either kind reads back through here
            return VideoFlowRecipe.from_dict(d)
        v = dict(d["video"])
        v["size"] = tuple(v["size"])
        return cls(d["name"], audio_recipe_from_dict(d["audio"]), FrameSpec(**v), d.get("audio_channel", "mean"))


@dataclass(frozen=True)
class VideoFlowRecipe:
    """RGB frames and optical flow, no audio (UCF-101): `frames` uint8 (T, H, W, 3) sampled as
    `video` says, and `flow` uint8 (T, H, W, 2), each field between a sampled frame and the decoded
    frame after it, computed on the stored-size pictures (`dyncim.data.extraction.flow`)."""
    name: str
    video: FrameSpec
    flow: FlowSpec

    def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        h, w = self.video.size
        return {"frames": ((self.video.frames, h, w, 3), "uint8"), "flow": ((self.video.frames, h, w, 2), "uint8")}

    def bytes_per_sample(self) -> int:
        return sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in self.arrays().values())

    def to_dict(self) -> dict:
        v = asdict(self.video)
        v["size"] = list(v["size"])
        return {"name": self.name, "video": v, "flow": self.flow.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "VideoFlowRecipe":
        v = dict(d["video"])
        v["size"] = tuple(v["size"])
        f = {k: x for k, x in d["flow"].items() if k != "algorithm"}
        if d["flow"].get("algorithm", "farneback") != "farneback":
            raise ValueError(f"recipe {d['name']!r}: flow algorithm {d['flow']['algorithm']!r}; "
                             f"this code computes farneback")
        return cls(d["name"], FrameSpec(**v), FlowSpec(**f))


class _Recipes(Mapping):
    """{name: recipe} of the extraction recipes: each defined by the module of the source of that
    name (its `recipe()`, dyncim.data.sources; which sources have one: dyncim.data.catalog), built
    on first use (the peers' settings each reproduces are written there)."""

    def __iter__(self):
        from ..catalog import recipes
        return iter(recipes())

    def __len__(self) -> int:
        from ..catalog import recipes
        return len(recipes())

    def __getitem__(self, name: str) -> "Recipe | VideoFlowRecipe":
        if name not in set(self):
            raise KeyError(name)
        return _recipe(name)


@functools.lru_cache(maxsize=None)
def _recipe(name: str):
    from .. import sources
    return sources.module(name).recipe()


RECIPES = _Recipes()


def get_recipe(recipe: Recipe | VideoFlowRecipe | str) -> Recipe | VideoFlowRecipe:
    if isinstance(recipe, (Recipe, VideoFlowRecipe)):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r}: expected one of {sorted(RECIPES)}")
    return RECIPES[recipe]


# ---- one clip ----------------------------------------------------------------------------------

def extract_clip(clip: ClipLike, recipe: Recipe) -> tuple[dict[str, np.ndarray], dict]:
    """Decode one clip: ({"audio": float16, "frames": uint8 (T, H, W, 3)}, record with n_frames,
    aspect, audio_seconds, video_seconds). Raises media.MediaError when a file cannot be decoded."""
    if isinstance(recipe, VideoFlowRecipe):
        return extract_video_flow(clip, recipe)
    import torch
    wave, sr = media.decode_audio(clip.audio, recipe.audio.sample_rate, recipe.audio_channel)
    with torch.inference_mode():
        spec = recipe.audio(torch.from_numpy(wave)).numpy()
    if not np.isfinite(spec).all():
        raise media.MediaError(f"{clip.audio}: the spectrogram is not finite")
    v = recipe.video
    fr = media.decode_frames(clip.video, v.fps, v.frames, v.size)
    n = fr.images.shape[0]
    frames = np.empty((v.frames, *v.size, 3), dtype=np.uint8)
    frames[:n] = fr.images
    frames[n:] = frames[n - 1]
    record = {"n_frames": n, "aspect": round(fr.aspect, 6), "audio_seconds": round(len(wave) / sr, 4),
              "video_seconds": round(fr.duration, 4)}
    return {"audio": spec.astype(np.float16), "frames": frames}, record


def extract_video_flow(clip: ClipLike, recipe: VideoFlowRecipe) -> tuple[dict[str, np.ndarray], dict]:
    """Decode one clip's video: ({"frames": uint8 (T, H, W, 3), "flow": uint8 (T, H, W, 2)}, record
    with n_frames, aspect, video_seconds); slots past a short clip's frames repeat its last ones."""
    from .flow import flow_fields
    v = recipe.video
    fr = media.decode_frames(clip.video, v.fps, v.frames, v.size, successors=True)
    n = fr.images.shape[0]
    frames = np.empty((v.frames, *v.size, 3), dtype=np.uint8)
    frames[:n] = fr.images
    frames[n:] = frames[n - 1]
    flow = np.empty((v.frames, *v.size, 2), dtype=np.uint8)
    flow[:n] = flow_fields(fr.pairs, recipe.flow)
    flow[n:] = flow[n - 1]
    record = {"n_frames": n, "aspect": round(fr.aspect, 6), "video_seconds": round(fr.duration, 4)}
    return {"frames": frames, "flow": flow}, record


def _work(job):
    """In a worker: (index, arrays or None, record); failures become records, never exceptions."""
    i, clip, recipe = job
    try:
        arrays, rec = extract_clip(clip, recipe)
        return i, arrays, {"ok": True, **rec}
    except Exception as e:  # noqa: BLE001: every failure of one clip is recorded, not fatal
        msg = str(e) if isinstance(e, media.MediaError) else f"{type(e).__name__}: {e}"
        return i, None, {"ok": False, "n_frames": 0, "aspect": 0.0, "error": msg.replace("\n", " ")}


def _init_worker():
    import torch
    torch.set_num_threads(1)


def _results(jobs, workers: int, inflight: int, start_method: str = "forkserver"):
    """Yield `_work(job)` for every job, in order, with at most `inflight` jobs submitted and not
    yet yielded (so memory stays bounded however many jobs there are).

    start_method "forkserver" (default): workers are forked from a clean server process that has
    imported this module once (forking the caller, whose torch/OpenMP threads may have run, is
    what "fork" does: fast, and safe as PyTorch's DataLoader makes it, with one torch thread per
    worker); "spawn": a fresh interpreter per worker (slowest to start).

    A worker that dies (a decoder crashing on a corrupt file) breaks the pool: the jobs in flight
    are then run again one at a time, each in a process of its own, the one that kills its process
    is recorded as failed, and a new pool takes over the rest."""
    if workers <= 0:
        for job in jobs:
            yield _work(job)
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload([__name__])
    it = iter(jobs)
    window: collections.deque = collections.deque()  # [job, future], in job order

    def submit(ex, job):
        window.append([job, None])  # in the window before submit can fail: never lost
        window[-1][1] = ex.submit(_work, job)

    while True:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as ex:
            try:
                for j in _take(it, inflight):
                    submit(ex, j)
                while window:
                    result = window[0][1].result()
                    window.popleft()
                    # handed on before the next submit: a pool that broke meanwhile makes submit
                    # raise, which would lose a result taken from the window but not yet yielded
                    yield result
                    for j in _take(it, 1):
                        submit(ex, j)
                return
            except BrokenProcessPool:
                pass
            finally:
                for _, f in window:
                    if f is not None:
                        f.cancel()
        for job, f in list(window):
            done = f is not None and f.done() and not f.cancelled() and f.exception() is None
            yield f.result() if done else _isolated(job, ctx)
        window.clear()


def _isolated(job, ctx):
    """`_work(job)` in a process of its own; a failed record if that process dies."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker) as ex:
        try:
            return ex.submit(_work, job).result()
        except BrokenProcessPool:
            return job[0], None, {"ok": False, "n_frames": 0, "aspect": 0.0,
                                  "error": f"{job[1].video}: the decoding process died (crash in FFmpeg?)"}


def _take(it, k):
    for _ in range(k):
        try:
            yield next(it)
        except StopIteration:
            return


# ---- one split ---------------------------------------------------------------------------------

def split_plan(clips: Sequence[ClipLike], recipe: Recipe, classes: Sequence[str]) -> dict:
    """What determines a split's content (media paths are left out: moving the raw data keeps it)."""
    return {"extract_version": EXTRACT_VERSION, "recipe": recipe.to_dict(), "classes": list(classes),
            "clips": [[c.clip, c.label] for c in clips]}


def input_identity(clip: ClipLike) -> str:
    """The identity of the raw files a clip is made from, cheap: size and mtime (ns) of its audio
    file and of its video file (once when they are one file); `-` for a missing one."""
    ids = []
    for path in dict.fromkeys((clip.audio, clip.video)):
        try:
            st = os.stat(path)
            ids.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            ids.append("-")
    return "|".join(ids)


def _carry_over(out_dir: Path, clips, inputs: list[str], recipe, classes: list[str], w) -> int:
    """A complete split of the same recipe and classes at `out_dir`, of other clips (one added,
    removed or relabelled): copy into the writer `w` the samples of every clip it holds with the
    same label and the same raw files' identity, so that only the others are extracted again.
    Returns how many were kept."""
    from ..io import store as S
    if not is_complete(out_dir):
        return 0
    try:
        old = S.open_split(out_dir)
    except (OSError, ValueError):
        return 0
    known = read_inputs(out_dir)
    m = old.meta
    if (known is None or len(known) != len(old) or m.get("recipe") != recipe.to_dict()
            or m.get("classes") != list(classes) or m.get("extract_version") != EXTRACT_VERSION
            or set(old.arrays) != set(recipe.arrays())):
        return 0
    where = {(clip, old.classes[int(lab)], ident): j
             for j, (clip, lab, ident) in enumerate(zip(old.clips, old.labels, known))}
    kept = 0
    for i, (c, ident) in enumerate(zip(clips, inputs)):
        j = where.get((c.clip, c.label, ident))
        if j is None:
            continue
        rec = {"ok": bool(old.ok[j]), "n_frames": int(old.n_frames[j]), "aspect": float(old.aspect[j])}
        if not old.ok[j]:
            rec["error"] = old.errors[j]
        w.write(i, {k: np.asarray(a[j]) for k, a in old.arrays.items()} if old.ok[j] else None, rec)
        kept += 1
        if kept % 256 == 0:
            w.commit()
    w.commit()
    return kept


def extract_split(clips: Sequence[ClipLike], recipe: Recipe | VideoFlowRecipe | str, out_dir: str | Path,
                  classes: Sequence[str], workers: int | None = None, inflight: int | None = None,
                  commit_every: int = 256, commit_seconds: float = 15.0, progress: bool = True,
                  desc: str | None = None, log=None, start_method: str = "forkserver") -> Path:
    """Extract features of `clips` (in this order) into the split folder `out_dir`; return it.

    workers: processes (None: all CPUs; 0: in this process; start_method: see `_results`).
    inflight: clips submitted and not yet written (default 4 per worker). A finished split with
    the same plan is left as it is; an interrupted one resumes (see `dyncim.data.io.store`); samples
    are committed every `commit_every` clips or `commit_seconds` seconds. Failed clips are
    recorded, not fatal. Each sample's input identity (`input_identity`: its raw files' sizes and
    mtimes) is recorded with the split (inputs.csv): a clip whose raw files changed since is
    extracted again, and only it (a split recorded without identities is extracted again whole).
    """
    from tqdm import tqdm
    recipe = get_recipe(recipe)
    out_dir = Path(out_dir)
    classes = list(classes)
    unknown = sorted({c.label for c in clips} - set(classes))
    if unknown:
        raise ValueError(f"{out_dir}: labels {unknown[:5]} are not among the classes {classes}")
    ids = [c.clip for c in clips]
    dup = sorted(x for x, k in collections.Counter(ids).items() if k > 1)
    if dup:
        raise ValueError(f"{out_dir}: clip ids listed twice: {dup[:5]}")
    plan = split_plan(clips, recipe, classes)
    inputs = [input_identity(c) for c in clips]
    if is_complete(out_dir, plan):
        known = read_inputs(out_dir)
        changed = (list(range(len(clips))) if known is None or len(known) != len(clips)
                   else [i for i, (a, b) in enumerate(zip(known, inputs)) if a != b])
        if not changed:
            if log:
                log(f"{out_dir}: complete, nothing to do")
            return out_dir
        if log:
            log(f"{out_dir}: the raw files of {len(changed)} of {len(clips)} clips changed since "
                f"extraction; extracting them again")
        reopen(out_dir, changed)
    workers = (os.cpu_count() or 1) if workers is None else workers
    inflight = inflight or max(1, 4 * workers)
    t0 = time.time()
    with SplitWriter(out_dir, len(clips), recipe.arrays(), plan) as w:
        if not w.resumed:
            kept = _carry_over(out_dir, clips, inputs, recipe, classes, w)
            if log and kept:
                log(f"{out_dir}: {kept} of {len(clips)} clips unchanged since the last extraction; kept")
        todo = [i for i in range(len(clips)) if not w.done[i]]
        if log and w.resumed:
            log(f"{out_dir}: resuming, {len(clips) - len(todo)} of {len(clips)} clips already done")
        failed = w.n_failed
        bar = tqdm(total=len(clips), initial=len(clips) - len(todo), unit="clip",
                   desc=desc or f"{recipe.name} {out_dir.name}", disable=not progress, smoothing=0.05)
        last = time.monotonic()
        jobs = ((i, clips[i], recipe) for i in todo)
        for k, (i, arrays, rec) in enumerate(_results(jobs, workers, inflight, start_method), 1):
            w.write(i, arrays, rec)
            failed += not rec["ok"]
            bar.update(1)
            if failed:
                bar.set_postfix(failed=failed, refresh=False)
            if k % commit_every == 0 or time.monotonic() - last > commit_seconds:
                w.commit()
                last = time.monotonic()
        bar.close()
        w.finish(ids, [c.label for c in clips],
                 {"dataset": recipe.name, "recipe": recipe.to_dict(), "classes": classes,
                  "extract_version": EXTRACT_VERSION,
                  "channels_last": [a for a in ("frames", "flow") if a in recipe.arrays()]},
                 inputs=inputs)
    if log:
        log(f"{out_dir}: {len(clips)} clips ({failed} failed) in {time.time() - t0:.1f} s")
    return out_dir


def extract_manifest(manifest: str | Path, recipe: Recipe | str, out_root: str | Path,
                     classes: Sequence[str], splits: Sequence[str] = ("train", "val", "test"),
                     **kwargs) -> dict[str, Path]:
    """Every split of a clip manifest (`download.read_clip_manifest`'s `clips.csv`) into
    `out_root/<split>/`; clips keep the manifest's order within a split."""
    from ..io.download import read_clip_manifest
    clips = read_clip_manifest(manifest)
    return {s: extract_split([c for c in clips if c.split == s], recipe, Path(out_root) / s, classes,
                             desc=f"{get_recipe(recipe).name} {s}", **kwargs)
            for s in splits}
