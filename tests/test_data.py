import numpy as np
import pytest
import torch
import yaml

from dyncim import config as C
from dyncim.data.sets import feature_set as F
from dyncim.data.sources import synthetic as S
from dyncim.data.sources.mfeat import read_view
from dyncim.data.io.splits import read_split, stratified_split, write_split
from tests.conftest import REPO

PARAMS = C.resolve(yaml.safe_load((REPO / "params.yaml").read_text()))


def syn_cfg(**kw):
    cfg = {"modalities": ["dominant", "xor"], **kw}
    return C._fill_defaults(C.load_schema()["$defs"]["synthetic"], cfg)


def test_synthetic_is_deterministic_balanced_and_records_corruption():
    cfg = syn_cfg(per_class=50, corrupt=[{"modality": 0, "kind": "misleading", "fraction": 0.2},
                                         {"modality": 1, "kind": "noisy", "fraction": 0.1}])
    a, b = S.generate(cfg), S.generate(cfg)
    assert all(np.array_equal(x, y) for x, y in zip(a["views"], b["views"]))
    assert np.bincount(a["labels"]).tolist() == [50] * 8
    codes = a["corrupted"]
    assert (codes[:, 0] == S.MISLEADING).sum() == 80 and (codes[:, 1] == S.NOISY).sum() == 40
    assert set(np.unique(codes[:, 0])) == {0, 2}
    c = S.generate({**cfg, "seed": 1})
    assert not np.array_equal(a["views"][0], c["views"][0])


def test_missing_and_scaled_noise_are_recorded_and_visible():
    """`missing` zeroes the view; `noisy` with `scale` widens the noise; both are deterministic,
    recorded per sample, and leave the other modalities and the default noise unchanged."""
    tri = {"modalities": ["dominant", "xor", "linear"], "per_class": 50}
    cfg = syn_cfg(**tri, corrupt=[{"modality": 2, "kind": "missing", "fraction": 0.3},
                                  {"modality": 1, "kind": "noisy", "fraction": 0.2, "scale": 3.0}])
    a, b = S.generate(cfg), S.generate(cfg)
    assert all(np.array_equal(x, y) for x, y in zip(a["views"], b["views"]))
    codes, (_, xor, lin) = a["corrupted"], a["views"]
    gone, loud = codes[:, 2] == S.MISSING, codes[:, 1] == S.NOISY
    assert gone.sum() == 120 and loud.sum() == 80 and (codes[:, 0] == S.CLEAN).all()
    assert S.CORRUPTION_CODES["missing"] == S.MISSING
    assert (lin[gone] == 0).all() and (np.abs(lin[~gone]).sum(1) > 0).all()
    # visible without labels: scaled noise is about 3x the spread of the clean inputs
    ratio = np.linalg.norm(xor[loud], axis=1).mean() / np.linalg.norm(xor[~loud], axis=1).mean()
    assert 2.5 < ratio < 3.5
    # scale 1 is the default noise, value for value
    noisy = [{"modality": 1, "kind": "noisy", "fraction": 0.2}]
    plain = S.generate(syn_cfg(**tri, corrupt=noisy))
    one = S.generate(syn_cfg(**tri, corrupt=[{**noisy[0], "scale": 1.0}]))
    assert all(np.array_equal(x, y) for x, y in zip(plain["views"], one["views"]))


def test_misleading_samples_point_at_another_class():
    cfg = syn_cfg(per_class=200, dominant={"dim": 256, "scale": 0.5},
                  corrupt=[{"modality": 0, "kind": "misleading", "fraction": 0.25}])
    g = S.generate(cfg)
    x, y, bad = g["views"][0], g["labels"], g["corrupted"][:, 0] == S.MISLEADING
    means = np.stack([x[(y == c) & ~bad].mean(0) for c in range(8)])
    nearest = np.argmax(x @ means.T, axis=1)
    assert (nearest[~bad] == y[~bad]).mean() > 0.95        # clean: its own class
    assert (nearest[bad] == y[bad]).mean() < 0.05          # misleading: confidently another class


def test_xor_modality_is_invisible_linearly_but_decodable():
    def decoded(g):
        x = g["views"][1]
        bits = (np.sign(x[:, 0:6:2] * x[:, 1:6:2]) > 0).astype(int)
        return bits[:, 0] + 2 * bits[:, 1] + 4 * bits[:, 2]
    # the class code is exactly the signs of the coordinate-pair products; noise flips some
    exact = S.generate(syn_cfg(per_class=300, xor={"noise": 0.0, "noise_dims": 10}))
    assert (decoded(exact) == exact["labels"]).all()
    g = S.generate(syn_cfg(per_class=300))
    x, y = g["views"][1], g["labels"]
    assert 0.7 < (decoded(g) == y).mean() < 1.0
    # no linear signal: class means of every coordinate are near zero
    means = np.stack([x[y == c].mean(0) for c in range(8)])
    assert np.abs(means).max() < 0.25


def test_stratified_split_is_fixed_and_balanced(tmp_path):
    labels = np.repeat(np.arange(10), 200)
    s1, s2 = stratified_split(labels, 0.6, 0.2, 0), stratified_split(labels, 0.6, 0.2, 0)
    assert (s1 == s2).all() and not (s1 == stratified_split(labels, 0.6, 0.2, 1)).all()
    for c in range(10):
        counts = {k: int(((labels == c) & (s1 == k)).sum()) for k in ("train", "val", "test")}
        assert counts == {"train": 120, "val": 40, "test": 40}
    write_split(tmp_path / "s.csv", labels, s1)
    assert (read_split(tmp_path / "s.csv", labels) == s1).all()


def test_split_file_errors(tmp_path):
    labels = np.array([0, 1, 0, 1])
    p = tmp_path / "s.csv"
    p.write_text("index,label,split\n0,0,train\n1,1,val\n2,0,test\n7,1,train\n")
    with pytest.raises(ValueError, match="index 7 does not exist"):
        read_split(p, labels)
    p.write_text("index,label,split\n0,0,train\n1,1,val\n2,0,test\n")
    with pytest.raises(ValueError, match="3 rows"):
        read_split(p, labels)
    p.write_text("index,label,split\n0,0,train\n1,0,val\n2,0,test\n3,1,train\n")
    with pytest.raises(ValueError, match="sample 1 has label 0"):
        read_split(p, labels)


def test_features_standardise_with_train_statistics_only(tmp_path):
    ds = PARAMS["datasets"]["synthetic-bi"] | {"synthetic": syn_cfg(per_class=40)}
    F.make_split(ds, PARAMS["split"], None, tmp_path / "s.csv")
    F.build(ds, None, tmp_path / "s.csv", tmp_path / "f.pt")
    fs = F.load(tmp_path / "f.pt")
    tr, te = fs.index("train"), fs.index("test")
    for v in fs.views:
        assert torch.allclose(v[tr].mean(0), torch.zeros(v.shape[1]), atol=1e-5)
        assert torch.allclose(v[tr].std(0, unbiased=False), torch.ones(v.shape[1]), atol=1e-4)
        assert v[te].mean(0).abs().max() > 1e-3  # test statistics were not used
    assert fs.corrupted.shape == (320, 2) and fs.names == ["dominant", "xor"]


def test_a_failing_sensor_reads_fresh_noise_in_training_batches_only(tmp_path):
    """`redraw`: a training batch gives the noisy samples of that modality a fresh reading with the
    train noise rows' mean and spread (so it cannot be memorised); clean rows, the other
    modalities, and evaluation batches read the stored features; a set without `redraw` draws no
    random number."""
    corrupt = [{"modality": 1, "kind": "noisy", "fraction": 0.3, "scale": 3.0, "redraw": True}]
    ds = {"source": "synthetic", "synthetic": syn_cfg(per_class=40, corrupt=corrupt)}
    F.make_split(ds, PARAMS["split"], None, tmp_path / "s.csv")
    F.build(ds, None, tmp_path / "s.csv", tmp_path / "f.pt")
    fs = F.load(tmp_path / "f.pt")
    tr = fs.index("train")
    noisy = fs.corrupted[tr, 1] == S.NOISY
    assert 0 < noisy.sum() < len(tr) and set(fs.redraw) == {1}
    g = torch.Generator().manual_seed(0)
    a, b = fs.batch(tr, train=True, generator=g), fs.batch(tr, train=True, generator=g)
    assert torch.equal(a[0], fs.views[0][tr])                       # the other modality as stored
    assert torch.equal(a[1][~noisy], fs.views[1][tr][~noisy])       # clean rows as stored
    assert not torch.isclose(a[1][noisy], b[1][noisy]).any()        # a fresh reading every time
    assert not torch.isclose(a[1][noisy], fs.views[1][tr][noisy]).any()
    # the same spread as the stored noise: 3x the view's, far above the clean rows' after standardising
    fresh_sd, stored_sd = a[1][noisy].std(0).mean(), fs.views[1][tr][noisy].std(0).mean()
    assert abs(float(fresh_sd / stored_sd) - 1) < 0.25 and fresh_sd > 2 * fs.views[1][tr][~noisy].std(0).mean()
    assert all(torch.equal(x, v[tr]) for x, v in zip(fs.batch(tr, train=False, generator=g), fs.views))
    sub = fs.subset([1])
    assert set(sub.redraw) == {0} and not torch.equal(sub.batch(tr, True, g)[0], fs.views[1][tr])
    plain = fs.subset([0])
    state = g.get_state()
    plain.batch(tr, train=True, generator=g)
    assert plain.redraw is None and torch.equal(g.get_state(), state)
    with pytest.raises(C.ParamsError, match="redraw: only a noisy corruption"):
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        raw["datasets"]["synthetic-missing"]["synthetic"]["corrupt"][0]["redraw"] = True
        C.resolve(raw)


def _save(tmp_path, **over):
    fs = {"format": 1, "names": ["a"], "n_classes": 2, "views": [torch.zeros(6, 3)],
          "labels": torch.tensor([0, 1, 0, 1, 0, 1]), "split": torch.tensor([0, 0, 1, 1, 2, 2], dtype=torch.int8),
          "corrupted": None, **over}
    torch.save(fs, tmp_path / "f.pt")
    return tmp_path / "f.pt"


@pytest.mark.parametrize("over, message", [
    ({"labels": torch.tensor([0, 1, 0, 5, 0, 1])}, "labels out of range"),
    ({"labels": torch.tensor([0.0, 1, 0, 1, 0, 1])}, "int64"),
    ({"views": [torch.zeros(5, 3)]}, "view 'a' must be float32 of shape \\(6, d\\)"),
    ({"views": [torch.zeros(6, 3, dtype=torch.float64)]}, "float64"),
    ({"split": torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.int8)}, "test split is empty"),
])
def test_feature_file_errors(tmp_path, over, message):
    with pytest.raises(ValueError, match=message):
        F.load(_save(tmp_path, **over))


def test_truncated_feature_file(tmp_path):
    p = _save(tmp_path)
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable feature file"):
        F.load(p)


def test_mfeat_csv_errors(tmp_path):
    (tmp_path / "mfeat-mor.csv").write_text("0,1,2,3,4,5,0\n" + "1,2,3,4,5,6,0\n" * 10)
    with pytest.raises(ValueError, match=r"shape \(10, 7\), expected \(2000, 7\)"):
        read_view(tmp_path, "mor")
    rows = "\n".join("1,2,3,4,5,6,12" for _ in range(2000))
    (tmp_path / "mfeat-mor.csv").write_text("h\n" + rows)
    with pytest.raises(ValueError, match="labels must be integers in \\[0, 9\\]"):
        read_view(tmp_path, "mor")
    with pytest.raises(FileNotFoundError, match="mfeat-zer.csv: missing"):
        read_view(tmp_path, "zer")
