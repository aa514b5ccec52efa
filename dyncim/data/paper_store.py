"""The pipeline's second step for the paper-scale sets: features extracted from the raw files
(dyncim.data.paper_raw) into the store `data/features/<data>/<split>/` (dyncim.data.store), then
its summary, written last (dyncim.paths.store_ready): what training reads.

Resumable: clips already extracted are kept (dyncim.data.extract); the summary is written only
once every split is complete, so a pipeline reruns an interrupted step, which then extracts only
what is missing.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_json

RECIPE = {"crema-d": "crema-d", "kinetics-sounds": "kinetics-sounds", "ave": "ave", "vggsound": "vggsound"}   # dyncim.data.extract.RECIPES
RECIPE["ucf-101"] = "ucf-101"   # RGB frames + optical flow (dyncim.data.extract.VideoFlowRecipe)


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
    from . import store
    raw, rec = _ready(ready)
    summary_path = Path(summary_path)
    out = summary_path.parent
    source = ds["source"]
    if rec["source"] != source:
        raise ValueError(f"{ready}: holds {rec['source']} files, the data set is {source}")
    summary: dict = {"source": source, "splits": {}}
    if source == "cmu-mosei":
        from .mosei import load_mosei, write_mosei_store
        info = json.loads((raw / "mosei.json").read_text())
        data = load_mosei(raw / rec["pickle"], task=ds["media"]["task"])
        write_mosei_store(data, out, source_sha256=info.get("sha256"))
        summary["task"] = ds["media"]["task"]
    elif source in ("food-101", "mm-imdb"):   # frozen pretrained features (dyncim.data.image_text)
        from .image_text import extract_store
        from .mmimdb import GENRES
        multilabel = source == "mm-imdb"
        extract_store(raw / rec["samples"], out, list(GENRES) if multilabel else rec["classes"], multilabel,
                      ds["media"], log=log)
        summary["models"] = {k: ds["media"].get(k) for k in ("text_model", "text_revision", "image_model",
                                                            "image_revision")}
    else:
        from .extract import extract_manifest
        classes = _classes(source, raw)
        extract_manifest(raw / rec["clips"], RECIPE[source], out, classes, workers=ds["media"]["workers"], log=log)
        summary["recipe"] = RECIPE[source]
    for split in ("train", "val", "test"):
        s = store.open_split(out / split)
        summary["splits"][split] = {"samples": len(s), "failed": int((~s.ok).sum())}
    write_json(summary_path, summary)
    log(f"{source}: store {out}: " + ", ".join(f"{k} {v['samples']}" for k, v in summary["splits"].items()))
    return summary_path


def _classes(source: str, raw: Path | None = None) -> list[str]:
    if source == "ucf-101":  # the shipped names, which the media step checked against classInd.txt and wrote
        from .flow import require_opencv
        from .ucf101 import CLASSES, read_classes as read_ucf
        require_opencv("UCF-101's flow modality")  # before any clip is decoded
        return read_ucf(raw / CLASSES)
    if source == "ave":  # shipped, in index order
        from .ave import read_classes as read_ave
        return read_ave()
    if source == "vggsound":  # the sorted labels of the user's vggsound.csv, written by the media step
        from .vggsound import read_classes as read_vggsound
        return read_vggsound(raw)
    if source == "crema-d":
        from .crema_d import LABELS
        return list(LABELS)
    from .kinetics_sounds import read_classes
    return read_classes()
