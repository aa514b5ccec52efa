"""Method settings chosen on validation, for the data sets where no official code gives a value.

A method, or a data set's `method_params` entry for it, may list candidate settings under
`select` (each a mapping of the method's own parameters). Its training job then:
1. trains every candidate on the method's first `select_seeds` seeds (1 when absent);
2. scores each candidate by its best validation figure (accuracy, or micro-F1 on a multi-label
   set: what the shared loop already selects epochs on), averaged over those seeds, and over the
   parts of a method that trains parts apart;
3. keeps the highest score, ties going to the candidate listed first, so list the method's
   default first. The test split is never read.
The winner's runs on those seeds become the method's own (their checkpoints and TensorBoard logs
are copied, not retrained); the method's other seeds then train with the winner's settings. Every
run's best.pt, the job's manifest and each evaluation JSON carry the comparison (`selection`), and
REPORT.md prints it.

The candidates' files stay where they can be inspected and a killed job resumes them:
models/<data>/<method>/select/candidate<i>/seed<S>/ and runs/<data>/<method>/select/candidate<i>/seed<S>/.
"""
from __future__ import annotations

import os
import shutil
import statistics
from pathlib import Path
from typing import Callable

from .. import paths
from ..atomic import atomic_path

SELECT_KEYS = ("select", "select_seeds")


def variant(index: int) -> str:
    """The path label of candidate `index` under its method (dyncim.paths joins it to the method)."""
    return f"select/candidate{index}"


def base_config(mcfg: dict) -> dict:
    """A method configuration without its selection keys: what the method classes read."""
    return {k: v for k, v in mcfg.items() if k not in SELECT_KEYS}


def candidates(mcfg: dict) -> list[dict]:
    """Each candidate's full method configuration, in the listed order."""
    base = base_config(mcfg)
    return [{**base, **over} for over in mcfg["select"]]


def selection_seeds(mcfg: dict, seeds: list[int]) -> list[int]:
    return list(seeds[:mcfg.get("select_seeds", 1)])


def part_score(parts: list[dict]) -> float:
    """A run's validation score: its best validation figure, averaged over its parts."""
    return statistics.fmean(v for p in parts for k, v in p.items() if k.startswith("best_val_"))


def choose(scores: list[float]) -> int:
    """The index of the highest score; the first listed on a tie."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def _copy_run(root: Path, data: str, method: str, index: int, seed: int) -> None:
    """Make the winner's run on `seed` the method's own: its checkpoints (written atomically) and
    its TensorBoard logs. The method's run then resumes from the finished checkpoint."""
    src = root / paths.seed_dir(data, f"{method}/{variant(index)}", seed)
    dst = root / paths.seed_dir(data, method, seed)
    for f in sorted(src.glob("last*.pt")):
        with atomic_path(dst / f.name) as tmp:
            shutil.copyfile(f, tmp)
    logs_src = root / paths.runs_dir(data, f"{method}/{variant(index)}", seed)
    logs_dst = root / paths.runs_dir(data, method, seed)
    shutil.rmtree(logs_dst, ignore_errors=True)
    if logs_src.is_dir():
        tmp = logs_dst.with_name(f".{logs_dst.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(logs_src, tmp)
        os.replace(tmp, logs_dst)


def run(mcfg: dict, data: str, method: str, seeds: list[int], root: Path,
        fit: Callable[[int, dict, str], list[dict]]) -> tuple[dict, dict]:
    """Train and compare the candidates of `mcfg`; return the winner's configuration and the
    record of the comparison. `fit(seed, candidate_config, variant)` trains (or resumes) one run
    and returns its saved parts (with their `best_val_*` figures)."""
    used = selection_seeds(mcfg, seeds)
    rows = []
    cands = candidates(mcfg)
    for i, cand in enumerate(cands):
        per_seed = [part_score(fit(s, cand, variant(i))) for s in used]
        rows.append({"settings": mcfg["select"][i], "val": statistics.fmean(per_seed),
                     "val_per_seed": dict(zip(map(str, used), per_seed))})
    best = choose([r["val"] for r in rows])
    for s in used:
        _copy_run(root, data, method, best, s)
    record = {"candidates": rows, "chosen": best, "settings": mcfg["select"][best], "seeds": used,
              "rule": "highest mean best-epoch validation figure over these seeds; ties: the first listed"}
    return cands[best], record
