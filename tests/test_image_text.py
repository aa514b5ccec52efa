"""The image + text sets (UPMC Food-101, MM-IMDb) through the paper-scale path: tiny copies in the
real layouts (JPEGs made with PIL, texts as CSV / per-file / JSON), tiny randomly initialised
transformers models saved with save_pretrained (the same loading code as a hub name), discovery,
frozen-feature extraction into the store (and its resume), training and evaluation through the
CLI in this process, multi-label F1 against a hand computation, and the refusal of methods without
multi-label support."""
import csv
import json

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("transformers")

from dyncim import cli  # noqa: E402
from dyncim import config as C  # noqa: E402
from dyncim import multilabel as ML  # noqa: E402
from dyncim import paths  # noqa: E402
from dyncim.data.extraction import image_text, pretrained  # noqa: E402
from dyncim.data.io import store as S  # noqa: E402
from dyncim.data.sources.food101 import prepare_food101  # noqa: E402
from dyncim.data.sets.media_set import open_media  # noqa: E402
from dyncim.data.sources.mmimdb import GENRES, prepare_mmimdb  # noqa: E402
from tests.conftest import REPO  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "pizza", "sushi", "cheese", "fish", "rice", "a",
         "the", "love", "war", "story", "funny", "man"]
COLORS = {"pizza": (200, 60, 30), "sushi": (30, 60, 200), "Drama": (90, 90, 90), "Comedy": (240, 220, 40),
          "War": (60, 90, 40)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny BERT (with a WordPiece vocabulary written here) and a tiny ResNet, randomly
    initialised and saved as a hub download would leave them."""
    from transformers import BertConfig, BertModel, BertTokenizer, ResNetConfig, ResNetModel
    root = tmp_path_factory.mktemp("models")
    (root / "text").mkdir()
    (root / "text" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizer(str(root / "text" / "vocab.txt")).save_pretrained(root / "text")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(VOCAB), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, max_position_embeddings=64)).save_pretrained(root / "text")
    ResNetModel(ResNetConfig(embedding_size=4, hidden_sizes=[4, 6], depths=[1, 1], layer_type="basic")
                ).save_pretrained(root / "image")
    return {"text_model": str(root / "text"), "image_model": str(root / "image")}


def _jpeg(path, color, size=(40, 30)):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    px = np.clip(np.array(color)[None, None] + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(px.astype(np.uint8)).save(path, quality=90)


def food101(root, texts="csv"):
    """2 classes x (5 train + 2 test) images; one train image without a text (left out)."""
    rows = {"train": [], "test": []}
    for c, word in (("pizza", "pizza cheese"), ("sushi", "sushi fish rice")):
        for split, n in (("train", 5), ("test", 2)):
            for i in range(n):
                name = f"{c}_{split}{i}"
                _jpeg(root / "images" / split / c / f"{name}.jpg", COLORS[c])
                if split == "train" and i == 4 and c == "sushi":
                    continue  # no text: a problem
                text = f"the {word} {i}"
                if texts == "csv":
                    rows[split].append([f"{name}.jpg", text, c])
                else:
                    (root / "texts_txt" / c).mkdir(parents=True, exist_ok=True)
                    (root / "texts_txt" / c / f"{name}.txt").write_text(text)
    if texts == "csv":
        (root / "texts").mkdir()
        for split, r in rows.items():
            with open(root / "texts" / f"{split}_titles.csv", "w", newline="") as f:
                csv.writer(f).writerows(r)
    return root


MOVIES = {  # id: (split, genres); "Talk-Show" is not one of the 23
    "0000001": ("train", ["Drama"]), "0000002": ("train", ["Comedy"]), "0000003": ("train", ["Drama", "War"]),
    "0000004": ("train", ["Comedy", "Drama"]), "0000005": ("train", ["War"]), "0000006": ("train", ["Comedy", "Talk-Show"]),
    "0000007": ("dev", ["Drama"]), "0000008": ("dev", ["Comedy", "War"]), "0000009": ("dev", ["War"]),
    "0000010": ("test", ["Drama", "Comedy"]), "0000011": ("test", ["War"]), "0000012": ("test", ["Comedy"]),
    "0000013": ("test", ["Drama"]),   # its poster is missing: left out
}
WORDS = {"Drama": "love story", "Comedy": "funny man", "War": "war"}


def mmimdb(root):
    data = root / "dataset"
    data.mkdir(parents=True)
    split = {"train": [], "dev": [], "test": []}
    for i, (sp, genres) in MOVIES.items():
        split[sp].append(i)
        plot = "a " + " ".join(WORDS[g] for g in genres if g in WORDS)
        (data / f"{i}.json").write_text(json.dumps({"plot": [plot, "another summary"], "genres": genres,
                                                    "title": f"movie {i}"}))
        if i != "0000013":
            color = np.mean([COLORS[g] for g in genres if g in COLORS], axis=0).astype(int).tolist()
            _jpeg(data / f"{i}.jpeg", color)
    (root / "split.json").write_text(json.dumps(split))
    return root


def test_food101_discovery_csv_and_per_file_texts(tmp_path):
    for texts in ("csv", "txt"):
        raw = food101(tmp_path / texts / "Food-101", texts)
        res = prepare_food101(tmp_path / texts / "out", raw, log=lambda *_: None)
        assert res["texts"] == texts and res["classes"] == ["pizza", "sushi"]
        samples = image_text.read_samples(tmp_path / texts / "out" / "samples.csv")
        # 9 train images with a text: one per class (round(5 * 5000/67988) = 0, raised to 1) held out
        assert res["counts"] == {"train": 7, "val": 2, "test": 4}
        assert sorted(s.labels[0] for s in samples if s.split == "val") == ["pizza", "sushi"]
        assert {s.id: s.text for s in samples}["pizza/pizza_test1"] == "the pizza cheese 1"
        problems = list(csv.DictReader(open(tmp_path / texts / "out" / "problems.csv")))
        assert [(p["id"], p["problem"]) for p in problems] == [("sushi/sushi_train4", "no-text")]
    with pytest.raises(FileNotFoundError, match="images/train"):
        prepare_food101(tmp_path / "x", tmp_path, log=lambda *_: None)


def test_mmimdb_discovery(tmp_path):
    raw = mmimdb(tmp_path / "mmimdb")
    res = prepare_mmimdb(tmp_path / "out", tmp_path, log=lambda *_: None)   # the folder above: found too
    assert res["counts"] == {"train": 6, "val": 3, "test": 3} and res["other_genres"] == {"Talk-Show": 1}
    samples = {s.id: s for s in image_text.read_samples(tmp_path / "out" / "samples.csv")}
    assert samples["0000004"].labels == ("Drama", "Comedy")   # in GENRES' order
    assert samples["0000003"].text == "a love story war" and samples["0000008"].split == "val"
    assert samples["0000004"].image == str(raw / "dataset" / "0000004.jpeg")
    assert "0000013" not in samples


def test_image_input_is_the_imagenet_eval_transform(tmp_path):
    from PIL import Image
    img = np.zeros((300, 600, 3), dtype=np.uint8)
    img[:, 300:] = 255                      # right half white
    Image.fromarray(img).save(tmp_path / "a.png")
    x = pretrained.image_input(tmp_path / "a.png")
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    # shorter side 300 -> 256, width 512; the central 224 columns straddle the edge at 256
    black = (0 - pretrained.IMAGENET_MEAN) / pretrained.IMAGENET_STD
    white = (1 - pretrained.IMAGENET_MEAN) / pretrained.IMAGENET_STD
    np.testing.assert_allclose(x[:, 100, 0], black, atol=1e-6)
    np.testing.assert_allclose(x[:, 100, 223], white, atol=1e-6)


def _params(tmp_path, datasets, run, train=None):
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["seeds"] = [0]
    p["train"].update(epochs=3, hidden=[8], batch_size=4, **(train or {}))
    p["datasets"].update(datasets)
    p["run"] = run
    for m in p["methods"].values():
        m.pop("seeds", None)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def test_mm_imdb_extraction_resume_training_and_f1(tmp_path, models, monkeypatch, capsys):
    mmimdb(tmp_path / "raw")
    media = {"from_dir": str(tmp_path / "raw"), "batch_size": 2, **models}
    params = _params(tmp_path, {"mm": {"source": "mm-imdb", "media": media}},
                     {"datasets": ["mm"], "methods": ["joint", "unimodal"]})
    ready, summary = tmp_path / paths.media_ready("mm"), tmp_path / paths.store_ready("mm")
    argv = ["--data", "mm", "--params", str(params)]
    assert cli.main(["media", *argv, "--out", str(ready)]) == 0
    assert json.loads(ready.read_text())["counts"] == {"train": 6, "val": 3, "test": 3}

    # an extraction interrupted in the train split's second batch keeps its first batch
    calls = []
    real = pretrained.FrozenEncoders.encode_text

    def counting(self, texts):
        calls.append(len(texts))
        if len(calls) == 2 and crash:
            raise KeyboardInterrupt
        return real(self, texts)
    monkeypatch.setattr(pretrained.FrozenEncoders, "encode_text", counting)
    crash = True
    with pytest.raises(KeyboardInterrupt):
        cli.main(["extract", *argv, "--raw", str(ready), "--out", str(summary)])
    crash, calls[:] = False, []
    assert cli.main(["extract", *argv, "--raw", str(ready), "--out", str(summary)]) == 0
    assert calls == [2, 2, 2, 1, 2, 1]     # train: 4 left of 6 (2 batches); val 3; test 3
    calls[:] = []
    assert cli.main(["extract", *argv, "--raw", str(ready), "--out", str(summary)]) == 0
    assert calls == []                    # complete: nothing extracted, no model loaded

    s = S.open_split(summary.parent / "train")
    assert s.text.shape == (6, 8) and s.text.dtype == np.float32 and s.image.shape == (6, 6)
    assert s.meta["multilabel"] and s.classes == list(GENRES)
    assert s.meta["models"]["text_model"] == models["text_model"] and s.meta["models"]["transformers"]
    want = np.zeros(len(GENRES), np.float32)
    want[[GENRES.index("Drama"), GENRES.index("War")]] = 1
    np.testing.assert_array_equal(s.labels[s.clips.index("0000003")], want)
    # the features are the frozen models' outputs: recomputed here for one sample
    enc = pretrained.load_encoders(models["text_model"], models["image_model"], device="cpu")
    i = s.clips.index("0000005")
    np.testing.assert_allclose(s.text[i], real(enc, ["a war"])[0], rtol=1e-5, atol=1e-6)
    img = pretrained.image_input(tmp_path / "raw" / "dataset" / "0000005.jpeg")[None]
    np.testing.assert_allclose(s.image[i], enc.encode_images(img)[0], rtol=1e-5, atol=1e-6)

    data = open_media(summary.parent)
    assert data.multilabel and data.names == ["text", "image"] and data.shapes == [8, 6]
    assert [m.kind for m in data.mods] == ["vector", "vector"]

    for method in ("joint", "unimodal"):
        code = cli.main(["train", *argv[:2], "--method", method, "--data-file", str(summary), "--root",
                         str(tmp_path), "--params", str(params)])
        assert code == 0, capsys.readouterr().err[-3000:]
    ck = torch.load(tmp_path / paths.best_model("mm", "joint", 0), weights_only=False)
    assert "best_val_micro_f1" in ck["parts"][0] and "best_val_acc" not in ck["parts"][0]
    assert ck["parts"][0]["state"]["encoders.0.net.0.weight"].shape == (8, 8)   # the MLP on vectors
    assert cli.main(["evaluate", *argv, "--data-file", str(summary), "--root", str(tmp_path)]) == 0
    res = json.loads((tmp_path / paths.eval_file("mm", "joint", 0)).read_text())
    assert "acc" not in res and set(res["modalities"]) == {"text", "image"}
    # the evaluation's F1 equals F1 recomputed from the chosen model's test logits
    from dyncim.evaluation.evaluate import load_run
    from dyncim.train.inference import evaluate_split
    _, [(part, sub, method, model)] = load_run(tmp_path / paths.best_model("mm", "joint", 0), data, "cpu")
    test = data.index("test")
    fused, _, _ = evaluate_split(model, method, sub, test, 512)
    assert res["micro_f1"] == pytest.approx(ML.f1(fused, data.labels[test], "micro"))
    assert res["macro_f1"] == pytest.approx(ML.f1(fused, data.labels[test], "macro"))
    uni = json.loads((tmp_path / paths.eval_file("mm", "unimodal", 0)).read_text())
    assert "micro_f1" not in uni and 0 <= uni["modalities"]["text"]["own"] <= 1
    curves = (tmp_path / paths.curves_file("mm", "joint", 0)).read_text().splitlines()[0].split(",")
    assert "val_micro_f1" in curves and "val_macro_f1" in curves and "val_acc" not in curves

    assert cli.main(["report", "--params", str(params), "--root", str(tmp_path), "--quiet"]) == 0
    md = (tmp_path / paths.SUMMARY["md"]).read_text()
    assert "| method | micro_f1 | macro_f1 |" in md.replace("  ", " ")
    # the robustness sweep scores micro-F1: its clean block equals the evaluation's micro_f1
    assert cli.main(["robustness", *argv, "--data-file", str(summary), "--root", str(tmp_path)]) == 0
    rob = json.loads((tmp_path / paths.robustness_file("mm")).read_text())
    assert rob["metric"] == "micro_f1" and rob["runs"]["joint"]["0"]["clean"] == pytest.approx(res["micro_f1"])
    assert cli.main(["figures", *argv, "--root", str(tmp_path)]) == 0
    assert cli.main(["report-md", "--params", str(params), "--root", str(tmp_path)]) == 0
    report = (tmp_path / paths.REPORT).read_text()
    assert "| rank | method | seeds | micro-F1 | macro-F1 |" in report and "test micro-F1;" in report


def test_food101_trains_single_label(tmp_path, models, capsys):
    food101(tmp_path / "raw")
    media = {"from_dir": str(tmp_path / "raw"), **models}
    params = _params(tmp_path, {"food": {"source": "food-101", "media": media}},
                     {"datasets": ["food"], "methods": ["joint"]})
    ready, summary = tmp_path / paths.media_ready("food"), tmp_path / paths.store_ready("food")
    argv = ["--data", "food", "--params", str(params)]
    assert cli.main(["media", *argv, "--out", str(ready)]) == 0
    assert cli.main(["extract", *argv, "--raw", str(ready), "--out", str(summary)]) == 0
    data = open_media(summary.parent)
    assert not data.multilabel and data.classes == ["pizza", "sushi"] and len(data) == 13
    assert cli.main(["train", *argv[:2], "--method", "joint", "--data-file", str(summary), "--root", str(tmp_path),
                     "--params", str(params)]) == 0, capsys.readouterr().err[-3000:]
    assert cli.main(["evaluate", *argv, "--data-file", str(summary), "--root", str(tmp_path)]) == 0
    res = json.loads((tmp_path / paths.eval_file("food", "joint", 0)).read_text())
    assert 0 <= res["acc"] <= 1 and "micro_f1" not in res and "best_val_acc" in res


def test_f1_against_a_hand_computation():
    # 4 samples x 3 labels; logits > 0 predict the label (sigmoid > 0.5; exactly 0.5 does not)
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, -0.1], [0.0, -2.0, 3.0], [0.2, 0.7, -1.0]])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    # predictions: [1,0,1], [0,1,0], [0,0,1], [1,1,0]
    # label 0: tp 1 fp 1 fn 0 -> F1 2/3; label 1: tp 1 fp 1 -> 2/3; label 2: tp 1 fp 1 fn 1 -> 1/2
    # micro: tp 3, fp 3, fn 1 -> 6 / 10
    got = ML.f1_scores(logits, y)
    assert got["micro_f1"] == pytest.approx(6 / 10)
    assert got["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)
    assert ML.counts(logits, y).tolist() == [3, 3, 1]        # the training loop's running counts
    assert ML.micro_f1(ML.counts(logits, y)) == pytest.approx(6 / 10)
    # a label never present nor predicted counts 0 in the macro mean (scikit-learn's default)
    y4, z4 = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, -1.0]])
    assert ML.f1(z4, y4, "macro") == pytest.approx(0.5) and ML.f1(z4, y4, "micro") == pytest.approx(1.0)


def test_methods_without_multilabel_support_are_refused(tmp_path):
    media = {"from_dir": str(tmp_path)}
    params = _params(tmp_path, {"mm": {"source": "mm-imdb", "media": media}},
                     {"datasets": ["mm"], "methods": ["joint", "dyncim"]})
    with pytest.raises(C.ParamsError, match=r"'dyncim' \(dyncim\) does not support multi-label data sets "
                                            r"\(mm\); supported: joint, unimodal"):
        C.load(params)
    # and at assembly, for a configuration that skipped the params check
    from dyncim.methods import build
    from dyncim.methods.base import Context
    cfg = C.resolve(yaml.safe_load((REPO / "params.yaml").read_text()))["methods"]["ogm-ge"]
    with pytest.raises(ValueError, match="^ogm-ge: does not support multi-label data sets; supported: joint, unimodal"):
        build(cfg, Context(["text", "image"], 3, 10, 2, 1, torch.device("cpu"), multilabel=True))


def test_missing_transformers_names_the_extra(monkeypatch, tmp_path):
    import builtins
    real = builtins.__import__

    def no_transformers(name, *a, **k):
        if name == "transformers":
            raise ImportError(name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[paper\]'"):
        pretrained.require_transformers()
    # the media step says so before indexing anything
    import importlib.util
    from dyncim.data.steps.paper_raw import bring_in
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else find(name, *a))
    ds = {"source": "mm-imdb", "media": {"from_dir": str(tmp_path / "nowhere")}}
    with pytest.raises(ImportError, match=r"transformers, which is not installed: pip install -e '\.\[paper\]'"):
        bring_in(ds, tmp_path / "ready.json")
