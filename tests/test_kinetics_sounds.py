"""Kinetics-Sounds from a user's Kinetics-400 copy: discovery by clip id, probing, the report."""
import csv
import json

import pytest

from dyncim.data.io import discovery
from dyncim.data.io import download as D
from dyncim.data.sources import kinetics_sounds as K
from test_download import make_media

CLASSES = ["bowling", "laughing", "tap_dancing"]
# clip id, class, split; train ids carry start and end, val/test ids only the start (as shipped)
ROWS = [("aaaaaaaaaaa_000010_000020", "bowling", "train"),
        ("b-b_bbbbbbb_000000_000010", "laughing", "train"),
        ("ccccccccccc_000030_000040", "tap_dancing", "train"),
        ("ddddddddddd_000005_000015", "bowling", "train"),
        ("eeeeeeeeeee_12", "laughing", "val"),
        ("fffffffffff_7", "tap_dancing", "val"),
        ("ggggggggggg_0", "bowling", "test"),
        ("hhhhhhhhhhh_40", "laughing", "test")]


def mp4(path, audio=True, seed=0):
    return make_media(path, "mp4", vcodec="mpeg4", acodec="aac" if audio else None, seed=seed)


@pytest.fixture
def ks(tmp_path):
    """Split files, and a Kinetics-400 folder holding the clips in the layouts seen in the wild."""
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    with open(tmp_path / "splits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip", "label", "split"])
        w.writerows(ROWS)
    k400 = tmp_path / "kinetics400"
    mp4(k400 / "train" / "bowling" / "aaaaaaaaaaa_000010_000020.mp4")  # <split>/<class>/<id>
    mp4(k400 / "train" / "laughing" / "b-b_bbbbbbb_000000_000010.mp4", seed=1)
    mp4(k400 / "train" / "tap dancing" / "ccccccccccc_000030_000040.mp4", audio=False)  # no audio
    (k400 / "train" / "bowling" / "ddddddddddd_000005_000015.mp4").write_bytes(b"not a video" * 50)
    mp4(k400 / "val" / "eeeeeeeeeee_000012_000022.mp4", seed=2)  # full id for a start-only clip id
    mp4(k400 / "fffffffffff_000008_000018.mp4")  # another segment of the same video: not a match
    mp4(k400 / "ggggggggggg.mp4", seed=3)  # a bare YouTube id
    mp4(k400 / "test" / "hhhhhhhhhhh_000040_000050.mkv", seed=4)
    (k400 / "notes.txt").write_text("ignored")
    (k400 / "val" / "loop").symlink_to(k400, target_is_directory=True)  # a cycle: walked once
    return tmp_path, k400


def test_clip_key():
    assert K.clip_key("--4-0ihtnBU_000058_000068") == ("--4-0ihtnBU", 58)
    assert K.clip_key("--RVKBMp_2M_79") == ("--RVKBMp_2M", 79)
    assert K.clip_key("--RVKBMp_2M") == ("--RVKBMp_2M", None)
    assert K.clip_key("short_1") is None and K.clip_key("abcdefghijk_x") is None


def test_prepare_from_a_folder_counts_and_lists_left_out_clips(ks):
    tmp, k400 = ks
    out = tmp / "raw" / "kinetics-sounds"
    logs = []
    res = K.prepare_kinetics_sounds(out, from_dir=k400, classes=tmp / "classes.txt",
                                    splits=tmp / "splits.csv", jobs=2, log=logs.append)
    used = D.read_clip_manifest(out / K.CLIPS)
    assert [c.clip for c in used] == ["aaaaaaaaaaa_000010_000020", "b-b_bbbbbbb_000000_000010",
                                      "eeeeeeeeeee_12", "ggggggggggg_0", "hhhhhhhhhhh_40"]
    by_clip = {c.clip: c for c in used}
    assert by_clip["eeeeeeeeeee_12"].video == str(k400 / "val" / "eeeeeeeeeee_000012_000022.mp4")
    assert by_clip["ggggggggggg_0"].audio == by_clip["ggggggggggg_0"].video == str(k400 / "ggggggggggg.mp4")
    assert by_clip["hhhhhhhhhhh_40"].video.endswith(".mkv") and by_clip["aaaaaaaaaaa_000010_000020"].label == "bowling"
    problems = list(csv.DictReader(open(out / K.PROBLEMS)))
    assert tuple(problems[0]) == discovery.PROBLEM_COLUMNS
    assert [(p["clip"], p["split"], p["problem"]) for p in problems] == [
        ("ccccccccccc_000030_000040", "train", "no-audio"),
        ("ddddddddddd_000005_000015", "train", "unreadable"),
        ("fffffffffff_7", "val", "missing")]
    assert problems[0]["path"].endswith("ccccccccccc_000030_000040.mp4") and problems[2]["path"] == ""
    summary = json.loads((out / K.SUMMARY).read_text())
    assert summary["splits"] == res.counts == {
        "train": {"listed": 4, "used": 2, "no-audio": 1, "unreadable": 1},
        "val": {"listed": 2, "used": 1, "missing": 1},
        "test": {"listed": 2, "used": 2}}
    assert summary["probed"] and summary["files_indexed"] == 8
    assert "train: used 2 of 4 clips (1 no-audio, 1 unreadable)" in logs[0]
    assert "val: used 1 of 2 clips (1 missing)" in logs[0] and "test: used 2 of 2 clips" in logs[0]


def test_prepare_without_probing_keeps_every_found_file(ks):
    tmp, k400 = ks
    res = K.prepare_kinetics_sounds(tmp / "out", from_dir=k400, classes=tmp / "classes.txt",
                                    splits=tmp / "splits.csv", probe=False, log=None)
    assert res.counts["train"] == {"listed": 4, "used": 4}
    assert json.loads((tmp / "out" / K.SUMMARY).read_text())["probed"] is False


@pytest.mark.parametrize("kind", ["txt", "csv"])
def test_prepare_from_a_clip_list(ks, kind):
    tmp, k400 = ks
    if kind == "txt":
        lst = tmp / "clips.txt"
        lst.write_text("# my copy\nkinetics400/val/eeeeeeeeeee_000012_000022.mp4\n\n"
                       f"{k400 / 'ggggggggggg.mp4'}\nkinetics400/gone/hhhhhhhhhhh_000040_000050.mp4\n"
                       "kinetics400/train/bowling/aaaaaaaaaaa_000010_000020.mp4\n")
    else:
        lst = tmp / "clips.csv"
        lst.write_text("clip,path\neeeeeeeeeee_12,kinetics400/val/eeeeeeeeeee_000012_000022.mp4\n"
                       "ggggggggggg_0,kinetics400/ggggggggggg.mp4\n"
                       "hhhhhhhhhhh_40,kinetics400/gone.mp4\n"
                       "aaaaaaaaaaa_000010_000020,kinetics400/train/bowling/aaaaaaaaaaa_000010_000020.mp4\n")
    out = tmp / "out"
    res = K.prepare_kinetics_sounds(out, clip_list=lst, classes=tmp / "classes.txt",
                                    splits=tmp / "splits.csv", log=None)
    assert res.counts["test"] == {"listed": 2, "used": 1, "missing": 1}
    assert [c.clip for c in D.read_clip_manifest(out / K.CLIPS)] == [
        "aaaaaaaaaaa_000010_000020", "eeeeeeeeeee_12", "ggggggggggg_0"]
    gone = [p for p in csv.DictReader(open(out / K.PROBLEMS)) if p["clip"] == "hhhhhhhhhhh_40"]
    assert gone[0]["problem"] == "missing" and gone[0]["detail"] == "listed but not found"


def test_a_split_without_any_clip_is_an_error(ks):
    tmp, k400 = ks
    for f in list((k400 / "test").iterdir()) + [k400 / "ggggggggggg.mp4"]:
        f.unlink()
    with pytest.raises(ValueError, match="no usable clip in the test split"):
        K.prepare_kinetics_sounds(tmp / "out", from_dir=k400, classes=tmp / "classes.txt",
                                  splits=tmp / "splits.csv", log=None)
    assert (tmp / "out" / K.PROBLEMS).exists() and not (tmp / "out" / K.CLIPS).exists()
    with pytest.raises(ValueError, match="exactly one"):
        K.prepare_kinetics_sounds(tmp / "out", log=None)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        K.prepare_kinetics_sounds(tmp / "out", from_dir=tmp / "nope", classes=tmp / "classes.txt",
                                  splits=tmp / "splits.csv", log=None)


def test_split_file_checks(tmp_path):
    bad = tmp_path / "s.csv"
    bad.write_text("clip,label,split\naaaaaaaaaaa_000010_000020,juggling,train\n")
    with pytest.raises(ValueError, match="class 'juggling' is not in the class list"):
        K.read_splits(bad, CLASSES)
    bad.write_text("clip,label,split\nnot-an-id,bowling,train\n")
    with pytest.raises(ValueError, match="not a Kinetics clip id"):
        K.read_splits(bad, CLASSES)


def test_shipped_class_list_and_splits():
    classes = K.read_classes()
    rows = K.read_splits(classes=classes)
    assert len(classes) == 31 and len(rows) == 18716
    assert [sum(1 for r in rows if r[2] == s) for s in discovery.SPLITS] == [14799, 1320, 2597]
    assert len({K.clip_key(r[0]) for r in rows}) == len(rows)  # ids stay distinct as (video, start)
