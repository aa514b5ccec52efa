"""CREMA-D: a tiny tree in the real layout (WAV and FLV made with PyAV), served from 127.0.0.1."""
import csv
import json
from pathlib import Path

import pytest

from dyncim.data.sources import crema_d as C
from dyncim.data.io import download as D
from test_download import RangeHandler, make_media, server, served, write_manifest  # noqa: F401

CLIPS = [("1001_DFA_ANG_XX", "train"), ("1001_IEO_HAP_HI", "train"), ("1002_TIE_SAD_XX", "val"),
         ("1003_ITS_NEU_XX", "test")]


def fake_crema_d(root, tmp_path):
    """The repository's layout under `root`, and its splits and LFS manifest in `tmp_path`."""
    for i, (clip, _) in enumerate(CLIPS):
        make_media(root / C.audio_path(clip), "wav", acodec="pcm_s16le", seconds=0.5 + 0.1 * i, seed=i)
        make_media(root / C.video_path(clip), "flv", vcodec="flv", acodec="libmp3lame", rate=22050,
                   seconds=0.4 + 0.1 * i, seed=i)
    splits = tmp_path / "splits.csv"
    with open(splits, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip", "label", "split"])
        w.writerows([clip, clip.split("_")[2], split] for clip, split in CLIPS)
    rels = [p for clip, _ in CLIPS for p in (C.audio_path(clip), C.video_path(clip))]
    write_manifest(tmp_path / "lfs-manifest.csv", root, rels)
    return splits, tmp_path / "lfs-manifest.csv"


def check_clips(out):
    rows = list(csv.DictReader(open(out / C.CLIPS)))
    assert [(r["clip"], r["label"], r["split"]) for r in rows] == [(c, c.split("_")[2], s) for c, s in CLIPS]
    assert rows[0]["audio"] == "AudioWAV/1001_DFA_ANG_XX.wav" and rows[0]["video"] == "VideoFlash/1001_DFA_ANG_XX.flv"
    for clip in D.read_clip_manifest(out / C.CLIPS):
        import av
        with av.open(clip.audio) as a, av.open(clip.video) as v:
            assert a.streams.audio and v.streams.video


def test_download_crema_d_corrupt_interrupted_missing_then_resumed(server, tmp_path):
    root, url = server
    splits, manifest = fake_crema_d(root, tmp_path)
    bad_video = C.video_path("1002_TIE_SAD_XX")
    cut_audio = C.audio_path("1001_IEO_HAP_HI")
    gone_audio = C.audio_path("1003_ITS_NEU_XX")
    RangeHandler.corrupt.add("/" + bad_video)
    size = (root / cut_audio).stat().st_size
    RangeHandler.cut["/" + cut_audio] = size // 2
    saved = (root / gone_audio).read_bytes()
    (root / gone_audio).unlink()
    out = tmp_path / "raw" / "crema-d"
    logs = []
    with pytest.raises(D.FilesFailedError) as err:
        C.download_crema_d(out, base_url=url + "/", manifest=manifest, splits=splits, jobs=4,
                           retries=2, backoff=0, log=logs.append)
    assert [f.path for f in err.value.result.failed] == [gone_audio, bad_video]  # both named, sorted
    assert "sha256 mismatch" in str(err.value) and "HTTP 404" in str(err.value)
    report = json.loads((out / D.REPORT).read_text())
    assert [f["path"] for f in report["failed"]] == [gone_audio, bad_video] and report["fetched"] == 6
    assert not (out / C.CLIPS).exists() and logs == []  # no clip table until every file is verified
    # the dropped transfer was resumed from where it stopped, within the run
    assert served(RangeHandler.requests, cut_audio) == [("/" + cut_audio, None), ("/" + cut_audio, f"bytes={size // 2}-")]
    assert len(served(RangeHandler.requests, bad_video)) == 3
    # the source is repaired: only the two failed files are asked for again
    RangeHandler.corrupt.clear()
    (root / gone_audio).write_bytes(saved)
    RangeHandler.requests.clear()
    clips = C.download_crema_d(out, base_url=url, manifest=manifest, splits=splits, jobs=4, backoff=0,
                               log=logs.append)
    assert sorted(r[0] for r in RangeHandler.requests) == sorted(["/" + gone_audio, "/" + bad_video])
    assert clips == out / C.CLIPS
    check_clips(out)
    assert logs and "8 files verified" in logs[-1] and "2 train, 1 val, 1 test" in logs[-1]
    report = json.loads((out / D.REPORT).read_text())
    assert report["complete"] and (report["fetched"], report["verified_before"]) == (2, 6)


def test_download_crema_d_from_a_folder(tmp_path, monkeypatch):
    src = tmp_path / "CREMA-D"
    splits, manifest = fake_crema_d(src, tmp_path)
    (src / "README.md").write_text("not listed: ignored")
    monkeypatch.chdir(tmp_path)
    out = Path("raw")  # relative, as the pipeline passes it
    C.download_crema_d(out, from_dir="CREMA-D", link="symlink", manifest=manifest, splits=splits, jobs=2, log=None)
    check_clips(out)
    assert (out / C.video_path("1001_DFA_ANG_XX")).is_symlink() and not (out / "README.md").exists()


def test_clip_ids_and_split_file_checks(tmp_path):
    assert C.parse_clip("1001_DFA_ANG_XX") == {"actor": "1001", "sentence": "DFA", "label": "ANG", "intensity": "XX"}
    with pytest.raises(ValueError, match="not a CREMA-D clip id"):
        C.parse_clip("1001_DFA_XYZ_XX")
    bad = tmp_path / "s.csv"
    bad.write_text("clip,label,split\n1001_DFA_ANG_XX,HAP,train\n")
    with pytest.raises(ValueError, match=r"s.csv:2: 1001_DFA_ANG_XX is labelled HAP, but its id says ANG"):
        C.read_splits(bad)
    bad.write_text("clip,label,split\n1001_DFA_ANG_XX,ANG,dev\n")
    with pytest.raises(ValueError, match="split 'dev'"):
        C.read_splits(bad)
    m = tmp_path / "m.csv"
    m.write_text(f"path,sha256,size\nAudioWAV/1001_DFA_ANG_XX.wav,{'a' * 64},1\n")
    with pytest.raises(ValueError, match="no entry for 1 files"):
        C.files_for([("1001_DFA_ANG_XX", "ANG", "train")], D.read_file_manifest(m), m)


def test_shipped_split_and_manifest_agree():
    rows = C.read_splits()
    entries = C.files_for(rows, D.read_file_manifest(C.LFS_MANIFEST))
    assert len(rows) == 7442 and len(entries) == 14884
    assert [sum(1 for r in rows if r[2] == s) for s in ("train", "val", "test")] == [5954, 744, 744]
    assert sum(e.size for e in entries) == 3_048_921_077
    assert D.file_url(C.DEFAULT_BASE_URL, entries[0].path) == (
        "https://media.githubusercontent.com/media/CheyneyComputerScience/CREMA-D/master/" + entries[0].path)
