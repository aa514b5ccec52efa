"""Feature extraction end to end on small synthetic clips in the real layouts (CREMA-D: WAV +
FLV; Kinetics-Sounds: MP4 with an AAC track): shapes, dtypes, frame colours, one spectrogram
against librosa, failed clips, resuming, the parallel path, and the clip manifest."""
import dataclasses
import json

import librosa
import numpy as np
import pytest

from dyncim.data.extraction import extract as E
from dyncim.data.io import media as M
from dyncim.data.io import store as S

LABELS = ("NEU", "HAP", "SAD")
SMALL = dict(size=(48, 64), fps=10)  # tiny pictures: features are full size (224 x 224) anyway


@pytest.fixture(scope="module")
def crema(tmp_path_factory):
    root = tmp_path_factory.mktemp("crema-d")
    clips = M.write_synthetic_layout(root, "crema-d", 4, labels=LABELS, seconds=[2.5, 3.0, 1.2, 2.0],
                                     splits=("train",), **SMALL)
    broken = dataclasses.replace(clips[0], clip="1099_BAD_NEU_XX",
                                 video=str(root / "VideoFlash" / "1099_BAD_NEU_XX.flv"))
    (root / "VideoFlash" / "1099_BAD_NEU_XX.flv").write_bytes(b"FLV\x01 truncated")
    return clips[:2] + [broken] + clips[2:]


def test_crema_d_features(crema, tmp_path):
    out = E.extract_split(crema, "crema-d", tmp_path / "train", LABELS, workers=0, progress=False)
    sp = S.open_split(out)
    assert len(sp) == 5 and sp.clips == [c.clip for c in crema]
    assert sp.audio.shape == (5, 257, 188) and sp.audio.dtype == np.float16
    assert sp.frames.shape == (5, 3, 224, 224, 3) and sp.frames.dtype == np.uint8
    assert sp.ok.tolist() == [True, True, False, True, True]
    assert "1099_BAD_NEU_XX.flv" in sp.errors[2] and sp.meta["failed"][0]["clip"] == "1099_BAD_NEU_XX"
    assert sp.n_frames.tolist() == [2, 3, 0, 1, 2]  # 1 fps, whole seconds, at least one
    assert np.allclose(sp.aspect[sp.ok], 4 / 3, atol=1e-4)
    assert sp.labels.tolist() == [LABELS.index(c.label) for c in crema]
    # clip 0 (2.5 s): slot k shows colour k of its palette; the empty third slot repeats the last
    palette = np.roll(M.PALETTE, 0, axis=0)
    for k in range(2):
        np.testing.assert_allclose(sp.frames[0, k, 100:200, 40:180].reshape(-1, 3).mean(0), palette[k], atol=12)
    np.testing.assert_array_equal(sp.frames[0, 2], sp.frames[0, 1])
    # one spectrogram against librosa, from the same decoded samples (PyAV at 22,050 Hz)
    x, _ = M.decode_audio(crema[1].audio, 22050)
    ref = np.log(np.abs(librosa.stft(np.clip(np.tile(x, 3)[:66150], -1, 1), n_fft=512, hop_length=353,
                                     pad_mode="constant")) + 1e-7)
    stored = sp.audio[1].astype(np.float32)
    # a pure tone leaves bins near float32's noise floor, where two FFTs' logs differ; above 1e-3
    # the stored values are librosa's to float16 precision (3 significant digits)
    loud = ref > np.log(1e-3)
    assert loud.mean() > 0.1 and np.abs(stored - ref)[loud].max() < 0.02
    assert np.corrcoef(stored.ravel(), ref.ravel())[0, 1] > 0.99
    assert sp.meta["recipe"]["audio"]["hop"] == 353 and sp.meta["bytes_per_sample"] == 548216


def test_kinetics_sounds_features(tmp_path):
    clips = M.write_synthetic_layout(tmp_path / "ks", "kinetics-sounds", 2, labels=("a", "b"),
                                     seconds=3.5, **SMALL)
    out = E.extract_split(clips, "kinetics-sounds", tmp_path / "feat" / "train", ("a", "b"), workers=0,
                          progress=False)
    sp = S.open_split(out)
    assert sp.audio.shape == (2, 1024, 128) and sp.frames.shape == (2, 3, 224, 224, 3)
    assert sp.ok.all() and sp.n_frames.tolist() == [3, 3]
    # 3.5 s of 16 kHz audio (plus AAC padding) fills ~350 of the 1,024 frames; the rest is the
    # normalised zero padding
    pad = np.float16(4.503877 / (5.141276 * 2))
    filled = int((sp.audio[0] != pad).any(1).sum())
    assert 340 <= filled <= 360 and (sp.audio[0, 400:] == pad).all()


def test_resume_redoes_only_unfinished_clips(crema, tmp_path, monkeypatch):
    out = tmp_path / "train"
    calls = []
    real = E.extract_clip

    def flaky(clip, recipe):
        calls.append(clip.clip)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the run is stopped in the middle of clip 4
        return real(clip, recipe)

    monkeypatch.setattr(E, "extract_clip", flaky)
    with pytest.raises(KeyboardInterrupt):
        E.extract_split(crema, "crema-d", out, LABELS, workers=0, progress=False)
    assert not out.exists() and S.partial_path(out).exists()
    calls.clear()
    monkeypatch.setattr(E, "extract_clip", real)
    counted = []
    monkeypatch.setattr(E, "extract_clip", lambda c, r: counted.append(c.clip) or real(c, r))
    E.extract_split(crema, "crema-d", out, LABELS, workers=0, progress=False)
    assert counted == [crema[3].clip, crema[4].clip]  # the first three were committed
    ref = tmp_path / "ref"
    E.extract_split(crema, "crema-d", ref, LABELS, workers=0, progress=False)
    a, b = S.open_split(out), S.open_split(ref)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.audio, b.audio)
    # a finished split is not redone
    monkeypatch.setattr(E, "extract_clip", lambda c, r: pytest.fail("re-extracted a finished split"))
    E.extract_split(crema, "crema-d", out, LABELS, workers=0, progress=False)


def test_parallel_workers_give_the_same_store(crema, tmp_path):
    one = E.extract_split(crema, "crema-d", tmp_path / "one", LABELS, workers=0, progress=False)
    two = E.extract_split(crema, "crema-d", tmp_path / "two", LABELS, workers=2, inflight=2,
                          progress=False, start_method="fork")
    a, b = S.open_split(one), S.open_split(two)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert a.errors == b.errors


def test_bad_inputs_are_refused(crema, tmp_path):
    with pytest.raises(ValueError, match="not among the classes"):
        E.extract_split(crema, "crema-d", tmp_path / "t", ("NEU",), workers=0, progress=False)
    with pytest.raises(ValueError, match="listed twice"):
        E.extract_split(crema + crema[:1], "crema-d", tmp_path / "t", LABELS, workers=0, progress=False)
    with pytest.raises(ValueError, match="recipe 'no-such-set'"):
        E.extract_split(crema, "no-such-set", tmp_path / "t", LABELS, workers=0, progress=False)


def test_recipe_round_trip_and_sizes():
    for name, r in E.RECIPES.items():
        assert E.Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert E.RECIPES["crema-d"].bytes_per_sample() == 257 * 188 * 2 + 3 * 224 * 224 * 3
    assert E.RECIPES["kinetics-sounds"].bytes_per_sample() == 1024 * 128 * 2 + 3 * 224 * 224 * 3


def test_extract_from_clip_manifest(crema, tmp_path):
    from dyncim.data.io import download
    clips = [download.Clip(c.clip, c.label, s, c.audio, c.video)
             for c, s in zip(crema, ["train", "train", "val", "test", "test"])]
    download.write_clip_manifest(tmp_path / "clips.csv", clips)
    outs = E.extract_manifest(tmp_path / "clips.csv", "crema-d", tmp_path / "features", LABELS,
                              workers=0, progress=False)
    sizes = {s: len(S.open_split(p)) for s, p in outs.items()}
    assert sizes == {"train": 2, "val": 1, "test": 2}
    assert not S.open_split(outs["val"]).ok.any()


def test_a_crashing_decoder_fails_one_clip_only(crema, tmp_path, monkeypatch):
    """A worker process that dies (as FFmpeg may on a corrupt file) costs only its clip."""
    import os
    real = E.extract_clip

    def crashing(clip, recipe):
        if clip.clip == crema[1].clip:
            os._exit(3)
        return real(clip, recipe)

    monkeypatch.setattr(E, "extract_clip", crashing)  # forked workers inherit the patch
    out = E.extract_split(crema, "crema-d", tmp_path / "t", LABELS, workers=2, inflight=3,
                          progress=False, start_method="fork")
    sp = S.open_split(out)
    assert sp.ok.tolist() == [True, False, False, True, True]
    assert "process died" in sp.errors[1] and "1099_BAD" in sp.errors[2]


def test_a_changed_raw_clip_is_re_extracted_and_only_it(tmp_path, monkeypatch):
    import os
    import shutil
    root = tmp_path / "raw"
    clips = M.write_synthetic_layout(root, "crema-d", 4, labels=LABELS, seconds=[2.5, 3.0, 1.2, 2.0],
                                     splits=("train",), **SMALL)
    good = root / "good.flv"
    shutil.copyfile(clips[1].video, good)
    Path = type(root)
    Path(clips[1].video).write_bytes(b"FLV\x01 truncated")          # clip 1 fails to decode at first
    out = tmp_path / "train"
    E.extract_split(clips, "crema-d", out, LABELS, workers=0, progress=False)
    sp = S.open_split(out)
    assert sp.ok.tolist() == [True, False, True, True]
    before = {k: np.array(getattr(sp, k)) for k in ("audio", "frames")}
    del sp
    # the raw clip is replaced with different (good) bytes: that clip, and only it, is extracted again
    os.replace(good, clips[1].video)
    counted, real = [], E.extract_clip
    monkeypatch.setattr(E, "extract_clip", lambda c, r: counted.append(c.clip) or real(c, r))
    E.extract_split(clips, "crema-d", out, LABELS, workers=0, progress=False)
    assert counted == [clips[1].clip]
    sp = S.open_split(out)
    assert sp.ok.all() and sp.meta["failed"] == [] and sp.errors[1] == ""
    ref = E.extract_split(clips, "crema-d", tmp_path / "ref", LABELS, workers=0, progress=False)
    r = S.open_split(ref)
    np.testing.assert_array_equal(sp.frames, r.frames)
    np.testing.assert_array_equal(sp.audio, r.audio)
    for k in (0, 2, 3):
        np.testing.assert_array_equal(sp.frames[k], before["frames"][k])
    # unchanged: nothing to do
    counted.clear()
    logs = []
    E.extract_split(clips, "crema-d", out, LABELS, workers=0, progress=False, log=logs.append)
    assert counted == [] and "nothing to do" in logs[-1]


def test_a_clip_added_to_a_split_is_the_only_one_extracted(tmp_path, monkeypatch):
    root = tmp_path / "raw"
    clips = M.write_synthetic_layout(root, "crema-d", 5, labels=LABELS, seconds=[2.5, 3.0, 1.2, 2.0, 1.5],
                                     splits=("train",), **SMALL)
    out = tmp_path / "train"
    E.extract_split(clips[:4], "crema-d", out, LABELS, workers=0, progress=False)
    counted, real = [], E.extract_clip
    monkeypatch.setattr(E, "extract_clip", lambda c, r: counted.append(c.clip) or real(c, r))
    grown = clips[:2] + [clips[4]] + clips[2:4]                      # a clip added in the middle
    E.extract_split(grown, "crema-d", out, LABELS, workers=0, progress=False)
    assert counted == [clips[4].clip]
    monkeypatch.setattr(E, "extract_clip", real)
    ref = E.extract_split(grown, "crema-d", tmp_path / "ref", LABELS, workers=0, progress=False)
    a, b = S.open_split(out), S.open_split(ref)
    assert a.clips == b.clips and a.ok.tolist() == b.ok.tolist() and a.n_frames.tolist() == b.n_frames.tolist()
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.audio, b.audio)
    for name in (S.INDEX, S.META, S.INPUTS):
        assert (out / name).read_bytes() == (ref / name).read_bytes()
