"""The pipeline's first step for the paper-scale sets (CREMA-D, Kinetics-Sounds, CMU-MOSEI): their
raw files into `data/raw/<data>/` (CREMA-D downloaded or taken from the user's folder;
Kinetics-Sounds located in the user's Kinetics-400 copy; MOSEI's pickle fetched or copied), then
a marker written last (dyncim.paths.media_ready) naming the clip list or the pickle.

Resumable: files already verified are kept; the marker is written only once everything is in, so
a pipeline reruns an interrupted step, which then brings in only what is missing. The features
come next (dyncim.data.paper_store).
"""
from __future__ import annotations

from pathlib import Path

from ..atomic import write_json


def bring_in(ds: dict, ready: str | Path, log=print) -> Path:
    """Raw files of data set configuration `ds` (its `source` and `media` settings, defaults
    filled) into the folder of `ready` (dyncim.paths.media_ready), then `ready`; returns it."""
    ready = Path(ready)
    out = ready.parent
    media, source = ds["media"], ds["source"]
    record: dict = {"source": source}
    if source == "crema-d":
        from .crema_d import download_crema_d
        split = media.get("split", "standard")    # absent: the standard split (not filled in)
        clips = download_crema_d(out, base_url=media.get("base_url"), from_dir=media.get("from_dir"),
                                 link=media["link"], jobs=media["jobs"], split=split, progress=True, log=log)
        record.update(clips=clips.name, split=split)
    elif source == "kinetics-sounds":
        from .kinetics_sounds import prepare_kinetics_sounds
        res = prepare_kinetics_sounds(out, from_dir=media.get("from_dir"), clip_list=media.get("clip_list"),
                                      jobs=media["jobs"], log=log)
        record.update(clips=res.clips.name, problems=res.problems.name, counts=res.counts)
        for line in res.lines():
            log(f"Kinetics-Sounds {line}")
    elif source == "ave":
        from .ave import prepare_ave
        counts = prepare_ave(out, media["from_dir"], jobs=media["jobs"], log=log)
        record.update(clips="clips.csv", problems="problems.csv", counts=counts)
    elif source == "vggsound":
        from .vggsound import prepare_vggsound
        counts = prepare_vggsound(out, media["index"], from_dir=media.get("from_dir"),
                                  clip_list=media.get("clip_list"), jobs=media["jobs"], log=log)
        record.update(clips="clips.csv", problems="problems.csv", classes="classes.txt", counts=counts)
    elif source == "ucf-101":
        from .flow import require_opencv
        from .ucf101 import VAL_GROUPS, VAL_SEED, prepare_ucf101
        require_opencv("UCF-101's flow modality")  # before the walk and probes, not at extraction
        res = prepare_ucf101(out, from_dir=media["from_dir"], lists=media.get("lists"),
                             val_groups=media.get("val_groups", VAL_GROUPS), val_seed=media.get("val_seed", VAL_SEED),
                             jobs=media["jobs"], log=log)
        record.update(clips=res.clips.name, problems=res.problems.name, classes="classes.txt", counts=res.counts,
                      val_groups=res.val_groups)
    elif source == "cmu-mosei":
        from .mosei import fetch_mosei
        pickle = fetch_mosei(out, url=media.get("url"), sha256=media.get("sha256"),
                             from_path=media.get("from_path"), variant=media["variant"], link=media["link"],
                             progress=True, log=log)
        record["pickle"] = pickle.name
    elif source in ("food-101", "mm-imdb"):   # images + texts indexed in the user's copy (not copied)
        from .pretrained import check_transformers
        check_transformers()   # the extraction needs it: say so before the walk
        if source == "food-101":
            from .food101 import prepare_food101 as prepare
        else:
            from .mmimdb import prepare_mmimdb as prepare
        record.update(prepare(out, media["from_dir"], log=log))
    else:
        raise ValueError(f"source {source!r}: not a paper-scale set")
    write_json(ready, record)
    return ready
