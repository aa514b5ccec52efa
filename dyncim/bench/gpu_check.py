"""The offline GPU check (`bash .ci/gpu-check`): the GPU path's parts, time-boxed, in order of value.

It runs on a GPU node as that node is (its own python3 and torch; the packages it lacks carried
as wheels, see resources/gpu-node/), or with `--dry` at tiny size on a CPU (the tests). Parts,
each in a process of its own, each killed at its time box, each writing its figures to the
output folder (`GPU_CHECK_OUT`, default bench/gpu/) as soon as they exist, so that a part that
runs out of time leaves the earlier ones:

1. preflight: the carried packages' pins and requirements, `python -m dyncim --help`,
   `snakemake --version`, `snakemake -n` of the embedded default;
2. tests: the CUDA tests and every method's hooks under bf16 autocast on the device
   (tests/test_methods_on_device.py with DYNCIM_TEST_DEVICE=cuda);
3. bench: dyncim.bench.gpu's CREMA-D-shaped epochs (joint and DynCIM, ResNet-18, bf16 on and off,
   resident and pinned store);
4. pipeline: a real tiny paper pipeline through `snakemake`: synthetic CREMA-D clips in the real
   layout served on 127.0.0.1, download, extraction, ResNet-18 training and evaluation on the
   device, report;
5. share: 1, 2 and 4 CREMA-D-shaped trainings sharing the GPU (aggregate samples/s, memory);
6. embedded: the embedded default end to end with the GPU visible and hidden, if time is left.

`check.json` holds every part's status and wall time and is rewritten after each part;
`check.log` every part's output.

    python -m dyncim.bench.gpu_check [--dry] [--out DIR] [--budget 480] [--parts tests bench ...]
"""
from __future__ import annotations

import argparse
import csv
import http.server
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from .timings import copy_repo

REPO = Path(__file__).resolve().parents[2]
CARRY = REPO / "resources" / "gpu-node" / "carry.txt"
# name, time box (s), least time left for it to start (s); in order of value
PARTS = (("preflight", 90, 20), ("tests", 150, 30), ("bench", 180, 60), ("pipeline", 180, 60),
         ("share", 180, 60), ("embedded", 400, 150))
DRY_MIN = 5   # in dry mode every part starts if this much is left
# bench_gpu's sizes: the real CREMA-D shapes, and a tiny stand-in for a CPU
SIZES = {False: ["--train", "5954", "--size", "224", "--width", "64", "--batch", "64", "--epochs", "2"],
         True: ["--train", "12", "--size", "16", "--width", "2", "--batch", "4", "--epochs", "1"]}
EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")


def machine() -> dict:
    import torch
    cuda = torch.cuda.is_available()
    return {"python": sys.version.split()[0], "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "cuda": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
            "bf16": bool(cuda and torch.cuda.is_bf16_supported()), "cpus": os.cpu_count()}


def env_for_jobs() -> dict:
    """This interpreter first on PATH (jobs run `python -m dyncim`), the checkout importable."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def run(cmd, log, cwd=REPO, env=None, check=True) -> subprocess.CompletedProcess:
    """Run `cmd`, its output appended to the open log; raise on failure when `check`."""
    log.write(f"$ {' '.join(map(str, cmd))}\n")
    log.flush()
    r = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env or env_for_jobs(), stdout=log,
                       stderr=subprocess.STDOUT, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} ... exited {r.returncode} (check.log)")
    return r


def job_counts(text: str) -> dict:
    """A snakemake dry run's 'Job stats' table as {rule: count}."""
    if "Job stats:" not in text:
        return {}
    counts = {}
    for line in text.split("Job stats:")[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


# --- the parts (each writes <out>/<part>.json or has its tool write it) ----------------------------
def part_preflight(out: Path, dry: bool, work: Path, log) -> dict:
    res = {}
    try:
        from . import offline_deps
        res["carried_problems"] = offline_deps.problems(CARRY) if CARRY.is_file() else ["no carry list"]
    except ImportError as e:
        res["carried_problems"] = [f"dyncim.bench.offline_deps: {e}"]
    run([sys.executable, "-m", "dyncim", "--help"], log)
    res["snakemake"] = subprocess.run(["snakemake", "--version"], capture_output=True, text=True,
                                      env=env_for_jobs(), check=True).stdout.strip()
    repo = copy_repo(work / "preflight")
    r = subprocess.run(["snakemake", "-n", "--cores", "2"], cwd=repo, env=env_for_jobs(), capture_output=True,
                       text=True)
    log.write(r.stdout[-3000:] + r.stderr[-3000:])
    if r.returncode:
        raise RuntimeError(f"snakemake -n of the embedded default exited {r.returncode} (check.log)")
    res["embedded_dry_run_jobs"] = job_counts(r.stdout + r.stderr)
    if res["carried_problems"]:
        raise RuntimeError("carried packages: " + "; ".join(res["carried_problems"][:5]))
    return res


def part_tests(out: Path, dry: bool, work: Path, log) -> dict:
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    xml = work / "tests.xml"
    env = {**env_for_jobs(), "DYNCIM_TEST_DEVICE": device}
    r = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
             "tests/test_methods_on_device.py", "tests/test_media_set.py", "tests/test_train_media.py",
             "-k", "on_device or cuda"], log, env=env, check=False)
    suite = ET.parse(xml).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    cases = suite.findall("testcase")
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in cases
              if c.find("failure") is not None or c.find("error") is not None]
    skipped = [c.get("name") for c in cases if c.find("skipped") is not None]
    res = {"device": device, "tests": len(cases), "failed": failed, "skipped": skipped,
           "passed": len(cases) - len(failed) - len(skipped), "pytest_rc": r.returncode}
    if r.returncode or not cases:
        write_json(out / "tests.json", res)
        raise RuntimeError(f"{len(failed)} of {len(cases)} tests failed: {failed[:5]}")
    return res


def part_bench(out: Path, dry: bool, work: Path, log) -> dict:
    run([sys.executable, "-m", "dyncim.bench.gpu", *SIZES[dry], "--store", work / "store",
         "--out", out / "bench.json"], log)
    return json.loads((out / "bench.json").read_text())


def part_share(out: Path, dry: bool, work: Path, log) -> dict:
    jobs = ["1", "2"] if dry else ["1", "2", "4"]
    run([sys.executable, "-m", "dyncim.bench.gpu", *SIZES[dry], "--store", work / "store", "--share", *jobs,
         "--out", out / "share.json"], log)
    return json.loads((out / "share.json").read_text())


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(root: Path):
    """A file server on 127.0.0.1 for `root`, in a thread; returns (server, base URL)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: _Quiet(*a, directory=str(root), **k))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/"


def crema_d_tree(www: Path, shipped: Path, n: int) -> dict:
    """n synthetic CREMA-D clips in the real layout under `www`, and the split file and LFS manifest
    that stand in for the shipped ones (written into `shipped`, a copy's resources/splits/crema-d)."""
    from ..data.io import download as D
    from ..data.io.media import write_synthetic_layout
    clips = write_synthetic_layout(www, "crema-d", n, labels=EMOTIONS, seconds=1.2, size=(120, 160), fps=10,
                                   splits=("train", "train", "train", "train", "val", "test"))
    with open(shipped / "splits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip", "label", "split"])
        w.writerows([c.clip, c.label, c.split] for c in clips)
    with open(shipped / "lfs-manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "sha256", "size"])
        for c in clips:
            for p in (Path(c.audio), Path(c.video)):
                rel = p.relative_to(www).as_posix()
                w.writerow([rel, D.sha256_of(p), p.stat().st_size])
    return {s: sum(c.split == s for c in clips) for s in ("train", "val", "test")}


def part_pipeline(out: Path, dry: bool, work: Path, log) -> dict:
    from .. import paths
    repo = copy_repo(work / "pipeline")
    www = work / "www"
    counts = crema_d_tree(www, repo / "resources" / "splits" / "crema-d", 12 if dry else 48)
    httpd, url = serve(www)
    methods = ["joint"] if dry else ["joint", "dyncim"]
    train = {"encoder": "auto", "resnet_width": 4 if dry else 64, "epochs": 1 if dry else 3,
             "batch_size": 4 if dry else 16, "lr": 0.01}
    cfg = {"seeds": [0], "datasets": {"crema-d": {"source": "crema-d", "train": train,
                                                  "media": {"base_url": url, "jobs": 4, "workers": 2}}},
           "methods": {m: {"seeds": [0]} for m in methods},
           "run": {"datasets": ["crema-d"], "methods": methods}}
    import yaml
    (repo / "check.yaml").write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    try:
        run(["snakemake", "--cores", str(min(os.cpu_count() or 2, 8)), "--configfile", "check.yaml"], log, cwd=repo)
    finally:
        httpd.shutdown()
    res = {"clips": counts, "methods": methods, "train": train, "wall_s": round(time.perf_counter() - t0, 1),
           "runs": {}}
    for m in methods:
        man = json.loads((repo / paths.manifest("crema-d", m)).read_text())
        ev = json.loads((repo / paths.eval_file("crema-d", m, 0)).read_text())
        res["runs"][m] = {"trained_on": man.get("device"), "test_acc": ev["acc"]}
    res["report"] = (repo / paths.REPORT).is_file()
    return res


def part_embedded(out: Path, dry: bool, work: Path, log) -> dict:
    import torch
    if not dry:
        from .gpu import embedded_runs
        return embedded_runs(hide_gpu=torch.cuda.is_available())
    repo = copy_repo(work / "embedded")
    res = {}
    for label, visible in (("gpu_visible", None), ("gpu_hidden", "")):
        env = env_for_jobs()
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        r = subprocess.run(["snakemake", "-n", "--forceall", "--cores", "2"], cwd=repo, env=env,
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"snakemake -n ({label}) exited {r.returncode}: {r.stderr[-500:]}")
        res[label] = {"dry_run_jobs": job_counts(r.stdout + r.stderr)}
    return res


PART_FUNCTIONS = {"preflight": part_preflight, "tests": part_tests, "bench": part_bench,
                  "pipeline": part_pipeline, "share": part_share, "embedded": part_embedded}


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def run_part(name: str, out: Path, dry: bool, work: Path) -> int:
    """In the part's own process: run it, write <out>/<name>.json (its figures, or its error)."""
    with open(out / "check.log", "a") as log:
        try:
            res = PART_FUNCTIONS[name](out, dry, work, log)
        except Exception as e:   # noqa: BLE001 - the error is the part's result
            prior = out / f"{name}.json"
            res = {"error": f"{type(e).__name__}: {e}"}
            if prior.is_file() and name in ("tests", "bench", "share"):
                res["partial"] = json.loads(prior.read_text())
            write_json(prior, res)
            log.write(f"{name}: {res['error']}\n")
            return 1
        write_json(out / f"{name}.json", res)
        return 0


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dyncim.bench.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--dry", action="store_true", help="every part at tiny size (a CPU is enough)")
    ap.add_argument("--out", default=os.environ.get("GPU_CHECK_OUT", str(REPO / "bench" / "gpu")))
    ap.add_argument("--budget", type=float, default=480.0,
                    help="seconds for the whole check, counted from GPU_CHECK_START (epoch seconds) if set")
    ap.add_argument("--parts", nargs="+", choices=[p for p, *_ in PARTS], default=[p for p, *_ in PARTS])
    ap.add_argument("--_part", help=argparse.SUPPRESS)
    ap.add_argument("--_work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args._part:
        return run_part(args._part, out, args.dry, Path(args._work))

    from ..device import torch_too_old
    import torch
    if (why := torch_too_old(torch.__version__)):
        print(why, file=sys.stderr)
        return 2
    start = float(os.environ.get("GPU_CHECK_START") or time.time())
    deadline = start + args.budget
    (out / "check.log").write_text("")
    summary = {"machine": machine(), "dry": args.dry, "budget_s": args.budget, "parts": {}}
    print("GPU check:", json.dumps(summary["machine"]), flush=True)
    write_json(out / "check.json", summary)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        for name, box, least in PARTS:
            if name not in args.parts:
                continue
            left = deadline - time.time()
            if left < (DRY_MIN if args.dry else least):
                summary["parts"][name] = {"status": "skipped", "why": f"{left:.0f} s left, {least} s needed"}
                failed += 1   # the check is incomplete
                print(f"{name:>9}: skipped ({left:.0f} s left)", flush=True)
                write_json(out / "check.json", summary)
                continue
            limit = min(box, left)
            t0 = time.time()
            proc = subprocess.Popen([sys.executable, "-m", "dyncim.bench.gpu_check", "--_part", name, "--_work", work,
                                     "--out", str(out), *(["--dry"] if args.dry else [])],
                                    env=env_for_jobs(), start_new_session=True)
            try:
                rc = proc.wait(timeout=limit)
                status = "ok" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                kill_group(proc)
                status = "timed out"
            wall = time.time() - t0
            entry = {"status": status, "wall_s": round(wall, 1), "limit_s": round(limit, 1)}
            if (f := out / f"{name}.json").is_file():
                res = json.loads(f.read_text())
                entry["figures"] = f.name
                if "error" in res:
                    entry["error"] = res["error"]
            summary["parts"][name] = entry
            failed += status != "ok"
            print(f"{name:>9}: {status} in {wall:.1f} s" + (f" ({entry['error']})" if "error" in entry else ""),
                  flush=True)
            write_json(out / "check.json", summary)
    summary["wall_s"] = round(time.time() - start, 1)
    write_json(out / "check.json", summary)
    print(f"GPU check: {summary['wall_s']} s, {failed} part(s) not ok (failed, timed out or skipped); "
          f"figures in {out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
