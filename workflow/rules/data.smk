# Raw data, the fixed split and the compact feature file of each data configuration.


rule download_mfeat:
    input:
        code=code("download"),
    output:
        mfeat_raw(),
    log:
        paths.log_file("download_mfeat"),
    params:
        out=lambda w, output: os.path.dirname(output[0]),
    shell:
        "python -m dyncim download --source mfeat --out {params.out} > {log} 2>&1"


rule split:
    input:
        raw=split_raw_inputs,
        code=code("split"),
    output:
        paths.split_file("{split}"),
    log:
        paths.log_file("split", "{split}"),
    params:
        job=job(dc.split_job, "split"),
    shell:
        "python -m dyncim split --job {params.job:q} --out {output} > {log} 2>&1"


rule features:
    input:
        split=lambda w: paths.split_file(dc.split_name(P, w.data)),
        raw=lambda w: raw_inputs(w.data),
        code=code("features"),
    output:
        paths.features_file("{data}"),
    log:
        paths.log_file("features", "{data}"),
    params:
        job=job(dc.features_job, "data"),
    shell:
        "python -m dyncim features --job {params.job:q} --split {input.split} --out {output} > {log} 2>&1"


rule download_all:
    input:
        mfeat_raw()
        if any(P["datasets"][d]["source"] == "mfeat" for d in DATASETS)
        else [],
    log:
        paths.log_file("download_all"),
    params:
        raw=parent_dir(paths.RAW_MFEAT),
    shell:
        "mkdir -p {params.raw} > {log} 2>&1"  # DVC's download stage declares data/raw, even with nothing to download


rule features_all:
    input:
        [paths.features_file(d) for d in DATASETS],
