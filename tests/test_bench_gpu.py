"""The GPU check script (dyncim/bench/gpu.py, `make bench-gpu`) runs: at a tiny size on the CPU here,
so that a session lent a GPU can run it as it is. Its figures are not asserted (timings belong
to the benchmark), only that every setting ran and reported them."""
import json

import numpy as np
import pytest

from dyncim.bench import gpu as bench_gpu
from dyncim.data.io import store as S

TINY = ["--train", "12", "--size", "16", "--width", "2", "--batch", "4", "--epochs", "1"]


def test_the_gpu_check_runs_every_setting_and_writes_its_figures(tmp_path):
    out = tmp_path / "gpu.json"
    rc = bench_gpu.main(["--train", "12", "--size", "16", "--width", "2", "--batch", "4", "--epochs", "1",
                         "--store", str(tmp_path / "store"), "--out", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0, [r.get("traceback") for r in res["epochs"]]
    assert [(r["method"], r["amp"]) for r in res["epochs"]] == \
        [("joint", "auto"), ("dyncim", "auto"), ("joint", "off"), ("dyncim", "off")]
    for r in res["epochs"]:
        assert r["train_samples"] == 12 and r["samples_per_s"] > 0 and r["epoch_s"] > 0
        # the store's delivery rate beside the training rate, and their ratio
        assert r["delivery_samples_per_s"] > 0 and r["delivery_epoch_s"] > 0
        assert r["delivery_ratio"] == pytest.approx(r["delivery_samples_per_s"] / r["samples_per_s"])
    # measured once per residency (here one: the CPU's memory maps), the same figure on its rows
    for fraction in {r["resident_fraction"] for r in res["epochs"]}:
        assert len({r["delivery_samples_per_s"] for r in res["epochs"] if r["resident_fraction"] == fraction}) == 1
    # the store has CREMA-D's per-clip shapes and types (here at 16 x 16 pictures)
    train = S.open_split(tmp_path / "store" / "train")
    assert train.arrays["audio"].shape == (12, 257, 188) and train.arrays["audio"].dtype == np.float16
    assert train.arrays["frames"].shape == (12, 3, 16, 16, 3) and train.arrays["frames"].dtype == np.uint8
    assert sorted(set(train.labels.tolist())) == list(range(6))


def test_the_busy_fraction_is_read_from_nvidia_smi(tmp_path, monkeypatch):
    """A fake nvidia-smi stands in for the real one: the sampler starts it with the loop option,
    reads one figure per line and stops it."""
    import time
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\n'
                    'i=0; while true; do echo $((50 + i % 2 * 40)); i=$((i + 1)); sleep 0.02; done\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    s = bench_gpu.GpuSampler(ms=20).start()
    time.sleep(0.6)
    busy = s.stop()
    assert s.proc.poll() is not None           # stopped
    assert "--loop-ms=20" in (tmp_path / "args").read_text()
    assert busy["samples"] >= 5 and 50 <= busy["mean_pct"] <= 90 and busy["median_pct"] in (50.0, 70.0, 90.0)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert bench_gpu.GpuSampler().start().stop() is None   # no nvidia-smi: no figure


def test_a_failing_setting_is_recorded_and_a_stopped_run_keeps_its_earlier_rows(tmp_path, monkeypatch):
    """The JSON is written after every row: an unknown method is an error row after the good one;
    a run stopped in its second setting (an exception nothing catches, as a kill) leaves the first."""
    out, store = tmp_path / "gpu.json", str(tmp_path / "store")
    rc = bench_gpu.main([*TINY, "--methods", "joint", "nosuch", "--amp", "auto", "--store", store, "--out", str(out)])
    rows = json.loads(out.read_text())["epochs"]
    assert rc == 1 and [r["method"] for r in rows] == ["joint", "nosuch"]
    assert rows[0]["samples_per_s"] > 0 and "error" not in rows[0] and "nosuch" in rows[1]["error"]

    class Killed(BaseException):
        pass
    made, trainer = [], bench_gpu._trainer

    def second_is_killed(*a, **k):
        made.append(a[2])
        if len(made) == 2:
            raise Killed
        return trainer(*a, **k)
    monkeypatch.setattr(bench_gpu, "_trainer", second_is_killed)
    out.unlink()
    with pytest.raises(Killed):
        bench_gpu.main([*TINY, "--amp", "auto", "--store", store, "--out", str(out)])
    assert made == ["joint", "dyncim"]
    rows = json.loads(out.read_text())["epochs"]
    assert [r["method"] for r in rows] == ["joint"] and rows[0]["samples_per_s"] > 0


def test_several_trainings_share_the_device_in_concurrent_processes(tmp_path):
    """--share 1 2: k worker processes per k on one store, timed after a common go signal; only
    sharing runs (no epoch rows); the aggregate is the sum of the jobs' rates."""
    out = tmp_path / "gpu.json"
    args = [a if a != "1" else "2" for a in TINY]   # two timed epochs: a longer window
    rc = bench_gpu.main([*args, "--share", "1", "2", "--store", str(tmp_path / "store"), "--out", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0, res.get("share")
    assert "epochs" not in res and res["share_definition"]
    assert [r["k"] for r in res["share"]] == [1, 2]
    for r in res["share"]:
        jobs = r["jobs"]
        assert len(jobs) == r["k"] and len({j["pid"] for j in jobs}) == r["k"]   # one process per job
        assert all(j["method"] == "joint" and j["amp"] == "auto" and j["samples"] == 24 for j in jobs)
        assert all(j["samples_per_s"] > 0 and j["t_end"] > j["t_start"] for j in jobs)
        assert r["per_job_samples_per_s"] == [j["samples_per_s"] for j in jobs]
        assert r["aggregate_samples_per_s"] == pytest.approx(sum(r["per_job_samples_per_s"]))
        starts, ends = [j["t_start"] for j in jobs], [j["t_end"] for j in jobs]
        assert r["window"]["union_s"] == pytest.approx(max(ends) - min(starts))
        union = sum(j["samples"] for j in jobs) / r["window"]["union_s"]
        assert r["aggregate_union_samples_per_s"] == pytest.approx(union)
        assert r["aggregate_union_samples_per_s"] <= r["aggregate_samples_per_s"] * 1.05
        assert r["wall_s"] > r["window"]["union_s"] and r["gpu_busy"] is None   # no nvidia-smi here
    two = res["share"][1]["jobs"]
    assert max(j["t_start"] for j in two) < min(j["t_end"] for j in two)   # the timed windows overlap


def test_a_sharing_job_that_fails_is_reported(tmp_path):
    out = tmp_path / "gpu.json"
    rc = bench_gpu.main([*TINY, "--methods", "nosuch", "--share", "1", "--store", str(tmp_path / "store"),
                         "--out", str(out)])
    (r,) = json.loads(out.read_text())["share"]
    assert rc == 1 and "nosuch" in r["error"] and "nosuch" in r["jobs"][0]["error"]


def test_a_sharing_job_ends_when_its_parent_is_gone(tmp_path):
    """A job whose parent was killed (at a time limit) exits instead of staying on the GPU."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "dyncim.bench.gpu", "_share_worker", "--store", str(tmp_path),
                        "--dir", str(tmp_path), "--job", "0", "--parent", "1", "--params", "params.yaml",
                        "--method", "joint", "--amp", "auto", "--epochs", "1", "--batch", "4", "--width", "2"],
                       cwd=bench_gpu.REPO, timeout=60)
    assert r.returncode == 3 and not (tmp_path / "job-0.json").exists()
