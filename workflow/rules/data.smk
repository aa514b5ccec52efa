# Raw data, the fixed split and the compact feature file of each data configuration; for the
# paper-scale sets, their raw files and the feature store extracted from them.


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


# A paper-scale set's raw files: downloaded (CREMA-D), located in the user's copy
# (Kinetics-Sounds) or fetched (CMU-MOSEI's pickle); verified files are kept across reruns.
rule media:
    input:
        resources=media_resources,
        code=code("media"),
    output:
        paths.media_ready("{data}"),
    log:
        paths.log_file("media", "{data}"),
    params:
        job=job(dc.media_job, "data"),
    shell:
        "python -m dyncim media --job {params.job:q} --out {output} > {log} 2>&1"


# Its feature store, extracted in parallel processes; finished clips are kept across reruns.
rule extract:
    input:
        raw=paths.media_ready("{data}"),
        resources=media_resources,
        code=code("extract"),
    output:
        paths.store_ready("{data}"),
    log:
        paths.log_file("extract", "{data}"),
    threads: lambda w: P["datasets"][w.data]["media"]["workers"]
    params:
        job=job(dc.features_job, "data"),
    shell:
        "python -m dyncim extract --job {params.job:q} --raw {input.raw} --out {output} > {log} 2>&1"


rule download_all:
    input:
        (
            mfeat_raw()
            if any(P["datasets"][d]["source"] == "mfeat" for d in DATASETS)
            else []
        ),
        [paths.media_ready(d) for d in MEDIA_DATASETS],
    log:
        paths.log_file("download_all"),
    params:
        raw=parent_dir(paths.RAW_MFEAT),
    shell:
        "mkdir -p {params.raw} > {log} 2>&1"  # DVC's download stage declares data/raw, even with nothing to download


rule features_all:
    input:
        [dc.data_input(P, d) for d in DATASETS],
