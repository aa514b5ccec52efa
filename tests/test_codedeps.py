"""Each job's code inputs come from the package's imports (dyncim.codedeps); dvc.yaml covers them."""
import ast
from collections import Counter

import pytest
import yaml

from dyncim import codedeps
from dyncim.methods.catalog import CATALOG
from tests.conftest import REPO

METHOD_FILES = {f"dyncim/methods/{e.module}.py" for e in CATALOG.values()}
# dvc.yaml stage -> the steps (and method types) its Snakemake target runs
STAGES = {"download": [("download", ()), ("media", ())], "features": [("split", ()), ("feature_file", ()), ("extract", ())],
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
    assert "dyncim/report/summary.py" in report and "dyncim/paths.py" in report
    assert not any(f.startswith(("dyncim/train/", "dyncim/methods/", "dyncim/models/")) for f in report)
    assert "dyncim/config.py" not in set(codedeps.step_files("feature_file"))  # jobs get --job, never read params
    evaluate = set(codedeps.step_files("evaluate", ["joint", "dyncim"]))
    assert {"dyncim/evaluation/evaluate.py", "dyncim/methods/joint.py", "dyncim/methods/dyncim.py"} <= evaluate
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


# Memoisation: one parse per module per process, and results equal to a fresh derivation.
CLI = ast.parse((REPO / "dyncim" / "cli.py").read_text())
STEPS = [n.name[len("cmd_"):] for n in CLI.body if isinstance(n, ast.FunctionDef) and n.name.startswith("cmd_")]
TYPE_SETS = [(), *((t,) for t in CATALOG), tuple(CATALOG)]
FILES = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
         for p in (REPO / "dyncim").rglob("*.py")}  # module -> its file
MODULES = sorted(FILES)


@pytest.fixture
def fresh_caches():
    codedeps.clear_caches()
    yield
    codedeps.clear_caches()


def test_each_module_is_parsed_at_most_once_per_process(fresh_caches, monkeypatch):
    parses, parse = Counter(), ast.parse
    monkeypatch.setattr(codedeps.ast, "parse", lambda src, filename="<unknown>", *a, **k:
                        (parses.update([filename]), parse(src, filename, *a, **k))[1])
    for _ in range(2):
        for step in STEPS:
            for types in TYPE_SETS:
                codedeps.step_files(step, types)
        for m in MODULES:
            codedeps.imports(m), codedeps.imports(m, into_functions=False), codedeps.closure([m])
    assert len(parses) == len(MODULES) and set(parses.values()) == {1}, parses.most_common(3)


def test_callers_get_copies_that_leave_the_memo_alone(fresh_caches):
    files = codedeps.step_files("train", ["joint"])
    files.clear()
    codedeps.imports("dyncim.train.job").clear()
    codedeps.closure(["dyncim.train.job"]).clear()
    assert codedeps.step_files("train", ["joint"]) and "dyncim.config" in codedeps.imports("dyncim.train.job")
    assert "dyncim.train" in codedeps.closure(["dyncim.train.job"])


# An independent, unmemoised derivation of the same rules (see dyncim.codedeps' docstring): each
# call resolves every import statement and walks the closure again. To keep the test quick, each
# source is parsed, and its import statements listed, once here.
_NODES = {}


def _import_statements(node, in_function=False):
    """(statement, whether inside a function) for every import statement below `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        else:
            yield from _import_statements(
                child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))


def _ref_nodes(module):
    if module not in _NODES:
        _NODES[module] = list(_import_statements(ast.parse(FILES[module].read_text())))
    return _NODES[module]


def _ref_imports(module, statements, into_functions=True):
    package = module.split(".") if FILES[module].name == "__init__.py" else module.split(".")[:-1]
    names = set()
    for imp in (imp for imp, in_function in statements if into_functions or not in_function):
        if isinstance(imp, ast.Import):
            names |= {a.name for a in imp.names}
            continue
        base = imp.module
        if imp.level:
            base = ".".join(package[:len(package) + 1 - imp.level] + [imp.module] * bool(imp.module))
        names |= {base} | {f"{base}.{a.name}" for a in imp.names}
    return {n for n in names if n in FILES}


def _ref_closure(modules, module_level=()):
    seen, todo = set(), list(modules)
    while todo:
        m = todo.pop()
        for pkg in (".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 2)):
            if pkg not in seen:
                seen.add(pkg)
                todo.extend(_ref_imports(pkg, _ref_nodes(pkg), pkg not in module_level))
    return seen


def _ref_step_files(step, types):
    fn = next(n for n in CLI.body if getattr(n, "name", None) == f"cmd_{step}")
    mods = _ref_closure({"dyncim.__main__", "dyncim.cli"} | _ref_imports("dyncim.cli", _import_statements(fn)),
                        {"dyncim.cli"})
    mods |= _ref_closure(f"dyncim.methods.{mod}" for t in types for mod in CATALOG[t].modules)
    return sorted(FILES[m].relative_to(REPO).as_posix() for m in mods)


def test_memoised_results_equal_a_fresh_derivation(fresh_caches):
    for step in STEPS:
        for types in TYPE_SETS:
            assert codedeps.step_files(step, types) == _ref_step_files(step, types), (step, types)
    for m in MODULES:
        assert codedeps.imports(m) == _ref_imports(m, _ref_nodes(m)), m
        assert codedeps.imports(m, into_functions=False) == _ref_imports(m, _ref_nodes(m), False), m
        assert codedeps.closure([m]) == _ref_closure([m]), m
    # asked in another order, after everything is memoised: the same lists
    assert [codedeps.step_files(s, t) for s in reversed(STEPS) for t in TYPE_SETS] == \
        [_ref_step_files(s, t) for s in reversed(STEPS) for t in TYPE_SETS]


def test_a_method_with_several_implementations_depends_on_each():
    """DynCIM's `impl: reference` class lives in its own module: editing it re-runs DynCIM's jobs."""
    files = set(codedeps.step_files("train", ["dyncim"]))
    assert {"dyncim/methods/dyncim.py", "dyncim/methods/dyncim_reference.py"} <= files
