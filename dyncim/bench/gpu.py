"""The GPU check (`make bench-gpu`; never part of the tests): can the input path feed the GPU, and
can several trainings share one? The two questions a GPU node's configuration turns on.

On a store written by the real writer with random content of CREMA-D's shapes: (1) samples/s of
joint and DynCIM ResNet-18 epochs (bf16 autocast on / off; store resident on the GPU and in
pinned host memory) beside the rate at which the store alone delivers the training batches;
(2) `--share K...`: the aggregate rate of K concurrent training processes (one per job, as
Snakemake runs them). The JSON is rewritten after every row, so a run stopped at a time limit
keeps the rows done. On a CPU it runs at tiny sizes (the tests). Figures measured with it belong
in the docs, with their date and machine, not in this docstring.

    python -m dyncim.bench.gpu [--train 5954] [--epochs 2] [--store DIR] [--embedded] [--out FILE]
    python -m dyncim.bench.gpu --share 1 2 4 [--store DIR] [--out FILE]   # sharing runs only
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from .. import config as C
from ..atomic import write_json

REPO = Path(__file__).resolve().parents[2]
CREMA_D_TRAIN = 5954   # the standard split's training clips (resources/splits/crema-d/splits.csv)


def write_store(root: Path, train: int, size: int = 224, frames: int = 3, audio=(257, 188),
                val: int = 64, test: int = 16, seed: int = 0) -> Path:
    """A CREMA-D-shaped store under `root` ({train,val,test}/), random content of the real dtypes."""
    from ..data.io import store as S
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


def _device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trainer(data, params: dict, method: str, amp: str, epochs: int, batch: int, width: int, device, ckpt: Path):
    """The pipeline's Trainer on `data` for `method`, ResNet-18 of base `width`, `epochs` epochs."""
    from ..train.loop import Trainer
    tcfg = {**C.train_config(params, "mfeat-pix-zer", method), "encoder": "auto", "resnet_width": width,
            "batch_size": batch, "eval_batch_size": batch, "lr": 1e-3, "amp": amp, "epochs": epochs}
    return Trainer(data, C.method_config(params, method), tcfg, 0, device, ckpt, None, "bench")


def _train_epochs(t, first: int, last: int) -> None:
    for e in range(first, last):
        t.epoch = e
        t.method.begin_epoch(t.view())
        t.train_epoch()


def delivery_rate(data, batch: int, device, seed: int = 0) -> dict:
    """The input path alone: the seconds to draw one epoch's training batches (a permutation of
    the training split, `data.batch(idx, train=True, generator)`: gather, copy, augmentation),
    synchronised on CUDA, after two untimed batches (first launches, pinned buffers)."""
    import torch
    idx = data.index("train")
    perm = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed)).to(device)]
    g = torch.Generator().manual_seed(seed + 1)
    for start in range(0, min(len(perm), 2 * batch), batch):
        data.batch(perm[start:start + batch], train=True, generator=g)
    _sync(device)
    t0 = time.perf_counter()
    for start in range(0, len(perm), batch):
        data.batch(perm[start:start + batch], train=True, generator=g)
    _sync(device)
    s = time.perf_counter() - t0
    return {"delivery_samples_per_s": len(perm) / s, "delivery_epoch_s": s}


def epoch_figures(store: Path, methods, amps, epochs: int, batch: int, width: int, params: dict,
                  pinned: bool = True, on_row=None) -> list[dict]:
    """Per method x amp setting: samples/s over `epochs` timed training epochs after one warm-up,
    the GPU's busy fraction over them, peak GPU memory, residency, and the store's delivery rate
    (`delivery_rate`, measured once per residency) and its ratio to the training rate (above 1:
    the input path alone is faster than training). `pinned`: also the first method and setting
    with the store kept in pinned host memory (resident_fraction 0), the path of a store too
    large for the GPU. `on_row(rows)` is called after every row (the caller writes them)."""
    import torch

    from ..data.sets.media_set import open_media
    device = _device()
    rows = []
    settings = [(params.get("resident_fraction", 0.5), amp, m) for amp in amps for m in methods]
    if pinned and device.type == "cuda":
        settings.append((0.0, amps[0], methods[0]))
    data, opened, delivery = None, None, {}
    for fraction, amp, m in settings:
        if opened != fraction:
            data = None   # let the previous store's GPU copy go before the next one is made
            data, opened = open_media(store, fraction).to(device), fraction
            try:
                delivery = delivery_rate(data, batch, device)
            except Exception as e:   # noqa: BLE001 - recorded on the rows, the training still runs
                delivery = {"delivery_error": f"{type(e).__name__}: {e}"}
        n = int((data.split == 0).sum())
        row = {"method": m, "amp": amp, "device": str(device), "train_samples": n, "batch": batch,
               "resident_fraction": fraction, "resident": [bool(r) for r in getattr(data, "resident", [])],
               **delivery}
        sampler = None
        try:
            with tempfile.TemporaryDirectory() as tmp:
                t = _trainer(data, params, m, amp, epochs + 1, batch, width, device, Path(tmp) / "last.pt")
                _train_epochs(t, 0, 1)   # warm-up (cuDNN autotuning)
                _sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                sampler, t0 = GpuSampler().start(), time.perf_counter()
                _train_epochs(t, 1, epochs + 1)
                _sync(device)
                elapsed = time.perf_counter() - t0
                row.update(samples_per_s=n * epochs / elapsed, epoch_s=elapsed / epochs, gpu_busy=sampler.stop(),
                           peak_gpu_mib=(torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None))
                sampler = None
                if "delivery_samples_per_s" in row:
                    row["delivery_ratio"] = row["delivery_samples_per_s"] / row["samples_per_s"]
                del t
        except Exception as e:   # noqa: BLE001 - recorded, and the other settings still run
            row["error"] = f"{type(e).__name__}: {e}"
            row["traceback"] = traceback.format_exc()[-3000:]
        finally:
            if sampler is not None:
                sampler.stop()
        rows.append(row)
        print(_row_text(row), flush=True)
        if on_row is not None:
            on_row(rows)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _row_text(r: dict) -> str:
    if "error" in r:
        return f"{r['method']:>8} amp={r['amp']:<4} ERROR {r['error']}"
    busy = f"{r['gpu_busy']['mean_pct']:.0f} %" if r.get("gpu_busy") else "-"
    peak = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f} MiB"
    if "delivery_samples_per_s" in r:
        feed = f"delivery {r['delivery_samples_per_s']:9.1f} samples/s ({r['delivery_ratio']:.1f} x training)"
    else:
        feed = f"delivery ERROR {r.get('delivery_error')}"
    return (f"{r['method']:>8} amp={r['amp']:<4} {r['samples_per_s']:9.1f} samples/s  epoch {r['epoch_s']:7.2f} s  "
            f"{feed}  GPU busy {busy}  peak {peak}  resident {r['resident']}")


# --- several trainings sharing one GPU -----------------------------------------------------------
SHARE_DEFINITION = (
    "k training processes (one per job, as Snakemake runs them) on one store; each trains a warm-up "
    "epoch, writes ready-<i> and waits for the go file, which the parent writes once every job is "
    "ready, so the timed windows start together. per_job_samples_per_s: a job's timed samples / its "
    "timed seconds (t_end - t_start); aggregate_samples_per_s: their sum; aggregate_union_samples_per_s: "
    "all timed samples / (last t_end - first t_start), the lower bound when jobs end apart; "
    "gpu_busy: from the go signal until every job has written its figures; peak memory per job: "
    "torch.cuda.max_memory_allocated over the whole job (warm-up included), total: their sum "
    "(peak_reserved_mib: the allocator's reserve, what the job holds of the GPU).")


def _watch_parent(pid: int, every: float = 0.5) -> None:
    """Exit this process when its parent is gone (killed at a time limit): no orphan stays on the GPU."""
    def watch():
        while True:
            if os.getppid() != pid:
                os._exit(3)
            time.sleep(every)
    threading.Thread(target=watch, daemon=True).start()


def share_worker(argv) -> int:
    """One sharing job (`python -m dyncim.bench.gpu _share_worker ...`, started by `share_run`)."""
    ap = argparse.ArgumentParser(prog="python -m dyncim.bench.gpu _share_worker")
    for name, kind in (("--store", str), ("--dir", str), ("--job", int), ("--parent", int), ("--params", str),
                       ("--method", str), ("--amp", str), ("--epochs", int), ("--batch", int), ("--width", int)):
        ap.add_argument(name, type=kind, required=True)
    a = ap.parse_args(argv)
    _watch_parent(a.parent)
    d = Path(a.dir)
    res = {"job": a.job, "pid": os.getpid(), "method": a.method, "amp": a.amp}
    try:
        import torch

        from ..data.sets.media_set import open_media
        params = C.load(a.params)
        torch.set_num_threads(params["threads"])   # as a training job sets it
        device = _device()
        t0 = time.perf_counter()
        data = open_media(a.store, params.get("resident_fraction", 0.5)).to(device)
        n = int((data.split == 0).sum())
        res.update(device=str(device), train_samples=n, resident=[bool(r) for r in data.resident])
        with tempfile.TemporaryDirectory() as tmp:
            t = _trainer(data, params, a.method, a.amp, a.epochs + 1, a.batch, a.width, device, Path(tmp) / "last.pt")
            _train_epochs(t, 0, 1)
            _sync(device)
            res["setup_and_warmup_s"] = time.perf_counter() - t0
            write_json(d / f"ready-{a.job}", {"pid": os.getpid()})
            while not (d / "go").exists():
                time.sleep(0.002)
            res["t_start"], t1 = time.time(), time.perf_counter()
            _train_epochs(t, 1, a.epochs + 1)
            _sync(device)
            s = time.perf_counter() - t1
            res["t_end"] = time.time()
        res.update(samples=n * a.epochs, timed_s=s, samples_per_s=n * a.epochs / s,
                   peak_gpu_mib=torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
                   peak_reserved_mib=torch.cuda.max_memory_reserved() / 2**20 if device.type == "cuda" else None)
    except Exception as e:   # noqa: BLE001 - reported to the parent
        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()[-3000:]
    write_json(d / f"job-{a.job}.json", res)
    return 1 if "error" in res else 0


def share_run(store: Path, k: int, method: str, amp: str, epochs: int, batch: int, width: int,
              params_path: str, poll: float = 0.01) -> dict:
    """k concurrent sharing jobs (`share_worker`) on `store`: their figures and the aggregate (SHARE_DEFINITION)."""
    t_wall = time.perf_counter()
    out = {"k": k, "method": method, "amp": amp, "epochs": epochs, "batch": batch}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="bench-share-") as tmp:
        d = Path(tmp)
        procs, logs, sampler = [], [], None
        try:
            for i in range(k):
                logs.append(open(d / f"log-{i}.txt", "w"))
                cmd = [sys.executable, "-m", "dyncim.bench.gpu", "_share_worker", "--store", str(Path(store).resolve()),
                       "--dir", str(d), "--job", str(i), "--parent", str(os.getpid()),
                       "--params", str(Path(params_path).resolve()),
                       "--method", method, "--amp", amp, "--epochs", str(epochs), "--batch", str(batch),
                       "--width", str(width)]
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))

            def have(name):   # per job: whether it has written d/<name>-<i>
                return [(d / f"{name}-{i}").exists() for i in range(k)]

            def running():
                return [p.poll() is None for p in procs]
            # the barrier: every job warmed up (or one has ended before it: the run has failed)
            while not all(have("ready")) and all(r or h for r, h in zip(running(), have("ready"))):
                time.sleep(poll)
            if all(have("ready")):
                sampler = GpuSampler().start()
                (d / "go").touch()
                while any(r and not h for r, h in zip(running(), have("job"))):
                    time.sleep(poll)
                out["gpu_busy"], sampler = sampler.stop(), None
                for p in procs:   # their figures are in: one that does not end is stopped below
                    try:
                        p.wait(timeout=120)
                    except subprocess.TimeoutExpired:
                        pass
        finally:   # a job that failed before the barrier, or an interruption: the others are stopped
            if sampler is not None:
                sampler.stop()
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for f in logs:
                f.close()
        jobs = []
        for i, p in enumerate(procs):
            f = d / f"job-{i}.json"
            j = json.loads(f.read_text()) if f.exists() else \
                {"job": i, "error": f"exited with {p.returncode} before reporting"}
            if "error" in j:
                j["log"] = (d / f"log-{i}.txt").read_text()[-3000:]
            jobs.append(j)
    out["jobs"] = jobs
    out["wall_s"] = time.perf_counter() - t_wall
    errors = [j for j in jobs if "error" in j]
    if errors:
        out["error"] = "; ".join(f"job {j['job']}: {j['error']}" for j in errors)
        return out
    starts, ends = [j["t_start"] for j in jobs], [j["t_end"] for j in jobs]
    union = max(ends) - min(starts)
    peaks, reserved = [j["peak_gpu_mib"] for j in jobs], [j["peak_reserved_mib"] for j in jobs]
    out.update(per_job_samples_per_s=[j["samples_per_s"] for j in jobs],
               aggregate_samples_per_s=sum(j["samples_per_s"] for j in jobs),
               aggregate_union_samples_per_s=sum(j["samples"] for j in jobs) / union,
               window={"union_s": union, "overlap_s": min(ends) - max(starts),
                       "start_skew_s": max(starts) - min(starts)},
               peak_gpu_mib_max=None if None in peaks else max(peaks),
               peak_gpu_mib_total=None if None in peaks else sum(peaks),
               peak_reserved_mib_total=None if None in reserved else sum(reserved))
    return out


def _share_text(r: dict) -> str:
    if "error" in r:
        return f"share k={r['k']}: ERROR {r['error']}"
    busy = f"{r['gpu_busy']['mean_pct']:.0f} %" if r.get("gpu_busy") else "-"
    peak = "-" if r["peak_gpu_mib_max"] is None else \
        f"{r['peak_gpu_mib_max']:.0f} MiB (total {r['peak_gpu_mib_total']:.0f})"
    per = ", ".join(f"{v:.1f}" for v in r["per_job_samples_per_s"])
    return (f"share k={r['k']} {r['method']} amp={r['amp']}: aggregate {r['aggregate_samples_per_s']:.1f} samples/s "
            f"(union window {r['aggregate_union_samples_per_s']:.1f}), per job [{per}]  GPU busy {busy}  "
            f"peak per job {peak}  wall {r['wall_s']:.1f} s")


def share_runs(store: Path, ks, method: str, amp: str, epochs: int, batch: int, width: int, params_path: str,
               on_result=None) -> list[dict]:
    """`share_run` for each job count in `ks`; `on_result(results)` after each."""
    results = []
    for k in ks:
        results.append(share_run(store, k, method, amp, epochs, batch, width, params_path))
        print(_share_text(results[-1]), flush=True)
        if on_result is not None:
            on_result(results)
    return results


def embedded_runs(hide_gpu: bool) -> dict:
    """The embedded default's full run from clean in a temp copy, with the GPU visible (and hidden)."""
    from .timings import _env, clean_outputs, copy_repo
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_share_worker"]:
        return share_worker(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m dyncim.bench.gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--train", type=int, default=CREMA_D_TRAIN, help="training clips in the store")
    ap.add_argument("--size", type=int, default=224, help="frame height and width")
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 base width")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up")
    ap.add_argument("--methods", nargs="+", default=["joint", "dyncim"], help="(--share: the first)")
    ap.add_argument("--amp", nargs="+", default=["auto", "off"], choices=["auto", "bf16", "off"],
                    help="(--share: the first)")
    ap.add_argument("--store", help="reuse (or keep) the synthetic store in this folder")
    ap.add_argument("--share", nargs="+", type=int, metavar="K",
                    help="only sharing runs: for each K, K concurrent training processes on the GPU")
    ap.add_argument("--embedded", action="store_true", help="also time the embedded default end to end")
    ap.add_argument("--out", default=str(REPO / "bench" / "gpu.json"))
    args = ap.parse_args(argv)
    if args.share and min(args.share) < 1:
        ap.error("--share: job counts of at least 1")
    import torch
    params = C.load(args.params)
    res = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                       "bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())},
           "args": vars(args)}
    print(res["machine"], flush=True)

    def save(key=None, value=None):
        if key is not None:
            res[key] = value
        write_json(args.out, res)
    save()
    tmp = None
    store = Path(args.store) if args.store else Path(tmp := tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        if not (store / "test" / "meta.json").is_file():
            t0 = time.perf_counter()
            write_store(store, args.train, args.size)
            save("store_write_s", time.perf_counter() - t0)
        if args.share:
            res["share_definition"] = SHARE_DEFINITION
            share_runs(store, args.share, args.methods[0], args.amp[0], args.epochs, args.batch, args.width,
                       args.params, on_result=lambda rows: save("share", list(rows)))
        else:
            epoch_figures(store, args.methods, args.amp, args.epochs, args.batch, args.width, params,
                          on_row=lambda rows: save("epochs", list(rows)))
        if args.embedded:
            try:
                res["embedded"] = embedded_runs(hide_gpu=torch.cuda.is_available())
            except Exception as e:   # noqa: BLE001
                res["embedded"] = {"error": f"{type(e).__name__}: {e}"}
            save()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    save()
    print(f"written: {args.out}")
    return 1 if any("error" in r for r in res.get("epochs", []) + res.get("share", [])) else 0


if __name__ == "__main__":
    raise SystemExit(main())
