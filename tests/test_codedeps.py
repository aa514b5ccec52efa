"""Each job's code inputs come from the package's imports (dyncim.codedeps); dvc.yaml covers them."""
import pytest
import yaml

from dyncim import codedeps
from dyncim.methods.catalog import CATALOG
from tests.conftest import REPO

METHOD_FILES = {f"dyncim/methods/{e.module}.py" for e in CATALOG.values()}
# dvc.yaml stage -> the steps (and method types) its Snakemake target runs
STAGES = {"download": [("download", ()), ("media", ())], "features": [("split", ()), ("features", ()), ("extract", ())],
          "train": [("train", tuple(CATALOG))], "evaluate": [("evaluate", tuple(CATALOG))],
          "robustness": [("robustness", tuple(CATALOG))],
          "report": [("report", ()), ("figures", ()), ("report_md", ())]}


def test_train_runs_the_config_module_and_only_its_own_method():
    for t, entry in CATALOG.items():
        files = set(codedeps.step_files("train", [t]))
        assert {"dyncim/cli.py", "dyncim/config.py", "dyncim/train/job.py", "dyncim/methods/catalog.py"} <= files
        assert f"dyncim/methods/{entry.module}.py" in files
        others = {f for f in files & METHOD_FILES if f != f"dyncim/methods/{entry.module}.py"}
        # another method's module only where this one imports it
        assert others <= {codedeps.module_file(m).relative_to(REPO).as_posix()
                          for m in codedeps.closure([f"dyncim.methods.{entry.module}"])}, (t, others)


def test_cli_counts_module_level_imports_and_the_steps_own():
    report = set(codedeps.step_files("report"))
    assert "dyncim/report.py" in report and "dyncim/paths.py" in report
    assert not any(f.startswith(("dyncim/train/", "dyncim/methods/", "dyncim/models/")) for f in report)
    assert "dyncim/config.py" not in set(codedeps.step_files("features"))  # jobs get --job, never read params
    evaluate = set(codedeps.step_files("evaluate", ["joint", "dyncim"]))
    assert {"dyncim/evaluate.py", "dyncim/methods/joint.py", "dyncim/methods/dyncim.py"} <= evaluate
    with pytest.raises(ValueError, match="not a step"):
        codedeps.step_files("nope")


def test_imports_are_followed_relative_absolute_and_inside_functions(tmp_path):
    # dyncim.models.multimodal imports .resnet inside a function: it runs, so it counts
    assert "dyncim.models.resnet" in codedeps.imports("dyncim.models.multimodal")
    assert "dyncim.models.resnet" not in codedeps.imports("dyncim.models.multimodal", into_functions=False)
    # `from .. import config` names a module; `from ..methods import method_class` an attribute
    job = codedeps.imports("dyncim.train.job")
    assert {"dyncim.config", "dyncim.methods"} <= job and "dyncim.methods.method_class" not in job
    # importing a module runs its packages' __init__ files
    assert {"dyncim", "dyncim.train"} <= codedeps.closure(["dyncim.train.job"])


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_dvc_stage_deps_cover_the_derived_code(stage):
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["deps"]
    derived = set()
    for step, types in STAGES[stage]:
        derived |= set(codedeps.step_files(step, types))
    missing = sorted(f for f in derived if not _covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage} lacks deps {missing}"
    stale = [d for d in deps if d.startswith("dyncim") and not any(_covered(f, [d]) for f in derived)]
    assert not stale, f"dvc.yaml stage {stage} lists code its jobs do not run: {stale}"


def test_rules_declare_code_through_codedeps():
    """No rule lists package files by hand: every `code=` input is a codedeps call."""
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        assert "dyncim/" not in text, smk
        for line in text.splitlines():
            if line.strip().startswith("code="):
                assert "code(" in line, (smk, line)
