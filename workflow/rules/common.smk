# Helpers shared by the rules: the resolved configuration, what to run, each job's configuration
# (dyncim.config, passed as `--job`: canonical JSON, also the job's rerun trigger), where files go
# (dyncim.paths) and the package code a job runs (dyncim.codedeps, declared as its inputs).
import os
import sys

from snakemake.utils import update_config

from dyncim import codedeps, paths, sanity
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
MEDIA_DATASETS = [d for d in DATASETS if dc.is_media(P["datasets"][d])]


def gpu(wildcards):
    """The `gpu` resource a data set's training claims: 1 where it runs on CUDA (the feature-vector
    sets stay on the CPU under device: auto, see dyncim.config.data_device)."""
    return 1 if dc.cuda_expected(dc.data_device(P, wildcards.data)) else 0


def media_resources(wildcards):
    """The shipped files (split lists, manifests, class lists) a paper-scale set's steps read."""
    folder = os.path.join(
        "resources", "splits", P["datasets"][wildcards.data]["source"]
    )
    return (
        sorted(
            os.path.join(folder, f) for f in os.listdir(folder) if not f.startswith(".")
        )
        if os.path.isdir(folder)
        else []
    )


def data_input(wildcards):
    """The feature file, or the store's summary, that a data set's jobs read."""
    return dc.data_input(P, wildcards.data)


FIGURE_KINDS = dc.figure_kinds(P)

# Jobs run `python -m dyncim`: the interpreter running Snakemake (the project's venv) comes first
# on their PATH.
os.environ.update(
    PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
)


def warm_worth_it(least=4):
    """Whether enough torch-importing jobs are to run for a warm worker to pay for its own import
    (the first jobs start before it is ready)."""
    heavy = {"train", "evaluate", "robustness"}
    return sum(j.rule.name in heavy for j in workflow.dag.needrun_jobs()) >= least


# A local run's jobs start in milliseconds from a warm worker that has imported torch once
# (dyncim.warm; their outputs are identical). Not on a cluster (its jobs run elsewhere), not in
# the jobs a cluster runs (they are Snakemake processes of their own), not with DYNCIM_WARM=0.
onstart:
    if (
        workflow.local_exec
        and workflow.is_main_process
        and os.environ.get("DYNCIM_WARM") != "0"
        and warm_worth_it()
    ):
        from dyncim import warm

        warm.start(
            os.path.join("logs", "warm.log"),
            parent=os.getpid(),
            threads=P["threads"],
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
