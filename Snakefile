# The pipeline's one DAG: download -> split -> features -> train -> evaluate -> report.
# params.yaml is the single source of truth (DVC reads it too; dvc.yaml runs targets of this file).
import json
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

configfile: "params.yaml"

# Schema validation by Snakemake, then the package's own checks (method types, cross-references,
# per-method parameters): both stop before any job runs, naming the key.
validate(config, "workflow/schemas/params.schema.yaml")

from dyncim import config as dc

try:
    P = dc.resolve(config, "params.yaml")
except dc.ParamsError as e:
    sys.exit(f"Error in params.yaml: {e}")

PY = sys.executable  # the interpreter running Snakemake: the project's venv

include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        "results/summary.md",


rule report:
    input:
        [eval_outputs(d) for d in DATASETS],
        code=["dyncim/report.py"],
    output:
        "results/summary.md",
        "results/summary.csv",
        "results/summary.json",
    params:
        run=lambda w: json.dumps(P["run"]),
    shell:
        "{PY} -m dyncim report --quiet"
