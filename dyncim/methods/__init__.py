"""Training methods: each is one small class of hooks on the shared loop (dyncim.train.loop)."""
from __future__ import annotations

import importlib

from .catalog import CATALOG


def method_class(type_name: str):
    entry = CATALOG[type_name]
    module = importlib.import_module(f"{__name__}.{entry.module}")
    return getattr(module, entry.cls)


def build(cfg: dict, ctx):
    """Instantiate the method described by a resolved params entry (see dyncim.config)."""
    return method_class(cfg["type"])(cfg, ctx)
