# Test-split evaluation of every method and seed of a data configuration, one process per data
# configuration (evaluation is cheap, process start-up is not); one JSON per run.

rule evaluate:
    output:
        [f"results/eval/{{data}}/{m}/seed{s}.json" for m in METHODS for s in P["methods"][m]["seeds"]],
    input:
        features="data/features/{data}.pt",
        models=lambda w: [f"models/{w.data}/{m}/manifest.json" for m in METHODS],
        code=code("dyncim/evaluate.py", "dyncim/models/*.py", "dyncim/methods/*.py"),
    threads: P["threads"]
    shell:
        "{PY} -m dyncim evaluate --data {wildcards.data} --features {input.features}"


rule evaluate_all:
    input:
        [eval_outputs(d) for d in DATASETS],
