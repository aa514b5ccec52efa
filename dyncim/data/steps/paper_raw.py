"""The pipeline's first step for the store sources (dyncim.data.catalog: `bring_in: "media"`): their
raw files into `data/raw/<data>/` (downloaded, or located and indexed in the user's copy: each
source's `bring_in`, dyncim.data.sources), then a marker written last (dyncim.paths.media_ready)
naming what was brought in (a clip list, a pickle, a sample table, the user's files).

Resumable: files already verified are kept; the marker is written only once everything is in, so
a pipeline reruns an interrupted step, which then brings in only what is missing. The features
come next (dyncim.data.steps.paper_store).
"""
from __future__ import annotations

from pathlib import Path

from ...atomic import write_json
from .. import sources
from ..catalog import source as catalog_entry


def bring_in(ds: dict, ready: str | Path, log=print) -> Path:
    """Raw files of data set configuration `ds` (its `source` and settings, defaults filled) into
    the folder of `ready` (dyncim.paths.media_ready), then `ready`; returns it."""
    ready = Path(ready)
    name = ds["source"]
    if catalog_entry(name).bring_in != "media":
        raise ValueError(f"source {name!r}: has no media step (its raw files come in by "
                         f"{catalog_entry(name).bring_in or 'nothing: it is generated'})")
    record = {"source": name, **sources.module(name).bring_in(ds, ready.parent, log)}
    write_json(ready, record)
    return ready
