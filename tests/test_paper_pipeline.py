"""The paper-scale path end to end through the real `snakemake`: CREMA-D clips in the real layout
(WAV and FLV made with PyAV) downloaded from a server on 127.0.0.1, feature extraction into a
store, ResNet-18 at a tiny width trained and evaluated from it; CMU-MOSEI's pickle from a user
path, the trimodal sequences through the same rules; the report at the end."""
import json
import shutil

import pytest
import torch
import yaml

from dyncim import paths
from dyncim.data.io import store as S
from tests.conftest import copy_repo
from tests.test_pipeline import run
from test_crema_d import CLIPS, fake_crema_d
from test_download import server  # noqa: F401
from test_mosei import tiny_mosei, write_pickle


def paper_config(url, mosei):
    train = {"encoder": "auto", "resnet_width": 4, "epochs": 2, "batch_size": 2, "lr": 0.01, "seq_dim": 8}
    return {"seeds": [0], "train": {"epochs": 2},
            "datasets": {
                "crema-d": {"source": "crema-d", "media": {"base_url": url, "jobs": 2, "workers": 1}, "train": train},
                # a setting chosen on validation (dyncim.train.select), through the store path
                "mosei": {"source": "cmu-mosei", "media": {"from_path": str(mosei), "workers": 1}, "train": train,
                          "method_params": {"joint": {"select": [{"fusion": "concat"}, {"fusion": "sum"}]}}}},
            "methods": {"dyncim": {"seeds": [0]}},
            "run": {"datasets": ["crema-d", "mosei"], "methods": ["joint", "dyncim"]}}


@pytest.mark.slow
def test_crema_d_and_mosei_from_raw_files_to_the_report(server, tmp_path):
    root, url = server
    repo = copy_repo(tmp_path / "repo")
    # a tiny CREMA-D in the real layout, served over HTTP; its split and manifest stand in for the
    # shipped ones (the download reads them from resources/splits/crema-d/)
    splits, manifest = fake_crema_d(root, tmp_path)
    shipped = repo / "resources" / "splits" / "crema-d"
    shutil.copy(splits, shipped / "splits.csv")
    shutil.copy(manifest, shipped / "lfs-manifest.csv")
    (tmp_path / "user").mkdir()
    mosei = write_pickle(tmp_path / "user" / "mosei_senti_data.pkl", tiny_mosei())
    cfg = tmp_path / "paper-tiny.yaml"
    cfg.write_text(yaml.safe_dump(paper_config(url, mosei)))

    run(["snakemake", "--cores", "2", "--configfile", str(cfg)], repo)

    # the raw files, verified, and the store: one folder per split, in the split file's order
    ready = json.loads((repo / paths.media_ready("crema-d")).read_text())
    assert ready == {"source": "crema-d", "clips": "clips.csv", "split": "standard"}
    summary = json.loads((repo / paths.store_ready("crema-d")).read_text())
    assert summary["recipe"] == "crema-d"
    for split in ("train", "val", "test"):
        s = S.open_split(repo / paths.store_dir("crema-d") / split)
        assert s.clips == [c for c, sp in CLIPS if sp == split] and s.ok.all()
        assert s.audio.shape[1:] == (257, 188) and s.audio.dtype.name == "float16"
        assert s.frames.shape[1:] == (3, 224, 224, 3) and s.frames.dtype.name == "uint8"
        assert summary["splits"][split] == {"samples": len(s), "failed": 0}
    assert json.loads((repo / paths.store_ready("mosei")).read_text())["task"] == "binary"
    # trained from the store with ResNet-18 at width 4 (the MOSEI run with sequence encoders)
    ck = torch.load(repo / paths.best_model("crema-d", "dyncim", 0), weights_only=False)
    state = ck["parts"][0]["state"]
    assert state["encoders.0.stem.0.weight"].shape == (4, 1, 7, 7)      # spectrogram: 1-channel stem
    assert state["encoders.1.stem.0.weight"].shape == (4, 3, 7, 7)      # frames: 3 channels
    for data, names in (("crema-d", {"audio", "visual"}), ("mosei", {"text", "audio", "vision"})):
        for method in ("joint", "dyncim"):
            res = json.loads((repo / paths.eval_file(data, method, 0)).read_text())
            assert set(res["modalities"]) == names and 0 <= res["acc"] <= 1
        rob = json.loads((repo / paths.robustness_file(data)).read_text())
        assert set(rob["runs"]) == {"joint", "dyncim"}
    report = (repo / paths.REPORT).read_text()
    assert "## crema-d" in report and "## mosei" in report
    # MOSEI's joint compared its two fusions on validation; CREMA-D's kept params.yaml's
    chosen = json.loads((repo / paths.eval_file("mosei", "joint", 0)).read_text())["selection"]
    assert [c["settings"] for c in chosen["candidates"]] == [{"fusion": "concat"}, {"fusion": "sum"}]
    ck = torch.load(repo / paths.best_model("mosei", "joint", 0), weights_only=False)
    assert ck["method_cfg"]["fusion"] == chosen["settings"]["fusion"] and "select" not in ck["method_cfg"]
    assert "selection" not in json.loads((repo / paths.eval_file("crema-d", "joint", 0)).read_text())
    assert "### mosei: settings chosen on validation" in report and "### crema-d: settings chosen" not in report
    # which split each number is on, and the sanity check against the published ranges: these
    # two-epoch, width-4 runs are checked (joint's fused accuracy), whatever their verdict
    sanity = json.loads((repo / paths.SUMMARY["sanity"]).read_text())
    assert {d: sanity[d]["split"] for d in sanity} == {"crema-d": "standard", "mosei": "standard"}
    for data in ("crema-d", "mosei"):
        (check,) = sanity[data]["checks"]
        acc = json.loads((repo / paths.eval_file(data, "joint", 0)).read_text())["acc"]
        assert (check["method"], check["what"], check["mean"]) == ("joint", "fused", round(acc, 6))
        assert sanity[data]["flagged"] == (check["status"] != "ok")
    assert "Split: standard." in report and "split: standard" in (repo / paths.SUMMARY["md"]).read_text()
    again = run(["snakemake", "-n", "--configfile", str(cfg)], repo)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_on_a_gpu_machine_only_the_paper_scale_jobs_claim_the_gpu(tmp_path):
    """With a CUDA machine in view (an `nvidia-smi` on PATH), the paper-scale set's training and
    evaluation claim the `gpu` resource; the embedded sets' small MLP jobs do not (they run on the
    CPUs, in parallel)."""
    import os
    import re
    import subprocess
    from tests.conftest import REPO, venv_env
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "datasets": {"crema-d": {"source": "crema-d"}},
        "run": {"datasets": ["crema-d", "synthetic-bi"], "methods": ["joint"]}}))
    env = venv_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    # --forceall: every job is listed, whatever this working tree has already built
    r = subprocess.run(["snakemake", "-n", "--forceall", "--configfile", str(cfg)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    claims = {}
    for block in (r.stdout + r.stderr).split("\nrule ")[1:]:
        rule = block.split(":")[0]
        data = re.search(r"wildcards: data=([\w-]+)", block)
        if rule in ("train", "evaluate") and data:
            claims[(rule, data.group(1))] = "gpu=1" in re.search(r"resources: (.*)", block).group(1)
    assert claims == {("train", "crema-d"): True, ("evaluate", "crema-d"): True,
                      ("train", "synthetic-bi"): False, ("evaluate", "synthetic-bi"): False}, (r.stdout + r.stderr)[-3000:]
