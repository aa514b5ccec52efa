# Helpers shared by the rules: the resolved configuration, what to run, each job's configuration
# (dyncim.config, passed as `--job`: canonical JSON, also the job's rerun trigger), where files go
# (dyncim.paths) and the package code a job runs (dyncim.codedeps, declared as its inputs).
import os
import sys

from snakemake.utils import update_config

from dyncim import codedeps, paths
from dyncim import config as dc


def resolve_config():
    """params.yaml, then `--configfile` files, then `--config` entries, as Snakemake merged them
    into `config`. Bad values stop here with the package's message (the one the CLI prints).
    """
    settings = workflow.config_settings
    update_config(config, dc.retype(dict(settings.config)))
    sources = ["params.yaml", *map(os.path.relpath, settings.configfiles)]
    try:
        return dc.resolve(
            config, " + ".join(sources + ["--config"] * bool(settings.config))
        )
    except dc.ParamsError as e:
        sys.exit(dc.error_text(e))


P = resolve_config()
DATASETS = P["run"]["datasets"]
METHODS = P["run"]["methods"]
GPU = 1 if dc.cuda_expected(P["device"]) else 0
FIGURE_KINDS = dc.figure_kinds(P)

# Jobs run `python -m dyncim`: the interpreter running Snakemake (the project's venv) comes first
# on their PATH.
os.environ.update(
    PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
)


def job(build, *args):
    """A params function: the canonical JSON of `build(P, wildcard values...)`."""
    return lambda w: dc.job_json(build(P, *(w[a] for a in args)))


def code(step, methods=()):
    """Package files `python -m dyncim <step>` runs for these methods."""
    return codedeps.step_files(step, [P["methods"][m]["type"] for m in methods])


def mfeat_raw():
    return [paths.raw_mfeat(v) for v in dc.MFEAT_VIEWS]


def raw_inputs(data):
    return mfeat_raw() if P["datasets"][data]["source"] == "mfeat" else []


def split_raw_inputs(wildcards):
    return mfeat_raw() if wildcards.split == "mfeat" else []


def seeds(method):
    return P["methods"][method]["seeds"]


def eval_outputs(data):
    return [paths.eval_file(data, m, s) for m in METHODS for s in seeds(m)]


def parent_dir(path):
    """A params function: the folder of `path` (a params string must not hard-code it)."""
    return lambda w: os.path.dirname(path)
