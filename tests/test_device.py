"""The device choice and the oldest torch the code supports (dyncim.device)."""
import ast
import re

import pytest
import torch

from dyncim import device as D
from tests.conftest import REPO

# torch APIs that appeared after the oldest supported release (2.3), with the release that added
# them: code that calls one would break on a GPU node's older torch
NEWER = {"torch.nn.RMSNorm": "2.4", "torch.nn.functional.rms_norm": "2.4", "add_safe_globals": "2.4",
         "torch.library.custom_op": "2.4", "set_submodule": "2.4", "including_emulation": "2.4",
         "flex_attention": "2.5", "export_for_training": "2.5", "torch.accelerator": "2.6",
         "set_stance": "2.6", "float8_e8m0fnu": "2.7"}


def test_versions_are_read_from_local_and_prerelease_tags():
    assert D.torch_version("2.11.0+cu130") == (2, 11)
    assert D.torch_version("2.4.0a0+git1234") == (2, 4)
    assert D.torch_version("10.0") == (10, 0)
    with pytest.raises(ValueError, match="'nightly'"):
        D.torch_version("nightly")


def test_older_torch_is_refused_in_one_line_newer_accepted():
    assert D.MIN_TORCH == (2, 3)
    assert D.torch_too_old("2.2.2+cu121") == \
        "torch 2.2.2+cu121 is older than 2.3, the oldest this code supports; install torch>=2.3"
    assert D.torch_too_old("1.13.1") is not None
    assert D.torch_too_old("2.3.0") is None and D.torch_too_old("2.11.0+cu130") is None
    assert D.torch_too_old(torch.__version__) is None


def test_the_package_calls_no_torch_api_newer_than_the_oldest_supported():
    found = []
    for path in sorted((REPO / "dyncim").rglob("*.py")):
        text = path.read_text()
        found += [f"{path.relative_to(REPO)}: {api} (torch {v})" for api, v in NEWER.items() if api in text]
    assert not found


def test_every_torch_load_says_weights_only():
    """torch 2.6 changed torch.load's weights_only default from False to True: a call that relies
    on the default loads differently on a node's older torch than here."""
    calls = []
    for path in sorted((REPO / "dyncim").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                calls.append((path.name, node.lineno, any(k.arg == "weights_only" for k in node.keywords)))
    assert calls and all(ok for *_, ok in calls), [c for c in calls if not c[2]]


def test_the_readme_and_the_pin_state_the_same_oldest_torch():
    oldest = ".".join(map(str, D.MIN_TORCH))
    assert re.search(rf"oldest torch[^\n]*{re.escape(oldest)}", (REPO / "README.md").read_text(), re.I)
    assert f"oldest supported torch: {oldest}" in (REPO / "pyproject.toml").read_text()


def test_auto_is_the_cpu_here_and_cuda_is_refused_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert D.pick_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="device: 'cuda:0', but CUDA is not available here"):
        D.pick_device("cuda:0")
