# Test-split evaluation of every method and seed of a data configuration, one process per data
# configuration (evaluation is cheap, process start-up is not); one JSON per run, in the order
# of the job's run list.


rule evaluate:
    input:
        data_file=data_file,
        models=[paths.manifest("{data}", m) for m in METHODS],
        code=code("evaluate", METHODS),
    output:
        [paths.eval_file("{data}", m, s) for m in METHODS for s in seeds(m)],
    log:
        paths.log_file("evaluate", "{data}"),
    threads: P["threads"]
    resources:
        gpu=gpu,
    params:
        job=job(dc.evaluate_job, "data"),
    shell:
        "python -m dyncim evaluate --job {params.job:q} --data-file {input.data_file} --out {output} > {log} 2>&1"


rule evaluate_all:
    input:
        [eval_outputs(d) for d in DATASETS],


# Every trained model of a data configuration on the test split with one modality corrupted at
# test time (noise levels, missing); no re-training. The long-form CSV feeds DVC's plots.
rule robustness:
    input:
        data_file=data_file,
        models=[paths.manifest("{data}", m) for m in METHODS],
        code=code("robustness", METHODS),
    output:
        json=paths.robustness_file("{data}"),
        csv=report(
            paths.robustness_csv("{data}"),
            caption="../report/robustness.rst",
            category="Robustness",
            subcategory="{data}",
        ),
    log:
        paths.log_file("robustness", "{data}"),
    threads: P["threads"]
    resources:
        gpu=gpu,
    params:
        job=job(dc.robustness_job, "data"),
    shell:
        "python -m dyncim robustness --job {params.job:q} --data-file {input.data_file} --json {output.json} --csv {output.csv} > {log} 2>&1"


rule robustness_all:
    input:
        [paths.robustness_file(d) for d in DATASETS],
