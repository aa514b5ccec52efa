# The aggregated results table of every data configuration x method (mean ± std over seeds).


rule report:
    input:
        [eval_outputs(d) for d in DATASETS],
        code=code("report"),
    output:
        md=paths.SUMMARY["md"],
        csv=paths.SUMMARY["csv"],
        json=paths.SUMMARY["json"],
    log:
        paths.log_file("report"),
    params:
        job=job(dc.report_job),
    shell:
        "python -m dyncim report --job {params.job:q} --md {output.md} --csv {output.csv} --json {output.json} --quiet > {log} 2>&1"
