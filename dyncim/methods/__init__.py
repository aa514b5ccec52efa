"""Training methods: each is one small class of hooks on the shared loop (dyncim.train.loop)."""
from __future__ import annotations

import importlib

from .catalog import CATALOG


def method_class(type_name: str, impl: str | None = None):
    """The class of method type `type_name`, implementation `impl` (a method configuration's
    `impl`; None: the default): the catalog entry says where it lives (dyncim.methods.catalog)."""
    module, cls = CATALOG[type_name].implementation(impl)
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def build(cfg: dict, ctx):
    """Instantiate the method described by a resolved params entry (see dyncim.config)."""
    return method_class(cfg["type"], cfg.get("impl"))(cfg, ctx)
