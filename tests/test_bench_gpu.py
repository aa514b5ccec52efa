"""The GPU check script (dyncim/bench_gpu.py, `make bench-gpu`) runs: at a tiny size on the CPU here,
so that a session lent a GPU can run it as it is. Its figures are not asserted (timings belong
to the benchmark), only that every setting ran and reported them."""
import json

import numpy as np

from dyncim import bench_gpu
from dyncim.data import store as S


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
