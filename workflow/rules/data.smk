# Raw data, the fixed split and the compact feature file of each data configuration.

rule download_mfeat:
    output:
        [f"data/raw/mfeat/mfeat-{v}.csv" for v in MFEAT_VIEWS],
    input:
        code=["dyncim/data/download.py"],
    shell:
        "{PY} -m dyncim download --source mfeat --out data/raw/mfeat"


def split_source(wildcards):
    """The data configuration whose labels define split `wildcards.split`."""
    if wildcards.split == "mfeat":
        return next(d for d, ds in P["datasets"].items() if ds["source"] == "mfeat")
    return wildcards.split


rule split:
    output:
        "data/splits/{split}.csv",
    input:
        raw=lambda w: raw_inputs(split_source(w)),
        code=code("dyncim/data/splits.py", "dyncim/data/synthetic.py"),
    params:
        data=split_source,
        cfg=lambda w: json.dumps([P["split"], P["datasets"][split_source(w)].get("synthetic")], sort_keys=True),
    shell:
        "{PY} -m dyncim split --data {params.data} --raw data/raw/mfeat --out {output}"


rule features:
    output:
        "data/features/{data}.pt",
    input:
        split=lambda w: f"data/splits/{split_name(w.data)}.csv",
        raw=lambda w: raw_inputs(w.data),
        code=code("dyncim/data/*.py"),
    params:
        cfg=lambda w: json.dumps({k: v for k, v in P["datasets"][w.data].items()
                                     if k not in ("train", "method_train")}, sort_keys=True),
    shell:
        "{PY} -m dyncim features --data {wildcards.data} --raw data/raw/mfeat "
        "--split {input.split} --out {output}"


rule download_all:
    input:
        [f"data/raw/mfeat/mfeat-{v}.csv" for v in MFEAT_VIEWS]
        if any(P["datasets"][d]["source"] == "mfeat" for d in DATASETS) else [],
    shell:
        "mkdir -p data/raw"  # DVC's download stage declares data/raw, even with nothing to download


rule features_all:
    input:
        [f"data/features/{d}.pt" for d in DATASETS],
