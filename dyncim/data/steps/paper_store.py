"""The pipeline's second step for the store sources (dyncim.data.catalog: `build: "extract"`):
features from the raw files (dyncim.data.steps.paper_raw) into the store `data/features/<data>/<split>/`
(dyncim.data.io.store), then its summary, written last (dyncim.paths.store_ready): what training
reads. A source with an extraction recipe is extracted clip by clip (dyncim.data.extraction.extract); any
other writes its store itself (its module's `build`, dyncim.data.sources).

Resumable: clips already extracted are kept (dyncim.data.extraction.extract); the summary is written only
once every split is complete, so a pipeline reruns an interrupted step, which then extracts only
what is missing.
"""
from __future__ import annotations

import json
from pathlib import Path

from ...atomic import write_json
from .. import sources
from ..catalog import source as catalog_entry


def _ready(path: str | Path) -> tuple[Path, dict]:
    path = Path(path)
    try:
        return path.parent, json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; run the media step first") from None


def build_store(ds: dict, ready: str | Path, summary_path: str | Path, log=print) -> Path:
    """The store of data set configuration `ds` from the raw files `ready` names, into the folder
    of `summary_path` (one subfolder per split; dyncim.paths.store_ready), then the summary (per
    split: samples, failed clips); returns its path."""
    from ..io import store
    raw, rec = _ready(ready)
    summary_path = Path(summary_path)
    out = summary_path.parent
    name = ds["source"]
    entry = catalog_entry(name)
    if entry.build != "extract":
        raise ValueError(f"source {name!r}: builds a feature file (the feature-file step), not a store")
    if rec["source"] != name:
        raise ValueError(f"{ready}: holds {rec['source']} files, the data set is {name}")
    module = sources.module(name)
    summary: dict = {"source": name, "splits": {}}
    if entry.recipe:
        from ..extraction.extract import extract_manifest
        classes = module.classes(raw, rec)
        extract_manifest(raw / rec["clips"], entry.recipe, out, classes, workers=ds["media"]["workers"], log=log)
        summary["recipe"] = entry.recipe
    else:
        summary.update(module.build(ds, raw, rec, out, log))
    for split in ("train", "val", "test"):
        s = store.open_split(out / split)
        summary["splits"][split] = {"samples": len(s), "failed": int((~s.ok).sum())}
    write_json(summary_path, summary)
    log(f"{name}: store {out}: " + ", ".join(f"{k} {v['samples']}" for k, v in summary["splits"].items()))
    return summary_path
