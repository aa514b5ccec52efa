# Helpers shared by the rules: the resolved configuration, what to run, each job's configuration
# (dyncim.config, passed as `--job`: canonical JSON, also the job's rerun trigger), where files go
# (dyncim.paths), what each data source is (dyncim.data.catalog) and the package code a job runs
# (dyncim.codedeps, declared as its inputs).
import os
import sys

from snakemake.utils import update_config

from dyncim import codedeps, paths
from dyncim.report import sanity
from dyncim import config as dc
from dyncim.data import catalog


def resolve_config():
    """params.yaml, then `--configfile` files, then `--config` entries, as Snakemake merged them
    into `config`. Bad values stop here with the package's message (the one the CLI prints), and
    so do a user's own data files that do not hold what the params say (dyncim.config.check_data).
    """
    settings = workflow.config_settings
    update_config(config, dc.retype(dict(settings.config)))
    sources = ["params.yaml", *map(os.path.relpath, settings.configfiles)]
    try:
        # a user's files are read in full once, by the main process (not again by each
        # cluster job's, which parses this file too)
        return dc.resolve(
            config,
            " + ".join(sources + ["--config"] * bool(settings.config)),
            check=workflow.is_main_process,
        )
    except dc.ParamsError as e:
        sys.exit(dc.error_text(e))


P = resolve_config()
DATASETS = P["run"]["datasets"]
METHODS = P["run"]["methods"]
MEDIA_DATASETS = [d for d in DATASETS if dc.uses_store(P["datasets"][d])]
# sources whose raw files the download step brings in, one copy each (mfeat)
DOWNLOADS = [s for s, e in catalog.CATALOG.items() if e.bring_in == "download"]


def source_of(data):
    return P["datasets"][data]["source"]


def gpu(wildcards):
    """The `gpu` resource a data set's training claims: 1 where it runs on CUDA (the feature-vector
    sets stay on the CPU under device: auto, see dyncim.config.data_device)."""
    return 1 if dc.cuda_expected(dc.data_device(P, wildcards.data)) else 0


def media_resources(wildcards):
    """The shipped files (split lists, manifests, class lists) a paper-scale set's steps read."""
    folder = os.path.join("resources", "splits", source_of(wildcards.data))
    return (
        sorted(
            os.path.join(folder, f) for f in os.listdir(folder) if not f.startswith(".")
        )
        if os.path.isdir(folder)
        else []
    )


def data_file(wildcards):
    """The feature file, or the store's summary, that a data set's jobs read."""
    return dc.data_file(P, wildcards.data)


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


def code(step, methods=(), source=None):
    """Package files `python -m dyncim <step>` runs for these methods, with the module of data
    source `source` (imported by name at run time, dyncim.data.sources) and what it imports.
    """
    files = codedeps.step_files(step, [P["methods"][m]["type"] for m in methods])
    if source is None:
        return files
    own = codedeps.closure([catalog.module_name(source)])
    return sorted(
        set(files)
        | {codedeps.module_file(m).relative_to(codedeps.ROOT).as_posix() for m in own}
    )


def raw_inputs(data):
    """The downloaded files (its source's, dyncim.data.catalog `downloads`) a data set's features
    step reads."""
    return dc.raw_files(source_of(data))


def split_source(wildcards):
    """The source of a split: a shared split's (named after it), or its data set's."""
    s = wildcards.split
    return s if s in catalog.CATALOG and s not in P["datasets"] else source_of(s)


def split_raw_inputs(wildcards):
    """The downloaded files a split reads (a shared split's: every view of mfeat)."""
    return dc.raw_files(split_source(wildcards))


def user_files(wildcards):
    """A user's own files (source `files`): its media step's inputs, so that an edit reruns it."""
    return dc.input_files(P, wildcards.data)


def media_listing(wildcards):
    """A params function: the listing fingerprint (names, sizes, mtimes) of the user's
    folders and list files a media step reads (dyncim.config.media_listing): a change
    reruns the step."""
    return dc.media_listing(P, wildcards.data)


def teachers(wildcards):
    """The runs a method learns from, as inputs of its training (UMT: its unimodal teachers' job,
    of the same data set; each seed reads the teacher's run of that seed)."""
    teacher = P["methods"][wildcards.method].get("teacher")
    return [paths.manifest(wildcards.data, teacher)] if teacher else []


def seeds(method):
    return P["methods"][method]["seeds"]


def eval_outputs(data):
    return [paths.eval_file(data, m, s) for m in METHODS for s in seeds(m)]


def parent_dir(path):
    """A params function: the folder of `path` (a params string must not hard-code it)."""
    return lambda w: os.path.dirname(path)
