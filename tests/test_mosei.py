"""CMU-MOSEI: a tiny pickle in the MulT layout (aligned, 50 steps), served from 127.0.0.1."""
import json
import os
import pickle

import numpy as np
import pytest

from dyncim.data.io import download as D
from dyncim.data.sources import mosei as M
from test_download import RangeHandler, server  # noqa: F401

SCORES = {"train": [-3.0, -2.5, -0.4, 0.0, 0.5, 1.5, 2.5, 3.0], "valid": [-1.0, 0.0, 0.2, 1.4],
          "test": [-0.6, 0.0, 0.7, 2.2]}
DIMS = {"text": 300, "audio": 74, "vision": 35}


def tiny_mosei(with_ids=True) -> dict:
    rng = np.random.default_rng(0)
    data = {}
    for split, scores in SCORES.items():
        n = len(scores)
        part = {m: rng.normal(size=(n, 50, d)).astype(np.float32) for m, d in DIMS.items()}
        part["labels"] = np.array(scores, np.float32).reshape(n, 1, 1)
        if with_ids:
            part["id"] = np.array([[f"vid{split}{i}".encode(), str(i), str(i + 1)] for i in range(n)], dtype=object)
        data[split] = part
    data["train"]["audio"][0, 3, 5] = -np.inf  # as COVAREP has
    data["train"]["audio"][1, 0, :2] = np.nan
    data["test"]["vision"][2, 7, 1] = np.inf
    return data


def write_pickle(path, data, numpy1=False, protocol=4):
    blob = pickle.dumps(data, protocol=2 if numpy1 else protocol)
    if numpy1:  # what numpy 1.x wrote: numpy.core.multiarray._reconstruct
        blob = blob.replace(b"numpy._core.", b"numpy.core.")
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize("flavour", ["numpy1", "proto5"])
def test_load_binary_default_and_nonfinite_rule(tmp_path, flavour):
    path = write_pickle(tmp_path / M.FILES["aligned"], tiny_mosei(), numpy1=flavour == "numpy1", protocol=5)
    d = M.load_mosei(path)
    assert d.task == "binary" and d.classes == ("negative", "non-negative")
    assert d.dims == DIMS and d.seq_lens == {"text": 50, "audio": 50, "vision": 50}
    assert list(d.splits) == ["train", "val", "test"]
    tr = d.splits["train"]
    assert tr.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1] and tr.labels.dtype == np.int64
    assert d.splits["val"].labels.tolist() == [0, 1, 1, 1]
    assert np.allclose(tr.scores, SCORES["train"]) and tr.ids[1] == "vidtrain1/1/2"
    for s in d.splits.values():
        for m, x in s.features.items():
            assert x.dtype == np.float32 and np.isfinite(x).all() and x.shape == (len(s.labels), 50, DIMS[m])
    assert tr.features["audio"][0, 3, 5] == 0 and (tr.features["audio"][1, 0, :2] == 0).all()
    assert d.nonfinite == {"train": {"text": 0, "audio": 3, "vision": 0}, "val": {"text": 0, "audio": 0, "vision": 0},
                           "test": {"text": 0, "audio": 0, "vision": 1}}
    with pytest.raises(ValueError, match=r"train/audio: .*non-finite"):
        M.load_mosei(path, nonfinite="error")


def test_seven_class_rounding_and_nonzero_binary(tmp_path):
    path = write_pickle(tmp_path / "m.pkl", tiny_mosei(with_ids=False))
    d7 = M.load_mosei(path, task="7class")
    # round half to even as MulT's multiclass_acc (np.round): -2.5 -> -2, 0.5 -> 0, 2.5 -> 2
    assert d7.splits["train"].labels.tolist() == [0, 1, 3, 3, 3, 5, 5, 6] and len(d7.classes) == 7
    assert d7.splits["test"].ids == ["test-0", "test-1", "test-2", "test-3"]
    dnz = M.load_mosei(path, task="binary-nonzero")
    assert dnz.splits["train"].labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert dnz.dropped == {"train": 1, "val": 1, "test": 1}
    assert dnz.splits["val"].features["text"].shape == (3, 50, 300) and len(dnz.splits["val"].ids) == 3
    with pytest.raises(ValueError, match="task 'regression'"):
        M.load_mosei(path, task="regression")


def test_bad_files_are_refused(tmp_path):
    data = tiny_mosei()
    del data["valid"]["vision"]
    with pytest.raises(ValueError, match=r"split 'valid' lacks \['vision'\]"):
        M.load_mosei(write_pickle(tmp_path / "a.pkl", data))
    data = tiny_mosei()
    data["test"]["audio"] = data["test"]["audio"][:, :, :10]
    with pytest.raises(ValueError, match="test has feature sizes"):
        M.load_mosei(write_pickle(tmp_path / "b.pkl", data))
    data = tiny_mosei()
    data["train"]["labels"][0] = 7.0
    with pytest.raises(ValueError, match=r"in \[-3, 3\]"):
        M.load_mosei(write_pickle(tmp_path / "c.pkl", data))
    data = tiny_mosei()
    data["valid"]["text"] = data["valid"]["text"][:2]
    with pytest.raises(ValueError, match=r"valid/text has shape \(2, 50, 300\); expected \(4, steps"):
        M.load_mosei(write_pickle(tmp_path / "d.pkl", data))
    (tmp_path / "e.pkl").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable MulT feature pickle"):
        M.load_mosei(tmp_path / "e.pkl")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    flag = tmp_path / "ran"
    p = _Payload()
    p.flag = flag
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"train": p}))
    with pytest.raises(ValueError, match="refusing to build"):
        M.load_mosei(tmp_path / "evil.pkl")
    assert not flag.exists()


def test_fetch_by_url_with_sha256_or_from_a_path(server, tmp_path):
    root, url = server
    src = write_pickle(root / "mosei.pkl", tiny_mosei())
    sha = D.sha256_of(src)
    out = tmp_path / "raw" / "mosei"
    got = M.fetch_mosei(out, url=f"{url}/mosei.pkl", sha256=sha, log=None)
    assert got == out / "mosei_senti_data.pkl" and got.read_bytes() == src.read_bytes()
    info = json.loads((out / M.INFO).read_text())
    assert info == {"source": f"{url}/mosei.pkl", "variant": "aligned", "file": got.name, "sha256": sha,
                    "size": src.stat().st_size}
    RangeHandler.requests.clear()
    M.fetch_mosei(out, url=f"{url}/mosei.pkl", sha256=sha, log=None)  # in place and verified: kept
    assert RangeHandler.requests == []
    with pytest.raises(D.DownloadError, match="sha256 mismatch"):
        M.fetch_mosei(tmp_path / "o2", url=f"{url}/mosei.pkl", sha256="0" * 64, log=None)
    assert not (tmp_path / "o2" / "mosei_senti_data.pkl").exists()
    with pytest.raises(ValueError, match="needs its sha256"):
        M.fetch_mosei(tmp_path / "o3", url=f"{url}/mosei.pkl", log=None)
    # from a path: checked when a sha256 is given, recorded either way
    un = M.fetch_mosei(tmp_path / "o4", from_path=src, variant="unaligned", link="symlink", log=None)
    assert un.name == "mosei_senti_data_noalign.pkl" and un.is_symlink()
    assert json.loads((tmp_path / "o4" / M.INFO).read_text())["sha256"] == sha
    with pytest.raises(D.DownloadError, match="sha256 mismatch"):
        M.fetch_mosei(tmp_path / "o5", from_path=src, sha256="1" * 64, log=None)
    assert not list((tmp_path / "o5").iterdir())
    assert M.load_mosei(got).splits["test"].labels.tolist() == [0, 1, 1, 1]


def test_written_as_a_feature_store(tmp_path):
    from dyncim.data.io import store
    path = write_pickle(tmp_path / "m.pkl", tiny_mosei())
    d = M.load_mosei(path, task="7class")
    outs = M.write_mosei_store(d, tmp_path / "features", source_sha256=D.sha256_of(path))
    splits = store.open_store(tmp_path / "features")
    for name, s in splits.items():
        assert outs[name] == tmp_path / "features" / name
        assert s.classes == list(M.TASKS["7class"]) and s.labels.tolist() == d.splits[name].labels.tolist()
        assert s.clips == d.splits[name].ids and s.ok.all()
        for m in M.MODALITIES:
            assert np.array_equal(s.arrays[m], d.splits[name].features[m])
    assert splits["train"].meta["nonfinite_replaced"] == {"text": 0, "audio": 3, "vision": 0}
    before = (tmp_path / "features" / "train" / "meta.json").stat().st_mtime_ns
    M.write_mosei_store(d, tmp_path / "features", source_sha256=D.sha256_of(path))  # same plan: kept
    assert (tmp_path / "features" / "train" / "meta.json").stat().st_mtime_ns == before
