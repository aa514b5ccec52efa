"""CREMA-D: 7,442 clips of 91 actors speaking with one of six emotions, as audio (WAV) and video (FLV).

The media are Git LFS objects of the public repository CheyneyComputerScience/CREMA-D. The
project pins them by `resources/splits/crema-d/lfs-manifest.csv` (`path,sha256,size` of every
`AudioWAV/*.wav` and `VideoFlash/*.flv`, 14,884 files, 3.05 GB) and takes its splits from
`resources/splits/crema-d/splits.csv` (`clip,label,split`: 5,954 train, 744 val, 744 test), or
the actor-disjoint alternative `splits-actor-disjoint.csv` (dyncim.data.sources.actor_split).

`download_crema_d` brings the files into a folder (by default from the repository's LFS media
URL, or from any base URL or local folder with the same layout) with `download.sync_files`, and
then writes `clips.csv` there, the table feature extraction reads (`download.CLIP_COLUMNS`). A
clip's id is its file stem, e.g. `1001_DFA_ANG_XX`: actor, sentence, emotion, intensity.
"""
from __future__ import annotations

from pathlib import Path

from ..io import download as D
from ..io.splits import read_clip_splits

RESOURCES = Path(__file__).resolve().parents[3] / "resources" / "splits" / "crema-d"
LFS_MANIFEST = RESOURCES / "lfs-manifest.csv"
SPLITS_FILE = RESOURCES / "splits.csv"
# our actor-disjoint alternative, made from SPLITS_FILE by dyncim.data.sources.actor_split (seed 0)
ACTOR_SPLITS_FILE = RESOURCES / "splits-actor-disjoint.csv"
# `media.split` of a crema-d data set -> the file it reads; "standard" is the default
SPLIT_FILES = {"standard": SPLITS_FILE, "actor-disjoint": ACTOR_SPLITS_FILE}
# Git LFS media of the public repository; `<base>/<path>` serves the file's content
DEFAULT_BASE_URL = "https://media.githubusercontent.com/media/CheyneyComputerScience/CREMA-D/master/"
LABELS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
AUDIO_DIR, VIDEO_DIR = "AudioWAV", "VideoFlash"
CLIPS = "clips.csv"


def parse_clip(clip: str) -> dict:
    """`1001_DFA_ANG_XX` -> actor 1001, sentence DFA, label ANG, intensity XX."""
    parts = clip.split("_")
    if len(parts) != 4 or not parts[0].isdigit() or parts[2] not in LABELS:
        raise ValueError(f"{clip!r}: not a CREMA-D clip id (actor_sentence_emotion_intensity, "
                         f"emotion one of {LABELS})")
    return {"actor": parts[0], "sentence": parts[1], "label": parts[2], "intensity": parts[3]}


def audio_path(clip: str) -> str:
    return f"{AUDIO_DIR}/{clip}.wav"


def video_path(clip: str) -> str:
    return f"{VIDEO_DIR}/{clip}.flv"


def read_splits(path: str | Path = SPLITS_FILE) -> list[tuple[str, str, str]]:
    """(clip, label, split) rows, each checked: the label is the clip id's emotion field."""
    def check(clip, label):
        info = parse_clip(clip)
        if info["label"] != label:
            raise ValueError(f"{clip} is labelled {label}, but its id says {info['label']}")
    return read_clip_splits(path, check)


def files_for(rows, manifest: list[D.FileEntry], path: str | Path = "manifest") -> list[D.FileEntry]:
    """The manifest entries of these clips' WAV and FLV files; a clip without both is an error."""
    by_path = {e.path: e for e in manifest}
    missing = [p for clip, _, _ in rows for p in (audio_path(clip), video_path(clip)) if p not in by_path]
    if missing:
        raise ValueError(f"{path}: has no entry for {len(missing)} files of the split file, "
                         f"e.g. {missing[:5]}")
    return [by_path[p] for clip, _, _ in rows for p in (audio_path(clip), video_path(clip))]


def download_crema_d(out: str | Path, *, base_url: str | None = None,
                     from_dir: str | Path | None = None, link: str = "copy", jobs: int = 8,
                     retries: int = 2, timeout: float = 60.0, backoff: float = 1.0,
                     stamps: bool = True, manifest: str | Path = LFS_MANIFEST,
                     splits: str | Path | None = None, split: str = "standard",
                     progress: bool = False, log=print) -> Path:
    """Bring CREMA-D's WAV and FLV files into `out` (verified, resumable, in parallel) and write
    `out/clips.csv`; return its path.

    Source: `from_dir` (a folder holding `AudioWAV/` and `VideoFlash/`, e.g. a clone of the
    repository after `git lfs pull`; `link`: copy, hardlink or symlink), else `base_url`
    (default DEFAULT_BASE_URL). Every file the split file uses is fetched; on failure
    `download.FilesFailedError` names each file that failed and `out/download-report.json` lists
    them; `clips.csv` is written only when every file is verified, so it can stand for the whole
    download in a pipeline. `split`: which shipped split file (SPLIT_FILES) `clips.csv` follows,
    unless `splits` names a file.
    """
    out = Path(out)
    if splits is None:
        if split not in SPLIT_FILES:
            raise ValueError(f"CREMA-D split {split!r}: expected one of {sorted(SPLIT_FILES)}")
        splits = SPLIT_FILES[split]
    rows = read_splits(splits)
    entries = files_for(rows, D.read_file_manifest(manifest), manifest)
    if from_dir is None and base_url is None:
        base_url = DEFAULT_BASE_URL
    result = D.sync_files(entries, out, base_url=base_url, from_dir=from_dir, link=link, jobs=jobs,
                          retries=retries, timeout=timeout, backoff=backoff, stamps=stamps,
                          progress=progress)
    clips = [D.Clip(clip, label, split, str(out / audio_path(clip)), str(out / video_path(clip)))
             for clip, label, split in rows]
    D.write_clip_manifest(out / CLIPS, clips)
    if log:
        counts = {s: sum(1 for _, _, sp in rows if sp == s) for s in ("train", "val", "test")}
        log(f"CREMA-D: {result.files} files verified in {out} ({result.fetched} brought in now, "
            f"{result.verified_before} already there); clips: "
            + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return out / CLIPS


# ---- the source's steps (dyncim.data.sources) ----------------------------------------------------

def bring_in(ds: dict, out: Path, log=print) -> dict:
    media = ds["media"]
    split = media.get("split", "standard")    # absent: the standard split (not filled in)
    clips = download_crema_d(out, base_url=media.get("base_url"), from_dir=media.get("from_dir"),
                             link=media["link"], jobs=media["jobs"], split=split, progress=True, log=log)
    return {"clips": clips.name, "split": split}


def classes(raw: Path, record: dict) -> list[str]:
    return list(LABELS)


def recipe():
    """OGM-GE's CREMA-D: 22,050 Hz, 3 s tiled, STFT 512 / hop 353, log|S| -> 257 x 188; 1 fps, <= 3 frames."""
    from ..extraction.extract import FrameSpec, Recipe
    from ..extraction.spectrogram import LogSTFT
    return Recipe("crema-d", LogSTFT(), FrameSpec(1.0, 3, (224, 224)), "mean")
