"""RunView: what a method's epoch hooks may see of the run (instead of the concrete Trainer)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .inference import evaluate_split
from .optim import make_optimizer


@dataclass
class RunView:
    epoch: int                      # 0-based index of the epoch starting (on_epoch_start) or ending
    seed: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data: object                    # every split on the training device: a DataSet (dyncim.data.sets.dataset)
                                    # (model inputs: data.batch(idx, train, generator))
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    train_cfg: dict                 # the resolved training configuration
    method: object                  # the method running (for its label-free `predict`)

    @property
    def lr(self) -> float:
        """The current learning rate (of the first parameter group)."""
        return self.optimizer.param_groups[0]["lr"]

    def evaluate(self, index: torch.Tensor, model: torch.nn.Module | None = None):
        """(fused, per-modality logits, per-modality features) of an eval-mode pass over `index`,
        in batches of `eval_batch_size`."""
        return evaluate_split(self.model if model is None else model, self.method, self.data, index,
                              self.train_cfg["eval_batch_size"])

    def make_optimizer(self, groups: list[dict], lr: float | None = None) -> torch.optim.Optimizer:
        """A fresh optimiser of the run's kind (its learning rate by default)."""
        return make_optimizer(groups, self.train_cfg if lr is None else {**self.train_cfg, "lr": lr})
