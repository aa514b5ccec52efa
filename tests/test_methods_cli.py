"""Every method of params.yaml through the real CLI on a tiny trimodal set, and what runs share.

The CLI runs in this process (`dyncim.cli.main`, the function `python -m dyncim` calls): the same
argument parsing, params resolution and job code, without a torch import per method."""
import pytest
import torch
import yaml

from dyncim import cli
from dyncim import config as C
from dyncim.methods.catalog import CATALOG
from dyncim.train.job import run_paths
from tests.conftest import REPO

PARAMS = C.resolve(yaml.safe_load((REPO / "params.yaml").read_text()))
ONE_PER_TYPE = {}
for name, m in PARAMS["methods"].items():
    ONE_PER_TYPE.setdefault(m["type"], name)


def test_every_method_type_has_an_instance_in_params():
    assert set(ONE_PER_TYPE) == set(CATALOG)


@pytest.mark.parametrize("type_name", ["agm", "dyncim", "ogm-ge", "pmr"])
def test_methods_that_balance_modalities_refuse_a_single_modality(type_name):
    from dyncim.methods import build
    from dyncim.methods.base import Context
    cfg = PARAMS["methods"][ONE_PER_TYPE[type_name]]
    with pytest.raises(ValueError, match=f"^{type_name}: needs at least 2 modalities, the data set has 1"):
        build(cfg, Context(["a"], 3, 10, 2, 1, torch.device("cpu")))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["seeds"] = [0]
    p["train"].update(epochs=2, hidden=[8])
    p["datasets"]["tri"] = {"source": "synthetic", "synthetic": {
        "modalities": ["dominant", "xor", "linear"], "per_class": 10, "dominant": {"dim": 12},
        "corrupt": [{"modality": 0, "kind": "misleading", "fraction": 0.2}]}}
    for m in p["methods"].values():
        m.pop("seeds", None)
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    assert cli.main(["split", "--data", "tri", "--out", str(root / "s.csv"), "--params", str(root / "params.yaml")]) == 0
    assert cli.main(["feature-file", "--data", "tri", "--split", str(root / "s.csv"), "--out", str(root / "f.pt"),
                     "--params", str(root / "params.yaml")]) == 0
    return root


@pytest.mark.parametrize("method", sorted(ONE_PER_TYPE.values()))
def test_each_method_trains_through_the_cli_on_three_modalities(tiny, method, capsys):
    teacher = PARAMS["methods"][method].get("teacher")   # UMT distils from that method's runs: train it first
    if teacher and not (tiny / f"models/tri/{teacher}/seed0/best.pt").exists():
        assert cli.main(["train", "--data", "tri", "--method", teacher, "--data-file", str(tiny / "f.pt"),
                         "--root", str(tiny), "--params", str(tiny / "params.yaml")]) == 0
    code = cli.main(["train", "--data", "tri", "--method", method, "--data-file", str(tiny / "f.pt"),
                     "--root", str(tiny), "--params", str(tiny / "params.yaml")])
    if (CATALOG[PARAMS["methods"][method]["type"]].max_modalities or 3) < 3:   # two-modality methods refuse
        assert code != 0 and "at most 2 modalities" in capsys.readouterr().err
        return
    assert code == 0, capsys.readouterr().err[-3000:]
    ck = torch.load(tiny / f"models/tri/{method}/seed0/best.pt", weights_only=False)
    assert ck["method_cfg"]["type"] == PARAMS["methods"][method]["type"]
    assert all(torch.isfinite(v).all() for part in ck["parts"] for v in part["state"].values() if v.is_floating_point())


def test_parallel_jobs_share_no_output_path():
    seen = set()
    for data in PARAMS["run"]["datasets"]:
        for method in PARAMS["run"]["methods"]:
            for seed in PARAMS["methods"][method]["seeds"]:
                paths = run_paths(REPO, data, method, seed)
                for key, path in paths.items():
                    assert path not in seen, path
                    seen.add(path)
    assert len(seen) == 3 * sum(len(PARAMS["methods"][m]["seeds"]) for m in PARAMS["run"]["methods"]) * len(PARAMS["run"]["datasets"])
