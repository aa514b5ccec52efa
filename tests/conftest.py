import os
import shutil
import subprocess
import sys
from types import SimpleNamespace
from pathlib import Path

import pytest
import torch

from dyncim.data.sets.feature_set import FeatureSet

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def at_epoch(epoch: int, **fields):
    """A stand-in for the RunView the loop hands to epoch hooks (only the fields a test needs)."""
    return SimpleNamespace(epoch=epoch, **fields)


class RecordingWriter:
    """Stands in for TensorBoard's SummaryWriter in tests of a method's `log` hook."""

    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars[tag] = value

    def add_histogram(self, tag, values, step):
        self.scalars[tag] = values


def tiny_features(n=120, dims=(5, 4), n_classes=3, seed=0, informative=True) -> FeatureSet:
    """A small random multimodal set: 60% train, 20% val, 20% test."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % n_classes
    views = []
    for d in dims:
        centers = torch.randn(n_classes, d, generator=g)
        views.append((centers[labels] * (1.0 if informative else 0.0) + torch.randn(n, d, generator=g)).float())
    split = torch.zeros(n, dtype=torch.int8)
    split[int(0.6 * n):int(0.8 * n)] = 1
    split[int(0.8 * n):] = 2
    return FeatureSet([f"m{i}" for i in range(len(dims))], n_classes, views, labels, split, None)


TRAIN_CFG = {"epochs": 3, "batch_size": 16, "eval_batch_size": 64, "optimizer": "sgd", "lr": 0.05,
             "momentum": 0.9, "weight_decay": 1e-4, "lr_step": 0, "lr_gamma": 0.1, "hidden": [8],
             "dropout": 0.0, "checkpoint_every": 1}


@pytest.fixture(autouse=True)
def one_thread():
    """Tests time and compare small tensor work: one thread keeps them fast and reproducible."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def feats():
    return tiny_features()


def copy_repo(dest: Path) -> Path:
    """Copy the tracked and untracked-but-not-ignored files of the repo (what a clone would hold)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    for f in files:
        src = REPO / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


def venv_env():
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    env["DVC_NO_ANALYTICS"] = "1"
    return env
