"""Context -> method -> model -> method.setup: how a run's method and model are put together,
written once for training and for evaluation (the order fixes the random initialisation)."""
from __future__ import annotations

import torch

from ..methods import build as build_method
from ..multilabel import is_multilabel
from ..methods.base import Context, Method
from ..models import MultimodalModel, build_model
from ..models.multimodal import prepare_for_device


def assemble(data, method_cfg: dict, train_cfg: dict, device: torch.device,
             steps_per_epoch: int = 1, n_samples: int | None = None,
             extras: dict | None = None) -> tuple[Method, MultimodalModel]:
    """The method and its model (on `device`, with its CUDA settings: `prepare_for_device`) for
    the modalities of `data` (a dyncim.data.sets.dataset.DataSet: a FeatureSet or a MediaSet)."""
    ctx = Context(names=data.names, n_classes=data.n_classes,
                  n_samples=len(data.labels) if n_samples is None else n_samples,
                  epochs=train_cfg["epochs"], steps_per_epoch=steps_per_epoch, device=device,
                  corrupted=data.corrupted, multilabel=is_multilabel(data), extras=dict(extras or {}))
    method = build_method(method_cfg, ctx)
    model = build_model(data.shapes, data.n_classes, method.fusion, train_cfg)
    method.setup(model)
    return method, prepare_for_device(model.to(device), train_cfg, device)
