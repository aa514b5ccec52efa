"""MM-IMDb (Arevalo et al. 2017, "Gated multimodal units for information fusion"): 25,959 movies,
each a poster and a plot, labelled with any of 23 genres (multi-label).

The user's copy (`media.from_dir`), the layout of the authors' release (mmimdb.tar.gz):

    split.json              {"train": [ids], "dev": [ids], "test": [ids]}: 15,552 / 2,608 / 7,799
    dataset/<id>.jpeg       the poster
    dataset/<id>.json       IMDb's metadata; used: "plot" (a list of plot texts, or one text) and
                            "genres" (a list of genre names)

`from_dir` may also be the folder above, holding `mmimdb/split.json`. The split is the release's
(`dev` is our `val`). The text is the first plot of the list (our choice: the list holds IMDb's
alternative summaries of the same film). The labels are the genres among `GENRES`, the 23 of the
paper (genres outside them are ignored and counted); a movie without any of them keeps an all-zero
target. Movies whose poster or metadata is missing, or whose metadata has no plot, are left out
and listed in `problems.csv`.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..extraction.image_text import Sample, write_problems, write_samples

GENRES = ("Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror", "Documentary",
          "Mystery", "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History", "Animation", "Musical",
          "Western", "Sport", "Short", "Music", "Film-Noir")
SPLIT_KEYS = {"train": "train", "dev": "val", "test": "test"}


def find_root(from_dir: str | Path) -> Path:
    root = Path(from_dir).expanduser().resolve()
    for cand in (root, root / "mmimdb"):
        if (cand / "split.json").is_file():
            return cand
    raise FileNotFoundError(f"{root}: no split.json (nor mmimdb/split.json); media.from_dir must be the MM-IMDb "
                            f"folder holding split.json and dataset/<id>.jpeg + dataset/<id>.json")


def read_split(path: Path) -> dict[str, list[str]]:
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or set(SPLIT_KEYS) - set(raw):
        raise ValueError(f"{path}: expected an object with the id lists {sorted(SPLIT_KEYS)}")
    return {SPLIT_KEYS[k]: [str(i) for i in raw[k]] for k in SPLIT_KEYS}


def _plot(meta: dict) -> str | None:
    plot = meta.get("plot")
    if isinstance(plot, list):
        plot = next((p for p in plot if isinstance(p, str) and p.strip()), None)
    return plot if isinstance(plot, str) and plot.strip() else None


def prepare_mmimdb(out: str | Path, from_dir: str | Path, log=print) -> dict:
    """Index the user's MM-IMDb copy: `samples.csv` and `problems.csv` in `out`; returns
    {"samples", "problems", "counts", "other_genres"}."""
    root, out = find_root(from_dir), Path(out)
    split = read_split(root / "split.json")
    data = root / "dataset"
    samples, problems, other, seen = [], [], {}, set()
    known = set(GENRES)
    for sp, ids in split.items():
        for i in ids:
            if i in seen:
                raise ValueError(f"{root / 'split.json'}: id {i!r} is listed twice")
            seen.add(i)
            img, meta_file = data / f"{i}.jpeg", data / f"{i}.json"
            if not img.is_file():
                problems.append((i, sp, "no-image"))
                continue
            try:
                meta = json.loads(meta_file.read_text(encoding="utf-8"))
            except FileNotFoundError:
                problems.append((i, sp, "no-metadata"))
                continue
            except ValueError as e:
                problems.append((i, sp, f"bad-metadata: {e}"))
                continue
            text = _plot(meta)
            if text is None:
                problems.append((i, sp, "no-plot"))
                continue
            genres = [g for g in meta.get("genres", []) if isinstance(g, str)]
            for g in genres:
                if g not in known:
                    other[g] = other.get(g, 0) + 1
            labels = tuple(g for g in GENRES if g in genres)   # GENRES' order
            samples.append(Sample(i, sp, labels, str(img), text))
    counts = {sp: sum(s.split == sp for s in samples) for sp in SPLIT_KEYS.values()}
    for sp, n in counts.items():
        if n == 0:
            raise ValueError(f"{root}: no usable {sp} sample (problems: {len(problems)})")
    write_samples(out / "samples.csv", samples)
    write_problems(out / "problems.csv", problems)
    log(f"MM-IMDb {root}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) +
        f"; left out {len(problems)} (problems.csv)" + (f"; genres outside the 23 ignored: {other}" if other else ""))
    return {"samples": "samples.csv", "problems": "problems.csv", "counts": counts, "other_genres": other}


# ---- the source's steps (dyncim.data.sources) ----------------------------------------------------

def bring_in(ds: dict, out: Path, log=print) -> dict:
    """Images + plots indexed in the user's copy (not copied)."""
    from ..extraction.pretrained import check_transformers
    check_transformers()   # the extraction needs it: say so before the walk
    return prepare_mmimdb(out, ds["media"]["from_dir"], log=log)


def build(ds: dict, raw: Path, record: dict, out: Path, log=print) -> dict:
    from ..extraction.image_text import build_store
    return build_store(ds, raw, record, out, list(GENRES), True, log=log)
