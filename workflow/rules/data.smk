# Raw data, the fixed split and the compact feature file of each data configuration; for the
# store sets (the paper-scale sets, a user's own files), their raw files and the feature store
# extracted from them. Which steps a data set's source takes: dyncim.data.catalog.


# A downloading source's raw files, one copy for every configuration of it (mfeat's six views):
# one rule per such source, download_<source>.
for _source in DOWNLOADS:

    rule:
        name:
            f"download_{_source}"
        input:
            code=code("download", source=_source),
        output:
            dc.raw_files(_source),
        log:
            paths.log_file(f"download_{_source}"),
        params:
            source=_source,
            out=lambda w, output: os.path.dirname(output[0]),
        shell:
            "python -m dyncim download --source {params.source} --out {params.out} > {log} 2>&1"


rule split:
    input:
        raw=split_raw_inputs,
        code=lambda w: code("split", source=split_source(w)),
    output:
        paths.split_file("{split}"),
    log:
        paths.log_file("split", "{split}"),
    params:
        job=job(dc.split_job, "split"),
    shell:
        "python -m dyncim split --job {params.job:q} --out {output} > {log} 2>&1"


rule feature_file:
    input:
        split=lambda w: paths.split_file(dc.split_name(P, w.data)),
        raw=lambda w: raw_inputs(w.data),
        code=lambda w: code("feature_file", source=source_of(w.data)),
    output:
        paths.feature_file("{data}"),
    log:
        paths.log_file("feature_file", "{data}"),
    params:
        job=job(dc.data_job, "data"),
    shell:
        "python -m dyncim feature-file --job {params.job:q} --split {input.split} --out {output} > {log} 2>&1"


# A store set's raw files: downloaded (CREMA-D), located in the user's copy (Kinetics-Sounds),
# fetched (CMU-MOSEI's pickle), or a user's own files checked and recorded (source files);
# verified files are kept across reruns. The user's folders and list files (from_dir, clip_list,
# index, ...) are seen through their listing fingerprint (names, sizes, mtimes): a param, so that
# a clip added or a list edited reruns the step, and an unchanged tree does not.
rule media:
    input:
        resources=media_resources,
        files=user_files,
        code=lambda w: code("media", source=source_of(w.data)),
    output:
        paths.media_ready("{data}"),
    log:
        paths.log_file("media", "{data}"),
    params:
        job=job(dc.media_job, "data"),
        listing=media_listing,
    shell:
        "python -m dyncim media --job {params.job:q} --out {output} > {log} 2>&1"


# Its feature store, extracted in parallel processes; finished clips are kept across reruns.
rule extract:
    input:
        raw=paths.media_ready("{data}"),
        resources=media_resources,
        files=user_files,
        code=lambda w: code("extract", source=source_of(w.data)),
    output:
        paths.store_ready("{data}"),
    log:
        paths.log_file("extract", "{data}"),
    threads: lambda w: dc.extract_threads(P, w.data)
    params:
        job=job(dc.data_job, "data"),
    shell:
        "python -m dyncim extract --job {params.job:q} --raw {input.raw} --out {output} > {log} 2>&1"


rule download_all:
    input:
        [dc.raw_files(s) for s in DOWNLOADS if any(source_of(d) == s for d in DATASETS)],
        [paths.media_ready(d) for d in MEDIA_DATASETS],
    log:
        paths.log_file("download_all"),
    params:
        raw=lambda w: paths.RAW,
    shell:
        "mkdir -p {params.raw} > {log} 2>&1"  # DVC's download stage declares data/raw, even with nothing to download


rule features_all:
    input:
        [dc.data_file(P, d) for d in DATASETS],
