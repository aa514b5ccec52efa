"""Torch-free table of the training methods: where each lives and what it supports.

The config loader and the Snakefile read it without importing torch; `dyncim.methods.build`
imports the module only when a method is trained.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    module: str          # module under dyncim.methods
    cls: str             # class name in that module
    max_modalities: int | None = None  # None: any number; 2: the paper defines it for two only
    multilabel: bool = False  # trains and predicts on multi-label sets (multi-hot targets, BCE)


CATALOG: dict[str, Entry] = {
    "joint": Entry("joint", "Joint", multilabel=True),
    "unimodal": Entry("unimodal", "Unimodal", multilabel=True),
    "dyncim": Entry("dyncim", "DynCIM"),
    "ogm-ge": Entry("ogm_ge", "OGMGE"),
    "gblending": Entry("gblending", "GBlending"),
    "pmr": Entry("pmr", "PMR"),
    "agm": Entry("agm", "AGM"),
    "mmpareto": Entry("mmpareto", "MMPareto"),
    "mla": Entry("mla", "MLA"),
    "relearning": Entry("relearning", "Relearning"),
    "reconboost": Entry("reconboost", "ReconBoost"),
}
