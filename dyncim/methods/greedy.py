"""Greedy: balanced multi-modal learning against the greedy nature of multi-modal training.

Wu, Jastrzebski, Cho and Geras, "Characterizing and overcoming the greedy nature of learning in
multi-modal deep neural networks", ICML 2022. Official code read: github.com/nyukat/
greedy_multimodal_learning (commit a190e03): `src/balanced_mmtm.py` (MMTM_mitigate),
`src/model.py` (MMTM_MVCNN), `src/callbacks.py` (Bias_Mitigation_Strong), `src/framework.py`
(the training and evaluation loops), `train.py` (blend_loss), `configs/training_guided.gin`
(epsilon 0.01, curation window 5, starting epoch 2), `configs/recording.gin` + `configs/eval.gin`
(the conditional utilisation rate). Also read: BalanceBenchmark (GeWu-Lab/BalanceBenchmark,
`balancemm/trainer/Greedy_trainer.py` and the MMTM of `balancemm/models/avclassify_model.py`,
commit 39ed569); where it differs we follow the official code (listed below).

The model. One encoder per modality, each with its own linear head (sum fusion: z^m = W_m h^m +
b_m); the prediction is the mean of the heads' logits, the loss the sum of their cross-entropies
(official `blend_loss`). Between the encoders' stages (dyncim/models/encoders.py, the stage API)
sit MMTM blocks (multimodal transfer modules), after each of the encoders' last `mmtm_stages`
stages (official: 3 of ResNet-18's 4, after layer2, layer3, layer4). On the stage-k features
h_m (B, C_m, *rest) of every modality m:
    squeeze     s_m = mean of h_m over everything after the channel (H, W, frames; a vector as is)
    joint FC    z   = ReLU(W_s [s_1; ...; s_M] + b_s),   W_s: (int(2 sum_m C_m / ratio), sum_m C_m)
    excitation  e_m = sigmoid(W_m z + b_m)                (B, C_m)
    gating      h_m <- h_m * e_m   (per sample and channel, broadcast over the rest)
Every training step also updates, per block and modality, the running mean of the batch-mean
excitation over all training steps so far: a_m <- (mean_b e_m + t a_m) / (t + 1), t += 1.

Conditional learning speed (the official `compute_BDR`, after every backward that is not a
re-balancing step): with mu(P) = sum_{p in P} |grad p|^2 / sum_{p in P} |p|^2 for a parameter set P,
    M_bypass_m += mu(the MMTM excitations W_m, b_m of every block + the shared joint FCs)
    M_main_m   += mu(encoder m + head m)
    BDR_m = log10(M_bypass_m / M_main_m)     (cumulative sums from the first step on, never reset)
BDR_m is how fast branch m learns through the cross-modal path relative to its own path.

Re-balancing (the official `on_backward_end`). From the `starting_epoch`-th epoch on (1-based, as the
official loop counts; before it the sums accumulate but nothing is re-balanced), after every
normal step: if d = BDR_0 - BDR_1 has |d| > epsilon, a curation window opens for the next `window`
steps with caring modality c = 0 if d > 0 else 1; in those steps the MMTM excitation e_c of every
block is replaced by its running average a_c (a constant, so branch c gets no cross-modal
information and is pushed to learn from its own modality; its excitation FC gets a zero
gradient), the other modalities' gating is unchanged, and no speed is accumulated. After the
window, the next step is a normal one again.

Conditional utilisation rate (the official eval.py with `mmtm_off`; `diagnostics`, on the test
split): u(m_j | m_i) = (A_i - A_i^{-j}) / A_i, A_i the accuracy of head i, A_i^{-j} its accuracy
when modality j's squeeze s_j is replaced, in every MMTM block, by its mean over the training split
(eval mode), which removes m_j's information from branch i. With two modalities the imbalance is
d_util = u(m_1 | m_0) - u(m_0 | m_1) (reported as `d_util`).

More than two modalities (the paper and the official code define two): the MMTM's joint squeeze
and per-modality excitations take any number of modalities; the re-balancing rule becomes: a
window opens when max_m BDR_m - min_m BDR_m > epsilon, for c = argmax_m BDR_m (the branch that
relies most on the cross-modal path); with two modalities this is the official rule exactly.
u(m_j | m_i) is reported for every ordered pair, d_util only for two modalities.

Deviations from the official code:
- Encoders: the official model is two torchvision ResNet-18s on two views of ModelNet40; ours
  are the benchmark's encoders. With MLP encoders (feature sets) each Linear-ReLU block is a stage
  and the MMTMs sit after the last min(mmtm_stages, S) of the S stages (hidden [128, 64]: both).
  Encoders without stages (the transformer and LSTM sequence encoders) are refused.
- The running averages: the official MMTM updates them in every forward pass, validation and
  test passes included (the test split's inputs would enter the training state); here only in
  training steps. The official modality-1 average is accumulated from modality 0's excitations
  (`running_avg_weight_skeleton` is updated with `vis_out.mean(0)`, a slip); each modality keeps
  its own here.
- Evaluation: the official validation and test passes run in whatever curation state the last
  training step left; here evaluation always uses the full MMTM (no branch frozen).
- The frozen branch's excitation FC receives a zero gradient (what the official code got from
  its torch's `zero_grad()`, which kept zero tensors): with momentum (ours; the official config
  has momentum 0) it still moves by its momentum during the window.
- The speeds and the curation state stay on the device (no `.item()` per parameter and step).
- Training settings are the benchmark's shared ones (the official: SGD lr 0.1, no momentum or
  weight decay, batch 8, ReduceLROnPlateau on the loss, up to 300 epochs).
- Utilisation rates: the official recording run stores the training split's squeezes and the
  evaluation run switches both modalities' cross-modal flow off at once; here one pass per removed
  modality after the training-split means (per head the same for two modalities). A head with
  accuracy 0 gets u = 0.
- BalanceBenchmark departs from the official code in epsilon (0.001), MMTM also after layer1, the
  loss (cross-entropy of a concat head's fused output, not the heads' summed losses), no warm-up
  epoch and an initial curation counter of `window`, and its MMTM empties its running-average
  dictionary at the start of every forward before reading it; none of this is followed here.

Hooks (dyncim/methods/base.py says when each fires): setup (the MMTM blocks as
`model.extra[STAGE_MIXER]`, which every forward pass of the model, evaluation included, runs
between the encoders' stages), forward (the training pass: running averages, the frozen branch),
loss (the heads' summed cross-entropies), after_backward (learning speeds, the curation state),
on_epoch_start, predict (the heads' mean), diagnostics (utilisation rates), log, state_dict.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..models.multimodal import STAGE_MIXER
from .base import Method, StepResult, classification_loss


class MMTM(nn.Module):
    """One multimodal transfer module over M modalities' stage features (the official
    MMTM_mitigate, SEonly and shareweight off, for any number of inputs)."""

    def __init__(self, dims: list[int], ratio: float):
        super().__init__()
        self.dims = tuple(dims)
        total = sum(dims)
        hidden = max(1, int(2 * total / ratio))
        self.fc_squeeze = nn.Linear(total, hidden)
        self.fc_excite = nn.ModuleList(nn.Linear(hidden, d) for d in dims)
        for m, d in enumerate(dims):   # running mean of each modality's excitation (training steps)
            self.register_buffer(f"avg_scale_{m}", torch.zeros(d))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def avg_scale(self, m: int) -> torch.Tensor:
        return getattr(self, f"avg_scale_{m}")

    @staticmethod
    def squeeze(h: torch.Tensor) -> torch.Tensor:
        """(B, C): the mean over every dimension after the channel (float32 at least)."""
        dtype = torch.promote_types(h.dtype, torch.float32)
        if h.dim() == 2:
            return h.to(dtype)
        return h.mean(tuple(range(2, h.dim())), dtype=dtype)

    def excitations(self, hs, squeeze_fix=None):
        """Every modality's excitation e_m (B, C_m) and squeeze s_m; `squeeze_fix` = (j, v):
        modality j's squeeze replaced by v (C_j,) for every sample."""
        s = [self.squeeze(h) for h in hs]
        if squeeze_fix is not None:
            j, v = squeeze_fix
            s[j] = v.to(s[j].dtype).expand_as(s[j])
        z = torch.relu(self.fc_squeeze(torch.cat(s, 1)))
        return [torch.sigmoid(fc(z)) for fc in self.fc_excite], s

    def forward(self, hs, frozen=None, record=False, squeeze_sums=None, squeeze_fix=None):
        """hs gated by their excitations. `frozen` (M,) bool: modalities whose excitation is
        replaced by its running average; `record`: update the running averages first (a
        training step); `squeeze_sums`: per modality, a (C_m,) sum the batch's squeezes are added to."""
        e, s = self.excitations(hs, squeeze_fix)
        if squeeze_sums is not None:
            for acc, sm in zip(squeeze_sums, s):
                acc += sm.sum(0)
        avg = [self.avg_scale(m) for m in range(len(hs))]
        if record:
            t = self.steps.to(e[0].dtype)
            avg = [(em.detach().mean(0) + a * t) / (t + 1) for em, a in zip(e, avg)]
            for m, a in enumerate(avg):
                self.avg_scale(m).copy_(a)
            self.steps += 1
        if frozen is not None:
            e = [torch.where(frozen[m], a.expand_as(em), em) for m, (em, a) in enumerate(zip(e, avg))]
        return [h * em.to(h.dtype).view(*em.shape, *(1,) * (h.dim() - 2)) for h, em in zip(hs, e)]


class MMTMStages(nn.Module):
    """The MMTM blocks by stage: called after every stage k of the encoders (the model's stage
    mixer, dyncim.models.multimodal.STAGE_MIXER); stages without a block pass through."""

    def __init__(self, blocks: dict[int, MMTM]):
        super().__init__()
        self.stages = tuple(sorted(blocks))
        self.blocks = nn.ModuleList(blocks[k] for k in self.stages)

    def forward(self, k, hs, frozen=None, record=False, squeeze_sums=None, squeeze_fix=None):
        if k not in self.stages:
            return hs
        b = self.stages.index(k)
        return self.blocks[b](hs, frozen, record,
                              None if squeeze_sums is None else squeeze_sums[b],
                              None if squeeze_fix is None else (squeeze_fix[0], squeeze_fix[1][b]))


def speed_increments(groups_bypass, groups_main) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) each: mu(P) = sum |grad|^2 / sum |w|^2 of every modality's bypass and main parameters
    (a missing gradient counts as 0; a parameter whose gradient or weight is not finite is left
    out of both sums: CPU bfloat16 convolutions on 1 x 1 maps leave NaN in kernel taps that only
    ever meet padding, and a cumulative sum would stay NaN for the rest of the run)."""
    def mu(params):
        g = torch.stack([p.grad.detach().square().sum() if p.grad is not None
                         else p.detach().new_zeros(()) for p in params])
        w = torch.stack([p.detach().square().sum() for p in params])
        ok = torch.isfinite(g) & torch.isfinite(w)
        zero = torch.zeros_like(g)
        return torch.where(ok, g, zero).sum() / torch.where(ok, w, zero).sum()
    return (torch.stack([mu(ps) for ps in groups_bypass]).float(),
            torch.stack([mu(ps) for ps in groups_main]).float())


def curation_update(state: dict, inc_bypass: torch.Tensor, inc_main: torch.Tensor, unlocked: bool,
                    epsilon: float, window: int) -> dict:
    """One step of the official Bias_Mitigation_Strong.on_backward_end, on device tensors:
    state = {bypass, main: (M,) cumulative speeds; bdr: (M,) the last normal step's BDR;
    curation: () bool; curation_step, caring: () long}."""
    normal = ~state["curation"]
    zero = torch.zeros_like(inc_bypass)
    bypass = state["bypass"] + torch.where(normal, inc_bypass, zero)
    main = state["main"] + torch.where(normal, inc_main, zero)
    bdr = torch.where(normal, torch.log10(bypass / main), state["bdr"])
    new = {"bypass": bypass, "main": main, "bdr": bdr}
    if not unlocked:   # before starting_epoch: speeds accumulate, nothing is re-balanced
        return {**new, "curation": torch.zeros_like(state["curation"]),
                "curation_step": state["curation_step"], "caring": torch.zeros_like(state["caring"])}
    trigger = normal & (bdr.max() - bdr.min() > epsilon)
    step = torch.where(trigger, torch.zeros_like(state["curation_step"]),
                       torch.where(state["curation"], state["curation_step"] + 1, state["curation_step"]))
    curation = torch.where(trigger, torch.ones_like(trigger), state["curation"] & (step != window))
    caring = torch.where(trigger, bdr.argmax(),
                         torch.where(normal, torch.zeros_like(state["caring"]), state["caring"]))
    return {**new, "curation": curation, "curation_step": step, "caring": caring}


class Greedy(Method):
    fusion = "sum"
    min_modalities = 2
    STATE = ("bypass", "main", "bdr", "curation", "curation_step", "caring")

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if self.fusion != "sum":
            raise ValueError(f"greedy: needs sum fusion (one head per modality, as the official "
                             f"model's per-branch classifiers), got {self.fusion!r}")
        M, dev = ctx.n_modalities, ctx.device
        self.state = {"bypass": torch.zeros(M, device=dev), "main": torch.zeros(M, device=dev),
                      "bdr": torch.zeros(M, device=dev),
                      "curation": torch.zeros((), dtype=torch.bool, device=dev),
                      "curation_step": torch.zeros((), dtype=torch.long, device=dev),
                      "caring": torch.zeros((), dtype=torch.long, device=dev)}
        self._modalities = torch.arange(M, device=dev)
        self._curated = torch.zeros(M, dtype=torch.long, device=dev)   # this epoch's frozen steps
        self._steps = 0
        self._groups = None

    # --- set-up -------------------------------------------------------------------------------
    def setup(self, model):
        names = self.ctx.names
        counts = [len(getattr(enc, "stage_dims", ())) for enc in model.encoders]
        for name, enc, n in zip(names, model.encoders, counts):
            if n == 0:
                kind = getattr(enc, "kind", type(enc).__name__)
                raise ValueError(f"greedy: its MMTM blocks sit between the encoders' stages, and the "
                                 f"encoder of modality {name!r} ({kind}) has none; use encoder mlp "
                                 f"(vector features) or resnet18 (images, frame stacks)")
        if len(set(counts)) != 1:
            raise ValueError(f"greedy: the MMTM blocks join the encoders' stages one to one, but "
                             f"the encoders have different numbers of stages: "
                             f"{dict(zip(names, counts))}")
        S = counts[0]
        positions = range(S - min(self.cfg["mmtm_stages"], S), S)
        model.extra[STAGE_MIXER] = MMTMStages(
            {k: MMTM([enc.stage_dims[k] for enc in model.encoders], self.cfg["mmtm_ratio"])
             for k in positions})

    def groups(self, model):
        """Per modality, its bypass parameters (its excitation FCs + the shared joint FCs) and its
        main ones (encoder + head), as the official compute_BDR sorts them by name."""
        if self._groups is None:
            blocks = model.extra[STAGE_MIXER].blocks
            shared = [p for b in blocks for p in b.fc_squeeze.parameters()]
            bypass = [[p for b in blocks for p in b.fc_excite[m].parameters()] + shared
                      for m in range(model.n_modalities)]
            main = [list(enc.parameters()) + list(head.parameters())
                    for enc, head in zip(model.encoders, model.fusion.heads)]
            self._groups = (bypass, main)
        return self._groups

    def unlocked(self) -> bool:
        """Re-balancing allowed: from the starting_epoch-th epoch on (1-based, as the official loop)."""
        return self.epoch + 1 >= self.cfg["starting_epoch"]

    # --- per step -----------------------------------------------------------------------------
    def forward(self, model, xs, idx):
        frozen = None
        if self.unlocked():
            frozen = self.state["curation"] & (self._modalities == self.state["caring"])
            self._curated += frozen
        self._steps += 1
        mixer = model.extra[STAGE_MIXER]
        return model(xs, between=partial(mixer, frozen=frozen, record=model.training))

    def loss(self, model, out, y, idx):
        loss = sum(classification_loss(z, y) for z in out.logits)   # official blend_loss
        return StepResult(loss, self.predict(model, out), out, y)

    def after_backward(self, model, res):
        inc_bypass, inc_main = speed_increments(*self.groups(model))
        self.state = curation_update(self.state, inc_bypass, inc_main, self.unlocked(),
                                     self.cfg["epsilon"], self.cfg["window"])

    # --- per epoch ----------------------------------------------------------------------------
    def on_epoch_start(self, run):
        self._curated.zero_()
        self._steps = 0

    def log(self, writer, epoch):
        if not self._steps:
            return
        bdr = self.state["bdr"].tolist()
        share = (self._curated.float() / self._steps).tolist()
        for name, b, f in zip(self.ctx.names, bdr, share):
            writer.add_scalar(f"greedy/speed_{name}", b, epoch)       # BDR_m, the last normal step's
            writer.add_scalar(f"greedy/rebalanced_{name}", f, epoch)  # share of the epoch's steps frozen
        if len(bdr) == 2:
            writer.add_scalar("greedy/d_speed", bdr[0] - bdr[1], epoch)

    # --- inference ----------------------------------------------------------------------------
    def predict(self, model, out):
        return out.fused / len(out.logits)   # the heads' mean (official pred_y_eval)

    @torch.no_grad()
    def diagnostics(self, model, data, index, batch_size: int | None = None) -> dict:
        """The conditional utilisation rates u(m_j | m_i) on the samples `index` (the test split)."""
        mixer = model.extra[STAGE_MIXER]
        was_training = model.training
        model.eval()
        names, M = data.names, len(data.names)

        def chunks(ix):
            step = max(len(ix) if batch_size is None else batch_size, 1)
            return [ix[s:s + step] for s in range(0, len(ix), step)]

        train = data.index("train")
        sums = [[torch.zeros(d, device=self.ctx.device, dtype=torch.float64) for d in b.dims]
                for b in mixer.blocks]
        for ix in chunks(train):
            model(data.batch(ix), between=partial(mixer, squeeze_sums=sums))
        means = [[s / len(train) for s in block] for block in sums]
        y = data.labels[index]

        def head_acc(fix=None):
            hits = torch.zeros(M, device=y.device, dtype=torch.float64)
            for ix in chunks(index):
                logits = model(data.batch(ix), between=partial(mixer, squeeze_fix=fix)).logits
                hits += torch.stack([(z.argmax(1) == data.labels[ix]).sum() for z in logits]).to(hits)
            return (hits / len(index)).tolist()

        full = head_acc()
        res = {}
        for j in range(M):
            without = head_acc((j, [block[j] for block in means]))
            for i in range(M):
                if i != j:
                    res[f"u_{names[j]}_given_{names[i]}"] = (full[i] - without[i]) / full[i] if full[i] else 0.0
        if M == 2:
            res["d_util"] = res[f"u_{names[1]}_given_{names[0]}"] - res[f"u_{names[0]}_given_{names[1]}"]
        model.train(was_training)
        return res

    # --- resume -------------------------------------------------------------------------------
    def state_dict(self):
        return {k: self.state[k] for k in self.STATE}

    def load_state_dict(self, state):
        self.state = {k: state[k].to(self.ctx.device) for k in self.STATE}
