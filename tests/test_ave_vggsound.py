"""AVE and VGGSound through the paper-scale path: tiny MP4s (MPEG-4 video + AAC, made with PyAV) in
each set's released layout, the media step (discovery, probing, the problem listing), the
extraction into a store (class indices, shapes), a SIGKILLed extraction resumed without redoing
finished clips, and one short training run each through the CLI."""
import csv
import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml

from dyncim import cli
from dyncim.data.sources import ave as A
from dyncim.data.io import download as D
from dyncim.data.extraction import extract as E
from dyncim.data.io import store as S
from dyncim.data.sources import vggsound as V
from tests.conftest import REPO
from test_download import make_media

TRAIN = {"encoder": "auto", "resnet_width": 4, "epochs": 1, "batch_size": 2, "eval_batch_size": 4, "lr": 0.01}


def mp4(path, seed=0):
    return make_media(path, "mp4", vcodec="mpeg4", acodec="aac", seconds=1.2, seed=seed)


def params_file(root, name, ds):
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["seeds"] = [0]
    p["datasets"][name] = {**ds, "train": TRAIN}
    for m in p["methods"].values():
        m.pop("seeds", None)
    p["run"] = {"datasets": [name], "methods": ["joint"]}
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    return str(root / "params.yaml")


def media_extract_train(root, name, params, capsys):
    """The three CLI steps the pipeline runs: media, extract, train (in this process)."""
    ready, summary = root / "raw" / "ready.json", root / "features" / "store.json"
    for argv in (["media", "--data", name, "--out", str(ready)],
                 ["extract", "--data", name, "--raw", str(ready), "--out", str(summary)],
                 ["train", "--data", name, "--method", "joint", "--data-file", str(summary), "--root", str(root)]):
        assert cli.main(argv + ["--params", params]) == 0, capsys.readouterr().err[-3000:]
    return ready, summary


def check_trained(root, name, n_classes):
    ck = torch.load(root / "models" / name / "joint" / "seed0" / "best.pt", weights_only=False)
    assert ck["n_classes"] == n_classes and ck["names"] == ["audio", "visual"]
    head = ck["parts"][0]["state"]["fusion.fc.weight"]
    assert head.shape[0] == n_classes and torch.isfinite(head).all()


def rows_of(path):
    return list(csv.DictReader(open(path, newline="")))


# ---- AVE ---------------------------------------------------------------------------------------

AVE_ROWS = {  # split file -> (category, video id); the header is in trainSet.txt only
    "train": [("Church bell", "aaaaaaaaaa1"), ("Bark", "aaaaaaaaaa2"),
              ("Male speech, man speaking", "aaaaaaaaaa3"), ("Bark", "aaaaaaaaaa4")],
    "val": [("Church bell", "aaaaaaaaaa5"), ("Bark", "aaaaaaaaaa7")],
    "test": [("Bark", "aaaaaaaaaa6"), ("Church bell", "aaaaaaaaaa8"), ("Church bell", "aaaaaaaaaa1")]}
HEADER = "Category&VideoID&Quality&StartTime&EndTime\n"


@pytest.fixture
def ave_folder(tmp_path):
    """The released layout: AVE_Dataset/{AVE/<id>.mp4, Annotations.txt, trainSet.txt, ...};
    aaaaaaaaaa3 is missing and aaaaaaaaaa4 is not a video; aaaaaaaaaa1 is listed again in test."""
    root = tmp_path / "AVE_Dataset"
    for i, vid in enumerate(["aaaaaaaaaa1", "aaaaaaaaaa2", "aaaaaaaaaa5", "aaaaaaaaaa6", "aaaaaaaaaa7", "aaaaaaaaaa8"]):
        mp4(root / "AVE" / f"{vid}.mp4", seed=i)
    (root / "AVE" / "aaaaaaaaaa4.mp4").write_bytes(b"not a video" * 40)
    every = [r for rows in AVE_ROWS.values() for r in rows]
    (root / "Annotations.txt").write_text(HEADER + "".join(f"{c}&{v}&good&0&10\r\n" for c, v in every))
    for split, name in A.SPLIT_FILES.items():
        text = "".join(f"{c}&{v}&good&1&9\n" for c, v in AVE_ROWS[split])
        (root / name).write_text((HEADER if split == "train" else "") + text)
    return root


def test_ave_from_the_released_folder_to_a_trained_model(ave_folder, tmp_path, capsys):
    root = tmp_path / "run"
    root.mkdir()
    params = params_file(root, "ave", {"source": "ave", "media": {"from_dir": str(ave_folder / "AVE"),
                                                                  "jobs": 2, "workers": 1}})
    ready, summary = media_extract_train(root, "ave", params, capsys)
    raw = ready.parent
    rec = json.loads(ready.read_text())
    assert rec["source"] == "ave" and rec["counts"] == {
        "train": {"listed": 4, "used": 2, "missing": 1, "unreadable": 1},
        "val": {"listed": 2, "used": 2}, "test": {"listed": 3, "used": 2, "duplicate": 1}}
    assert [(r["clip"], r["split"], r["problem"]) for r in rows_of(raw / "problems.csv")] == [
        ("aaaaaaaaaa3", "train", "missing"), ("aaaaaaaaaa4", "train", "unreadable"),
        ("aaaaaaaaaa1", "test", "duplicate")]
    used = D.read_clip_manifest(raw / "clips.csv")
    assert [(c.clip, c.split) for c in used] == [("aaaaaaaaaa1", "train"), ("aaaaaaaaaa2", "train"),
                                                 ("aaaaaaaaaa5", "val"), ("aaaaaaaaaa7", "val"),
                                                 ("aaaaaaaaaa6", "test"), ("aaaaaaaaaa8", "test")]
    assert used[0].video == str(ave_folder / "AVE" / "aaaaaaaaaa1.mp4")
    # the store: the shipped 28 classes in sorted order, whatever the annotation files hold
    classes = A.read_classes()
    assert classes == sorted(classes) and len(classes) == 28 and classes[:2] == ["Accordion", "Acoustic guitar"]
    assert json.loads(summary.read_text())["recipe"] == "ave"
    for split, n in (("train", 2), ("val", 2), ("test", 2)):
        s = S.open_split(summary.parent / split)
        assert len(s) == n and s.ok.all() and s.classes == classes
        assert list(s.labels) == [classes.index(c) for c in s.label_names]
        assert s.audio.shape[1:] == (257, 259) and s.frames.shape[1:] == (3, 224, 224, 3)
    assert classes.index("Bark") == 4 and classes.index("Church bell") == 8
    check_trained(root, "ave", 28)


def test_ave_annotation_checks(ave_folder, tmp_path):
    (ave_folder / "valSet.txt").write_text("Tractor&aaaaaaaaaa5&good&0&10\n")
    with pytest.raises(ValueError, match=r"valSet.txt:1: category 'Tractor' is not one of AVE's 28"):
        A.prepare_ave(tmp_path / "out", ave_folder, log=None)
    (ave_folder / "valSet.txt").write_text("Bark&aaaaaaaaaa5&good&0&10\n")
    with pytest.raises(ValueError, match=r"aaaaaaaaaa5 is 'Bark' here but 'Church bell' in .*Annotations.txt"):
        A.prepare_ave(tmp_path / "out", ave_folder, log=None)
    (ave_folder / "valSet.txt").write_text("Bark&aaaaaaaaaa5&good\n")
    with pytest.raises(ValueError, match=r"valSet.txt:1: expected Category&VideoID"):
        A.prepare_ave(tmp_path / "out", ave_folder, log=None)
    (ave_folder / "valSet.txt").unlink()
    with pytest.raises(FileNotFoundError, match="trainSet.txt, valSet.txt, testSet.txt"):
        A.prepare_ave(tmp_path / "out", ave_folder, log=None)


# ---- VGGSound ----------------------------------------------------------------------------------

LABELS = ["cattle, bovinae cowbell"] + [f"label {i:03d}" for i in range(1, V.N_CLASSES)]


def yt(i):
    return f"v{i:010d}"  # an 11-character YouTube-like id


@pytest.fixture
def vgg(tmp_path):
    """vggsound.csv (no header) for all 309 labels: per class two train clips and one test clip;
    the files of classes 0-2 only, in a flat folder (one named <id>_<start>_<end>)."""
    rows = []
    for k, label in enumerate(LABELS):
        rows += [(yt(3 * k), 30, label, "train"), (yt(3 * k + 1), 0, label, "train"), (yt(3 * k + 2), 7, label, "test")]
    index = tmp_path / "vggsound.csv"
    with open(index, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    folder = tmp_path / "vggsound"
    for i, (y, start, _, _) in enumerate(rows[:9]):
        name = f"{y}_{start:06d}_{start + 10:06d}" if i == 4 else f"{y}_{start:06d}"
        mp4(folder / f"{name}.mp4", seed=i)
    return index, folder, rows


def val_by_hand(rows):
    """One val clip per class (5 % of 2 rounds to 0, raised to 1): the smaller salted sha256."""
    out = set()
    for label in LABELS:
        train = [f"{y}_{s:06d}" for y, s, lab, sp in rows if lab == label and sp == "train"]
        out.add(min(train, key=lambda c: hashlib.sha256(f"vggsound-val:{c}".encode()).digest()))
    return out


def test_vggsound_media_step_split_classes_and_missing_clips(vgg, tmp_path, capsys):
    index, folder, rows = vgg
    root = tmp_path / "run"
    root.mkdir()
    params = params_file(root, "vgg", {"source": "vggsound", "media": {"index": str(index), "from_dir": str(folder),
                                                                       "jobs": 2, "workers": 1}})
    ready, summary = media_extract_train(root, "vgg", params, capsys)
    raw = ready.parent
    val = val_by_hand(rows)
    assert len(val) == V.N_CLASSES
    rec = json.loads(ready.read_text())
    n = V.N_CLASSES
    assert rec["counts"] == {"train": {"listed": n, "used": 3, "missing": n - 3},
                             "val": {"listed": n, "used": 3, "missing": n - 3},
                             "test": {"listed": n, "used": 3, "missing": n - 3}}
    used = D.read_clip_manifest(raw / "clips.csv")
    assert {c.clip for c in used if c.split == "val"} == {c for c in val if int(c[1:11]) < 9}
    assert {c.clip for c in used} == {f"{y}_{s:06d}" for y, s, _, _ in rows[:9]}
    assert next(c for c in used if c.clip == f"{yt(4)}_000000").video.endswith(f"{yt(4)}_000000_000010.mp4")
    problems = rows_of(raw / "problems.csv")
    assert len(problems) == 3 * n - 9 and {p["problem"] for p in problems} == {"missing"}
    assert problems[0]["clip"] == f"{yt(9)}_000030" and problems[0]["path"] == ""
    # classes: the sorted labels of vggsound.csv; the comma label survives the csv quoting
    classes = (raw / "classes.txt").read_text().splitlines()
    assert classes == sorted(LABELS) and classes.index("cattle, bovinae cowbell") == 0
    for split in ("train", "val", "test"):
        s = S.open_split(summary.parent / split)
        assert len(s) == 3 and s.ok.all() and s.classes == classes
        assert list(s.labels) == [classes.index(c) for c in s.label_names]
        assert s.audio.shape[1:] == (129, 626) and s.audio.dtype == np.float16
    check_trained(root, "vgg", V.N_CLASSES)


def test_vggsound_refuses_a_subset_of_the_classes(tmp_path):
    index = tmp_path / "vggsound.csv"
    index.write_text('abcdefghijk,10,"dog barking",train\nbcdefghijkl,0,cat meowing,test\n')
    (tmp_path / "clips").mkdir()
    with pytest.raises(ValueError, match="2 distinct labels; the official vggsound.csv has 309"):
        V.prepare_vggsound(tmp_path / "out", index, from_dir=tmp_path / "clips", log=None)
    index.write_text("abcdefghijk,ten,dog barking,train\n")
    with pytest.raises(ValueError, match=r"vggsound.csv:1: start_seconds 'ten'"):
        V.prepare_vggsound(tmp_path / "out", index, from_dir=tmp_path / "clips", log=None)
    assert V.n_val(183) == 9 and V.n_val(10) == 1 and V.n_val(1) == 0 and V.n_val(50) == 3


KILLER = textwrap.dedent("""
    import os, signal, sys
    from dyncim.data.extraction import extract as E
    from dyncim.data.io import download as D, store as S
    real, done = S.SplitWriter.commit, []
    def commit(self):
        real(self)
        done.append(1)
        if len(done) == 4:  # killed right after the 4th committed clip: no cleanup runs
            os.kill(os.getpid(), signal.SIGKILL)
    S.SplitWriter.commit = commit
    clips = D.read_clip_manifest(sys.argv[1])
    E.extract_split(clips, "vggsound", sys.argv[2], sys.argv[3].split("|"), workers=0, commit_every=1,
                    progress=False)
""")


def test_a_killed_vggsound_extraction_resumes_without_redoing_finished_clips(vgg, tmp_path, monkeypatch):
    index, folder, rows = vgg
    raw = tmp_path / "raw"
    V.prepare_vggsound(raw, index, from_dir=folder, jobs=2, log=None)
    clips = D.read_clip_manifest(raw / "clips.csv")
    classes = V.read_classes(raw)
    out = tmp_path / "all"
    r = subprocess.run([sys.executable, "-c", KILLER, str(raw / "clips.csv"), str(out), "|".join(classes)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr[-2000:]
    assert not out.exists() and len((S.partial_path(out) / S.JOURNAL).read_text().splitlines()) == 4
    decoded = []
    real = E.extract_clip
    monkeypatch.setattr(E, "extract_clip", lambda c, rec: decoded.append(c.clip) or real(c, rec))
    E.extract_split(clips, "vggsound", out, classes, workers=0, progress=False)
    assert decoded == [c.clip for c in clips[4:]]  # the four committed clips were not decoded again
    s = S.open_split(out)
    assert s.ok.all() and s.clips == [c.clip for c in clips]
    first, _ = real(clips[0], E.RECIPES["vggsound"])  # a kept row holds that clip's features
    np.testing.assert_array_equal(s.audio[0], first["audio"])
    np.testing.assert_array_equal(s.frames[0], first["frames"])


def test_a_check_that_fails_midway_leaves_no_report(tmp_path):
    """The shared discovery report (AVE, VGGSound, Kinetics-Sounds, UCF-101): an error while the
    clips are checked leaves none of clips.csv, problems.csv or summary.json, and no temp file."""
    from dyncim.data.io import discovery

    rows = [(f"c{i}", "dog", split, None) for i, split in enumerate(["train", "val", "test"] * 4)]

    def check(row):
        if row[0] == "c7":
            raise OSError("disk went away")
        return ("missing", "no file with this id")

    out = tmp_path / "report"
    with pytest.raises(OSError, match="disk went away"):
        with discovery.Report(out, "Test") as rep:
            rep.add_checked(iter(rows), check, jobs=2)
            rep.close({"source": "here"})
    assert sorted(p.name for p in out.iterdir()) == []


# ---- the user's folder is an input of the media step (Snakemake) -------------------------------

@pytest.mark.slow
def test_a_change_in_the_users_folder_reruns_the_media_step(ave_folder, tmp_path):
    from dyncim import paths
    from tests.conftest import copy_repo
    from tests.test_pipeline import run
    repo = copy_repo(tmp_path / "repo")
    cfg = tmp_path / "ave.yaml"
    cfg.write_text(yaml.safe_dump({"datasets": {"ave": {"source": "ave", "media": {"from_dir": str(ave_folder)},
                                                         "train": TRAIN}},
                                   "run": {"datasets": ["ave"], "methods": ["joint"]}}))
    target = paths.media_ready("ave")
    run(["snakemake", target, "--cores", "1", "--configfile", str(cfg)], repo)
    dry = lambda: run(["snakemake", target, "-n", "--cores", "1", "--configfile", str(cfg)], repo).stdout
    assert "Nothing to be done" in dry()                        # unchanged: nothing
    mp4(ave_folder / "AVE" / "aaaaaaaaaa3.mp4", seed=9)           # the missing clip arrives
    out = dry()
    assert "Nothing to be done" not in out and "media" in out, out
    run(["snakemake", target, "--cores", "1", "--configfile", str(cfg)], repo)
    assert "Nothing to be done" in dry()
    with open(ave_folder / "testSet.txt", "a") as f:            # a list file edited
        f.write("Bark&aaaaaaaaaa2&good&1&9\n")
    assert "Nothing to be done" not in dry()
