import json
import statistics

import torch

from dyncim.evaluation.evaluate import linear_probe
from dyncim.report.summary import collect, markdown


def test_linear_probe_separates_what_is_linearly_separable_and_nothing_else():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(600) % 3
    centers = torch.randn(3, 8, generator=g) * 4
    x = centers[y] + torch.randn(600, 8, generator=g)
    tr, va, te = slice(0, 360), slice(360, 480), slice(480, 600)
    r = linear_probe(x[tr], y[tr], x[va], y[va], x[te], y[te], 3)
    assert r["probe"] > 0.97 and r["probe_val"] > 0.97
    noise = torch.randn(600, 8, generator=g)
    r = linear_probe(noise[tr], y[tr], noise[va], y[va], noise[te], y[te], 3)
    assert r["probe"] < 0.5  # chance is 1/3


def test_report_aggregates_mean_and_std_over_seeds(tmp_path):
    params = {"run": {"datasets": ["d"], "methods": ["joint", "dyncim"]},
              "methods": {"joint": {"type": "joint", "seeds": [0, 1]}, "dyncim": {"type": "dyncim", "seeds": [0, 1, 2]}}}
    accs = {"joint": [0.5, 0.7], "dyncim": [0.8, 0.9, 1.0]}
    for m, values in accs.items():
        for s, a in enumerate(values):
            p = tmp_path / "results" / "eval" / "d" / m / f"seed{s}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"acc": a, "macro_f1": a, "modalities": {"x": {"own": a / 2, "probe": a}},
                                     **({"diagnostics": {"gate_x": 0.25}} if m == "dyncim" else {})}))
    table = collect(params, tmp_path)
    assert table["d"]["joint"]["acc"]["mean"] == 0.6
    assert table["d"]["joint"]["acc"]["std"] == statistics.stdev([0.5, 0.7])
    assert table["d"]["dyncim"]["x_own"]["mean"] == 0.45
    assert table["d"]["dyncim"]["gate_x"] == {"mean": 0.25, "std": 0.0, "n": 3}
    md = markdown(table, params)
    ranked = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| dyncim") or line.startswith("| joint")]
    assert ranked[:2] == ["dyncim", "joint"]  # ranked by accuracy
    assert "0.900 ± 0.100" in md and "gate_x" in md


def test_a_checkpoint_saved_before_a_method_key_was_added_still_loads(tmp_path):
    """Method keys added later (DynCIM's impl, gate_input_grad, gate_reliability) take their
    defaults when an older checkpoint is evaluated."""
    import torch
    from dyncim import config as C
    from dyncim.evaluation.evaluate import evaluate_run
    from dyncim.train.loop import Trainer
    from tests.conftest import TRAIN_CFG, tiny_features
    feats = tiny_features()
    cfg = {"type": "dyncim", **C._fill_defaults(C.load_schema()["$defs"]["method_dyncim"], {})}
    t = Trainer(feats, cfg, {**TRAIN_CFG, "epochs": 1}, 0, torch.device("cpu"), tmp_path / "l.pt", None, "f")
    best = t.fit()
    old = {k: v for k, v in cfg.items() if k not in ("impl", "gate_input_grad", "gate_reliability")}
    path = tmp_path / "best.pt"
    torch.save({"data": "d", "method": "dyncim", "seed": 0, "method_cfg": old, "train_cfg": t.cfg,
                "n_classes": feats.n_classes, "names": feats.names,
                "parts": [{"modalities": [0, 1], "names": feats.names, "fusion": "sum", "best_epoch": 1,
                           "best_val_acc": best["val_acc"], "state": best["state"], "in_dims": [5, 4]}]}, path)
    assert 0 <= evaluate_run(path, feats)["acc"] <= 1


def test_diagnostics_are_a_method_hook_called_once_on_the_test_split(tmp_path, monkeypatch):
    """Method.diagnostics is part of the contract (dyncim.methods.base): by default none (no
    `diagnostics` in the record); a method that has some gets the test split in evaluation batches."""
    import torch
    from dyncim import config as C
    from dyncim.evaluation.evaluate import evaluate_run
    from dyncim.methods.base import Method
    from dyncim.methods.joint import Joint
    from dyncim.train.loop import Trainer
    from tests.conftest import TRAIN_CFG, tiny_features
    feats = tiny_features()
    cfg = {"type": "joint", **C._fill_defaults(C.load_schema()["$defs"]["method_joint"], {})}
    t = Trainer(feats, cfg, {**TRAIN_CFG, "epochs": 1}, 0, torch.device("cpu"), tmp_path / "l.pt", None, "f")
    best = t.fit()
    path = tmp_path / "best.pt"
    torch.save({"data": "d", "method": "joint", "seed": 0, "method_cfg": cfg, "train_cfg": t.cfg,
                "n_classes": feats.n_classes, "names": feats.names,
                "parts": [{"modalities": [0, 1], "names": feats.names, "fusion": "concat", "best_epoch": 1,
                           "best_val_acc": best["val_acc"], "state": best["state"], "in_dims": [5, 4]}]}, path)
    assert Method.diagnostics(None, None, feats, feats.index("test")) == {}
    assert "diagnostics" not in evaluate_run(path, feats)
    calls = []

    def diagnostics(self, model, data, index, batch_size=None):
        calls.append((data.names, index.tolist(), batch_size, model.training))
        return {"x": 1.0}
    monkeypatch.setattr(Joint, "diagnostics", diagnostics)
    assert evaluate_run(path, feats)["diagnostics"] == {"x": 1.0}
    assert calls == [(feats.names, feats.index("test").tolist(), TRAIN_CFG["eval_batch_size"], False)]
