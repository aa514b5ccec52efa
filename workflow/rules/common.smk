# Helpers shared by the rules: what to run, where things go, which code a job depends on.
import os
import shutil
from pathlib import Path

from dyncim.methods.catalog import CATALOG

DATASETS = P["run"]["datasets"]
METHODS = P["run"]["methods"]
MFEAT_VIEWS = dc.MFEAT_VIEWS


def uses_cuda():
    """Whether training jobs will use CUDA (decided without importing torch, which is slow)."""
    dev = P["device"]
    if dev == "cpu":
        return False
    if dev.startswith("cuda"):
        return True
    return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0")


GPU = 1 if uses_cuda() else 0


def split_name(data):
    """mfeat configurations share one split of the 2000 digits; a synthetic set has its own."""
    return "mfeat" if P["datasets"][data]["source"] == "mfeat" else data


def raw_inputs(data):
    if P["datasets"][data]["source"] == "mfeat":
        return [f"data/raw/mfeat/mfeat-{v}.csv" for v in MFEAT_VIEWS]
    return []


def code(*paths):
    """Package modules a job runs: declared as inputs so that a code change re-runs the job."""
    return sorted({str(p) for pat in paths for p in Path(".").glob(pat)})


def method_code(method):
    return code("dyncim/train/*.py", "dyncim/models/*.py", "dyncim/methods/base.py",
                f"dyncim/methods/{CATALOG[P['methods'][method]['type']].module}.py")


def eval_outputs(data):
    return [f"results/eval/{data}/{m}/seed{s}.json" for m in METHODS for s in P["methods"][m]["seeds"]]
