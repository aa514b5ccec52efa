"""UCF-101 (RGB + optical flow) from tiny .avi clips in the release's layout: the official lists and
the group-wise validation split, missing and broken clips left out and reported, Farneback flow
measured against known motion after quantisation, the flow augmentation's flip, and one short
training run through the CLI from the store."""
import csv
import json

import numpy as np
import pytest
import torch
import yaml
from scipy.ndimage import gaussian_filter

from dyncim import cli
from dyncim.data.extraction import flow as FL
from dyncim.data.io import media
from dyncim.data.io import store as S
from dyncim.data.sources import ucf101 as U
from dyncim.data.extraction.extract import RECIPES, extract_video_flow
from dyncim.data.sets.media_set import open_media
from dyncim.data.sets.augment import FlowAugment
from tests.conftest import REPO

CLASSES = ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
TRAIN_GROUPS, TEST_GROUPS = (8, 9, 10, 11), (1,)
SRC_H, SRC_W, FPS = 120, 160, 25  # UCF-101's 320 x 240 at half size


def moving_texture(n: int, dx: int, dy: int, seed: int, h: int = SRC_H, w: int = SRC_W) -> np.ndarray:
    """(n, h, w, 3) uint8: a smooth random texture whose content moves (dx, dy) pixels a frame."""
    rng = np.random.default_rng(seed)
    m = 2 + n * max(abs(dx), abs(dy))
    tex = gaussian_filter(rng.uniform(0, 255, (h + 2 * m, w + 2 * m)), 2.0)
    tex = (tex - tex.min()) / (tex.max() - tex.min()) * 255
    frames = np.stack([tex[m - i * dy:m - i * dy + h, m - i * dx:m - i * dx + w] for i in range(n)])
    return np.repeat(frames[..., None], 3, axis=-1).astype(np.uint8)


def clip_name(cls: str, g: int, c: int) -> str:
    # the release spells one class differently in its file names (its lists keep that spelling)
    return f"v_{'HandStandPushups' if cls == 'HandstandPushups' else cls}_g{g:02d}_c{c:02d}"


def fake_ucf101(root):
    """A tiny UCF-101 (`UCF-101/` + `ucfTrainTestlist/` beside it) and what it should give:
    {clip: (label, group, expected split or problem)}."""
    videos, lists = root / "UCF-101", root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\r\n" for i, c in enumerate(CLASSES, 1)))
    train, test, expect = [], [], {}
    for ci, cls in enumerate(CLASSES):
        # on disk, this class's folder is spelled as its file names are (a copy that renamed it)
        folder = videos / ("HandStandPushups" if cls == "HandstandPushups" else cls)
        for g in TRAIN_GROUPS + TEST_GROUPS:
            for c in (1, 2) if ci == 0 else (1,):
                name = clip_name(cls, g, c)
                media.encode_video(folder / f"{name}.avi", moving_texture(30, 1 + ci, 0, seed=g * 10 + ci),
                                   FPS, "mpeg4", bit_rate=2_000_000)
                if g in TRAIN_GROUPS:
                    train.append(f"{cls}/{name}.avi {ci + 1}")
                else:
                    test.append(f"{cls}/{name}.avi")
                expect[name] = (cls, g, "train" if g in TRAIN_GROUPS else "test")
    # a file PyAV cannot open, a listed clip with no file, a video stream cut before its first frame
    (videos / "Archery" / f"{clip_name('Archery', 8, 3)}.avi").write_bytes(b"not a video" * 50)
    train.append(f"Archery/{clip_name('Archery', 8, 3)}.avi 2")
    expect[clip_name("Archery", 8, 3)] = ("Archery", 8, "unreadable")
    test.append(f"Archery/{clip_name('Archery', 1, 9)}.avi")
    expect[clip_name("Archery", 1, 9)] = ("Archery", 1, "missing")
    cut = media.encode_video(videos / "ApplyEyeMakeup" / f"{clip_name('ApplyEyeMakeup', 1, 3)}.avi",
                             moving_texture(5, 1, 0, seed=0), FPS, "mpeg4")
    data = cut.read_bytes()
    cut.write_bytes(data[:data.index(b"movi") + 4])  # the headers, no frame: PyAV opens it, decodes none
    test.append(f"ApplyEyeMakeup/{clip_name('ApplyEyeMakeup', 1, 3)}.avi")
    expect[clip_name("ApplyEyeMakeup", 1, 3)] = ("ApplyEyeMakeup", 1, "test-failed")
    (lists / "trainlist01.txt").write_text("".join(f"{x}\r\n" for x in train))
    (lists / "testlist01.txt").write_text("".join(f"{x}\r\n" for x in test))
    return videos, expect


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The tiny set through the CLI's media and extract steps and one training run (in-process);
    the class list checked against classInd.txt is this set's three (the shipped one has 101)."""
    root = tmp_path_factory.mktemp("ucf")
    videos, expect = fake_ucf101(root)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    mp = pytest.MonkeyPatch()
    mp.setattr(U, "CLASSES_FILE", root / "classes.txt")
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["seeds"] = [0]
    p["datasets"]["ucf"] = {"source": "ucf-101", "device": "cpu",
                            "media": {"from_dir": str(videos), "workers": 1, "jobs": 2},
                            "train": {"encoder": "auto", "resnet_width": 4, "epochs": 1, "batch_size": 4,
                                      "eval_batch_size": 8, "lr": 0.01}}
    for m in p["methods"].values():
        m.pop("seeds", None)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(p))
    ready, summary = root / "raw" / "ready.json", root / "store" / "store.json"
    try:
        assert cli.main(["media", "--data", "ucf", "--out", str(ready), "--params", str(params)]) == 0
        assert cli.main(["extract", "--data", "ucf", "--raw", str(ready), "--out", str(summary),
                         "--params", str(params)]) == 0
        assert cli.main(["train", "--data", "ucf", "--method", "joint", "--data-file", str(summary),
                         "--root", str(root), "--params", str(params)]) == 0
    finally:
        mp.undo()
    return root, ready, summary, expect


def test_split_1_with_whole_groups_held_out_and_bad_clips_reported(pipeline):
    root, ready, summary, expect = pipeline
    rec = json.loads(ready.read_text())
    val = U.chosen_groups(TRAIN_GROUPS, 2, 0)
    assert rec["val_groups"] == val and len(val) == 2
    raw = ready.parent
    with open(raw / "problems.csv", newline="") as f:
        problems = {r["clip"]: r["problem"] for r in csv.DictReader(f)}
    assert problems == {c: e[2] for c, e in expect.items() if e[2] in ("missing", "unreadable")}
    got = {s: S.open_split(summary.parent / s) for s in ("train", "val", "test")}
    split_of = {c: ("val" if g in val else "train") if kind == "train" else "test" if kind.startswith("test") else None
                for c, (_, g, kind) in expect.items()}
    want = {s: sorted(c for c, sp in split_of.items() if sp == s) for s in got}
    for s, split in got.items():
        assert sorted(split.clips) == want[s]
        assert [split.label_names[i] for i in range(len(split))] == [expect[c][0] for c in split.clips]
    # 4 train groups x (2 + 1 + 1 clips), the unreadable one left out: val is 2 whole groups;
    # test: group 1 (2 + 1 + 1 clips) and the cut clip, the missing one left out
    assert (len(got["train"]), len(got["val"]), len(got["test"])) == (8, 8, 5)
    groups = {s: {U.parse_clip(c)[1] for c in got[s].clips} for s in got}
    assert groups["val"] == set(val) and not groups["train"] & groups["val"]
    assert not (groups["train"] | groups["val"]) & groups["test"]
    # the cut clip passed the probe and failed decoding: kept in the store as ok=0, not fatal
    t = got["test"]
    bad = t.clips.index(clip_name("ApplyEyeMakeup", 1, 3))
    assert not t.ok[bad] and "no frames" in t.errors[bad] and t.ok.sum() == 4
    assert json.loads(summary.read_text())["splits"]["test"] == {"samples": 5, "failed": 1}
    assert t.frames.shape[1:] == (3, 128, 128, 3) and t.flow.shape[1:] == (3, 128, 128, 2)
    assert t.flow.dtype == np.uint8 and t.meta["channels_last"] == ["frames", "flow"]


def test_training_from_the_store_uses_a_two_channel_resnet_for_flow(pipeline):
    root, _, summary, _ = pipeline
    ck = torch.load(root / "models" / "ucf" / "joint" / "seed0" / "best.pt", weights_only=False)
    assert ck["names"] == ["visual", "flow"]
    assert ck["parts"][0]["in_dims"] == [(3, 3, 128, 128), (3, 2, 128, 128)]
    state = ck["parts"][0]["state"]
    assert state["encoders.0.stem.0.weight"].shape == (4, 3, 7, 7)
    assert state["encoders.1.stem.0.weight"].shape == (4, 2, 7, 7)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    data = open_media(summary.parent)
    x = data.batch(data.index("train")[:4], train=True, generator=torch.Generator().manual_seed(0))
    assert x[1].shape == (4, 3, 2, 128, 128) and x[1].abs().max() <= 1.0


@pytest.mark.parametrize("dx,dy", [(5, 0), (0, -3)])
def test_flow_measures_known_motion_in_stored_pixels(tmp_path, dx, dy):
    """Content moving (dx, dy) source pixels a frame: after quantisation the mean flow is that
    motion in stored pixels (128 / 160 across, 128 / 120 down)."""
    path = media.encode_video(tmp_path / "v_Archery_g01_c01.avi", moving_texture(50, dx, dy, seed=3), FPS, "mpeg4",
                              bit_rate=4_000_000)
    clip = media.SyntheticClip("v_Archery_g01_c01", "Archery", "test", str(path), str(path))
    arrays, rec = extract_video_flow(clip, RECIPES["ucf-101"])
    assert rec["n_frames"] == 2 and arrays["flow"].shape == (3, 128, 128, 2)
    f = FL.dequantise(arrays["flow"][:2, 16:-16, 16:-16], RECIPES["ucf-101"].flow.bound)  # away from the edges
    want = (dx * 128 / SRC_W, dy * 128 / SRC_H)
    for k in range(2):
        assert np.mean(f[k, ..., 0]) == pytest.approx(want[0], abs=0.25)
        assert np.mean(f[k, ..., 1]) == pytest.approx(want[1], abs=0.25)
    assert np.array_equal(arrays["flow"][2], arrays["flow"][1])  # the empty slot repeats the last field


def test_the_recipe_reads_back_and_its_sample_size():
    from dyncim.data.extraction.extract import Recipe
    r = RECIPES["ucf-101"]
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert r.bytes_per_sample() == 3 * 128 * 128 * 3 + 3 * 128 * 128 * 2 == 245_760   # docs/data.md


def test_quantisation_keeps_zero_exact_and_clips_at_the_bound():
    f = np.array([-100.0, -8.0, -1.0, 0.0, 0.03, 1.0, 8.0, 100.0], np.float32)
    q = FL.quantise(f, 8.0)
    assert q.tolist()[3] == 128 and q.min() == 1 and q.max() == 255
    assert np.allclose(FL.dequantise(q, 8.0), np.clip(f, -8, 8), atol=0.5 * 8 / 127 + 1e-6)
    assert np.array_equal(FL.quantise(-f, 8.0), 256 - q.astype(int))  # a mirrored field quantises mirrored


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])  # the CPU path and the grid_sample path
def test_a_horizontal_flip_mirrors_the_field_and_negates_x(dtype):
    H = W = 16
    xs = torch.arange(W, dtype=torch.float32).expand(H, W)
    q = torch.stack([128 + 3 * xs, 128 - 2 * xs.T], 0)            # x grows to the right, y downwards
    flow = q.to(dtype).expand(2, 3, 2, H, W).contiguous()
    whole = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))            # a crop box of the whole field
    plain = FlowAugment(W, flip_p=0.0, **whole)(flow, True, generator=torch.Generator().manual_seed(1))
    flipped = FlowAugment(W, flip_p=1.0, **whole)(flow, True, generator=torch.Generator().manual_seed(1))
    ref = (q - 128) / 127
    assert torch.allclose(plain[1, 2], ref, atol=1e-5)
    assert torch.allclose(flipped[..., 0, :, :], -ref[0].flip(-1), atol=1e-5)
    assert torch.allclose(flipped[..., 1, :, :], ref[1].flip(-1), atol=1e-5)
    assert torch.allclose(FlowAugment(W)(flow, False), plain)      # evaluation: the whole field, unflipped


def test_class_index_must_be_the_shipped_101_classes():
    names = U.read_classes()
    assert len(names) == 101 and names[36] == "HandstandPushups" and names[-1] == "YoYo"


def test_the_release_class_index_is_accepted_and_a_wrong_one_named(tmp_path):
    shipped = U.read_classes()
    ok = tmp_path / "classInd.txt"   # as released: CRLF; a copy that renamed one class's case
    ok.write_text("".join(f"{i} {'HandStandPushups' if n == 'HandstandPushups' else n}\r\n"
                          for i, n in enumerate(shipped, 1)))
    assert U.read_class_index(ok, shipped) == shipped
    bad = tmp_path / "bad" / "classInd.txt"
    bad.parent.mkdir()
    bad.write_text("".join(f"{i} {n}\n" for i, n in enumerate(reversed(shipped), 1)))
    with pytest.raises(ValueError, match=r"classInd.txt: lists 101 classes, expected the 101 .*"
                                         r"first difference at \(1, 'YoYo'"):
        U.read_class_index(bad, shipped)


def test_a_list_row_of_the_wrong_class_index_names_file_and_line(tmp_path):
    (tmp_path / "trainlist01.txt").write_text("Archery/v_Archery_g08_c01.avi 2\nArchery/v_Archery_g08_c02.avi 1\n")
    with pytest.raises(ValueError, match=r"trainlist01.txt:2: class index 1, but Archery is 2"):
        U.read_list(tmp_path / "trainlist01.txt", ["ApplyEyeMakeup", "Archery"], "train", with_index=True)


def test_the_validation_groups_are_a_fixed_function_of_the_seed():
    groups = list(range(8, 26))
    assert U.chosen_groups(groups, 2, 0) == [19, 23]       # docs/data.md: 1,045 val clips of 9,537
    assert U.chosen_groups(groups[::-1], 2, 0) == [19, 23]
    assert U.chosen_groups(groups, 2, 1) != [19, 23]
    with pytest.raises(ValueError, match="media.val_groups = 18: expected 1 to 17"):
        U.chosen_groups(groups, 18, 0)


def test_a_split_left_with_no_clip_is_an_error_after_the_report_is_written(tmp_path):
    """The test list's one clip is missing: an error naming the split, with problems.csv and
    summary.json written and no clips.csv (probe off: the other files need only exist)."""
    videos, lists = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 Archery\n")
    train = [f"Archery/v_Archery_g{g:02d}_c01.avi" for g in (8, 9, 10)]
    (videos / "Archery").mkdir(parents=True)
    for rel in train:
        (videos / rel).write_bytes(b"")
    (lists / "trainlist01.txt").write_text("".join(f"{x} 1\n" for x in train))
    (lists / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\n")
    (tmp_path / "classes.txt").write_text("Archery\n")
    out = tmp_path / "raw"
    with pytest.raises(ValueError, match=r"UCF-101: no usable clip in the test split\(s\)"):
        U.prepare_ucf101(out, from_dir=videos, classes=tmp_path / "classes.txt", val_groups=1, probe=False,
                         log=None)
    with open(out / "problems.csv", newline="") as f:
        assert [(r["clip"], r["split"], r["problem"]) for r in csv.DictReader(f)] == \
            [("v_Archery_g01_c01", "test", "missing")]
    splits = json.loads((out / "summary.json").read_text())["splits"]
    assert splits["test"] == {"listed": 1, "used": 0, "missing": 1}
    assert splits["train"]["used"] + splits["val"]["used"] == 3
    assert not (out / "clips.csv").exists() and not list(out.glob(".*.tmp"))


def test_without_opencv_a_ucf101_set_names_the_extra(monkeypatch, tmp_path):
    import importlib.util
    from dyncim.data.steps.paper_raw import bring_in
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cv2" else real(name, *a))
    ds = {"source": "ucf-101", "media": {"from_dir": str(tmp_path), "jobs": 1}}
    with pytest.raises(ModuleNotFoundError, match=r"UCF-101's flow modality needs OpenCV .*\.\[paper\]"):
        bring_in(ds, tmp_path / "raw" / "ready.json")
