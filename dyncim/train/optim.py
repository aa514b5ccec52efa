"""The optimiser and learning-rate schedule of a run, built from its training configuration.

Used by the loop and by methods that train a copy of the model (G-Blending's probes)."""
from __future__ import annotations

import torch


def make_optimizer(groups: list[dict], cfg: dict) -> torch.optim.Optimizer:
    """SGD or AdamW over parameter groups; a group may carry `lr_mult` (a method's own
    learning-rate multiplier, e.g. DynCIM's gate)."""
    groups = [{**{k: v for k, v in g.items() if k != "lr_mult"}, "lr": cfg["lr"] * g.get("lr_mult", 1.0)}
              for g in groups]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    return torch.optim.AdamW(groups, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def make_scheduler(opt: torch.optim.Optimizer, cfg: dict):
    if cfg["lr_step"]:
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg["lr_step"], gamma=cfg["lr_gamma"])
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
