"""The data source catalog (dyncim.data.catalog): the schema's source list and rules come from it,
every entry's module has the functions its entry calls for, and adding a source is its module,
its catalog entry and a profile: three files, run here through the real `snakemake`."""
import json
import textwrap

import pytest
import yaml

from dyncim import codedeps
from dyncim import config as C
from dyncim.data import catalog, sources
from dyncim.data.extraction import extract as E
from tests.conftest import REPO, copy_repo
from tests.test_pipeline import run


def test_the_schema_lists_the_catalog_sources_both_ways():
    schema = C.load_schema()
    enum = schema["$defs"]["dataset"]["properties"]["source"]["enum"]
    assert enum == list(catalog.CATALOG)
    # every source has its rule, and the schema file writes no source list of its own
    rules = [r["if"]["properties"]["source"].get("const") for r in schema["$defs"]["dataset"]["allOf"]]
    assert set(catalog.CATALOG) <= set(rules)
    text = (REPO / "workflow" / "schemas" / "params.schema.yaml").read_text()
    file_schema = yaml.safe_load(text)
    assert "enum" not in file_schema["$defs"]["dataset"]["properties"]["source"]
    assert "allOf" not in file_schema["$defs"]["dataset"]
    assert schema["$defs"]["media"]["properties"]["split"]["enum"] == ["standard", "actor-disjoint"]
    # each source's settings key is its own (a mfeat set with a `media` key is an error)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["datasets"]["mfeat-pix-zer"]["media"] = {"workers": 2}
    with pytest.raises(C.ParamsError, match=r"datasets.mfeat-pix-zer: \['media'\] not allowed for this source"):
        C.resolve(raw)


@pytest.mark.parametrize("name", list(catalog.CATALOG))
def test_each_source_module_has_what_its_entry_calls_for(name):
    e = catalog.CATALOG[name]
    mod = sources.module(name)
    need = {"feature_file": ["read"], "extract": []}[e.build]
    if e.bring_in == "download":
        need.append("download")
    if e.bring_in == "media":
        need.append("bring_in")
    if e.build == "extract":
        need.append("classes" if e.recipe else "build")
    if e.recipe == name:
        need.append("recipe")
    need += [f for f, on in (("inputs", e.inputs), ("check", e.check)) if on]
    assert all(callable(getattr(mod, f, None)) for f in need), (name, need)
    assert e.bring_in in (None, "download", "media") and e.build in ("feature_file", "extract")
    assert e.settings in catalog.SETTINGS and (e.modalities is None or {k for _, k in e.modalities} <= set(catalog.KINDS))
    assert e.shared_split is None or e.build == "feature_file"
    assert e.downloads == () or e.bring_in == "download"


def test_recipes_are_defined_by_their_sources():
    assert sorted(E.RECIPES) == sorted(n for n, e in catalog.CATALOG.items() if e.recipe == n)
    for name, recipe in E.RECIPES.items():
        assert recipe.name == name and E.get_recipe(name) is recipe
    with pytest.raises(ValueError, match="expected one of"):
        E.get_recipe("nope")


def test_modality_counts_and_labels_come_from_the_catalog():
    p = C.load(REPO / "params.yaml")
    assert C.n_modalities(p["datasets"]["mfeat-fou-zer-mor"]) == 3
    assert C.n_modalities({"source": "cmu-mosei", "media": {}}) == 3
    assert catalog.is_multilabel({"source": "mm-imdb"}) and not catalog.is_multilabel({"source": "food-101"})
    assert catalog.is_multilabel({"source": "files", "files": {"multilabel": True}})
    with pytest.raises(ValueError, match="not a data source"):
        catalog.source("nope")


def test_a_source_job_declares_its_own_module_as_code():
    """The rules add a source's module (imported by name at run time) to the step's code inputs."""
    own = {codedeps.module_file(m).relative_to(REPO).as_posix()
           for m in codedeps.closure([catalog.module_name("crema-d")])}
    assert "dyncim/data/sources/crema_d.py" in own and "dyncim/data/io/download.py" in own
    assert "dyncim/data/sources/crema_d.py" not in codedeps.step_files("media")


# ---- adding a source: three files --------------------------------------------------------------------

TOY_MODULE = '''\
"""A toy source: two vector modalities from one .npz of the user's (arrays a, b, y)."""
from pathlib import Path

import numpy as np

from ..io import download as D


def bring_in(ds, out, log=print):
    out.mkdir(parents=True, exist_ok=True)
    D.link_or_copy(Path(ds["media"]["from_path"]), out / "toy.npz", ds["media"]["link"])
    return {"arrays": "toy.npz"}


def build(ds, raw, record, out, log=print):
    from ..io import store
    z = np.load(raw / record["arrays"])
    y, n = z["y"], len(z["y"])
    parts = {"train": range(0, int(0.6 * n)), "val": range(int(0.6 * n), int(0.8 * n)), "test": range(int(0.8 * n), n)}
    for part, rows in parts.items():
        rows = list(rows)
        with store.SplitWriter(out / part, len(rows), {"a": ((4,), "float32"), "b": ((3,), "float32")},
                               {"toy": part, "n": n}) as w:
            for k, i in enumerate(rows):
                w.write(k, {"a": z["a"][i], "b": z["b"][i]}, {"ok": True})
            w.finish([str(i) for i in rows], [f"c{y[i]}" for i in rows], {"classes": ["c0", "c1"]})
    return {"toy": True}
'''
TOY_ENTRY = ('    "toy": Source("toy", (("a", "vector"), ("b", "vector")), "media", "extract",\n'
             '                  rules=_media("from_path"), about="a toy"),\n')


@pytest.mark.slow
def test_adding_a_source_is_its_module_its_entry_and_a_profile(tmp_path):
    import numpy as np
    repo = copy_repo(tmp_path / "repo")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "before"]):
        run(cmd, repo)
    (repo / "dyncim/data/sources/toy.py").write_text(TOY_MODULE)
    cat = repo / "dyncim/data/catalog.py"
    text = cat.read_text()
    cat.write_text(text.replace('    "files": Source(', TOY_ENTRY + '    "files": Source(', 1))
    rng = np.random.default_rng(0)
    y = np.arange(60) % 2
    np.savez(tmp_path / "toy.npz", a=rng.normal(size=(60, 4)) + y[:, None], b=rng.normal(size=(60, 3)), y=y)
    (repo / "configs/toy.yaml").write_text(yaml.safe_dump({
        "seeds": [0], "train": {"epochs": 1, "hidden": [8]},
        "datasets": {"toy": {"source": "toy", "media": {"from_path": str(tmp_path / "toy.npz")}}},
        "methods": {"dyncim": {"seeds": [0]}}, "run": {"datasets": ["toy"], "methods": ["joint", "dyncim"]}}))
    run(["git", "add", "-A"], repo)
    changed = run(["git", "diff", "--cached", "--name-only"], repo).stdout.split()
    assert sorted(changed) == ["configs/toy.yaml", "dyncim/data/catalog.py", "dyncim/data/sources/toy.py"]
    (tmp_path / "toy.diff").write_text(run(["git", "diff", "--cached"], repo).stdout)

    run(["snakemake", "--cores", "2", "--configfile", "configs/toy.yaml"], repo)
    assert json.loads((repo / "data/raw/toy/ready.json").read_text()) == {"source": "toy", "arrays": "toy.npz"}
    summary = json.loads((repo / "data/features/toy/store.json").read_text())
    assert summary["toy"] is True and summary["splits"]["test"] == {"samples": 12, "failed": 0}
    res = json.loads((repo / "results/eval/toy/dyncim/seed0.json").read_text())
    assert set(res["modalities"]) == {"a", "b"} and 0 <= res["acc"] <= 1
    # its schema rule (media.from_path required) holds before any job runs
    bad = yaml.safe_load((repo / "configs/toy.yaml").read_text())
    bad["datasets"]["toy"]["media"] = {"from_dir": "x"}
    (repo / "configs/bad.yaml").write_text(yaml.safe_dump(bad))
    r = run(["snakemake", "-n", "--configfile", "configs/bad.yaml"], repo, ok=False)
    assert r.returncode != 0 and "datasets.toy.media: 'from_path' is a required property" in r.stderr


def test_the_toy_entry_is_valid_against_this_catalog(monkeypatch):
    """The source the slow test adds, added in this process: the schema and the jobs pick it up."""
    ns: dict = {}
    exec(textwrap.dedent("from dyncim.data.catalog import Source, _media\nentry = " +
                         TOY_ENTRY.split(":", 1)[1].strip().rstrip(",")), ns)
    monkeypatch.setitem(catalog.CATALOG, "toy", ns["entry"])
    C._schema.cache_clear()
    try:
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        raw["datasets"]["toy"] = {"source": "toy", "media": {"from_path": "/x.npz"}}
        raw["run"]["datasets"] = ["toy"]
        p = C.resolve(raw)
        assert C.n_modalities(p["datasets"]["toy"]) == 2 and C.data_file(p, "toy") == "data/features/toy/store.json"
        assert C.data_job(p, "toy") == {"dataset": {"source": "toy", "media": {"workers": 4}}}
        raw["datasets"]["toy"]["media"] = {"index": "/v.csv", "from_path": "/x.npz"}
        with pytest.raises(C.ParamsError, match=r"\['index'\] not allowed for this source"):
            C.resolve(raw)
    finally:
        C._schema.cache_clear()
