"""Path conventions are written once (dyncim.paths) and used by the rules, the CLI and the report."""
import ast
import re

from dyncim import paths
from dyncim.train.job import run_paths
from tests.conftest import REPO

CONVENTION = re.compile(r"^(data/(raw|splits|features)|models/|runs/|results/(eval|curves|summary|metrics|robustness|figures|REPORT|report)|logs/)")


def test_paths_give_snakemake_patterns_and_concrete_paths():
    assert paths.feature_file("{data}") == "data/features/{data}.pt"
    assert paths.manifest("{data}", "{method}") == "models/{data}/{method}/manifest.json"
    assert paths.best_model("d", "m", 1) == "models/d/m/seed1/best.pt"
    assert paths.last_checkpoint("d", "m", 1, "a-b") == "models/d/m/seed1/last-a-b.pt"
    assert paths.log_file("train", "d", "m") == "logs/train/d/m.log"
    where = run_paths(REPO, "d", "m", 2)
    assert where["model_dir"] == REPO / paths.seed_dir("d", "m", 2)
    assert where["curves"] == REPO / paths.curves_file("d", "m", 2)


def _docstrings(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                yield first.value


def test_no_module_or_rule_writes_a_path_convention_itself():
    found = []
    for py in sorted((REPO / "dyncim").rglob("*.py")):
        if py.name == "paths.py":
            continue
        tree = ast.parse(py.read_text())
        docs = set(map(id, _docstrings(tree)))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
                    and CONVENTION.match(node.value)):
                found.append(f"{py.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    for smk in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        for i, line in enumerate(smk.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"[\"'](data/|models/|runs/|results/|logs/)", code):
                found.append(f"{smk.relative_to(REPO)}:{i}: {line.strip()}")
    assert not found, "\n".join(found)
