# The pipeline's one DAG: download -> split -> feature file (or media -> extract: a feature store)
# -> train -> evaluate -> robustness -> report (summary, figures, REPORT.md).
# Configuration: params.yaml, deep-merged with any `--configfile` files and `--config` entries
# (DVC reads params.yaml and runs targets of this file). Each rule passes its jobs their resolved
# configuration and output paths: see workflow/rules/common.smk.
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        paths.SUMMARY["md"],
        paths.REPORT,
