"""The GPU check (`make bench-gpu`; never part of the tests): one script for a machine with a GPU.

1. A CREMA-D-shaped feature store, written by the real writer (dyncim.data.store) with random
   content of the real shapes and types: per clip a float16 257 x 188 log-spectrogram and three
   uint8 224 x 224 RGB frames, 6 classes, the standard split's 5,954 training clips (and small
   val / test splits: only training is timed).
2. For joint and DynCIM, with bf16 autocast (`amp: auto`) and without (`amp: off`): one
   warm-up epoch (cuDNN autotuning) and timed training epochs of ResNet-18 (width 64) with the
   paper recipe's batch of 64, through the shared loop and the store's batched augmentation on the
   device, as the pipeline trains. Per setting: samples per second, the GPU's busy fraction over
   the timed epochs (nvidia-smi's utilization.gpu sampled every 100 ms; target >= 90 %), peak GPU
   memory (torch's allocator), and whether the store was resident on the GPU.
3. With `--embedded`: the embedded default's full `snakemake --cores all` from clean in a temp
   copy of the repository, with the GPU visible and then hidden (CUDA_VISIBLE_DEVICES=''): the
   feature-vector sets stay on the CPU under `device: auto`, so the two should take the same time.

Each part's figures are written to the JSON as soon as they exist (a failure in one part is
recorded there, the others still run). On a CPU the same script runs at a small size
(`--train 16 --size 32 --width 4`), which is how the tests keep it working.

    python -m dyncim.bench_gpu [--train 5954] [--epochs 2] [--embedded] [--out bench/gpu.json]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from . import config as C
from .atomic import write_json

REPO = Path(__file__).resolve().parents[1]
CREMA_D_TRAIN = 5954   # the standard split's training clips (resources/splits/crema-d/splits.csv)


def write_store(root: Path, train: int, size: int = 224, frames: int = 3, audio=(257, 188),
                val: int = 64, test: int = 16, seed: int = 0) -> Path:
    """A CREMA-D-shaped store under `root` ({train,val,test}/), random content of the real dtypes."""
    from .data import store as S
    rng = np.random.default_rng(seed)
    classes = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
    specs = {"audio": (audio, "<f2"), "frames": ((frames, size, size, 3), "|u1")}
    for split, n in (("train", train), ("val", val), ("test", test)):
        labels = [i % len(classes) for i in range(n)]
        with S.SplitWriter(root / split, n, specs, {"bench": split, "n": n, "size": size}) as w:
            for start in range(0, n, 256):   # bounded memory: 256 clips at a time
                k = min(256, n - start)
                a = rng.standard_normal((k, *audio), dtype=np.float32).astype(np.float16)
                f = rng.integers(0, 256, (k, frames, size, size, 3), dtype=np.uint8)
                for j in range(k):
                    w.write(start + j, {"audio": a[j], "frames": f[j]},
                            {"ok": True, "n_frames": frames, "aspect": 4 / 3})
                w.commit()
            w.finish([f"{split}-{i}" for i in range(n)], [classes[y] for y in labels],
                     {"classes": classes, "channels_last": ["frames"]})
    return root


class GpuSampler:
    """nvidia-smi's utilization.gpu (percent of the last sample period a kernel ran), sampled
    every `ms` milliseconds between start() and stop(); None without nvidia-smi."""

    def __init__(self, ms: int = 100):
        self.ms, self.values, self.proc, self.thread = ms, [], None, None

    def start(self):
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return self
        index = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
        self.proc = subprocess.Popen([exe, "-i", index, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      f"--loop-ms={self.ms}"], stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.values.append(float(line.strip()))
            except ValueError:
                pass

    def stop(self) -> dict | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.thread.join(timeout=10)
        v = self.values[2:] or self.values   # the first samples can predate the timed work
        return {"mean_pct": statistics.fmean(v), "median_pct": statistics.median(v), "samples": len(v)} if v else None


def epoch_figures(store: Path, methods, amps, epochs: int, batch: int, width: int, params: dict,
                  pinned: bool = True) -> list[dict]:
    """Per method x amp setting: samples/s over `epochs` timed training epochs after one warm-up,
    the GPU's busy fraction over them, peak GPU memory and residency. `pinned`: also the first
    method and setting with the store kept in pinned host memory (resident_fraction 0), the path
    of a store too large for the GPU."""
    import torch

    from .data.media_set import open_media
    from .train.loop import Trainer
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    settings = [(params.get("resident_fraction", 0.5), amp, m) for amp in amps for m in methods]
    if pinned and device.type == "cuda":
        settings.append((0.0, amps[0], methods[0]))
    data, opened = None, None
    for fraction, amp, m in settings:
        if opened != fraction:
            data = None   # let the previous store's GPU copy go before the next one is made
            data, opened = open_media(store, fraction).to(device), fraction
        n = int((data.split == 0).sum())
        tcfg = {**C.train_config(params, "mfeat-pix-zer", m), "encoder": "auto", "resnet_width": width,
                "batch_size": batch, "eval_batch_size": batch, "lr": 1e-3, "amp": amp, "epochs": epochs + 1}
        row = {"method": m, "amp": amp, "device": str(device), "train_samples": n, "batch": batch,
               "resident_fraction": fraction, "resident": [bool(r) for r in getattr(data, "resident", [])]}
        sampler = None
        try:
            with tempfile.TemporaryDirectory() as tmp:
                t = Trainer(data, C.method_config(params, m), tcfg, 0, device, Path(tmp) / "last.pt", None, "bench")
                for e in range(epochs + 1):
                    t.epoch = e
                    t.method.begin_epoch(t.view())
                    if e == 1:
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                            torch.cuda.reset_peak_memory_stats()
                        sampler, t0 = GpuSampler().start(), time.perf_counter()
                    t.train_epoch()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - t0
                row.update(samples_per_s=n * epochs / elapsed, epoch_s=elapsed / epochs, gpu_busy=sampler.stop(),
                           peak_gpu_mib=(torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None))
                del t
        except Exception as e:   # noqa: BLE001 - recorded, and the other settings still run
            if sampler is not None:
                sampler.stop()
            row["error"] = f"{type(e).__name__}: {e}"
            row["traceback"] = traceback.format_exc()[-3000:]
        rows.append(row)
        print(_row_text(row), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _row_text(r: dict) -> str:
    if "error" in r:
        return f"{r['method']:>8} amp={r['amp']:<4} ERROR {r['error']}"
    busy = f"{r['gpu_busy']['mean_pct']:.0f} %" if r.get("gpu_busy") else "-"
    peak = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f} MiB"
    return (f"{r['method']:>8} amp={r['amp']:<4} {r['samples_per_s']:9.1f} samples/s  epoch {r['epoch_s']:7.2f} s  "
            f"GPU busy {busy}  peak {peak}  resident {r['resident']}")


def embedded_runs(hide_gpu: bool) -> dict:
    """The embedded default's full run from clean in a temp copy, with the GPU visible (and hidden)."""
    from .bench import _env, clean_outputs, copy_repo
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = copy_repo(Path(tmp) / "repo")
        for label, visible in (("gpu_visible", None), ("gpu_hidden", "")) if hide_gpu else (("gpu_visible", None),):
            clean_outputs(work)
            env = _env()
            if visible is not None:
                env["CUDA_VISIBLE_DEVICES"] = visible
            t0 = time.perf_counter()
            r = subprocess.run(["snakemake", "--cores", "all", "-q"], cwd=work, env=env, capture_output=True, text=True)
            out[label] = {"s": time.perf_counter() - t0, "rc": r.returncode,
                          **({"stderr": r.stderr[-2000:]} if r.returncode else {})}
            print(f"embedded default, {label}: {out[label]['s']:.1f} s (rc {r.returncode})", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dyncim.bench_gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--train", type=int, default=CREMA_D_TRAIN, help="training clips in the store")
    ap.add_argument("--size", type=int, default=224, help="frame height and width")
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 base width")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up")
    ap.add_argument("--methods", nargs="+", default=["joint", "dyncim"])
    ap.add_argument("--amp", nargs="+", default=["auto", "off"], choices=["auto", "bf16", "off"])
    ap.add_argument("--store", help="reuse (or keep) the synthetic store in this folder")
    ap.add_argument("--embedded", action="store_true", help="also time the embedded default end to end")
    ap.add_argument("--out", default=str(REPO / "bench" / "gpu.json"))
    args = ap.parse_args(argv)
    import torch
    params = C.load(args.params)
    res = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                       "bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())},
           "args": vars(args)}
    print(res["machine"], flush=True)
    tmp = None
    store = Path(args.store) if args.store else Path(tmp := tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        if not (store / "test" / "meta.json").is_file():
            t0 = time.perf_counter()
            write_store(store, args.train, args.size)
            res["store_write_s"] = time.perf_counter() - t0
        res["epochs"] = epoch_figures(store, args.methods, args.amp, args.epochs, args.batch, args.width, params)
        write_json(args.out, res)
        if args.embedded:
            try:
                res["embedded"] = embedded_runs(hide_gpu=torch.cuda.is_available())
            except Exception as e:   # noqa: BLE001
                res["embedded"] = {"error": f"{type(e).__name__}: {e}"}
            write_json(args.out, res)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    write_json(args.out, res)
    print(f"written: {args.out}")
    return 1 if any("error" in r for r in res["epochs"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
