"""The feature store: write, commit, resume after an interruption, finish atomically, read back."""
import json

import numpy as np
import pytest
import torch

from dyncim.data.io import store as S

ARRAYS = {"audio": ((4, 5), "float16"), "frames": ((2, 6, 6, 3), "uint8")}
CLIPS = [f"c{i}" for i in range(6)]
LABELS = ["x", "y", "x", "z", "y", "x"]
PLAN = {"recipe": "test", "clips": [[c, lab] for c, lab in zip(CLIPS, LABELS)]}


def sample(i):
    return {"audio": np.full((4, 5), i + 0.5, dtype=np.float16),
            "frames": np.full((2, 6, 6, 3), 10 * i, dtype=np.uint8)}


def record(i, ok=True):
    return {"ok": ok, "n_frames": 2 if ok else 0, "aspect": 4 / 3 if ok else 0.0,
            **({} if ok else {"error": f"clip {i} is broken"})}


def write_all(out, skip=(), fail=(3,), plan=PLAN):
    with S.SplitWriter(out, len(CLIPS), ARRAYS, plan) as w:
        for i in range(len(CLIPS)):
            if i in skip or w.done[i]:
                continue
            w.write(i, None if i in fail else sample(i), record(i, i not in fail))
        w.commit()
        if all(w.done):
            w.finish(CLIPS, LABELS, {"classes": ["x", "y", "z"], "channels_last": ["frames"]})
        return w


def test_round_trip(tmp_path):
    out = tmp_path / "train"
    write_all(out)
    assert S.is_complete(out, PLAN) and not S.is_complete(out, {**PLAN, "recipe": "other"})
    assert not S.partial_path(out).exists()
    sp = S.open_split(out)
    assert len(sp) == 6 and sp.clips == CLIPS and sp.labels.tolist() == [0, 1, 0, 2, 1, 0]
    assert sp.ok.tolist() == [True, True, True, False, True, True] and sp.errors[3] == "clip 3 is broken"
    assert sp.audio.shape == (6, 4, 5) and sp.audio.dtype == np.float16 and isinstance(sp.audio, np.memmap)
    assert sp.frames.shape == (6, 2, 6, 6, 3) and sp.frames.dtype == np.uint8
    assert sp.audio[3].max() == 0 and sp.frames[3].max() == 0  # a failed sample's rows are zeros
    np.testing.assert_array_equal(sp.frames[5], sample(5)["frames"])
    assert sp.n_frames.tolist() == [2, 2, 2, 0, 2, 2] and abs(sp.aspect[0] - 4 / 3) < 1e-5
    meta = json.loads((out / S.META).read_text())
    assert meta["n_ok"] == 5 and meta["failed"] == [{"clip": "c3", "error": "clip 3 is broken"}]
    assert meta["bytes_per_sample"] == 4 * 5 * 2 + 2 * 6 * 6 * 3
    b = sp.take([5, 0])  # order kept, frames as (B, T, 3, H, W)
    assert b["labels"].tolist() == [0, 0] and b["audio"].dtype == torch.float16
    assert b["frames"].shape == (2, 2, 3, 6, 6) and b["frames"][0].max() == 50
    assert b["frames"][0].flatten(0, 0).is_contiguous(memory_format=torch.channels_last)
    sp2 = S.open_store(tmp_path, splits=("train",), mmap=False)["train"]
    assert not isinstance(sp2.frames, np.memmap) and np.array_equal(sp2.frames, sp.frames)


def test_resume_after_interruption(tmp_path):
    out = tmp_path / "train"
    w = S.SplitWriter(out, len(CLIPS), ARRAYS, PLAN)
    for i in (0, 1, 2):
        w.write(i, sample(i), record(i))
    w.commit()
    w.write(4, sample(4), record(4))  # written, never committed: must be redone
    w.close()  # the process dies here (no finish)
    with open(S.partial_path(out) / S.JOURNAL, "a") as f:
        f.write('{"i": 5, "ok": tr')  # a journal line cut short by SIGKILL
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="interrupted extraction"):
        S.open_split(out)

    w2 = S.SplitWriter(out, len(CLIPS), ARRAYS, PLAN)
    assert w2.resumed and w2.done.tolist() == [True, True, True, False, False, False]
    w2.close()
    write_all(out)
    sp = S.open_split(out)
    np.testing.assert_array_equal(sp.frames[1], sample(1)["frames"])
    np.testing.assert_array_equal(sp.audio[4], sample(4)["audio"])
    assert sp.ok.tolist() == [True, True, True, False, True, True]


def test_other_plan_starts_over(tmp_path):
    out = tmp_path / "train"
    write_all(out, skip=(4, 5))
    other = {**PLAN, "recipe": "changed"}
    w = S.SplitWriter(out, len(CLIPS), ARRAYS, other)
    assert not w.resumed and not w.done.any()
    w.close()


def test_rewrite_replaces_a_finished_split(tmp_path):
    out = tmp_path / "train"
    write_all(out)
    write_all(out, fail=(), plan={**PLAN, "recipe": "v2"})
    sp = S.open_split(out)
    assert sp.ok.all() and sp.meta["n_ok"] == 6


def test_open_split_errors_name_the_file(tmp_path):
    out = tmp_path / "train"
    write_all(out)
    meta = json.loads((out / S.META).read_text())
    meta["arrays"]["audio"]["shape"] = [6, 4, 7]
    (out / S.META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="audio.npy"):
        S.open_split(out)
    meta["arrays"]["audio"]["shape"] = [6, 4, 5]
    meta["classes"] = ["x", "y"]
    (out / S.META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="label 'z'"):
        S.open_split(out)
    meta["format"] = 99
    (out / S.META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format 99"):
        S.open_split(out)


def test_wrong_sample_shape_is_refused(tmp_path):
    with S.SplitWriter(tmp_path / "t", 2, ARRAYS, PLAN) as w:
        with pytest.raises(ValueError, match="frames has shape"):
            w.write(0, {"audio": np.zeros((4, 5)), "frames": np.zeros((2, 6, 6))}, record(0))
