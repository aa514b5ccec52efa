"""UMT: uni-modal teachers distilled into the multimodal model's encoders.

Du et al., "Improving Multi-Modal Learning with Uni-Modal Teachers", arXiv:2106.11059 (2021).
No official code found; the reference read is GeWu-Lab/BalanceBenchmark
`balancemm/trainer/UMT_trainer.py` (commit 4c1482f, file last changed in c7d2ae5), defaults from
its `configs/trainer_config.yaml` (UMT: scaling 10, modulation epochs 0-80).

Mechanism, per training step, with h^m the student's encoder features of modality m (the inputs of
the fusion head) and t^m the features of modality m's frozen unimodal teacher encoder on the same
batch (the same augmented inputs):
    L = CE(fused logits, y) + scaling * sum_m MSE(t^m, h^m),
    MSE(t, h) = mean over the batch and the feature dimensions of (t - h)^2   (nn.MSELoss),
inside the epochs modulation_starts <= epoch <= modulation_ends (0-based, both ends included, as
BalanceBenchmark's `starts <= current_epoch <= ends`); outside the window L = CE(fused) alone.
The gradient reaches the student only: the teachers run in eval mode under no_grad, with
requires_grad off, and are not part of the student model (not in its optimiser, its best.pt or
its resume checkpoint).

The teachers are the pipeline's OWN `unimodal` runs of the same data set and seed, never retrained:
the train job (dyncim.train.job.method_extras) passes
    Context.extras["teachers"] = <root>/models/<data>/<teacher>/seed<S>/best.pt
(`teacher`: the params.yaml method instance, default `unimodal`). `setup` loads every modality's
encoder from that file the way evaluation rebuilds a part (dyncim.evaluation.evaluate.load_run: the part's
in_dims, the teacher's own train_cfg and fusion, its best-on-validation state), freezes it and
keeps it on the method; a missing file is an error naming it. The job adds the file's content
hash to the run's resume fingerprint (dyncim.train.job.extras_fingerprint): a retrained teacher
retrains the UMT run instead of resuming it. A method built without
extras["teachers"] (evaluation's load_run rebuilds a UMT run to predict, which needs no teacher)
loads none, and training it fails at its first epoch with an error saying what is missing.

Deviations from BalanceBenchmark, and why:
  - teachers in eval mode: BalanceBenchmark builds them with create_model and never calls .eval(),
    so they run in train mode (dropout active, batch-norm running statistics updated by every
    teacher forward, although under no_grad). A frozen teacher here is the teacher as trained:
    dropout off, batch-norm statistics fixed, its state bit-identical after the run.
  - the teachers are the runs this pipeline trained (same data set, split, seed, encoders and
    training recipe), found by path; BalanceBenchmark loads the newest checkpoint of its
    `unimodalTrainer_<modality>` output folders (get_newest_path), one per modality.
  - BalanceBenchmark's config has `alpha: 1` for UMT, which its trainer never reads: left out.
  - the student's encoder features and the teacher's must have the same width (MSE needs it): a
    teacher trained with another encoder width is refused with both widths named.
  - under bf16 autocast (CUDA) the teacher encoders run with the student encoders' autocast dtype;
    both hand back float32 features, so the MSE is float32.
Any number of modalities: one teacher and one MSE term per modality, summed (BalanceBenchmark
loops over every modality's teacher the same way). A single modality is refused (min 2: with one
it is self-distillation from the unimodal run, not balancing).

Hooks (dyncim/methods/base.py says when each fires): setup (loads the frozen teachers from
ctx.extras["teachers"]); forward (the teachers' features in the window); loss (CE + scaled MSE);
on_epoch_start (checks the teachers are there, resets the epoch's statistics); log.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from ..models import build_model
from ..models.encoders import Encoder
from ..models.multimodal import Output
from .base import Method, StepResult, classification_loss


@dataclass
class DistillOutput(Output):
    """The student's forward pass plus the frozen teachers' features of the same batch."""
    teacher_feats: list[torch.Tensor] | None = None


def load_teachers(path: Path, names: list[str], n_classes: int, device, teacher: str = "unimodal"):
    """Modality m's frozen encoder (eval mode, no gradients, on `device`) of the unimodal run saved
    at `path` (its best.pt: one part per modality), for each name in `names`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"umt: teacher checkpoint {path} not found: train the `{teacher}` method on "
                                f"this data set and seed first (UMT distils from that run; it never trains it)")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    kind = ck.get("method_cfg", {}).get("type")
    if kind != "unimodal":
        raise ValueError(f"umt: teacher checkpoint {path} is a {kind!r} run; the teachers must be a unimodal run")
    if ck["n_classes"] != n_classes:
        raise ValueError(f"umt: teacher checkpoint {path} has {ck['n_classes']} classes, this data set {n_classes}")
    by_name = {tuple(p["names"]): p for p in ck["parts"]}
    encoders = []
    # building the teachers draws initial weights: keep them off the run's random stream
    with torch.random.fork_rng(devices=[]):
        for name in names:
            part = by_name.get((name,))
            if part is None:
                raise ValueError(f"umt: teacher checkpoint {path} has no unimodal model of modality {name!r}; "
                                 f"it has {[list(k) for k in by_name]}")
            dims = [d if isinstance(d, int) else tuple(d) for d in part["in_dims"]]
            model = build_model(dims, ck["n_classes"], part["fusion"], ck["train_cfg"])
            model.load_state_dict(part["state"])
            enc = model.encoders[0].eval().requires_grad_(False)
            encoders.append(enc.to(device))
    return encoders


class UMT(Method):
    fusion = "concat"
    min_modalities = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.teachers: list | None = None
        self.teacher_path = ctx.extras.get("teachers")
        self._distill_sum = torch.zeros(ctx.n_modalities, device=ctx.device)
        self._steps = 0

    def setup(self, model):
        if self.teacher_path is None:
            return   # evaluation: predicting needs no teacher
        self.teachers = load_teachers(self.teacher_path, self.ctx.names, self.ctx.n_classes, self.ctx.device,
                                      self.cfg["teacher"])
        for m, (t, s) in enumerate(zip(self.teachers, model.encoders)):
            if t.out_dim != s.out_dim:
                raise ValueError(f"umt: teacher of modality {self.ctx.names[m]!r} ({self.teacher_path}) has "
                                 f"{t.out_dim} features, the student's encoder {s.out_dim}: train both with "
                                 f"the same encoder width")

    def on_epoch_start(self, run):
        if self.teachers is None:
            raise ValueError(f"umt: no teacher checkpoint given: a UMT run distils from the `{self.cfg['teacher']}` "
                             f"method's run of the same data set and seed; the train job passes that run's best.pt "
                             f"as Context.extras['teachers'] (dyncim.train.job.method_extras)")
        self._distill_sum.zero_()
        self._steps = 0

    def teacher_features(self, model, xs) -> list[torch.Tensor]:
        """The frozen teachers' features of a batch (no gradients; the student encoders' autocast)."""
        feats = []
        with torch.no_grad():
            for t, s, x in zip(self.teachers, model.encoders, xs):
                if isinstance(t, Encoder):
                    t.amp = getattr(s, "amp", None)
                feats.append(t(x))
        return feats

    def forward(self, model, xs, idx):
        out = model(xs)
        if not self.modulating():
            return out
        return DistillOutput(out.feats, out.logits, out.fused, self.teacher_features(model, xs))

    def loss(self, model, out, y, idx):
        ce = classification_loss(out.fused, y)
        teacher = getattr(out, "teacher_feats", None)
        if teacher is None:
            return StepResult(ce, out.fused, out, y)
        distill = torch.stack([F.mse_loss(h, t) for h, t in zip(out.feats, teacher)])   # (M,)
        self._distill_sum += distill.detach()
        self._steps += 1
        return StepResult(ce + self.cfg["scaling"] * distill.sum(), out.fused, out, y, terms=distill)

    def log(self, writer, epoch):
        if not self._steps:
            return
        for name, d in zip(self.ctx.names, (self._distill_sum / self._steps).tolist()):
            writer.add_scalar(f"umt/distill_mse_{name}", d, epoch)
