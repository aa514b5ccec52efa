# One job per data configuration x method; the job trains every seed of the method in one
# process (torch's import costs more than a small model's training), outputs per seed.

rule train:
    output:
        "models/{data}/{method}/manifest.json",
    input:
        features="data/features/{data}.pt",
        code=lambda w: method_code(w.method),
    params:
        fingerprint=lambda w: dc.run_fingerprint(P, w.data, w.method),
        seeds=lambda w: " ".join(map(str, P["methods"][w.method]["seeds"])),
    threads: P["threads"]
    resources:
        gpu=GPU,
    shell:
        "{PY} -m dyncim train --data {wildcards.data} --method {wildcards.method} "
        "--seeds {params.seeds} --features {input.features}"


rule train_all:
    input:
        [f"models/{d}/{m}/manifest.json" for d in DATASETS for m in METHODS],
