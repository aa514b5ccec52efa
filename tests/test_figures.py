import json
import struct

import pytest
import torch

from dyncim.report import figures
from dyncim import paths
from dyncim.evaluation import robustness
from tests.conftest import TRAIN_CFG, tiny_features
from tests.test_robustness import METHODS, pipeline  # noqa: F401  (fixture)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) of a valid PNG; fails on anything else."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


def assert_plausible(path):
    w, h = png_size(path)
    assert 300 <= w <= 4000 and 200 <= h <= 4000, (w, h)
    assert path.stat().st_size > 5000   # something is drawn


def constructed():
    acc = {"joint": {0: 0.80, 1: 0.82, 2: 0.81}, "dyncim": {0: 0.85, 1: 0.86, 2: 0.84, 3: 0.87, 4: 0.85},
           "unimodal": {}}
    own = {"a": {"joint": {0: 0.78, 1: 0.8, 2: 0.79}, "dyncim": {0: 0.7, 1: 0.72, 2: 0.71, 3: 0.7, 4: 0.7},
                 "unimodal": {0: 0.75, 1: 0.76, 2: 0.74}},
           "b": {"joint": {0: 0.3, 1: 0.32, 2: 0.31}, "dyncim": {0: 0.6, 1: 0.62, 2: 0.61, 3: 0.6, 4: 0.6},
                 "unimodal": {0: 0.65, 1: 0.66, 2: 0.64}}}
    return acc, own


def test_each_figure_kind_is_a_reproducible_png(tmp_path):
    acc, own = constructed()
    rows = lambda shift: [{"epoch": str(e), "val_acc": str(0.5 + 0.01 * e + shift)} for e in range(1, 11)]
    curve_runs = {"joint": [rows(0), rows(0.01)], "dyncim": [rows(0.02), rows(0.03)], "dyncim-no-gate": [rows(0)],
                  "unimodal:a": [rows(-0.1)]}
    scal = {s: {**{f"dyncim/{k}/{n}": [(e, 1.0 + 0.1 * e * (s + 1)) for e in range(1, 6)]
                   for k, _ in figures.PER_MODALITY for n in ("a", "b")},
                "dyncim/alpha": [(e, 0.5) for e in range(1, 6)],
                "dyncim/pace_admitted": [(e, 0.6 + 0.05 * e) for e in range(1, 6)]} for s in (0, 1)}
    levels = [0.0, 1.0, 2.0]
    run = lambda a: {"clean": a, "modalities": {n: {"levels": [a, a - 0.1, a - 0.2], "missing": a - 0.3}
                                                for n in ("a", "b")}}
    runs = {"joint": {"0": run(0.8), "1": run(0.82)}, "dyncim": {"0": run(0.85), "1": run(0.86)}}
    record = {"names": ["a", "b"], "levels": levels, "runs": runs,
              "summary": robustness.summarise(runs, ["a", "b"], len(levels))}
    draw = {
        "accuracy": lambda out: figures.accuracy(acc, out),
        "rebalance": lambda out: figures.rebalance(acc, own, out),
        "curves": lambda out: figures.curves(curve_runs, {"methods": ["joint", "dyncim", "unimodal:a"],
                                                          "ablations": ["dyncim", "dyncim-no-gate"]}, out),
        "dyncim": lambda out: figures.trajectories(scal, ["a", "b"], out),
        "robustness": lambda out: figures.robustness(record, out),
    }
    assert set(draw) == set(figures.KINDS)
    for kind, f in draw.items():
        out = f(tmp_path / "x" / f"{kind}.png")
        assert out == tmp_path / "x" / f"{kind}.png"
        assert_plausible(out)
        if kind in ("accuracy", "dyncim"):   # same numbers, same bytes (two kinds: drawing takes time)
            assert f(tmp_path / f"{kind}-again.png").read_bytes() == out.read_bytes()
    assert not list((tmp_path / "x").glob(".*.tmp"))   # written atomically, nothing left beside


def test_figures_of_a_data_set_from_the_pipeline_outputs(pipeline, tmp_path):
    root, params, fpath = pipeline
    rob = tmp_path / "rob.json"
    robustness.write(params, "tiny", fpath, rob, root=root)
    outs = figures.default_outputs("tiny", tmp_path / "figs")
    assert outs["accuracy"] == tmp_path / "figs" / "accuracy.png"
    written = figures.write_all(params, "tiny", outs, root=root, robustness_json=rob)
    assert written == outs
    for p in written.values():
        assert_plausible(p)
    assert figures.default_outputs("d")["curves"].as_posix() == "results/figures/d/curves.png"
    # the validation-curve panels: compared methods (unimodal per part) and DynCIM's ablations
    groups = figures.curve_groups(params, ["joint", "unimodal:dominant", "unimodal:xor", "dyncim", "dyncim-no-gate"])
    assert groups == {"methods": ["joint", "unimodal:dominant", "unimodal:xor", "dyncim"],
                      "DynCIM and its ablations": ["dyncim", "dyncim-no-gate"]}


def test_dyncim_trajectories_come_from_the_tensorboard_logs(pipeline):
    root, params, _ = pipeline
    sc = figures.read_scalars(root / paths.runs_dir("tiny", "dyncim", 1))
    for n in ("dominant", "xor"):
        for k, _ in figures.PER_MODALITY:
            assert [s for s, _ in sc[f"dyncim/{k}/{n}"]] == [1, 2]     # one value per epoch
    assert {"dyncim/alpha", "dyncim/pace_admitted"} <= set(sc)
    assert not any(t.startswith(("acc/", "hparam/")) for t in sc)          # only the prefix asked for


def test_every_run_logs_its_hparams_and_final_metrics_for_tensorboard(pipeline, tmp_path):
    """The HParams tab: each run folder holds its own session (hparams + success) and the final
    metrics as scalars, and no per-run experiment summary (the plugin then unions every run's
    hparams, so runs of methods with different hyper-parameters compare in one table)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata
    root, params, _ = pipeline
    best = {}
    for method, seed, sub in (("dyncim", 0, ""), ("dyncim-no-gate", 1, ""), ("joint", 0, ""), ("unimodal", 1, "xor")):
        run = root / paths.runs_dir("tiny", method, seed) / sub
        ea = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
        ea.Reload()
        content = ea.PluginTagToContent(metadata.PLUGIN_NAME)
        assert metadata.SESSION_START_INFO_TAG in content and metadata.SESSION_END_INFO_TAG in content
        assert metadata.EXPERIMENT_TAG not in content
        hp = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG]).hparams
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        assert end.status == 1   # STATUS_SUCCESS
        assert hp["seed"].number_value == seed and hp["train.epochs"].number_value == 2
        assert hp["train.hidden"].string_value == "[8]" and hp["method.type"].string_value == params["methods"][method]["type"]
        ck = torch.load(root / paths.best_model("tiny", method, seed), weights_only=False)
        part = ck["parts"][-1]
        vals = {t: ea.Scalars(t)[-1].value for t in ea.Tags()["scalars"] if t.startswith("hparam/")}
        assert vals["hparam/best_val_acc"] == pytest.approx(part["best_val_acc"])
        assert vals["hparam/best_epoch"] == part["best_epoch"]
        best[method] = hp
    assert best["dyncim"]["method.gate"].string_value == "true" and best["dyncim-no-gate"]["method.gate"].string_value == "false"
    assert "method.fusion" in best["joint"] and "method.sdc" not in best["joint"]


def test_hparams_of_a_trainer(tmp_path):
    from dyncim import config as C
    from dyncim.train.loop import Trainer
    cfg = {"type": "joint", **C._fill_defaults(C.load_schema()["$defs"]["method_joint"], {"fusion": "concat"})}
    t = Trainer(tiny_features(), cfg, {**TRAIN_CFG, "epochs": 1}, 3, torch.device("cpu"), tmp_path / "c.pt", None, "f")
    t.fit()   # no log folder: nothing is written, the values are still there
    hp, metrics = t.hparams()
    assert hp["seed"] == 3 and hp["method.fusion"] == "concat" and hp["train.hidden"] == json.dumps([8])
    assert metrics["hparam/best_val_acc"] == t.best["val_acc"] and metrics["hparam/best_epoch"] == 1
    assert set(metrics) >= {"hparam/final_val_acc_m0", "hparam/final_val_acc_m1", "hparam/final_train_loss"}
