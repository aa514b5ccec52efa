"""The carried packages' check (dyncim.bench.offline_deps) against this environment, which holds them."""
import importlib.metadata as md
import re
import subprocess
import sys

import pytest

from dyncim.bench import offline_deps as O
from tests.conftest import REPO


def test_the_real_carry_file_differs_here_at_most_in_versions():
    pins = O.pins(REPO / "resources" / "gpu-node" / "carry.txt")
    assert {"snakemake", "av", "jsonschema", "referencing", "rpds-py", "packaging"} <= set(pins)
    for line in O.problems(REPO / "resources" / "gpu-node" / "carry.txt"):
        m = re.fullmatch(r"(\S+): expected (\S+) \(carry\.txt\), found (\S+)", line)
        assert m, line
        assert m[3] == md.version(m[1]) and m[2] == pins[m[1]]


def test_a_wrong_pin_a_missing_package_and_an_unmet_requirement_are_one_line_each(tmp_path, monkeypatch):
    # an installed distribution whose requirements are partly unmet, partly out of its markers/extras
    info = tmp_path / "site" / "dyncim_fake_pkg-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: dyncim-fake-pkg\nVersion: 1.0\n"
        "Requires-Dist: packaging<1\n"
        "Requires-Dist: dyncim-absent-dep>=2\n"
        "Requires-Dist: pyyaml>=5\n"
        "Requires-Dist: dyncim-old-python-dep; python_version < '3'\n"
        "Requires-Dist: dyncim-extra-dep; extra == 'docs'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    carry = tmp_path / "carry.txt"
    carry.write_text("# a comment\n\n"
                     f"jsonschema=={md.version('jsonschema')}  # as installed\n"
                     "SnakeMake==0.0.1\n"
                     "dyncim-no-such-package==1.0\n"
                     "dyncim_fake_pkg==1.0\n")
    assert O.problems(carry) == [
        f"snakemake: expected 0.0.1 (carry.txt), found {md.version('snakemake')}",
        "dyncim-no-such-package: expected 1.0 (carry.txt), not installed",
        f"dyncim-fake-pkg 1.0 requires packaging<1: found {md.version('packaging')}",
        "dyncim-fake-pkg 1.0 requires dyncim-absent-dep>=2: not installed",
    ]


def test_main_prints_the_problems_and_fails_or_says_all_is_met(tmp_path, capsys):
    bad, good = tmp_path / "bad.txt", tmp_path / "good.txt"
    bad.write_text("dyncim-no-such-package==1.0\n")
    good.write_text(f"av=={md.version('av')}\nsnakemake=={md.version('snakemake')}\n")
    assert O.main([str(bad)]) == 1
    assert capsys.readouterr().out == "dyncim-no-such-package: expected 1.0 (bad.txt), not installed\n"
    assert O.main([str(good)]) == 0
    assert capsys.readouterr().out == f"2 carried packages installed as {good} pins, their requirements met\n"


def test_a_line_that_is_not_a_pin_is_refused(tmp_path):
    carry = tmp_path / "carry.txt"
    carry.write_text("snakemake>=9\n")
    with pytest.raises(ValueError, match=r"carry\.txt:1: 'snakemake>=9' is not name==version"):
        O.pins(carry)


def test_the_command_runs_without_torch():
    code = ("import runpy, sys; sys.argv = ['x', 'resources/gpu-node/carry.txt']\n"
            "try: runpy.run_module('dyncim.bench.offline_deps', run_name='__main__')\n"
            "except SystemExit as e: assert 'torch' not in sys.modules; sys.exit(e.code)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode in (0, 1) and not r.stderr and r.stdout.strip(), (r.stdout, r.stderr)


def test_the_node_lists_agree_with_the_carry_list():
    """node.txt holds only node-held packages; carry.txt only others, but for the shadowed pins,
    each of which says why it is carried."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def names(f):
        lines = (line.split("#", 1)[0].strip() for line in (REPO / "resources" / "gpu-node" / f).open())
        return [canonicalize_name(Requirement(line).name) for line in lines if line]
    held = set(names("node-held.txt"))
    assert set(names("node.txt")) <= held
    shadow = {n for n in O.pins(REPO / "resources" / "gpu-node" / "carry.txt") if n in held}
    assert "packaging" in shadow  # snakemake 9.27's packaging<26
    text = (REPO / "resources" / "gpu-node" / "carry.txt").read_text()
    assert all(re.search(rf"^{n}==\S+  # \S.* requires ", text, re.M) for n in shadow)
