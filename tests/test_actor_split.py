"""CREMA-D's actor-disjoint split: the shipped file is what the documented rule makes (seed 0),
holds every clip once with its label, puts no actor on two sides; a crema-d data set reads it
when `media.split: actor-disjoint` says so."""
import csv
from collections import Counter
from pathlib import Path

import pytest

from dyncim.data.sources import actor_split as A
from dyncim.data.sources import crema_d as C
from test_crema_d import CLIPS, fake_crema_d


def test_the_shipped_file_is_the_rule_with_seed_0_byte_for_byte(tmp_path):
    standard = C.read_splits()
    made = A.actor_disjoint(standard, seed=0)
    out = tmp_path / "again.csv"
    A.write_rows(out, made)
    assert out.read_bytes() == C.ACTOR_SPLITS_FILE.read_bytes()
    assert A.main(["--check"]) == 0
    # another seed gives another split, which --check tells from the shipped one
    assert A.actor_disjoint(standard, seed=1) != made
    assert A.main(["--check", "--seed", "1"]) == 1


def test_every_clip_once_with_its_label_and_no_actor_on_two_sides():
    standard = C.read_splits()
    rows = C.read_splits(C.ACTOR_SPLITS_FILE)   # checks labels against the ids, and no clip twice
    assert [(c, y) for c, y, _ in rows] == [(c, y) for c, y, _ in standard]   # same clips, order, labels
    sides = {}
    for clip, _, split in rows:
        sides.setdefault(A.actor_of(clip), set()).add(split)
    assert len(sides) == 91 and all(len(s) == 1 for s in sides.values())
    actors = Counter(next(iter(s)) for s in sides.values())
    clips = Counter(split for _, _, split in rows)
    assert (actors["train"], actors["val"], actors["test"]) == (73, 9, 9)
    assert (clips["train"], clips["val"], clips["test"]) == (5972, 732, 738)
    # the rule: test and val are each within half an actor's clips (at most 82) of the standard 744
    assert abs(clips["test"] - 744) <= 41 and abs(clips["val"] - 744) <= 41


def test_closest_prefix_rule_on_small_numbers():
    # cumulative 0, 5, 9, 20: target 10 -> 2 actors (9), target 15 -> 3 (20 is 5 away, 9 is 6 away)
    assert A._closest_prefix([5, 4, 11], 10) == 2
    assert A._closest_prefix([5, 4, 11], 15) == 3
    assert A._closest_prefix([5, 4, 11], 2) == 1      # at least one actor per side
    assert A._closest_prefix([3, 3], 3) == 1          # a tie: the fewer actors
    rows = [("1001_DFA_ANG_XX", "ANG", "train"), ("1002_DFA_ANG_XX", "ANG", "val"), ("1001_IEO_HAP_HI", "HAP", "test")]
    with pytest.raises(ValueError, match="2 actors: too few"):
        A.actor_disjoint(rows, seed=0)


def test_download_follows_the_chosen_split(tmp_path, monkeypatch):
    src = tmp_path / "CREMA-D"
    splits, manifest = fake_crema_d(src, tmp_path)
    actor = tmp_path / "actor.csv"
    A.write_rows(actor, A.actor_disjoint(C.read_splits(splits), seed=0))
    monkeypatch.setitem(C.SPLIT_FILES, "standard", splits)
    monkeypatch.setitem(C.SPLIT_FILES, "actor-disjoint", actor)
    for split, want in (("standard", dict(CLIPS)), ("actor-disjoint", {c: s for c, _, s in C.read_splits(actor)})):
        out = tmp_path / split
        C.download_crema_d(out, from_dir=src, link="symlink", manifest=manifest, split=split, jobs=2, log=None)
        got = {r["clip"]: r["split"] for r in csv.DictReader(open(out / C.CLIPS))}
        assert got == want
    assert {c: s for c, s in CLIPS} != want   # the two splits differ on these clips
    with pytest.raises(ValueError, match="CREMA-D split 'speaker': expected one of"):
        C.download_crema_d(tmp_path / "x", from_dir=src, manifest=manifest, split="speaker", log=None)
    assert not Path(tmp_path / "x").exists()   # refused before any file was brought in
