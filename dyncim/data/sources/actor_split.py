"""CREMA-D's actor-disjoint split: the same 7,442 clips as the standard split, divided so that no
actor (the first field of a clip id, e.g. 1001 in `1001_DFA_ANG_XX`; 91 actors) is on two sides.

The standard split (`resources/splits/crema-d/splits.csv`, the peers' lists) puts every actor's
clips in train, val and test alike, so a model can recognise the speaker's voice and face rather
than the emotion. This split measures generalisation to unseen speakers. It is our addition; the
standard split stays the default, since every peer reports on it.

The rule (`actor_disjoint`), deterministic given the seed:
1. the actor ids, sorted as integers, are shuffled with `numpy.random.default_rng(seed)`
   (`rng.permutation`);
2. test takes the prefix of that order (at least one actor; on a tie, the shorter) whose clip
   count is closest to the standard test split's (744 of 7,442), val the next run of actors
   closest to the standard val count (744), and train every remaining actor;
3. the rows keep the standard file's order and labels; only the `split` column changes.

Why closest clip counts rather than a fixed number of actors per side: actors have 76 to 82 clips
each (some recordings are missing), so matching the standard split's sizes keeps the two splits'
test sets (and so their statistical precision) alike. The shipped file was made with seed 0 and
has 5,972 train / 732 val / 738 test clips from 73 / 9 / 9 actors:

    python -m dyncim.data.sources.actor_split --seed 0

and `--check` compares a regeneration with the shipped file (tests/test_actor_split.py does too).
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from ...atomic import atomic_path
from .crema_d import ACTOR_SPLITS_FILE, SPLITS_FILE, parse_clip, read_splits

DEFAULT_SEED = 0


def actor_of(clip: str) -> int:
    return int(parse_clip(clip)["actor"])


def _closest_prefix(counts: list[int], target: int) -> int:
    """How many leading actors (at least one) make the clip count closest to `target` (ties:
    fewer actors)."""
    if not counts:
        return 0
    return 1 + int(np.argmin(np.abs(np.cumsum(counts) - target)))


def actor_disjoint(rows: list[tuple[str, str, str]], seed: int = DEFAULT_SEED) -> list[tuple[str, str, str]]:
    """`rows` (clip, label, split) of the standard split, re-divided by actor (module docstring)."""
    per_actor = Counter(actor_of(clip) for clip, _, _ in rows)
    target = Counter(split for _, _, split in rows)
    order = [int(a) for a in np.random.default_rng(seed).permutation(sorted(per_actor))]
    side = {}
    start = 0
    for split in ("test", "val"):
        n = _closest_prefix([per_actor[a] for a in order[start:]], target[split])
        side.update({a: split for a in order[start:start + n]})
        start += n
    if start >= len(order):
        raise ValueError(f"{len(order)} actors: too few for three actor-disjoint sides")
    side.update({a: "train" for a in order[start:]})
    return [(clip, label, side[actor_of(clip)]) for clip, label, _ in rows]


def write_rows(path: str | Path, rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["clip", "label", "split"])
        w.writerows(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dyncim.data.sources.actor_split",
                                 description="CREMA-D's actor-disjoint split, made from the standard split")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="shuffle seed (the shipped file: 0)")
    ap.add_argument("--splits", default=str(SPLITS_FILE), help="the standard split file (its clips and labels)")
    ap.add_argument("--out", default=str(ACTOR_SPLITS_FILE), help="where the split goes")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 unless --out holds exactly this split")
    args = ap.parse_args(argv)
    rows = actor_disjoint(read_splits(args.splits), args.seed)
    counts = Counter(s for _, _, s in rows)
    actors = {s: len({actor_of(c) for c, _, sp in rows if sp == s}) for s in ("train", "val", "test")}
    summary = ", ".join(f"{s} {counts[s]} clips / {actors[s]} actors" for s in ("train", "val", "test"))
    if args.check:
        out = Path(args.out)
        same = out.is_file() and read_splits(out) == rows
        print(f"{out}: {'matches' if same else 'differs from'} the split of seed {args.seed} ({summary})")
        return 0 if same else 1
    write_rows(args.out, rows)
    print(f"{args.out}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
