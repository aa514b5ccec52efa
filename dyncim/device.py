"""Which torch device a job runs on, and the oldest torch the code supports."""
from __future__ import annotations

import re

import torch

# The oldest torch release the code is written for: every torch API it calls exists there
# (tests/test_device.py guards against newer ones), and it is the first release built against
# NumPy 2, which numpy>=1.26 admits. pyproject.toml pins 2.13.0 for the reproducible CPU install;
# a GPU node's own older torch is fine down to this one.
MIN_TORCH = (2, 3)


def torch_version(text: str = torch.__version__) -> tuple[int, int]:
    """(major, minor) of a torch version string such as '2.11.0+cu130' or '2.4.0a0+git1234'."""
    m = re.match(r"(\d+)\.(\d+)", text)
    if not m:
        raise ValueError(f"torch version {text!r}: expected <major>.<minor>...")
    return int(m.group(1)), int(m.group(2))


def torch_too_old(text: str = torch.__version__) -> str | None:
    """One line saying why this torch is refused, or None when it is supported."""
    if torch_version(text) < MIN_TORCH:
        return (f"torch {text} is older than {MIN_TORCH[0]}.{MIN_TORCH[1]}, the oldest this code "
                f"supports; install torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}")
    return None


def pick_device(spec: str) -> torch.device:
    """`auto`: the first visible CUDA device when there is one, else the CPU; `cuda[:i]` fails
    at once where torch sees no CUDA device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"params.yaml: device: {spec!r}, but CUDA is not available here; use auto or cpu")
    return torch.device(spec)
