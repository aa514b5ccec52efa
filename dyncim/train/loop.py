"""The one training loop every method runs on (methods plug in through dyncim.methods.base hooks).

Feature sets live on the training device; batches are index slices of a seeded permutation
(or of what the method's sampler hook `epoch_indices` makes of it: dyncim.methods.base),
so the per-step work is tensor work with no host-device synchronisation: metrics accumulate as
tensors and are read once per epoch. Store-backed sets (dyncim.data.sets.media_set) gather, move and
augment each batch through the same `data.batch(idx, train, generator)`, their augmentation drawn
from the trainer's own generator (saved in the checkpoint). On CUDA, the encoders run in bfloat16
autocast and convolutions channels-last (dyncim.models.multimodal.prepare_for_device).
Validation picks the best epoch (never the test split): by accuracy, or on a multi-label set
(dyncim.multilabel) by micro-F1, whose figures then replace accuracy's in the history (`*_micro_f1`).
A resume checkpoint (model, optimiser, scheduler, RNG states, method state, best state, history)
is written atomically every `checkpoint_every` epochs; a run restarted with the same configuration
continues from it and ends exactly as an uninterrupted run (on CPU).
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

from .. import multilabel as ML
from ..atomic import remove_stale, torch_save
from .assemble import assemble
from .inference import evaluate_split
from .optim import make_optimizer, make_scheduler
from .view import RunView


AUGMENT_SEED = 0x5EED  # the augmentation generator's seed is the run's seed plus this


class NonFiniteLoss(RuntimeError):
    pass


class CheckpointMismatch(RuntimeError):
    pass


class Trainer:
    def __init__(self, data, method_cfg: dict, train_cfg: dict, seed: int,
                 device: torch.device, ckpt_path: Path, log_dir: Path | None, fingerprint: str,
                 tag: str = "", extras: dict | None = None):
        self.data, self.cfg, self.seed, self.device = data.to(device), train_cfg, seed, device
        self.ckpt_path, self.log_dir, self.fingerprint, self.tag = ckpt_path, log_dir, fingerprint, tag
        self.method_cfg = method_cfg   # logged with the train configuration as TensorBoard hparams
        self.train_idx = self.data.index("train")
        self.val_idx = self.data.index("val")
        bs = train_cfg["batch_size"]
        steps = (len(self.train_idx) + bs - 1) // bs
        torch.manual_seed(seed)
        # extras: what the method reads from outside its run (Context.extras; UMT: its teachers' best.pt)
        self.method, self.model = assemble(self.data, method_cfg, train_cfg, device, steps_per_epoch=steps,
                                           extras=extras)
        self.optimizer = make_optimizer(self.method.param_groups(self.model), train_cfg)
        self.scheduler = make_scheduler(self.optimizer, train_cfg)
        self.shuffle = torch.Generator().manual_seed(seed)
        # crops and flips of training batches (store-backed sets; feature sets draw nothing)
        self.augment = torch.Generator().manual_seed(seed + AUGMENT_SEED)
        self.epoch = 0
        self.multilabel = ML.is_multilabel(self.data)
        self.metric = "micro_f1" if self.multilabel else "acc"   # what validation selects on
        self.best = {f"val_{self.metric}": -1.0, "epoch": -1, "state": None}
        self.history: list[dict] = []
        self.global_step = 0

    # --- checkpoints --------------------------------------------------------------------------
    def state(self) -> dict:
        return {"fingerprint": self.fingerprint, "epoch": self.epoch, "global_step": self.global_step,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "method": self.method.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state(),
                        "augment": self.augment.get_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                "best": self.best, "history": self.history, "data": self.data_summary()}

    def data_summary(self) -> dict:
        """What a checkpoint must agree with in its data (checked on resume)."""
        shapes = [list(x) if isinstance(x, (tuple, list)) else x for x in self.data.shapes]
        return {"samples": int(len(self.data.labels)), "train samples": int(len(self.train_idx)),
                "val samples": int(len(self.val_idx)), "classes": int(self.data.n_classes),
                "modalities": list(self.data.names), "input shapes": shapes}

    def save_checkpoint(self) -> None:
        torch_save(self.state(), self.ckpt_path)

    def try_resume(self) -> bool:
        remove_stale(self.ckpt_path)
        if not self.ckpt_path.exists():
            return False
        try:
            s = torch.load(self.ckpt_path, map_location=self.device, weights_only=False)
        except Exception as e:
            raise CheckpointMismatch(f"{self.ckpt_path}: unreadable checkpoint ({e}); delete it to start over") from None
        if s.get("fingerprint") != self.fingerprint:
            return False  # a checkpoint of another configuration, code version or data: start afresh
        have = self.data_summary()
        if "data" in s and s["data"] != have:
            diff = "; ".join(f"{k}: {s['data'].get(k)} in the checkpoint, {v} in the data"
                             for k, v in have.items() if s["data"].get(k) != v)
            raise CheckpointMismatch(f"{self.ckpt_path}: does not fit its data ({diff}); delete it "
                                     f"to start over")
        try:
            self.model.load_state_dict(s["model"])
        except RuntimeError as e:
            raise CheckpointMismatch(f"{self.ckpt_path}: does not fit this model configuration: {e}") from None
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        try:
            self.method.load_state_dict(s["method"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointMismatch(f"{self.ckpt_path}: its method state does not fit this run "
                                     f"(data or method changed?): {e}; delete it to start over") from None
        torch.set_rng_state(s["rng"]["torch"].cpu())
        self.shuffle.set_state(s["rng"]["shuffle"].cpu())
        if "augment" in s["rng"]:
            self.augment.set_state(s["rng"]["augment"].cpu())
        if s["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in s["rng"]["cuda"]])
        self.epoch, self.global_step = s["epoch"], s["global_step"]
        self.best, self.history = s["best"], s["history"]
        if self.epoch < self.cfg["epochs"]:
            print(f"{self.tag}: resumed from {self.ckpt_path} at epoch {self.epoch}", file=sys.stderr)
        return True

    def view(self) -> RunView:
        """What the method's epoch hooks see of this run."""
        return RunView(epoch=self.epoch, seed=self.seed, model=self.model, optimizer=self.optimizer,
                       data=self.data, train_idx=self.train_idx, val_idx=self.val_idx,
                       train_cfg=self.cfg, method=self.method)

    # --- training -----------------------------------------------------------------------------
    def train_epoch(self):
        model, method, data = self.model, self.method, self.data
        model.train()
        bs = self.cfg["batch_size"]
        perm = self.train_idx[torch.randperm(len(self.train_idx), generator=self.shuffle).to(self.device)]
        perm = method.epoch_indices(self.view(), perm)   # the sampler hook (default: perm itself)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        f1_counts = torch.zeros(3, device=self.device, dtype=torch.long)   # multi-label: tp, fp, fn
        first_bad = torch.full((), -1, device=self.device, dtype=torch.long)
        for step, start in enumerate(range(0, len(perm), bs)):
            idx = perm[start:start + bs]
            xs = data.batch(idx, train=True, generator=self.augment)
            y = data.labels[idx]
            out = method.forward(model, xs, idx)
            res = method.loss(model, out, y, idx)
            self.optimizer.zero_grad(set_to_none=True)
            method.backward(model, res)
            method.after_backward(model, res)
            self.optimizer.step()
            method.after_step(model)
            loss, logits = res.loss.detach(), res.logits
            bad = ~torch.isfinite(loss)
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
            loss_sum += torch.where(bad, torch.zeros_like(loss), loss) * len(idx)
            if self.multilabel:
                f1_counts += ML.counts(logits, y)
            else:
                correct += (logits.detach().argmax(1) == y).sum()
            self.global_step += 1
        if (s := int(first_bad)) >= 0:
            raise NonFiniteLoss(f"{self.tag}: non-finite loss at epoch {self.epoch + 1}, step {s + 1}; "
                                f"lower the learning rate or check the inputs")
        n = len(perm)
        return float(loss_sum) / n, ML.micro_f1(f1_counts) if self.multilabel else float(correct) / n

    def validate(self) -> dict:
        fused, parts, _ = evaluate_split(self.model, self.method, self.data, self.val_idx,
                                         self.cfg["eval_batch_size"])
        y = self.data.labels[self.val_idx]
        if self.multilabel:
            res = {"val_loss": float(F.binary_cross_entropy_with_logits(fused, y)),
                   **{f"val_{k}": v for k, v in ML.f1_scores(fused, y).items()}}
            for name, z in zip(self.data.names, parts):
                res[f"val_micro_f1_{name}"] = ML.f1(z, y, "micro")
            return res
        res = {"val_loss": float(F.cross_entropy(fused, y)), "val_acc": float((fused.argmax(1) == y).float().mean())}
        for name, z in zip(self.data.names, parts):
            res[f"val_acc_{name}"] = float((z.argmax(1) == y).float().mean())
        return res

    def fit(self) -> dict:
        """Train to the configured number of epochs (resuming if possible); return the best state."""
        self.try_resume()
        writer = None
        if self.log_dir is not None and self.epoch < self.cfg["epochs"]:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step drops events past the checkpoint that a killed run may have written
            writer = SummaryWriter(str(self.log_dir), purge_step=self.epoch + 1)
        try:
            while self.epoch < self.cfg["epochs"]:
                self.method.begin_epoch(self.view())
                lr = self.optimizer.param_groups[0]["lr"]
                train_loss, train_acc = self.train_epoch()
                self.scheduler.step()
                key = f"val_{self.metric}"
                row = {"epoch": self.epoch + 1, "lr": lr, "train_loss": train_loss,
                       f"train_{self.metric}": train_acc, **self.validate()}
                if row[key] > self.best[key]:
                    self.best = {key: row[key], "epoch": row["epoch"],
                                 "state": copy.deepcopy(self.model.state_dict())}
                self.method.on_epoch_end(self.view())
                self.history.append(row)
                self.epoch += 1
                if writer is not None:
                    self._log(writer, row)
                    if self.epoch == self.cfg["epochs"]:   # before the final checkpoint: a rerun after a kill logs it
                        self._log_hparams(writer)
                if self.epoch % self.cfg["checkpoint_every"] == 0 or self.epoch == self.cfg["epochs"]:
                    self.save_checkpoint()
        finally:
            if writer is not None:
                writer.close()
        return self.best

    def _log(self, writer, row):
        e, k = row["epoch"], self.metric
        writer.add_scalar("loss/train", row["train_loss"], e)
        writer.add_scalar("loss/val", row["val_loss"], e)
        writer.add_scalar(f"{k}/train", row[f"train_{k}"], e)
        writer.add_scalar(f"{k}/val", row[f"val_{k}"], e)
        writer.add_scalar("lr", row["lr"], e)
        for name in self.data.names:
            writer.add_scalar(f"{k}_modality/val_{name}", row[f"val_{k}_{name}"], e)
        self.method.log(writer, e)

    def hparams(self) -> tuple[dict, dict]:
        """The run's hyper-parameters (seed, `method.*`, `train.*`; lists as JSON text, booleans as
        'true'/'false', as the HParams tab filters them) and its final metrics."""
        import json

        def scalar(v):
            if isinstance(v, bool):
                return "true" if v else "false"
            return v if isinstance(v, (int, float, str)) else json.dumps(v)
        hp = {"seed": self.seed}
        hp.update({f"method.{k}": scalar(v) for k, v in sorted(self.method_cfg.items()) if v is not None})
        hp.update({f"train.{k}": scalar(v) for k, v in sorted(self.cfg.items()) if v is not None})
        last, k = self.history[-1], self.metric
        metrics = {f"hparam/best_val_{k}": self.best[f"val_{k}"], "hparam/best_epoch": self.best["epoch"],
                   f"hparam/final_val_{k}": last[f"val_{k}"], f"hparam/final_train_{k}": last[f"train_{k}"],
                   "hparam/final_train_loss": last["train_loss"]}
        metrics.update({f"hparam/final_val_{k}_{n}": last[f"val_{k}_{n}"] for n in self.data.names})
        return hp, metrics

    def _log_hparams(self, writer):
        """TensorBoard's HParams tab: this run's session (hparams, then success) and its final
        metrics as scalars, in the run's own folder. No per-run experiment summary: the plugin
        would take one run's hparam list for all; without it, it unions every run's (methods and
        ablations have different keys)."""
        from torch.utils.tensorboard.summary import hparams
        hp, metrics = self.hparams()
        _, start, end = hparams(hp, metrics)
        fw = writer.file_writer
        fw.add_summary(start)
        fw.add_summary(end)
        for k, v in metrics.items():
            writer.add_scalar(k, v, self.epoch)
