"""Where every step's files go: the one place the path conventions are written down.

Torch-free (the Snakefile imports it). Each function returns a path relative to the project root
as a string; given `"{data}"`-style arguments it returns the matching Snakemake pattern. The CLI
and the package join these to a root (`--root`, default: the current folder).
"""
from __future__ import annotations

RAW = "data/raw"


def raw_dir(source: str) -> str:
    """A downloading source's raw files (dyncim.data.catalog `downloads`), one copy for every
    configuration of the source (mfeat's six views)."""
    return f"{RAW}/{source}"


def raw_file(source: str, name: str) -> str:
    return f"{raw_dir(source)}/{name}"


def split_file(split: str) -> str:
    """A split is shared by the data configurations that use the same samples (all mfeat ones,
    dyncim.data.catalog `shared_split`)."""
    return f"data/splits/{split}.csv"


def feature_file(data: str) -> str:
    return f"data/features/{data}.pt"


def media_dir(data: str) -> str:
    """A store set's raw files (downloaded, or the manifest of the user's copy)."""
    return f"{RAW}/{data}"


def media_ready(data: str) -> str:
    """Written last when a paper-scale set's raw files are all in (names its clip list or pickle)."""
    return f"{media_dir(data)}/ready.json"


def store_dir(data: str) -> str:
    """A paper-scale set's feature store: one folder per split (dyncim.data.io.store)."""
    return f"data/features/{data}"


def store_ready(data: str) -> str:
    """Written last when every split of the store is extracted; training reads the store through it."""
    return f"{store_dir(data)}/store.json"


def model_dir(data: str, method: str) -> str:
    return f"models/{data}/{method}"


def manifest(data: str, method: str) -> str:
    """A training job's declared output, written when every seed is done."""
    return f"{model_dir(data, method)}/manifest.json"


def seed_dir(data: str, method: str, seed) -> str:
    return f"{model_dir(data, method)}/seed{seed}"


def best_model(data: str, method: str, seed) -> str:
    """Best-on-validation weights of every part of a run."""
    return f"{seed_dir(data, method, seed)}/best.pt"


def last_checkpoint(data: str, method: str, seed, part: str = "") -> str:
    """A run's resume checkpoint (per part for methods that train parts apart)."""
    return f"{seed_dir(data, method, seed)}/last{'-' + part if part else ''}.pt"


def runs_dir(data: str, method: str, seed) -> str:
    """TensorBoard logs of a run (a subfolder per part where parts train apart)."""
    return f"runs/{data}/{method}/seed{seed}"


def curves_file(data: str, method: str, seed) -> str:
    """Per-epoch history of a run (DVC plots)."""
    return f"results/curves/{data}/{method}/seed{seed}.csv"


def eval_file(data: str, method: str, seed) -> str:
    return f"results/eval/{data}/{method}/seed{seed}.json"


SUMMARY = {"md": "results/summary.md", "csv": "results/summary.csv", "json": "results/summary.json",
           "sanity": "results/sanity.json"}   # per data set: its split and the sanity-range checks (dyncim.report.sanity)

# The DVC metrics: one small JSON per method ({data: mean test accuracy}) and DynCIM's margin over
# joint, so that `dvc metrics show` prints a row per method and a column per data set.
METRICS_DIR = "results/metrics"


def metrics_file(name: str) -> str:
    return f"{METRICS_DIR}/{name}.json"


def robustness_file(data: str) -> str:
    """The robustness sweep's record of a data set (every run's accuracy under corruption)."""
    return f"results/robustness/{data}.json"


# Long-form CSVs of the sweep, in a tree of their own: DVC mis-parses a plots folder mixing CSV
# and JSON.
ROBUSTNESS_PLOTS = "results/robustness-curves"


def robustness_csv(data: str) -> str:
    return f"{ROBUSTNESS_PLOTS}/{data}.csv"


FIGURE_KINDS = ("accuracy", "rebalance", "curves", "dyncim", "robustness")   # dyncim.report.figures draws them


# the critical-difference diagram of every method's mean rank over the run's data sets (dyncim.report.ranks)
RANKS_FIGURE = "results/figures/critical-difference.png"


def figure_file(data: str, kind: str) -> str:
    return f"results/figures/{data}/{kind}.png"


REPORT = "results/REPORT.md"
HTML_REPORT = "results/report.html"


def log_file(rule: str, *wildcards) -> str:
    """A Snakemake job's stdout and stderr."""
    return "/".join(["logs", rule, *map(str, wildcards)]) + ".log"
