"""Torch-free table of the training methods: where each lives and what it supports.

The config loader and the Snakefile read it without importing torch; `dyncim.methods.build`
imports the module only when a method is trained. A method with several implementations of the
same objective (DynCIM: `impl: fused` or `reference`) lists them in its entry: the entry is the
one place that says which class a method configuration's `impl` builds.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    module: str          # module under dyncim.methods
    cls: str             # class name in that module
    max_modalities: int | None = None  # None: any number; 2: the paper defines it for two only
    multilabel: bool = False  # trains and predicts on multi-label sets (multi-hot targets, BCE)
    # works between the encoders' stages (Greedy's MMTM blocks): not on sequence modalities,
    # whose transformer / LSTM encoders have none
    needs_stages: bool = False
    # every implementation, by the method configuration's `impl`: (impl, module, class); the
    # entry's own module and class are the default's (a configuration without `impl`)
    impls: tuple[tuple[str, str, str], ...] = ()

    @property
    def modules(self) -> tuple[str, ...]:
        """Every module under dyncim.methods the method's classes live in."""
        return tuple(dict.fromkeys([self.module, *(module for _, module, _ in self.impls)]))

    def implementation(self, impl: str | None = None) -> tuple[str, str]:
        """(module, class) of implementation `impl` (None: the default)."""
        if impl is None:
            return self.module, self.cls
        for name, module, cls in self.impls:
            if name == impl:
                return module, cls
        known = [name for name, _, _ in self.impls]
        raise ValueError(f"impl {impl!r}: " + (f"expected one of {known}" if known
                                               else "this method has one implementation"))


CATALOG: dict[str, Entry] = {
    "joint": Entry("joint", "Joint", multilabel=True),
    "unimodal": Entry("unimodal", "Unimodal", multilabel=True),
    "dyncim": Entry("dyncim", "DynCIM", impls=(("fused", "dyncim", "DynCIM"),
                                               ("reference", "dyncim_reference", "DynCIMReference"))),
    "ogm-ge": Entry("ogm_ge", "OGMGE"),
    "gblending": Entry("gblending", "GBlending"),
    "pmr": Entry("pmr", "PMR"),
    "agm": Entry("agm", "AGM"),
    "mmpareto": Entry("mmpareto", "MMPareto"),
    "mla": Entry("mla", "MLA"),
    "relearning": Entry("relearning", "Relearning"),
    "reconboost": Entry("reconboost", "ReconBoost"),
    "umt": Entry("umt", "UMT"),
    "mbsd": Entry("mbsd", "MBSD"),
    "cml": Entry("cml", "CML"),
    "lfm": Entry("lfm", "LFM"),
    "valuation": Entry("valuation", "Valuation"),
    "opm": Entry("opm", "OPM"),
    "amco": Entry("amco", "AMCo"),
    "mmcosine": Entry("mmcosine", "MMCosine"),
    "greedy": Entry("greedy", "Greedy", needs_stages=True),
    "remix": Entry("remix", "Remix"),
    "cggm": Entry("cggm", "CGGM"),
    "inforeg": Entry("inforeg", "InfoReg", max_modalities=2),
    "arm": Entry("arm", "ARM", max_modalities=2),
    "bss": Entry("bss", "BSS"),
}
