# One job per data configuration x method; the job trains every seed of the method in one
# process (torch's import costs more than a small model's training). Its declared output is the
# manifest, written last; the per-seed files go where dyncim.paths puts them.


rule train:
    input:
        data_file=data_file,
        teachers=teachers,
        code=lambda w: code("train", [w.method]),
    output:
        paths.manifest("{data}", "{method}"),
    log:
        paths.log_file("train", "{data}", "{method}"),
    threads: P["threads"]
    resources:
        gpu=gpu,
    params:
        job=job(dc.train_job, "data", "method"),
    shell:
        "python -m dyncim train --job {params.job:q} --data-file {input.data_file} --manifest {output} > {log} 2>&1"


rule train_all:
    input:
        [paths.manifest(d, m) for d in DATASETS for m in METHODS],
