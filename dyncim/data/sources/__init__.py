"""The data sources' code: one module per source of dyncim.data.catalog, each exposing the few
functions its catalog entry calls for (the steps look a source up there and import its module
here only when they run it). One helper lives beside them: actor_split.py, CREMA-D's
actor-disjoint split, which crema_d.py uses and which makes the shipped split file.

Feature-file sources (`build: "feature_file"`: mfeat, synthetic):
    read(ds, raw_dir) -> (views, labels, corrupted, names, n_classes)
        the configuration's modalities as float arrays (N, d) before standardising, int labels,
        the per-sample corruption codes (N, M) or None, the modality names, the class count;
        dyncim.data.sets.feature_set splits and standardises them.
    download(out_dir, **options) -> list[Path]     (`bring_in: "download"` only)
        the files of the entry's `downloads` into out_dir (data/raw/<source>/).

Store sources (`build: "extract"`: the paper-scale sets and a user's own files):
    bring_in(ds, out, log) -> dict
        the media step: the raw files into folder `out` (data/raw/<data>/: downloaded, or
        located in the user's copy and indexed); returns what its marker records besides the
        source (dyncim.data.steps.paper_raw writes it).
    classes(raw, record) -> list[str]               (an entry with a `recipe`)
        the class names, in index order; the store is then extracted from the marker's clip list
        (`record["clips"]`) by that recipe (dyncim.data.extraction.extract).
    build(ds, raw, record, out, log) -> dict        (an entry without one)
        the store's train / val / test folders under `out`; returns what the store's summary
        records besides the source and the per-split counts (dyncim.data.steps.paper_store).
    recipe() -> dyncim.data.extraction.extract.Recipe | VideoFlowRecipe
        only the module of a source that defines a recipe of its own name.

Either kind, where the entry says so:
    inputs(ds) -> list[str]     (`inputs`) the user's files its steps read (the rules' inputs)
    check(ds) -> None           (`check`) raises ValueError, one line naming the file, the row or
                                column and what was expected, when params resolve (before any
                                job runs; dyncim.config.check_data adds the data set's name)

`ds` is the data configuration as its job passes it (dyncim.config: defaults filled in).
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ..catalog import source


def module(name: str) -> ModuleType:
    """The module of source `name` (ValueError naming the sources when it is none)."""
    return importlib.import_module(f"{__name__}.{source(name).module}")
