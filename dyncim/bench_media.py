"""Media benchmarks (for `make bench`; never part of the tests).

- `bench_loading(clips, split_dir, recipe)`: samples per second delivered to the model (augmented
  frames, float audio, labels, in batches on the training device) (a) from the feature store
  (`dyncim.data.store`: a random batch gathered from the memory maps, batched augmentation) and (b)
  decoding the same clips per sample on the fly, as the peers' data sets do (PyAV decode +
  resample + spectrogram + frames per clip, then the same augmentation per sample, then stacking),
  in one run, both on the same number of threads. Returns both rates and their ratio (target >= 10
  on a CPU).
- `rss_of_extraction(n)`: peak resident memory of an extraction of n synthetic clips, run in a
  fresh process (the writer's and the largest worker's), to show that it does not grow with n.

    python -m dyncim.bench_media loading [--clips 48] [--device cpu]
    python -m dyncim.bench_media rss [--n 100 400] [--recipe vggsound]
    python -m dyncim.bench_media discovery [--n 2000 20000 200000]

- `rss_of_discovery(ns)`: peak resident memory of VGGSound's media step (`prepare_vggsound`: three
  streamed passes over a vggsound.csv of n rows in 309 classes, a walk of a folder of n clips,
  each probed with PyAV on a bounded thread pool), in a fresh process per n. The clips are
  symbolic links to one tiny MP4, so that 200k of them cost no disk.

Synthetic clips stand in for CREMA-D's (no data set is downloaded): 480 x 360 Sorenson H.263 FLV
at 30 fps and about 1 Mbit/s (CREMA-D's average: 3.05 GB for 7,442 WAV + FLV pairs), a textured
picture, 2.5 s; a 16 kHz mono WAV.

Measured on a shared 2-core machine (load about 10), one torch thread, batch 32, 48 clips, 15 s
of each path interleaved: training mode (random resized crop + flip + normalise) 123 samples/s
from the store vs 10.7 decoding on the fly, 11.5x (CPU time: 265 vs 23.3 samples per CPU-second,
11.4x); evaluation mode (resize + normalise) 149 vs 10.1, 14.8x (CPU time 14.6x). The store's cost
is almost all the augmentation's float32 output (about 3.6 ms of CPU per 3-frame sample); reading
a batch from the memory maps costs about 0.1 ms per sample.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _sync(device):
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def bench_loading(clips, split_dir: str | Path, recipe="crema-d", batch_size: int = 32,
                  device: str = "cpu", train: bool = True, min_seconds: float = 5.0,
                  threads: int | None = 1, seed: int = 0) -> dict:
    """Samples/s from the store at `split_dir` (holding features of `clips`, in the same order) vs
    decoding `clips` per sample; see the module docstring. `threads`: torch threads for both
    (None: leave as is)."""
    import torch

    from .data import extract as E
    from .data.store import open_split
    from .train.augment import FrameAugment
    if threads:
        torch.set_num_threads(threads)
    recipe = E.get_recipe(recipe)
    device = torch.device(device)
    split = open_split(split_dir)
    if len(split) != len(clips):
        raise ValueError(f"{split_dir}: {len(split)} samples, {len(clips)} clips given")
    g = torch.Generator(device=device).manual_seed(seed)
    aug = FrameAugment(recipe.video.size[0], generator=g)
    aspect_all = torch.from_numpy(split.aspect).to(device)
    rng = np.random.default_rng(seed)

    def from_store(idx):
        idx = np.sort(idx)
        b = split.take(idx, device=device)
        frames = aug(b["frames"], train, aspect_all[torch.from_numpy(idx).to(device)])
        return frames, b["audio"].float(), b["labels"]

    def on_the_fly(idx):
        fr, au, lab = [], [], []
        for i in idx:
            arrays, rec = E.extract_clip(clips[i], recipe)
            f = split.tensor("frames", arrays["frames"]).unsqueeze(0).to(device)
            fr.append(aug(f, train, rec["aspect"])[0])
            au.append(torch.from_numpy(arrays["audio"]).to(device).float())
            lab.append(split.labels[i])
        return torch.stack(fr), torch.stack(au), torch.tensor(lab, device=device)

    def draw(k):
        return rng.choice(len(split), k, replace=k > len(split))

    # interleaved rounds (one store batch, then `chunk` clips decoded), so that the machine's load
    # hits both alike; wall-clock and this process's CPU time (all its threads) per path
    chunk = min(batch_size, 8)
    from_store(draw(batch_size)), on_the_fly(draw(1))  # warm-up
    acc = {"store": [0, 0.0, 0.0], "decode": [0, 0.0, 0.0]}
    while min(acc["store"][1], acc["decode"][1]) < min_seconds or acc["decode"][0] < 2 * chunk:
        for key, fn, k in (("store", from_store, batch_size), ("decode", on_the_fly, chunk)):
            idx = draw(k)
            w, c = time.perf_counter(), time.process_time()
            fn(idx)
            _sync(device)
            acc[key][0] += k
            acc[key][1] += time.perf_counter() - w
            acc[key][2] += time.process_time() - c
    (sn, sw, sc), (dn, dw, dc) = acc["store"], acc["decode"]
    return {"recipe": recipe.name, "device": str(device), "threads": torch.get_num_threads(),
            "batch_size": batch_size, "train_augmentation": train,
            "store_samples_per_s": sn / sw, "decode_samples_per_s": dn / dw, "ratio": (sn / sw) / (dn / dw),
            "store_samples_per_cpu_s": sn / sc, "decode_samples_per_cpu_s": dn / dc,
            "ratio_cpu": (sn / sc) / (dn / dc), "store_samples": sn, "decode_samples": dn,
            "store_seconds": sw, "decode_seconds": dw}


def synthetic_crema_d(root: str | Path, n: int, seed: int = 0, **kwargs):
    """n CREMA-D-like clips (see the module docstring) in CREMA-D's layout."""
    from .data import media
    kw = dict(seconds=2.5, size=(360, 480), fps=30, texture=20.0, bit_rate=1_000_000, seed=seed,
              labels=("NEU", "HAP", "SAD", "FEA", "DIS", "ANG"), splits=("train",))
    kw.update(kwargs)
    return media.write_synthetic_layout(root, "crema-d", n, **kw)


def loading(n_clips: int = 48, device: str = "cpu", batch_size: int = 32, min_seconds: float = 5.0,
            workers: int = 0, tmp: str | Path | None = None, modes=("train",)) -> dict:
    """Make `n_clips` synthetic CREMA-D clips, extract them, and run `bench_loading` for each
    mode ("train": random resized crop + flip + normalise; "eval": resize + normalise)."""
    from .data import extract as E
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        clips = synthetic_crema_d(Path(d) / "raw", n_clips)
        out = E.extract_split(clips, "crema-d", Path(d) / "features" / "train",
                              classes=("NEU", "HAP", "SAD", "FEA", "DIS", "ANG"), workers=workers,
                              progress=False)
        return {m: bench_loading(clips, out, "crema-d", batch_size, device, train=m == "train",
                                 min_seconds=min_seconds) for m in modes}


def _descendants_peak_kib(root: int) -> dict[int, int]:
    """{pid: VmHWM in KiB} of every process descending from `root` (Linux /proc)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out = {}
    for pid in parent:
        p, seen = pid, 0
        while p in parent and p != root and seen < 64:
            p, seen = parent[p], seen + 1
        if p == root and pid != root:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        out[pid] = int(line.split()[1])
            except OSError:
                pass
    return out


def _rss_child(args) -> None:
    """In a fresh process: extract, then print peak RSS (the writer; the largest worker, sampled
    from /proc every 0.2 s, as forkserver workers are not this process's children) as JSON."""
    import os
    import resource
    import threading

    from .data import extract as E
    from .data.media import SyntheticClip
    clips = [SyntheticClip(**c) for c in json.loads(Path(args.clip_list).read_text())][:args.n]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers: dict[int, int] = {}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for pid, kib in _descendants_peak_kib(os.getpid()).items():
                workers[pid] = max(workers.get(pid, 0), kib)
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.time()
    E.extract_split(clips, args.recipe, args.out, classes=sorted({c.label for c in clips}),
                    workers=args.workers, progress=False, start_method=args.start_method)
    stop.set()
    th.join()
    print(json.dumps({"n": len(clips), "seconds": round(time.time() - t, 1),
                      "writer_rss_mib_before": round(base, 1),
                      "writer_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "processes_seen": len(workers),
                      "largest_other_process_peak_rss_mib": round(max(workers.values(), default=0) / 1024, 1)}))


def rss_of_extraction(ns=(100, 400), workers: int = 2, tmp: str | Path | None = None,
                      size=(72, 96), fps: int = 10, start_method: str = "forkserver",
                      recipe: str = "crema-d") -> list[dict]:
    """Peak RSS of extracting the first n of max(ns) tiny synthetic CREMA-D clips, each n in a
    fresh process (features are full size whatever the clips' size: 224 x 224 frames)."""
    from dataclasses import asdict
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        clips = synthetic_crema_d(Path(d) / "raw", max(ns), size=size, fps=fps, texture=0.0, bit_rate=None)
        lst = Path(d) / "clips.json"
        lst.write_text(json.dumps([asdict(c) for c in clips]))
        out = []
        for n in ns:
            r = subprocess.run([sys.executable, "-m", "dyncim.bench_media", "_rss_child", "--clip-list",
                                str(lst), "--n", str(n), "--out", str(Path(d) / f"feat{n}" / "train"),
                                "--workers", str(workers), "--start-method", start_method,
                                "--recipe", recipe],
                               capture_output=True, text=True, check=True)
            out.append(json.loads(r.stdout.strip().splitlines()[-1]))
        return out


def _discovery_child(args) -> None:
    import resource

    from .data.vggsound import prepare_vggsound
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.time()
    counts = prepare_vggsound(Path(args.out), args.index, from_dir=args.folder, jobs=args.jobs, log=None)
    print(json.dumps({"n": args.n, "seconds": round(time.time() - t, 1), "rss_mib_before": round(base, 1),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "used": sum(c["used"] for c in counts.values())}))


def rss_of_discovery(ns=(2000, 20000, 200000), jobs: int = 2, tmp: str | Path | None = None) -> list[dict]:
    """Peak RSS of VGGSound's media step for n clips (see the module docstring), each n in a
    fresh process."""
    import csv
    import os
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        d = Path(d)
        one = d / "one.mp4"
        from .data import media
        media.encode_video(one, media.colour_frames(1.0, 10, 24, 32), 10, "mpeg4",
                           audio=media.tone(1.0, 16000, 440.0), sample_rate=16000)
        out = []
        for n in ns:
            folder, index = d / f"clips{n}", d / f"vggsound{n}.csv"
            folder.mkdir()
            with open(index, "w", newline="") as f:
                w = csv.writer(f)
                for i in range(n):
                    yt, start = f"y{i:010d}", 10 * (i % 30)
                    w.writerow([yt, start, f"class {i % 309:03d}", "test" if i % 13 == 0 else "train"])
                    os.symlink(one, folder / f"{yt}_{start:06d}.mp4")
            r = subprocess.run([sys.executable, "-m", "dyncim.bench_media", "_discovery_child", "--index", str(index),
                                "--folder", str(folder), "--out", str(d / f"raw{n}"), "--n", str(n),
                                "--jobs", str(jobs)], capture_output=True, text=True, check=True)
            out.append(json.loads(r.stdout.strip().splitlines()[-1]))
            import shutil
            shutil.rmtree(folder)
        return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dyncim.bench_media", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("loading")
    a.add_argument("--clips", type=int, default=48)
    a.add_argument("--device", default="cpu")
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--min-seconds", type=float, default=5.0)
    a.add_argument("--modes", nargs="+", default=["train"], choices=["train", "eval"])
    r = sub.add_parser("rss")
    r.add_argument("--n", type=int, nargs="+", default=[100, 400])
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--start-method", default="forkserver")
    r.add_argument("--recipe", default="crema-d")
    q = sub.add_parser("discovery")
    q.add_argument("--n", type=int, nargs="+", default=[2000, 20000, 200000])
    q.add_argument("--jobs", type=int, default=2)
    qc = sub.add_parser("_discovery_child")
    for k in ("--index", "--folder", "--out"):
        qc.add_argument(k, required=True)
    qc.add_argument("--n", type=int, required=True)
    qc.add_argument("--jobs", type=int, default=2)
    c = sub.add_parser("_rss_child")
    c.add_argument("--clip-list", required=True)
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--recipe", default="crema-d")
    c.add_argument("--start-method", default="forkserver")
    args = ap.parse_args(argv)
    if args.cmd == "loading":
        print(json.dumps(loading(args.clips, args.device, args.batch_size, args.min_seconds,
                                 modes=args.modes), indent=2))
    elif args.cmd == "rss":
        print(json.dumps(rss_of_extraction(args.n, args.workers, start_method=args.start_method,
                                           recipe=args.recipe), indent=2))
    elif args.cmd == "discovery":
        print(json.dumps(rss_of_discovery(args.n, args.jobs), indent=2))
    elif args.cmd == "_discovery_child":
        _discovery_child(args)
    else:
        _rss_child(args)


if __name__ == "__main__":
    main()
