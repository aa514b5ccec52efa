# Test-split evaluation of every method and seed of a data configuration, one process per data
# configuration (evaluation is cheap, process start-up is not); one JSON per run, in the order
# of the job's run list.


rule evaluate:
    input:
        features=paths.features_file("{data}"),
        models=[paths.manifest("{data}", m) for m in METHODS],
        code=code("evaluate", METHODS),
    output:
        [paths.eval_file("{data}", m, s) for m in METHODS for s in seeds(m)],
    log:
        paths.log_file("evaluate", "{data}"),
    threads: P["threads"]
    params:
        job=job(dc.evaluate_job, "data"),
    shell:
        "python -m dyncim evaluate --job {params.job:q} --features {input.features} --out {output} > {log} 2>&1"


rule evaluate_all:
    input:
        [eval_outputs(d) for d in DATASETS],
