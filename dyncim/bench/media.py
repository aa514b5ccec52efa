"""Media benchmarks (for `make bench`; never part of the tests).

- `bench_loading(clips, split_dir, recipe)`: samples per second delivered to the model (augmented
  frames, float audio, labels, in batches on the training device), in one run, the three paths
  interleaved, all on the same number of threads:
  (a) from the feature store (`dyncim.data.io.store`: a random batch gathered from the memory maps,
      batched augmentation);
  (b) the peers' own loader (`JpegLoader`: OGM-GE's / BalanceBenchmark's CREMA-D data sets): the
      frames written once beforehand as 1 fps JPEG files per clip (outside the timing), then per
      sample the clip's JPEGs opened with PIL and augmented, and the spectrogram computed from the
      WAV;
  (c) decoding each FLV per sample (PyAV decode + resample + spectrogram + frames per clip, then
      the same augmentation per sample).
  The headline `ratio` is (a) / (b) (target >= 10 on a CPU): (b) is what the peers run; (c), the
  slower strawman, is kept as `ratio_vs_decode`. CPU-time ratios likewise.
- `rss_of_extraction(n)`: peak resident memory of an extraction of n synthetic clips, run in a
  fresh process (the writer's and the largest worker's), to show that it does not grow with n.

    python -m dyncim.bench.media loading [--clips 48] [--device cpu]
    python -m dyncim.bench.media rss [--n 100 400] [--recipe vggsound]
    python -m dyncim.bench.media discovery [--n 2000 20000 200000]

- `rss_of_discovery(ns)`: peak resident memory of VGGSound's media step (`prepare_vggsound`: three
  streamed passes over a vggsound.csv of n rows in 309 classes, a walk of a folder of n clips,
  each probed with PyAV on a bounded thread pool), in a fresh process per n. The clips are
  symbolic links to one tiny MP4, so that 200k of them cost no disk.

Synthetic clips stand in for CREMA-D's (no data set is downloaded): 480 x 360 Sorenson H.263 FLV
at 30 fps and about 1 Mbit/s (CREMA-D's average: 3.05 GB for 7,442 WAV + FLV pairs), a textured
picture, 2.5 s; a 16 kHz mono WAV.

Measured figures belong in docs/data.md ("Why a store"), not here.
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


JPEG_QUALITY = 95  # OpenCV's cv2.imencode default, which OGM-GE's CREMA-D frame script relies on


def write_jpeg_frames(clips, root: str | Path, fps: float = 1.0, quality: int = JPEG_QUALITY) -> list[Path]:
    """The peers' preprocessing, done once per clip before any timing: every frame of `clips` at
    `fps` (1 fps), at the source resolution, as `<root>/<clip>/<k:05d>.jpg` (PIL, `quality`).

    The frames are the ones our recipe decodes (`media.decode_frames` at 1 fps, the frame nearest
    the middle of each complete second, not thinned, not resized) rather than OGM-GE's
    `data/CREMAD/video_preprocessing.py` choice (the first frame of every second, a partial last
    one included; GeWu-Lab/OGM-GE_CVPR2022 at 0f64793f96e5), so that both loaders see the same
    pictures. Returns the clip folders."""
    from PIL import Image

    from ..data.io import media
    root = Path(root)
    out = []
    for c in clips:
        d = root / c.clip
        d.mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(media.decode_frames(c.video, fps, None, None).images):
            Image.fromarray(img).save(d / f"{k:05d}.jpg", quality=quality)
        out.append(d)
    return out


def read_wav(path: str | Path, sample_rate: int) -> np.ndarray:
    """`librosa.load(path, sr=sample_rate)` without librosa: the WAV read by scipy, scaled to
    [-1, 1) as soundfile scales PCM, channels averaged (mono=True), resampled with scipy's polyphase
    FIR (`resample_poly`; librosa uses soxr, another windowed-sinc resampler, so the values differ
    slightly from both librosa's and the store's libswresample)."""
    import math

    from scipy.io import wavfile
    from scipy.signal import resample_poly
    sr, x = wavfile.read(path)
    if x.dtype.kind in "iu":
        bits = 8 * x.dtype.itemsize
        x = (x.astype(np.float32) - (2 ** (bits - 1) if x.dtype.kind == "u" else 0)) / 2 ** (bits - 1)
    x = x.astype(np.float32, copy=False)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    if sr != sample_rate:
        g = math.gcd(int(sr), int(sample_rate))
        x = resample_poly(x, sample_rate // g, sr // g).astype(np.float32)
    return np.ascontiguousarray(x)


class JpegLoader:
    """The peers' CREMA-D loader (GeWu-Lab/OGM-GE_CVPR2022 `dataset/CramedDataset.py` at
    0f64793f96e5, GeWu-Lab/BalanceBenchmark `balancemm/datasets/cremad_dataset.py` at 39ed569712e4):
    per sample, list the clip's JPEG folder, open the chosen frames with PIL (`.convert("RGB")`),
    augment them, and compute the spectrogram from the WAV (`read_wav` + the recipe's `LogSTFT`,
    as `librosa.load(sr=22050)` + tile to 3 s + clip + `librosa.stft(n_fft=512, hop_length=353)` +
    log(|S| + 1e-7)); batches are stacked. BalanceBenchmark's CREMA-D loads a precomputed `.pt`
    spectrogram per sample instead (cheaper than this).

    Differences, each chosen so that the output matches the store path's (same shapes, dtypes and
    augmentation code, so the ratio measures the loading, not another transform):
    - frames: `T` slots (the recipe's 3), evenly spaced over the sorted files and padded with the
      last one, as the store picks them; OGM-GE's loader at its default `--fps 1` opens one file
      (the first in `os.listdir` order), BalanceBenchmark's `fps: 2` one per segment;
    - augmentation: our `FrameAugment` per sample on the full-resolution picture (aspect: its pixel
      width / height, as torchvision's RandomResizedCrop sees it) instead of torchvision's PIL
      transforms, which cannot be installed beside the pinned torch;
    - audio: scipy's resampler instead of soxr (`read_wav`); `wav="pyav"` reads it with the store's
      `media.decode_audio` instead (then the spectrogram is the store's, before float16).
    """

    def __init__(self, folders, wavs, labels, recipe, augment, device="cpu", wav: str = "scipy"):
        if not len(folders) == len(wavs) == len(labels):
            raise ValueError(f"{len(folders)} folders, {len(wavs)} WAVs, {len(labels)} labels")
        if wav not in ("scipy", "pyav"):
            raise ValueError(f"wav {wav!r}: expected scipy or pyav")
        self.folders, self.wavs, self.labels = [Path(f) for f in folders], list(wavs), list(labels)
        self.recipe, self.augment, self.device, self.wav = recipe, augment, device, wav

    def sample(self, i: int, train: bool):
        """(frames float (T, 3, S, S), audio float32 (F, T'), label) of sample i."""
        import os

        import torch
        from PIL import Image

        from ..data.io import media
        folder = self.folders[i]
        files = sorted(os.listdir(folder))
        if not files:
            raise media.MediaError(f"{folder}: no frames")
        slots = self.recipe.video.frames
        pick = media.evenly_spaced(len(files), slots)
        pick += [pick[-1]] * (slots - len(pick))
        images = []
        for k in pick:
            with Image.open(folder / files[k]) as im:
                images.append(np.asarray(im.convert("RGB")))
        h, w = images[0].shape[:2]
        x = torch.from_numpy(np.stack(images)).movedim(-1, -3).unsqueeze(0).to(self.device)
        frames = self.augment(x, train, w / h)[0]
        sr = self.recipe.audio.sample_rate
        if self.wav == "scipy":
            wave = read_wav(self.wavs[i], sr)
        else:
            wave = media.decode_audio(self.wavs[i], sr, self.recipe.audio_channel)[0]
        with torch.inference_mode():
            audio = self.recipe.audio(torch.from_numpy(wave))
        return frames, audio.to(self.device), self.labels[i]

    def __call__(self, idx, train: bool):
        import torch
        fr, au, lab = zip(*(self.sample(int(i), train) for i in idx))
        return torch.stack(fr), torch.stack(au), torch.tensor(lab, device=self.device)


def store_loader(split, augment, device="cpu"):
    """The store path: `fn(idx, train)` -> (frames, audio float32, labels) of a batch gathered from
    the memory maps (sorted rows) and augmented at once."""
    import torch
    aspect_all = torch.from_numpy(split.aspect).to(device)

    def load(idx, train: bool):
        idx = np.sort(np.asarray(idx))
        b = split.take(idx, device=device)
        frames = augment(b["frames"], train, aspect_all[torch.from_numpy(idx).to(device)])
        return frames, b["audio"].float(), b["labels"]
    return load


def decode_loader(clips, split, recipe, augment, device="cpu"):
    """Decoding each FLV per sample: `fn(idx, train)` (PyAV decode + resample + spectrogram + frames
    of each clip, `extract.extract_clip`, then the same augmentation per sample, then stacking)."""
    import torch

    from ..data.extraction import extract as E

    def load(idx, train: bool):
        fr, au, lab = [], [], []
        for i in idx:
            arrays, rec = E.extract_clip(clips[i], recipe)
            f = split.tensor("frames", arrays["frames"]).unsqueeze(0).to(device)
            fr.append(augment(f, train, rec["aspect"])[0])
            au.append(torch.from_numpy(arrays["audio"]).to(device).float())
            lab.append(split.labels[i])
        return torch.stack(fr), torch.stack(au), torch.tensor(lab, device=device)
    return load


def bench_loading(clips, split_dir: str | Path, recipe="crema-d", batch_size: int = 32,
                  device: str = "cpu", train: bool = True, min_seconds: float = 5.0,
                  threads: int | None = 1, seed: int = 0, jpeg_dir: str | Path | None = None,
                  wav: str = "scipy") -> dict:
    """Samples/s from the store at `split_dir` (holding features of `clips`, in the same order) vs
    the peers' JPEG loader (`JpegLoader`; headline `ratio` = store / jpeg) vs decoding `clips` per
    sample (`ratio_vs_decode`); see the module docstring. The JPEG frames are written to `jpeg_dir`
    (default: a temporary folder) before any timing. `threads`: torch threads for all three (None:
    leave as is)."""
    import torch

    from ..data.extraction import extract as E
    from ..data.io.store import open_split
    from ..data.sets.augment import FrameAugment
    if threads:
        torch.set_num_threads(threads)
    recipe = E.get_recipe(recipe)
    device = torch.device(device)
    split = open_split(split_dir)
    if len(split) != len(clips):
        raise ValueError(f"{split_dir}: {len(split)} samples, {len(clips)} clips given")
    g = torch.Generator(device=device).manual_seed(seed)
    aug = FrameAugment(recipe.video.size[0], generator=g)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        folders = write_jpeg_frames(clips, Path(jpeg_dir or tmp), recipe.video.fps)
        written = time.perf_counter() - t
        n_jpeg = sum(len(list(f.iterdir())) for f in folders)
        peers = JpegLoader(folders, [c.audio for c in clips], split.labels, recipe, aug, device, wav)
        chunk = min(batch_size, 8)  # per-sample paths: smaller steps, for a finer interleaving
        paths = {"store": (store_loader(split, aug, device), batch_size), "jpeg": (peers, chunk),
                 "decode": (decode_loader(clips, split, recipe, aug, device), chunk)}

        def draw(k):
            return rng.choice(len(split), k, replace=k > len(split))

        for fn, _ in paths.values():  # warm-up
            fn(draw(1), train)
        # interleaved: each step runs the path with the least time so far (so that the machine's
        # load hits all alike, and each gets about min_seconds), until every path has min_seconds
        # and two steps; wall-clock and this process's CPU time (all its threads) per path
        acc = {k: [0, 0.0, 0.0, 0] for k in paths}  # samples, wall s, CPU s, steps
        while any(a[1] < min_seconds or a[3] < 2 for a in acc.values()):
            key = min(acc, key=lambda k: acc[k][1])
            fn, k = paths[key]
            idx = draw(k)
            w, c = time.perf_counter(), time.process_time()
            fn(idx, train)
            _sync(device)
            a = acc[key]
            a[0] += k
            a[1] += time.perf_counter() - w
            a[2] += time.process_time() - c
            a[3] += 1
    res = {"recipe": recipe.name, "device": str(device), "threads": torch.get_num_threads(),
           "batch_size": batch_size, "train_augmentation": train, "jpeg_wav_reader": wav,
           "jpeg_files_written": n_jpeg, "jpeg_write_seconds": written}
    for key, (n, sw, sc, _) in acc.items():
        res.update({f"{key}_samples_per_s": n / sw, f"{key}_samples_per_cpu_s": n / sc,
                    f"{key}_samples": n, f"{key}_seconds": sw})
    res.update({"ratio": res["store_samples_per_s"] / res["jpeg_samples_per_s"],
                "ratio_cpu": res["store_samples_per_cpu_s"] / res["jpeg_samples_per_cpu_s"],
                "ratio_vs_decode": res["store_samples_per_s"] / res["decode_samples_per_s"],
                "ratio_cpu_vs_decode": res["store_samples_per_cpu_s"] / res["decode_samples_per_cpu_s"]})
    return res


def synthetic_crema_d(root: str | Path, n: int, seed: int = 0, **kwargs):
    """n CREMA-D-like clips (see the module docstring) in CREMA-D's layout."""
    from ..data.io import media
    kw = dict(seconds=2.5, size=(360, 480), fps=30, texture=20.0, bit_rate=1_000_000, seed=seed,
              labels=("NEU", "HAP", "SAD", "FEA", "DIS", "ANG"), splits=("train",))
    kw.update(kwargs)
    return media.write_synthetic_layout(root, "crema-d", n, **kw)


def loading(n_clips: int = 48, device: str = "cpu", batch_size: int = 32, min_seconds: float = 5.0,
            workers: int = 0, tmp: str | Path | None = None, modes=("train",), wav: str = "scipy") -> dict:
    """Make `n_clips` synthetic CREMA-D clips, extract them, and run `bench_loading` for each
    mode ("train": random resized crop + flip + normalise; "eval": resize + normalise)."""
    from ..data.extraction import extract as E
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        clips = synthetic_crema_d(Path(d) / "raw", n_clips)
        out = E.extract_split(clips, "crema-d", Path(d) / "features" / "train",
                              classes=("NEU", "HAP", "SAD", "FEA", "DIS", "ANG"), workers=workers,
                              progress=False)
        return {m: bench_loading(clips, out, "crema-d", batch_size, device, train=m == "train",
                                 min_seconds=min_seconds, jpeg_dir=Path(d) / "jpeg" / m, wav=wav)
                for m in modes}


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

    from ..data.extraction import extract as E
    from ..data.io.media import SyntheticClip
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
            r = subprocess.run([sys.executable, "-m", "dyncim.bench.media", "_rss_child", "--clip-list",
                                str(lst), "--n", str(n), "--out", str(Path(d) / f"feat{n}" / "train"),
                                "--workers", str(workers), "--start-method", start_method,
                                "--recipe", recipe],
                               capture_output=True, text=True, check=True)
            out.append(json.loads(r.stdout.strip().splitlines()[-1]))
        return out


def _discovery_child(args) -> None:
    import resource

    from ..data.sources.vggsound import prepare_vggsound
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
        from ..data.io import media
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
            r = subprocess.run([sys.executable, "-m", "dyncim.bench.media", "_discovery_child", "--index", str(index),
                                "--folder", str(folder), "--out", str(d / f"raw{n}"), "--n", str(n),
                                "--jobs", str(jobs)], capture_output=True, text=True, check=True)
            out.append(json.loads(r.stdout.strip().splitlines()[-1]))
            import shutil
            shutil.rmtree(folder)
        return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dyncim.bench.media", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("loading")
    a.add_argument("--clips", type=int, default=48)
    a.add_argument("--device", default="cpu")
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--min-seconds", type=float, default=5.0)
    a.add_argument("--modes", nargs="+", default=["train"], choices=["train", "eval"])
    a.add_argument("--wav", default="scipy", choices=["scipy", "pyav"],
                   help="how the peers' loader reads and resamples the WAV (see read_wav)")
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
                                 modes=args.modes, wav=args.wav), indent=2))
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
