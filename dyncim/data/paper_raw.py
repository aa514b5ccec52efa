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
        clips = download_crema_d(out, base_url=media.get("base_url"), from_dir=media.get("from_dir"),
                                 link=media["link"], jobs=media["jobs"], progress=True, log=log)
        record["clips"] = clips.name
    elif source == "kinetics-sounds":
        from .kinetics_sounds import prepare_kinetics_sounds
        res = prepare_kinetics_sounds(out, from_dir=media.get("from_dir"), clip_list=media.get("clip_list"),
                                      jobs=media["jobs"], log=log)
        record.update(clips=res.clips.name, problems=res.problems.name, counts=res.counts)
        for line in res.lines():
            log(f"Kinetics-Sounds {line}")
    elif source == "cmu-mosei":
        from .mosei import fetch_mosei
        pickle = fetch_mosei(out, url=media.get("url"), sha256=media.get("sha256"),
                             from_path=media.get("from_path"), variant=media["variant"], link=media["link"],
                             progress=True, log=log)
        record["pickle"] = pickle.name
    else:
        raise ValueError(f"source {source!r}: not a paper-scale set")
    write_json(ready, record)
    return ready
